//! End to end: usage metering. The `hostplane controller` binary samples every tenant's CPU,
//! memory, datastore and API requests into `status.usage`, its `/metrics` and `hostplane usage`,
//! with real kube-apiserver, Kine, Postgres and etcd processes on loopback.

mod common;

use std::time::Duration;

use common::*;
use hostplane_crds::UsageStatus;
use hostplane_tests::{Binaries, Etcd, Postgres, free_port, wait_until};

/// Sampling interval of these tests' controllers, in seconds.
const INTERVAL: &str = "2";
/// How long a figure may take to show a change: a few intervals, and the API server's own
/// latency in writing to its datastore.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(90);

/// ConfigMaps each test writes, and the bytes of data in each.
const CONFIGMAPS: i64 = 50;
const DATA_BYTES: i64 = 10 * 1024;
/// What a stored ConfigMap adds beyond its data: key, metadata (name, uid, timestamps,
/// managedFields), protobuf framing. Measured about 400; bounded generously.
const OVERHEAD_BYTES: i64 = 2048;

struct Bed {
    bed: ControllerBed,
    metrics_port: u16,
    /// Dropped after the controller and its tenants (fields drop in order).
    _postgres: Option<Postgres>,
}

impl Bed {
    async fn start(postgres: Option<Postgres>) -> Self {
        Self::start_with(postgres, &[]).await
    }

    async fn start_with(postgres: Option<Postgres>, extra_env: &[(&str, &str)]) -> Self {
        let metrics_port = free_port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut env = vec![
            ("HOSTPLANE_USAGE_INTERVAL_SECONDS", INTERVAL),
            ("HOSTPLANE_METRICS_ADDR", metrics_addr.as_str()),
        ];
        env.extend_from_slice(extra_env);
        let bed = ControllerBed::with(postgres.as_ref().map(Postgres::admin_dsn), &env).await;
        Self {
            bed,
            metrics_port,
            _postgres: postgres,
        }
    }

    /// Creates `CONFIGMAPS` ConfigMaps of `DATA_BYTES` each in the tenant's `default`
    /// namespace (`kubectl create`: no last-applied annotation doubling each one).
    async fn write_configmaps(&self, name: &str) {
        let (kubeconfig, _) = self.tenant_kubeconfig(name).await;
        let data = "x".repeat(DATA_BYTES as usize);
        let items: Vec<serde_json::Value> = (0..CONFIGMAPS)
            .map(|i| {
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": { "name": format!("load-{i:03}"), "namespace": "default" },
                    "data": { "payload": data },
                })
            })
            .collect();
        let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
        let file = self
            .bed
            .controller
            .state_dir
            .join(format!("{name}-configmaps.json"));
        std::fs::write(&file, list.to_string()).unwrap();
        let (ok, out) = kubectl_with(
            &Binaries::get().kubectl,
            &kubeconfig,
            &["create", "-f", file.to_str().unwrap()],
        );
        assert!(ok, "creating ConfigMaps in {name}: {out}");
    }

    /// Waits until the tenant's usage satisfies `check`; returns it.
    async fn usage_where(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&UsageStatus) -> bool,
    ) -> UsageStatus {
        let api = self.cps();
        let mut last = None;
        let found = tokio::time::timeout(SAMPLE_TIMEOUT, async {
            loop {
                if let Some(usage) = api
                    .get(name)
                    .await
                    .ok()
                    .and_then(|cp| cp.status)
                    .and_then(|s| s.usage)
                {
                    if check(&usage) {
                        return usage;
                    }
                    last = Some(usage);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
        match found {
            Ok(usage) => usage,
            Err(_) => panic!(
                "{name}: usage never showed {what} within {SAMPLE_TIMEOUT:?}; last: {last:#?}"
            ),
        }
    }

    /// A sample taken after this moment.
    async fn fresh_usage(&self, name: &str) -> UsageStatus {
        let after = k8s_openapi::jiff::Timestamp::now();
        self.usage_where(name, "a new sample", |u| u.sampled_time.0 > after)
            .await
    }

    /// A sample once the tenant has settled: its object count the same over three samples in
    /// a row (kube-controller-manager fills a new tenant with accounts, roles and ConfigMaps in
    /// its first seconds).
    async fn settled_usage(&self, name: &str) -> UsageStatus {
        let deadline = std::time::Instant::now() + SAMPLE_TIMEOUT;
        let mut last = self.fresh_usage(name).await;
        let mut unchanged = 0;
        while unchanged < 3 {
            let next = self.fresh_usage(name).await;
            unchanged = if next.objects == last.objects {
                unchanged + 1
            } else {
                0
            };
            last = next;
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never settled: {last:#?}"
            );
        }
        last
    }

    /// `hostplane usage ARGS` against the host; stdout.
    fn hostplane_usage(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane"))
            .arg("usage")
            .args(args)
            .env("KUBECONFIG", self.host.kubeconfig_path())
            .output()
            .expect("hostplane runs");
        assert!(
            out.status.success(),
            "hostplane usage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Hibernates the tenant (`spec.hibernation.paused`).
    fn pause(&self, name: &str) {
        self.patch_cp(name, "merge", r#"{"spec":{"hibernation":{"paused":true}}}"#);
    }

    async fn controller_metrics(&self) -> String {
        scrape_metrics(self.metrics_port).await
    }
}

/// The host, the controller and their helpers, as in every other suite.
impl std::ops::Deref for Bed {
    type Target = ControllerBed;

    fn deref(&self) -> &ControllerBed {
        &self.bed
    }
}

/// Storage and objects after writing the ConfigMaps grew by what they hold, within bounds.
fn assert_grew_by_the_configmaps(name: &str, before: &UsageStatus, after: &UsageStatus) {
    let stored = after.storage_bytes - before.storage_bytes;
    let (low, high) = (
        CONFIGMAPS * DATA_BYTES,
        CONFIGMAPS * (DATA_BYTES + OVERHEAD_BYTES),
    );
    assert!(
        (low..=high).contains(&stored),
        "{name}: storageBytes grew by {stored}, not within [{low}, {high}]: before {before:#?} after {after:#?}"
    );
    let added = after.objects - before.objects;
    assert!(
        (CONFIGMAPS..=CONFIGMAPS + 10).contains(&added),
        "{name}: objects grew by {added}, not by about {CONFIGMAPS}: before {before:#?} after {after:#?}"
    );
    eprintln!(
        "{name}: {CONFIGMAPS} ConfigMaps of {DATA_BYTES} bytes: storageBytes +{stored} ({} per object), objects +{added}",
        stored / CONFIGMAPS
    );
}

#[tokio::test]
async fn usage_on_shared_postgres_is_sampled_per_tenant_into_status_metrics_and_the_cli() {
    let bed = Bed::start(Some(Postgres::start().await)).await;
    bed.apply_cp("busy", "");
    bed.apply_cp("quiet", "");
    bed.available("busy").await;
    bed.available("quiet").await;

    // Every tenant gets its own figures, from its own processes and database.
    let running = |u: &UsageStatus| {
        u.cpu_seconds > 0.0
            && u.memory_bytes > 0
            && u.objects > 0
            && u.storage_bytes > 0
            && u.api_requests > 0
    };
    let quiet = bed.usage_where("quiet", "running figures", running).await;
    let before = bed.usage_where("busy", "running figures", running).await;
    for (name, u) in [("busy", &before), ("quiet", &quiet)] {
        // A kube-apiserver alone keeps well over 50 MiB resident; four components stay
        // below 4 GiB on a test machine.
        assert!(
            (50 << 20..4 << 30).contains(&u.memory_bytes),
            "{name}: {u:#?}"
        );
        assert!(
            u.datastore_bytes.is_some_and(|b| b > 1 << 20),
            "{name}: pg_database_size of a Kine database is megabytes: {u:#?}"
        );
        assert!(
            u.storage_bytes < u.datastore_bytes.unwrap(),
            "{name}: {u:#?}"
        );
    }
    assert_ne!(
        (before.cpu_seconds, before.memory_bytes),
        (quiet.cpu_seconds, quiet.memory_bytes),
        "two tenants' processes measured the same: {before:#?} {quiet:#?}"
    );

    // Writes show up in storage, objects and requests of the tenant that made them only.
    let before = bed.settled_usage("busy").await;
    let quiet_before = bed.settled_usage("quiet").await;
    bed.write_configmaps("busy").await;
    let after = bed
        .usage_where("busy", "the ConfigMaps stored", |u| {
            u.objects >= before.objects + CONFIGMAPS
                && u.storage_bytes >= before.storage_bytes + CONFIGMAPS * DATA_BYTES
        })
        .await;
    assert_grew_by_the_configmaps("busy", &before, &after);
    assert!(
        after.api_requests >= before.api_requests + CONFIGMAPS,
        "{CONFIGMAPS} creates are {CONFIGMAPS} requests at least: before {before:#?} after {after:#?}"
    );
    let after_rate = bed
        .usage_where("busy", "a request rate", |u| u.api_request_rate > 0.0)
        .await;
    let quiet_after = bed.fresh_usage("quiet").await;
    assert!(
        (quiet_after.objects - quiet_before.objects).abs() < 5
            && (quiet_after.storage_bytes - quiet_before.storage_bytes).abs()
                < CONFIGMAPS * DATA_BYTES / 10,
        "the other tenant's storage moved: {quiet_before:#?} {quiet_after:#?}"
    );
    eprintln!(
        "busy: cpu {:.1}s, memory {} MiB, datastore {} KiB, storage {} KiB, objects {}, requests {} ({:.2}/s); \
         quiet: cpu {:.1}s, memory {} MiB",
        after_rate.cpu_seconds,
        after_rate.memory_bytes >> 20,
        after_rate.datastore_bytes.unwrap_or_default() >> 10,
        after_rate.storage_bytes >> 10,
        after_rate.objects,
        after_rate.api_requests,
        after_rate.api_request_rate,
        quiet_after.cpu_seconds,
        quiet_after.memory_bytes >> 20,
    );

    // What a user sees: the table, one tenant as JSON, the controller's metrics.
    let table = bed.hostplane_usage(&[]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CPU(s)",
            "MEMORY",
            "STORAGE",
            "DATASTORE",
            "OBJECTS",
            "REQUESTS",
            "REQ/S",
            "SAMPLED"
        ],
        "{table}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!((rows[0][0], rows[1][0]), ("busy", "quiet"), "{table}");
    assert!(rows[0][2].ends_with("Mi"), "memory in MiB: {table}");
    assert!(rows[0][4].ends_with("Mi"), "datastore in MiB: {table}");
    assert!(
        rows[0][5].parse::<i64>().unwrap() >= after.objects,
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&bed.hostplane_usage(&["busy", "-o", "json"])).unwrap();
    let busy = &json["busy"];
    assert!(
        busy["storageBytes"].as_i64().unwrap() >= after.storage_bytes
            && busy["objects"].as_i64().unwrap() >= after.objects
            && busy["datastoreBytes"].as_i64().unwrap() > 0
            && busy["sampledTime"].is_string(),
        "{json:#}"
    );
    assert_eq!(json.as_object().unwrap().len(), 1, "{json:#}");

    let metrics = bed.controller_metrics().await;
    for family in [
        "hostplane_tenant_cpu_seconds",
        "hostplane_tenant_memory_bytes",
        "hostplane_tenant_storage_bytes",
        "hostplane_tenant_datastore_bytes",
        "hostplane_tenant_objects",
        "hostplane_tenant_api_requests",
        "hostplane_tenant_api_request_rate",
    ] {
        for tenant in ["busy", "quiet"] {
            let series = format!("{family}{{tenant=\"{tenant}\"}} ");
            assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
        }
    }
    let stored: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hostplane_tenant_storage_bytes{tenant=\"busy\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stored as i64 >= after.storage_bytes, "{metrics}");

    // Hibernated: nothing runs, so no memory; the database is measured all the same.
    bed.pause("quiet");
    let asleep = bed
        .usage_where("quiet", "no memory while hibernated", |u| {
            u.memory_bytes == 0 && u.cpu_seconds == 0.0
        })
        .await;
    assert!(
        asleep.datastore_bytes.is_some_and(|b| b > 1 << 20)
            && (asleep.storage_bytes - quiet_after.storage_bytes).abs() < 64 * 1024
            && asleep.api_request_rate == 0.0,
        "{quiet_after:#?} {asleep:#?}"
    );

    // A deleted tenant's series go with it.
    let (ok, out) = bed.kubectl(&["delete", "cp", "quiet", "--timeout=120s"], None);
    assert!(ok, "{out}");
    wait_until(SAMPLE_TIMEOUT, "quiet's series to go", async || {
        !bed.controller_metrics().await.contains("tenant=\"quiet\"")
    })
    .await;
    assert!(bed.controller_metrics().await.contains("tenant=\"busy\""));
}

#[tokio::test]
async fn usage_of_sqlite_and_dedicated_etcd_tenants_grows_with_their_writes() {
    // No Postgres: `backend: shared` tenants get Kine on SQLite (the embedded default).
    let bed = Bed::start(None).await;
    bed.apply_cp("lite", "");
    bed.apply_cp("own", "  backend: dedicated\n");
    bed.available("lite").await;
    bed.available("own").await;

    for name in ["lite", "own"] {
        let before = bed
            .usage_where(name, "running figures", |u| {
                u.objects > 0 && u.storage_bytes > 0 && u.memory_bytes > 0
            })
            .await;
        assert!(
            before
                .datastore_bytes
                .is_some_and(|b| b >= before.storage_bytes),
            "{name}: the file holds at least the live data: {before:#?}"
        );
        let before = bed.settled_usage(name).await;
        bed.write_configmaps(name).await;
        let after = bed
            .usage_where(name, "the ConfigMaps stored", |u| {
                u.objects >= before.objects + CONFIGMAPS
                    && u.storage_bytes >= before.storage_bytes + CONFIGMAPS * DATA_BYTES
            })
            .await;
        let stored = after.storage_bytes - before.storage_bytes;
        let added = after.objects - before.objects;
        eprintln!(
            "{name}: storageBytes +{stored}, objects +{added}, datastoreBytes {:?} → {:?}",
            before.datastore_bytes, after.datastore_bytes
        );
        if name == "lite" {
            // Live keys and values, as on Postgres.
            assert_grew_by_the_configmaps(name, &before, &after);
            // Hibernated, Kine is stopped: the data keeps its last figures, the file is
            // measured.
            let after = bed.fresh_usage(name).await;
            bed.pause(name);
            let asleep = bed
                .usage_where(name, "no memory while hibernated", |u| u.memory_bytes == 0)
                .await;
            assert!(
                (asleep.storage_bytes, asleep.objects) == (after.storage_bytes, after.objects)
                    && asleep
                        .datastore_bytes
                        .is_some_and(|b| b >= after.storage_bytes),
                "{after:#?} {asleep:#?}"
            );
        } else {
            // etcd's in-use size: pages, with the revisions kept until compaction.
            assert!(
                stored >= CONFIGMAPS * DATA_BYTES && added <= CONFIGMAPS + 10,
                "{name}: {before:#?} {after:#?}"
            );
        }
    }

    // `hostplane usage` names every tenant; one that is gone is an error.
    let table = bed.hostplane_usage(&[]);
    assert!(
        table.contains("\nlite ") && table.contains("\nown "),
        "{table}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane"))
        .args(["usage", "nosuch"])
        .env("KUBECONFIG", bed.host.kubeconfig_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("controlplane nosuch not found"),
        "{out:?}"
    );
}

#[tokio::test]
async fn usage_on_the_shared_etcd_counts_the_tenants_prefix_only() {
    let shared = Etcd::start_tls(true).await;
    let env = shared.shared_etcd_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bed = Bed::start_with(None, &env).await;
    bed.apply_cp("left", "");
    bed.apply_cp("right", "");
    bed.available("left").await;
    bed.available("right").await;

    let running = |u: &UsageStatus| u.objects > 0 && u.storage_bytes > 0;
    bed.usage_where("left", "running figures", running).await;
    bed.usage_where("right", "running figures", running).await;
    let before = bed.settled_usage("left").await;
    let right_before = bed.settled_usage("right").await;
    // The etcd is everyone's: no size of the tenant's own.
    assert_eq!(before.datastore_bytes, None, "{before:#?}");
    bed.write_configmaps("left").await;
    let after = bed
        .usage_where("left", "the ConfigMaps stored", |u| {
            u.objects >= before.objects + CONFIGMAPS
                && u.storage_bytes >= before.storage_bytes + CONFIGMAPS * DATA_BYTES
        })
        .await;
    assert_grew_by_the_configmaps("left", &before, &after);
    let right_after = bed.fresh_usage("right").await;
    assert!(
        (right_after.objects - right_before.objects).abs() < 5,
        "the other tenant's prefix moved: {right_before:#?} {right_after:#?}"
    );
    let table = bed.hostplane_usage(&["left"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[4]), ("left", "-"), "{table}");
}
