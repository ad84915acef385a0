//! End to end, the `pods` runtime: `hostplane controller --runtime pods` turns a ControlPlane into
//! a Deployment, a Service and the fences of its namespace on a real host API server. The host
//! runs no kubelet and no kube-controller-manager, so no pod starts: the test plays the
//! Deployment controller by writing the Deployment's status, which is all the runtime reads.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use hostplane_controller::limits::TenantLimits;
use hostplane_crds::ControlPlane;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const NS: &str = "acme-system";

/// The pods-runtime bed with the images and storage class these tests check.
async fn start_bed() -> PodsBed {
    PodsBed::start(&[
        ("HOSTPLANE_KINE_IMAGE", "example.test/kine:v9"),
        ("HOSTPLANE_ETCD_IMAGE", "example.test/etcd:v9"),
        ("HOSTPLANE_ETCD_STORAGE_CLASS", "fast"),
    ])
    .await
}

impl PodsBed {
    fn apply(&self, yaml: &str) {
        let out = self
            .host
            .run_kubectl_with_stdin(&["apply", "-f", "-"], yaml);
        assert!(out.success(), "kubectl apply failed: {}", out.combined());
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.host.client(), NS)
    }
}

/// Polls `read` until it gives `Some`, for at most `TIMEOUT`.
async fn eventually<T, F, Fut>(what: &str, read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    common::eventually(what, TIMEOUT, read).await
}

fn to_json<T: k8s_openapi::serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap()
}

async fn mark_available(deployments: &Api<Deployment>, name: &str) {
    mark_deployment_available(deployments, name).await;
}

#[tokio::test]
async fn a_controlplane_becomes_a_fenced_deployment_that_is_ready_when_available() {
    let bed = start_bed().await;
    let cps = Api::<ControlPlane>::all(bed.host.client());
    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: acme\nspec:\n  type: k8s\n");

    let deployments = bed.api::<Deployment>();
    let deployment = eventually("the Deployment", || async {
        deployments.get_opt("acme-control-plane").await.unwrap()
    })
    .await;
    let cp = wait_ready_state(&cps, "acme", "False", Some("Creating"), TIMEOUT).await;
    let (_, _, message) = condition(&cp, "Ready").unwrap();
    assert!(
        message
            .starts_with("waiting for the tenant API server at https://acme.acme-system.svc:443"),
        "{message}"
    );

    // The namespace: the tenant's label, Pod Security.
    let ns = Api::<Namespace>::all(bed.host.client())
        .get(NS)
        .await
        .unwrap();
    let labels = ns.metadata.labels.unwrap();
    for (k, v) in [
        ("tenancy.hostplane.io/controlplane", "acme"),
        ("pod-security.kubernetes.io/enforce", "baseline"),
        ("pod-security.kubernetes.io/warn", "restricted"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{labels:?}");
    }

    // Secrets: the PKI, the datastore DSN (Kine reads it by reference), the component kubeconfigs.
    let secrets = bed.api::<Secret>();
    let data_keys = |s: Secret| -> Vec<String> { s.data.unwrap().into_keys().collect() };
    assert_eq!(
        data_keys(secrets.get("datastore").await.unwrap()),
        ["password", "url"]
    );
    assert_eq!(
        data_keys(secrets.get("component-kubeconfigs").await.unwrap()),
        ["controller-manager.conf"]
    );
    let certs = data_keys(secrets.get("k8s-certs").await.unwrap());
    for key in [
        "ca.crt",
        "apiserver.crt",
        "apiserver.key",
        "sa.key",
        "front-proxy-ca.crt",
    ] {
        assert!(
            certs.contains(&key.to_string()),
            "k8s-certs lacks {key}: {certs:?}"
        );
    }

    // Fences.
    let quota = bed
        .api::<ResourceQuota>()
        .get("tenant-quota")
        .await
        .unwrap();
    assert_eq!(
        to_json(&quota.spec)["hard"],
        json!({"limits.cpu": "16", "limits.memory": "32Gi", "pods": "20", "requests.cpu": "4",
               "requests.memory": "8Gi", "services.loadbalancers": "0", "services.nodeports": "0"})
    );
    let limits = bed.api::<LimitRange>().get("tenant-limits").await.unwrap();
    assert_eq!(
        to_json(&limits.spec),
        json!({"limits": [{"type": "Container", "default": {"cpu": "1", "memory": "1Gi"},
                           "defaultRequest": {"cpu": "100m", "memory": "128Mi"}}]})
    );
    let policies = bed.api::<NetworkPolicy>();
    assert_eq!(
        to_json(&policies.get("default-deny-ingress").await.unwrap().spec),
        json!({"podSelector": {}, "policyTypes": ["Ingress"]})
    );
    assert_eq!(
        to_json(&policies.get("control-plane-ingress").await.unwrap().spec),
        json!({
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "control-plane", "tenancy.hostplane.io/controlplane": "acme"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hostplane-system"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/component": "controller", "app.kubernetes.io/name": "hostplane"}}},
                    {"podSelector": {}}
                ],
                "ports": [{"port": 6443, "protocol": "TCP"}]
            }]
        })
    );

    // The Service: the tenant endpoint.
    let service = bed.api::<Service>().get("acme").await.unwrap();
    let spec = to_json(&service.spec);
    assert_eq!(
        (&spec["type"], &spec["selector"], &spec["ports"]),
        (
            &json!("ClusterIP"),
            &json!({"app.kubernetes.io/component": "control-plane", "tenancy.hostplane.io/controlplane": "acme"}),
            &json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}])
        )
    );

    // The Deployment: one replica of kine + kube-apiserver + kube-controller-manager (no workers,
    // no scheduler), hardened, the DSN by reference only.
    let spec = to_json(&deployment)["spec"].clone();
    assert_eq!(spec["replicas"], 1);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"],
        json!({"fsGroup": 65532, "runAsGroup": 65532, "runAsNonRoot": true, "runAsUser": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let containers = pod["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kine", "kube-apiserver", "kube-controller-manager"]);
    let hardened = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                          "readOnlyRootFilesystem": true, "runAsNonRoot": true,
                          "seccompProfile": {"type": "RuntimeDefault"}});
    for c in containers {
        assert_eq!(c["securityContext"], hardened, "{}", c["name"]);
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{}",
            c["name"]
        );
    }
    let kine = &containers[0];
    assert_eq!(
        (&kine["image"], &kine["args"], &kine["env"]),
        (
            &json!("example.test/kine:v9"),
            // With the default limits' pool, below the role's connection limit.
            &json!(
                [
                    "--listen-address=127.0.0.1:2379",
                    "--metrics-bind-address=0"
                ]
                .map(String::from)
                .into_iter()
                .chain(TenantLimits::default().kine_pool().args())
                .collect::<Vec<_>>()
            ),
            &json!([
                {"name": "KINE_ENDPOINT", "valueFrom": {"secretKeyRef": {"key": "url", "name": "datastore"}}},
                {"name": "GOGC", "value": "50"}
            ])
        )
    );
    let apiserver = &containers[1];
    assert!(
        apiserver["image"]
            .as_str()
            .unwrap()
            .starts_with("registry.k8s.io/kube-apiserver:v1."),
        "{}",
        apiserver["image"]
    );
    let args: Vec<&str> = apiserver["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for flag in [
        "--bind-address=0.0.0.0",
        "--secure-port=6443",
        "--etcd-servers=http://127.0.0.1:2379",
        "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
        "--client-ca-file=/etc/kubernetes/pki/ca.crt",
    ] {
        assert!(
            args.contains(&flag),
            "kube-apiserver lacks {flag}: {args:?}"
        );
    }
    assert!(
        args.iter().all(|a| !a.contains("postgres")),
        "a DSN in argv: {args:?}"
    );
    let probe = |path: &str, period: i64, failures: i64| {
        json!({"httpGet": {"path": path, "port": 6443, "scheme": "HTTPS"}, "periodSeconds": period,
               "timeoutSeconds": 15, "failureThreshold": failures, "successThreshold": 1})
    };
    assert_eq!(
        (
            &apiserver["startupProbe"],
            &apiserver["readinessProbe"],
            &apiserver["livenessProbe"]
        ),
        (
            &probe("/livez", 10, 24),
            &probe("/readyz", 1, 3),
            &probe("/livez", 10, 8)
        )
    );
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][1],
        json!({"secret": {"name": "component-kubeconfigs", "items": [
            {"key": "controller-manager.conf", "path": "controller-manager.conf"}
        ]}})
    );
    let cert_items = pod["volumes"][0]["projected"]["sources"][0]["secret"]["items"]
        .as_array()
        .unwrap();
    assert!(
        cert_items.contains(&json!({"key": "apiserver.crt", "path": "pki/apiserver.crt"})),
        "{cert_items:?}"
    );
    assert!(
        !cert_items.iter().any(|i| i["key"] == "admin.key"),
        "the controller's own key reached the pods: {cert_items:?}"
    );
    assert_eq!(
        (&pod["volumes"][1], &pod["volumes"][2]),
        (
            &json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}),
            &json!({"name": "run", "emptyDir": {"sizeLimit": "16Mi"}})
        )
    );

    // Still Creating: nothing says the pod is available.
    let cp = cps.get("acme").await.unwrap();
    assert_eq!(condition(&cp, "Ready").unwrap().1, "Creating");

    // The Deployment becomes available: Ready from the Deployment, although this controller
    // (outside the host's network) cannot resolve the Service to mint tokens.
    mark_available(&deployments, "acme-control-plane").await;
    let cp = wait_ready_state(&cps, "acme", "True", Some("Available"), TIMEOUT).await;
    let status = cp.status.clone().unwrap();
    assert_eq!(
        status.endpoint.as_deref(),
        Some("https://acme.acme-system.svc:443")
    );
    let (synced, reason, message) = condition(&cp, "Synced").unwrap();
    assert_eq!(
        (synced.as_str(), reason.as_str()),
        ("False", "ReconcileError")
    );
    assert!(
        message.starts_with("the tenant API server is available (Deployment acme-system/acme-control-plane), but the controller cannot use it at https://acme.acme-system.svc:443: "),
        "{message}"
    );
    assert!(
        message.contains("run the controller inside the host cluster"),
        "{message}"
    );
    let warned = eventually("a TenantAccessFailed Event", || async {
        events_about(&bed.host, "acme")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("TenantAccessFailed"))
    })
    .await;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    assert_eq!(warned.note.as_deref(), Some(message.as_str()));

    // A placement change rolls into the Deployment; the old pod keeps serving meanwhile.
    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: acme\nspec:\n  type: k8s\n  placement:\n    nodeSelector:\n      node-role.hostplane.io/tenants: \"true\"\n    tolerations:\n    - key: hostplane.io/tenants\n      operator: Exists\n      effect: NoSchedule\n");
    let placed = eventually("the placement in the Deployment", || async {
        let d = deployments.get("acme-control-plane").await.unwrap();
        let pod = to_json(&d)["spec"]["template"]["spec"].clone();
        (pod.get("nodeSelector").is_some()).then_some(pod)
    })
    .await;
    assert_eq!(
        (&placed["nodeSelector"], &placed["tolerations"]),
        (
            &json!({"node-role.hostplane.io/tenants": "true"}),
            &json!([{"key": "hostplane.io/tenants", "operator": "Exists", "effect": "NoSchedule"}])
        )
    );
    let cp = cps.get("acme").await.unwrap();
    assert_eq!(condition(&cp, "Ready").unwrap().0, "True");

    // Delete: the runtime's objects go, the namespace is being deleted (this host has no
    // namespace controller to finish it), the finalizer lets the ControlPlane go.
    let out = bed
        .host
        .run_kubectl(&["delete", "controlplane", "acme", "--wait=false"]);
    assert!(out.success(), "{}", out.combined());
    eventually("the ControlPlane gone", || async {
        cps.get_opt("acme").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        deployments
            .get_opt("acme-control-plane")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        bed.api::<Service>()
            .get_opt("acme")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        secrets
            .get_opt("component-kubeconfigs")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        bed.api::<ResourceQuota>()
            .get_opt("tenant-quota")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        bed.api::<LimitRange>()
            .get_opt("tenant-limits")
            .await
            .unwrap()
            .is_none()
    );
    let left: BTreeMap<String, ()> = policies
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.metadata.name.unwrap(), ()))
        .collect();
    assert!(left.is_empty(), "NetworkPolicies left: {left:?}");
    let ns = Api::<Namespace>::all(bed.host.client())
        .get_opt(NS)
        .await
        .unwrap();
    assert!(
        ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace {NS} is not being deleted"
    );
}

/// What the StatefulSet controller would write once the etcd pod is ready.
async fn mark_etcd_ready(sets: &Api<StatefulSet>, name: &str) {
    let generation = sets.get(name).await.unwrap().metadata.generation.unwrap();
    let status = json!({"status": {
        "observedGeneration": generation,
        "replicas": 1, "readyReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1,
        "availableReplicas": 1,
        "currentRevision": format!("{name}-1"), "updateRevision": format!("{name}-1"),
    }});
    sets.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The DNS names of a PEM certificate, read with openssl.
fn dns_names(pem: &[u8]) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl x509 failed");
    String::from_utf8_lossy(&out.stdout)
        .split([',', '\n'])
        .filter_map(|n| n.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_dedicated_etcd_is_a_stateful_set_and_ready_needs_it_and_the_deployment() {
    let bed = start_bed().await;
    let cps = Api::<ControlPlane>::all(bed.host.client());
    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: acme\nspec:\n  type: k8s\n  backend: dedicated\n");

    let sets = bed.api::<StatefulSet>();
    let set = eventually("the etcd StatefulSet", || async {
        sets.get_opt("acme-etcd").await.unwrap()
    })
    .await;
    let spec = to_json(&set)["spec"].clone();
    assert_eq!(
        (
            &spec["replicas"],
            &spec["serviceName"],
            &spec["persistentVolumeClaimRetentionPolicy"]
        ),
        (
            &json!(1),
            &json!("acme-etcd"),
            &json!({"whenDeleted": "Delete", "whenScaled": "Retain"})
        )
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["metadata"]["name"],
        json!("data")
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"],
        json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            "storageClassName": "fast",
            "volumeMode": "Filesystem"
        })
    );
    let pod = &spec["template"]["spec"];
    let etcd = &pod["containers"][0];
    assert_eq!(etcd["image"], "example.test/etcd:v9");
    let args: Vec<&str> = etcd["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The default storage limit's backstop quota.
    let quota_backend_bytes = format!(
        "--quota-backend-bytes={}",
        TenantLimits::default().etcd_quota_backend_bytes()
    );
    for arg in [
        "--listen-client-urls=https://0.0.0.0:2379",
        "--advertise-client-urls=https://acme-etcd.acme-system.svc:2379",
        "--client-cert-auth=true",
        "--peer-client-cert-auth=true",
        "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
        "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
        "--data-dir=/var/lib/etcd/data",
        quota_backend_bytes.as_str(),
        "--auto-compaction-retention=10m",
    ] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("http://") || a.contains("=http://0.0.0.0:2379")),
        "{args:?}"
    );
    assert_eq!(
        pod["securityContext"],
        json!({"fsGroup": 65532, "runAsGroup": 65532, "runAsNonRoot": true, "runAsUser": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        etcd["volumeMounts"],
        json!([
            {"mountPath": "/var/lib/etcd", "name": "data"},
            {"mountPath": "/etc/kubernetes", "name": "certs", "readOnly": true}
        ])
    );

    let service = bed.api::<Service>().get("acme-etcd").await.unwrap();
    let service = to_json(&service)["spec"].clone();
    assert_eq!(
        (
            &service["clusterIP"],
            &service["publishNotReadyAddresses"],
            &service["selector"]
        ),
        (
            &json!("None"),
            &json!(true),
            &json!({"app.kubernetes.io/component": "etcd", "tenancy.hostplane.io/controlplane": "acme"})
        )
    );
    let policies = bed.api::<NetworkPolicy>();
    let policy = policies.get("etcd-ingress").await.unwrap();
    assert_eq!(
        to_json(&policy)["spec"],
        json!({
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "etcd", "tenancy.hostplane.io/controlplane": "acme"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {
                    "app.kubernetes.io/component": "control-plane", "tenancy.hostplane.io/controlplane": "acme"
                }}}],
                "ports": [{"port": 2379, "protocol": "TCP"}]
            }]
        })
    );

    // The etcd's serving certificate names its Service and pod.
    let certs = bed.api::<Secret>().get("k8s-certs").await.unwrap();
    let names = dns_names(&certs.data.as_ref().unwrap()["etcd-server.crt"].0);
    for name in [
        "acme-etcd",
        "acme-etcd.acme-system.svc",
        "acme-etcd-0.acme-etcd.acme-system.svc",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }

    // The control plane: no Kine, the API server on the etcd's Service over mTLS.
    let deployments = bed.api::<Deployment>();
    let deployment = deployments.get("acme-control-plane").await.unwrap();
    let containers = to_json(&deployment)["spec"]["template"]["spec"]["containers"].clone();
    let names: Vec<&str> = containers
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kube-apiserver", "kube-controller-manager"]);
    let apiserver_args = containers[0]["args"].as_array().unwrap();
    for arg in [
        "--etcd-servers=https://acme-etcd.acme-system.svc:2379",
        "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
        "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key",
    ] {
        assert!(
            apiserver_args.contains(&json!(arg)),
            "{arg} missing from {apiserver_args:?}"
        );
    }

    // Available Deployment, etcd without status: still not Ready, because of the etcd.
    let cp = wait_ready_state(&cps, "acme", "False", Some("Creating"), TIMEOUT).await;
    assert!(
        !condition(&cp, "Ready").unwrap().2.contains("etcd"),
        "the Deployment is reported first: {cp:?}"
    );
    mark_available(&deployments, "acme-control-plane").await;
    let cp = eventually("Ready waiting on the etcd", || async {
        let cp = cps.get("acme").await.unwrap();
        let (status, _, message) = condition(&cp, "Ready")?;
        (message.contains("etcd: 0 of 1 replicas ready")).then_some((status, cp))
    })
    .await;
    assert_eq!(cp.0, "False", "{:?}", cp.1.status);

    // The StatefulSet controller reports a ready replica of the current revision: Ready.
    mark_etcd_ready(&sets, "acme-etcd").await;
    wait_ready_state(&cps, "acme", "True", Some("Available"), TIMEOUT).await;

    // Delete: the etcd's objects go too (its PVC with the StatefulSet and the namespace).
    let out = bed
        .host
        .run_kubectl(&["delete", "controlplane", "acme", "--wait=false"]);
    assert!(out.success(), "{}", out.combined());
    eventually("the ControlPlane gone", || async {
        cps.get_opt("acme").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(sets.get_opt("acme-etcd").await.unwrap().is_none());
    assert!(
        bed.api::<Service>()
            .get_opt("acme-etcd")
            .await
            .unwrap()
            .is_none()
    );
    assert!(policies.get_opt("etcd-ingress").await.unwrap().is_none());
    assert!(
        deployments
            .get_opt("acme-control-plane")
            .await
            .unwrap()
            .is_none()
    );
}
