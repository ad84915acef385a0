//! `burst`: many ControlPlanes at once.
//!
//! 1. Burst: `tenants` ControlPlanes in one `kubectl apply`, with hibernation on (a short
//!    `spec.hibernation.idleAfterSeconds`, the proxy running so that activity is tracked), timed
//!    until every one has been Ready (Ready now, or hibernated, which only a Ready tenant does).
//!    Meanwhile: the controller's CPU time and peak RSS, and the peak memory of all tenants
//!    together, which hibernation and the controller's start gate are what bound.
//! 2. Registered: `registered` ControlPlanes with `spec.hibernation.paused: true` (no processes),
//!    timed until every one has status; then whether the controller keeps up with that many: the
//!    time for a spec change of one tenant to show in its `status.observedGeneration` with all of
//!    them registered, against the same with one registered, over a window that spans a resync.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use hostplane_crds::ControlPlane;
use hostplane_tests::Postgres;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::plot::{Chart, Series, line_chart};
use crate::sys;
use crate::{HostplaneSide, hostplane_side, kubectl_ok, median, tenants_memory};

pub struct Options {
    /// ControlPlanes applied at once.
    pub tenants: usize,
    /// `spec.hibernation.idleAfterSeconds` of each.
    pub idle_after_seconds: u64,
    /// Paused ControlPlanes registered in the second part.
    pub registered: usize,
    /// The burst is stopped (and reported as such) when MemAvailable falls below this (MiB).
    pub margin_mib: u64,
    /// Longest the burst may take before it is reported as incomplete.
    pub limit: Duration,
}

/// Seconds between resyncs of every ControlPlane in the registered part: short, so that the
/// measuring window spans one whole resync of every tenant.
const REGISTERED_RESYNC_SECONDS: u64 = 30;
/// Spec changes timed with one tenant, and again with all of them registered.
const CHANGE_SAMPLES: usize = 6;
/// Go between the samples with all registered: the samples spread over more than one resync.
const CHANGE_INTERVAL: Duration = Duration::from_secs(6);

pub async fn run(opts: Options, plots: &Path) -> anyhow::Result<String> {
    let postgres = Postgres::start().await;
    let mut out = burst(&opts, &postgres, plots).await?;
    out.push('\n');
    out.push_str(&registered(&opts, &postgres).await?);
    Ok(out)
}

/// A tenant that has been Ready: Ready now, or hibernated after idling (only a Ready tenant
/// idles into hibernation).
fn has_been_ready(cp: &ControlPlane) -> bool {
    let Some(status) = cp.status.as_ref() else {
        return false;
    };
    status.hibernated_at.is_some()
        || status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// What the burst observed, sampled every half second.
#[derive(Default)]
struct BurstSamples {
    ready_at: Vec<(f64, usize)>,
    peak_tenants_rss_mib: f64,
    peak_tenants_pss_mib: f64,
    peak_awake: usize,
    min_available_mib: u64,
}

async fn burst(opts: &Options, postgres: &Postgres, plots: &Path) -> anyhow::Result<String> {
    let address = format!("127.0.0.1:{}", hostplane_tests::free_port());
    let side = hostplane_side(
        postgres,
        &[
            ("HOSTPLANE_PROXY_ADDRESS", address.as_str()),
            ("HOSTPLANE_TENANT_DOMAIN", "tenants.bench"),
        ],
    )
    .await?;
    let _proxy = crate::wake::start_proxy(&side, &address)?;
    let controller = side.controller.id();
    let manifest = side.state.path().join("burst.yaml");
    let docs: Vec<String> = (0..opts.tenants)
        .map(|i| {
            format!(
                "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: burst-{i}\nspec:\n  type: k8s\n  hibernation:\n    idleAfterSeconds: {}\n",
                opts.idle_after_seconds
            )
        })
        .collect();
    std::fs::write(&manifest, docs.join("---\n"))?;
    let api = Api::<ControlPlane>::all(side.host.client());
    let cpu_before = sys::cpu_seconds(controller);
    eprintln!(
        "burst: applying {} ControlPlanes at once (idleAfterSeconds {})",
        opts.tenants, opts.idle_after_seconds
    );
    let started = Instant::now();
    if !kubectl_ok(
        side.host.kubeconfig_path(),
        &["apply", "-f", &manifest.display().to_string()],
    ) {
        bail!("kubectl apply of the burst failed");
    }
    let applied_s = started.elapsed().as_secs_f64();
    let mut samples = BurstSamples {
        min_available_mib: sys::mem_available_mib(),
        ..Default::default()
    };
    let mut ready = std::collections::BTreeSet::new();
    let mut outcome = None;
    let mut last_progress = Instant::now();
    while ready.len() < opts.tenants {
        let t = started.elapsed().as_secs_f64();
        if let Ok(list) = api.list(&ListParams::default()).await {
            for cp in list.items.iter().filter(|cp| has_been_ready(cp)) {
                ready.insert(cp.metadata.name.clone().unwrap_or_default());
            }
        }
        if samples.ready_at.last().map(|r| r.1) != Some(ready.len()) {
            samples.ready_at.push((t, ready.len()));
        }
        let memory = tenants_memory(&side);
        let (rss, pss) = memory
            .values()
            .fold((0, 0), |(r, p), m| (r + m.rss, p + m.pss));
        samples.peak_tenants_rss_mib = samples.peak_tenants_rss_mib.max(rss as f64 / 1024.0);
        samples.peak_tenants_pss_mib = samples.peak_tenants_pss_mib.max(pss as f64 / 1024.0);
        samples.peak_awake = samples.peak_awake.max(memory.len());
        let available = sys::mem_available_mib();
        samples.min_available_mib = samples.min_available_mib.min(available);
        if last_progress.elapsed() >= Duration::from_secs(5) || ready.len() == opts.tenants {
            eprintln!(
                "burst: {t:6.1}s {}/{} have been Ready; {} tenants running ({:.1} GiB RSS, {:.1} GiB PSS); MemAvailable {available} MiB",
                ready.len(),
                opts.tenants,
                memory.len(),
                rss as f64 / 1024.0 / 1024.0,
                pss as f64 / 1024.0 / 1024.0
            );
            last_progress = Instant::now();
        }
        if available < opts.margin_mib {
            outcome = Some(format!(
                "stopped: MemAvailable fell to {available} MiB (margin {} MiB) at {t:.0} s with {} of {} Ready",
                opts.margin_mib,
                ready.len(),
                opts.tenants
            ));
            break;
        }
        if started.elapsed() > opts.limit {
            outcome = Some(format!(
                "incomplete: {} of {} Ready after {:.0} s",
                ready.len(),
                opts.tenants,
                opts.limit.as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready_s = started.elapsed().as_secs_f64();
    let cpu = sys::cpu_seconds(controller) - cpu_before;
    let controller_peak = sys::peak_rss_kib(controller) as f64 / 1024.0;
    if let Some(why) = &outcome {
        eprintln!("burst: {why}");
    }

    // A step line: the count holds until the sample that saw it change.
    let mut curve = vec![(0.0, 0.0)];
    for &(t, n) in &samples.ready_at {
        let held = curve.last().map_or(0.0, |p| p.1);
        curve.extend([(t, held), (t, n as f64)]);
    }
    line_chart(
        &plots.join("burst-ready.png"),
        &Chart {
            title: &format!(
                "{} ControlPlanes applied at once: how many have been Ready",
                opts.tenants
            ),
            x_label: "seconds since kubectl apply",
            y_label: "ControlPlanes",
            y_range: Some((0.0, opts.tenants as f64 * 1.05)),
        },
        &[Series::new("Ready (now or since hibernated)", curve)],
    )?;

    let mut table = format!(
        "**Burst**: {} ControlPlanes in one `kubectl apply` (took {applied_s:.1} s), hibernation after {} s idle, proxy running.\n\n| figure | value | goal |\n| --- | --- | --- |\n",
        opts.tenants, opts.idle_after_seconds
    );
    match &outcome {
        None => table.push_str(&format!(
            "| **time until all {} have been Ready** | **{all_ready_s:.0} s** | ≤ 240 s (for 100) |\n",
            opts.tenants
        )),
        Some(why) => table.push_str(&format!(
            "| **time until all {} have been Ready** | **{why}** | ≤ 240 s (for 100) |\n",
            opts.tenants
        )),
    }
    let half = samples
        .ready_at
        .iter()
        .find(|r| r.1 * 2 >= opts.tenants)
        .map_or("—".to_string(), |r| format!("{:.0} s", r.0));
    table.push_str(&format!("| time until half have been Ready | {half} | |\n"));
    table.push_str(&format!(
        "| controller CPU time over the burst | {cpu:.1} s ({:.2} s per tenant) | |\n",
        cpu / opts.tenants as f64
    ));
    table.push_str(&format!(
        "| controller peak RSS | {controller_peak:.0} MiB | |\n"
    ));
    table.push_str(&format!(
        "| peak memory of all tenants together, RSS / PSS | {:.1} GiB / {:.1} GiB | |\n",
        samples.peak_tenants_rss_mib / 1024.0,
        samples.peak_tenants_pss_mib / 1024.0
    ));
    table.push_str(&format!(
        "| most tenants running at once | {} | |\n",
        samples.peak_awake
    ));
    table.push_str(&format!(
        "| lowest MemAvailable | {} MiB | ≥ {} MiB |\n",
        samples.min_available_mib, opts.margin_mib
    ));
    table.push_str("\n![Ready count vs time](plots/burst-ready.png)\n");
    Ok(table)
}

fn paused_controlplane(name: &str) -> anyhow::Result<ControlPlane> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "tenancy.hostplane.io/v1alpha1",
        "kind": "ControlPlane",
        "metadata": { "name": name },
        "spec": { "type": "k8s", "hibernation": { "paused": true } },
    }))?)
}

/// The pass saw this generation of the object and wrote status for it.
fn reconciled(cp: &ControlPlane) -> bool {
    cp.status.as_ref().is_some_and(|s| {
        !s.conditions.is_empty() && Some(s.observed_generation) == cp.metadata.generation
    })
}

async fn wait_reconciled(api: &Api<ControlPlane>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if api.get(name).await.is_ok_and(|cp| reconciled(&cp)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} was not reconciled within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes `name`'s spec and times until status says the controller has seen the change.
async fn spec_change_latency(
    api: &Api<ControlPlane>,
    name: &str,
    round: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": { "tokenExpirationSeconds": 3600 + round } })),
    )
    .await
    .with_context(|| format!("changing the spec of {name}"))?;
    wait_reconciled(api, name).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn registered(opts: &Options, postgres: &Postgres) -> anyhow::Result<String> {
    let resync = REGISTERED_RESYNC_SECONDS.to_string();
    let side: HostplaneSide =
        hostplane_side(postgres, &[("HOSTPLANE_RESYNC_SECONDS", resync.as_str())]).await?;
    let controller = side.controller.id();
    let api = Api::<ControlPlane>::all(side.host.client());
    let probe = "paused-0";
    api.create(&PostParams::default(), &paused_controlplane(probe)?)
        .await?;
    wait_reconciled(&api, probe).await?;
    let mut alone = vec![];
    for round in 0..CHANGE_SAMPLES {
        alone.push(spec_change_latency(&api, probe, round).await?);
    }
    eprintln!(
        "registered: spec change seen in {:.2}s (median) with 1 ControlPlane",
        median(alone.clone())
    );

    let cpu_before = sys::cpu_seconds(controller);
    let started = Instant::now();
    let creations = futures::stream::iter(1..opts.registered)
        .map(|i| {
            let api = api.clone();
            async move {
                let cp = paused_controlplane(&format!("paused-{i}"))?;
                api.create(&PostParams::default(), &cp).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    creations.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let created_s = started.elapsed().as_secs_f64();
    eprintln!(
        "registered: created {} paused ControlPlanes in {created_s:.1}s",
        opts.registered
    );
    let limit = Duration::from_secs(60) + Duration::from_millis(500) * opts.registered as u32;
    let mut last_progress = Instant::now();
    let all_reconciled_s = loop {
        let done = api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().filter(|cp| reconciled(cp)).count())
            .unwrap_or(0);
        if done >= opts.registered {
            break started.elapsed().as_secs_f64();
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "registered: {:6.1}s {done}/{} reconciled",
                started.elapsed().as_secs_f64(),
                opts.registered
            );
            last_progress = Instant::now();
        }
        if started.elapsed() > limit {
            bail!(
                "only {done} of {} paused ControlPlanes were reconciled within {:.0} s",
                opts.registered,
                limit.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let registration_cpu = sys::cpu_seconds(controller) - cpu_before;
    eprintln!(
        "registered: all {} reconciled {all_reconciled_s:.1}s after the first create",
        opts.registered
    );

    let last = format!("paused-{}", opts.registered - 1);
    let steady_cpu_before = sys::cpu_seconds(controller);
    let steady_started = Instant::now();
    let mut crowded = vec![];
    for round in 0..CHANGE_SAMPLES {
        let next = Instant::now() + CHANGE_INTERVAL;
        let latency = spec_change_latency(&api, &last, round).await?;
        eprintln!(
            "registered: spec change of {last} seen in {latency:.2}s with {} ControlPlanes",
            opts.registered
        );
        crowded.push(latency);
        tokio::time::sleep_until(next.into()).await;
    }
    let steady_s = steady_started.elapsed().as_secs_f64();
    let steady_cpu = sys::cpu_seconds(controller) - steady_cpu_before;
    let rss = crate::rss_kib(controller) as f64 / 1024.0;
    let peak = sys::peak_rss_kib(controller) as f64 / 1024.0;
    let worst = crowded.iter().copied().fold(0.0, f64::max);
    let (one, many) = (median(alone), median(crowded));

    let n = opts.registered;
    let mut table = format!(
        "**Registered hibernated tenants**: {n} ControlPlanes with `spec.hibernation.paused: true` created 16 at a time through the API (took {created_s:.1} s); controller resync every {REGISTERED_RESYNC_SECONDS} s.\n\n| figure | value | goal |\n| --- | --- | --- |\n"
    );
    table.push_str(&format!(
        "| time until all {n} have status (from the first create) | {all_reconciled_s:.1} s | |\n"
    ));
    table.push_str(&format!(
        "| spec change → `observedGeneration` (median of {CHANGE_SAMPLES}), 1 ControlPlane | {:.0} ms | |\n",
        one * 1000.0
    ));
    table.push_str(&format!(
        "| spec change → `observedGeneration` (median of {CHANGE_SAMPLES} over {steady_s:.0} s), {n} ControlPlanes | {:.0} ms (worst {:.0} ms) | |\n",
        many * 1000.0,
        worst * 1000.0
    ));
    table.push_str(&format!(
        "| **falling-behind ratio** ({n} ÷ 1) | **{:.2}×** | |\n",
        many / one
    ));
    table.push_str(&format!(
        "| controller CPU: registering {n} / steady with {n} registered | {registration_cpu:.1} s / {:.1}% of a core | |\n",
        100.0 * steady_cpu / steady_s
    ));
    table.push_str(&format!(
        "| controller RSS with {n} registered (peak) | {rss:.0} MiB ({peak:.0} MiB) | |\n"
    ));
    Ok(table)
}
