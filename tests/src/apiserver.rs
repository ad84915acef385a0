//! A real kube-apiserver on loopback with its own certificates, on etcd or Kine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hostplane_controller::build::processes::kube_apiserver_args;
use hostplane_controller::pki::{PkiFiles, PkiRequest, ensure_pki, issue_client_cert};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::binaries::Binaries;
use crate::command::{CommandOutput, run_command};
use crate::etcd::Etcd;
use crate::kine::Kine;
use crate::ports::free_port;
use crate::postgres::Postgres;
use crate::process::ManagedProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The datastore a [`KubeApiserver`] keeps its objects in. The apiserver owns it, so the
/// datastore stops after the apiserver.
#[derive(Debug)]
pub enum Storage {
    Etcd(Etcd),
    Kine(Kine),
}

impl Storage {
    /// The etcd client URL the apiserver is given.
    pub fn endpoint(&self) -> String {
        match self {
            Storage::Etcd(etcd) => etcd.endpoint(),
            Storage::Kine(kine) => kine.endpoint(),
        }
    }

    /// The datastore's process (for outage tests).
    pub fn process(&self) -> &ManagedProcess {
        match self {
            Storage::Etcd(etcd) => etcd.process(),
            Storage::Kine(kine) => kine.process(),
        }
    }
}

/// A running kube-apiserver on `https://127.0.0.1:port()` with a fresh cluster PKI and an admin
/// kubeconfig (client certificate in group `system:masters`) in its temp dir.
///
/// Dropping it stops the apiserver, then its storage, then removes the temp dir.
pub struct KubeApiserver {
    // Field order is drop order: the apiserver stops before its storage goes away.
    process: ManagedProcess,
    storage: Storage,
    client: kube::Client,
    port: u16,
    pki: PkiFiles,
    kubeconfig_path: PathBuf,
    dir: TempDir,
}

impl KubeApiserver {
    /// Starts kube-apiserver on `storage` and returns once `/readyz` answers `ok`.
    pub async fn start(storage: Storage) -> KubeApiserver {
        let binaries = Binaries::get();
        let dir = tempfile::Builder::new()
            .prefix("hostplane-apiserver-")
            .tempdir()
            .expect("creating the kube-apiserver temp dir");
        let pki = cluster_pki();
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir(&pki_dir).expect("creating the pki dir");
        for (name, pem) in &pki {
            std::fs::write(pki_dir.join(name), pem).expect("writing a PEM file");
        }

        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let mut command = Command::new(&binaries.kube_apiserver);
        // The product's own flags, so the test host is configured as tenants are.
        command.current_dir(dir.path()).args(kube_apiserver_args(
            &pki_dir,
            port,
            &storage.endpoint(),
        ));
        let process = ManagedProcess::spawn(
            "kube-apiserver",
            command,
            dir.path().join("kube-apiserver.log"),
        );

        let kubeconfig_path = dir.path().join("admin.kubeconfig");
        let kubeconfig = admin_kubeconfig(&url, &pki);
        std::fs::write(&kubeconfig_path, &kubeconfig).expect("writing the admin kubeconfig");
        let client = client_from_kubeconfig(&kubeconfig).await;

        let apiserver = KubeApiserver {
            process,
            storage,
            client,
            port,
            pki,
            kubeconfig_path,
            dir,
        };
        apiserver.wait_ready().await;
        apiserver
    }

    async fn wait_ready(&self) {
        let what = format!("kube-apiserver /readyz on port {}", self.port);
        let client = &self.client;
        self.process
            .wait_ready(READY_TIMEOUT, &what, async || {
                let request = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
                    Ok(Ok(body)) => Err(format!("/readyz answered {body:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("/readyz did not answer within 5s".into()),
                }
            })
            .await;
    }

    /// A client with the admin identity (a fresh handle on a shared connection pool).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file; self-contained (certificates embedded), so it can be copied
    /// or stored in a Secret.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig's text.
    pub fn kubeconfig(&self) -> String {
        std::fs::read_to_string(&self.kubeconfig_path).expect("reading the admin kubeconfig")
    }

    /// kubectl with `--kubeconfig` set to the admin kubeconfig; add arguments and run it.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&Binaries::get().kubectl);
        command
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            // Discovery cache inside the temp dir rather than in ~/.kube.
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"));
        command
    }

    /// Runs `kubectl ARGS` as admin and captures its output.
    pub fn run_kubectl(&self, args: &[&str]) -> CommandOutput {
        let mut command = self.kubectl();
        command.args(args);
        run_command(command, None)
    }

    /// Runs `kubectl ARGS` as admin with `stdin` as its standard input.
    pub fn run_kubectl_with_stdin(&self, args: &[&str], stdin: &str) -> CommandOutput {
        let mut command = self.kubectl();
        command.args(args);
        run_command(command, Some(stdin))
    }

    /// `kubectl apply -f -` of `yaml` as admin. Check `.success()` or call
    /// `.expect_success("applying …")`.
    pub fn apply_yaml(&self, yaml: &str) -> CommandOutput {
        self.run_kubectl_with_stdin(&["apply", "-f", "-"], yaml)
    }

    /// `https://127.0.0.1:N`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The secure port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster CA certificate (PEM), which signed the serving and client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.pki["ca.crt"]
    }

    /// Every PEM of the cluster, by kubeadm file name (`ca.crt`, `ca.key`, `sa.key`, …).
    pub fn pki(&self) -> &PkiFiles {
        &self.pki
    }

    /// The datastore under this apiserver.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The kube-apiserver process (for its pid, its log, or to kill it).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// The temp dir holding `pki/`, `admin.kubeconfig` and `kube-apiserver.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl std::fmt::Debug for KubeApiserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiserver")
            .field("url", &self.url())
            .field("process", &self.process)
            .field("storage", &self.storage)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .finish_non_exhaustive()
    }
}

/// kube-apiserver on a fresh etcd.
pub async fn start_apiserver_on_etcd() -> KubeApiserver {
    KubeApiserver::start(Storage::Etcd(Etcd::start().await)).await
}

/// kube-apiserver on a fresh Kine with SQLite.
pub async fn start_apiserver_on_kine_sqlite() -> KubeApiserver {
    KubeApiserver::start(Storage::Kine(Kine::start_sqlite().await)).await
}

/// kube-apiserver on a fresh Kine storing into database `postgres` of `postgres` (table
/// `kine`, so tests can look at the rows through [`Postgres::query_strings`]). For a second
/// apiserver on the same server, give Kine its own database:
/// `Kine::start_postgres(&postgres.url_for_database("other"))`.
pub async fn start_apiserver_on_kine_postgres(postgres: &Postgres) -> KubeApiserver {
    let kine = Kine::start_postgres(&postgres.admin_url()).await;
    KubeApiserver::start(Storage::Kine(kine)).await
}

/// A complete cluster PKI from the controller's own PKI code, plus an admin client certificate
/// in `system:masters` when the set has none.
fn cluster_pki() -> PkiFiles {
    let now = SystemTime::now();
    let request = PkiRequest {
        cluster_name: "host".into(),
        apiserver_sans: vec![],
        ca_validity: CA_VALIDITY,
        leaf_validity: LEAF_VALIDITY,
    };
    let mut pki = ensure_pki(&PkiFiles::new(), &request, now)
        .unwrap_or_else(|e| panic!("generating the cluster PKI: {e}"));
    if !pki.contains_key("admin.crt") {
        let (cert, key) = issue_client_cert(
            &pki["ca.crt"],
            &pki["ca.key"],
            "kubernetes-admin",
            &["system:masters"],
            LEAF_VALIDITY,
            now,
        )
        .unwrap_or_else(|e| panic!("issuing the admin client certificate: {e}"));
        pki.insert("admin.crt".into(), cert);
        pki.insert("admin.key".into(), key);
    }
    pki
}

/// An admin kubeconfig with the CA and the client certificate embedded.
fn admin_kubeconfig(url: &str, pki: &PkiFiles) -> String {
    let data = |name: &str| BASE64.encode(&pki[name]);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "hostplane-tests",
            "cluster": {
                "server": url,
                "certificate-authority-data": data("ca.crt"),
            },
        }],
        "users": [{
            "name": "admin",
            "user": {
                "client-certificate-data": data("admin.crt"),
                "client-key-data": data("admin.key"),
            },
        }],
        "contexts": [{
            "name": "admin@hostplane-tests",
            "context": { "cluster": "hostplane-tests", "user": "admin" },
        }],
        "current-context": "admin@hostplane-tests",
    });
    serde_yaml::to_string(&config).expect("serializing the kubeconfig")
}

async fn client_from_kubeconfig(kubeconfig: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig).expect("parsing the admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client config from the admin kubeconfig");
    kube::Client::try_from(config).expect("building the admin client")
}
