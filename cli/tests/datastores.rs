//! End to end: where a tenant keeps its state — an etcd of its own (`backend: dedicated`), the
//! shared etcd (one etcd user and key prefix per tenant), or the user's etcd or Postgres
//! (`backend: external`) — through the `hostplane controller` binary, with real etcd,
//! Postgres and kube-apiserver processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{Binaries, Etcd, Postgres};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

type Bed = ControllerBed;

impl Bed {
    fn create_secret(&self, name: &str, literals: &[(&str, &str)]) {
        let mut args = vec![
            "-n".to_string(),
            "default".into(),
            "create".into(),
            "secret".into(),
            "generic".into(),
            name.into(),
        ];
        args.extend(
            literals
                .iter()
                .map(|(k, v)| format!("--from-literal={k}={v}")),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = self.kubectl(&args, None);
        assert!(ok, "{out}");
    }

    /// The tenant PKI Secret `<name>-system/k8s-certs`.
    async fn certs(&self, name: &str) -> BTreeMap<String, String> {
        let secret = Api::<Secret>::namespaced(self.host.client(), &format!("{name}-system"))
            .get("k8s-certs")
            .await
            .unwrap();
        secret
            .data
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    /// Writes PEM entries of a tenant's k8s-certs to files, as an operator would extract them.
    async fn cert_files(&self, name: &str, keys: &[&str]) -> Vec<PathBuf> {
        let certs = self.certs(name).await;
        keys.iter()
            .map(|k| {
                let path = self.controller.state_dir.join(format!("{name}-{k}"));
                std::fs::write(&path, &certs[*k]).unwrap();
                path
            })
            .collect()
    }

    async fn delete(&self, name: &str) {
        let (ok, out) = self.kubectl(&["delete", "cp", name, "--timeout=120s"], None);
        assert!(ok, "deleting {name}: {out}");
    }
}

/// etcdctl against `endpoint`, trusting `ca`, with a client certificate or none.
fn etcdctl(
    endpoint: &str,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    args: &[&str],
) -> (bool, String) {
    let mut command = std::process::Command::new(&Binaries::get().etcdctl);
    command
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg("--command-timeout=10s")
        .arg("--dial-timeout=5s");
    if let Some((crt, key)) = cert {
        command
            .arg(format!("--cert={}", crt.display()))
            .arg(format!("--key={}", key.display()));
    }
    let out = hostplane_tests::run_command(
        {
            command.args(args);
            command
        },
        None,
    );
    (out.success(), out.combined())
}

fn uid_hex(cp: &ControlPlane) -> String {
    cp.metadata.uid.clone().unwrap().replace('-', "")
}

#[tokio::test]
async fn a_dedicated_etcd_holds_the_tenants_data_behind_mtls_and_goes_with_it() {
    let bed = Bed::with(None, &[]).await;
    let cp = bed.create("solo", "  backend: dedicated\n").await;
    let datastore = cp.status.clone().unwrap().datastore.unwrap();
    assert_eq!(
        (datastore.kind.as_str(), datastore.database),
        ("etcd", None)
    );

    let (ok, out) = bed
        .tenant_kubectl(
            "solo",
            &[
                "create",
                "configmap",
                "greeting",
                "--from-literal=hello=from-solo",
            ],
        )
        .await;
    assert!(ok, "{out}");

    // The ConfigMap is in the tenant's own etcd, read with the API server's client certificate.
    let dir = bed.tenant_dir(&cp);
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ports.json")).unwrap()).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", ports["etcd_client"]);
    let files = bed
        .cert_files(
            "solo",
            &[
                "etcd-ca.crt",
                "apiserver-etcd-client.crt",
                "apiserver-etcd-client.key",
                "admin.crt",
                "admin.key",
            ],
        )
        .await;
    let (ca, client, admin) = (
        &files[0],
        (&*files[1], &*files[2]),
        (&*files[3], &*files[4]),
    );
    let (ok, out) = etcdctl(
        &endpoint,
        ca,
        Some(client),
        &["get", "/registry/configmaps/default/greeting"],
    );
    assert!(
        ok && out.contains("/registry/configmaps/default/greeting") && out.contains("from-solo"),
        "{out}"
    );

    // No certificate, or one of the tenant's cluster CA (what its users hold): refused.
    let (ok, out) = etcdctl(
        &endpoint,
        ca,
        None,
        &["get", "--prefix", "--keys-only", "/"],
    );
    assert!(!ok, "etcd answered a client without a certificate: {out}");
    let (ok, out) = etcdctl(
        &endpoint,
        ca,
        Some(admin),
        &["get", "--prefix", "--keys-only", "/"],
    );
    assert!(!ok, "etcd answered a certificate of the cluster CA: {out}");
    // And nothing listens in plaintext.
    let plain = endpoint.replace("https://", "http://");
    let (ok, out) = etcdctl(&plain, ca, None, &["get", "--prefix", "--keys-only", "/"]);
    assert!(!ok, "etcd answered plaintext: {out}");

    // Delete: the etcd process and its data dir go with the tenant.
    let etcd_pid: i32 = std::fs::read_to_string(dir.join("etcd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        dir.join("etcd/member").is_dir(),
        "no etcd data in {}",
        dir.display()
    );
    bed.delete("solo").await;
    assert!(!alive(etcd_pid), "the tenant's etcd still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn tenants_on_the_shared_etcd_each_see_only_their_own_prefix() {
    let shared = Etcd::start_tls(true).await;
    let tls = shared.tls().unwrap().clone();
    let endpoints = shared.endpoint();
    let env = shared.shared_etcd_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bed = Bed::with(None, &env).await;
    let alpha = bed.create("alpha", "").await;
    let beta = bed.create("beta", "").await;
    let (a, b) = (uid_hex(&alpha), uid_hex(&beta));
    let recorded = alpha.status.clone().unwrap().datastore.unwrap();
    assert_eq!(
        (recorded.kind.as_str(), recorded.role),
        ("shared-etcd", Some(format!("hp-{a}")))
    );
    for (name, value) in [("alpha", "a-data"), ("beta", "b-data")] {
        let (ok, out) = bed
            .tenant_kubectl(
                name,
                &[
                    "create",
                    "configmap",
                    "mine",
                    &format!("--from-literal=v={value}"),
                ],
            )
            .await;
        assert!(ok, "{name}: {out}");
        let (ok, out) = bed
            .tenant_kubectl(
                name,
                &["get", "configmap", "mine", "-o", "jsonpath={.data.v}"],
            )
            .await;
        assert!(ok && out == value, "{name}: {out}");
    }

    // Alpha's API server certificate names alpha's etcd user: its own prefix reads, beta's not.
    let files = bed
        .cert_files(
            "alpha",
            &["apiserver-etcd-client.crt", "apiserver-etcd-client.key"],
        )
        .await;
    let alpha_cert = (&*files[0], &*files[1]);
    let own = format!("/hostplane/{a}/configmaps/default/mine");
    let (ok, out) = etcdctl(&endpoints, &tls.ca_crt, Some(alpha_cert), &["get", &own]);
    assert!(ok && out.contains("a-data"), "{out}");
    let (ok, out) = etcdctl(
        &endpoints,
        &tls.ca_crt,
        Some(alpha_cert),
        &["get", "--prefix", &format!("/hostplane/{b}/")],
    );
    assert!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = etcdctl(
        &endpoints,
        &tls.ca_crt,
        Some(alpha_cert),
        &[
            "put",
            &format!("/hostplane/{b}/configmaps/default/mine"),
            "overwritten",
        ],
    );
    assert!(!ok && out.contains("permission denied"), "{out}");

    // Deleting alpha removes its keys, user and role, and leaves beta's keys and beta working.
    bed.delete("alpha").await;
    let root = Some((tls.root_crt.as_path(), tls.root_key.as_path()));
    let keys = |prefix: String| {
        let (ok, out) = etcdctl(
            &endpoints,
            &tls.ca_crt,
            root,
            &["get", "--prefix", "--keys-only", &prefix],
        );
        assert!(ok, "{out}");
        out.lines().filter(|l| !l.is_empty()).count()
    };
    assert_eq!(keys(format!("/hostplane/{a}/")), 0);
    assert!(keys(format!("/hostplane/{b}/")) > 10);
    for kind in ["user", "role"] {
        let (ok, out) = etcdctl(
            &endpoints,
            &tls.ca_crt,
            root,
            &[kind, "get", &format!("hp-{a}")],
        );
        assert!(!ok && out.contains("not found"), "{kind}: {out}");
    }
    let (ok, out) = etcdctl(
        &endpoints,
        &tls.ca_crt,
        root,
        &["user", "get", &format!("hp-{b}")],
    );
    assert!(ok, "{out}");
    let (ok, out) = bed
        .tenant_kubectl(
            "beta",
            &["get", "configmap", "mine", "-o", "jsonpath={.data.v}"],
        )
        .await;
    assert!(ok && out == "b-data", "{out}");
}

#[tokio::test]
async fn an_external_etcd_is_used_as_given_and_a_wrong_ca_names_the_secret() {
    let theirs = Etcd::start_tls(false).await;
    let tls = theirs.tls().unwrap().clone();
    let bed = Bed::with(None, &[]).await;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let (ca, crt, key) = (read(&tls.ca_crt), read(&tls.root_crt), read(&tls.root_key));
    let endpoints = theirs.endpoint();
    bed.create_secret(
        "their-etcd",
        &[
            ("endpoints", &endpoints),
            ("ca.crt", &ca),
            ("tls.crt", &crt),
            ("tls.key", &key),
        ],
    );
    // The same etcd, but a CA that did not sign its serving certificate.
    let stranger = hostplane_controller::pki::ensure_dedicated_etcd_pki(
        &Default::default(),
        &hostplane_controller::pki::PkiRequest {
            cluster_name: "stranger".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(86400),
            leaf_validity: Duration::from_secs(3600),
        },
        std::time::SystemTime::now(),
    )
    .unwrap();
    bed.create_secret(
        "wrong-ca",
        &[
            ("endpoints", &endpoints),
            ("ca.crt", &stranger["etcd-ca.crt"]),
            ("tls.crt", &crt),
            ("tls.key", &key),
        ],
    );
    let spec = |secret: &str| {
        format!(
            "  backend: external\n  datastoreSecretRef:\n    name: {secret}\n    namespace: default\n"
        )
    };

    bed.apply_cp("mistrusted", &spec("wrong-ca"));
    let cp = wait_ready_state(
        &bed.cps(),
        "mistrusted",
        "False",
        Some("ExternalDatastoreUnavailable"),
        READY_TIMEOUT,
    )
    .await;
    let (_, _, message) = condition(&cp, "Ready").unwrap();
    assert!(
        message.contains("Secret default/wrong-ca")
            && message.contains(&endpoints)
            && message.contains("certificate"),
        "{message}"
    );

    let cp = bed.create("byo-etcd", &spec("their-etcd")).await;
    assert_eq!(cp.status.unwrap().datastore.unwrap().kind, "external");
    let (ok, out) = bed
        .tenant_kubectl(
            "byo-etcd",
            &["create", "configmap", "kept", "--from-literal=k=v"],
        )
        .await;
    assert!(ok, "{out}");
    let root = Some((tls.root_crt.as_path(), tls.root_key.as_path()));
    let (ok, out) = etcdctl(
        &endpoints,
        &tls.ca_crt,
        root,
        &["get", "--keys-only", "/registry/configmaps/default/kept"],
    );
    assert!(
        ok && out.contains("/registry/configmaps/default/kept"),
        "{out}"
    );

    // Never dropped on delete: the user's data stays.
    bed.delete("byo-etcd").await;
    let (ok, out) = etcdctl(
        &endpoints,
        &tls.ca_crt,
        root,
        &["get", "--keys-only", "/registry/configmaps/default/kept"],
    );
    assert!(
        ok && out.contains("/registry/configmaps/default/kept"),
        "{out}"
    );
}

#[tokio::test]
async fn an_external_postgres_with_a_wrong_password_names_the_secret_and_is_kept_on_delete() {
    let postgres = Postgres::start().await;
    let (admin, connection) = tokio_postgres::connect(&postgres.admin_dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for statement in [
        "CREATE ROLE theirs LOGIN PASSWORD 'right-pass'",
        "CREATE DATABASE theirs OWNER theirs",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    let dsn = |password: &str| {
        format!(
            "postgres://theirs:{password}@127.0.0.1:{}/theirs?sslmode=disable",
            postgres.port()
        )
    };
    let bed = Bed::with(None, &[]).await;
    bed.create_secret("their-db", &[("dsn", &dsn("wrong-pass"))]);
    bed.apply_cp(
        "byo-pg",
        "  backend: external\n  datastoreSecretRef:\n    name: their-db\n    namespace: default\n",
    );
    let cp = wait_ready_state(
        &bed.cps(),
        "byo-pg",
        "False",
        Some("ExternalDatastoreUnavailable"),
        READY_TIMEOUT,
    )
    .await;
    let (_, _, message) = condition(&cp, "Ready").unwrap();
    assert!(
        message.contains("Secret default/their-db")
            && message.contains("password authentication failed")
            && !message.contains("wrong-pass"),
        "{message}"
    );

    // Fixed by the user: the tenant comes up on their database.
    let (ok, out) = bed.kubectl(&["-n", "default", "delete", "secret", "their-db"], None);
    assert!(ok, "{out}");
    bed.create_secret("their-db", &[("dsn", &dsn("right-pass"))]);
    bed.available("byo-pg").await;
    let (ok, out) = bed
        .tenant_kubectl(
            "byo-pg",
            &["create", "configmap", "kept", "--from-literal=k=v"],
        )
        .await;
    assert!(ok, "{out}");

    // Delete leaves the database, with the tenant's data in it.
    bed.delete("byo-pg").await;
    let (theirs, connection) = tokio_postgres::connect(
        &postgres
            .admin_dsn()
            .replace("dbname=postgres", "dbname=theirs"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let rows: i64 = theirs
        .query_one(
            "SELECT count(*) FROM kine WHERE name = '/registry/configmaps/default/kept'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows >= 1, "the tenant's rows are gone");
}
