use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hostplane_controller::build::pods::{self, PeerPods};
use hostplane_controller::config::{ControllerConfig, ProxyAccess, TenantRuntime};
use hostplane_controller::leader::{self, LeaderElector, LeaseConfig};
use hostplane_controller::limits::TenantLimits;
use hostplane_controller::provision::adopted;
use hostplane_controller::provision::etcd::SharedEtcdFiles;
use hostplane_controller::reconcile::{self, Context};
use hostplane_controller::upstream::default_upstream_root;

/// Settings shared by `controller` and `up`.
#[derive(Args, Debug, Clone)]
pub struct ControllerOptions {
    /// Directory for tenant state (processes runtime: one directory per tenant).
    #[arg(long, env = "HOSTPLANE_STATE_DIR", default_value_os_t = default_state_dir())]
    pub state_dir: PathBuf,
    /// Where tools/upstream/build put the upstream binaries (default ~/.cache/hostplane/bin).
    #[arg(long, env = "HOSTPLANE_UPSTREAM_BIN")]
    pub upstream_bin_dir: Option<PathBuf>,
    /// Admin DSN of the shared Postgres (`host=... user=... password=...` or `postgres://...`).
    /// Without it, tenants keep their state in Kine on SQLite.
    #[arg(long, env = "HOSTPLANE_POSTGRES_DSN", hide_env_values = true)]
    pub postgres_dsn: Option<String>,
    /// Replace a handed-out token after this fraction of its life.
    #[arg(long, env = "HOSTPLANE_TOKEN_RENEW_FRACTION", default_value_t = 0.8)]
    pub token_renew_fraction: f64,
    /// Reconcile every ControlPlane at least this often, in seconds (drift repair).
    #[arg(long, env = "HOSTPLANE_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Check a Ready tenant's API server and datastore this often, in seconds.
    #[arg(long, env = "HOSTPLANE_HEALTH_CHECK_SECONDS", default_value_t = 30)]
    pub health_check_seconds: u64,
    /// Lifetime of tenant leaf certificates, in seconds (CAs live ten years).
    #[arg(long, env = "HOSTPLANE_LEAF_CERT_SECONDS", default_value_t = 365 * 24 * 3600)]
    pub leaf_cert_seconds: u64,
    /// ControlPlanes reconciled at once.
    #[arg(long, env = "HOSTPLANE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Tenants (processes runtime) whose processes start at once; the rest wait their turn in
    /// the order they came. 0: one per CPU, since a starting kube-apiserver keeps a core busy.
    #[arg(long, env = "HOSTPLANE_MAX_STARTING_TENANTS", default_value_t = 0)]
    pub max_starting_tenants: usize,
    /// Address (host:port) of the SNI proxy as people dial it (`hostplane proxy`); when set,
    /// handed-out kubeconfigs point there and name their tenant by TLS server name.
    #[arg(long, env = "HOSTPLANE_PROXY_ADDRESS")]
    pub proxy_address: Option<String>,
    /// Domain under which tenants are named at the proxy: NAME.DOMAIN.
    #[arg(long, env = "HOSTPLANE_TENANT_DOMAIN", default_value = DEFAULT_TENANT_DOMAIN)]
    pub tenant_domain: String,
    /// Serve Prometheus /metrics and /healthz, /readyz on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "HOSTPLANE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Hibernate tenants after this many seconds without a connection through the proxy
    /// (processes stopped, data kept; the next connection wakes them). 0 never. A ControlPlane's
    /// spec.hibernation.idleAfterSeconds overrides it. Needs --proxy-address: the proxy is what
    /// sees the traffic.
    #[arg(long, env = "HOSTPLANE_IDLE_AFTER_SECONDS", default_value_t = 0)]
    pub idle_after_seconds: u64,
    /// Seconds a post-create hook's Jobs may take to complete before the hook is Failed.
    #[arg(long, env = "HOSTPLANE_HOOK_TIMEOUT_SECONDS", default_value_t = 600)]
    pub hook_timeout_seconds: u64,
    /// Seconds a worker Node removed by a scale-down is drained (pods evicted through the
    /// Eviction API, PodDisruptionBudgets respected) before its remaining pods are deleted.
    #[arg(
        long,
        env = "HOSTPLANE_NODE_DRAIN_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    pub node_drain_timeout_seconds: u64,
    /// URL of the host API server for people outside the host, put in the kubeconfigs of
    /// `type: host` ControlPlanes (default: the URL the controller itself uses).
    #[arg(long, env = "HOSTPLANE_HOST_SERVER_URL")]
    pub host_server_url: Option<String>,
    /// Seconds each stage of a tenant CA rotation (annotation tenancy.hostplane.io/rotate-ca)
    /// lasts before the next; 0 (default) waits the tenant's token lifetime, so that every
    /// kubeconfig handed out before the rotation has expired. Shorten only for tests.
    #[arg(
        long,
        env = "HOSTPLANE_CA_ROTATION_OVERLAP_SECONDS",
        default_value_t = 0
    )]
    pub ca_rotation_overlap_seconds: u64,
    /// Sample every tenant's usage (CPU, memory, datastore, API requests) this often, in
    /// seconds, into its status.usage (`hostplane usage`) and the hostplane_tenant_* metrics.
    /// 0 turns sampling off.
    #[arg(long, env = "HOSTPLANE_USAGE_INTERVAL_SECONDS", default_value_t = 30)]
    pub usage_interval_seconds: u64,
    /// Last: its help heading applies to the options after it.
    #[command(flatten)]
    pub shared_etcd: SharedEtcdOptions,
    /// After `shared_etcd`, with a heading of its own.
    #[command(flatten)]
    pub limits: TenantLimitOptions,
}

/// Defaults of `spec.limits`: what a tenant gets when its ControlPlane leaves a limit out.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Tenant limits")]
pub struct TenantLimitOptions {
    /// Bytes of live data (keys and values) a tenant may keep in its datastore; at the limit it
    /// turns read-only (creates and updates refused, condition QuotaExceeded) until it is below
    /// 95% of it again.
    #[arg(long, env = "HOSTPLANE_DEFAULT_MAX_STORAGE_BYTES", default_value_t = TenantLimits::default().max_storage_bytes, value_parser = clap::value_parser!(i64).range(1024 * 1024..))]
    pub default_max_storage_bytes: i64,
    /// The tenant API server's --max-requests-inflight (read-only requests at once).
    #[arg(long, env = "HOSTPLANE_DEFAULT_MAX_REQUESTS_INFLIGHT", default_value_t = TenantLimits::default().max_requests_inflight, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub default_max_requests_inflight: i32,
    /// The tenant API server's --max-mutating-requests-inflight.
    #[arg(long, env = "HOSTPLANE_DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT", default_value_t = TenantLimits::default().max_mutating_requests_inflight, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub default_max_mutating_requests_inflight: i32,
    /// Connections a tenant may hold to the shared Postgres: its role's CONNECTION LIMIT (its
    /// Kine's pool keeps a quarter of it free).
    #[arg(long, env = "HOSTPLANE_DEFAULT_MAX_DATASTORE_CONNECTIONS", default_value_t = TenantLimits::default().max_datastore_connections, value_parser = clap::value_parser!(i32).range(8..=1000))]
    pub default_max_datastore_connections: i32,
    /// Longest a tenant's datastore statement may run on the shared Postgres, in seconds (its
    /// role's statement_timeout).
    #[arg(long, env = "HOSTPLANE_DEFAULT_STATEMENT_TIMEOUT_SECONDS", default_value_t = TenantLimits::default().statement_timeout_seconds, value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub default_statement_timeout_seconds: i32,

    /// CPU each tenant's control plane processes may use together, in millicores (1000 = one
    /// core), unless its spec.limits.maxCpuMillicores says otherwise; unset: unlimited. Enforced
    /// with a cgroup per tenant (cgroup v2 cpu.max or v1 cpu.cfs_quota_us) by the processes
    /// runtime, as a CPU limit on the containers by the pods runtime.
    #[arg(long, env = "HOSTPLANE_DEFAULT_MAX_CPU_MILLICORES", value_parser = clap::value_parser!(i32).range(100..=256000))]
    pub default_max_cpu_millicores: Option<i32>,
}

impl TenantLimitOptions {
    fn limits(&self) -> TenantLimits {
        TenantLimits {
            max_storage_bytes: self.default_max_storage_bytes,
            max_requests_inflight: self.default_max_requests_inflight,
            max_mutating_requests_inflight: self.default_max_mutating_requests_inflight,
            max_datastore_connections: self.default_max_datastore_connections,
            statement_timeout_seconds: self.default_statement_timeout_seconds,
            max_cpu_millicores: self.default_max_cpu_millicores,
        }
    }
}

/// The shared etcd, for `backend: shared` tenants.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Shared etcd")]
pub struct SharedEtcdOptions {
    /// Comma-separated https:// client URLs of a shared etcd (auth enabled, client certificates
    /// required). When set, new `backend: shared` ControlPlanes live there instead of on the
    /// shared Postgres: each gets an etcd user `hp-<uid>` whose role may read and write only
    /// the prefix `/hostplane/<uid>/`, and a client certificate naming that user. Tenants
    /// created earlier stay where they are.
    #[arg(long, env = "HOSTPLANE_SHARED_ETCD_ENDPOINTS", requires_all = ["shared_etcd_ca_file", "shared_etcd_cert_file", "shared_etcd_key_file", "shared_etcd_client_ca_key"])]
    pub shared_etcd_endpoints: Option<String>,
    /// CA certificate (PEM) that signed the shared etcd's serving certificate.
    #[arg(long, env = "HOSTPLANE_SHARED_ETCD_CA_FILE")]
    pub shared_etcd_ca_file: Option<PathBuf>,
    /// Client certificate of the etcd `root` user (its common name is `root`), to manage tenant
    /// users, roles and keys.
    #[arg(long, env = "HOSTPLANE_SHARED_ETCD_CERT_FILE")]
    pub shared_etcd_cert_file: Option<PathBuf>,
    /// Key of --shared-etcd-cert-file.
    #[arg(long, env = "HOSTPLANE_SHARED_ETCD_KEY_FILE")]
    pub shared_etcd_key_file: Option<PathBuf>,
    /// CA certificate the shared etcd trusts for clients (its --trusted-ca-file), when it is
    /// not --shared-etcd-ca-file.
    #[arg(long, env = "HOSTPLANE_SHARED_ETCD_CLIENT_CA_FILE")]
    pub shared_etcd_client_ca_file: Option<PathBuf>,
    /// Key of that client CA: tenants' client certificates are signed with it.
    #[arg(long, env = "HOSTPLANE_SHARED_ETCD_CLIENT_CA_KEY")]
    pub shared_etcd_client_ca_key: Option<PathBuf>,
}

impl SharedEtcdOptions {
    fn files(&self) -> Option<SharedEtcdFiles> {
        Some(SharedEtcdFiles {
            endpoints: self.shared_etcd_endpoints.clone()?,
            ca_file: self.shared_etcd_ca_file.clone()?,
            cert_file: self.shared_etcd_cert_file.clone()?,
            key_file: self.shared_etcd_key_file.clone()?,
            client_ca_file: self.shared_etcd_client_ca_file.clone(),
            client_ca_key_file: self.shared_etcd_client_ca_key.clone()?,
        })
    }
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub options: ControllerOptions,
    #[command(flatten)]
    pub leader_election: LeaderElectionOptions,
    #[command(flatten)]
    pub runtime: RuntimeOptions,
}

/// Where tenant control planes run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Child processes of the controller, state under --state-dir; needs no kubelet.
    Processes,
    /// A Deployment and a Service per tenant in its <name>-system namespace of the host, fenced
    /// by a ResourceQuota, a LimitRange and NetworkPolicies; for running inside Kubernetes.
    Pods,
}

/// The tenant runtime, and the images and peers of the pods runtime.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Tenant runtime")]
pub struct RuntimeOptions {
    /// Where tenant control planes run: `processes` (local child processes) or `pods`
    /// (Deployments in the host; the tenant endpoint is https://<name>.<name>-system.svc:443).
    #[arg(long, env = "HOSTPLANE_RUNTIME", value_enum, default_value_t = RuntimeKind::Processes)]
    pub runtime: RuntimeKind,
    /// pods runtime: kube-apiserver image repository; the tag is the tenant's version (v1.37.2).
    #[arg(long, env = "HOSTPLANE_KUBE_APISERVER_IMAGE", default_value = pods::DEFAULT_KUBE_APISERVER_IMAGE)]
    pub kube_apiserver_image: String,
    /// pods runtime: kube-controller-manager image repository; tagged with the tenant's version.
    #[arg(long, env = "HOSTPLANE_KUBE_CONTROLLER_MANAGER_IMAGE", default_value = pods::DEFAULT_KUBE_CONTROLLER_MANAGER_IMAGE)]
    pub kube_controller_manager_image: String,
    /// pods runtime: kube-scheduler image repository (tenants with worker nodes); tagged with
    /// the tenant's version.
    #[arg(long, env = "HOSTPLANE_KUBE_SCHEDULER_IMAGE", default_value = pods::DEFAULT_KUBE_SCHEDULER_IMAGE)]
    pub kube_scheduler_image: String,
    /// pods runtime: full Kine image reference (repository:tag), the sidecar serving the
    /// tenant's datastore to its API server on the pod's loopback.
    #[arg(long, env = "HOSTPLANE_KINE_IMAGE", default_value = pods::DEFAULT_KINE_IMAGE)]
    pub kine_image: String,
    /// pods runtime: full etcd image reference (repository:tag) of a dedicated etcd
    /// (`backend: dedicated`), run as a StatefulSet `<name>-etcd`.
    #[arg(long, env = "HOSTPLANE_ETCD_IMAGE", default_value = pods::DEFAULT_ETCD_IMAGE)]
    pub etcd_image: String,
    /// pods runtime: size of a dedicated etcd's PersistentVolumeClaim.
    #[arg(long, env = "HOSTPLANE_ETCD_STORAGE_SIZE", default_value = pods::DEFAULT_ETCD_STORAGE_SIZE)]
    pub etcd_storage_size: String,
    /// pods runtime: StorageClass of a dedicated etcd's PersistentVolumeClaim (default: the
    /// host's default StorageClass).
    #[arg(long, env = "HOSTPLANE_ETCD_STORAGE_CLASS")]
    pub etcd_storage_class: Option<String>,
    /// pods runtime: namespace of the hostplane controller and proxy pods, which tenants'
    /// NetworkPolicies admit (default: the controller's own namespace, else hostplane-system).
    #[arg(long, env = "HOSTPLANE_NAMESPACE")]
    pub hostplane_namespace: Option<String>,
    /// pods runtime: labels (k=v,k=v) of the hostplane controller and proxy pods, which
    /// tenants' NetworkPolicies admit.
    #[arg(
        long,
        env = "HOSTPLANE_POD_LABELS",
        default_value = "app.kubernetes.io/name=hostplane,app.kubernetes.io/component=controller"
    )]
    pub hostplane_pod_labels: String,
}

impl RuntimeOptions {
    pub fn apply(&self, config: &mut ControllerConfig) -> anyhow::Result<()> {
        config.runtime = match self.runtime {
            RuntimeKind::Processes => TenantRuntime::Processes,
            RuntimeKind::Pods => TenantRuntime::Pods,
        };
        let images = &mut config.pods.images;
        images.kube_apiserver = self.kube_apiserver_image.clone();
        images.kube_controller_manager = self.kube_controller_manager_image.clone();
        images.kube_scheduler = self.kube_scheduler_image.clone();
        images.kine = self.kine_image.clone();
        images.etcd = self.etcd_image.clone();
        config.pods.etcd_storage_size = self.etcd_storage_size.clone();
        config.pods.etcd_storage_class = self.etcd_storage_class.clone();
        let mut labels = std::collections::BTreeMap::new();
        for pair in self
            .hostplane_pod_labels
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--hostplane-pod-labels: {pair:?} is not key=value"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let namespace = self
            .hostplane_namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
            })
            .unwrap_or_else(|| "hostplane-system".into());
        // The chart runs the proxy in the controller's pods.
        let peers = PeerPods { namespace, labels };
        config.pods.proxy = peers.clone();
        config.pods.controller = peers;
        Ok(())
    }
}

/// Leader election, for running several replicas of the controller of which one reconciles.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Leader election")]
pub struct LeaderElectionOptions {
    /// Reconcile only while holding a coordination.k8s.io Lease, so that of several replicas
    /// exactly one acts and a standby takes over when it dies. Off for local use; the Helm
    /// chart turns it on. Until elected, /readyz answers 503 and hostplane_leader is 0.
    #[arg(long, env = "HOSTPLANE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace from its service account, else
    /// `default`).
    #[arg(long, env = "HOSTPLANE_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease; replicas that share it elect one leader among themselves.
    #[arg(
        long,
        env = "HOSTPLANE_LEADER_ELECTION_ID",
        default_value = "hostplane-controller"
    )]
    pub leader_election_id: String,
    /// Seconds a Lease stays valid after its last renewal: how long standbys wait before
    /// taking over from a leader that died without releasing it.
    #[arg(long, env = "HOSTPLANE_LEADER_ELECTION_LEASE_DURATION_SECONDS", default_value_t = leader::DEFAULT_LEASE_DURATION.as_secs())]
    pub leader_election_lease_duration_seconds: u64,
    /// Seconds the leader keeps trying to renew before it gives up leading and exits; must be
    /// shorter than the lease duration so it stops before a standby may start.
    #[arg(long, env = "HOSTPLANE_LEADER_ELECTION_RENEW_DEADLINE_SECONDS", default_value_t = leader::DEFAULT_RENEW_DEADLINE.as_secs())]
    pub leader_election_renew_deadline_seconds: u64,
    /// Seconds between attempts to acquire (standbys) or renew (leader) the Lease; after a
    /// graceful shutdown releases the Lease, a standby takes over within this time.
    #[arg(long, env = "HOSTPLANE_LEADER_ELECTION_RETRY_PERIOD_SECONDS", default_value_t = leader::DEFAULT_RETRY_PERIOD.as_secs())]
    pub leader_election_retry_period_seconds: u64,
}

/// Where Kubernetes tells a pod its namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl LeaderElectionOptions {
    pub fn lease_config(&self) -> anyhow::Result<LeaseConfig> {
        let namespace = self
            .leader_election_namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
            })
            .unwrap_or_else(|| "default".into());
        let config = LeaseConfig {
            namespace,
            name: self.leader_election_id.clone(),
            identity: leader::default_identity(),
            lease_duration: Duration::from_secs(self.leader_election_lease_duration_seconds),
            renew_deadline: Duration::from_secs(self.leader_election_renew_deadline_seconds),
            retry_period: Duration::from_secs(self.leader_election_retry_period_seconds),
        };
        config.validate().context("leader election settings")?;
        Ok(config)
    }
}

pub const DEFAULT_TENANT_DOMAIN: &str = "tenants.hostplane.local";

pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/hostplane"),
        None => PathBuf::from("/var/lib/hostplane"),
    }
}

impl ControllerOptions {
    pub fn config(&self) -> anyhow::Result<ControllerConfig> {
        anyhow::ensure!(
            self.token_renew_fraction > 0.0 && self.token_renew_fraction < 1.0,
            "--token-renew-fraction must be between 0 and 1"
        );
        let mut config = ControllerConfig::new(
            self.state_dir.clone(),
            self.upstream_bin_dir
                .clone()
                .unwrap_or_else(default_upstream_root),
        );
        config.postgres_dsn = self.postgres_dsn.clone();
        config.shared_etcd = self.shared_etcd.files();
        config.token_renew_fraction = self.token_renew_fraction;
        config.resync = Duration::from_secs(self.resync_seconds.max(1));
        config.health_interval = Duration::from_secs(self.health_check_seconds.max(1));
        config.leaf_validity = Duration::from_secs(self.leaf_cert_seconds.max(60));
        config.concurrency = self.concurrency.max(1);
        if self.max_starting_tenants > 0 {
            config.max_starting_tenants = self.max_starting_tenants;
        }
        config.proxy = self.proxy_address.clone().map(|address| ProxyAccess {
            address,
            domain: self.tenant_domain.clone(),
        });
        config.idle_after =
            Some(Duration::from_secs(self.idle_after_seconds)).filter(|d| !d.is_zero());
        config.hook_timeout = Duration::from_secs(self.hook_timeout_seconds.max(1));
        config.node_drain_timeout = Duration::from_secs(self.node_drain_timeout_seconds);
        config.ca_rotation_overlap =
            Some(Duration::from_secs(self.ca_rotation_overlap_seconds)).filter(|d| !d.is_zero());
        config.usage_interval =
            Some(Duration::from_secs(self.usage_interval_seconds)).filter(|d| !d.is_zero());
        config.default_limits = self.limits.limits();
        Ok(config)
    }
}

/// Starts the metrics endpoint when asked for; a port in use is an error at start, not later.
pub async fn serve_metrics(options: &ControllerOptions, ctx: &Context) -> anyhow::Result<()> {
    if let Some(addr) = options.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        drop(listener);
        let metrics = ctx.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = hostplane_controller::metrics::serve(addr, metrics).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    Ok(())
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let mut config = args.options.config()?;
    args.runtime.apply(&mut config)?;
    let lease = args
        .leader_election
        .leader_elect
        .then(|| args.leader_election.lease_config())
        .transpose()?;
    let host = kube::Config::infer()
        .await
        .context("connecting to the host cluster (KUBECONFIG)")?;
    config.host_access = adopted::host_access(&host, args.options.host_server_url.as_deref());
    let client =
        kube::Client::try_from(host).context("connecting to the host cluster (KUBECONFIG)")?;
    let ctx = Arc::new(
        Context::new(client, config)
            .map_err(|e| anyhow::anyhow!(e))
            .context("controller configuration")?,
    );
    let Some(lease) = lease else {
        serve_metrics(&args.options, &ctx).await?;
        // Tenant processes keep running when the controller stops: the next controller adopts them.
        reconcile::run(ctx, shutdown_signal()).await;
        return Ok(());
    };
    ctx.metrics.leader.set(0);
    serve_metrics(&args.options, &ctx).await?;
    run_elected(ctx, lease).await
}

/// Reconciles only while holding the Lease. SIGTERM stops new passes, lets running ones finish,
/// then releases the Lease so a standby takes over at its next retry instead of after expiry.
async fn run_elected(ctx: Arc<Context>, lease: LeaseConfig) -> anyhow::Result<()> {
    // One signal handler, observed both while standing by and while leading.
    let (terminate, terminated) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing running passes");
        terminate.send_replace(true);
    });
    let on_shutdown = move || {
        let mut terminated = terminated.clone();
        async move {
            let _ = terminated.wait_for(|stop| *stop).await;
        }
    };

    let elector = LeaderElector::new(ctx.client.clone(), lease).context("leader election")?;
    tracing::info!(
        lease = %format!("{}/{}", elector.config().namespace, elector.config().name),
        identity = %elector.config().identity,
        "waiting to be elected leader before reconciling"
    );
    tokio::select! {
        () = elector.acquire() => {}
        () = on_shutdown() => {
            tracing::info!("shut down while standing by");
            // An acquisition cut short may still have been written: give it back.
            release(&elector).await;
            return Ok(());
        }
    }
    ctx.metrics.leader.set(1);

    tokio::select! {
        () = reconcile::run(ctx.clone(), on_shutdown()) => {}
        lost = elector.hold() => {
            // Another instance may reconcile from now on: stop every pass at once, as client-go
            // does, rather than race it. The supervisor (Deployment) starts a fresh standby.
            ctx.metrics.leader.set(0);
            tracing::error!(reason = %lost, "leadership lost: exiting at once");
            std::process::exit(1);
        }
    }
    ctx.metrics.leader.set(0);
    release(&elector).await;
    Ok(())
}

/// Gives the Lease back if we hold it. Bounded: a host API server that does not answer must not
/// keep the pod terminating; standbys then take over when the Lease expires.
async fn release(elector: &LeaderElector) {
    let budget = elector.config().renew_deadline;
    match tokio::time::timeout(budget, elector.release()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot release the Lease; standbys take over when it expires")
        }
        Err(_) => {
            tracing::warn!("releasing the Lease timed out; standbys take over when it expires")
        }
    }
}
