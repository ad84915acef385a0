//! End to end: ControlPlanes applied with kubectl to a real host API server become real tenant
//! control planes (kube-apiserver + kube-controller-manager + Kine) that plain kubectl uses,
//! backed by the shared Postgres, run by the `hostplane controller` binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{Binaries, KubeApiserver, Postgres, start_apiserver_on_etcd};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;

const READY_TIMEOUT: Duration = Duration::from_secs(240);

struct Bed {
    host: KubeApiserver,
    postgres: Postgres,
    controller: ControllerProcess,
    _tmp: tempfile::TempDir,
}

impl Bed {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        let postgres = Postgres::start().await;
        let host = start_apiserver_on_etcd().await;
        hostplane_controller::embedded::install_crds(&host.client())
            .await
            .expect("CRDs install");
        let tmp = tempfile::tempdir().unwrap();
        let controller =
            ControllerProcess::start(&host, tmp.path(), Some(postgres.admin_dsn()), extra_env);
        Self {
            host,
            postgres,
            controller,
            _tmp: tmp,
        }
    }

    fn cps(&self) -> Api<ControlPlane> {
        Api::all(self.host.client())
    }

    fn apply(&self, yaml: &str) {
        let (ok, out) = self.host_kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply failed: {out}");
    }

    fn host_kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let out = match stdin {
            Some(input) => self.host.run_kubectl_with_stdin(args, input),
            None => self.host.run_kubectl(args),
        };
        (out.success(), out.combined())
    }

    async fn create(&self, name: &str, extra_spec: &str) -> ControlPlane {
        self.apply(&format!("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {name}\nspec:\n  type: k8s\n{extra_spec}"));
        wait_ready_state(&self.cps(), name, "True", Some("Available"), READY_TIMEOUT).await
    }

    /// The handed-out kubeconfig, written to a file as a user would.
    async fn kubeconfig(&self, name: &str) -> (PathBuf, String) {
        let secret = Api::<Secret>::namespaced(self.host.client(), &format!("{name}-system"))
            .get("admin-kubeconfig")
            .await
            .unwrap();
        let text = String::from_utf8(secret.data.unwrap()["kubeconfig"].0.clone()).unwrap();
        let path = self.controller.state_dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, &text).unwrap();
        (path, text)
    }

    fn tenant_dir(&self, cp: &ControlPlane) -> PathBuf {
        let uid = cp.metadata.uid.clone().unwrap();
        self.controller.state_dir.join("tenants").join(format!(
            "{}-{}",
            cp.metadata.name.clone().unwrap(),
            uid.split('-').next().unwrap()
        ))
    }

    /// A connection to one database as the Postgres superuser (for checks only).
    async fn db(&self, database: &str) -> tokio_postgres::Client {
        connect(
            &self
                .postgres
                .admin_dsn()
                .replace("dbname=postgres", &format!("dbname={database}")),
        )
        .await
        .unwrap()
    }
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn kubectl() -> &'static Path {
    &Binaries::get().kubectl
}

fn pid_of(dir: &Path, process: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{process}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// Processes on this machine whose command line mentions `needle` (duplicates show up here).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn tenant_on_shared_postgres_serves_kubectl_survives_kills_and_is_torn_down() {
    let bed = Bed::start(&[]).await;
    let cp = bed.create("alpha", "").await;
    let status = cp.status.clone().unwrap();
    assert_eq!(
        status.version.as_deref(),
        Some(Binaries::get().kube_version.as_str())
    );
    assert_eq!(status.observed_generation, cp.metadata.generation.unwrap());
    let secret_ref = status.secret_ref.clone().unwrap();
    assert_eq!(
        (
            secret_ref.name.as_str(),
            secret_ref.namespace.as_str(),
            secret_ref.key.as_str(),
            secret_ref.in_cluster_key.as_str()
        ),
        (
            "admin-kubeconfig",
            "alpha-system",
            "kubeconfig",
            "kubeconfig-incluster"
        )
    );
    let datastore = status.datastore.clone().unwrap();
    let database = datastore.database.clone().unwrap();
    assert_eq!(
        (datastore.kind.as_str(), datastore.role.as_deref()),
        ("postgres", Some(database.as_str()))
    );
    let (ok, out) = bed.host_kubectl(&["get", "cp", "alpha"], None);
    assert!(
        ok && out
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(5)
            .eq(["alpha", "k8s", "shared", "1.37.2", "True"]),
        "{out}"
    );

    // Plain kubectl with the handed-out kubeconfig.
    let (kubeconfig, text) = bed.kubeconfig("alpha").await;
    let claims = jwt_claims(&kubeconfig_token(&text));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7200,
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["name"],
        "hostplane-admin"
    );
    let (ok, out) = kubectl_with(kubectl(), &kubeconfig, &["get", "ns"]);
    assert!(ok && out.contains("kube-system"), "{out}");
    let (ok, out) = kubectl_with(kubectl(), &kubeconfig, &["create", "namespace", "team-a"]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl_with(
        kubectl(),
        &kubeconfig,
        &[
            "-n",
            "team-a",
            "create",
            "configmap",
            "greeting",
            "--from-literal=hello=world",
        ],
    );
    assert!(ok, "{out}");

    // The rows are in the tenant's own database, written by the tenant's own role.
    let db = bed.db(&database).await;
    let rows = db
        .query(
            "SELECT name FROM kine WHERE name = '/registry/configmaps/team-a/greeting'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let role = bed.db("postgres").await.query_one("SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1", &[&database]).await.unwrap();
    assert_eq!(
        (
            role.get::<_, bool>(0),
            role.get::<_, bool>(1),
            role.get::<_, bool>(2),
            role.get::<_, bool>(3)
        ),
        (false, false, false, true)
    );
    let owner: String = db
        .query_one(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, database);

    // Kill the tenant's kube-apiserver and Kine: the runtime brings them back, data intact.
    let dir = bed.tenant_dir(&cp);
    let (api_pid, kine_pid) = (
        pid_of(&dir, "kube-apiserver").unwrap(),
        pid_of(&dir, "kine").unwrap(),
    );
    for pid in [api_pid, kine_pid] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_for(
        "restarted tenant processes",
        Duration::from_secs(60),
        || {
            pid_of(&dir, "kube-apiserver").is_some_and(|p| p != api_pid && alive(p))
                && pid_of(&dir, "kine").is_some_and(|p| p != kine_pid && alive(p))
        },
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, out) = kubectl_with(
            kubectl(),
            &kubeconfig,
            &[
                "-n",
                "team-a",
                "get",
                "configmap",
                "greeting",
                "-o",
                "jsonpath={.data.hello}",
            ],
        );
        if ok {
            assert_eq!(out, "world");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tenant did not come back: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Delete: processes, state dir, database, role and namespace are gone.
    let tenant_pids: Vec<i32> = ["kine", "kube-apiserver", "kube-controller-manager"]
        .iter()
        .filter_map(|p| pid_of(&dir, p))
        .collect();
    assert_eq!(tenant_pids.len(), 3);
    let (ok, out) = bed.host_kubectl(&["delete", "cp", "alpha", "--timeout=120s"], None);
    assert!(ok, "{out}");
    assert!(
        tenant_pids.iter().all(|p| !alive(*p)),
        "tenant processes still running"
    );
    assert!(!dir.exists(), "state dir {} still exists", dir.display());
    let admin = bed.db("postgres").await;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    let roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((left, roles), (0, 0));
    let ns = Api::<Namespace>::all(bed.host.client())
        .get_opt("alpha-system")
        .await
        .unwrap();
    assert!(
        ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace alpha-system is not being deleted"
    );
}

#[tokio::test]
async fn two_tenants_cannot_reach_each_other() {
    let bed = Bed::start(&[]).await;
    let a = bed.create("tenant-a", "").await;
    let b = bed.create("tenant-b", "").await;
    let db_a = a.status.unwrap().datastore.unwrap().database.unwrap();
    let db_b = b.status.unwrap().datastore.unwrap().database.unwrap();

    // Tenant A's role, with its real password, cannot connect to B's database.
    let secret = Api::<Secret>::namespaced(bed.host.client(), "tenant-a-system")
        .get("datastore")
        .await
        .unwrap();
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    let port = bed.postgres.port();
    let own = connect(&format!(
        "host=127.0.0.1 port={port} user={db_a} password={password} dbname={db_a}"
    ))
    .await;
    assert!(
        own.is_ok(),
        "A cannot reach its own database: {:?}",
        own.err()
    );
    let err = connect(&format!(
        "host=127.0.0.1 port={port} user={db_a} password={password} dbname={db_b}"
    ))
    .await
    .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(
        message.starts_with("permission denied for database"),
        "{message}"
    );

    // A's token is rejected by B's API server: 401, which kubectl words as below.
    let (_, text_a) = bed.kubeconfig("tenant-a").await;
    let (_, text_b) = bed.kubeconfig("tenant-b").await;
    let forged = text_b.replace(&kubeconfig_token(&text_b), &kubeconfig_token(&text_a));
    let path = bed.controller.state_dir.join("forged.kubeconfig");
    std::fs::write(&path, forged).unwrap();
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns"]);
    assert!(
        !ok && out.contains("the server has asked for the client to provide credentials"),
        "B accepted A's token: {out}"
    );
}

#[tokio::test]
async fn handed_out_tokens_expire_and_are_renewed() {
    // Renew after 2% of a 600 s life (12 s) instead of 80%, to see a renewal within the test.
    let bed = Bed::start(&[("HOSTPLANE_TOKEN_RENEW_FRACTION", "0.02")]).await;
    bed.create("short", "  tokenExpirationSeconds: 600\n").await;
    let (_, first) = bed.kubeconfig("short").await;
    let first_token = kubeconfig_token(&first);
    let claims = jwt_claims(&first_token);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600,
        "{claims}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let renewed = loop {
        let (_, text) = bed.kubeconfig("short").await;
        if kubeconfig_token(&text) != first_token {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "token was not renewed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let new_claims = jwt_claims(&kubeconfig_token(&renewed));
    assert!(new_claims["iat"].as_i64() > claims["iat"].as_i64());
    assert_eq!(
        new_claims["exp"].as_i64().unwrap() - new_claims["iat"].as_i64().unwrap(),
        600
    );
    let (path, _) = bed.kubeconfig("short").await;
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "default"]);
    assert!(ok, "renewed token does not work: {out}");
}

#[tokio::test]
async fn controller_killed_while_provisioning_converges_without_duplicates() {
    let mut bed = Bed::start(&[]).await;
    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: crashy\nspec:\n  type: k8s\n");
    let api = bed.cps();
    let mut first_ca: Option<Vec<u8>> = None;
    // Crash at several points of the first provisioning: before and after the database, the
    // certificates and the processes exist.
    for delay_ms in [300u64, 1200, 2500, 4000, 6000] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if first_ca.is_none()
            && let Ok(Some(s)) = Api::<Secret>::namespaced(bed.host.client(), "crashy-system")
                .get_opt("k8s-certs")
                .await
        {
            first_ca = Some(s.data.unwrap()["ca.crt"].0.clone());
        }
        bed.controller.restart();
    }
    let cp = wait_ready_state(&api, "crashy", "True", Some("Available"), READY_TIMEOUT).await;
    let dir = bed.tenant_dir(&cp);
    // One set of processes, one database, and the CA first stored is the one in use.
    for process in ["kube-apiserver", "kube-controller-manager"] {
        let running: Vec<i32> = processes_mentioning(&dir.display().to_string())
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(process))
            })
            .collect();
        assert_eq!(running.len(), 1, "{process} runs {} times", running.len());
    }
    let kine_port = std::fs::read_to_string(dir.join("ports.json")).unwrap();
    let kine_port: serde_json::Value = serde_json::from_str(&kine_port).unwrap();
    assert_eq!(
        processes_mentioning(&format!("--listen-address=127.0.0.1:{}", kine_port["kine"])).len(),
        1,
        "kine duplicated"
    );
    let dbs: i64 = bed
        .db("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'hp_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dbs, 1);
    let ca_now = Api::<Secret>::namespaced(bed.host.client(), "crashy-system")
        .get("k8s-certs")
        .await
        .unwrap()
        .data
        .unwrap()["ca.crt"]
        .0
        .clone();
    if let Some(first) = first_ca {
        assert_eq!(first, ca_now, "the CA changed across controller restarts");
    }
    assert_eq!(
        std::fs::read(dir.join("pki/ca.crt")).unwrap(),
        ca_now,
        "processes do not use the stored CA"
    );
    let (path, _) = bed.kubeconfig("crashy").await;
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "default"]);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn postgres_outage_makes_tenants_unavailable_then_they_recover_intact() {
    let mut bed = Bed::start(&[("HOSTPLANE_HEALTH_CHECK_SECONDS", "3")]).await;
    bed.create("steady", "").await;
    let (path, _) = bed.kubeconfig("steady").await;
    let (ok, out) = kubectl_with(
        kubectl(),
        &path,
        &["create", "configmap", "before-outage", "--from-literal=k=v"],
    );
    assert!(ok, "{out}");

    bed.postgres.stop();
    let cp = wait_ready_state(
        &bed.cps(),
        "steady",
        "False",
        None,
        Duration::from_secs(120),
    )
    .await;
    let (_, reason, message) = condition(&cp, "Ready").unwrap();
    assert!(
        (reason == "Unavailable" && message.contains("not ready"))
            || reason == "DatastoreUnavailable",
        "unclear reason while Postgres is down: {reason}: {message}"
    );

    bed.postgres.start_again().await;
    wait_ready_state(
        &bed.cps(),
        "steady",
        "True",
        Some("Available"),
        READY_TIMEOUT,
    )
    .await;
    let (ok, out) = kubectl_with(
        kubectl(),
        &path,
        &[
            "get",
            "configmap",
            "before-outage",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert!(ok && out == "v", "data lost across the outage: {out}");
}

#[tokio::test]
async fn unsatisfiable_specs_get_a_reason_and_recover_when_fixed() {
    let bed = Bed::start(&[]).await;
    let api = bed.cps();
    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: vc\nspec:\n  type: vcluster\n");
    let cp = wait_ready_state(
        &api,
        "vc",
        "False",
        Some("UnsupportedType"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        condition(&cp, "Ready").unwrap().2,
        "type vcluster is not supported yet; supported types: k8s, host, external"
    );

    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: old\nspec:\n  version: \"1.20\"\n");
    let cp = wait_ready_state(
        &api,
        "old",
        "False",
        Some("UnknownVersion"),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        condition(&cp, "Ready")
            .unwrap()
            .2
            .starts_with("Kubernetes version 1.20 is not available on this host; available: ")
    );

    // backend external naming a Secret that does not exist yet.
    bed.apply("apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: byo\nspec:\n  backend: external\n  datastoreSecretRef:\n    name: byo-db\n    namespace: default\n");
    let cp = wait_ready_state(
        &api,
        "byo",
        "False",
        Some("DatastoreSecretInvalid"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        condition(&cp, "Ready").unwrap().2,
        "Secret default/byo-db named by datastoreSecretRef does not exist"
    );
    let (ok, out) = bed.host_kubectl(&["describe", "cp", "byo"], None);
    assert!(
        ok && out.contains("DatastoreSecretInvalid"),
        "no Event for the missing Secret: {out}"
    );

    // The user provides the database and the Secret: the tenant comes up on it.
    let admin = bed.db("postgres").await;
    for statement in [
        "CREATE ROLE byo LOGIN PASSWORD 'byo-pass'",
        "CREATE DATABASE byo OWNER byo",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    let dsn = format!(
        "postgres://byo:byo-pass@127.0.0.1:{}/byo?sslmode=disable",
        bed.postgres.port()
    );
    let (ok, out) = bed.host_kubectl(
        &[
            "-n",
            "default",
            "create",
            "secret",
            "generic",
            "byo-db",
            &format!("--from-literal=dsn={dsn}"),
        ],
        None,
    );
    assert!(ok, "{out}");
    let cp = wait_ready_state(&api, "byo", "True", Some("Available"), READY_TIMEOUT).await;
    assert_eq!(cp.status.unwrap().datastore.unwrap().kind, "external");

    // Deleting it never drops the user's database.
    let (ok, out) = bed.host_kubectl(&["delete", "cp", "byo", "--timeout=120s"], None);
    assert!(ok, "{out}");
    let kept: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'byo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
}

#[tokio::test]
async fn teardown_interrupted_by_a_controller_crash_resumes() {
    let mut bed = Bed::start(&[]).await;
    let cp = bed.create("doomed", "").await;
    let database = cp
        .status
        .clone()
        .unwrap()
        .datastore
        .unwrap()
        .database
        .unwrap();
    let dir = bed.tenant_dir(&cp);
    let (ok, out) = bed.host_kubectl(&["delete", "cp", "doomed", "--wait=false"], None);
    assert!(ok, "{out}");
    // Crash in the middle of the teardown, then start again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    bed.controller.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while bed.cps().get_opt("doomed").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "doomed was never torn down"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!dir.exists(), "state dir left behind");
    assert!(
        processes_mentioning(&dir.display().to_string()).is_empty(),
        "tenant processes left behind"
    );
    let admin = bed.db("postgres").await;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "database left behind");
}

/// The CLI as a person uses it: create, list, kubeconfig, delete.
#[tokio::test]
async fn cli_creates_lists_hands_out_kubeconfigs_and_deletes() {
    let bed = Bed::start(&[]).await;
    let hostplane = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane"));
        cmd.args(args).env("KUBECONFIG", bed.host.kubeconfig_path());
        hostplane_tests::run_command(cmd, None)
    };
    let out = hostplane(&["create", "cli-made", "--token-expiration-seconds", "900"]);
    assert!(out.success(), "{}", out.combined());
    assert!(
        out.stderr.contains("cli-made is Ready"),
        "no progress output: {}",
        out.stderr
    );

    let out = hostplane(&["list"]);
    let row: Vec<String> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("cli-made"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        &row[..6],
        ["cli-made", "k8s", "shared", "1.37.2", "True", "Available"],
        "{}",
        out.stdout
    );
    assert!(row[6].starts_with("https://127.0.0.1:"));

    let file = bed.controller.state_dir.join("cli-made.kubeconfig");
    let out = hostplane(&["kubeconfig", "cli-made", "-o", &file.display().to_string()]);
    assert!(out.success(), "{}", out.combined());
    let claims = jwt_claims(&kubeconfig_token(&std::fs::read_to_string(&file).unwrap()));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let (ok, ns) = kubectl_with(kubectl(), &file, &["get", "ns", "kube-system"]);
    assert!(ok, "{ns}");

    // --merge into a kubeconfig file that already has the host context.
    let merged = bed.controller.state_dir.join("merged.kubeconfig");
    std::fs::copy(bed.host.kubeconfig_path(), &merged).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane"));
    cmd.args(["kubeconfig", "cli-made", "--merge"])
        .env("KUBECONFIG", &merged);
    let out = hostplane_tests::run_command(cmd, None);
    assert!(out.success(), "{}", out.combined());
    let (ok, ns) = kubectl_with(
        kubectl(),
        &merged,
        &["--context", "cli-made", "get", "ns", "default"],
    );
    assert!(ok, "merged context does not work: {ns}");

    let out = hostplane(&["create", "nope", "--backend", "sideways"]);
    assert!(
        !out.success() && out.stderr.contains("unknown backend \"sideways\""),
        "{}",
        out.combined()
    );
    let out = hostplane(&["kubeconfig", "missing"]);
    assert!(
        !out.success() && out.stderr.contains("controlplane missing"),
        "{}",
        out.combined()
    );

    let out = hostplane(&["delete", "cli-made"]);
    assert!(
        out.success() && out.stderr.contains("controlplane cli-made deleted"),
        "{}",
        out.combined()
    );
}

/// Tenants through one SNI-routed port: the handed-out kubeconfig points at `hostplane proxy`
/// and names its tenant by TLS server name; TLS is passed through to the tenant API server.
#[tokio::test]
async fn kubectl_reaches_tenants_through_the_sni_proxy() {
    let port = hostplane_tests::free_port();
    let address = format!("127.0.0.1:{port}");
    let bed = Bed::start(&[
        ("HOSTPLANE_PROXY_ADDRESS", &address),
        ("HOSTPLANE_TENANT_DOMAIN", "tenants.test"),
    ])
    .await;
    let log = std::fs::File::create(bed.controller.state_dir.join("proxy.log")).unwrap();
    let mut proxy = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane"))
        .args([
            "proxy",
            "--listen",
            &address,
            "--tenant-domain",
            "tenants.test",
            "--no-download",
        ])
        .env("KUBECONFIG", bed.host.kubeconfig_path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _proxy = KillOnDrop(&mut proxy);

    let cp = bed.create("via-proxy", "").await;
    let (path, text) = bed.kubeconfig("via-proxy").await;
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        config["clusters"][0]["cluster"]["server"],
        format!("https://{address}").as_str()
    );
    assert_eq!(
        config["clusters"][0]["cluster"]["tls-server-name"],
        "via-proxy.tenants.test"
    );
    let secret = Api::<Secret>::namespaced(bed.host.client(), "via-proxy-system")
        .get("admin-kubeconfig")
        .await
        .unwrap();
    let incluster =
        String::from_utf8(secret.data.unwrap()["kubeconfig-incluster"].0.clone()).unwrap();
    assert!(
        incluster.contains(cp.status.unwrap().endpoint.as_deref().unwrap()),
        "in-cluster kubeconfig should dial the tenant directly"
    );

    // The route appears once the tenant has an endpoint; kubectl then works through the proxy.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "kube-system"]);
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl through the proxy failed: {out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A name the proxy does not know is closed, never routed elsewhere.
    let stranger = bed.controller.state_dir.join("stranger.kubeconfig");
    std::fs::write(
        &stranger,
        text.replace("via-proxy.tenants.test", "nobody.tenants.test"),
    )
    .unwrap();
    let (ok, out) = kubectl_with(kubectl(), &stranger, &["get", "ns"]);
    assert!(!ok, "an unknown tenant name was served: {out}");

    // A second tenant behind the same port: each name reaches its own API server.
    bed.create("via-proxy-b", "").await;
    let (path_b, text_b) = bed.kubeconfig("via-proxy-b").await;
    assert!(text_b.contains(&format!("https://{address}")));
    let (ok, out) = kubectl_with(kubectl(), &path, &["create", "namespace", "only-in-a"]);
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = kubectl_with(kubectl(), &path_b, &["get", "ns", "-o", "name"]);
        if ok {
            assert!(
                !out.contains("only-in-a"),
                "tenant b sees tenant a's namespace: {out}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tenant b through the proxy: {out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Deleting a tenant removes its route; the other stays reachable.
    let (ok, out) = bed.host_kubectl(&["delete", "cp", "via-proxy", "--timeout=120s"], None);
    assert!(ok, "{out}");
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "--request-timeout=5s"]);
    assert!(!ok, "a deleted tenant is still reachable: {out}");
    let (ok, out) = kubectl_with(kubectl(), &path_b, &["get", "ns", "kube-system"]);
    assert!(ok, "the other tenant lost its route: {out}");
}

#[tokio::test]
async fn post_create_hooks_are_applied_tracked_and_repaired() {
    let bed = Bed::start(&[("HOSTPLANE_HEALTH_CHECK_SECONDS", "3")]).await;
    let api = bed.cps();
    // The ControlPlane names a hook that does not exist yet: the tenant is still Ready (hooks do
    // not hold it by default), and the hook is reported as failed with a reason.
    bed.apply(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: hooked\nspec:\n  globalVars:\n    team: blue\n  postCreateHooks:\n  - hookName: greeter\n    vars:\n      greeting: hi\n",
    );
    bed.apply(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: held\nspec:\n  waitForPostCreateHooks: true\n  postCreateHook: absent-hook\n",
    );
    wait_ready_state(&api, "hooked", "True", Some("Available"), READY_TIMEOUT).await;
    let held = wait_ready_state(
        &api,
        "held",
        "False",
        Some("WaitingForPostCreateHooks"),
        READY_TIMEOUT,
    )
    .await;
    assert_eq!(
        condition(&held, "Ready").unwrap().2,
        "waiting for post-create hooks: absent-hook (Failed)"
    );
    let cp = api.get("hooked").await.unwrap();
    let status = cp.status.unwrap();
    assert_eq!(
        status.hook_statuses[0].message,
        "PostCreateHook greeter not found"
    );
    assert!(!status.post_create_hook_completed);
    let (_, out) = bed.host_kubectl(&["describe", "cp", "hooked"], None);
    assert!(
        out.contains("HookNotFound"),
        "no Event for the missing hook: {out}"
    );

    // The hook appears: its objects are rendered with defaultVars < globalVars < vars < built-ins.
    bed.apply(
        r#"apiVersion: tenancy.hostplane.io/v1alpha1
kind: PostCreateHook
metadata:
  name: greeter
spec:
  defaultVars:
  - name: greeting
    value: hello
  - name: level
    value: low
  templates:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: "{{.ControlPlaneName}}-greeting"
    data:
      greeting: "{{.greeting}}"
      team: "{{.team}}"
      level: "{{.level}}"
      namespace: "{{.Namespace}}"
      hook: "{{.HookName}}"
"#,
    );
    let configmaps = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
        bed.host.client(),
        "hooked-system",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let cm = loop {
        if let Some(cm) = configmaps.get_opt("hooked-greeting").await.unwrap() {
            break cm;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hook's ConfigMap never appeared"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let data = cm.data.unwrap();
    let expected: std::collections::BTreeMap<String, String> = [
        ("greeting", "hi"),
        ("team", "blue"),
        ("level", "low"),
        ("namespace", "hooked-system"),
        ("hook", "greeter"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(data, expected);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.get("hooked").await.unwrap().status.unwrap();
        if status.post_create_hook_completed {
            assert_eq!(status.post_create_hooks.get("greeter"), Some(&true));
            // No Jobs: done once applied.
            assert_eq!(
                status.hook_statuses[0].phase,
                hostplane_crds::HookPhase::Succeeded
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hook status never became Succeeded: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Drift: a deleted hook object comes back.
    let (ok, out) = bed.host_kubectl(
        &[
            "-n",
            "hooked-system",
            "delete",
            "configmap",
            "hooked-greeting",
        ],
        None,
    );
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while configmaps
        .get_opt("hooked-greeting")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted hook object was not re-applied"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `hostplane proxy` as a subprocess, killed on drop; its log goes to the controller's state dir.
struct ProxyProcess(std::process::Child);

impl ProxyProcess {
    fn start(bed: &Bed, address: &str, extra_args: &[&str]) -> Self {
        let log = std::fs::File::create(bed.controller.state_dir.join("proxy.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane"))
            .args([
                "proxy",
                "--listen",
                address,
                "--tenant-domain",
                "tenants.test",
                "--no-download",
            ])
            .args(extra_args)
            .env("KUBECONFIG", bed.host.kubeconfig_path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of a process in KiB (0 when it is gone).
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Idle tenants hibernate (processes gone, memory freed, data kept); the first connection
/// through the proxy wakes them and is served; a paused tenant stays asleep.
#[tokio::test]
async fn idle_tenants_hibernate_and_wake_on_the_first_connection() {
    let port = hostplane_tests::free_port();
    let address = format!("127.0.0.1:{port}");
    let bed = Bed::start(&[
        ("HOSTPLANE_PROXY_ADDRESS", &address),
        ("HOSTPLANE_TENANT_DOMAIN", "tenants.test"),
    ])
    .await;
    let _proxy = ProxyProcess::start(&bed, &address, &["--activity-interval-seconds", "1"]);
    let api = bed.cps();
    let cp = bed
        .create("sleepy", "  hibernation:\n    idleAfterSeconds: 6\n")
        .await;
    let (path, _) = bed.kubeconfig("sleepy").await;
    let dir = bed.tenant_dir(&cp);

    // Traffic through the proxy keeps it awake: write data while it is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = kubectl_with(
            kubectl(),
            &path,
            &["create", "configmap", "keep", "--from-literal=k=v"],
        );
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pids: Vec<i32> = ["kube-apiserver", "kine", "kube-controller-manager"]
        .iter()
        .filter_map(|p| pid_of(&dir, p))
        .collect();
    assert_eq!(pids.len(), 3, "tenant processes should run");
    let rss: u64 = pids.iter().map(|p| rss_kib(*p)).sum();

    // No traffic for idleAfterSeconds: hibernated, processes gone.
    let hibernated = wait_ready_state(
        &api,
        "sleepy",
        "False",
        Some("Hibernated"),
        Duration::from_secs(60),
    )
    .await;
    assert!(hibernated.status.as_ref().unwrap().hibernated_at.is_some());
    wait_for(
        "the tenant processes to stop",
        Duration::from_secs(30),
        || pids.iter().all(|p| !alive(*p)),
    )
    .await;
    eprintln!("hibernation freed {} MiB of resident memory", rss / 1024);
    let (_, out) = bed.host_kubectl(&["describe", "cp", "sleepy"], None);
    assert!(out.contains("Hibernated"), "no Hibernated Event: {out}");

    // The first connection wakes it and is served; the data is intact.
    let started = std::time::Instant::now();
    let (ok, out) = kubectl_with(
        kubectl(),
        &path,
        &[
            "get",
            "configmap",
            "keep",
            "-o",
            "jsonpath={.data.k}",
            "--request-timeout=60s",
        ],
    );
    let wake = started.elapsed();
    assert!(
        ok,
        "kubectl through the proxy did not wake the tenant: {out}"
    );
    assert_eq!(out.trim(), "v");
    eprintln!(
        "wake-on-connect: first response after {} ms",
        wake.as_millis()
    );
    let awake = api.get("sleepy").await.unwrap();
    assert_eq!(condition(&awake, "Ready").unwrap().0, "True");
    assert!(awake.status.unwrap().hibernated_at.is_none());
    assert!(pid_of(&dir, "kube-apiserver").is_some_and(alive));

    // Paused: hibernated at once and connections are refused, not waking it.
    let (ok, out) = bed.host_kubectl(
        &[
            "patch",
            "cp",
            "sleepy",
            "--type=merge",
            "-p",
            r#"{"spec":{"hibernation":{"paused":true}}}"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    wait_ready_state(
        &api,
        "sleepy",
        "False",
        Some("Hibernated"),
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "--request-timeout=10s"]);
    assert!(!ok, "a paused tenant was served: {out}");
    let paused = api.get("sleepy").await.unwrap();
    assert_eq!(condition(&paused, "Ready").unwrap().1, "Hibernated");
    assert!(pid_of(&dir, "kube-apiserver").is_none_or(|p| !alive(p)));

    // Unpaused: the next connection wakes it again.
    let (ok, out) = bed.host_kubectl(
        &[
            "patch",
            "cp",
            "sleepy",
            "--type=merge",
            "-p",
            r#"{"spec":{"hibernation":{"paused":false}}}"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, out) = kubectl_with(
        kubectl(),
        &path,
        &["get", "configmap", "keep", "--request-timeout=60s"],
    );
    assert!(ok, "an unpaused tenant did not wake: {out}");
}

/// A hook's Jobs gate Ready under waitForPostCreateHooks; a hook dropped from the spec and the
/// tenant's deletion remove the hook's objects, cluster-scoped ones included.
#[tokio::test]
async fn hook_jobs_gate_ready_and_hook_objects_are_removed() {
    let bed = Bed::start(&[("HOSTPLANE_HEALTH_CHECK_SECONDS", "3")]).await;
    let api = bed.cps();
    bed.apply(
        r#"apiVersion: tenancy.hostplane.io/v1alpha1
kind: PostCreateHook
metadata:
  name: setup
spec:
  templates:
  - apiVersion: batch/v1
    kind: Job
    metadata:
      name: "{{.ControlPlaneName}}-setup"
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: setup
            image: busybox
            command: ["true"]
  - apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata:
      name: "{{.ControlPlaneName}}-reader"
    rules:
    - apiGroups: [""]
      resources: ["configmaps"]
      verbs: ["get"]
---
apiVersion: tenancy.hostplane.io/v1alpha1
kind: PostCreateHook
metadata:
  name: extra
spec:
  templates:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: extra
    data:
      a: b
---
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata:
  name: jobbed
spec:
  waitForPostCreateHooks: true
  postCreateHook: hello
  postCreateHooks:
  - hookName: setup
  - hookName: extra
"#,
    );
    // KubeFlex's documented example hook, as written there but for its apiVersion.
    let hello = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hooks/hello.yaml"),
    )
    .unwrap();
    bed.apply(&hello);
    // No kubelet runs the Jobs here: the tenant waits for them.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let status = loop {
        let cp = api.get("jobbed").await.unwrap();
        let message = condition(&cp, "Ready").map(|c| c.2).unwrap_or_default();
        if message == "waiting for post-create hooks: hello (Applied), setup (Applied)" {
            break cp.status.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{message}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status.post_create_hooks.get("hello"), Some(&true));
    assert_eq!(status.post_create_hooks.get("setup"), Some(&true));
    assert!(!status.post_create_hook_completed);
    assert!(
        status.hook_statuses[1]
            .message
            .contains("waiting for Jobs jobbed-setup")
    );

    // The Jobs succeed (as their controller would report it): Ready.
    for job in ["hello", "jobbed-setup"] {
        complete_job(&bed, "jobbed-system", job);
    }
    let ready = wait_ready_state(
        &api,
        "jobbed",
        "True",
        Some("Available"),
        Duration::from_secs(60),
    )
    .await;
    let status = ready.status.unwrap();
    assert!(status.post_create_hook_completed);
    assert!(
        status
            .hook_statuses
            .iter()
            .all(|h| h.phase == hostplane_crds::HookPhase::Succeeded)
    );
    assert_eq!(status.hook_statuses[1].objects.len(), 2);

    // A hook whose Job does not finish within its timeoutSeconds fails and holds Ready again.
    bed.apply(
        r#"apiVersion: tenancy.hostplane.io/v1alpha1
kind: PostCreateHook
metadata:
  name: slow
spec:
  timeoutSeconds: 3
  templates:
  - apiVersion: batch/v1
    kind: Job
    metadata:
      name: slow
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: slow
            image: busybox
            command: ["sleep", "3600"]
"#,
    );
    let (ok, out) = bed.host_kubectl(
        &[
            "patch",
            "cp",
            "jobbed",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/postCreateHooks/-","value":{"hookName":"slow"}}]"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cp = api.get("jobbed").await.unwrap();
        let slow = cp
            .status
            .as_ref()
            .and_then(|s| s.hook_statuses.iter().find(|h| h.name == "slow").cloned());
        if let Some(slow) = slow
            .as_ref()
            .filter(|h| h.phase == hostplane_crds::HookPhase::Failed)
        {
            assert_eq!(
                slow.message,
                "1 objects applied; waiting for Jobs slow; the Jobs did not complete within 3s"
            );
            assert_eq!(
                condition(&cp, "Ready").unwrap().1,
                "WaitingForPostCreateHooks"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow hook never timed out: {slow:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, out) = bed.host_kubectl(&["describe", "cp", "jobbed"], None);
    assert!(
        out.contains("HookTimedOut"),
        "no Event for the timeout: {out}"
    );
    let (ok, out) = bed.host_kubectl(
        &[
            "patch",
            "cp",
            "jobbed",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/postCreateHooks/2"}]"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    wait_ready_state(
        &api,
        "jobbed",
        "True",
        Some("Available"),
        Duration::from_secs(60),
    )
    .await;

    // A hook dropped from the spec: its objects go.
    let (ok, out) = bed.host_kubectl(
        &[
            "patch",
            "cp",
            "jobbed",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/postCreateHooks/1"}]"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let configmaps = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
        bed.host.client(),
        "jobbed-system",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while configmaps.get_opt("extra").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped hook's ConfigMap stayed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Deleting the tenant removes the cluster-scoped ClusterRole too.
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(bed.host.client());
    assert!(roles.get_opt("jobbed-reader").await.unwrap().is_some());
    let (ok, out) = bed.host_kubectl(&["delete", "cp", "jobbed", "--timeout=120s"], None);
    assert!(ok, "{out}");
    assert!(
        roles.get_opt("jobbed-reader").await.unwrap().is_none(),
        "cluster-scoped hook object leaked"
    );
}

/// The built-in kubevirt-nodes hook: one KubeVirt VirtualMachine per node whose cloud-init joins
/// the tenant with a live bootstrap token; the tenant runs kube-scheduler; scaling node_count
/// down removes the VM and the tenant's Node for it.
#[tokio::test]
async fn kubevirt_nodes_hook_makes_joinable_vms_and_scales_down() {
    let port = hostplane_tests::free_port();
    let address = format!("127.0.0.1:{port}");
    let bed = Bed::start(&[
        ("HOSTPLANE_PROXY_ADDRESS", &address),
        ("HOSTPLANE_TENANT_DOMAIN", "tenants.test"),
        ("HOSTPLANE_HEALTH_CHECK_SECONDS", "3"),
    ])
    .await;
    // The host has KubeVirt's VirtualMachine CRD, as KubeVirt installs it.
    let mut crd_command = std::process::Command::new(hostplane_tests::kubevirt_check());
    crd_command.arg("crd");
    let crd = hostplane_tests::run_command(crd_command, None);
    assert!(crd.success(), "{}", crd.combined());
    // Server-side: the CRD is too large for client-side apply's last-applied annotation.
    let (ok, out) = bed.host_kubectl(&["apply", "--server-side", "-f", "-"], Some(&crd.stdout));
    assert!(ok, "{out}");
    hostplane_controller::embedded::wait_kinds_served(
        &bed.host.client(),
        "kubevirt.io",
        &["VirtualMachine"],
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    bed.apply(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: workers\nspec:\n  postCreateHooks:\n  - hookName: kubevirt-nodes\n    vars:\n      node_count: \"2\"\n",
    );
    let cp = wait_ready_state(
        &bed.cps(),
        "workers",
        "True",
        Some("Available"),
        READY_TIMEOUT,
    )
    .await;
    let vms = kube::Api::<kube::api::DynamicObject>::namespaced_with(
        bed.host.client(),
        "workers-system",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
            "virtualmachines",
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let names = loop {
        let mut names: Vec<String> = vms
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|vm| vm.metadata.name.clone())
            .collect();
        names.sort();
        if names.len() == 2 {
            break names;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VMs never appeared: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(names, ["workers-node-0", "workers-node-1"]);

    // The cloud-init joins through the proxy name with a token that exists in the tenant.
    let vm = serde_json::to_string(&vms.get("workers-node-0").await.unwrap()).unwrap();
    let join = regex_lite_find(&vm, "kubeadm join ").expect("cloud-init runs kubeadm join");
    let words: Vec<&str> = join.split_whitespace().collect();
    assert_eq!(words[2], format!("workers.tenants.test:{port}"));
    assert_eq!(words[3], "--token");
    let token = words[4].trim_end_matches(['"', '\\', ',']);
    assert!(words[6].starts_with("sha256:"), "{join}");
    let (kubeconfig, _) = bed.kubeconfig("workers").await;
    // The admin kubeconfig goes through the proxy; talk to the tenant directly instead.
    let direct = bed.controller.state_dir.join("workers-direct.kubeconfig");
    let secret = Api::<Secret>::namespaced(bed.host.client(), "workers-system")
        .get("admin-kubeconfig")
        .await
        .unwrap();
    std::fs::write(&direct, &secret.data.unwrap()["kubeconfig-incluster"].0).unwrap();
    drop(kubeconfig);
    let token_id = token.split('.').next().unwrap();
    let (ok, out) = kubectl_with(
        kubectl(),
        &direct,
        &[
            "-n",
            "kube-system",
            "get",
            "secret",
            &format!("bootstrap-token-{token_id}"),
        ],
    );
    assert!(
        ok,
        "the bootstrap token in the VM does not exist in the tenant: {out}"
    );
    // A tenant with workers schedules pods.
    let dir = bed.tenant_dir(&cp);
    assert!(
        pid_of(&dir, "kube-scheduler").is_some_and(alive),
        "no kube-scheduler"
    );

    // A node joined as VM 1 (its Node object), then node_count goes down to 1.
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: workers-node-1\n";
    let mut apply = std::process::Command::new(kubectl());
    apply.args(["--kubeconfig", direct.to_str().unwrap(), "apply", "-f", "-"]);
    let out = hostplane_tests::run_command(apply, Some(node));
    assert!(out.success(), "{}", out.combined());
    let (ok, out) = bed.host_kubectl(
        &[
            "patch",
            "cp",
            "workers",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/postCreateHooks/0/vars/node_count","value":"1"}]"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let gone = vms.get_opt("workers-node-1").await.unwrap().is_none();
        let (_, nodes) = kubectl_with(kubectl(), &direct, &["get", "nodes", "-o", "name"]);
        if gone && !nodes.contains("workers-node-1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VM 1 or its Node stayed after scaling down (VM gone: {gone}; nodes: {nodes})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(vms.get_opt("workers-node-0").await.unwrap().is_some());
}

/// The text from `needle` to the end of its line (or JSON string).
fn regex_lite_find<'a>(haystack: &'a str, needle: &str) -> Option<&'a str> {
    let start = haystack.find(needle)?;
    let rest = &haystack[start..];
    let end = rest.find("\\n").unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Marks a Job complete through its status subresource, as the Job controller would.
fn complete_job(bed: &Bed, namespace: &str, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = format!(
        r#"{{"status":{{"startTime":"{now}","completionTime":"{now}","succeeded":1,"conditions":[{{"type":"SuccessCriteriaMet","status":"True","lastTransitionTime":"{now}"}},{{"type":"Complete","status":"True","lastTransitionTime":"{now}"}}]}}}}"#
    );
    let (ok, out) = bed.host_kubectl(
        &[
            "-n",
            namespace,
            "patch",
            "job",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
        None,
    );
    assert!(ok, "{out}");
}
