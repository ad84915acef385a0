//! Hibernation: whether a tenant's processes should run now. A pure decision from the spec, the
//! proxy's annotations (last activity, wake requests) and what status says, so that the rules
//! are unit-tested and the reconcile pass only carries them out.
//!
//! The proxy is what sees tenant traffic: it stamps `last-activity` on the ControlPlane while
//! connections come and go, and `wake-requested` when a client reaches a hibernated tenant.
//! Without a proxy nobody would notice traffic, so idle hibernation needs one.

use std::time::Duration;

use hostplane_crds::{ControlPlane, LAST_ACTIVITY_ANNOTATION, WAKE_REQUESTED_ANNOTATION};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::status::READY;

/// What the pass should do with the tenant's processes.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Run (or keep running) the tenant; look again at `recheck_at` when idleness may have set in.
    Run { recheck_at: Option<Timestamp> },
    /// Stop the processes (or keep them stopped), keeping the datastore.
    Hibernate { why: Why },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `spec.hibernation.paused`: stays hibernated whatever the traffic.
    Paused,
    /// No connection through the proxy for the idle period.
    Idle,
    /// Already hibernated and nobody asked to wake it.
    StillIdle,
}

impl Why {
    pub fn message(self, idle_after: Option<Duration>) -> String {
        match self {
            Why::Paused => {
                "hibernated: spec.hibernation.paused is true; processes stopped, data kept".into()
            }
            Why::Idle | Why::StillIdle => format!(
                "hibernated after {}s without traffic; processes stopped, data kept; the first \
                 connection through the proxy wakes it",
                idle_after.unwrap_or_default().as_secs()
            ),
        }
    }
}

/// Everything the decision depends on, read off the object by [`Inputs::of`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    pub paused: bool,
    /// The idle period, when idle hibernation applies to this tenant.
    pub idle_after: Option<Duration>,
    pub hibernated_at: Option<Timestamp>,
    pub last_activity: Option<Timestamp>,
    pub wake_requested: Option<Timestamp>,
    /// When the tenant last became Ready, if it is Ready now.
    pub ready_since: Option<Timestamp>,
}

impl Inputs {
    /// `default_idle_after` is the controller's setting; `proxy` says whether a proxy watches
    /// the traffic (without one, idle hibernation is off: nothing would wake the tenant).
    pub fn of(cp: &ControlPlane, default_idle_after: Option<Duration>, proxy: bool) -> Self {
        let spec = cp.spec.hibernation.as_ref();
        let idle_after = spec
            .and_then(|h| h.idle_after_seconds)
            .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
            .or(default_idle_after)
            .filter(|d| !d.is_zero() && proxy);
        let annotation = |key: &str| -> Option<Timestamp> {
            cp.metadata.annotations.as_ref()?.get(key)?.parse().ok()
        };
        let status = cp.status.as_ref();
        Inputs {
            paused: spec.and_then(|h| h.paused).unwrap_or(false),
            idle_after,
            hibernated_at: status.and_then(|s| s.hibernated_at.as_ref()).map(|t| t.0),
            last_activity: annotation(LAST_ACTIVITY_ANNOTATION),
            wake_requested: annotation(WAKE_REQUESTED_ANNOTATION),
            ready_since: cp
                .condition(READY)
                .filter(|c| c.status == "True")
                .map(|c| c.last_transition_time.0),
        }
    }
}

pub fn decide(inputs: &Inputs, now: Timestamp) -> Decision {
    if inputs.paused {
        return Decision::Hibernate { why: Why::Paused };
    }
    if let Some(since) = inputs.hibernated_at {
        // A wake request newer than the hibernation wakes it; older ones were already served.
        return if inputs.wake_requested.is_some_and(|w| w > since) {
            Decision::Run { recheck_at: None }
        } else {
            Decision::Hibernate {
                why: Why::StillIdle,
            }
        };
    }
    let (Some(idle_after), Some(ready_since)) = (inputs.idle_after, inputs.ready_since) else {
        // Idle hibernation is off, or the tenant is not up yet (a starting tenant is not idle).
        return Decision::Run { recheck_at: None };
    };
    let last_seen = [inputs.last_activity, inputs.wake_requested]
        .into_iter()
        .flatten()
        .fold(ready_since, Timestamp::max);
    let idle_at = last_seen
        .checked_add(SignedDuration::try_from(idle_after).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if now >= idle_at {
        Decision::Hibernate { why: Why::Idle }
    } else {
        Decision::Run {
            recheck_at: Some(idle_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostplane_crds::{ControlPlaneSpec, Hibernation};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-11-23T12:00:00Z";

    fn awake(ready_since: &str) -> Inputs {
        Inputs {
            idle_after: Some(Duration::from_secs(300)),
            ready_since: Some(at(ready_since)),
            ..Default::default()
        }
    }

    #[test]
    fn a_tenant_without_traffic_hibernates_once_idle_after_has_passed_since_ready() {
        assert_eq!(
            decide(&awake("2026-11-23T11:56:00Z"), at(NOW)),
            Decision::Run {
                recheck_at: Some(at("2026-11-23T12:01:00Z"))
            }
        );
        assert_eq!(
            decide(&awake("2026-11-23T11:55:00Z"), at(NOW)),
            Decision::Hibernate { why: Why::Idle }
        );
    }

    #[test]
    fn traffic_and_wake_requests_postpone_hibernation() {
        let mut inputs = awake("2026-11-23T10:00:00Z");
        inputs.last_activity = Some(at("2026-11-23T11:58:00Z"));
        assert_eq!(
            decide(&inputs, at(NOW)),
            Decision::Run {
                recheck_at: Some(at("2026-11-23T12:03:00Z"))
            }
        );
        inputs.last_activity = Some(at("2026-11-23T11:00:00Z"));
        inputs.wake_requested = Some(at("2026-11-23T11:59:00Z"));
        assert_eq!(
            decide(&inputs, at(NOW)),
            Decision::Run {
                recheck_at: Some(at("2026-11-23T12:04:00Z"))
            }
        );
    }

    #[test]
    fn a_hibernated_tenant_stays_so_until_a_newer_wake_request() {
        let mut inputs = Inputs {
            idle_after: Some(Duration::from_secs(300)),
            hibernated_at: Some(at("2026-11-23T11:00:00Z")),
            wake_requested: Some(at("2026-11-23T10:00:00Z")),
            ..Default::default()
        };
        assert_eq!(
            decide(&inputs, at(NOW)),
            Decision::Hibernate {
                why: Why::StillIdle
            }
        );
        inputs.wake_requested = Some(at("2026-11-23T11:30:00Z"));
        assert_eq!(decide(&inputs, at(NOW)), Decision::Run { recheck_at: None });
    }

    #[test]
    fn paused_wins_over_wake_requests_and_idle_off_or_starting_means_run() {
        let inputs = Inputs {
            paused: true,
            wake_requested: Some(at(NOW)),
            ..Default::default()
        };
        assert_eq!(
            decide(&inputs, at(NOW)),
            Decision::Hibernate { why: Why::Paused }
        );
        let mut starting = awake("2026-11-23T10:00:00Z");
        starting.ready_since = None;
        assert_eq!(
            decide(&starting, at(NOW)),
            Decision::Run { recheck_at: None }
        );
        let mut off = awake("2026-11-23T10:00:00Z");
        off.idle_after = None;
        assert_eq!(decide(&off, at(NOW)), Decision::Run { recheck_at: None });
    }

    #[test]
    fn inputs_come_from_spec_annotations_status_and_controller_default() {
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        cp.metadata.annotations = Some(
            [
                (LAST_ACTIVITY_ANNOTATION.to_string(), NOW.to_string()),
                (WAKE_REQUESTED_ANNOTATION.to_string(), "garbage".to_string()),
            ]
            .into(),
        );
        let default = Some(Duration::from_secs(60));
        let inputs = Inputs::of(&cp, default, true);
        assert_eq!(
            inputs,
            Inputs {
                idle_after: default,
                last_activity: Some(at(NOW)),
                ..Default::default()
            }
        );
        // No proxy: nobody sees traffic, so idle hibernation is off.
        assert_eq!(Inputs::of(&cp, default, false).idle_after, None);
        // The spec overrides the default; 0 turns it off for this tenant.
        cp.spec.hibernation = Some(Hibernation {
            idle_after_seconds: Some(0),
            paused: Some(true),
        });
        let inputs = Inputs::of(&cp, default, true);
        assert_eq!((inputs.idle_after, inputs.paused), (None, true));
    }
}
