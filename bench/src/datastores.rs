//! Request latency of one tenant workload on each datastore a tenant can have: Kine on the
//! shared Postgres, a dedicated etcd, and a user/prefix on the shared etcd — same run, same
//! machine, tenants measured one after another while all of them run.
//!
//! The workload, through the tenant API server with a kube client (what a controller in the
//! tenant does): create `creates` ConfigMaps of 1 KiB, `lists` lists of that namespace, and
//! `updates` updates each timed until a watch that was open beforehand delivers it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use hostplane_tests::{Etcd, Postgres};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{HostplaneSide, hostplane_side, kubectl_ok};

/// How many operations of each kind one tenant's workload makes.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub creates: usize,
    pub lists: usize,
    pub updates: usize,
}

/// Operations before the measured ones, so connection set-up and cold caches are not measured.
const WARM_UP: usize = 10;

/// The measured operations, in the order of [`Latencies`].
const OPERATIONS: [&str; 3] = [
    "create ConfigMap (1 KiB)",
    "list namespace's ConfigMaps",
    "update → watch event",
];

/// Latencies in milliseconds of each of [`OPERATIONS`].
type Latencies = [Vec<f64>; 3];

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Applies a ControlPlane and waits until its handed-out kubeconfig works; returns a client.
async fn tenant(side: &HostplaneSide, name: &str, spec: &str) -> anyhow::Result<kube::Client> {
    let yaml = format!(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {name}\nspec:\n  type: k8s\n{spec}"
    );
    let manifest = side.state.path().join(format!("{name}.yaml"));
    std::fs::write(&manifest, yaml)?;
    if !kubectl_ok(
        side.host.kubeconfig_path(),
        &["apply", "-f", &manifest.display().to_string()],
    ) {
        bail!("kubectl apply of {name} failed");
    }
    let secrets = Api::<Secret>::namespaced(side.host.client(), &format!("{name}-system"));
    let kubeconfig: PathBuf = side.state.path().join(format!("{name}.kubeconfig"));
    let started = Instant::now();
    loop {
        if let Ok(Some(s)) = secrets.get_opt("admin-kubeconfig").await
            && let Some(k) = s.data.as_ref().and_then(|d| d.get("kubeconfig"))
        {
            std::fs::write(&kubeconfig, &k.0)?;
            if kubectl_ok(&kubeconfig, &["get", "ns"]) {
                let parsed = Kubeconfig::from_yaml(std::str::from_utf8(&k.0)?)?;
                let config =
                    kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
                        .await?;
                return Ok(kube::Client::try_from(config)?);
            }
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("tenant {name} not ready after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("v".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

/// Runs the workload against one tenant (in its `default` namespace).
async fn measure(client: kube::Client, w: Workload) -> anyhow::Result<Latencies> {
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let payload = "x".repeat(1024);
    let mut create = vec![];
    for i in 0..WARM_UP + w.creates {
        let started = Instant::now();
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i}"), &payload),
        )
        .await
        .context("creating a ConfigMap")?;
        if i >= WARM_UP {
            create.push(millis(started));
        }
    }
    let mut list = vec![];
    for i in 0..WARM_UP + w.lists {
        let started = Instant::now();
        let items = api.list(&ListParams::default()).await?.items.len();
        if items < w.creates {
            bail!("listed {items} ConfigMaps, expected at least {}", w.creates);
        }
        if i >= WARM_UP {
            list.push(millis(started));
        }
    }
    // The watch is open before the first update; each update waits for its own event.
    let version = api.list_metadata(&ListParams::default().limit(1)).await?;
    let version = version.metadata.resource_version.unwrap_or_default();
    let mut events = api.watch(&WatchParams::default(), &version).await?.boxed();
    let mut watch = vec![];
    for i in 0..WARM_UP + w.updates {
        let name = format!("cm-{}", i % (WARM_UP + w.creates));
        let value = format!("update-{i}");
        let started = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": { "v": value } })),
        )
        .await?;
        let deadline = started + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline.into(), events.next())
                .await
                .with_context(|| format!("no watch event for {name} within 30 s"))?;
            match next {
                Some(Ok(WatchEvent::Modified(cm)))
                    if cm.data.as_ref().and_then(|d| d.get("v")) == Some(&value) =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("watch failed: {e}"),
                None => bail!("watch ended"),
            }
        }
        if i >= WARM_UP {
            watch.push(millis(started));
        }
    }
    Ok([create, list, watch])
}

pub async fn run(w: Workload) -> anyhow::Result<String> {
    let postgres = Postgres::start().await;
    let shared_etcd = Etcd::start_tls(true).await;
    let env = shared_etcd.shared_etcd_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // One controller with the shared Postgres only, one that also has the shared etcd (which
    // then takes `backend: shared` tenants).
    let on_postgres = hostplane_side(&postgres, &[]).await?;
    let on_etcd = hostplane_side(&postgres, &env).await?;
    let tenants = [
        (
            "shared Postgres (Kine)",
            tenant(&on_postgres, "on-postgres", "").await?,
        ),
        (
            "dedicated etcd",
            tenant(&on_postgres, "on-dedicated", "  backend: dedicated\n").await?,
        ),
        ("shared etcd", tenant(&on_etcd, "on-shared-etcd", "").await?),
    ];
    let mut results = vec![];
    for (label, client) in tenants {
        eprintln!("measuring {label}");
        results.push((label, measure(client, w).await?));
    }

    let mut table = String::from(
        "| operation (ms) | shared Postgres p50 / p99 | dedicated etcd p50 / p99 | shared etcd p50 / p99 | Postgres p99 ÷ etcd p99 (dedicated / shared) |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut worst_ratio: f64 = 0.0;
    for (i, op) in OPERATIONS.iter().enumerate() {
        let at = |l: &Latencies, p: f64| percentile(&l[i], p);
        let mut row = format!("| {op} ");
        for (_, l) in &results {
            row.push_str(&format!("| {:.1} / {:.1} ", at(l, 50.0), at(l, 99.0)));
        }
        let postgres_p99 = at(&results[0].1, 99.0);
        let [dedicated, shared] =
            [&results[1].1, &results[2].1].map(|l| postgres_p99 / at(l, 99.0));
        worst_ratio = worst_ratio.max(dedicated).max(shared);
        row.push_str(&format!("| {dedicated:.2}× / {shared:.2}× |\n"));
        table.push_str(&row);
    }
    table.push_str(&format!(
        "\nWorkload per tenant: {} creates, {} lists of {}+ ConfigMaps, {} updates each timed until an open watch delivers it ({WARM_UP} unmeasured warm-up operations of each kind). Goal: Postgres p99 ≤ 2× etcd p99 — worst ratio **{worst_ratio:.2}×**.\n",
        w.creates, w.lists, w.creates, w.updates
    ));
    Ok(table)
}
