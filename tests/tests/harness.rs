//! The harness itself: every server starts for real, answers, and is gone after its handle.

use std::net::TcpStream;
use std::time::Duration;

use hostplane_tests::{
    Binaries, Etcd, Kine, Postgres, http_get, start_apiserver_on_etcd,
    start_apiserver_on_kine_postgres, start_apiserver_on_kine_sqlite, tcp_accepts, wait_until,
};

fn accepts_connections(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

#[tokio::test]
async fn postgres_answers_queries_and_survives_a_stop_and_start() {
    let mut postgres = Postgres::start().await;
    assert_eq!(postgres.query_strings("SELECT 40 + 2").await, ["42"]);

    let client = postgres.client().await;
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the outage')")
        .await
        .unwrap();

    postgres.stop();
    assert!(
        !accepts_connections(postgres.port()),
        "Postgres still listens after stop()"
    );
    assert!(postgres.try_client().await.is_err());

    postgres.start_again().await;
    assert_eq!(
        postgres.query_strings("SELECT v FROM kept").await,
        ["before the outage"]
    );
}

#[tokio::test]
async fn postgres_accepts_only_the_password_over_tcp() {
    let postgres = Postgres::start().await;
    let wrong = postgres
        .admin_dsn()
        .replace(postgres.password(), "wrong-password");
    let refused = tokio_postgres::connect(&wrong, tokio_postgres::NoTls).await;
    let error = refused.err().expect("a wrong password is refused");
    let message = error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| error.to_string());
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
}

#[tokio::test]
async fn postgres_is_gone_after_its_handle_is_dropped() {
    let postgres = Postgres::start().await;
    let port = postgres.port();
    let dir = postgres.dir().to_path_buf();
    assert!(accepts_connections(port));
    drop(postgres);
    assert!(
        !accepts_connections(port),
        "port {port} still accepts connections"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test]
async fn etcd_starts_answers_and_restarts() {
    let mut etcd = Etcd::start().await;
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    let (status, body) = http_get(etcd.port(), "/health").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"health\":\"true\""), "{body}");

    let endpoint = etcd.endpoint();
    let etcdctl = |args: &[&str]| {
        let mut command = std::process::Command::new(&Binaries::get().etcdctl);
        command.args(["--endpoints", &endpoint]).args(args);
        hostplane_tests::run_command(command, None)
    };
    etcdctl(&["put", "/hostplane/k", "v"]).expect_success("etcdctl put");

    etcd.stop();
    assert!(!accepts_connections(etcd.port()));
    etcd.start_again().await;
    let value =
        etcdctl(&["get", "--print-value-only", "/hostplane/k"]).expect_success("etcdctl get");
    assert_eq!(value.trim(), "v");

    let port = etcd.port();
    drop(etcd);
    assert!(!accepts_connections(port));
}

#[tokio::test]
async fn kine_starts_on_sqlite() {
    let kine = Kine::start_sqlite().await;
    tcp_accepts(kine.port()).await.unwrap();
    assert!(kine.dir().join("state.db").exists());
}

#[tokio::test]
async fn kine_starts_on_postgres() {
    let postgres = Postgres::start().await;
    let kine = Kine::start_postgres(&postgres.admin_url()).await;
    tcp_accepts(kine.port()).await.unwrap();
    let tables = postgres
        .query_strings("SELECT tablename FROM pg_tables WHERE tablename = 'kine'")
        .await;
    assert_eq!(tables, ["kine"]);
}

async fn assert_usable(api: &hostplane_tests::KubeApiserver) {
    let namespaces = api
        .run_kubectl(&["get", "ns", "-o", "name"])
        .expect_success("kubectl get ns");
    assert!(
        namespaces.lines().any(|l| l == "namespace/default"),
        "{namespaces}"
    );

    let applied = api.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: harness\n  namespace: default\ndata:\n  k: v\n");
    applied.expect_success("kubectl apply");
    let api_configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(api.client(), "default");
    wait_until(
        Duration::from_secs(10),
        "the applied ConfigMap to be readable",
        async || {
            api_configmaps
                .get_opt("harness")
                .await
                .ok()
                .flatten()
                .is_some()
        },
    )
    .await;
}

#[tokio::test]
async fn apiserver_on_etcd_is_ready_and_usable() {
    let api = start_apiserver_on_etcd().await;
    assert_usable(&api).await;
}

#[tokio::test]
async fn apiserver_on_kine_sqlite_is_ready_and_usable() {
    let api = start_apiserver_on_kine_sqlite().await;
    assert_usable(&api).await;
}

#[tokio::test]
async fn apiserver_on_kine_postgres_is_ready_and_usable() {
    let postgres = Postgres::start().await;
    let api = start_apiserver_on_kine_postgres(&postgres).await;
    assert_usable(&api).await;
    let rows = postgres
        .query_strings("SELECT name FROM kine WHERE name LIKE '%/configmaps/default/harness'")
        .await;
    assert!(!rows.is_empty(), "the ConfigMap is not a row in Postgres");

    let port = api.port();
    drop(api);
    assert!(
        !accepts_connections(port),
        "kube-apiserver still listens after drop"
    );
}

#[test]
fn servers_are_stopped_when_their_test_panics() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let failing_test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let etcd = Etcd::start().await;
            sender
                .send((
                    etcd.port(),
                    etcd.process().pid().unwrap(),
                    etcd.dir().to_path_buf(),
                ))
                .unwrap();
            panic!("a failing test holding an etcd");
        })
    });
    assert!(
        failing_test.join().is_err(),
        "the test thread should have panicked"
    );
    let (port, pid, dir) = receiver.recv().unwrap();
    assert!(!accepts_connections(port), "etcd still listens on {port}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd pid {pid} still exists"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn binaries_are_found() {
    let binaries = Binaries::get();
    assert!(binaries.kube_version.starts_with("1."), "{binaries:?}");
    for path in [
        &binaries.kube_apiserver,
        &binaries.kubectl,
        &binaries.kine,
        &binaries.etcd,
    ] {
        assert!(path.is_file(), "{}", path.display());
    }
}
