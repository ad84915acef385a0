//! Integration-test harness: real upstream servers on loopback, no mocks.
//!
//! Every server ([`Postgres`], [`Etcd`], [`Kine`], [`KubeApiserver`]) runs as a child process on
//! free 127.0.0.1 ports, in a temp dir of its own that holds its data and its log. Start
//! functions return only once the server is really ready (`pg_isready`, etcd `/readyz`, Kine
//! serving, apiserver `/readyz`), never after a fixed sleep. Dropping a handle stops the server
//! and removes its temp dir — also when the test panics, and then the last lines of each
//! server's log are printed so the failure shows what the servers said.
//!
//! Upstream binaries come from `tools/upstream/build` (see [`Binaries`]); PostgreSQL from the
//! distribution (`apt-get install postgresql`). Missing programs fail the test with a message
//! saying how to install them; nothing is skipped silently.
//!
//! ```no_run
//! # async fn example() {
//! use hostplane_tests::{Postgres, start_apiserver_on_kine_postgres};
//! let postgres = Postgres::start().await;
//! let api = start_apiserver_on_kine_postgres(&postgres).await;
//! let namespaces = api.run_kubectl(&["get", "ns"]).expect_success("kubectl get ns");
//! assert!(namespaces.contains("default"));
//! # }
//! ```

mod apiserver;
mod binaries;
mod command;
mod etcd;
mod kine;
pub mod load;
pub mod node_bootstrap;
mod ports;
mod postgres;
mod probe;
mod process;
mod wait;

pub use apiserver::{
    KubeApiserver, Storage, start_apiserver_on_etcd, start_apiserver_on_kine_postgres,
    start_apiserver_on_kine_sqlite,
};
pub use binaries::{Binaries, kubevirt_check, postgres_bin_dir};
pub use command::{CommandOutput, run_command};
pub use etcd::{Etcd, EtcdTls};
pub use kine::Kine;
pub use ports::free_port;
pub use postgres::Postgres;
pub use probe::{http_get, tcp_accepts};
pub use process::ManagedProcess;
pub use wait::{wait_for, wait_until};

/// Whether a datastore the harness starts syncs its writes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// No fsync: tests lose nothing they care about on a machine crash, and fsync only slows
    /// them.
    Fast,
    /// fsync on every commit, as a production Postgres or etcd runs: what a benchmark comparing
    /// datastores must use on every side.
    Synced,
}
