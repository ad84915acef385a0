//! End to end, through the `hostplane controller` binary against real API servers: ControlPlanes
//! of type `host` (the host handed out) and `external` (a second API server adopted), leaf and
//! CA certificate rotation of `k8s` tenants, and tenants on two Kubernetes minors with an
//! in-place upgrade.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{Binaries, start_apiserver_on_etcd, wait_until};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::Api;

/// 90 s leaves, renewed with 36 s left (54 s after issue), and frequent health checks.
const SHORT_LEAVES: [(&str, &str); 2] = [
    ("HOSTPLANE_LEAF_CERT_SECONDS", "90"),
    ("HOSTPLANE_HEALTH_CHECK_SECONDS", "5"),
];

/// A host API server and the controller (Kine on SQLite for `k8s` tenants: no Postgres needed).
type Bed = ControllerBed;

impl Bed {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        Self::with(None, extra_env).await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.host.client(), namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// A key of a Secret of `<name>-system` as text.
    async fn secret_text(&self, name: &str, secret: &str, key: &str) -> String {
        secret_text(&self.host.client(), &format!("{name}-system"), secret, key).await
    }

    /// The handed-out kubeconfig (key `key`), written to a file as a user would.
    async fn kubeconfig(&self, name: &str, key: &str) -> (PathBuf, String) {
        let text = self.secret_text(name, "admin-kubeconfig", key).await;
        let path = self
            .controller
            .state_dir
            .join(format!("{name}-{key}-{}.kubeconfig", rand_suffix()));
        std::fs::write(&path, &text).unwrap();
        (path, text)
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn kubectl() -> &'static Path {
    &Binaries::get().kubectl
}

fn controlplane(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn lifetime(token: &str) -> i64 {
    let claims = jwt_claims(token);
    claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()
}

/// Retries kubectl until it succeeds (a fresh token or a restarted server needs a moment).
async fn kubectl_eventually(kubeconfig: &Path, args: &[&str], timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (ok, out) = kubectl_with(kubectl(), kubeconfig, args);
        if ok {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {args:?} kept failing: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn host_type_hands_out_the_host_with_expiring_tokens_and_revokes_them_on_delete() {
    // People outside reach the host by name (the host serving cert carries `localhost`).
    let host = start_apiserver_on_etcd().await;
    let outside_url = format!("https://localhost:{}", host.port());
    let bed = Bed::on(host, None, &[("HOSTPLANE_HOST_SERVER_URL", &outside_url)]).await;

    bed.apply(&controlplane(
        "hosted",
        "  type: host\n  tokenExpirationSeconds: 3600\n",
    ));
    let cp = bed.available("hosted").await;
    let status = cp.status.clone().unwrap();
    assert_eq!(
        (status.endpoint.as_deref(), status.version.as_deref()),
        (
            Some(outside_url.as_str()),
            Some(Binaries::get().kube_version.as_str())
        )
    );
    let (ok, out) = bed.kubectl(&["get", "cp", "hosted"], None);
    assert!(
        ok && out
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(3)
            .eq(["hosted", "host", "shared"]),
        "{out}"
    );

    // Outside: the override URL; inside: the URL the controller uses. Both work with kubectl,
    // as the host ServiceAccount bound to cluster-admin.
    let (outside, text) = bed.kubeconfig("hosted", "kubeconfig").await;
    assert!(text.contains(&format!("server: {outside_url}")), "{text}");
    let (inside, inside_text) = bed.kubeconfig("hosted", "kubeconfig-incluster").await;
    assert!(
        inside_text.contains(&format!("server: {}", bed.host.url())),
        "{inside_text}"
    );
    let token = kubeconfig_token(&text);
    assert_eq!(lifetime(&token), 3600);
    assert_eq!(
        jwt_claims(&token)["sub"],
        "system:serviceaccount:hosted-system:hosted-admin"
    );
    for kubeconfig in [&outside, &inside] {
        let (ok, out) = kubectl_with(kubectl(), kubeconfig, &["get", "ns", "kube-system"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = kubectl_with(
        kubectl(),
        &outside,
        &["auth", "can-i", "create", "clusterrolebindings"],
    );
    assert!(ok && out.lines().next() == Some("yes"), "{out}");
    // No processes for a host type.
    assert!(
        std::fs::read_dir(bed.controller.state_dir.join("tenants"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );

    // Deleting the ControlPlane removes the binding: the handed-out token grants nothing more.
    let (ok, out) = bed.kubectl(&["delete", "cp", "hosted", "--timeout=60s"], None);
    assert!(ok, "{out}");
    let bindings = Api::<ClusterRoleBinding>::all(bed.host.client());
    assert!(
        bindings
            .get_opt("hostplane:hosted-admin")
            .await
            .unwrap()
            .is_none()
    );
    let (ok, out) = kubectl_with(kubectl(), &outside, &["get", "ns", "kube-system"]);
    assert!(!ok && out.contains("Forbidden"), "{out}");
}

#[tokio::test]
async fn external_type_adopts_a_cluster_keeps_no_bootstrap_credential_and_renews_tokens() {
    // Tokens of 600 s renewed after 2% of their life (12 s), so renewal shows within the test.
    let bed = Bed::start(&[("HOSTPLANE_TOKEN_RENEW_FRACTION", "0.02")]).await;
    let external = start_apiserver_on_etcd().await;
    bed.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ext-bootstrap\n  namespace: default\nstringData:\n  kubeconfig: |\n{}",
        external
            .kubeconfig()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    ));
    bed.apply(&controlplane(
        "ext",
        "  type: external\n  tokenExpirationSeconds: 600\n  bootstrapSecretRef:\n    name: ext-bootstrap\n    namespace: default\n",
    ));
    let cp = bed.available("ext").await;
    let status = cp.status.clone().unwrap();
    assert_eq!(status.endpoint.as_deref(), Some(external.url().as_str()));
    assert_eq!(
        status.version.as_deref(),
        Some(Binaries::get().kube_version.as_str())
    );

    // Plain kubectl with the handed-out kubeconfig works on the external cluster, as
    // kube-system/hostplane-admin, with a 600 s token.
    let (kubeconfig, text) = bed.kubeconfig("ext", "kubeconfig").await;
    let token = kubeconfig_token(&text);
    assert_eq!(lifetime(&token), 600);
    assert_eq!(
        jwt_claims(&token)["sub"],
        "system:serviceaccount:kube-system:hostplane-admin"
    );
    let (ok, out) = kubectl_with(
        kubectl(),
        &kubeconfig,
        &["create", "configmap", "adopted", "--from-literal=a=b"],
    );
    assert!(ok, "{out}");
    let out = external.run_kubectl(&["get", "configmap", "adopted", "-o", "jsonpath={.data.a}"]);
    assert_eq!(out.combined(), "b");

    // The bootstrap credential is gone; the controller keeps a bounded token of its own that
    // may not read Secrets there.
    assert!(bed.secret("default", "ext-bootstrap").await.is_none());
    let own = bed.secret_text("ext", "external-access", "token").await;
    assert_eq!(lifetime(&own), 24 * 3600);
    assert_eq!(
        jwt_claims(&own)["sub"],
        "system:serviceaccount:kube-system:hostplane-controller"
    );
    let ca = bed.controller.state_dir.join("external-ca.crt");
    std::fs::write(&ca, external.ca_pem()).unwrap();
    let denied = Command::new(kubectl())
        .env_remove("KUBECONFIG")
        .args(["--kubeconfig", "/dev/null", "--server", &external.url()])
        .arg(format!("--certificate-authority={}", ca.display()))
        .args(["--token", &own, "get", "secrets", "-A"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && said.contains("Forbidden"),
        "{said}"
    );
    let (ok, out) = bed.kubectl(
        &["get", "events", "--field-selector=reason=BootstrapConsumed"],
        None,
    );
    assert!(
        ok && out.contains("deleted the bootstrap Secret default/ext-bootstrap"),
        "{out}"
    );

    // Renewal works with the controller's own token alone: a new handed-out token, which works.
    wait_until(
        Duration::from_secs(60),
        "a renewed handed-out token",
        async || {
            kubeconfig_token(
                &bed.secret_text("ext", "admin-kubeconfig", "kubeconfig")
                    .await,
            ) != token
        },
    )
    .await;
    let (renewed, renewed_text) = bed.kubeconfig("ext", "kubeconfig").await;
    assert_eq!(lifetime(&kubeconfig_token(&renewed_text)), 600);
    kubectl_eventually(
        &renewed,
        &["get", "configmap", "adopted"],
        Duration::from_secs(10),
    )
    .await;

    // Delete: hostplane's accounts leave the external cluster, so handed-out tokens stop working.
    let (ok, out) = bed.kubectl(&["delete", "cp", "ext", "--timeout=60s"], None);
    assert!(ok, "{out}");
    let accounts = Api::<ServiceAccount>::namespaced(external.client(), "kube-system");
    for name in ["hostplane-admin", "hostplane-controller"] {
        assert!(accounts.get_opt(name).await.unwrap().is_none(), "{name}");
    }
    // kube-apiserver caches a successful token authentication for 10 s.
    wait_until(
        Duration::from_secs(30),
        "the handed-out token to be refused",
        async || {
            let (ok, out) = kubectl_with(kubectl(), &renewed, &["get", "configmap", "adopted"]);
            !ok && out.contains("Unauthorized")
        },
    )
    .await;
}

/// The certificate a TLS handshake with `127.0.0.1:port` presents: its serial, and whether it
/// is valid now (openssl's `-checkend 0`, which also fails for a certificate not yet valid).
fn served_certificate(port: u16) -> (String, bool) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial -checkend 0"
        ))
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let serial = text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or_else(|| panic!("no certificate served on port {port}: {text}"))
        .to_string();
    (serial, out.status.success())
}

fn endpoint_port(cp: &ControlPlane) -> u16 {
    let endpoint = cp.status.as_ref().unwrap().endpoint.clone().unwrap();
    endpoint.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Distinct pids each process of a tenant had, in order, sampled from its pid files.
#[derive(Default)]
struct PidHistory(BTreeMap<&'static str, Vec<i32>>);

impl PidHistory {
    fn sample(&mut self, dir: &Path, processes: &[&'static str]) {
        for process in processes {
            let seen = self.0.entry(process).or_default();
            if let Some(pid) = pid_of(dir, process)
                && seen.last() != Some(&pid)
            {
                seen.push(pid);
            }
        }
    }

    fn of(&self, process: &str) -> &[i32] {
        self.0.get(process).map_or(&[], Vec::as_slice)
    }
}

/// Samples the tenant until the certificates served on each of `ports` were renewed twice,
/// asserting that none served is ever expired; every few seconds `check` runs (kubectl through
/// a kubeconfig issued before). Returns the pids the tenant's `processes` had.
async fn through_two_renewals(
    dir: &Path,
    ports: &[u16],
    processes: &[&'static str],
    mut check: impl FnMut(usize),
) -> PidHistory {
    let mut pids = PidHistory::default();
    let mut serials: Vec<Vec<String>> = vec![Vec::new(); ports.len()];
    // 90 s leaves (plus an 18 s backdate) are renewed every 72 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut checks = 0;
    while serials.iter().any(|s| s.len() < 3) {
        assert!(
            std::time::Instant::now() < deadline,
            "the served certificates were not renewed twice within 240 s: {serials:?}"
        );
        for (port, seen) in ports.iter().zip(&mut serials) {
            let (serial, valid) = served_certificate(*port);
            assert!(
                valid,
                "an expired certificate was served on {port} (serial {serial})"
            );
            if seen.last() != Some(&serial) {
                seen.push(serial);
            }
        }
        pids.sample(dir, processes);
        check(checks);
        checks += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    pids
}

/// Waits until `process` has had `count` distinct pids (restarts follow a renewal's files).
async fn wait_for_pids(pids: &mut PidHistory, dir: &Path, process: &'static str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pids.of(process).len() < count && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pids.sample(dir, &[process]);
    }
    assert!(
        pids.of(process).len() >= count,
        "{process} was not restarted for each renewal: pids {:?}",
        pids.of(process)
    );
}

/// kube-controller-manager works: a new namespace gets its `default` ServiceAccount and
/// `kube-root-ca.crt` ConfigMap, which only its controllers create.
async fn controller_manager_serves(kubeconfig: &Path, namespace: &str) {
    let (ok, out) = kubectl_with(kubectl(), kubeconfig, &["create", "namespace", namespace]);
    assert!(ok, "{out}");
    for object in ["serviceaccount/default", "configmap/kube-root-ca.crt"] {
        kubectl_eventually(
            kubeconfig,
            &["get", "-n", namespace, object],
            Duration::from_secs(60),
        )
        .await;
    }
}

/// No process presented an expired certificate to the tenant's `process` (an API server's
/// authentication, or etcd's handshake, logs the x509 error).
fn no_expired_certificate_presented_to(dir: &Path, process: &str) {
    let log = std::fs::read_to_string(dir.join("logs").join(format!("{process}.log"))).unwrap();
    let expired: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("certificate has expired"))
        .take(3)
        .collect();
    assert!(
        expired.is_empty(),
        "{process} saw expired certificates: {expired:#?}"
    );
}

#[tokio::test]
async fn short_lived_leaves_rotate_without_restarting_the_api_server_or_breaking_clients() {
    let bed = Bed::start(&SHORT_LEAVES).await;
    let cp = bed.create("rot", "").await;
    let port = endpoint_port(&cp);
    let dir = bed.tenant_dir(&cp);
    let (kubeconfig, _) = bed.kubeconfig("rot", "kubeconfig").await;
    kubectl_eventually(
        &kubeconfig,
        &["get", "ns", "default"],
        Duration::from_secs(30),
    )
    .await;

    // Watch the served certificate through two renewals: it changes, it is never expired, and
    // the kubeconfig issued before keeps working all along.
    let processes = ["kube-apiserver", "kube-controller-manager"];
    let mut pids = through_two_renewals(&dir, &[port], &processes, |checks| {
        if checks % 5 == 0 {
            let (ok, out) = kubectl_with(kubectl(), &kubeconfig, &["get", "ns", "default"]);
            assert!(ok, "the kubeconfig issued before rotation failed: {out}");
        }
    })
    .await;
    // kube-apiserver watches its pairs; kube-controller-manager's client-go would re-read its
    // own only after the old one expired (5-minute poll, 36 s left): it is restarted instead.
    wait_for_pids(&mut pids, &dir, "kube-controller-manager", 3).await;
    assert_eq!(
        pids.of("kube-apiserver").len(),
        1,
        "kube-apiserver was restarted for a leaf renewal"
    );
    controller_manager_serves(&kubeconfig, "after-renewals").await;
    no_expired_certificate_presented_to(&dir, "kube-apiserver");
    let stored = bed.secret_text("rot", "k8s-certs", "apiserver.crt").await;
    assert!(!stored.is_empty());
}

#[tokio::test]
async fn short_lived_leaves_of_a_dedicated_etcd_rotate_without_restarting_it_or_failing_writes() {
    let bed = Bed::start(&SHORT_LEAVES).await;
    let cp = bed.create("rote", "  backend: dedicated\n").await;
    let dir = bed.tenant_dir(&cp);
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ports.json")).unwrap()).unwrap();
    let etcd_port = u16::try_from(ports["etcd_client"].as_u64().unwrap()).unwrap();
    let (kubeconfig, _) = bed.kubeconfig("rote", "kubeconfig").await;
    kubectl_eventually(
        &kubeconfig,
        &["get", "ns", "default"],
        Duration::from_secs(30),
    )
    .await;

    // etcd's serving certificate and the API server's etcd client certificate are renewed
    // with the rest; writes through the API server keep landing in etcd all along, past the
    // expiry of the client certificate it started with.
    let processes = ["etcd", "kube-apiserver", "kube-controller-manager"];
    let mut pids = through_two_renewals(
        &dir,
        &[endpoint_port(&cp), etcd_port],
        &processes,
        |checks| {
            if checks % 3 == 0 {
                let name = format!("write-{checks}");
                let (ok, out) = kubectl_with(
                    kubectl(),
                    &kubeconfig,
                    &["create", "configmap", &name, "--from-literal=n=1"],
                );
                assert!(ok, "a write failed during etcd leaf renewal: {out}");
            }
        },
    )
    .await;
    // etcd reads its pairs, and kube-apiserver its etcd client pair, on every handshake:
    // neither restarts. kube-controller-manager does (see the test above).
    wait_for_pids(&mut pids, &dir, "kube-controller-manager", 3).await;
    for process in ["etcd", "kube-apiserver"] {
        assert_eq!(
            pids.of(process).len(),
            1,
            "{process} was restarted for a leaf renewal"
        );
    }
    let (ok, out) = kubectl_with(kubectl(), &kubeconfig, &["get", "configmap", "write-0"]);
    assert!(ok, "{out}");
    controller_manager_serves(&kubeconfig, "after-renewals").await;
    no_expired_certificate_presented_to(&dir, "kube-apiserver");
    no_expired_certificate_presented_to(&dir, "etcd");
}

/// The full version the host has for a minor, as the controller finds it.
fn available(minor: &str) -> String {
    let catalog = hostplane_controller::upstream::UpstreamCatalog::scan(
        &hostplane_controller::upstream::default_upstream_root(),
    )
    .expect("upstream binaries: run tools/upstream/build");
    catalog
        .release(Some(minor))
        .unwrap_or_else(|| {
            panic!(
                "Kubernetes {minor} binaries missing ({:?} available): run tools/upstream/build",
                catalog.minors()
            )
        })
        .version
        .clone()
}

fn server_version(kubeconfig: &Path) -> String {
    let (ok, out) = kubectl_with(kubectl(), kubeconfig, &["version", "-o", "json"]);
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn tenants_run_two_minors_at_once_and_upgrade_in_place_one_minor_at_a_time() {
    let (old, new) = (available("1.36"), available("1.37"));
    let bed = Bed::start(&[("HOSTPLANE_HEALTH_CHECK_SECONDS", "3")]).await;
    bed.apply_cp("older", "  version: \"1.36\"\n");
    bed.apply_cp("newer", "  version: \"1.37\"\n");
    for (name, version) in [("older", &old), ("newer", &new)] {
        let cp = bed.available(name).await;
        assert_eq!(cp.status.unwrap().version.as_ref(), Some(version));
        let (kubeconfig, _) = bed.kubeconfig(name, "kubeconfig").await;
        assert_eq!(server_version(&kubeconfig), format!("v{version}"));
    }

    // A downgrade is refused with a clear condition; the tenant keeps its version.
    let cps = bed.cps();
    let patch = |version: &str| serde_json::json!({"spec": {"version": version}});
    bed.patch_cp("newer", "merge", &patch("1.36").to_string());
    let cp = wait_ready_state(
        &cps,
        "newer",
        "False",
        Some("VersionDowngrade"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        condition(&cp, "Ready").unwrap().2,
        format!(
            "version 1.36 would downgrade the tenant from {new}: Kubernetes cannot downgrade its stored data; set version back to 1.37"
        )
    );
    assert_eq!(cp.status.unwrap().version, Some(new.clone()));

    // Upgrade 1.36 → 1.37 in place: data written before is still there.
    let (kubeconfig, _) = bed.kubeconfig("older", "kubeconfig").await;
    let (ok, out) = kubectl_with(
        kubectl(),
        &kubeconfig,
        &[
            "create",
            "configmap",
            "kept",
            "--from-literal=across=upgrade",
        ],
    );
    assert!(ok, "{out}");
    bed.patch_cp("older", "merge", &patch("1.37").to_string());
    wait_until(
        READY_TIMEOUT,
        "status.version to move to the new release",
        async || {
            cps.get("older")
                .await
                .ok()
                .and_then(|cp| cp.status?.version)
                .as_ref()
                == Some(&new)
        },
    )
    .await;
    wait_ready_state(&cps, "older", "True", Some("Available"), READY_TIMEOUT).await;
    let (kubeconfig, _) = bed.kubeconfig("older", "kubeconfig").await;
    let out = kubectl_eventually(
        &kubeconfig,
        &["get", "configmap", "kept", "-o", "jsonpath={.data.across}"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(out, "upgrade");
    assert_eq!(server_version(&kubeconfig), format!("v{new}"));
}
