//! End to end: two `hostplane controller --leader-elect` replicas against one real host API
//! server. Exactly one holds the Lease and reconciles; a standby takes over when the leader is
//! killed (after the lease expires) or stopped with SIGTERM (at once: the Lease is released).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{KubeApiserver, free_port, http_get, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::Api;

const LEASE_NAMESPACE: &str = "kube-system";
const LEASE_NAME: &str = "hostplane-controller";

/// One controller replica: its process, its name (pod name / HOSTNAME) and metrics port.
struct Replica {
    name: &'static str,
    metrics_port: u16,
    process: ControllerProcess,
}

impl Replica {
    /// Lease timings in seconds: duration, renew deadline, retry period.
    fn start(
        name: &'static str,
        host: &KubeApiserver,
        state_dir: &std::path::Path,
        (lease, renew, retry): (u64, u64, u64),
    ) -> Self {
        let metrics_port = free_port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let (lease, renew, retry) = (lease.to_string(), renew.to_string(), retry.to_string());
        let env = [
            ("POD_NAME", name),
            ("HOSTNAME", name),
            ("HOSTPLANE_METRICS_ADDR", metrics_addr.as_str()),
            ("HOSTPLANE_LEADER_ELECT", "true"),
            ("HOSTPLANE_LEADER_ELECTION_NAMESPACE", LEASE_NAMESPACE),
            (
                "HOSTPLANE_LEADER_ELECTION_LEASE_DURATION_SECONDS",
                lease.as_str(),
            ),
            (
                "HOSTPLANE_LEADER_ELECTION_RENEW_DEADLINE_SECONDS",
                renew.as_str(),
            ),
            (
                "HOSTPLANE_LEADER_ELECTION_RETRY_PERIOD_SECONDS",
                retry.as_str(),
            ),
        ];
        // One state directory for both, as replicas on one machine: the new leader adopts the
        // tenant processes the old one started.
        let process = ControllerProcess::start_named(name, host, state_dir, None, &env);
        Self {
            name,
            metrics_port,
            process,
        }
    }

    /// Two replicas, `controller-a` and `controller-b`, with the same lease timings.
    fn pair(
        host: &KubeApiserver,
        state_dir: &std::path::Path,
        timings: (u64, u64, u64),
    ) -> [Self; 2] {
        [
            Self::start("controller-a", host, state_dir, timings),
            Self::start("controller-b", host, state_dir, timings),
        ]
    }

    /// The log without terminal colours (tracing colours field names apart from values).
    fn log(&self) -> String {
        let raw = self.process.log();
        let mut plain = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(start) = rest.find("\x1b[") {
            plain.push_str(&rest[..start]);
            rest = &rest[start..];
            rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
        }
        plain.push_str(rest);
        plain
    }

    fn holds(&self, holder: &str) -> bool {
        holder
            .rsplit_once('_')
            .is_some_and(|(pod, _)| pod == self.name)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        wait_for(
            Duration::from_secs(30),
            &format!("{}'s {path}", self.name),
            async || http_get(self.metrics_port, path).await.ok(),
        )
        .await
    }

    /// The value of an unlabelled metric on this replica's /metrics.
    async fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        metric_value(&text, name)
            .unwrap_or_else(|| panic!("{} has no metric {name}:\n{text}", self.name))
    }

    /// This replica's /metrics once `holds` says yes: metrics follow the status write, which
    /// the test's watch may see first.
    async fn metrics_when(&self, what: &str, holds: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, text) = self.get("/metrics").await;
            if status == 200 && holds(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s metrics never showed {what}:\n{text}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether this replica's log shows work on ControlPlane `cp`: lines of its reconcile span,
    /// or of the tenant processes it started or adopted.
    fn reconciled(&self, cp: &str) -> bool {
        let log = self.log();
        log.contains(&format!("controlplane={cp}")) || log.contains(&format!("tenant={cp}-"))
    }
}

async fn lease(host: &KubeApiserver) -> Option<Lease> {
    Api::<Lease>::namespaced(host.client(), LEASE_NAMESPACE)
        .get_opt(LEASE_NAME)
        .await
        .ok()
        .flatten()
}

fn holder_of(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn transitions_of(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// The Lease's holder once someone holds it, and which of `replicas` that is.
async fn wait_for_leader(host: &KubeApiserver, replicas: &[Replica]) -> (String, usize) {
    let holder = wait_for(
        Duration::from_secs(60),
        "a controller to acquire the Lease",
        async || Some(holder_of(&lease(host).await?)).filter(|h| !h.is_empty()),
    )
    .await;
    let index = replicas
        .iter()
        .position(|r| r.holds(&holder))
        .unwrap_or_else(|| panic!("the Lease holder {holder:?} is neither replica"));
    (holder, index)
}

/// Polls the Lease every 50 ms until `replica` holds it; the time that took.
async fn time_until_held_by(host: &KubeApiserver, replica: &Replica, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(l) = lease(host).await
            && replica.holds(&holder_of(&l))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} did not take the Lease within {limit:?}; Lease: {:?}",
            replica.name,
            lease(host).await.and_then(|l| l.spec)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The series of `hostplane_tenants` (ControlPlanes by their Ready reason) with their values.
fn tenant_states(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let (state, value) = l
                .strip_prefix("hostplane_tenants{state=\"")?
                .split_once("\"} ")?;
            Some((state.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn create(host: &KubeApiserver, name: &str) {
    let out = host.apply_yaml(&controlplane_yaml(name, ""));
    assert!(out.success(), "kubectl apply failed: {}", out.combined());
}

/// Who reported the Events about ControlPlane `name`, once there are any (an Event may be
/// published just after the status write that the caller waited for).
async fn event_reporters(host: &KubeApiserver, name: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reporters: Vec<String> = events_about(host, name)
            .await
            .into_iter()
            .map(|e| e.reporting_instance.unwrap_or_default())
            .collect();
        if !reporters.is_empty() || std::time::Instant::now() >= deadline {
            return reporters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_is_killed() {
    let host = host_with_crds().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut replicas = Replica::pair(&host, tmp.path(), (4, 3, 1));
    let cps = Api::<ControlPlane>::all(host.client());

    // Exactly one holds the Lease, and keeps it while both run.
    let (holder, leader_index) = wait_for_leader(&host, &replicas).await;
    let standby_index = 1 - leader_index;
    let (leader, standby) = (&replicas[leader_index], &replicas[standby_index]);
    eprintln!("leader: {holder}; standby: {}", standby.name);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        holder_of(&lease(&host).await.unwrap()),
        holder,
        "renewed, not handed over"
    );
    assert!(
        standby
            .process
            .log()
            .contains("another instance leads; standing by"),
        "{}",
        standby.log()
    );
    assert!(!standby.log().contains("acquired leadership"));

    // Only the leader is ready and says so in its metrics.
    assert_eq!(leader.get("/readyz").await.0, 200);
    assert_eq!(standby.get("/readyz").await.0, 503);
    assert_eq!(standby.get("/healthz").await.0, 200, "a standby is alive");
    assert_eq!(leader.metric("hostplane_leader").await, 1.0);
    assert_eq!(standby.metric("hostplane_leader").await, 0.0);

    // A ControlPlane is reconciled by the leader alone.
    create(&host, "first");
    wait_ready_state(&cps, "first", "True", Some("Available"), READY_TIMEOUT).await;
    assert!(leader.reconciled("first"), "{}", leader.log());
    assert!(
        !standby.reconciled("first"),
        "the standby reconciled:\n{}",
        standby.log()
    );
    let reporters = event_reporters(&host, "first").await;
    assert!(!reporters.is_empty(), "no Events about the ControlPlane");
    assert!(
        reporters.iter().all(|r| r == leader.name),
        "Events reported by {reporters:?}, not only by {}",
        leader.name
    );
    assert!(leader.metric("hostplane_reconciles_total").await >= 1.0);
    assert_eq!(standby.metric("hostplane_reconciles_total").await, 0.0);
    // Its provisioning time is recorded once, its passes are timed, and it counts as Available.
    let text = leader
        .metrics_when("the first tenant Available", |t| {
            tenant_states(t) == [("Available".to_string(), 1.0)]
        })
        .await;
    assert_eq!(
        metric_value(&text, "hostplane_tenant_provisioning_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "hostplane_tenant_provisioning_seconds_sum").is_some_and(|s| s > 0.0),
        "{text}"
    );
    assert!(
        metric_value(&text, "hostplane_reconcile_duration_seconds_count").is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert_eq!(
        standby
            .metric("hostplane_tenant_provisioning_seconds_count")
            .await,
        0.0
    );

    // kill -9: the Lease is not released, so the standby waits for it to expire.
    let before = lease(&host).await.unwrap();
    assert_eq!(holder_of(&before), holder);
    replicas[leader_index].process.kill();
    let standby = &replicas[standby_index];
    let takeover = time_until_held_by(&host, standby, Duration::from_secs(20)).await;
    eprintln!(
        "takeover after kill -9: {:.2}s (lease duration 4s, retry period 1s)",
        takeover.as_secs_f64()
    );
    // Not before the lease could have expired (last renewal ≤ 1 s before the kill), and
    // about the lease duration plus one retry period after it.
    assert!(
        takeover >= Duration::from_secs(2),
        "took over a valid Lease"
    );
    assert!(takeover <= Duration::from_secs(8), "slow takeover");
    let after = lease(&host).await.unwrap();
    assert_eq!(transitions_of(&after), transitions_of(&before) + 1);
    assert!(
        standby
            .process
            .log()
            .contains("the leader's Lease expired; taking over")
    );
    wait_for(
        Duration::from_secs(10),
        "the new leader to report readiness",
        async || (standby.get("/readyz").await.0 == 200).then_some(()),
    )
    .await;
    assert_eq!(standby.metric("hostplane_leader").await, 1.0);

    // The new leader reconciles: a second ControlPlane becomes Ready, the first stays Ready.
    create(&host, "second");
    wait_ready_state(&cps, "second", "True", Some("Available"), READY_TIMEOUT).await;
    assert!(standby.reconciled("second"), "{}", standby.log());
    assert!(standby.reconciled("first"), "resync after takeover");
    let first = cps.get("first").await.unwrap();
    assert_eq!(
        condition(&first, "Ready").map(|c| c.0).as_deref(),
        Some("True")
    );
    let reporters = event_reporters(&host, "second").await;
    assert!(
        !reporters.is_empty() && reporters.iter().all(|r| r == standby.name),
        "{reporters:?}"
    );
    // The new leader records the provisioning of the second tenant only: the first was Ready
    // before it led.
    let text = standby
        .metrics_when("both tenants Available", |t| {
            tenant_states(t) == [("Available".to_string(), 2.0)]
        })
        .await;
    assert_eq!(
        metric_value(&text, "hostplane_tenant_provisioning_seconds_count"),
        Some(1.0),
        "{text}"
    );

    // A deleted tenant leaves the state gauge: no Deleting series stays behind.
    let out = host.run_kubectl(&["delete", "cp", "second", "--timeout=120s"]);
    assert!(out.success(), "kubectl delete failed: {}", out.combined());
    standby
        .metrics_when("only the first tenant, Available", |t| {
            tenant_states(t) == [("Available".to_string(), 1.0)]
        })
        .await;
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_over_at_once_and_one_that_loses_the_lease_exits() {
    let host = host_with_crds().await;
    let tmp = tempfile::tempdir().unwrap();
    // A long lease: a takeover well under 15 s can only come from the release.
    let mut replicas = Replica::pair(&host, tmp.path(), (15, 10, 1));
    let (_, leader_index) = wait_for_leader(&host, &replicas).await;
    let standby_index = 1 - leader_index;
    let standby_name = replicas[standby_index].name;
    wait_for(
        Duration::from_secs(30),
        "the standby to stand by",
        async || {
            replicas[standby_index]
                .process
                .log()
                .contains("standing by")
                .then_some(())
        },
    )
    .await;
    let before = lease(&host).await.unwrap();

    let started = Instant::now();
    let status = replicas[leader_index]
        .process
        .terminate(Duration::from_secs(20))
        .expect("the leader exits after SIGTERM");
    let exited = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    let log = replicas[leader_index].log();
    assert!(log.contains("released leadership"), "{log}");
    let takeover = started.elapsed()
        + time_until_held_by(&host, &replicas[standby_index], Duration::from_secs(20)).await;
    eprintln!(
        "after SIGTERM: leader exited in {:.2}s, {standby_name} took over after {:.2}s (lease duration 15s, retry period 1s)",
        exited.as_secs_f64(),
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(5),
        "a released Lease must not wait for expiry: {takeover:?}"
    );
    let after = lease(&host).await.unwrap();
    assert_eq!(transitions_of(&after), transitions_of(&before) + 1);

    // The new leader, stopped the same way, leaves the Lease free for whoever comes next.
    let status = replicas[standby_index]
        .process
        .terminate(Duration::from_secs(20))
        .expect("the new leader exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let released = lease(&host).await.unwrap();
    assert_eq!(holder_of(&released), "", "{:?}", released.spec);

    // A leader that finds the Lease held by someone else stops at once: it exits non-zero
    // within about a retry period instead of reconciling beside the new holder.
    let first = &mut replicas[leader_index];
    first.process.restart();
    time_until_held_by(&host, first, Duration::from_secs(30)).await;
    let leases = Api::<Lease>::namespaced(host.client(), LEASE_NAMESPACE);
    let mut stolen = leases.get(LEASE_NAME).await.unwrap();
    let spec = stolen.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder_0000000000000000".into());
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    spec.lease_duration_seconds = Some(15);
    leases
        .replace(LEASE_NAME, &Default::default(), &stolen)
        .await
        .expect("resourceVersion-guarded replace");
    let started = Instant::now();
    let status = first
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("a leader that lost the Lease exits by itself");
    eprintln!(
        "leader exited {:.2}s after its Lease was taken",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    let log = first.log();
    assert!(
        log.contains("leadership lost: exiting at once")
            && log.contains("the Lease is now held by intruder_0000000000000000"),
        "{log}"
    );
}
