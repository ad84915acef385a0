//! Step 6: conditions in KubeFlex's shape. A condition's `lastTransitionTime` changes only when
//! its status does, and `lastUpdateTime` only when anything in it does, so an unchanged pass
//! writes an identical status (no watch event, no reconcile loop).

use hostplane_crds::{ControlPlaneCondition, ControlPlaneStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";

/// Reasons users see on `Ready` and `Synced` (KubeFlex's, plus ours).
pub mod reason {
    pub const CREATING: &str = "Creating";
    pub const AVAILABLE: &str = "Available";
    pub const UNAVAILABLE: &str = "Unavailable";
    pub const DELETING: &str = "Deleting";
    pub const WAITING_FOR_HOOKS: &str = "WaitingForPostCreateHooks";
    pub const HIBERNATED: &str = "Hibernated";
    pub const RECONCILE_SUCCESS: &str = "ReconcileSuccess";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    /// `Synced` while the annotation `tenancy.hostplane.io/reconcile-paused` holds passes back.
    pub const RECONCILE_PAUSED: &str = "ReconcilePaused";
}

/// What one condition should say now.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionState {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl ConditionState {
    pub fn new(status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The new condition list: `updates` applied over `previous`, times kept where nothing changed.
pub fn merge_conditions(
    previous: &[ControlPlaneCondition],
    updates: &[(&str, ConditionState)],
    now: &Time,
) -> Vec<ControlPlaneCondition> {
    let mut out: Vec<ControlPlaneCondition> = previous.to_vec();
    for (type_, state) in updates {
        let status = if state.status { "True" } else { "False" }.to_string();
        let old = out.iter().position(|c| c.type_ == *type_);
        let new = match old.map(|i| &out[i]) {
            Some(c)
                if c.status == status && c.reason == state.reason && c.message == state.message =>
            {
                c.clone()
            }
            Some(c) => ControlPlaneCondition {
                type_: type_.to_string(),
                last_transition_time: if c.status == status {
                    c.last_transition_time.clone()
                } else {
                    now.clone()
                },
                status,
                last_update_time: now.clone(),
                reason: state.reason.clone(),
                message: state.message.clone(),
            },
            None => ControlPlaneCondition {
                type_: type_.to_string(),
                status,
                last_transition_time: now.clone(),
                last_update_time: now.clone(),
                reason: state.reason.clone(),
                message: state.message.clone(),
            },
        };
        match old {
            Some(i) => out[i] = new,
            None => out.push(new),
        }
    }
    out
}

/// True when the Ready condition says True.
pub fn is_ready(conditions: &[ControlPlaneCondition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

/// Whether a pass that writes Ready=`ready_now` over `previous` (the status it read) makes the
/// tenant Ready for the first time: its provisioning time is recorded then, once.
///
/// Decided from status, which outlives the controller, so that a restarted or new leader
/// neither records a Ready tenant again nor one that recovers from an outage: Ready was not
/// True, and the tenant had never been served — it has no `endpoint` yet (written with the
/// first ready report and kept through outages), or it has one only because
/// `waitForPostCreateHooks` held Ready (reason WaitingForPostCreateHooks) while its hooks had
/// not completed. A tenant held by hooks that then failed another way before becoming Ready is
/// not recorded at all: missing one sample beats recording an outage as provisioning time.
pub fn first_ready(previous: &ControlPlaneStatus, ready_now: bool) -> bool {
    if !ready_now || is_ready(&previous.conditions) {
        return false;
    }
    let held_by_hooks = previous
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == reason::WAITING_FOR_HOOKS)
        && !previous.post_create_hook_completed;
    previous.endpoint.is_none() || held_by_hooks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn first_conditions_get_now_for_both_times() {
        let out = merge_conditions(
            &[],
            &[(READY, ConditionState::new(false, "Creating", "starting"))],
            &t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            out,
            vec![ControlPlaneCondition {
                type_: "Ready".into(),
                status: "False".into(),
                last_transition_time: t("2026-01-01T00:00:00Z"),
                last_update_time: t("2026-01-01T00:00:00Z"),
                reason: "Creating".into(),
                message: "starting".into(),
            }]
        );
    }

    #[test]
    fn unchanged_condition_keeps_both_times_and_message_change_keeps_transition() {
        let first = merge_conditions(
            &[],
            &[(READY, ConditionState::new(true, "Available", "ok"))],
            &t("2026-01-01T00:00:00Z"),
        );
        let same = merge_conditions(
            &first,
            &[(READY, ConditionState::new(true, "Available", "ok"))],
            &t("2026-01-01T01:00:00Z"),
        );
        assert_eq!(same, first);
        let msg = merge_conditions(
            &first,
            &[(READY, ConditionState::new(true, "Available", "ok again"))],
            &t("2026-01-01T02:00:00Z"),
        );
        assert_eq!(msg[0].last_transition_time, t("2026-01-01T00:00:00Z"));
        assert_eq!(msg[0].last_update_time, t("2026-01-01T02:00:00Z"));
        let flip = merge_conditions(
            &msg,
            &[(READY, ConditionState::new(false, "Unavailable", "down"))],
            &t("2026-01-01T03:00:00Z"),
        );
        assert_eq!(flip[0].last_transition_time, t("2026-01-01T03:00:00Z"));
        assert!(!is_ready(&flip));
        assert!(is_ready(&msg));
    }

    #[test]
    fn first_ready_is_the_first_true_of_a_tenant_never_served() {
        let at = t("2026-01-01T00:00:00Z");
        let with_ready = |status: bool, why: &str, endpoint: Option<&str>| ControlPlaneStatus {
            conditions: merge_conditions(
                &[],
                &[(READY, ConditionState::new(status, why, ""))],
                &at,
            ),
            endpoint: endpoint.map(str::to_string),
            ..Default::default()
        };
        let endpoint = Some("https://127.0.0.1:6443");
        // Creation: nothing written yet, or Creating.
        assert!(first_ready(&ControlPlaneStatus::default(), true));
        assert!(first_ready(
            &with_ready(false, reason::CREATING, None),
            true
        ));
        // Not Ready now, or Ready already (the pass after, or a restarted controller's first).
        assert!(!first_ready(
            &with_ready(false, reason::CREATING, None),
            false
        ));
        assert!(!first_ready(
            &with_ready(true, reason::AVAILABLE, endpoint),
            true
        ));
        // Back from an outage or hibernation: served before.
        assert!(!first_ready(
            &with_ready(false, reason::UNAVAILABLE, endpoint),
            true
        ));
        assert!(!first_ready(
            &with_ready(false, reason::HIBERNATED, endpoint),
            true
        ));
        // Held by hooks since it first answered: the first Ready=True comes when they complete.
        let held = with_ready(false, reason::WAITING_FOR_HOOKS, endpoint);
        assert!(first_ready(&held, true));
        let completed_before = ControlPlaneStatus {
            post_create_hook_completed: true,
            ..held
        };
        assert!(!first_ready(&completed_before, true));
    }
}
