//! Controller configuration, parsed once by the binary and passed down.

use std::path::PathBuf;
use std::time::Duration;

/// Where people reach tenants: the SNI proxy's address and the domain under which each tenant
/// is named (`<name>.<domain>`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyAccess {
    /// host:port of the proxy as clients dial it.
    pub address: String,
    pub domain: String,
}

impl ProxyAccess {
    pub fn tenant_host(&self, name: &str) -> String {
        format!("{name}.{}", self.domain)
    }
}

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Root of the processes runtime: one directory per tenant.
    pub state_dir: PathBuf,
    /// Where `tools/upstream/build` put the upstream binaries.
    pub upstream_root: PathBuf,
    /// Admin DSN of the shared Postgres; without it tenants use Kine on SQLite (embedded default).
    pub postgres_dsn: Option<String>,
    /// Fraction of a handed-out token's life after which it is replaced (0.8 = at 80%).
    pub token_renew_fraction: f64,
    /// Every ControlPlane is reconciled at least this often (drift repair).
    pub resync: Duration,
    /// A Ready tenant's API server and datastore are checked this often, so that an outage
    /// turns Ready to False without waiting for a resync.
    pub health_interval: Duration,
    pub ca_validity: Duration,
    pub leaf_validity: Duration,
    /// How long one pass waits for a starting tenant API server before requeueing.
    pub startup_wait: Duration,
    /// ControlPlanes reconciled at once.
    pub concurrency: u16,
    /// When set, handed-out kubeconfigs point at the SNI proxy instead of the tenant directly.
    pub proxy: Option<ProxyAccess>,
    /// Tenants without `spec.hibernation.idleAfterSeconds` hibernate after this long without
    /// traffic through the proxy; `None` never.
    pub idle_after: Option<Duration>,
    /// A post-create hook's Jobs must complete within this time of its first apply.
    pub hook_timeout: Duration,
}

impl ControllerConfig {
    pub fn new(state_dir: PathBuf, upstream_root: PathBuf) -> Self {
        Self {
            state_dir,
            upstream_root,
            postgres_dsn: None,
            token_renew_fraction: 0.8,
            resync: Duration::from_secs(300),
            health_interval: Duration::from_secs(30),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            leaf_validity: Duration::from_secs(365 * 24 * 3600),
            startup_wait: Duration::from_secs(10),
            concurrency: 8,
            proxy: None,
            idle_after: None,
            hook_timeout: Duration::from_secs(600),
        }
    }
}
