use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hostplane_controller::config::{ControllerConfig, ProxyAccess};
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
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub options: ControllerOptions,
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
    let client = kube::Client::try_default()
        .await
        .context("connecting to the host cluster (KUBECONFIG)")?;
    let ctx = Arc::new(
        Context::new(client, config)
            .map_err(|e| anyhow::anyhow!(e))
            .context("controller configuration")?,
    );
    serve_metrics(&args.options, &ctx).await?;
    // Tenant processes keep running when the controller stops: the next controller adopts them.
    reconcile::run(ctx, shutdown_signal()).await;
    Ok(())
}
