//! Fault injection, end to end through the `hostplane controller` binary with real tenant
//! processes on loopback: the controller SIGKILLed at random moments while it provisions and
//! tears down many tenants, the shared Postgres and a tenant's dedicated etcd stopped under write
//! load, and a full disk under the tenants' state dirs. Every fault must end in a condition a
//! user can read and then in convergence: nothing duplicated, nothing leaked, no acknowledged
//! write lost.
//!
//! The short profile runs by default (what CI runs):
//!
//! ```text
//! cargo test -p hostplane --test faults -- --nocapture --test-threads=1
//! ```
//!
//! The full profile (20 tenants, 8 + 6 controller kills, a longer write load):
//!
//! ```text
//! HOSTPLANE_FAULTS=full cargo test -p hostplane --test faults -- --nocapture --test-threads=1
//! ```
//!
//! Kill moments come from a seeded generator whose seed is printed; `HOSTPLANE_FAULTS_SEED=<seed>`
//! replays a schedule. The disk test mounts a tmpfs, so the suite runs as root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{KubeApiserver, Postgres, wait_until};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The controller checks a Ready tenant this often, so an outage shows within seconds.
const HEALTH_CHECK: (&str, &str) = ("HOSTPLANE_HEALTH_CHECK_SECONDS", "2");
/// The processes every tenant on Kine runs, one of each.
const KINE_TENANT: [&str; 3] = ["kine", "kube-apiserver", "kube-controller-manager"];
/// Programs a tenant runs, for the census of processes on this machine.
const TENANT_PROGRAMS: [&str; 5] = [
    "kine",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// How hard the suite pushes: `HOSTPLANE_FAULTS=full` or the short default.
#[derive(Debug)]
struct Profile {
    tenants: usize,
    provisioning_kills: usize,
    deletion_kills: usize,
    /// Between two controller kills (drawn at random in this range).
    kill_gap: (Duration, Duration),
    /// How long the write load runs before an outage and after recovery.
    write_load: Duration,
}

impl Profile {
    fn get() -> Self {
        let profile = match std::env::var("HOSTPLANE_FAULTS").as_deref() {
            Ok("full") => Profile {
                tenants: 20,
                provisioning_kills: 8,
                deletion_kills: 6,
                kill_gap: (Duration::from_millis(500), Duration::from_secs(12)),
                write_load: Duration::from_secs(20),
            },
            Ok("short") | Ok("") | Err(_) => Profile {
                tenants: 6,
                provisioning_kills: 3,
                deletion_kills: 2,
                kill_gap: (Duration::from_millis(500), Duration::from_secs(6)),
                write_load: Duration::from_secs(4),
            },
            Ok(other) => panic!("HOSTPLANE_FAULTS={other}: expected \"full\" or \"short\""),
        };
        eprintln!("faults: profile {profile:?}");
        profile
    }
}

/// SplitMix64: small, seedable, and good enough to place kills at random moments.
struct Rng(u64);

impl Rng {
    /// Seeded from `HOSTPLANE_FAULTS_SEED` or the clock; the seed is printed for replays.
    fn seeded() -> Self {
        let seed = match std::env::var("HOSTPLANE_FAULTS_SEED") {
            Ok(s) => s.parse().expect("HOSTPLANE_FAULTS_SEED is a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("faults: seed {seed} (replay with HOSTPLANE_FAULTS_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.next() % (span + 1))
    }
}

fn apply(host: &KubeApiserver, yaml: &str) {
    let out = host.apply_yaml(yaml);
    assert!(out.success(), "kubectl apply failed: {}", out.combined());
}

/// `hp_<uid without dashes>`: the tenant's database and login role on the shared Postgres.
fn database_name(cp: &ControlPlane) -> String {
    format!("hp_{}", cp.metadata.uid.clone().unwrap().replace('-', ""))
}

fn is_ready(cp: &ControlPlane) -> bool {
    condition(cp, "Ready").is_some_and(|(status, _, _)| status == "True")
}

/// The tenant a process belongs to: the first path component under `tenants` of its working
/// dir (every tenant process runs in its state dir), or of a path in its arguments.
fn tenant_of(pid: i32, tenants: &Path) -> Option<String> {
    let key_under = |path: &str| {
        let rest = path.strip_prefix(tenants.to_str()?)?.strip_prefix('/')?;
        let key = rest.split('/').next()?.trim_end_matches(" (deleted)");
        (!key.is_empty()).then(|| key.to_string())
    };
    if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd"))
        && let Some(key) = key_under(&cwd.to_string_lossy())
    {
        return Some(key);
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .find_map(|arg| {
            let path = &arg[arg.find('/')?..];
            key_under(path)
        })
}

/// Tenant processes on this machine: tenant key → program → how many run.
fn tenant_processes(tenants: &Path) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut found: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for pid in std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or(&[]))
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if !TENANT_PROGRAMS.contains(&argv0.as_str()) || !alive(pid) {
            continue;
        }
        if let Some(key) = tenant_of(pid, tenants) {
            *found.entry(key).or_default().entry(argv0).or_default() += 1;
        }
    }
    found
}

/// What tenants leave on this machine and on the host, counted the same way before and after.
#[derive(Debug, Default, PartialEq)]
struct Census {
    /// `hp_*` databases on the shared Postgres.
    databases: BTreeSet<String>,
    /// `hp_*` roles on the shared Postgres.
    roles: BTreeSet<String>,
    /// Tenant key → program → running copies.
    processes: BTreeMap<String, BTreeMap<String, usize>>,
    /// Directories under `<state dir>/tenants`.
    state_dirs: BTreeSet<String>,
    /// `<cp>-system` namespaces on the host not being deleted.
    namespaces: BTreeSet<String>,
}

impl Census {
    async fn take(host: &KubeApiserver, state_dir: &Path, postgres: Option<&Postgres>) -> Self {
        let tenants = state_dir.join("tenants");
        let tenants = tenants.canonicalize().unwrap_or(tenants);
        let hp = async |sql: &str| match postgres {
            Some(pg) => pg.query_strings(sql).await.into_iter().collect(),
            None => BTreeSet::new(),
        };
        let namespaces = Api::<Namespace>::all(host.client())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .filter_map(|ns| ns.metadata.name)
            .filter(|n| n.ends_with("-system") && !n.starts_with("kube-"))
            .collect();
        Census {
            databases: hp(r"SELECT datname FROM pg_database WHERE datname LIKE 'hp\_%'").await,
            roles: hp(r"SELECT rolname FROM pg_roles WHERE rolname LIKE 'hp\_%'").await,
            processes: tenant_processes(&tenants),
            state_dirs: std::fs::read_dir(&tenants)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            namespaces,
        }
    }

    /// Exactly what `cps`, all running on Kine on the shared Postgres, should leave.
    fn of_kine_tenants(cps: &[ControlPlane]) -> Self {
        let one_each: BTreeMap<String, usize> =
            KINE_TENANT.iter().map(|p| (p.to_string(), 1)).collect();
        Census {
            databases: cps.iter().map(database_name).collect(),
            roles: cps.iter().map(database_name).collect(),
            processes: cps
                .iter()
                .map(|cp| (tenant_key(cp), one_each.clone()))
                .collect(),
            state_dirs: cps.iter().map(tenant_key).collect(),
            namespaces: cps
                .iter()
                .map(|cp| format!("{}-system", cp.metadata.name.clone().unwrap()))
                .collect(),
        }
    }
}

/// Watches a phase's ControlPlanes between kills: how many are left and Ready and, during
/// provisioning, that a tenant once Ready stays Ready. Killing the controller leaves tenant
/// processes running, so a tenant reported down after a restart is a false outage.
struct ReadyWatch {
    names: Vec<String>,
    check_kept: bool,
    seen_ready: BTreeSet<String>,
}

impl ReadyWatch {
    fn new(names: &[String], check_kept: bool) -> Self {
        Self {
            names: names.to_vec(),
            check_kept,
            seen_ready: BTreeSet::new(),
        }
    }

    /// (left, Ready) among the watched ControlPlanes.
    async fn look(&mut self, api: &Api<ControlPlane>) -> (usize, usize) {
        let cps = api.list(&ListParams::default()).await.unwrap().items;
        let ours: Vec<&ControlPlane> = cps
            .iter()
            .filter(|cp| self.names.contains(&cp.metadata.name.clone().unwrap()))
            .collect();
        for cp in &ours {
            let name = cp.metadata.name.clone().unwrap();
            if is_ready(cp) {
                self.seen_ready.insert(name);
            } else {
                assert!(
                    !(self.check_kept && self.seen_ready.contains(&name)),
                    "{name} was Ready and is reported down, though only the controller was \
                     killed, never a tenant process: {:?}",
                    condition(cp, "Ready")
                );
            }
        }
        let ready = ours.iter().filter(|cp| is_ready(cp)).count();
        (ours.len(), ready)
    }

    /// Watches for `how_long`.
    async fn during(&mut self, api: &Api<ControlPlane>, how_long: Duration) -> (usize, usize) {
        let until = Instant::now() + how_long;
        loop {
            let seen = self.look(api).await;
            if Instant::now() >= until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Kills the controller (SIGKILL) `kills` times at random gaps while `watch`'s ControlPlanes
/// are worked on, starting it again at once each time; the tenant processes it leaves must be
/// adopted, not duplicated.
async fn kill_controller_during(
    phase: &str,
    kills: usize,
    gap: (Duration, Duration),
    rng: &mut Rng,
    bed: &mut ControllerBed,
    watch: &mut ReadyWatch,
) {
    let started = Instant::now();
    for n in 1..=kills {
        let (left, ready) = watch.during(&bed.cps(), rng.between(gap)).await;
        let tenants = bed.controller.state_dir.join("tenants");
        let running: usize = tenant_processes(&tenants.canonicalize().unwrap_or(tenants))
            .values()
            .flat_map(BTreeMap::values)
            .sum();
        eprintln!(
            "faults: kill -9 controller {n}/{kills} during {phase} at {:.1}s: {left} left, \
             {ready} Ready, {running} tenant processes to adopt",
            started.elapsed().as_secs_f64(),
        );
        bed.controller.restart();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_at_random_points_of_provisioning_and_teardown_converges_without_duplicates_or_leaks()
 {
    let profile = Profile::get();
    let mut rng = Rng::seeded();
    let postgres = Postgres::start().await;
    // The tenants' roles share the harness Postgres's 300 connections as an operator would size
    // them (the default of 64 per tenant would exhaust it with a handful of busy tenants, and
    // the controller's own connection then fails with "too many clients").
    let connections = (280 / profile.tenants).clamp(8, 64).to_string();
    let mut bed = ControllerBed::with(
        Some(postgres.admin_dsn()),
        &[
            HEALTH_CHECK,
            ("HOSTPLANE_DEFAULT_MAX_DATASTORE_CONNECTIONS", &connections),
        ],
    )
    .await;
    let state_dir = bed.controller.state_dir.clone();
    let before = Census::take(&bed.host, &state_dir, Some(&postgres)).await;
    assert_eq!(before, Census::default(), "leftovers before the test");

    // All tenants at once, then kills spread over their provisioning.
    let names: Vec<String> = (0..profile.tenants)
        .map(|i| format!("crash-{i:02}"))
        .collect();
    let all: Vec<String> = names.iter().map(|n| controlplane_yaml(n, "")).collect();
    bed.apply(&all.join("---\n"));
    let provisioning = Instant::now();
    let mut watch = ReadyWatch::new(&names, true);
    kill_controller_during(
        "provisioning",
        profile.provisioning_kills,
        profile.kill_gap,
        &mut rng,
        &mut bed,
        &mut watch,
    )
    .await;
    while watch.look(&bed.cps()).await.1 < names.len() {
        assert!(
            provisioning.elapsed() < READY_TIMEOUT,
            "not all tenants Ready after {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut cps = Vec::new();
    for name in &names {
        cps.push(bed.cps().get(name).await.unwrap());
    }
    let sessions = postgres
        .query_strings(r"SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'hp\_%'")
        .await;
    eprintln!(
        "faults: {} tenants Ready {:.1}s after creation ({} tenant sessions on Postgres)",
        names.len(),
        provisioning.elapsed().as_secs_f64(),
        sessions[0]
    );

    // One database, one role, one of each process, one state dir, one namespace per tenant.
    let census = Census::take(&bed.host, &state_dir, Some(&postgres)).await;
    assert_eq!(census, Census::of_kine_tenants(&cps));
    // The CA the processes use is the one stored first (never regenerated by a second pass).
    for cp in &cps {
        let name = cp.metadata.name.clone().unwrap();
        let stored = secret_text(
            &bed.host.client(),
            &format!("{name}-system"),
            "k8s-certs",
            "ca.crt",
        )
        .await
        .into_bytes();
        let used = std::fs::read(
            state_dir
                .join("tenants")
                .join(tenant_key(cp))
                .join("pki/ca.crt"),
        )
        .unwrap();
        assert_eq!(
            stored, used,
            "{name}: its processes do not use the stored CA"
        );
    }

    // Once more with every tenant running: all adopted, none reported down meanwhile.
    bed.controller.restart();
    watch.during(&bed.cps(), Duration::from_secs(10)).await;
    let census = Census::take(&bed.host, &state_dir, Some(&postgres)).await;
    assert_eq!(census, Census::of_kine_tenants(&cps), "after a restart");

    // Delete them all, with kills spread over the teardown.
    let out = bed
        .host
        .run_kubectl(&["delete", "cp", "--all", "--wait=false"]);
    assert!(out.success(), "{}", out.combined());
    let teardown = Instant::now();
    kill_controller_during(
        "teardown",
        profile.deletion_kills,
        profile.kill_gap,
        &mut rng,
        &mut bed,
        &mut ReadyWatch::new(&names, false),
    )
    .await;
    let cps_api = bed.cps();
    wait_until(READY_TIMEOUT, "every ControlPlane to be gone", async || {
        cps_api
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    eprintln!(
        "faults: {} tenants deleted {:.1}s after the delete",
        names.len(),
        teardown.elapsed().as_secs_f64()
    );
    // Processes get SIGTERM and a grace period; the finalizer goes once they are gone.
    let after = Census::take(&bed.host, &state_dir, Some(&postgres)).await;
    assert_eq!(after, before, "left behind after teardown");
}

/// ConfigMaps written to a tenant in a loop; only writes the API server acknowledged count.
struct WriteLoad {
    client: kube::Client,
    /// How long to write before an outage and after recovery.
    load: Duration,
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl WriteLoad {
    /// Writes to tenant `name` through its handed-out kubeconfig for `load`, then until at least
    /// one write is acknowledged.
    async fn on(host: &KubeApiserver, name: &str, load: Duration) -> Self {
        let writes = Self::start(short_timeout_client(host, name).await, load);
        writes.keep_writing("writes before the outage").await;
        writes
    }

    fn start(client: kube::Client, load: Duration) -> Self {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (acknowledged, failed, stop) = (acknowledged.clone(), failed.clone(), stop.clone());
            let client = client.clone();
            async move {
                let api = Api::<ConfigMap>::namespaced(client, "default");
                let params = PostParams::default();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let name = format!("load-{seq:06}");
                    let value = format!("written-{seq}");
                    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": name},
                        "data": {"value": value},
                    }))
                    .unwrap();
                    let write = api.create(&params, &cm);
                    match tokio::time::timeout(Duration::from_secs(10), write).await {
                        Ok(Ok(_)) => acknowledged.lock().unwrap().push((name, value)),
                        // Not acknowledged: it may or may not have been stored.
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            client,
            load,
            acknowledged,
            failed,
            stop,
            task,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes for the load's duration, then until at least one more write is acknowledged.
    async fn keep_writing(&self, what: &str) {
        let before = self.acknowledged();
        tokio::time::sleep(self.load).await;
        wait_until(Duration::from_secs(60), what, async || {
            self.acknowledged() > before
        })
        .await;
    }

    /// Waits for a write to fail, `failed` having failed before (the outage reached clients).
    async fn wait_for_a_failure(&self, failed: usize) {
        wait_until(Duration::from_secs(30), "a write to fail", async || {
            self.failed() > failed
        })
        .await;
    }

    /// After recovery: writes on (see `keep_writing`), stops, and reads every acknowledged write
    /// back. All acknowledged writes, in order, and those lost; `recovered` starts the log line.
    async fn finish(self, what: &str, recovered: &str) -> (Vec<(String, String)>, Vec<String>) {
        self.keep_writing(what).await;
        let failed = self.failed();
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let acknowledged = Arc::try_unwrap(self.acknowledged)
            .unwrap()
            .into_inner()
            .unwrap();
        eprintln!(
            "faults: {recovered}: {} writes acknowledged, {failed} failed",
            acknowledged.len()
        );
        let lost = lost_acknowledged_writes(self.client, &acknowledged).await;
        (acknowledged, lost)
    }
}

/// A client of the tenant with its handed-out kubeconfig, with timeouts short enough that a
/// write during an outage fails rather than hangs.
async fn short_timeout_client(host: &KubeApiserver, name: &str) -> kube::Client {
    let mut config = tenant_client_config(&host.client(), name, "kubeconfig").await;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(8));
    config.write_timeout = Some(Duration::from_secs(8));
    kube::Client::try_from(config).unwrap()
}

/// Acknowledged writes that are gone: not even a GET (a read from storage) finds them with the
/// value written. Asserts that the others are in a LIST too (the API server's watch cache).
async fn lost_acknowledged_writes(
    client: kube::Client,
    acknowledged: &[(String, String)],
) -> Vec<String> {
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let listed = async || -> BTreeMap<String, String> {
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|cm| {
                let value = cm.data?.get("value")?.clone();
                Some((cm.metadata.name?, value))
            })
            .collect()
    };
    let mut unlisted: Vec<&(String, String)> = Vec::new();
    // A cache catching up is not a loss: a few tries before judging.
    for _ in 0..5 {
        let stored = listed().await;
        unlisted = acknowledged
            .iter()
            .filter(|(name, value)| stored.get(name) != Some(value))
            .collect();
        if unlisted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut lost = Vec::new();
    for (name, value) in &unlisted {
        let stored = api.get_opt(name).await.unwrap();
        if stored
            .and_then(|cm| cm.data?.get("value").cloned())
            .as_ref()
            != Some(value)
        {
            lost.push(name.clone());
        }
    }
    unlisted.retain(|(name, _)| !lost.contains(name));
    assert!(
        unlisted.is_empty(),
        "{} of {} acknowledged writes are stored (a GET reads them) but missing from a LIST: {:?}",
        unlisted.len(),
        acknowledged.len(),
        &unlisted[..unlisted.len().min(20)]
    );
    lost
}

/// Fails now and then with Kine 0.17.5 (the newest release): a create in flight when Postgres
/// aborts its transaction is acknowledged yet never stored. `LogStructured::Create` follows a
/// failed append with a lookup of the key and, when the key is absent, returns the lookup's nil
/// error (`rev, event, err := l.get(...)` shadows the append's), so the etcd Txn succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_postgres_stopped_under_write_load_makes_the_tenant_unavailable_and_loses_no_acknowledged_write()
 {
    let profile = Profile::get();
    let mut postgres = Postgres::start().await;
    let bed = ControllerBed::with(Some(postgres.admin_dsn()), &[HEALTH_CHECK]).await;
    bed.apply_cp("busy", "");
    wait_ready_state(&bed.cps(), "busy", "True", Some("Available"), READY_TIMEOUT).await;
    let writes = WriteLoad::on(&bed.host, "busy", profile.write_load).await;

    // pg_ctl stop -m fast: clients are cut off, the data stays.
    let (acknowledged, failed) = (writes.acknowledged(), writes.failed());
    postgres.stop();
    let cp = wait_ready_state(&bed.cps(), "busy", "False", None, Duration::from_secs(60)).await;
    let (_, reason, message) = condition(&cp, "Ready").unwrap();
    assert!(
        reason == "DatastoreUnavailable"
            && message.contains(&format!(
                "cannot reach the shared Postgres at 127.0.0.1:{}",
                postgres.port()
            )),
        "unclear condition while Postgres is down: {reason}: {message}"
    );
    writes.wait_for_a_failure(failed).await;
    eprintln!(
        "faults: Postgres down: Ready=False {reason}: {message}; {acknowledged} writes acknowledged before"
    );

    // Back on the same port and data dir.
    postgres.start_again().await;
    wait_ready_state(&bed.cps(), "busy", "True", Some("Available"), READY_TIMEOUT).await;
    let (acknowledged, lost) = writes
        .finish("writes after the outage", "Postgres back")
        .await;
    if !lost.is_empty() {
        // What Kine's table holds for them says whether Kine or the API server dropped them.
        let busy = bed.cps().get("busy").await.unwrap();
        let kine = postgres.dsn_for_database(&database_name(&busy));
        let (db, connection) = tokio_postgres::connect(&kine, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut rows = Vec::new();
        for name in &lost {
            for row in db
                .query(
                    "SELECT id::bigint, name::text, created::int, deleted::int FROM kine WHERE name = $1",
                    &[&format!("/registry/configmaps/default/{name}")],
                )
                .await
                .unwrap()
            {
                let (id, name, created, deleted): (i64, String, i32, i32) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                rows.push(format!(
                    "id={id} {name} created={created} deleted={deleted}"
                ));
            }
        }
        let gaps: i64 = db
            .query_one("SELECT count(*) FROM kine WHERE name LIKE 'gap-%'", &[])
            .await
            .unwrap()
            .get(0);
        panic!(
            "{} of {} acknowledged writes lost (not even a GET finds them): {lost:?}; their \
             rows in Kine's table: {rows:?}; Kine gap-fill rows: {gaps}",
            lost.len(),
            acknowledged.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_etcd_frozen_then_killed_under_write_load_is_restarted_and_loses_no_acknowledged_write()
 {
    let profile = Profile::get();
    let bed = ControllerBed::with(None, &[HEALTH_CHECK]).await;
    bed.apply_cp("solo", "  backend: dedicated\n");
    let cp = wait_ready_state(&bed.cps(), "solo", "True", Some("Available"), READY_TIMEOUT).await;
    let dir = bed.tenant_dir(&cp);
    let writes = WriteLoad::on(&bed.host, "solo", profile.write_load).await;

    // SIGSTOP: etcd hangs (a stalled disk, a long GC pause) — the API server's readiness fails.
    let etcd = pid_of(&dir, "etcd").expect("etcd.pid");
    let failed = writes.failed();
    kill(Pid::from_raw(etcd), Signal::SIGSTOP).unwrap();
    // A pass already writing to the tenant when etcd froze waits out its request timeout (20 s)
    // and the dedicated etcd's upkeep its own before the next pass finds /readyz failing: on a
    // loaded 2-core machine that has taken more than a minute.
    let cp = wait_ready_state(
        &bed.cps(),
        "solo",
        "False",
        Some("Unavailable"),
        Duration::from_secs(150),
    )
    .await;
    let (_, _, message) = condition(&cp, "Ready").unwrap();
    assert!(
        message.contains("is not ready") && message.contains("etcd"),
        "{message}"
    );
    writes.wait_for_a_failure(failed).await;
    eprintln!("faults: etcd frozen: Ready=False Unavailable: {message}");

    // kill -9: the supervisor starts it again on the same data dir and ports.
    kill(Pid::from_raw(etcd), Signal::SIGKILL).unwrap();
    wait_until(
        Duration::from_secs(60),
        "etcd to be started again",
        async || pid_of(&dir, "etcd").is_some_and(|pid| pid != etcd && alive(pid)),
    )
    .await;
    wait_ready_state(&bed.cps(), "solo", "True", Some("Available"), READY_TIMEOUT).await;
    let (acknowledged, lost) = writes.finish("writes after the restart", "etcd back").await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost (not even a GET finds them): {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    assert_eq!(
        tenant_processes(
            &bed.controller
                .state_dir
                .join("tenants")
                .canonicalize()
                .unwrap()
        )[&tenant_key(&cp)]["etcd"],
        1,
        "etcd duplicated"
    );
}

/// A tmpfs of a fixed size mounted for one test; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "the fault suite needs root and tmpfs: `mount -t tmpfs -o size={size} tmpfs {}` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Writes a file until the disk is full; its path.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let data = vec![0xa5u8; chunk];
            loop {
                match file.write(&data) {
                    Ok(n) if n > 0 => {}
                    Err(e) if e.kind() != std::io::ErrorKind::StorageFull => {
                        panic!("filling {}: {e}", path.display())
                    }
                    _ => break,
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Processes killed a moment ago may still hold it; a lazy unmount as the last resort.
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_is_reported_on_the_controlplane_and_freeing_space_recovers() {
    let postgres = Postgres::start().await;
    let host = host_with_crds().await;
    // Declared before the controller: dropped (unmounted) after it and its tenants are killed.
    let state = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&state.path().join("tenants"), "64m");
    let mut controller = ControllerProcess::start(
        &host,
        state.path(),
        Some(postgres.admin_dsn()),
        &[HEALTH_CHECK],
    );
    let cps = Api::<ControlPlane>::all(host.client());
    apply(&host, &controlplane_yaml("roomy", ""));
    let roomy = wait_ready_state(&cps, "roomy", "True", Some("Available"), READY_TIMEOUT).await;
    let roomy_dir = disk.path.join(tenant_key(&roomy));
    let roomy_apiserver = pid_of(&roomy_dir, "kube-apiserver").unwrap();

    let ballast = disk.fill();
    apply(&host, &controlplane_yaml("cramped", ""));
    let cp = wait_ready_state(
        &cps,
        "cramped",
        "False",
        Some("StateDirFull"),
        Duration::from_secs(60),
    )
    .await;
    let (_, _, message) = condition(&cp, "Ready").unwrap();
    let cramped_dir = disk.path.join(tenant_key(&cp));
    assert!(
        message.contains("No space left on device")
            && message.contains(&cramped_dir.display().to_string()),
        "{message}"
    );
    let events = host.run_kubectl(&[
        "get",
        "events",
        "-A",
        "--field-selector=reason=StateDirFull,involvedObject.name=cramped",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.success() && events.combined().contains("No space left on device"),
        "no StateDirFull Event: {}",
        events.combined()
    );
    eprintln!("faults: disk full: Ready=False StateDirFull: {message}");

    // No crash loop, and a restarted controller adopts the running tenant without writing.
    assert!(
        controller.is_running(),
        "the controller exited on a full disk"
    );
    controller.restart();
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(8) {
        let roomy = cps.get("roomy").await.unwrap();
        assert!(
            is_ready(&roomy),
            "roomy lost Ready on a full disk: {:?}",
            condition(&roomy, "Ready")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        pid_of(&roomy_dir, "kube-apiserver"),
        Some(roomy_apiserver),
        "roomy's API server was restarted"
    );
    assert!(alive(roomy_apiserver));
    wait_ready_state(
        &cps,
        "cramped",
        "False",
        Some("StateDirFull"),
        Duration::from_secs(60),
    )
    .await;

    // Space freed: the next retry brings the tenant up.
    std::fs::remove_file(&ballast).unwrap();
    wait_ready_state(&cps, "cramped", "True", Some("Available"), READY_TIMEOUT).await;
    assert!(controller.is_running());
    let census = tenant_processes(&disk.path.canonicalize().unwrap());
    for cp in [&roomy, &cps.get("cramped").await.unwrap()] {
        let counts = &census[&tenant_key(cp)];
        for program in KINE_TENANT {
            assert_eq!(counts.get(program), Some(&1), "{program}: {census:?}");
        }
    }
}
