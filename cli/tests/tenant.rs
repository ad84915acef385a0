//! End to end: ControlPlanes applied with kubectl to a real host API server become real tenant
//! control planes (kube-apiserver + kube-controller-manager + Kine) that plain kubectl uses,
//! backed by the shared Postgres, run by the `hostplane controller` binary.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use hostplane_tests::{Binaries, KubeApiserver, Postgres, wait_until};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;

/// The shared Postgres, a host API server and the controller keeping its tenants on it.
struct Bed {
    bed: ControllerBed,
    /// Dropped after the controller and its tenants (fields drop in order).
    postgres: Postgres,
}

impl Bed {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        let postgres = Postgres::start().await;
        let bed = ControllerBed::with(Some(postgres.admin_dsn()), extra_env).await;
        Self { bed, postgres }
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

/// The host, the controller and their helpers, as in every other suite.
impl std::ops::Deref for Bed {
    type Target = ControllerBed;

    fn deref(&self) -> &ControllerBed {
        &self.bed
    }
}

impl std::ops::DerefMut for Bed {
    fn deref_mut(&mut self) -> &mut ControllerBed {
        &mut self.bed
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
    let (ok, out) = bed.kubectl(&["get", "cp", "alpha"], None);
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
    let (kubeconfig, text) = bed.tenant_kubeconfig("alpha").await;
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
    wait_until(
        Duration::from_secs(60),
        "restarted tenant processes",
        async || {
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
    let (ok, out) = bed.kubectl(&["delete", "cp", "alpha", "--timeout=120s"], None);
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
    let password = secret_text(
        &bed.host.client(),
        "tenant-a-system",
        "datastore",
        "password",
    )
    .await;
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
    let (_, text_a) = bed.tenant_kubeconfig("tenant-a").await;
    let (_, text_b) = bed.tenant_kubeconfig("tenant-b").await;
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
    let (_, first) = bed.tenant_kubeconfig("short").await;
    let first_token = kubeconfig_token(&first);
    let claims = jwt_claims(&first_token);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600,
        "{claims}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let renewed = loop {
        let (_, text) = bed.tenant_kubeconfig("short").await;
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
    let (path, _) = bed.tenant_kubeconfig("short").await;
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "default"]);
    assert!(ok, "renewed token does not work: {out}");
}

#[tokio::test]
async fn controller_killed_while_provisioning_converges_without_duplicates() {
    let mut bed = Bed::start(&[]).await;
    bed.apply_cp("crashy", "");
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
    let ca_now = secret_text(&bed.host.client(), "crashy-system", "k8s-certs", "ca.crt")
        .await
        .into_bytes();
    if let Some(first) = first_ca {
        assert_eq!(first, ca_now, "the CA changed across controller restarts");
    }
    assert_eq!(
        std::fs::read(dir.join("pki/ca.crt")).unwrap(),
        ca_now,
        "processes do not use the stored CA"
    );
    let (path, _) = bed.tenant_kubeconfig("crashy").await;
    let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "default"]);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn postgres_outage_makes_tenants_unavailable_then_they_recover_intact() {
    let mut bed = Bed::start(&[("HOSTPLANE_HEALTH_CHECK_SECONDS", "3")]).await;
    bed.create("steady", "").await;
    let (path, _) = bed.tenant_kubeconfig("steady").await;
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
    bed.available("steady").await;
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
    let (ok, out) = bed.kubectl(&["describe", "cp", "byo"], None);
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
    let (ok, out) = bed.kubectl(
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
    let (ok, out) = bed.kubectl(&["delete", "cp", "byo", "--timeout=120s"], None);
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
    let (ok, out) = bed.kubectl(&["delete", "cp", "doomed", "--wait=false"], None);
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
    let metrics_port = hostplane_tests::free_port();
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    // One series' value on the proxy's /metrics (0 before it is first counted).
    let scrape = async |series: &str| {
        metric_value(&scrape_metrics(metrics_port).await, series).unwrap_or(0.0)
    };
    let unknown_name = r#"hostplane_proxy_connections_total{tenant="unknown",result="rejected",reason="unknown_server_name"}"#;
    let bed = Bed::start(&[
        ("HOSTPLANE_PROXY_ADDRESS", &address),
        ("HOSTPLANE_TENANT_DOMAIN", "tenants.test"),
    ])
    .await;
    let _proxy = sni_proxy(&bed, &address, &["--metrics-listen", &metrics_address]);

    let cp = bed.create("via-proxy", "").await;
    let (path, text) = bed.tenant_kubeconfig("via-proxy").await;
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        config["clusters"][0]["cluster"]["server"],
        format!("https://{address}").as_str()
    );
    assert_eq!(
        config["clusters"][0]["cluster"]["tls-server-name"],
        "via-proxy.tenants.test"
    );
    let incluster =
        handed_out_kubeconfig(&bed.host.client(), "via-proxy", "kubeconfig-incluster").await;
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

    let routed_a =
        r#"hostplane_proxy_connections_total{tenant="via-proxy",result="routed",reason="ok"}"#;
    assert!(
        scrape(routed_a).await > 0.0,
        "kubectl's connections not counted for its tenant"
    );

    // A name the proxy does not know is closed, never routed elsewhere, and counted as unknown.
    let stranger = bed.controller.state_dir.join("stranger.kubeconfig");
    std::fs::write(
        &stranger,
        text.replace("via-proxy.tenants.test", "nobody.tenants.test"),
    )
    .unwrap();
    let unknown_before = scrape(unknown_name).await;
    let (ok, out) = kubectl_with(kubectl(), &stranger, &["get", "ns"]);
    assert!(!ok, "an unknown tenant name was served: {out}");
    assert!(
        scrape(unknown_name).await > unknown_before,
        "the wrong server name was not counted as unknown"
    );
    // Names that clients make up never become label values.
    let exposed = scrape_metrics(metrics_port).await;
    assert!(!exposed.contains("nobody"), "{exposed}");

    // A second tenant behind the same port: each name reaches its own API server.
    bed.create("via-proxy-b", "").await;
    let (path_b, text_b) = bed.tenant_kubeconfig("via-proxy-b").await;
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
    let (ok, out) = bed.kubectl(&["delete", "cp", "via-proxy", "--timeout=120s"], None);
    assert!(ok, "{out}");
    // Refused as a name without a route (not merely a route to a stopped backend, which would
    // count as backend_connect), once the proxy's watch has seen the deletion.
    let unknown_before = scrape(unknown_name).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = kubectl_with(kubectl(), &path, &["get", "ns", "--request-timeout=5s"]);
        assert!(!ok, "a deleted tenant is still reachable: {out}");
        if scrape(unknown_name).await > unknown_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted tenant's route was not removed: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, out) = kubectl_with(kubectl(), &path_b, &["get", "ns", "kube-system"]);
    assert!(ok, "the other tenant lost its route: {out}");
}

#[tokio::test]
async fn post_create_hooks_are_applied_tracked_and_repaired() {
    let bed = Bed::start(&[("HOSTPLANE_HEALTH_CHECK_SECONDS", "3")]).await;
    let api = bed.cps();
    // The ControlPlane names a hook that does not exist yet: the tenant is still Ready (hooks do
    // not hold it by default), and the hook is reported as failed with a reason, then as Pending
    // until its retry.
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
    assert!(
        condition(&held, "Ready")
            .unwrap()
            .2
            .starts_with("waiting for post-create hooks: absent-hook ("),
        "{held:?}"
    );
    // Between retries the hook is Pending, saying when it is retried and why it failed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let cp = api.get("held").await.unwrap();
        let ready = condition(&cp, "Ready").unwrap().2;
        let hook = cp.status.and_then(|s| s.hook_statuses.first().cloned());
        if let Some(hook) = hook
            .as_ref()
            .filter(|h| h.phase == hostplane_crds::HookPhase::Pending)
            && ready == "waiting for post-create hooks: absent-hook (Pending)"
        {
            break hook.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hook never waited for its retry as Pending: {ready}; {hook:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        waiting.message.starts_with("waiting for retry ")
            && waiting
                .message
                .ends_with("; the last attempt failed: PostCreateHook absent-hook not found"),
        "{waiting:?}"
    );
    assert!(waiting.attempts >= 1, "{waiting:?}");
    let cp = api.get("hooked").await.unwrap();
    let status = cp.status.unwrap();
    assert!(
        status.hook_statuses[0]
            .message
            .ends_with("PostCreateHook greeter not found"),
        "{:?}",
        status.hook_statuses
    );
    assert_eq!(status.post_create_hooks.get("greeter"), Some(&false));
    assert!(!status.post_create_hook_completed);
    let (_, out) = bed.kubectl(&["describe", "cp", "hooked"], None);
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
    let (ok, out) = bed.kubectl(
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

/// A `hostplane proxy` on `address` for the bed's tenants under `tenants.test` (no download
/// endpoint), stopped when dropped; its log goes to the controller's state dir.
fn sni_proxy(bed: &ControllerBed, address: &str, extra_args: &[&str]) -> ProxyProcess {
    let mut args = vec![
        "--listen",
        address,
        "--tenant-domain",
        "tenants.test",
        "--no-download",
    ];
    args.extend_from_slice(extra_args);
    ProxyProcess::start(&bed.host, bed.controller.state_dir.join("proxy.log"), &args)
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
    let _proxy = sni_proxy(&bed, &address, &["--activity-interval-seconds", "1"]);
    let api = bed.cps();
    let cp = bed
        .create("sleepy", "  hibernation:\n    idleAfterSeconds: 6\n")
        .await;
    let (path, _) = bed.tenant_kubeconfig("sleepy").await;
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
    assert!(rss > 0, "no resident memory read for {pids:?}");
    // Every tenant process runs in the tenant's state dir, recorded in a pid file or not.
    let tenant_dir = dir.canonicalize().unwrap();
    let running_in_tenant_dir = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == tenant_dir)
                    && alive(*pid)
            })
            .collect()
    };
    let running = running_in_tenant_dir();
    assert!(
        pids.iter().all(|p| running.contains(p)),
        "tenant processes {pids:?} should run in {}: {running:?}",
        tenant_dir.display()
    );

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
    wait_until(
        Duration::from_secs(30),
        "the tenant processes to stop",
        async || pids.iter().all(|p| !alive(*p)),
    )
    .await;
    // Memory freed: nothing of the tenant is left resident, recorded or not, and no pid file
    // is left for a later controller to adopt.
    let rss_left: Vec<(i32, u64)> = pids.iter().map(|p| (*p, rss_kib(*p))).collect();
    assert!(
        rss_left.iter().all(|(_, kib)| *kib == 0),
        "hibernated tenant processes still resident (pid, KiB): {rss_left:?}"
    );
    let leftovers = running_in_tenant_dir();
    assert!(
        leftovers.is_empty(),
        "tenant processes still run after hibernation: {leftovers:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "the pid files to be removed",
        async || recorded_pids(&dir).is_empty(),
    )
    .await;
    eprintln!("hibernation freed {} MiB of resident memory", rss / 1024);
    let (_, out) = bed.kubectl(&["describe", "cp", "sleepy"], None);
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
    bed.patch_cp(
        "sleepy",
        "merge",
        r#"{"spec":{"hibernation":{"paused":true}}}"#,
    );
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
    bed.patch_cp(
        "sleepy",
        "merge",
        r#"{"spec":{"hibernation":{"paused":false}}}"#,
    );
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
    bed.patch_cp(
        "jobbed",
        "json",
        r#"[{"op":"add","path":"/spec/postCreateHooks/-","value":{"hookName":"slow"}}]"#,
    );
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
    let (_, out) = bed.kubectl(&["describe", "cp", "jobbed"], None);
    assert!(
        out.contains("HookTimedOut"),
        "no Event for the timeout: {out}"
    );
    bed.patch_cp(
        "jobbed",
        "json",
        r#"[{"op":"remove","path":"/spec/postCreateHooks/2"}]"#,
    );
    wait_ready_state(
        &api,
        "jobbed",
        "True",
        Some("Available"),
        Duration::from_secs(60),
    )
    .await;

    // A hook dropped from the spec: its objects go.
    bed.patch_cp(
        "jobbed",
        "json",
        r#"[{"op":"remove","path":"/spec/postCreateHooks/1"}]"#,
    );
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
    let (ok, out) = bed.kubectl(&["delete", "cp", "jobbed", "--timeout=120s"], None);
    assert!(ok, "{out}");
    assert!(
        roles.get_opt("jobbed-reader").await.unwrap().is_none(),
        "cluster-scoped hook object leaked"
    );
}

/// The built-in kubevirt-nodes hook: one KubeVirt VirtualMachine per node whose cloud-init joins
/// the tenant with a live bootstrap token — proven by a node client doing the TLS bootstrap with
/// exactly the VM's endpoint (through the SNI proxy), token and CA pin; the tenant runs
/// kube-scheduler. Scaling node_count up adds a VM with a live token; scaling down retires
/// Nodes in order: cordon, drain through the Eviction API (a PodDisruptionBudget holds a pod
/// until the drain timeout), delete the Node, then the VM — and a Node whose VM was deleted
/// behind the controller's back is still drained and removed.
#[tokio::test]
async fn kubevirt_nodes_hook_makes_joinable_vms_and_scales_up_and_down() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

    const DRAIN_TIMEOUT_SECONDS: u64 = 15;
    let port = hostplane_tests::free_port();
    let address = format!("127.0.0.1:{port}");
    let drain_timeout = DRAIN_TIMEOUT_SECONDS.to_string();
    let bed = ControllerBed::with(
        None,
        &[
            ("HOSTPLANE_PROXY_ADDRESS", &address),
            ("HOSTPLANE_TENANT_DOMAIN", "tenants.test"),
            ("HOSTPLANE_HEALTH_CHECK_SECONDS", "3"),
            ("HOSTPLANE_NODE_DRAIN_TIMEOUT_SECONDS", &drain_timeout),
        ],
    )
    .await;
    let _proxy = sni_proxy(&bed, &address, &[]);
    install_kubevirt_crd(&bed.host).await;

    let out = bed.host.run_kubectl_with_stdin(
        &["apply", "-f", "-"],
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: workers\nspec:\n  postCreateHooks:\n  - hookName: kubevirt-nodes\n    vars:\n      node_count: \"2\"\n",
    );
    assert!(out.success(), "{}", out.combined());
    let cps = bed.cps();
    let cp = wait_ready_state(&cps, "workers", "True", Some("Available"), READY_TIMEOUT).await;
    let vms = kube::Api::<kube::api::DynamicObject>::namespaced_with(
        bed.host.client(),
        "workers-system",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
            "virtualmachines",
        ),
    );
    wait_vm_names(&vms, &["workers-node-0", "workers-node-1"]).await;

    // What the VM's cloud-init runs: kubeadm join through the proxy name, with a token that
    // exists in the tenant and the tenant CA's pin.
    // A cluster-admin client straight to the tenant (the in-cluster kubeconfig, not the proxy).
    let tenant = tenant_client(&bed.host.client(), "workers", "kubeconfig-incluster").await;
    let tokens = Api::<Secret>::namespaced(tenant.clone(), "kube-system");
    let join0 = vm_join(&vms, "workers-node-0").await;
    assert_eq!(join0.endpoint, format!("workers.tenants.test:{port}"));
    assert_live_token(&tokens, &join0.token).await;
    // A tenant with workers schedules pods.
    let dir = bed.tenant_dir(&cp);
    assert!(
        pid_of(&dir, "kube-scheduler").is_some_and(alive),
        "no kube-scheduler"
    );

    // That join works: the node client does kubelet's TLS bootstrap with the VM's own
    // endpoint (resolved to the proxy, as the VM's DNS would), token and pin.
    let joined = join_as_vm(&join0, "workers-node-0").await;
    assert_eq!(
        joined.user.username.as_deref(),
        Some("system:node:workers-node-0")
    );
    let csr = &joined.csr.spec;
    let token_id = join0.token.split('.').next().unwrap();
    assert_eq!(
        csr.username.as_deref(),
        Some(format!("system:bootstrap:{token_id}").as_str())
    );
    let groups = csr.groups.clone().unwrap_or_default();
    assert!(
        groups.iter().any(|g| g == "system:bootstrappers"),
        "the CSR was not made as a bootstrap token: {groups:?}"
    );

    // Scale up 2 → 3: the new VM comes with a live token of its own cloud-init, and joins.
    patch_node_count(&bed, "3");
    wait_vm_names(
        &vms,
        &["workers-node-0", "workers-node-1", "workers-node-2"],
    )
    .await;
    let join2 = vm_join(&vms, "workers-node-2").await;
    assert_eq!(join2.endpoint, join0.endpoint);
    assert_eq!(join2.ca_cert_hash, join0.ca_cert_hash);
    assert_live_token(&tokens, &join2.token).await;
    let join1 = vm_join(&vms, "workers-node-1").await;
    let (node1, node2) = tokio::join!(
        join_as_vm(&join1, "workers-node-1"),
        join_as_vm(&join2, "workers-node-2")
    );
    assert_eq!(node1.node.metadata.name.as_deref(), Some("workers-node-1"));
    assert_eq!(node2.node.metadata.name.as_deref(), Some("workers-node-2"));

    // Workloads on the Nodes that will go: a plain pod on node 1; on node 2 a Running, Ready pod
    // whose PodDisruptionBudget allows no disruption.
    let pods = Api::<Pod>::namespaced(tenant.clone(), "default");
    let pod = |name: &str, node: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "app": name } },
            "spec": {
                "nodeName": node,
                "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }],
            },
        }))
        .unwrap()
    };
    let pp = PostParams::default();
    pods.create(&pp, &pod("plain", "workers-node-1"))
        .await
        .unwrap();
    pods.create(&pp, &pod("guarded", "workers-node-2"))
        .await
        .unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let running = serde_json::json!({ "status": {
        "phase": "Running",
        "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now }],
    }});
    pods.patch_status("guarded", &PatchParams::default(), &Patch::Merge(&running))
        .await
        .unwrap();
    let pdbs = Api::<PodDisruptionBudget>::namespaced(tenant.clone(), "default");
    let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "guarded" },
        "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "guarded" } } },
    }))
    .unwrap();
    pdbs.create(&pp, &pdb).await.unwrap();
    // The tenant's disruption controller counts the pod healthy: no disruption allowed.
    wait_until(
        Duration::from_secs(60),
        "the PodDisruptionBudget to count the guarded pod",
        async || {
            let status = pdbs
                .get("guarded")
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            status.current_healthy == Some(1) && status.disruptions_allowed.unwrap_or(0) == 0
        },
    )
    .await;

    // Scale down 3 → 1.
    let scaled_down = std::time::Instant::now();
    patch_node_count(&bed, "1");
    let nodes = Api::<Node>::all(tenant.clone());
    // Node 1: its pod goes before the Node, the Node before its VM. Each poll reads the VM,
    // then the Node, then the pod, so "VM gone, Node still there" is a real violation.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let vm_gone = vms.get_opt("workers-node-1").await.unwrap().is_none();
        let node_gone = nodes.get_opt("workers-node-1").await.unwrap().is_none();
        let pod_gone = pods.get_opt("plain").await.unwrap().is_none();
        assert!(
            !vm_gone || node_gone,
            "VM workers-node-1 was deleted before its Node"
        );
        assert!(
            !node_gone || pod_gone,
            "Node workers-node-1 was deleted while pod plain was still bound to it"
        );
        if vm_gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers-node-1 was not retired (Node gone: {node_gone}, pod gone: {pod_gone})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node 2 is cordoned and draining: the budget holds its pod, so Node and VM stay.
    let node = nodes.get("workers-node-2").await.unwrap();
    assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));
    let guarded = pods.get("guarded").await.unwrap();
    assert!(
        guarded.metadata.deletion_timestamp.is_none(),
        "evicted despite its budget"
    );
    assert!(vms.get_opt("workers-node-2").await.unwrap().is_some());
    // The pending removal is recorded (written at the end of the pass that retired node 1).
    wait_until(
        Duration::from_secs(60),
        "status.retiringNodes to list workers-node-2",
        async || {
            let status = cps.get("workers").await.unwrap().status.unwrap();
            let retiring: Vec<String> = status
                .retiring_nodes
                .into_iter()
                .map(|vm| vm.name)
                .collect();
            retiring == ["workers-node-2"]
        },
    )
    .await;

    // Its VM is deleted behind the controller's back (the race): the pending removal is kept in
    // status, so the Node is still drained — the pod deleted once the drain timeout is up — and
    // removed.
    vms.delete("workers-node-2", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pod_gone_after = loop {
        let node_gone = nodes.get_opt("workers-node-2").await.unwrap().is_none();
        let pod_gone = pods.get_opt("guarded").await.unwrap().is_none();
        assert!(
            !node_gone || pod_gone,
            "Node workers-node-2 was deleted while pod guarded was still bound to it"
        );
        if node_gone {
            break scaled_down.elapsed();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Node workers-node-2 leaked after its VM was deleted (pod gone: {pod_gone})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        pod_gone_after >= Duration::from_secs(DRAIN_TIMEOUT_SECONDS - 2),
        "the budget was not respected until the drain timeout: gone after {pod_gone_after:?}"
    );
    wait_until(
        Duration::from_secs(60),
        "status.retiringNodes to empty",
        async || {
            let status = cps.get("workers").await.unwrap().status.unwrap();
            status.retiring_nodes.is_empty()
        },
    )
    .await;
    wait_vm_names(&vms, &["workers-node-0"]).await;
    let node0 = nodes.get("workers-node-0").await.unwrap();
    assert_ne!(node0.spec.and_then(|s| s.unschedulable), Some(true));
}

/// KubeVirt's VirtualMachine CRD on the host, as KubeVirt installs it, served before returning.
async fn install_kubevirt_crd(host: &KubeApiserver) {
    let mut crd_command = std::process::Command::new(hostplane_tests::kubevirt_check());
    crd_command.arg("crd");
    let crd = hostplane_tests::run_command(crd_command, None);
    assert!(crd.success(), "{}", crd.combined());
    // Server-side: the CRD is too large for client-side apply's last-applied annotation.
    let out = host.run_kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], &crd.stdout);
    assert!(out.success(), "{}", out.combined());
    hostplane_controller::embedded::wait_kinds_served(
        &host.client(),
        "kubevirt.io",
        &["VirtualMachine"],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
}

fn patch_node_count(bed: &ControllerBed, count: &str) {
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/postCreateHooks/0/vars/node_count","value":"{count}"}}]"#
    );
    bed.patch_cp("workers", "json", &patch);
}

async fn wait_vm_names(vms: &Api<kube::api::DynamicObject>, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut names: Vec<String> = vms
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|vm| vm.metadata.name)
            .collect();
        names.sort();
        if names == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VMs are {names:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The arguments of the `kubeadm join` a VM's cloud-init runs.
struct VmJoin {
    endpoint: String,
    token: String,
    ca_cert_hash: String,
}

async fn vm_join(vms: &Api<kube::api::DynamicObject>, name: &str) -> VmJoin {
    let vm = vms.get(name).await.unwrap();
    let volumes = vm.data["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let user_data = volumes
        .iter()
        .find_map(|v| v["cloudInitNoCloud"]["userData"].as_str())
        .expect("the VM has cloud-init user data");
    let line = user_data
        .lines()
        .find_map(|l| l.split_once("kubeadm join ").map(|(_, args)| args))
        .expect("cloud-init runs kubeadm join");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        let at = words.iter().position(|w| *w == flag).expect(flag);
        words[at + 1].to_string()
    };
    VmJoin {
        endpoint: words[0].to_string(),
        token: after("--token"),
        ca_cert_hash: after("--discovery-token-ca-cert-hash"),
    }
}

/// The bootstrap token Secret of `token` exists in the tenant and has not expired.
async fn assert_live_token(tokens: &Api<Secret>, token: &str) {
    let id = token.split('.').next().unwrap();
    let secret = tokens
        .get_opt(&format!("bootstrap-token-{id}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the VM's bootstrap token {id} does not exist in the tenant"));
    let data = secret.data.unwrap();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    assert_eq!(
        format!("{}.{}", text("token-id"), text("token-secret")),
        token
    );
    let expires: k8s_openapi::jiff::Timestamp = text("expiration").parse().unwrap();
    assert!(
        expires > k8s_openapi::jiff::Timestamp::now(),
        "token {id} expired"
    );
}

/// What the VM's `kubeadm join` does, by the node-bootstrap client: its endpoint's name resolved
/// to this machine (where the SNI proxy listens). Retried while the proxy learns the route.
async fn join_as_vm(join: &VmJoin, node_name: &str) -> hostplane_tests::node_bootstrap::JoinedNode {
    use hostplane_tests::node_bootstrap::{NodeBootstrapError, NodeJoin, bootstrap_node};
    let server = format!("https://{}", join.endpoint);
    let node = NodeJoin {
        server: &server,
        token: &join.token,
        ca_cert_hash: &join.ca_cert_hash,
        node_name,
        timeout: Duration::from_secs(120),
        resolve: Some(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bootstrap_node(&node).await {
            Ok(joined) => return joined,
            Err(NodeBootstrapError::ClusterInfo(e)) if std::time::Instant::now() < deadline => {
                eprintln!("{node_name}: discovery through the proxy failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{node_name} cannot join with its VM's cloud-init: {e}"),
        }
    }
}

/// Marks a Job complete through its status subresource, as the Job controller would.
fn complete_job(bed: &Bed, namespace: &str, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = format!(
        r#"{{"status":{{"startTime":"{now}","completionTime":"{now}","succeeded":1,"conditions":[{{"type":"SuccessCriteriaMet","status":"True","lastTransitionTime":"{now}"}},{{"type":"Complete","status":"True","lastTransitionTime":"{now}"}}]}}}}"#
    );
    let (ok, out) = bed.kubectl(
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
