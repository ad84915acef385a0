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

/// How people reach the host API server: what a `type: host` ControlPlane hands out.
#[derive(Clone, Debug, PartialEq)]
pub struct HostAccess {
    /// The URL the controller itself uses (also what workloads inside the host use).
    pub url: String,
    /// The URL for people outside the host (`--host-server-url`); `url` when unset.
    pub external_url: String,
    /// The CA bundle (PEM) that verifies the host API server's serving certificate.
    pub ca_pem: String,
}

/// Where tenant control planes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TenantRuntime {
    /// Supervised child processes of the controller (embedded default; needs no kubelet).
    #[default]
    Processes,
    /// Deployments and Services in each tenant's `<cp>-system` namespace of the host.
    Pods,
}

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Where tenant control planes run.
    pub runtime: TenantRuntime,
    /// Images, resources and isolation of the pods runtime.
    pub pods: crate::build::pods::PodsConfig,
    /// Root of the processes runtime: one directory per tenant.
    pub state_dir: PathBuf,
    /// Where `tools/upstream/build` put the upstream binaries.
    pub upstream_root: PathBuf,
    /// Admin DSN of the shared Postgres; without it tenants use Kine on SQLite (embedded default).
    pub postgres_dsn: Option<String>,
    /// The shared etcd: when set, new `backend: shared` tenants live there (each confined to its
    /// key prefix) instead of on the shared Postgres.
    pub shared_etcd: Option<crate::provision::etcd::SharedEtcdFiles>,
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
    /// Tenants of the processes runtime starting at once (see `runtime::start_gate`).
    pub max_starting_tenants: usize,
    /// When set, handed-out kubeconfigs point at the SNI proxy instead of the tenant directly.
    pub proxy: Option<ProxyAccess>,
    /// Tenants without `spec.hibernation.idleAfterSeconds` hibernate after this long without
    /// traffic through the proxy; `None` never.
    pub idle_after: Option<Duration>,
    /// A post-create hook's Jobs must complete within this time of its first apply.
    pub hook_timeout: Duration,
    /// How long a retiring worker Node is drained (pods evicted, PodDisruptionBudgets
    /// respected) before its remaining pods are deleted regardless.
    pub node_drain_timeout: Duration,
    /// The host API server as `type: host` ControlPlanes hand it out; `None` when the controller
    /// could not tell (such ControlPlanes then get a condition saying so).
    pub host_access: Option<HostAccess>,
    /// How long a CA rotation waits in each stage (see `pki::rotation`); `None` waits a
    /// tenant's token lifetime, so that every kubeconfig handed out before it has expired.
    pub ca_rotation_overlap: Option<Duration>,
    /// Tenants' usage (`status.usage`, `hostplane_tenant_*` metrics) is sampled this often;
    /// `None` never.
    pub usage_interval: Option<Duration>,
    /// Limits of tenants whose `spec.limits` leaves them out.
    pub default_limits: crate::limits::TenantLimits,
}

impl ControllerConfig {
    pub fn new(state_dir: PathBuf, upstream_root: PathBuf) -> Self {
        Self {
            runtime: TenantRuntime::Processes,
            pods: crate::build::pods::PodsConfig::default(),
            state_dir,
            upstream_root,
            postgres_dsn: None,
            shared_etcd: None,
            token_renew_fraction: 0.8,
            resync: Duration::from_secs(300),
            health_interval: Duration::from_secs(30),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            leaf_validity: Duration::from_secs(365 * 24 * 3600),
            startup_wait: Duration::from_secs(10),
            concurrency: 8,
            max_starting_tenants: default_max_starting_tenants(),
            proxy: None,
            idle_after: None,
            hook_timeout: Duration::from_secs(600),
            node_drain_timeout: Duration::from_secs(300),
            host_access: None,
            ca_rotation_overlap: None,
            usage_interval: Some(Duration::from_secs(30)),
            default_limits: crate::limits::TenantLimits::default(),
        }
    }
}

/// One starting tenant per CPU: a starting kube-apiserver keeps about one core busy, so more at
/// once only makes each of them slower.
pub fn default_max_starting_tenants() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
