//! Noisy neighbour, end to end: tenant A runs a bounded write storm while tenant B runs a fixed,
//! paced workload; B's p99 latency during the storm stays within 2× its quiet baseline measured
//! in the same run. Both tenants are Kine on the same shared Postgres, under one
//! `hostplane controller`, on the same machine as the storm's client. What keeps B's latency:
//! each tenant's CPU limit (`limits.maxCpuMillicores`, a cgroup per tenant), Kine's connection
//! pool sized above what the tenant's API Priority and Fairness lets run at once, and the
//! Postgres role's connection limit.
//!
//! `HOSTPLANE_NOISY=full` runs more rounds with a bigger storm (the figure in bench/RESULTS.md):
//! `HOSTPLANE_NOISY=full cargo test --release -p hostplane --test noisy -- --nocapture`.
//! `HOSTPLANE_NOISY_CPU_MILLICORES=0` drops the CPU limit, to see what it is worth.

mod common;

use std::time::Duration;

use common::*;
use hostplane_tests::Postgres;
use hostplane_tests::load::{
    StormReport, client_for_kubeconfig, paced_workload, percentile, write_storm,
};

/// Each tenant's `limits.maxCpuMillicores`: an eighth of a 2-core machine (a small plan; the
/// API servers' start is not limited).
/// `HOSTPLANE_NOISY_CPU_MILLICORES=0` runs without a CPU limit, to see what the limit is worth.
fn cpu_millicores() -> u32 {
    std::env::var("HOSTPLANE_NOISY_CPU_MILLICORES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250)
}

struct Profile {
    rounds: usize,
    ops: usize,
    pace: Duration,
    writers: usize,
    max_writes: usize,
}

fn profile() -> Profile {
    match std::env::var("HOSTPLANE_NOISY").as_deref() {
        Ok("full") => Profile {
            rounds: 5,
            ops: 200,
            pace: Duration::from_millis(25),
            writers: 32,
            max_writes: 20_000,
        },
        _ => Profile {
            rounds: 3,
            ops: 100,
            pace: Duration::from_millis(25),
            writers: 16,
            max_writes: 6_000,
        },
    }
}

/// Creates tenant `name` on the plan both tenants get; its handed-out kubeconfig.
async fn create_tenant(bed: &ControllerBed, name: &str) -> String {
    let limits = match cpu_millicores() {
        0 => String::new(),
        m => format!("  limits:\n    maxCpuMillicores: {m}\n"),
    };
    bed.create(name, &limits).await;
    handed_out_kubeconfig(&bed.host.client(), name, "kubeconfig").await
}

/// Runs A's storm while `workload` (B's) runs: the storm starts first, reaches its stride, and
/// stops within a margin after the workload's expected duration.
async fn storm_beside<F, Fut>(
    noisy_kubeconfig: &str,
    p: &Profile,
    round: usize,
    workload: F,
) -> (Result<Vec<Duration>, kube::Error>, StormReport)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>, kube::Error>>,
{
    let budget = p.pace * p.ops as u32 + Duration::from_secs(8);
    let (writers, max_writes) = (p.writers, p.max_writes);
    let kubeconfig = noisy_kubeconfig.to_string();
    // The storm's client runs on a thread of its own (one core at most), as a client on another
    // machine would not share the quiet tenant's client's runtime.
    let storm = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let client = client_for_kubeconfig(&kubeconfig).await;
                let prefix = format!("storm-{round}");
                write_storm(
                    client, "default", &prefix, writers, 1024, max_writes, budget,
                )
                .await
            })
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measured = workload().await;
    (measured, storm.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_storm_in_one_tenant_keeps_the_other_tenants_p99_within_2x() {
    let p = profile();
    let postgres = Postgres::start().await;
    let extra: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HOSTPLANE_DEFAULT_"))
        .collect();
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let bed = ControllerBed::with(Some(postgres.admin_dsn()), &extra).await;
    let noisy = create_tenant(&bed, "noisy").await;
    let quiet = client_for_kubeconfig(&create_tenant(&bed, "quiet").await).await;

    // Each tenant's processes run in its own CPU group, limited as its spec says.
    for name in ["noisy", "quiet"] {
        let tenant = bed
            .controller
            .tenant_dirs()
            .into_iter()
            .find(|d| {
                d.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .unwrap();
        let key = tenant.file_name().unwrap().to_string_lossy().into_owned();
        if cpu_millicores() > 0 {
            let quota = u64::from(cpu_millicores()) * 100;
            let v1 = std::fs::read_to_string(format!(
                "/sys/fs/cgroup/cpu/hostplane/{key}/cpu.cfs_quota_us"
            ));
            let v2 = std::fs::read_to_string(format!("/sys/fs/cgroup/hostplane/{key}/cpu.max"));
            let set = match (v1, v2) {
                (Ok(v1), _) => v1.trim() == quota.to_string(),
                (_, Ok(v2)) => v2.starts_with(&format!("{quota} ")),
                _ => false,
            };
            assert!(
                set,
                "{name}'s CPU group does not hold its limit of {quota} µs per 100 ms"
            );
        }
        for pid in recorded_pids(&tenant) {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(
                cgroups.contains(&format!("/hostplane/{key}\n")),
                "process {pid} of {name} is not in its CPU group: {cgroups}"
            );
        }
    }
    // Warm-up (connections, caches), then rounds of B alone and B beside A's storm, alternating
    // so that load from outside the test weighs on both sides alike.
    paced_workload(quiet.clone(), "default", "warm", 20, p.pace)
        .await
        .unwrap();
    let (mut baseline, mut beside, mut storm) = (vec![], vec![], StormReport::default());
    for round in 0..p.rounds {
        baseline.extend(
            paced_workload(
                quiet.clone(),
                "default",
                &format!("alone-{round}"),
                p.ops,
                p.pace,
            )
            .await
            .expect("the quiet tenant's workload succeeds"),
        );
        let prefix = format!("beside-{round}");
        let during = storm_beside(&noisy, &p, round, || {
            paced_workload(quiet.clone(), "default", &prefix, p.ops, p.pace)
        })
        .await;
        beside.extend(
            during
                .0
                .expect("the quiet tenant's workload succeeds during the storm"),
        );
        storm.acknowledged += during.1.acknowledged;
        storm.refused += during.1.refused;
        storm.elapsed += during.1.elapsed;
        storm.first_error = storm.first_error.or(during.1.first_error);
    }

    let (p50_alone, p99_alone) = (percentile(&baseline, 50.0), percentile(&baseline, 99.0));
    let (p50_beside, p99_beside) = (percentile(&beside, 50.0), percentile(&beside, 99.0));
    let ratio = p99_beside.as_secs_f64() / p99_alone.as_secs_f64();
    eprintln!(
        "noisy neighbour: storm {} acknowledged, {} refused in {:.1}s ({:.0} writes/s; first refusal: {:?}); \
         quiet tenant p50 {:?} → {:?}, p99 {:?} → {:?} ({ratio:.2}×)",
        storm.acknowledged,
        storm.refused,
        storm.elapsed.as_secs_f64(),
        storm.acknowledged as f64 / storm.elapsed.as_secs_f64(),
        storm.first_error,
        p50_alone,
        p50_beside,
        p99_alone,
        p99_beside,
    );
    // The storm really was one: hundreds of writes while B ran.
    assert!(
        storm.acknowledged >= 500,
        "the storm wrote only {} objects",
        storm.acknowledged
    );
    assert!(
        ratio <= 2.0,
        "the quiet tenant's p99 went from {p99_alone:?} to {p99_beside:?} ({ratio:.2}×) during the noisy tenant's storm"
    );
    bed.controller.stop_tenants();
}
