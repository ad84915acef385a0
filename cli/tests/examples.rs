//! End to end: the KubeFlex documentation examples in `examples/` work as written (with our
//! apiVersion, which they already carry) against the `hostplane controller` binary: the "custom
//! tenant" with its `setup-monitoring` and `configure-networking` hooks, and the "secure tenant"
//! with three KubeVirt worker VMs. Both tenants start side by side to keep the test short.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hostplane_crds::{ControlPlane, HookPhase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Applies an example file as it is in the repository, after checking it carries our apiVersion
/// (the one change a KubeFlex user makes).
fn apply_example(bed: &ControllerBed, name: &str) {
    let path = example(name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("apiVersion: tenancy.hostplane.io/v1alpha1"),
        "{name} does not carry hostplane's apiVersion"
    );
    let out = bed
        .host
        .run_kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(out.success(), "kubectl apply -f {name}: {}", out.combined());
}

/// Waits until every named hook has `phase` in the ControlPlane's status and KubeFlex's
/// `postCreateHooks` map says it was applied.
async fn wait_hooks(cps: &Api<ControlPlane>, name: &str, hooks: &[(&str, HookPhase)]) {
    let deadline = Instant::now() + HOOK_TIMEOUT;
    loop {
        let status = cps.get(name).await.unwrap().status.unwrap_or_default();
        let done = hooks.iter().all(|(hook, phase)| {
            status.post_create_hooks.get(*hook) == Some(&true)
                && status
                    .hook_statuses
                    .iter()
                    .any(|h| h.name == *hook && h.phase == *phase)
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: hooks never reached {hooks:?}: {:?} {:?}",
            status.post_create_hooks,
            status.hook_statuses
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn kubeflex_custom_and_secure_tenant_examples_work_as_written() {
    let bed = ControllerBed::with(None, &[]).await;
    let host = bed.host.client();

    // The secure tenant's workers need KubeVirt's VirtualMachine kind on the host.
    let mut crd_command = std::process::Command::new(hostplane_tests::kubevirt_check());
    crd_command.arg("crd");
    let crd = hostplane_tests::run_command(crd_command, None);
    assert!(crd.success(), "{}", crd.combined());
    // Server-side: the CRD is too large for client-side apply's last-applied annotation.
    let out = bed
        .host
        .run_kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], &crd.stdout);
    assert!(out.success(), "{}", out.combined());
    hostplane_controller::embedded::wait_kinds_served(
        &host,
        "kubevirt.io",
        &["VirtualMachine"],
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    // Hooks first, as KubeFlex's docs order it; then both ControlPlanes.
    apply_example(&bed, "setup-monitoring-hook.yaml");
    apply_example(&bed, "configure-networking-hook.yaml");
    apply_example(&bed, "custom-tenant.yaml");
    apply_example(&bed, "secure-tenant.yaml");

    let cps = bed.cps();
    let custom = wait_ready_state(
        &cps,
        "custom-tenant",
        "True",
        Some("Available"),
        READY_TIMEOUT,
    )
    .await;
    let secure = wait_ready_state(
        &cps,
        "secure-tenant",
        "True",
        Some("Available"),
        READY_TIMEOUT,
    )
    .await;

    // custom-tenant: its dedicated etcd, and both hooks' objects in custom-tenant-system,
    // rendered with the example's vars over the hooks' defaults. Their Jobs wait for a kubelet
    // (none runs here), so both hooks stay Applied.
    assert_eq!(
        custom
            .status
            .as_ref()
            .and_then(|s| s.datastore.as_ref())
            .map(|d| d.kind.as_str()),
        Some("etcd"),
        "backend: dedicated"
    );
    wait_hooks(
        &cps,
        "custom-tenant",
        &[
            ("setup-monitoring", HookPhase::Applied),
            ("configure-networking", HookPhase::Applied),
        ],
    )
    .await;
    let configmaps = Api::<ConfigMap>::namespaced(host.clone(), "custom-tenant-system");
    let jobs = Api::<Job>::namespaced(host.clone(), "custom-tenant-system");
    let values = configmaps.get("setup-monitoring-values").await.unwrap();
    let values = &values.data.unwrap()["values.yaml"];
    assert!(
        values.contains("control plane custom-tenant (hosted in custom-tenant-system)")
            && values.contains("retention: \"7d\""),
        "{values}"
    );
    let monitoring = serde_json::to_value(jobs.get("setup-monitoring").await.unwrap()).unwrap();
    let args = &monitoring["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let after = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    assert_eq!(after("--namespace"), Some("monitoring"), "{args:?}");
    assert_eq!(after("--version"), Some("75.15.1"), "{args:?}");
    assert_eq!(
        monitoring["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "admin-kubeconfig"
    );
    let policies = configmaps
        .get("configure-networking-policies")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(policies["policy"], "strict", "the example's var wins");
    assert!(
        policies["default-deny.yaml"].contains("name: strict-default-deny-ingress")
            && policies["default-deny.yaml"].contains("namespace: default"),
        "{}",
        policies["default-deny.yaml"]
    );
    assert!(
        jobs.get_opt("configure-networking")
            .await
            .unwrap()
            .is_some()
    );

    // secure-tenant: three VirtualMachines with the example's memory and CPU.
    let vms = Api::<DynamicObject>::namespaced_with(
        host.clone(),
        "secure-tenant-system",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
            "virtualmachines",
        ),
    );
    wait_hooks(
        &cps,
        "secure-tenant",
        &[("kubevirt-nodes", HookPhase::Succeeded)],
    )
    .await;
    let mut found: Vec<(String, String, String)> = vms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|vm| {
            let requests = &vm.data["spec"]["template"]["spec"]["domain"]["resources"]["requests"];
            (
                vm.metadata.name.clone().unwrap_or_default(),
                requests["memory"].as_str().unwrap_or_default().to_string(),
                requests["cpu"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    let expected: Vec<(String, String, String)> = (0..3)
        .map(|i| (format!("secure-tenant-node-{i}"), "4Gi".into(), "2".into()))
        .collect();
    assert_eq!(found, expected);
    assert!(
        secure.status.is_some_and(|s| s.endpoint.is_some()),
        "a Ready tenant has an endpoint"
    );
}
