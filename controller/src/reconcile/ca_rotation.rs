//! The reconcile side of a cluster CA rotation (`pki::rotation` holds the stages): the
//! annotation and status in, status and one Event per stage out.

use std::time::{Duration, SystemTime};

use hostplane_crds::{CaRotationStatus, ControlPlane};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::json;

use super::{Context, ReconcileError, apply_status, publish};
use crate::config::TenantRuntime;
use crate::pki::rotation::{self, Inputs, Outcome, Record, Stage};
use crate::pki::{PkiFiles, PkiRequest};
use crate::validate::TenantPlan;

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

/// The tenant PKI with the rotation moved on. Only the processes runtime rotates: the pods
/// runtime does not lay out the trust bundle.
pub(super) fn ensure_pki(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    existing: &PkiFiles,
    request: &PkiRequest,
) -> Result<Outcome, ReconcileError> {
    let annotation = match ctx.config.runtime {
        TenantRuntime::Processes => cp.annotations().get(rotation::ANNOTATION),
        TenantRuntime::Pods => None,
    };
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
