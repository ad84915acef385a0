//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics, so that
//! of several controller replicas exactly one reconciles at a time.
//!
//! Every write to the Lease is a `replace` carrying the `resourceVersion` that was read: when
//! two candidates race for a free or expired Lease, the API server accepts one write and
//! answers 409 Conflict to the other, so two candidates can never both win.
//!
//! Expiry is judged from the Lease's `renewTime`, written by the holder's clock; candidates are
//! assumed to have clocks within a fraction of the lease duration of each other (NTP), as
//! every Kubernetes node does.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Where the Lease lives, who we are, and client-go's three timings.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Our `holderIdentity`: unique per process (see [`default_identity`]).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal; followers wait this long after a
    /// leader stops renewing before they take over.
    pub lease_duration: Duration,
    /// The leader gives up leadership when it could not renew for this long; shorter than
    /// `lease_duration` so it stops before anyone else may start.
    pub renew_deadline: Duration,
    /// How often followers try to acquire and the leader renews.
    pub retry_period: Duration,
}

/// client-go's defaults (kube-controller-manager, kube-scheduler).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LeaseConfigError {
    #[error("the lease duration ({lease:?}) must be longer than the renew deadline ({renew:?})")]
    LeaseNotLongerThanRenewDeadline { lease: Duration, renew: Duration },
    #[error("the renew deadline ({renew:?}) must be longer than the retry period ({retry:?})")]
    RenewDeadlineNotLongerThanRetry { renew: Duration, retry: Duration },
    #[error("the retry period must be positive")]
    ZeroRetryPeriod,
    #[error("the lease duration must be whole seconds between 1 and {max} (Lease field is int32)", max = i32::MAX)]
    LeaseDurationOutOfRange,
    #[error("the lease identity must not be empty")]
    EmptyIdentity,
}

impl LeaseConfig {
    /// Rejects timings under which two leaders could overlap or the leader could never renew.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.identity.is_empty() {
            return Err(LeaseConfigError::EmptyIdentity);
        }
        if self.retry_period.is_zero() {
            return Err(LeaseConfigError::ZeroRetryPeriod);
        }
        if lease_seconds(self.lease_duration).is_none() {
            return Err(LeaseConfigError::LeaseDurationOutOfRange);
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(LeaseConfigError::LeaseNotLongerThanRenewDeadline {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline <= self.retry_period {
            return Err(LeaseConfigError::RenewDeadlineNotLongerThanRetry {
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }
}

fn lease_seconds(d: Duration) -> Option<i32> {
    i32::try_from(d.as_secs())
        .ok()
        .filter(|s| *s >= 1 && d.subsec_nanos() == 0)
}

/// `<pod name or hostname>_<random suffix>`: the pod name says which replica leads, the suffix
/// tells a restarted process (same pod name) from its predecessor.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hostplane-controller".into());
    format!("{host}_{:016x}", rand::random::<u64>())
}

/// What a candidate may do with the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it (never held, or released): take it.
    Acquire,
    /// Its holder stopped renewing for longer than the lease duration: take it over.
    TakeOverExpired { previous: String },
    /// Someone else holds a valid Lease: wait.
    HeldByOther { holder: String },
}

impl LeaseDecision {
    pub fn may_write(&self) -> bool {
        !matches!(self, Self::HeldByOther { .. })
    }
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// True when the holder's last renewal is older than the lease duration. A Lease without a
/// renewal time or duration cannot be valid.
pub fn is_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    match renewed
        .0
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
    {
        Ok(valid_until) => valid_until < now,
        Err(_) => false,
    }
}

/// The pure core of the election: what `identity` may do with the Lease `spec` at `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = spec else {
        return LeaseDecision::Acquire;
    };
    match holder(spec) {
        None => LeaseDecision::Acquire,
        Some(h) if h == identity => LeaseDecision::Renew,
        Some(h) if is_expired(spec, now) => LeaseDecision::TakeOverExpired {
            previous: h.to_string(),
        },
        Some(h) => LeaseDecision::HeldByOther {
            holder: h.to_string(),
        },
    }
}

/// The Lease spec `identity` writes after `decision`: a renewal keeps the acquire time and the
/// transition count; a change of holder (also from a released, empty Lease) counts one
/// transition, as client-go does.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &LeaseDecision,
    identity: &str,
    lease_duration_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let (acquire_time, transitions) = match (decision, current) {
        (LeaseDecision::Renew, Some(spec)) => (
            spec.acquire_time.clone().unwrap_or(MicroTime(now)),
            transitions,
        ),
        // A Lease created by us starts at zero transitions.
        (_, None) => (MicroTime(now), 0),
        _ => (MicroTime(now), transitions.saturating_add(1)),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(lease_duration_seconds),
        acquire_time: Some(acquire_time),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// The spec a leader writes when it steps down: no holder, so the next candidate takes over at
/// its next retry instead of waiting for expiry (client-go's `ReleaseOnCancel`).
pub fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

/// Why a leader stopped being one.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LeadershipLost {
    #[error("the Lease is now held by {holder}")]
    TakenBy { holder: String },
    #[error("the Lease could not be renewed for {0:?} (the renew deadline)")]
    RenewDeadlineExceeded(Duration),
}

/// The outcome of one attempt to acquire or renew.
#[derive(Debug, PartialEq)]
enum Attempt {
    Held,
    HeldByOther(String),
    /// Someone wrote the Lease between our read and our write: read again.
    Conflict,
}

/// One candidate in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Result<Self, LeaseConfigError> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            leading: watch::channel(false).0,
        })
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// `true` while this candidate holds the Lease.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Returns once this candidate holds the Lease; tries every retry period until then.
    pub async fn acquire(&self) {
        let mut waiting_for = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    info!(
                        lease = %self.lease_ref(),
                        identity = %self.config.identity,
                        "acquired leadership: this instance reconciles now"
                    );
                    self.leading.send_replace(true);
                    return;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    if waiting_for.as_ref() != Some(&holder) {
                        info!(lease = %self.lease_ref(), %holder, "another instance leads; standing by");
                        waiting_for = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => debug!("lost a race for the Lease; trying again"),
                Err(e) => {
                    warn!(lease = %self.lease_ref(), error = %e, "cannot read or write the Lease")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the Lease every retry period while leading; resolves when leadership is lost:
    /// another holder appeared, or no renewal succeeded within the renew deadline. The caller
    /// must stop reconciling at once.
    pub async fn hold(&self) -> LeadershipLost {
        // When the last successful write started: its renewTime is no earlier than this, so
        // giving up `renew_deadline` after it is always before followers see the Lease expire.
        let mut renewed_at = Instant::now();
        loop {
            let deadline = renewed_at + self.config.renew_deadline;
            let until_deadline = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(self.config.retry_period.min(until_deadline)).await;
            let attempt_started = Instant::now();
            let until_deadline = deadline.saturating_duration_since(attempt_started);
            match tokio::time::timeout(until_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => {
                    renewed_at = attempt_started;
                    continue;
                }
                Ok(Ok(Attempt::HeldByOther(holder))) => {
                    self.leading.send_replace(false);
                    return LeadershipLost::TakenBy { holder };
                }
                Ok(Ok(Attempt::Conflict)) => {
                    debug!("the Lease changed under a renewal; reading it again")
                }
                Ok(Err(e)) => {
                    warn!(lease = %self.lease_ref(), error = %e, "cannot renew the Lease")
                }
                Err(_) => warn!(lease = %self.lease_ref(), "renewing the Lease timed out"),
            }
            if Instant::now() >= deadline {
                self.leading.send_replace(false);
                return LeadershipLost::RenewDeadlineExceeded(self.config.renew_deadline);
            }
        }
    }

    /// Steps down: empties the holder so the next candidate takes over at its next retry.
    /// Returns false when the Lease was no longer ours (nothing to release).
    pub async fn release(&self) -> Result<bool, kube::Error> {
        self.leading.send_replace(false);
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(false);
        };
        if holder(spec) != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        let released = Lease {
            spec: Some(released_spec(spec, Timestamp::now())),
            ..lease
        };
        // resourceVersion guarded: a new holder that won meanwhile is never overwritten.
        self.api
            .replace(&self.config.name, &PostParams::default(), &released)
            .await?;
        info!(lease = %self.lease_ref(), identity = %self.config.identity, "released leadership");
        Ok(true)
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let seconds =
            lease_seconds(self.config.lease_duration).expect("validated in LeaderElector::new");
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.config.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
        );
        if let LeaseDecision::HeldByOther { holder } = decision {
            return Ok(Attempt::HeldByOther(holder));
        }
        if let LeaseDecision::TakeOverExpired { previous } = &decision {
            info!(lease = %self.lease_ref(), %previous, "the leader's Lease expired; taking over");
        }
        let spec = next_spec(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &decision,
            &self.config.identity,
            seconds,
            now,
        );
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            // The read's resourceVersion stays in metadata: the write fails on any change since.
            Some(lease) => {
                let lease = Lease {
                    spec: Some(spec),
                    ..lease
                };
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Held),
            // 409: AlreadyExists on create, Conflict on replace; both mean another writer won.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "hostplane-controller-0_aaaa";
    const OTHER: &str = "hostplane-controller-1_bbbb";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64, duration: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_free() {
        assert_eq!(decide(None, ME, at(0)), LeaseDecision::Acquire);
        let released = released_spec(&held_by(OTHER, 0, 15, 3), at(1));
        assert_eq!(released.holder_identity.as_deref(), Some(""));
        assert_eq!(released.lease_transitions, Some(3));
        // Free at once, not only after the (1 s) duration runs out.
        assert_eq!(decide(Some(&released), ME, at(1)), LeaseDecision::Acquire);
        let no_holder = LeaseSpec {
            holder_identity: None,
            ..held_by(OTHER, 0, 15, 0)
        };
        assert_eq!(decide(Some(&no_holder), ME, at(0)), LeaseDecision::Acquire);
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_waited_for_until_it_expires() {
        let lease = held_by(OTHER, 100, 15, 0);
        let waiting = LeaseDecision::HeldByOther {
            holder: OTHER.into(),
        };
        assert_eq!(decide(Some(&lease), ME, at(100)), waiting);
        assert!(!waiting.may_write());
        // renewTime + leaseDurationSeconds is the last valid instant.
        assert_eq!(decide(Some(&lease), ME, at(115)), waiting);
        assert!(!is_expired(&lease, at(115)));
        assert!(is_expired(&lease, at(116)));
        assert_eq!(
            decide(Some(&lease), ME, at(116)),
            LeaseDecision::TakeOverExpired {
                previous: OTHER.into()
            }
        );
    }

    #[test]
    fn a_lease_without_renew_time_or_duration_is_expired() {
        let no_renew = LeaseSpec {
            renew_time: None,
            ..held_by(OTHER, 0, 15, 0)
        };
        let no_duration = LeaseSpec {
            lease_duration_seconds: None,
            ..held_by(OTHER, 0, 15, 0)
        };
        assert!(is_expired(&no_renew, at(0)));
        assert!(is_expired(&no_duration, at(0)));
    }

    #[test]
    fn the_holder_renews_even_an_expired_lease_nobody_took() {
        let lease = held_by(ME, 0, 15, 2);
        assert_eq!(decide(Some(&lease), ME, at(5)), LeaseDecision::Renew);
        assert_eq!(decide(Some(&lease), ME, at(500)), LeaseDecision::Renew);
        let renewed = next_spec(Some(&lease), &LeaseDecision::Renew, ME, 15, at(5));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        assert_eq!(
            renewed.acquire_time,
            Some(MicroTime(at(0))),
            "acquire time kept"
        );
        assert_eq!(renewed.lease_transitions, Some(2), "no transition");
    }

    #[test]
    fn takeover_counts_a_transition_and_a_new_lease_starts_at_zero() {
        let expired = held_by(OTHER, 0, 15, 4);
        let decision = decide(Some(&expired), ME, at(30));
        let taken = next_spec(Some(&expired), &decision, ME, 15, at(30));
        assert_eq!(
            taken,
            LeaseSpec {
                holder_identity: Some(ME.into()),
                lease_duration_seconds: Some(15),
                acquire_time: Some(MicroTime(at(30))),
                renew_time: Some(MicroTime(at(30))),
                lease_transitions: Some(5),
                ..LeaseSpec::default()
            }
        );
        // After a release (empty holder) the new holder is also a transition.
        let released = released_spec(&taken, at(31));
        let again = next_spec(Some(&released), &LeaseDecision::Acquire, OTHER, 15, at(32));
        assert_eq!(again.lease_transitions, Some(6));
        let fresh = next_spec(None, &LeaseDecision::Acquire, ME, 15, at(0));
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.holder_identity.as_deref(), Some(ME));
    }

    fn config(lease: u64, renew: u64, retry: u64) -> LeaseConfig {
        LeaseConfig {
            namespace: "default".into(),
            name: "hostplane-controller".into(),
            identity: ME.into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn leader_stops_before_followers_may_start() {
        assert_eq!(config(15, 10, 2).validate(), Ok(()));
        assert_eq!(config(4, 3, 1).validate(), Ok(()));
        assert!(matches!(
            config(10, 10, 2).validate(),
            Err(LeaseConfigError::LeaseNotLongerThanRenewDeadline { .. })
        ));
        assert!(matches!(
            config(15, 2, 2).validate(),
            Err(LeaseConfigError::RenewDeadlineNotLongerThanRetry { .. })
        ));
        assert_eq!(
            config(15, 10, 0).validate(),
            Err(LeaseConfigError::ZeroRetryPeriod)
        );
        let fractional = LeaseConfig {
            lease_duration: Duration::from_millis(15_500),
            ..config(15, 10, 2)
        };
        assert_eq!(
            fractional.validate(),
            Err(LeaseConfigError::LeaseDurationOutOfRange)
        );
        let anonymous = LeaseConfig {
            identity: String::new(),
            ..config(15, 10, 2)
        };
        assert_eq!(anonymous.validate(), Err(LeaseConfigError::EmptyIdentity));
    }

    #[test]
    fn identities_differ_between_processes_on_one_host() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        let (host, suffix) = a.rsplit_once('_').unwrap();
        assert!(!host.is_empty());
        assert_eq!(suffix.len(), 16);
    }
}
