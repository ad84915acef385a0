//! End to end, through the `hostplane controller` binary against real API servers: a cluster CA
//! rotation asked for with the annotation `tenancy.hostplane.io/rotate-ca` goes through its three
//! stages (trust both, switch, drop) without breaking clients that hold the right CAs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use base64::Engine;
use common::*;
use hostplane_controller::build::kubeconfig::{self, Credential};
use hostplane_tests::Binaries;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const STAGE_TIMEOUT: Duration = Duration::from_secs(120);
const NAME: &str = "rotor";

/// A host API server and the controller (Kine on SQLite: no Postgres needed).
type Bed = ControllerBed;

impl Bed {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        Self::with(None, extra_env).await
    }

    fn host_kubectl(&self, args: &[&str]) -> String {
        let out = self.host.run_kubectl(args);
        assert!(out.success(), "kubectl {args:?} failed: {}", out.combined());
        out.combined()
    }

    /// The keys of a Secret of `<NAME>-system`, as text.
    async fn secret(&self, secret: &str) -> std::collections::BTreeMap<String, String> {
        let s = Api::<Secret>::namespaced(self.host.client(), &format!("{NAME}-system"))
            .get(secret)
            .await
            .unwrap();
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    /// The handed-out kubeconfig, written to a new file as a user would.
    async fn kubeconfig(&self) -> (PathBuf, String) {
        let text = self.secret("admin-kubeconfig").await["kubeconfig"].clone();
        self.write(&text)
    }

    /// Waits until the handed-out kubeconfigs (both keys) trust exactly `ca`; the outside one.
    async fn kubeconfig_trusting(&self, ca: &str) -> (PathBuf, String) {
        let deadline = std::time::Instant::now() + STAGE_TIMEOUT;
        loop {
            let secret = self.secret("admin-kubeconfig").await;
            if ca_data(&secret["kubeconfig"]) == ca
                && ca_data(&secret["kubeconfig-incluster"]) == ca
            {
                return self.write(&secret["kubeconfig"]);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the kubeconfigs never trusted exactly {ca}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn write(&self, text: &str) -> (PathBuf, String) {
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = self
            .controller
            .state_dir
            .join(format!("{NAME}-{n}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        (path, text.to_string())
    }

    /// `status.caRotation` as (requested, stage).
    async fn rotation(&self) -> Option<(String, String)> {
        let cp = self.cps().get(NAME).await.ok()?;
        let r = cp.status?.ca_rotation?;
        Some((r.requested, r.stage))
    }

    /// The pid of the tenant's kube-apiserver, from the runtime's pid file.
    fn apiserver_pid(&self) -> Option<String> {
        let tenants = self.controller.state_dir.join("tenants");
        std::fs::read_dir(tenants)
            .ok()?
            .flatten()
            .find_map(|d| std::fs::read_to_string(d.path().join("kube-apiserver.pid")).ok())
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
    }

    /// Waits until the tenant's kube-apiserver is another process than `before` (each stage
    /// restarts it with the new CA files) and answers `kubeconfig`.
    async fn wait_restarted(&self, before: &Option<String>, kubeconfig: &Path) {
        let deadline = std::time::Instant::now() + STAGE_TIMEOUT;
        while self.apiserver_pid().is_none() || self.apiserver_pid() == *before {
            assert!(
                std::time::Instant::now() < deadline,
                "kube-apiserver was not restarted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        kubectl_eventually(kubeconfig, &["get", "ns", "default"]).await;
    }

    async fn wait_stage(&self, stage: &str) {
        let deadline = std::time::Instant::now() + STAGE_TIMEOUT;
        loop {
            let now = self.rotation().await;
            if now.as_ref().is_some_and(|(r, s)| r == "r1" && s == stage) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CA rotation never reached {stage}; last: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn kubectl() -> &'static Path {
    &Binaries::get().kubectl
}

/// The `certificate-authority-data` of a kubeconfig, decoded.
fn ca_data(kubeconfig: &str) -> String {
    let v: serde_yaml::Value = serde_yaml::from_str(kubeconfig).unwrap();
    let data = v["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
    .unwrap()
}

fn server(kubeconfig: &str) -> String {
    let v: serde_yaml::Value = serde_yaml::from_str(kubeconfig).unwrap();
    v["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Retries kubectl until it succeeds (a restarted server needs a moment).
async fn kubectl_eventually(kubeconfig: &Path, args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
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

/// The certificate the tenant serves, read from a TLS handshake.
fn served_certificate(endpoint: &str) -> String {
    let host_port = endpoint.trim_start_matches("https://");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            host_port,
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate in the handshake: {text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
    format!("{}\n", &text[begin..end])
}

/// Whether `cert` is signed by `ca` (openssl's own chain check).
fn signed_by(dir: &Path, cert: &str, ca: &str) -> bool {
    let (cert_file, ca_file) = (dir.join("leaf.pem"), dir.join("ca.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&ca_file, ca).unwrap();
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca_file)
        .arg(&cert_file)
        .output()
        .expect("openssl runs")
        .status
        .success()
}

#[tokio::test]
async fn a_ca_rotation_trusts_both_then_switches_then_drops_the_old_ca() {
    let bed = Bed::start(&[("HOSTPLANE_CA_ROTATION_OVERLAP_SECONDS", "40")]).await;
    let dir = bed.controller.state_dir.clone();
    let out = bed.host.apply_yaml(&format!(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {NAME}\nspec:\n  type: k8s\n  tokenExpirationSeconds: 600\n"
    ));
    assert!(out.success(), "{}", out.combined());
    let cp = wait_ready_state(&bed.cps(), NAME, "True", Some("Available"), READY_TIMEOUT).await;
    let endpoint = cp.status.unwrap().endpoint.unwrap();

    let certs = bed.secret("k8s-certs").await;
    let old_ca = certs["ca.crt"].clone();
    let (before, before_text) = bed.kubeconfig().await;
    assert_eq!(ca_data(&before_text), old_ca);
    kubectl_eventually(&before, &["get", "ns", "default"]).await;
    assert!(signed_by(&dir, &served_certificate(&endpoint), &old_ca));
    assert_eq!(bed.rotation().await, None);

    // A client certificate from the old CA, and a kubeconfig using it that trusts `ca`.
    let (old_client_crt, old_client_key) = hostplane_controller::pki::issue_client_cert(
        &old_ca,
        &certs["ca.key"],
        "old-ca-user",
        &["system:masters"],
        Duration::from_secs(3600),
        SystemTime::now(),
    )
    .unwrap();
    let old_client = |ca: &str| {
        bed.write(&kubeconfig::to_yaml(&kubeconfig::kubeconfig(
            NAME,
            &server(&before_text),
            ca,
            "old-ca-user",
            &Credential::ClientCert {
                cert_pem: &old_client_crt,
                key_pem: &old_client_key,
            },
        )))
        .0
    };
    kubectl_eventually(&old_client(&old_ca), &["get", "ns", "default"]).await;

    // Stage 1: both CAs trusted, kubeconfigs re-issued with both, leaves still from the old.
    let pid = bed.apiserver_pid();
    assert!(pid.is_some());
    bed.host_kubectl(&[
        "annotate",
        "controlplane",
        NAME,
        "tenancy.hostplane.io/rotate-ca=r1",
    ]);
    bed.wait_stage("TrustingBoth").await;
    let certs = bed.secret("k8s-certs").await;
    let new_ca = certs["ca-next.crt"].clone();
    assert_ne!(new_ca, old_ca);
    assert_eq!(certs["ca.crt"], old_ca);
    let both = format!("{old_ca}{new_ca}");
    assert_eq!(certs["ca-bundle.crt"], both);
    let (during, _) = bed.kubeconfig_trusting(&both).await;
    bed.wait_restarted(&pid, &during).await;
    let pid = bed.apiserver_pid();
    assert!(signed_by(&dir, &served_certificate(&endpoint), &old_ca));
    kubectl_eventually(&old_client(&both), &["get", "ns", "default"]).await;
    // The kubeconfig from before keeps working for as long as stage 1 lasts.
    let mut checks = 0;
    loop {
        let (ok, out) = kubectl_with(kubectl(), &before, &["get", "ns", "default"]);
        let stage = bed.rotation().await.unwrap().1;
        if stage != "TrustingBoth" {
            break;
        }
        assert!(
            ok,
            "the kubeconfig from before the rotation failed in stage 1: {out}"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 3, "stage 1 was too short to check ({checks})");

    // Stage 2: the tenant serves a certificate from the new CA; both are still trusted.
    bed.wait_stage("Switched").await;
    let certs = bed.secret("k8s-certs").await;
    assert_eq!(certs["ca.crt"], new_ca);
    assert_eq!(certs["ca-previous.crt"], old_ca);
    assert!(!certs.contains_key("ca-next.crt"));
    for leaf in ["apiserver", "admin", "controller-manager"] {
        assert!(
            signed_by(&dir, &certs[&format!("{leaf}.crt")], &new_ca),
            "{leaf} is not from the new CA"
        );
    }
    bed.wait_restarted(&pid, &during).await;
    let served = served_certificate(&endpoint);
    assert!(signed_by(&dir, &served, &new_ca), "served: {served}");
    assert!(!signed_by(&dir, &served, &old_ca));
    kubectl_eventually(&old_client(&new_ca), &["get", "ns", "default"]).await;

    // Stage 3: only the new CA is trusted; the tenant still serves, the old CA's clients not.
    bed.wait_stage("Completed").await;
    let certs = bed.secret("k8s-certs").await;
    assert_eq!(certs["ca.crt"], new_ca);
    for gone in [
        "ca-bundle.crt",
        "ca-next.crt",
        "ca-next.key",
        "ca-previous.crt",
        "ca-rotation",
    ] {
        assert!(!certs.contains_key(gone), "{gone} left in k8s-certs");
    }
    let (after, _) = bed.kubeconfig_trusting(&new_ca).await;
    kubectl_eventually(&after, &["get", "ns", "default"]).await;
    kubectl_eventually(&during, &["get", "ns", "default"]).await;
    assert!(signed_by(&dir, &served_certificate(&endpoint), &new_ca));
    let old_cert_client = old_client(&new_ca);
    let deadline = std::time::Instant::now() + STAGE_TIMEOUT;
    loop {
        let (ok, out) = kubectl_with(kubectl(), &old_cert_client, &["get", "ns", "default"]);
        if !ok && (out.contains("Unauthorized") || out.contains("must be logged in")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a client certificate of the old CA still authenticates: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_ready_state(&bed.cps(), NAME, "True", Some("Available"), READY_TIMEOUT).await;

    // One Event per stage.
    let events = bed.host_kubectl(&["get", "events", "-A", "-o", "json"]);
    for reason in [
        "CARotationTrustingBoth",
        "CARotationSwitched",
        "CARotationCompleted",
    ] {
        assert!(events.contains(reason), "no {reason} Event");
    }
}
