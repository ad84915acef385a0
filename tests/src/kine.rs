//! Kine: the etcd API over SQL (SQLite or PostgreSQL).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::binaries::Binaries;
use crate::ports::free_port;
use crate::probe::tcp_accepts;
use crate::process::ManagedProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What Kine logs once it serves the etcd API.
const SERVING_MARKER: &str = "Kine available at";

/// A running Kine serving the etcd v3 API in plaintext on 127.0.0.1.
#[derive(Debug)]
pub struct Kine {
    process: ManagedProcess,
    port: u16,
    dir: TempDir,
}

impl Kine {
    /// Kine on a fresh SQLite database in its temp dir.
    pub async fn start_sqlite() -> Kine {
        let dir = temp_dir();
        // Kine strips `sqlite://` and hands the rest to the driver: an absolute path, then the
        // options of Kine's own default DSN (without `cache=shared`, which its pure-Go SQLite
        // ignores). `_busy_timeout` is essential: without it Kine 0.17.5 loses concurrent
        // writes while reporting them committed, and kube-apiserver never becomes ready.
        let endpoint = format!(
            "sqlite://{}?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate",
            dir.path().join("state.db").display()
        );
        Self::start_with(dir, &endpoint).await
    }

    /// Kine on PostgreSQL, `url` as Kine takes it
    /// (`postgres://user:pass@127.0.0.1:N/database?sslmode=disable`, e.g.
    /// [`Postgres::admin_url`](crate::Postgres::admin_url)). Kine creates the database and its
    /// `kine` table when missing.
    pub async fn start_postgres(url: &str) -> Kine {
        Self::start_with(temp_dir(), url).await
    }

    async fn start_with(dir: TempDir, endpoint: &str) -> Kine {
        let port = free_port();
        let mut command = Command::new(&Binaries::get().kine);
        command
            .current_dir(dir.path())
            .arg(format!("--listen-address=127.0.0.1:{port}"))
            // Kine serves metrics on :8080 by default, which concurrent tests would fight over.
            .arg("--metrics-bind-address=0")
            // In the environment, not argv: a Postgres URL carries a password.
            .env("KINE_ENDPOINT", endpoint);
        let process = ManagedProcess::spawn("kine", command, dir.path().join("kine.log"));
        let kine = Kine { process, port, dir };
        kine.wait_ready().await;
        kine
    }

    async fn wait_ready(&self) {
        let port = self.port;
        let what = format!("Kine to serve on 127.0.0.1:{port}");
        let process = &self.process;
        process
            .wait_ready(READY_TIMEOUT, &what, async || {
                tcp_accepts(port).await?;
                // The port alone could belong to a restarted Kine's predecessor still closing;
                // the log line is written by this run once its database is set up.
                let last_start = process.log();
                let this_run = last_start.rsplit("==== hostplane-tests: starting").next();
                match this_run {
                    Some(run) if run.contains(SERVING_MARKER) => Ok(()),
                    _ => Err(format!("no {SERVING_MARKER:?} in the log yet")),
                }
            })
            .await;
    }

    /// The etcd client URL, `http://127.0.0.1:N`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port Kine listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding `kine.log` (and `state.db` for SQLite).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Kine process (for its pid, its log, or to kill it).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// Stops Kine (SIGTERM), for outage tests.
    pub fn stop(&mut self) {
        self.process.stop(Signal::SIGTERM, Duration::from_secs(15));
    }

    /// Starts Kine again on the same port and database; returns once it serves.
    pub async fn start_again(&mut self) {
        self.process.restart();
        self.wait_ready().await;
    }
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("hostplane-kine-")
        .tempdir()
        .expect("creating the Kine temp dir")
}
