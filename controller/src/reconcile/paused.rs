//! Pausing reconciliation: the annotation `tenancy.hostplane.io/reconcile-paused: "true"` holds
//! every pass back, for an operator doing manual maintenance on a tenant.
//!
//! While paused the controller changes nothing it owns: no provisioning, no spec change applied
//! (so `observedGeneration` stays), no restart for new files or certificates, no upgrade, no
//! hook applied, no hibernation or wake, no CA rotation stage, no token renewal. Its only write
//! is `Synced=False` (reason `ReconcilePaused`, saying how to resume); `Ready` is left as the
//! last pass saw it, since checking health is part of a pass. A pause is for maintenance, not
//! for parking a tenant (hibernation is): tokens and leaf certificates it outlasts lapse.
//!
//! The tenant keeps running as it is. The process supervisor is not a pass: it goes on
//! restarting a crashed process with the argv and files it already had, as the kubelet goes on
//! restarting a crashed container of the pods runtime. Both restore what was running and apply
//! nothing new, so the two runtimes behave alike. A controller restarted during the pause does
//! not adopt (nor supervise) the running processes until it is resumed.
//!
//! Deletion waits too, as with Cluster API's `paused`: the finalizer's teardown is the most
//! destructive thing the controller does, and an operator who paused a tenant to work on it
//! (its datastore, say) must not have it removed underneath by a stray `kubectl delete`.
//! The message says so, and removing the annotation lets the deletion go on.
//!
//! The Events `ReconcilePaused` and `ReconcileResumed` are published once each: whether a
//! pass is the first to see the change is read from `Synced` in status, which outlives the
//! controller, so a restarted or new leader does not announce the pause again.

use hostplane_crds::{ControlPlane, RECONCILE_PAUSED_ANNOTATION};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::{Context, ReconcileError, apply_status, manager, owned_status, publish};
use crate::metrics::PAUSED_STATE;
use crate::status::{ConditionState, SYNCED, reason};

/// Event reason of the first pass after the annotation is removed.
pub const RESUMED: &str = "ReconcileResumed";

/// What a pass does about the annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not paused, and not paused before: an ordinary pass.
    Reconcile,
    /// Paused: write status only; `announce` when this pass is the first to see the pause.
    Hold { announce: bool },
    /// No longer paused: an ordinary pass, announced.
    Resume,
}

/// Whether the annotation pauses `cp`: only `"true"` does (any case, surrounding blanks
/// ignored), so `"false"` is an explicit "not paused".
pub fn is_paused(cp: &ControlPlane) -> bool {
    cp.annotations()
        .get(RECONCILE_PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Whether the last status written said the ControlPlane was paused.
fn was_paused(cp: &ControlPlane) -> bool {
    cp.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == SYNCED))
        .is_some_and(|c| c.reason == reason::RECONCILE_PAUSED)
}

pub fn decide(cp: &ControlPlane) -> Decision {
    match (is_paused(cp), was_paused(cp)) {
        (true, was) => Decision::Hold { announce: !was },
        (false, true) => Decision::Resume,
        (false, false) => Decision::Reconcile,
    }
}

/// The `Synced` message while paused: why, and how to resume.
pub fn message(cp: &ControlPlane) -> String {
    let deletion = if cp.metadata.deletion_timestamp.is_some() {
        " (its deletion waits until then)"
    } else {
        ""
    };
    format!(
        "reconciliation is paused by the annotation {RECONCILE_PAUSED_ANNOTATION}{deletion}; \
         resume with `kubectl annotate controlplane {} {RECONCILE_PAUSED_ANNOTATION}-`",
        cp.name_any()
    )
}

/// What this controller last announced per ControlPlane (by uid). Status says whether a pause
/// was announced, but a pass may start from a cached object older than the status the previous
/// pass wrote, and would announce the same change again.
#[derive(Default)]
pub struct Announcements(std::sync::Mutex<std::collections::HashMap<String, bool>>);

impl Announcements {
    /// Records that `paused` is announced for `uid`; false when it already was.
    fn first(&self, uid: &str, paused: bool) -> bool {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.insert(uid.to_string(), paused) != Some(paused)
    }
}

/// The whole pass of a paused ControlPlane: `Synced=False ReconcilePaused`, every other field
/// of status (observedGeneration and Ready included) as it was.
pub async fn hold(
    cp: &ControlPlane,
    ctx: &Context,
    announce: bool,
) -> Result<Action, ReconcileError> {
    let previous = cp.status.clone().unwrap_or_default();
    let message = message(cp);
    let synced = ConditionState::new(false, reason::RECONCILE_PAUSED, message.clone());
    let status = owned_status(
        cp,
        &[(SYNCED, synced)],
        previous.observed_generation,
        previous.hibernated_at.is_some(),
        None,
        &Time(Timestamp::now()),
    );
    apply_status(ctx, cp, manager::STATUS, "status", status).await?;
    ctx.metrics
        .set_tenant_state(&cp.name_any(), Some(PAUSED_STATE));
    if announce
        && ctx
            .pause_announcements
            .first(&cp.uid().unwrap_or_default(), true)
    {
        info!(controlplane = %cp.name_any(), "reconciliation paused");
        publish(
            ctx,
            cp,
            EventType::Normal,
            reason::RECONCILE_PAUSED,
            message,
        )
        .await;
    }
    // Removing the annotation is a watch event; nothing else needs a pass meanwhile.
    Ok(Action::await_change())
}

/// Announces the first pass after the pause (which then reconciles as usual).
pub async fn announce_resume(cp: &ControlPlane, ctx: &Context) {
    if !ctx
        .pause_announcements
        .first(&cp.uid().unwrap_or_default(), false)
    {
        return;
    }
    info!(controlplane = %cp.name_any(), "reconciliation resumed");
    publish(
        ctx,
        cp,
        EventType::Normal,
        RESUMED,
        format!(
            "annotation {RECONCILE_PAUSED_ANNOTATION} removed: reconciling again, pending changes included"
        ),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::merge_conditions;
    use hostplane_crds::{ControlPlaneSpec, ControlPlaneStatus};

    fn cp(annotation: Option<&str>, synced_reason: Option<&str>) -> ControlPlane {
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        if let Some(value) = annotation {
            cp.annotations_mut()
                .insert(RECONCILE_PAUSED_ANNOTATION.into(), value.into());
        }
        cp.status = synced_reason.map(|why| ControlPlaneStatus {
            conditions: merge_conditions(
                &[],
                &[(
                    SYNCED,
                    ConditionState::new(why == reason::RECONCILE_SUCCESS, why, ""),
                )],
                &Time("2026-01-01T00:00:00Z".parse().unwrap()),
            ),
            ..Default::default()
        });
        cp
    }

    #[test]
    fn the_pause_is_announced_once_and_so_is_the_resume() {
        let success = Some(reason::RECONCILE_SUCCESS);
        let paused = Some(reason::RECONCILE_PAUSED);
        let cases = [
            // Never annotated, or annotated "false": ordinary passes.
            (cp(None, None), Decision::Reconcile),
            (cp(None, success), Decision::Reconcile),
            (cp(Some("false"), success), Decision::Reconcile),
            // Annotated: held, announced by the first pass only.
            (cp(Some("true"), success), Decision::Hold { announce: true }),
            (cp(Some(" TRUE "), None), Decision::Hold { announce: true }),
            (cp(Some("true"), paused), Decision::Hold { announce: false }),
            // Removed (or set to something else) after a pause: resumed, once.
            (cp(None, paused), Decision::Resume),
            (cp(Some("false"), paused), Decision::Resume),
            (cp(Some("yes"), paused), Decision::Resume),
        ];
        for (cp, expected) in cases {
            assert_eq!(
                decide(&cp),
                expected,
                "{:?} {:?}",
                cp.metadata.annotations,
                cp.status
            );
        }
    }

    #[test]
    fn each_change_is_announced_once_even_from_a_stale_object() {
        let announced = Announcements::default();
        assert!(announced.first("u", true), "the pause");
        assert!(!announced.first("u", true), "the same pause, seen again");
        assert!(announced.first("u", false), "the resume");
        assert!(
            !announced.first("u", false),
            "the same resume from a stale object"
        );
        assert!(announced.first("other", false), "another ControlPlane");
    }

    #[test]
    fn the_message_says_how_to_resume_and_that_deletion_waits() {
        let mut cp = cp(Some("true"), None);
        let text = message(&cp);
        assert!(
            text.contains(
                "kubectl annotate controlplane acme tenancy.hostplane.io/reconcile-paused-"
            ),
            "{text}"
        );
        assert!(!text.contains("deletion"), "{text}");
        cp.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(message(&cp).contains("deletion waits"), "{}", message(&cp));
    }
}
