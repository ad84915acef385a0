//! A single-member etcd on loopback: plaintext, or https with client certificates (and auth).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::Durability;
use crate::binaries::Binaries;
use crate::command::{CommandOutput, run_command};
use crate::ports::free_port;
use crate::probe::http_get;
use crate::process::ManagedProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running one-member etcd cluster on 127.0.0.1 (client and peer ports free ports), with its
/// data in a temp dir that is removed on drop.
#[derive(Debug)]
pub struct Etcd {
    process: ManagedProcess,
    client_port: u16,
    peer_port: u16,
    /// Where plain-HTTP `/readyz` answers: the client port, or a metrics port under TLS.
    probe_port: u16,
    tls: Option<EtcdTls>,
    dir: TempDir,
}

/// PEM files of an etcd started with [`Etcd::start_tls`], in its temp dir. One CA signs the
/// serving certificate and every client certificate.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_crt: PathBuf,
    pub ca_key: PathBuf,
    /// Client certificate whose common name is `root` (the etcd root user once auth is on).
    pub root_crt: PathBuf,
    pub root_key: PathBuf,
}

impl Etcd {
    /// Starts etcd and returns once `GET /readyz` answers `ok`.
    pub async fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("hostplane-etcd-")
            .tempdir()
            .expect("creating the etcd temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(&Binaries::get().etcd);
        command
            .current_dir(dir.path())
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            // Tests lose nothing they care about on a machine crash; fsync only slows them.
            .arg("--unsafe-no-fsync");
        let process = ManagedProcess::spawn("etcd", command, dir.path().join("etcd.log"));
        let etcd = Etcd {
            process,
            client_port,
            probe_port: client_port,
            peer_port,
            tls: None,
            dir,
        };
        etcd.wait_ready().await;
        etcd
    }

    /// Starts etcd serving https only and requiring client certificates signed by its own CA
    /// (made here, with the controller's PKI code); with `auth`, user `root` (authenticated by
    /// the `root` certificate, no password) is created and authentication enabled, so every
    /// other client is confined to what its user's roles grant.
    pub async fn start_tls(auth: bool) -> Etcd {
        Etcd::start_tls_with(auth, Durability::Fast).await
    }

    /// [`Etcd::start_tls`] with the given durability ([`Durability::Synced`] fsyncs its log, as
    /// a production etcd does).
    pub async fn start_tls_with(auth: bool, durability: Durability) -> Etcd {
        use hostplane_controller::pki;
        let dir = tempfile::Builder::new()
            .prefix("hostplane-etcd-tls-")
            .tempdir()
            .expect("creating the etcd temp dir");
        let now = SystemTime::now();
        let request = pki::PkiRequest {
            cluster_name: "harness".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(7 * 24 * 3600),
            leaf_validity: Duration::from_secs(24 * 3600),
        };
        let files = pki::ensure_dedicated_etcd_pki(&pki::PkiFiles::new(), &request, now)
            .expect("etcd test certificates");
        let (root_crt, root_key) = pki::issue_client_cert(
            &files["etcd-ca.crt"],
            &files["etcd-ca.key"],
            "root",
            &[],
            request.leaf_validity,
            now,
        )
        .expect("etcd root client certificate");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("writing an etcd test certificate");
            path
        };
        for name in ["etcd-server.crt", "etcd-server.key"] {
            write(name, &files[name]);
        }
        let tls = EtcdTls {
            ca_crt: write("ca.crt", &files["etcd-ca.crt"]),
            ca_key: write("ca.key", &files["etcd-ca.key"]),
            root_crt: write("root.crt", &root_crt),
            root_key: write("root.key", &root_key),
        };
        let (client_port, peer_port, metrics_port) = (free_port(), free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(&Binaries::get().etcd);
        command
            .current_dir(dir.path())
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--client-cert-auth=true"])
            .arg(format!("--trusted-ca-file={}", tls.ca_crt.display()))
            .arg(format!(
                "--cert-file={}",
                dir.path().join("etcd-server.crt").display()
            ))
            .arg(format!(
                "--key-file={}",
                dir.path().join("etcd-server.key").display()
            ))
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ));
        if durability == Durability::Fast {
            command.arg("--unsafe-no-fsync");
        }
        let process = ManagedProcess::spawn("etcd", command, dir.path().join("etcd.log"));
        let etcd = Etcd {
            process,
            client_port,
            peer_port,
            probe_port: metrics_port,
            tls: Some(tls),
            dir,
        };
        etcd.wait_ready().await;
        if auth {
            let tls = etcd.tls().expect("started with TLS");
            for args in [
                &["user", "add", "root", "--no-password"][..],
                &["user", "grant-role", "root", "root"],
                &["auth", "enable"],
            ] {
                etcd.etcdctl(Some((&tls.root_crt, &tls.root_key)), args)
                    .expect_success(&format!("etcdctl {}", args.join(" ")));
            }
        }
        etcd
    }

    /// The TLS material, for an etcd started with [`Etcd::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Runs etcdctl against this etcd, trusting its CA when it serves TLS, with the client
    /// certificate and key given (none: a client without a certificate).
    pub fn etcdctl(&self, cert: Option<(&Path, &Path)>, args: &[&str]) -> CommandOutput {
        let mut command = Command::new(&Binaries::get().etcdctl);
        command
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--command-timeout=10s");
        if let Some(tls) = &self.tls {
            command.arg(format!("--cacert={}", tls.ca_crt.display()));
        }
        if let Some((crt, key)) = cert {
            command
                .arg(format!("--cert={}", crt.display()))
                .arg(format!("--key={}", key.display()));
        }
        command.args(args);
        run_command(command, None)
    }

    async fn wait_ready(&self) {
        let port = self.probe_port;
        let what = format!("etcd /readyz on 127.0.0.1:{port}");
        self.process
            .wait_ready(READY_TIMEOUT, &what, async || {
                match http_get(port, "/readyz").await? {
                    (200, body) if body.trim() == "ok" => Ok(()),
                    (status, body) => Err(format!("/readyz answered {status}: {}", body.trim())),
                }
            })
            .await;
    }

    /// The `hostplane controller` environment that makes this etcd (started with TLS and auth)
    /// the shared etcd: its endpoint, CA, root client pair and the client CA's key.
    pub fn shared_etcd_env(&self) -> Vec<(&'static str, String)> {
        let tls = self.tls().expect("the shared etcd runs with TLS");
        let path = |p: &std::path::Path| p.display().to_string();
        vec![
            ("HOSTPLANE_SHARED_ETCD_ENDPOINTS", self.endpoint()),
            ("HOSTPLANE_SHARED_ETCD_CA_FILE", path(&tls.ca_crt)),
            ("HOSTPLANE_SHARED_ETCD_CERT_FILE", path(&tls.root_crt)),
            ("HOSTPLANE_SHARED_ETCD_KEY_FILE", path(&tls.root_key)),
            ("HOSTPLANE_SHARED_ETCD_CLIENT_CA_KEY", path(&tls.ca_key)),
        ]
    }

    /// The client URL, `http://127.0.0.1:N` (`https://` when started with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The temp dir holding `data/` and `etcd.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The etcd process (for its pid, its log, or to kill it).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// Stops etcd gracefully (SIGTERM), keeping its data, for outage tests.
    pub fn stop(&mut self) {
        self.process.stop(Signal::SIGTERM, Duration::from_secs(15));
    }

    /// Starts etcd again on the same ports and data; returns once it is ready.
    pub async fn start_again(&mut self) {
        self.process.restart();
        self.wait_ready().await;
    }
}
