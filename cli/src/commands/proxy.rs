//! `hostplane proxy`: one TLS port for every tenant, routed by SNI, TLS passed through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hostplane_proxy::routes::follow_controlplanes;
use hostplane_proxy::{ProxyConfig, ProxyMetrics, RouteMap, serve};

use super::controller::{DEFAULT_TENANT_DOMAIN, shutdown_signal};

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to accept tenant connections on.
    #[arg(long, env = "HOSTPLANE_PROXY_LISTEN", default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// Tenants are routed by the TLS server name NAME.DOMAIN.
    #[arg(long, env = "HOSTPLANE_TENANT_DOMAIN", default_value = DEFAULT_TENANT_DOMAIN)]
    pub tenant_domain: String,
    /// How long a client may take to send its TLS ClientHello, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub hello_timeout_ms: u64,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the host cluster (KUBECONFIG)")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let routes = Arc::new(RouteMap::new());
    tracing::info!(listen = %args.listen, domain = %args.tenant_domain, "proxy routing tenants by SNI");
    let watch = tokio::spawn(follow_controlplanes(
        client,
        args.tenant_domain,
        routes.clone(),
    ));
    let config = ProxyConfig {
        hello_timeout: Duration::from_millis(args.hello_timeout_ms),
        ..Default::default()
    };
    tokio::select! {
        _ = serve(listener, routes, config, Arc::new(ProxyMetrics::default())) => {}
        _ = shutdown_signal() => {}
    }
    watch.abort();
    Ok(())
}
