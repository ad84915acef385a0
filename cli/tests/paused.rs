//! End to end, through the `hostplane controller` binary: the annotation
//! `tenancy.hostplane.io/reconcile-paused` holds a tenant as it is (its spec changes wait,
//! it keeps serving) until it is removed.

mod common;

use std::time::Duration;

use common::*;
use hostplane_crds::{ControlPlane, RECONCILE_PAUSED_ANNOTATION};
use k8s_openapi::api::events::v1::Event;

const NAME: &str = "frozen";

/// Short resyncs and health checks, so that "nothing happened for two resyncs" is quick to see.
const RESYNC_SECONDS: u64 = 5;
const FAST_PASSES: [(&str, &str); 2] = [
    ("HOSTPLANE_RESYNC_SECONDS", "5"),
    ("HOSTPLANE_HEALTH_CHECK_SECONDS", "3"),
];

/// Lifetime (exp - iat) of the token in the handed-out kubeconfig.
async fn token_lifetime(bed: &ControllerBed) -> i64 {
    let text = handed_out_kubeconfig(&bed.host.client(), NAME, "kubeconfig").await;
    let claims = jwt_claims(&kubeconfig_token(&text));
    claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()
}

/// The Events about the ControlPlane with `reason`.
async fn events(bed: &ControllerBed, reason: &str) -> Vec<Event> {
    events_about(&bed.host, NAME)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Exactly one Event with `reason`, published once (not a series of repeats).
async fn published_once(bed: &ControllerBed, reason: &str) {
    let found = eventually(
        &format!("a {reason} Event"),
        Duration::from_secs(15),
        || async {
            let found = events(bed, reason).await;
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert_eq!(found.len(), 1, "{reason}: {found:?}");
    assert!(found[0].series.is_none(), "{reason} repeated: {found:?}");
}

fn synced(cp: &ControlPlane) -> (String, String, String) {
    condition(cp, "Synced").expect("a Synced condition")
}

fn observed(cp: &ControlPlane) -> i64 {
    cp.status.as_ref().unwrap().observed_generation
}

#[tokio::test]
async fn a_paused_tenant_keeps_serving_and_takes_its_spec_change_once_resumed() {
    let bed = ControllerBed::with(None, &FAST_PASSES).await;
    let api = bed.cps();
    bed.create(NAME, "  tokenExpirationSeconds: 600\n").await;
    assert_eq!(token_lifetime(&bed).await, 600);

    // Pause.
    let (ok, out) = bed.kubectl(
        &[
            "annotate",
            "cp",
            NAME,
            &format!("{RECONCILE_PAUSED_ANNOTATION}=true"),
        ],
        None,
    );
    assert!(ok, "{out}");
    let paused = eventually(
        "Synced=False ReconcilePaused",
        Duration::from_secs(20),
        || async {
            let cp = api.get(NAME).await.ok()?;
            (synced(&cp).1 == "ReconcilePaused").then_some(cp)
        },
    )
    .await;
    let (status, _, message) = synced(&paused);
    assert_eq!(status, "False");
    assert!(
        message.contains(&format!("{RECONCILE_PAUSED_ANNOTATION}-")),
        "the message does not say how to resume: {message}"
    );
    let (ready, why, _) = condition(&paused, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), why.as_str()),
        ("True", "Available"),
        "Ready changed"
    );
    published_once(&bed, "ReconcilePaused").await;

    // A spec change waits: for two resyncs, nothing observes or applies it.
    bed.patch_cp(NAME, "merge", r#"{"spec":{"tokenExpirationSeconds":1800}}"#);
    let changed = api.get(NAME).await.unwrap();
    let generation = changed.metadata.generation.unwrap();
    assert!(generation > observed(&paused));
    let until = std::time::Instant::now() + Duration::from_secs(2 * RESYNC_SECONDS + 2);
    while std::time::Instant::now() < until {
        let cp = api.get(NAME).await.unwrap();
        assert_eq!(
            observed(&cp),
            observed(&paused),
            "observedGeneration moved while paused"
        );
        assert_eq!(synced(&cp).1, "ReconcilePaused");
        assert_eq!(
            token_lifetime(&bed).await,
            600,
            "a new token was issued while paused"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The tenant itself goes on serving.
    let (ok, out) = bed.tenant_kubectl(NAME, &["get", "ns", "default"]).await;
    assert!(ok, "the paused tenant does not answer: {out}");
    // Still announced once, whatever the passes meanwhile.
    published_once(&bed, "ReconcilePaused").await;

    // Resume: the pending change is reconciled.
    let (ok, out) = bed.kubectl(
        &[
            "annotate",
            "cp",
            NAME,
            &format!("{RECONCILE_PAUSED_ANNOTATION}-"),
        ],
        None,
    );
    assert!(ok, "{out}");
    let resumed = eventually(
        "observedGeneration to catch up",
        Duration::from_secs(30),
        || async {
            let cp = api.get(NAME).await.ok()?;
            (observed(&cp) == generation && synced(&cp).1 == "ReconcileSuccess").then_some(cp)
        },
    )
    .await;
    assert_eq!(synced(&resumed).0, "True");
    assert_eq!(token_lifetime(&bed).await, 1800);
    published_once(&bed, "ReconcileResumed").await;
    let (ok, out) = bed.tenant_kubectl(NAME, &["get", "ns", "default"]).await;
    assert!(
        ok,
        "the resumed tenant does not answer with its new token: {out}"
    );
}
