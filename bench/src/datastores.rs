//! Request latency of one tenant workload on each datastore a tenant can have: Kine on the
//! shared Postgres, a dedicated etcd, and a user/prefix on the shared etcd — same run, same
//! machine, all three running and measured side by side (one operation on each in turn), every
//! datastore syncing its writes to disk as in production.
//!
//! The workload, through the tenant API server with a kube client (what a controller in the
//! tenant does): create `creates` ConfigMaps of 1 KiB, `lists` lists of that namespace, and
//! `updates` updates each timed until a watch that was open beforehand delivers it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use hostplane_tests::{Durability, Etcd, Postgres};
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

/// One tenant under measurement: its ConfigMaps in `default`, the watch opened before its first
/// update, and the latencies so far.
struct Subject {
    label: &'static str,
    api: Api<ConfigMap>,
    events: Option<futures::stream::BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>>,
    latencies: Latencies,
}

impl Subject {
    fn new(label: &'static str, client: kube::Client) -> Subject {
        Subject {
            label,
            api: Api::namespaced(client, "default"),
            events: None,
            latencies: Default::default(),
        }
    }

    /// Creates ConfigMap `cm-{i}` (1 KiB).
    async fn create(&self, i: usize) -> anyhow::Result<f64> {
        let payload = "x".repeat(1024);
        let started = Instant::now();
        self.api
            .create(
                &PostParams::default(),
                &config_map(&format!("cm-{i}"), &payload),
            )
            .await
            .context("creating a ConfigMap")?;
        Ok(millis(started))
    }

    /// Lists the namespace's ConfigMaps, which must hold at least `expected`.
    async fn list(&self, expected: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        let items = self.api.list(&ListParams::default()).await?.items.len();
        if items < expected {
            bail!("listed {items} ConfigMaps, expected at least {expected}");
        }
        Ok(millis(started))
    }

    /// Opens the watch that every update waits on.
    async fn open_watch(&mut self) -> anyhow::Result<()> {
        let version = self
            .api
            .list_metadata(&ListParams::default().limit(1))
            .await?;
        let version = version.metadata.resource_version.unwrap_or_default();
        self.events = Some(
            self.api
                .watch(&WatchParams::default(), &version)
                .await?
                .boxed(),
        );
        Ok(())
    }

    /// Updates `name` and waits until the open watch delivers that update.
    async fn update(&mut self, name: &str, i: usize) -> anyhow::Result<f64> {
        let value = format!("update-{i}");
        let started = Instant::now();
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "data": { "v": value } })),
            )
            .await?;
        let events = self.events.as_mut().context("the watch is not open")?;
        let deadline = started + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline.into(), events.next())
                .await
                .with_context(|| format!("no watch event for {name} within 30 s"))?;
            match next {
                Some(Ok(WatchEvent::Modified(cm)))
                    if cm.data.as_ref().and_then(|d| d.get("v")) == Some(&value) =>
                {
                    return Ok(millis(started));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("watch failed: {e}"),
                None => bail!("watch ended"),
            }
        }
    }
}

/// Runs the workload against every tenant side by side: each operation is made once on each
/// tenant in turn (the first tenant of each round rotating), so whatever else the machine does
/// at a moment — another tenant's controller-manager settling, a build — falls on every
/// datastore alike instead of on whichever is measured first.
async fn measure(subjects: &mut [Subject], w: Workload) -> anyhow::Result<()> {
    let n = subjects.len();
    for i in 0..WARM_UP + w.creates {
        for k in 0..n {
            let s = &mut subjects[(i + k) % n];
            let ms = s.create(i).await.with_context(|| s.label)?;
            if i >= WARM_UP {
                s.latencies[0].push(ms);
            }
        }
    }
    for i in 0..WARM_UP + w.lists {
        for k in 0..n {
            let s = &mut subjects[(i + k) % n];
            let ms = s.list(w.creates).await.with_context(|| s.label)?;
            if i >= WARM_UP {
                s.latencies[1].push(ms);
            }
        }
    }
    for s in subjects.iter_mut() {
        s.open_watch().await.with_context(|| s.label)?;
    }
    for i in 0..WARM_UP + w.updates {
        let name = format!("cm-{}", i % (WARM_UP + w.creates));
        for k in 0..n {
            let s = &mut subjects[(i + k) % n];
            let ms = s.update(&name, i).await.with_context(|| s.label)?;
            if i >= WARM_UP {
                s.latencies[2].push(ms);
            }
        }
    }
    Ok(())
}

pub async fn run(w: Workload) -> anyhow::Result<String> {
    // Every datastore syncs its writes, as in production (the dedicated etcd is the product's
    // own, which always does).
    let postgres = Postgres::start_with(Durability::Synced).await;
    let shared_etcd = Etcd::start_tls_with(true, Durability::Synced).await;
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
    let mut subjects = tenants.map(|(label, client)| Subject::new(label, client));
    eprintln!("measuring the three tenants side by side");
    measure(&mut subjects, w).await?;
    let results: Vec<(&str, Latencies)> = subjects
        .into_iter()
        .map(|s| (s.label, s.latencies))
        .collect();

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
        "\nWorkload per tenant: {} creates, {} lists of {}+ ConfigMaps, {} updates each timed until an open watch delivers it ({WARM_UP} unmeasured warm-up operations of each kind), interleaved: each operation once on each tenant in turn. Every datastore syncs its writes to disk. Goal: Postgres p99 ≤ 2× etcd p99 — worst ratio **{worst_ratio:.2}×**.\n",
        w.creates, w.lists, w.creates, w.updates
    ));
    Ok(table)
}
