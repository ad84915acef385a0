//! A single-member etcd, plaintext on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::binaries::Binaries;
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
    dir: TempDir,
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
            peer_port,
            dir,
        };
        etcd.wait_ready().await;
        etcd
    }

    async fn wait_ready(&self) {
        let port = self.client_port;
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

    /// The client URL, `http://127.0.0.1:N`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
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
