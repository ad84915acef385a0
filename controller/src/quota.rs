//! The storage quota decision: from a tenant's sampled usage (`status.usage.storageBytes`, written
//! by the usage sampler), its limit and what the last pass decided (its `QuotaExceeded`
//! condition), to the condition, the Event and whether the tenant API server refuses writes.
//! Pure; `reconcile::limits` carries it out.
//!
//! Thresholds have hysteresis. A tenant turns read-only at 100% of its limit and writable again
//! only below 95%: the sampled figure moves with every write and with the datastore's own
//! compaction, and without a gap a tenant hovering at its limit would flip between read-only
//! and writable on every sample, each flip an Event and a policy change, and its users would
//! see writes fail and succeed at random. 5% is what they must delete to be sure to get writes
//! back, and the refusal message says how far. The 80% warning has the same kind of gap
//! (cleared below 75%) so that it is announced once, not on every sample.

use hostplane_crds::ControlPlaneCondition;

use crate::status::ConditionState;

/// The condition type: True while the tenant is read-only.
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";

/// Condition and Event reasons.
pub mod reason {
    /// Condition (True): the tenant is read-only.
    pub const EXCEEDED: &str = "StorageQuotaExceeded";
    /// Condition (False): at 80% or more of the limit.
    pub const NEAR_LIMIT: &str = "StorageNearQuota";
    /// Condition (False): comfortably below the limit.
    pub const WITHIN: &str = "WithinStorageQuota";
    /// Event (Warning): the tenant turned read-only.
    pub const EXCEEDED_EVENT: &str = "QuotaExceeded";
    /// Event (Warning): the tenant reached 80% of its limit.
    pub const NEAR_LIMIT_EVENT: &str = "QuotaNearLimit";
    /// Event (Normal): the tenant is writable again.
    pub const RESTORED_EVENT: &str = "QuotaRestored";
}

/// Percentages of the limit, see the module comment.
const EXCEEDED_AT: i128 = 100;
const RESTORED_BELOW: i128 = 95;
const NEAR_AT: i128 = 80;
const NEAR_CLEARED_BELOW: i128 = 75;

/// Where a tenant's storage stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageState {
    Within,
    NearLimit,
    Exceeded,
}

impl StorageState {
    /// What the last pass decided, from the condition it wrote.
    pub fn of(condition: Option<&ControlPlaneCondition>) -> Self {
        match condition {
            Some(c) if c.status == "True" => Self::Exceeded,
            Some(c) if c.reason == reason::NEAR_LIMIT => Self::NearLimit,
            _ => Self::Within,
        }
    }
}

/// What the pass knows.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaInputs<'a> {
    /// The ControlPlane's name, as users know their tenant.
    pub tenant: &'a str,
    pub limit_bytes: i64,
    /// The sampler's last figure; `None` before the first sample.
    pub used_bytes: Option<i64>,
    /// The `QuotaExceeded` condition the last pass wrote.
    pub previous: Option<&'a ControlPlaneCondition>,
}

/// What the tenant API server's admission policy should be.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyAction {
    /// Refuse creates and updates with this message.
    Deny { message: String },
    /// No policy: the tenant is writable.
    Remove,
    /// Leave it as it is (nothing sampled yet: no new facts).
    Keep,
}

/// An Event to publish because the state changed.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Everything the pass does about the quota.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaDecision {
    pub state: StorageState,
    /// The `QuotaExceeded` condition to write; `None` leaves the condition as it is.
    pub condition: Option<ConditionState>,
    pub policy: PolicyAction,
    pub event: Option<QuotaEvent>,
}

/// `used` is at least `percent`% of `limit`.
fn at_least(used: i64, limit: i64, percent: i128) -> bool {
    i128::from(used) * 100 >= i128::from(limit) * percent
}

/// The byte count below which a read-only tenant is writable again.
pub fn restore_below(limit: i64) -> i64 {
    i64::try_from(i128::from(limit) * RESTORED_BELOW / 100).unwrap_or(limit)
}

pub fn decide(inputs: &QuotaInputs<'_>) -> QuotaDecision {
    let previous = StorageState::of(inputs.previous);
    let Some(used) = inputs.used_bytes else {
        return QuotaDecision {
            state: previous,
            condition: None,
            policy: PolicyAction::Keep,
            event: None,
        };
    };
    let limit = inputs.limit_bytes.max(1);
    let exceeded = match previous {
        StorageState::Exceeded => at_least(used, limit, RESTORED_BELOW),
        _ => at_least(used, limit, EXCEEDED_AT),
    };
    let near = match previous {
        StorageState::NearLimit | StorageState::Exceeded => {
            at_least(used, limit, NEAR_CLEARED_BELOW)
        }
        StorageState::Within => at_least(used, limit, NEAR_AT),
    };
    let state = match (exceeded, near) {
        (true, _) => StorageState::Exceeded,
        (false, true) => StorageState::NearLimit,
        (false, false) => StorageState::Within,
    };
    let percent = i128::from(used) * 100 / i128::from(limit);
    let tenant = inputs.tenant;
    let restore = restore_below(limit);
    let deny_message = format!(
        "tenant {tenant} is over its storage quota ({used} of {limit} bytes): delete objects to \
         free space; reads and deletes still work (writes resume below {restore} bytes)"
    );
    let condition = match state {
        StorageState::Exceeded => ConditionState::new(true, reason::EXCEEDED, &deny_message),
        StorageState::NearLimit => ConditionState::new(
            false,
            reason::NEAR_LIMIT,
            format!(
                "{used} of {limit} bytes used ({percent}%): at the limit the tenant becomes \
                 read-only (creates and updates refused)"
            ),
        ),
        StorageState::Within => ConditionState::new(
            false,
            reason::WITHIN,
            format!("{used} of {limit} bytes used ({percent}%)"),
        ),
    };
    let event = match (previous, state) {
        (StorageState::Exceeded, StorageState::Exceeded) => None,
        (_, StorageState::Exceeded) => Some(QuotaEvent {
            warning: true,
            reason: reason::EXCEEDED_EVENT,
            message: deny_message.clone(),
        }),
        (StorageState::Exceeded, _) => Some(QuotaEvent {
            warning: false,
            reason: reason::RESTORED_EVENT,
            message: format!(
                "tenant {tenant} is writable again: {used} of {limit} bytes used, below \
                 {restore} (95% of the limit)"
            ),
        }),
        (StorageState::Within, StorageState::NearLimit) => Some(QuotaEvent {
            warning: true,
            reason: reason::NEAR_LIMIT_EVENT,
            message: format!(
                "tenant {tenant} uses {used} of {limit} bytes of storage ({percent}%): at the \
                 limit it becomes read-only"
            ),
        }),
        _ => None,
    };
    QuotaDecision {
        state,
        policy: match state {
            StorageState::Exceeded => PolicyAction::Deny {
                message: deny_message,
            },
            _ => PolicyAction::Remove,
        },
        condition: Some(condition),
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const LIMIT: i64 = 2_000_000;

    fn condition(state: &ConditionState) -> ControlPlaneCondition {
        let t = Time("2026-11-29T00:00:00Z".parse().unwrap());
        ControlPlaneCondition {
            type_: QUOTA_EXCEEDED.into(),
            status: if state.status { "True" } else { "False" }.into(),
            last_transition_time: t.clone(),
            last_update_time: t,
            reason: state.reason.clone(),
            message: state.message.clone(),
        }
    }

    fn decide_after(previous: Option<&ConditionState>, used: Option<i64>) -> QuotaDecision {
        let previous = previous.map(condition);
        decide(&QuotaInputs {
            tenant: "acme",
            limit_bytes: LIMIT,
            used_bytes: used,
            previous: previous.as_ref(),
        })
    }

    /// Feeds samples one after another, each pass seeing the condition the last one wrote;
    /// returns each pass's state and Event reason.
    fn run(samples: &[i64]) -> Vec<(i64, StorageState, Option<&'static str>)> {
        let mut previous: Option<ConditionState> = None;
        samples
            .iter()
            .map(|&used| {
                let d = decide_after(previous.as_ref(), Some(used));
                previous = d.condition.clone();
                (used, d.state, d.event.map(|e| e.reason))
            })
            .collect()
    }

    #[test]
    fn below_80_percent_the_tenant_is_writable_and_nothing_is_announced() {
        assert_eq!(
            decide_after(None, Some(500_000)),
            QuotaDecision {
                state: StorageState::Within,
                condition: Some(ConditionState::new(
                    false,
                    "WithinStorageQuota",
                    "500000 of 2000000 bytes used (25%)"
                )),
                policy: PolicyAction::Remove,
                event: None,
            }
        );
    }

    #[test]
    fn at_80_percent_a_warning_is_announced_once() {
        assert_eq!(
            decide_after(None, Some(1_700_000)),
            QuotaDecision {
                state: StorageState::NearLimit,
                condition: Some(ConditionState::new(
                    false,
                    "StorageNearQuota",
                    "1700000 of 2000000 bytes used (85%): at the limit the tenant becomes \
                     read-only (creates and updates refused)"
                )),
                policy: PolicyAction::Remove,
                event: Some(QuotaEvent {
                    warning: true,
                    reason: "QuotaNearLimit",
                    message: "tenant acme uses 1700000 of 2000000 bytes of storage (85%): at \
                              the limit it becomes read-only"
                        .into(),
                }),
            }
        );
    }

    #[test]
    fn at_the_limit_the_tenant_turns_read_only_with_a_message_that_says_what_to_do() {
        let message = "tenant acme is over its storage quota (2000000 of 2000000 bytes): delete \
                       objects to free space; reads and deletes still work (writes resume below \
                       1900000 bytes)";
        assert_eq!(
            decide_after(None, Some(LIMIT)),
            QuotaDecision {
                state: StorageState::Exceeded,
                condition: Some(ConditionState::new(true, "StorageQuotaExceeded", message)),
                policy: PolicyAction::Deny {
                    message: message.into()
                },
                event: Some(QuotaEvent {
                    warning: true,
                    reason: "QuotaExceeded",
                    message: message.into(),
                }),
            }
        );
    }

    #[test]
    fn a_read_only_tenant_is_writable_again_only_below_95_percent() {
        assert_eq!(
            run(&[
                1_000_000, 1_600_000, 1_999_999, 2_000_000, 2_100_000, 1_950_000, 1_900_001,
                1_899_999, 1_950_000, 1_999_999
            ]),
            [
                (1_000_000, StorageState::Within, None),
                (1_600_000, StorageState::NearLimit, Some("QuotaNearLimit")),
                (1_999_999, StorageState::NearLimit, None),
                (2_000_000, StorageState::Exceeded, Some("QuotaExceeded")),
                (2_100_000, StorageState::Exceeded, None),
                // Between 95% and 100% a read-only tenant stays read-only...
                (1_950_000, StorageState::Exceeded, None),
                (1_900_001, StorageState::Exceeded, None),
                // ...until it is below 95%; then up to the limit it is writable.
                (1_899_999, StorageState::NearLimit, Some("QuotaRestored")),
                (1_950_000, StorageState::NearLimit, None),
                (1_999_999, StorageState::NearLimit, None),
            ]
        );
    }

    #[test]
    fn the_restore_event_and_the_near_warning_have_their_own_gaps() {
        assert_eq!(
            run(&[
                2_500_000, 100_000, 1_550_000, 1_600_000, 1_510_000, 1_490_000, 1_600_000
            ]),
            [
                (2_500_000, StorageState::Exceeded, Some("QuotaExceeded")),
                (100_000, StorageState::Within, Some("QuotaRestored")),
                (1_550_000, StorageState::Within, None),
                (1_600_000, StorageState::NearLimit, Some("QuotaNearLimit")),
                // Cleared only below 75%, announced again only after that.
                (1_510_000, StorageState::NearLimit, None),
                (1_490_000, StorageState::Within, None),
                (1_600_000, StorageState::NearLimit, Some("QuotaNearLimit")),
            ]
        );
    }

    #[test]
    fn the_restore_event_says_the_tenant_is_writable_again() {
        let exceeded = decide_after(None, Some(LIMIT)).condition.unwrap();
        assert_eq!(
            decide_after(Some(&exceeded), Some(1_000_000)),
            QuotaDecision {
                state: StorageState::Within,
                condition: Some(ConditionState::new(
                    false,
                    "WithinStorageQuota",
                    "1000000 of 2000000 bytes used (50%)"
                )),
                policy: PolicyAction::Remove,
                event: Some(QuotaEvent {
                    warning: false,
                    reason: "QuotaRestored",
                    message: "tenant acme is writable again: 1000000 of 2000000 bytes used, \
                              below 1900000 (95% of the limit)"
                        .into(),
                }),
            }
        );
    }

    #[test]
    fn before_the_first_sample_nothing_changes() {
        let exceeded = decide_after(None, Some(LIMIT)).condition.unwrap();
        assert_eq!(
            [
                decide_after(None, None),
                decide_after(Some(&exceeded), None)
            ],
            [
                QuotaDecision {
                    state: StorageState::Within,
                    condition: None,
                    policy: PolicyAction::Keep,
                    event: None,
                },
                QuotaDecision {
                    state: StorageState::Exceeded,
                    condition: None,
                    policy: PolicyAction::Keep,
                    event: None,
                },
            ]
        );
    }

    #[test]
    fn huge_figures_do_not_overflow() {
        let d = decide(&QuotaInputs {
            tenant: "acme",
            limit_bytes: i64::MAX,
            used_bytes: Some(i64::MAX),
            previous: None,
        });
        assert_eq!(d.state, StorageState::Exceeded);
        assert_eq!(restore_below(i64::MAX), i64::MAX / 100 * 95 + 6);
    }
}
