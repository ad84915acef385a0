//! The reconcile side of a cluster CA rotation (`pki::rotation` holds the stages): the
//! annotation and status in, status and one Event per stage out. Both runtimes rotate: the
//! processes runtime restarts the tenant's processes when the files they read only at start
//! change (`ControlPlaneBundle::fingerprint`), the pods runtime rolls the Deployment when they
//! do (`build::pods::RESTART_DIGEST_ANNOTATION`), once per stage either way.
//!
//! Also the warning before a tenant CA expires (`pki::expiry`), which no stage here prevents
//! for the front-proxy and etcd CAs.

use std::time::{Duration, SystemTime};

use hostplane_crds::{CaRotationStatus, ControlPlane};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::json;

use super::{Context, ReconcileError, apply_status, get_secret, publish};
use crate::build::objects::{CERTS_SECRET, secret_strings};
use crate::pki::rotation::{self, Inputs, Outcome, Record, Stage};
use crate::pki::{PkiFiles, PkiRequest, expiry};
use crate::validate::{TenantPlan, system_namespace};

const MANAGER: &str = "hostplane-controller-ca-rotation";

/// How long each stage lasts: the option, else the tenant's token lifetime (every kubeconfig
/// handed out before a stage has then expired).
pub(super) fn overlap(plan: &TenantPlan, ctx: &Context) -> Duration {
    ctx.config
        .ca_rotation_overlap
        .unwrap_or(Duration::from_secs(plan.token_ttl_seconds.max(0) as u64))
}

fn recorded(cp: &ControlPlane) -> Option<Record> {
    let s = cp.status.as_ref()?.ca_rotation.as_ref()?;
    Some(Record {
        requested: s.requested.clone(),
        stage: Stage::parse(&s.stage)?,
        since: s.since.parse::<Timestamp>().ok()?.as_second(),
    })
}

/// The tenant PKI with the rotation moved on.
pub(super) fn ensure_pki(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    existing: &PkiFiles,
    request: &PkiRequest,
) -> Result<Outcome, ReconcileError> {
    let annotation = cp.annotations().get(rotation::ANNOTATION);
    let recorded = recorded(cp);
    let input = Inputs {
        annotation: annotation.map(String::as_str),
        recorded: recorded.as_ref(),
        overlap: overlap(plan, ctx),
    };
    Ok(rotation::ensure_pki_rotating(
        existing,
        request,
        &input,
        SystemTime::now(),
    )?)
}

/// Mirrors the rotation into status once its files are stored, with an Event when the stage
/// changed (so an Event lost to a crash is published on the next pass).
pub(super) async fn record(
    ctx: &Context,
    cp: &ControlPlane,
    record: Option<&Record>,
) -> Result<(), ReconcileError> {
    let Some(r) = record else {
        return Ok(());
    };
    if recorded(cp).as_ref() == Some(r) {
        return Ok(());
    }
    let since = Timestamp::from_second(r.since).unwrap_or(Timestamp::UNIX_EPOCH);
    let status = CaRotationStatus {
        requested: r.requested.clone(),
        stage: r.stage.as_str().into(),
        since: since.to_string(),
    };
    apply_status(
        ctx,
        cp,
        MANAGER,
        "status.caRotation",
        json!({ "caRotation": status }),
    )
    .await?;
    let note = match r.stage {
        Stage::TrustingBoth => {
            "cluster CA rotation: a new CA is trusted beside the old one; kubeconfigs re-issued"
        }
        Stage::Switched => "cluster CA rotation: certificates re-issued from the new CA",
        Stage::Completed => "cluster CA rotation completed: the old CA is no longer trusted",
    };
    publish(
        ctx,
        cp,
        EventType::Normal,
        &format!("CARotation{}", r.stage.as_str()),
        format!("{note} (request {:?})", r.requested),
    )
    .await;
    Ok(())
}

/// Event reason when a tenant CA has less than `expiry::DEFAULT_WARN_FRACTION` of its life left.
pub(super) const CA_EXPIRING_SOON: &str = "CAExpiringSoon";

/// What to tell about the tenant's CAs nearing their end, from its stored certificates (read
/// again here: a pass that finds the tenant Ready has them stored already); `None` when every
/// CA has more than a tenth of its life left, or when the Secret cannot be read (the pass that
/// stored it reported that).
pub(super) async fn expiry_warning(ctx: &Context, cp: &ControlPlane) -> Option<String> {
    let namespace = system_namespace(&cp.name_any());
    let files = match get_secret(ctx, &namespace, CERTS_SECRET).await {
        Ok(secret) => secret.as_ref().map(secret_strings)?,
        Err(e) => {
            tracing::warn!(controlplane = %cp.name_any(), error = %e, "cannot check CA expiry");
            return None;
        }
    };
    expiry::warning(&expiry::expiring_cas(
        &files,
        expiry::DEFAULT_WARN_FRACTION,
        SystemTime::now(),
    ))
}
