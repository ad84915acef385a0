use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hostplane_controller::config::{ControllerConfig, ProxyAccess};
use hostplane_controller::leader::{self, LeaderElector, LeaseConfig};
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
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub options: ControllerOptions,
    #[command(flatten)]
    pub leader_election: LeaderElectionOptions,
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
        config.token_renew_fraction = self.token_renew_fraction;
        config.resync = Duration::from_secs(self.resync_seconds.max(1));
        config.health_interval = Duration::from_secs(self.health_check_seconds.max(1));
        config.leaf_validity = Duration::from_secs(self.leaf_cert_seconds.max(60));
        config.concurrency = self.concurrency.max(1);
        config.proxy = self.proxy_address.clone().map(|address| ProxyAccess {
            address,
            domain: self.tenant_domain.clone(),
        });
        config.idle_after =
            Some(Duration::from_secs(self.idle_after_seconds)).filter(|d| !d.is_zero());
        config.hook_timeout = Duration::from_secs(self.hook_timeout_seconds.max(1));
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
    let config = args.options.config()?;
    let lease = args
        .leader_election
        .leader_elect
        .then(|| args.leader_election.lease_config())
        .transpose()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the host cluster (KUBECONFIG)")?;
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
