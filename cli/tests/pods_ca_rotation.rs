//! End to end, a cluster CA rotation in the `pods` runtime: `hostplane controller --runtime pods`
//! against a real host API server takes a ControlPlane annotated `tenancy.hostplane.io/rotate-ca`
//! through its three stages, mounting the trust bundle where kube-apiserver and
//! kube-controller-manager read it and rolling the Deployment exactly once per stage. The host
//! runs no kubelet: the test plays the Deployment controller by writing the Deployment's status.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use hostplane_crds::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);
const NS: &str = "acme-system";
const DEPLOYMENT: &str = "acme-control-plane";
/// Each stage lasts this long (`--ca-rotation-overlap-seconds`).
const OVERLAP_SECONDS: u64 = 12;
const DIGEST: &str = "tenancy.hostplane.io/restart-digest";

async fn start_bed() -> PodsBed {
    let overlap = OVERLAP_SECONDS.to_string();
    PodsBed::start(&[
        ("HOSTPLANE_CA_ROTATION_OVERLAP_SECONDS", &overlap),
        // Ready passes come back every 2 s: a roll the controller would repeat shows.
        ("HOSTPLANE_HEALTH_CHECK_SECONDS", "2"),
    ])
    .await
}

impl PodsBed {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) {
        let out = match stdin {
            Some(text) => self.host.run_kubectl_with_stdin(args, text),
            None => self.host.run_kubectl(args),
        };
        assert!(out.success(), "kubectl {args:?} failed: {}", out.combined());
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.host.client(), NS)
    }

    async fn certs(&self) -> BTreeMap<String, String> {
        let secret = Api::<Secret>::namespaced(self.host.client(), NS)
            .get("k8s-certs")
            .await
            .unwrap();
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    /// `status.caRotation` as (requested, stage).
    async fn rotation(&self) -> Option<(String, String)> {
        let cp = Api::<ControlPlane>::all(self.host.client())
            .get("acme")
            .await
            .ok()?;
        let r = cp.status?.ca_rotation?;
        Some((r.requested, r.stage))
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

/// The pod template's generation and restart digest, and the Deployment as JSON.
struct Template {
    generation: i64,
    digest: String,
    json: Value,
}

async fn template(deployments: &Api<Deployment>) -> Template {
    let d = deployments.get(DEPLOYMENT).await.unwrap();
    let json = serde_json::to_value(&d).unwrap();
    Template {
        generation: d.metadata.generation.unwrap(),
        digest: json["spec"]["template"]["metadata"]["annotations"][DIGEST]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        json,
    }
}

impl Template {
    /// The value of `flag` in `container`'s args.
    fn flag(&self, container: &str, flag: &str) -> String {
        let prefix = format!("{flag}=");
        self.json["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container)
            .unwrap_or_else(|| panic!("no container {container}"))["args"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| a.as_str().unwrap().strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("{container} has no {flag}"))
    }

    /// What a container finds at `path` (under the mount at /etc/kubernetes): the content of the
    /// k8s-certs key the projected volume puts there.
    fn mounted(&self, certs: &BTreeMap<String, String>, path: &str) -> String {
        let relative = path
            .strip_prefix("/etc/kubernetes/")
            .unwrap_or_else(|| panic!("{path} is not under the config mount"));
        let sources = &self.json["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["secret"]["name"], "k8s-certs");
        let key = sources[0]["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"] == relative)
            .unwrap_or_else(|| panic!("nothing is mounted at {relative}"))["key"]
            .as_str()
            .unwrap()
            .to_string();
        certs[&key].clone()
    }

    fn mounted_keys(&self) -> Vec<String> {
        self.json["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["secret"]
            ["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_string())
            .collect()
    }
}

/// What the Deployment controller would write once the pod of the current spec is available.
async fn mark_available(deployments: &Api<Deployment>) {
    mark_deployment_available(deployments, DEPLOYMENT).await;
}

/// Waits for `stage` in status, recording every pod template seen meanwhile; returns the
/// template once the Deployment carries the stage's files.
async fn wait_stage(
    bed: &PodsBed,
    stage: &str,
    seen: &mut Vec<(i64, String)>,
    generation: i64,
) -> Template {
    let deployments = bed.deployments();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let t = template(&deployments).await;
        if seen.last() != Some(&(t.generation, t.digest.clone())) {
            seen.push((t.generation, t.digest.clone()));
        }
        let at_stage = bed
            .rotation()
            .await
            .is_some_and(|(r, s)| r == "r1" && s == stage);
        if at_stage && t.generation == generation {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {stage} at generation {generation}: status {:?}, templates seen {seen:?}",
            bed.rotation().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Deployment's generation stays `generation` for several passes of the controller.
async fn stays_at(bed: &PodsBed, generation: i64, seen: &mut Vec<(i64, String)>) {
    for _ in 0..12 {
        let t = template(&bed.deployments()).await;
        if seen.last() != Some(&(t.generation, t.digest.clone())) {
            seen.push((t.generation, t.digest.clone()));
        }
        assert_eq!(t.generation, generation, "the pods rolled again: {seen:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_ca_rotation_mounts_the_trust_bundle_and_rolls_the_pods_once_per_stage() {
    let bed = start_bed().await;
    let cps = Api::<ControlPlane>::all(bed.host.client());
    bed.kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: acme\nspec:\n  type: k8s\n"),
    );
    let deployments = bed.deployments();
    eventually("the Deployment", || async {
        deployments.get_opt(DEPLOYMENT).await.unwrap()
    })
    .await;
    mark_available(&deployments).await;
    let cp = wait_ready_state(&cps, "acme", "True", Some("Available"), TIMEOUT).await;
    // Fresh ten-year CAs: nothing to warn about.
    let (_, _, synced) = condition(&cp, "Synced").unwrap();
    assert!(!synced.contains(" CA expire"), "{synced}");

    // Before: ca.crt alone, and no roll while nothing changes.
    let start = template(&deployments).await;
    let mut seen = vec![(start.generation, start.digest.clone())];
    assert_eq!(
        start.digest.len(),
        64,
        "{:?}",
        start.json["spec"]["template"]["metadata"]
    );
    let certs = bed.certs().await;
    let old_ca = certs["ca.crt"].clone();
    let client_ca = start.flag("kube-apiserver", "--client-ca-file");
    assert_eq!(client_ca, "/etc/kubernetes/pki/ca.crt");
    assert_eq!(start.mounted(&certs, &client_ca), old_ca);
    stays_at(&bed, start.generation, &mut seen).await;

    bed.kubectl(
        &[
            "annotate",
            "controlplane",
            "acme",
            "tenancy.hostplane.io/rotate-ca=r1",
        ],
        None,
    );

    // Stage 1: both CAs trusted by the API server's client CA file and kube-controller-manager's
    // root CA; certificates still signed by the old one.
    let trusting = wait_stage(&bed, "TrustingBoth", &mut seen, start.generation + 1).await;
    let certs = bed.certs().await;
    let new_ca = certs["ca-next.crt"].clone();
    assert_ne!(new_ca, old_ca);
    assert_eq!(certs["ca.crt"], old_ca);
    let both = format!("{old_ca}{new_ca}");
    assert_eq!(certs["ca-bundle.crt"], both);
    let client_ca = trusting.flag("kube-apiserver", "--client-ca-file");
    assert_eq!(client_ca, "/etc/kubernetes/pki/ca-bundle.crt");
    assert_eq!(trusting.mounted(&certs, &client_ca), both);
    let root_ca = trusting.flag("kube-controller-manager", "--root-ca-file");
    assert_eq!(trusting.mounted(&certs, &root_ca), both);
    let signing = trusting.flag("kube-controller-manager", "--cluster-signing-cert-file");
    assert_eq!(trusting.mounted(&certs, &signing), old_ca);
    // The incoming CA's key and the rotation's state stay out of the pods.
    let keys = trusting.mounted_keys();
    for key in ["ca-next.key", "ca-next.crt", "ca-rotation", "admin.key"] {
        assert!(!keys.contains(&key.to_string()), "{key} mounted: {keys:?}");
    }
    assert_ne!(trusting.digest, start.digest);
    mark_available(&deployments).await;

    // Stage 2: the new CA signs; the old one is still trusted.
    let switched = wait_stage(&bed, "Switched", &mut seen, start.generation + 2).await;
    let certs = bed.certs().await;
    assert_eq!(certs["ca.crt"], new_ca);
    assert_eq!(certs["ca-previous.crt"], old_ca);
    let both = format!("{new_ca}{old_ca}");
    let client_ca = switched.flag("kube-apiserver", "--client-ca-file");
    assert_eq!(switched.mounted(&certs, &client_ca), both);
    let signing = switched.flag("kube-controller-manager", "--cluster-signing-cert-file");
    assert_eq!(switched.mounted(&certs, &signing), new_ca);
    assert!(!certs.contains_key("ca-next.crt"), "{:?}", certs.keys());
    mark_available(&deployments).await;

    // Stage 3: the old CA is dropped.
    let completed = wait_stage(&bed, "Completed", &mut seen, start.generation + 3).await;
    let certs = bed.certs().await;
    for gone in [
        "ca-bundle.crt",
        "ca-previous.crt",
        "ca-next.crt",
        "ca-rotation",
    ] {
        assert!(!certs.contains_key(gone), "{gone} left: {:?}", certs.keys());
    }
    let client_ca = completed.flag("kube-apiserver", "--client-ca-file");
    assert_eq!(client_ca, "/etc/kubernetes/pki/ca.crt");
    assert_eq!(completed.mounted(&certs, &client_ca), new_ca);
    let root_ca = completed.flag("kube-controller-manager", "--root-ca-file");
    assert_eq!(completed.mounted(&certs, &root_ca), new_ca);
    assert!(
        !completed
            .mounted_keys()
            .contains(&"ca-bundle.crt".to_string()),
        "{:?}",
        completed.mounted_keys()
    );
    mark_available(&deployments).await;
    stays_at(&bed, start.generation + 3, &mut seen).await;

    // One pod template per stage, each with its own digest, and nothing between them.
    let generations: Vec<i64> = seen.iter().map(|(g, _)| *g).collect();
    let first = start.generation;
    assert_eq!(
        generations,
        [first, first + 1, first + 2, first + 3],
        "{seen:?}"
    );
    let digests: std::collections::BTreeSet<&String> = seen.iter().map(|(_, d)| d).collect();
    assert_eq!(digests.len(), 4, "{seen:?}");

    // Each stage told with an Event.
    let events = events_about(&bed.host, "acme").await;
    for reason in [
        "CARotationTrustingBoth",
        "CARotationSwitched",
        "CARotationCompleted",
    ] {
        assert!(
            events.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "no {reason} Event"
        );
    }
}
