//! A throwaway PostgreSQL server: its own data directory, a random superuser password, TCP on
//! one loopback port.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::Rng;
use rand::distr::Alphanumeric;
use tempfile::TempDir;

use crate::Durability;
use crate::binaries::postgres_bin_dir;
use crate::ports::free_port;
use crate::process::ManagedProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SUPERUSER: &str = "postgres";

/// A running PostgreSQL server on `127.0.0.1:port()`, superuser `postgres` with a random
/// password (scram-sha-256 over TCP; the Unix socket in the temp dir trusts local users).
///
/// Dropping it shuts the server down (immediate mode) and removes its data directory.
#[derive(Debug)]
pub struct Postgres {
    process: ManagedProcess,
    port: u16,
    password: String,
    dir: TempDir,
}

impl Postgres {
    /// initdb into a new temp dir and start the server; returns once `pg_isready` says it
    /// accepts connections. When the tests run as root, the server runs as the `postgres`
    /// user, since PostgreSQL refuses to run as root.
    pub async fn start() -> Postgres {
        Postgres::start_with(Durability::Fast).await
    }

    /// [`Postgres::start`] with the given durability: benchmarks that compare datastores start
    /// it [`Durability::Synced`], as a production Postgres runs.
    pub async fn start_with(durability: Durability) -> Postgres {
        let bin = postgres_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("hostplane-postgres-")
            .tempdir()
            .expect("creating the Postgres temp dir");
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir(&socket_dir).expect("creating the socket dir");
        let password: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let password_file = dir.path().join("superuser-password");
        std::fs::write(&password_file, format!("{password}\n")).expect("writing the pwfile");
        if let Some(user) = server_user() {
            for path in [dir.path(), &socket_dir, &password_file] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }

        let mut initdb = server_command(&bin.join("initdb"), dir.path());
        initdb
            .arg("--pgdata")
            .arg(&data_dir)
            .args(["--username", SUPERUSER])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["--encoding=UTF8", "--no-locale", "--no-sync"]);
        let output = tokio::process::Command::from(initdb)
            .output()
            .await
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::remove_file(&password_file).expect("removing the pwfile");

        let port = free_port();
        let mut server = server_command(&bin.join("postgres"), dir.path());
        server
            .arg("-D")
            .arg(&data_dir)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300"]);
        if durability == Durability::Fast {
            server
                .args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        let process = ManagedProcess::spawn("postgres", server, dir.path().join("postgres.log"));
        let postgres = Postgres {
            process,
            port,
            password,
            dir,
        };
        postgres.wait_ready().await;
        postgres
    }

    async fn wait_ready(&self) {
        let port = self.port.to_string();
        let what = format!("Postgres to accept connections on 127.0.0.1:{port}");
        self.process
            .wait_ready(READY_TIMEOUT, &what, async || {
                let output = tokio::process::Command::new(postgres_bin_dir().join("pg_isready"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port,
                        "-U",
                        SUPERUSER,
                        "-d",
                        "postgres",
                    ])
                    .args(["-t", "2"])
                    .output()
                    .await
                    .map_err(|e| format!("running pg_isready: {e}"))?;
                if output.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&output.stdout).trim().to_string())
                }
            })
            .await;
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Superuser DSN in key=value form, as tokio-postgres and libpq take it:
    /// `host=127.0.0.1 port=N user=postgres password=... dbname=postgres`.
    pub fn admin_dsn(&self) -> String {
        self.dsn_for_database("postgres")
    }

    /// Superuser DSN (key=value form) for another database on this server.
    pub fn dsn_for_database(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={} dbname={database}",
            self.port, self.password
        )
    }

    /// Superuser URL, the form Kine takes:
    /// `postgres://postgres:...@127.0.0.1:N/postgres?sslmode=disable`.
    pub fn admin_url(&self) -> String {
        self.url_for_database("postgres")
    }

    /// Superuser URL for another database on this server (Kine creates it when missing).
    pub fn url_for_database(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}?sslmode=disable",
            self.password, self.port
        )
    }

    /// The temp dir holding `data/`, `socket/` and `postgres.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server process (for its pid, its log, or to kill it).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// Shuts the server down (fast mode: clients are disconnected, data is kept), for outage
    /// tests. [`start_again`](Self::start_again) brings it back on the same port.
    pub fn stop(&mut self) {
        // SIGINT is PostgreSQL's "fast shutdown", what `pg_ctl stop -m fast` sends.
        self.process.stop(Signal::SIGINT, Duration::from_secs(30));
    }

    /// Starts the server again on the same port and data; returns once it accepts connections.
    pub async fn start_again(&mut self) {
        self.process.restart();
        self.wait_ready().await;
    }

    /// A superuser connection to database `postgres`, or the connection error.
    pub async fn try_client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.admin_dsn()).await
    }

    /// A superuser connection to database `postgres` (its connection task is spawned on the
    /// current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("connecting to Postgres on port {}: {e}", self.port))
    }

    /// Runs `sql` as the superuser in database `postgres` and returns the first column of every
    /// row as text (SQL NULL as an empty string).
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        let client = self.client().await;
        let messages = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"));
        messages
            .iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or_default().to_string())
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT is "immediate shutdown": the postmaster still stops its backends and frees its
        // shared memory, which a bare SIGKILL would leave behind.
        self.process.stop(Signal::SIGQUIT, Duration::from_secs(10));
    }
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Ends with an error when the server goes away, which outage tests cause on purpose.
        let _ = connection.await;
    });
    Ok(client)
}

/// The account PostgreSQL server programs run as when the tests run as root.
#[derive(Clone, Copy, Debug)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// `Some(postgres)` when this process runs as root, `None` otherwise (run as ourselves).
fn server_user() -> Option<ServerUser> {
    static USER: OnceLock<Option<ServerUser>> = OnceLock::new();
    *USER.get_or_init(|| {
        if id(&["-u"]) != 0 {
            return None;
        }
        Some(ServerUser {
            uid: id(&["-u", SUPERUSER]),
            gid: id(&["-g", SUPERUSER]),
        })
    })
}

fn id(args: &[&str]) -> u32 {
    let output = Command::new("id")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `id {}`: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "`id {}` failed: {} (PostgreSQL refuses to run as root; the harness runs it as the \
         `postgres` user, which `apt-get install postgresql` creates)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("`id` prints a number")
}

/// A command for a PostgreSQL server program, switched to the `postgres` user when we are root.
/// std's `uid`/`gid` make the program itself run as that user (also dropping root's
/// supplementary groups), so the process we track is the server and not a `runuser` wrapper.
fn server_command(program: &Path, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir);
    if let Some(user) = server_user() {
        command.uid(user.uid).gid(user.gid);
    }
    command
}
