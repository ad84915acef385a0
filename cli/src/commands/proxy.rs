//! `hostplane proxy`: one TLS port for every tenant, routed by SNI, TLS passed through; beside
//! it the HTTPS kubeconfig download endpoint and, when asked for, Prometheus metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hostplane_controller::config::ProxyAccess;
use hostplane_controller::download::{
    DownloadConfig, DownloadMetrics, DownloadServer, ServingCert,
};
use hostplane_proxy::routes::{follow_controlplanes, report_activity};
use hostplane_proxy::{ProxyConfig, ProxyMetrics, Relay, RouteMap, serve};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

use super::controller::{DEFAULT_TENANT_DOMAIN, default_state_dir, shutdown_signal};

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
    /// How often the tenants that had connections are reported to the controller (annotation
    /// tenancy.hostplane.io/last-activity); idle tenants hibernate.
    #[arg(
        long,
        env = "HOSTPLANE_ACTIVITY_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    pub activity_interval_seconds: u64,
    /// How long a connection to a hibernated tenant is held while the tenant wakes, in seconds.
    #[arg(long, env = "HOSTPLANE_WAKE_TIMEOUT_SECONDS", default_value_t = 30)]
    pub wake_timeout_seconds: u64,
    /// How relayed bytes are moved: `splice` (zero-copy through a kernel pipe, Linux; falls back
    /// to copying where unavailable) or `copy` (through a 64 KiB buffer per direction).
    #[arg(long, env = "HOSTPLANE_PROXY_RELAY", default_value = "splice", value_parser = ["splice", "copy"])]
    pub relay: String,
    /// Address (host:port) of this proxy as people dial it, written into downloaded
    /// kubeconfigs (default: --listen).
    #[arg(long, env = "HOSTPLANE_PROXY_ADDRESS")]
    pub proxy_address: Option<String>,
    #[command(flatten)]
    pub download: DownloadOptions,
    /// Serve the proxy's Prometheus /metrics and /healthz on this address.
    #[arg(long, env = "HOSTPLANE_PROXY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The HTTPS kubeconfig download endpoint (shared by `proxy` and `up`).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Kubeconfig download")]
pub struct DownloadOptions {
    /// Serve GET /controlplanes/NAME/kubeconfig over HTTPS on this address; callers present a
    /// host bearer token and need RBAC `get` on `controlplanes/kubeconfig`.
    #[arg(
        long,
        env = "HOSTPLANE_DOWNLOAD_LISTEN",
        default_value = "127.0.0.1:9444"
    )]
    pub download_listen: SocketAddr,
    /// Do not serve kubeconfig downloads.
    #[arg(long, env = "HOSTPLANE_NO_DOWNLOAD")]
    pub no_download: bool,
    /// PEM certificate (chain) of the download endpoint; without it one is generated at start.
    #[arg(
        long,
        env = "HOSTPLANE_DOWNLOAD_TLS_CERT",
        requires = "download_tls_key"
    )]
    pub download_tls_cert: Option<PathBuf>,
    /// PEM private key of --download-tls-cert.
    #[arg(
        long,
        env = "HOSTPLANE_DOWNLOAD_TLS_KEY",
        requires = "download_tls_cert"
    )]
    pub download_tls_key: Option<PathBuf>,
    /// Where the CA of a generated certificate is written, for clients (`--ca-file`).
    /// Default: download-ca.crt in the hostplane state directory.
    #[arg(long, env = "HOSTPLANE_DOWNLOAD_CA_FILE")]
    pub download_ca_file: Option<PathBuf>,
}

impl DownloadOptions {
    /// The endpoint's configuration; `also_named` are names clients may dial it by (the proxy
    /// address's host), added to a generated certificate.
    pub fn config(&self, proxy: Option<ProxyAccess>, also_named: &[&str]) -> DownloadConfig {
        let serving = match (&self.download_tls_cert, &self.download_tls_key) {
            (Some(cert), Some(key)) => ServingCert::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => {
                let mut names = Vec::new();
                let listen_ip = self.download_listen.ip();
                if !listen_ip.is_unspecified() {
                    names.push(listen_ip.to_string());
                }
                names.extend(
                    ["127.0.0.1", "localhost"]
                        .iter()
                        .chain(also_named)
                        .map(|n| n.to_string()),
                );
                names.sort();
                names.dedup();
                ServingCert::Generated {
                    names,
                    ca_file: self
                        .download_ca_file
                        .clone()
                        .unwrap_or_else(|| default_state_dir().join("download-ca.crt")),
                }
            }
        };
        DownloadConfig {
            listen: self.download_listen,
            serving,
            proxy,
        }
    }

    /// Binds the endpoint (a port in use is an error at start, not later).
    pub async fn bind(
        &self,
        client: kube::Client,
        proxy: Option<ProxyAccess>,
        also_named: &[&str],
        metrics: DownloadMetrics,
    ) -> anyhow::Result<Option<DownloadServer>> {
        if self.no_download {
            return Ok(None);
        }
        let server = DownloadServer::bind(self.config(proxy, also_named), client, metrics)
            .await
            .context("starting the kubeconfig download endpoint")?;
        Ok(Some(server))
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the host cluster (KUBECONFIG)")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let proxy_address = args.proxy_address.clone().unwrap_or_else(|| {
        if args.listen.ip().is_unspecified() {
            let loopback = SocketAddr::from(([127, 0, 0, 1], args.listen.port()));
            tracing::warn!(
                listen = %args.listen,
                "no --proxy-address: downloaded kubeconfigs point at {loopback}, which only \
                 this machine can dial"
            );
            loopback.to_string()
        } else {
            args.listen.to_string()
        }
    });
    let access = ProxyAccess {
        address: proxy_address.clone(),
        domain: args.tenant_domain.clone(),
    };

    let proxy_metrics = ProxyMetrics::default();
    let download_metrics = DownloadMetrics::default();
    let mut registry = Registry::with_prefix("hostplane");
    proxy_metrics.register(&mut registry);
    download_metrics.register(&mut registry);
    if let Some(addr) = args.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tokio::spawn(serve_metrics(metrics_listener, Arc::new(registry)));
    }
    let download = args
        .download
        .bind(
            client.clone(),
            Some(access),
            &[host_of(&proxy_address)],
            download_metrics,
        )
        .await?;
    if let Some(server) = &download {
        let addr = server.local_addr()?;
        match server.ca_file() {
            Some(ca) => eprintln!(
                "kubeconfig downloads: hostplane kubeconfig NAME --url https://{addr} --ca-file {}",
                ca.display()
            ),
            None => {
                eprintln!("kubeconfig downloads: hostplane kubeconfig NAME --url https://{addr}")
            }
        }
    }
    let download = tokio::spawn(async move {
        if let Some(server) = download {
            server.serve().await;
        }
    });

    let routes = Arc::new(RouteMap::new());
    tracing::info!(listen = %args.listen, domain = %args.tenant_domain, "proxy routing tenants by SNI");
    let watch = tokio::spawn(follow_controlplanes(
        client.clone(),
        args.tenant_domain,
        routes.clone(),
        proxy_metrics.clone(),
    ));
    let activity = tokio::spawn(report_activity(
        client,
        routes.clone(),
        Duration::from_secs(args.activity_interval_seconds.max(1)),
    ));
    let config = ProxyConfig {
        hello_timeout: Duration::from_millis(args.hello_timeout_ms),
        wake_timeout: Duration::from_secs(args.wake_timeout_seconds),
        relay: match args.relay.as_str() {
            "copy" => Relay::Copy,
            _ => Relay::Splice,
        },
        ..Default::default()
    };
    tokio::select! {
        _ = serve(listener, routes, config, Arc::new(proxy_metrics)) => {}
        _ = shutdown_signal() => {}
    }
    watch.abort();
    activity.abort();
    download.abort();
    Ok(())
}

fn plain(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves `/metrics` (the registry, OpenMetrics text) and `/healthz` until the process ends.
async fn serve_metrics(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    tracing::info!(addr = ?listener.local_addr().ok(), "serving proxy /metrics and /healthz");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/metrics" => {
                            let mut text = String::new();
                            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                                Ok(()) => plain(
                                    StatusCode::OK,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    text,
                                ),
                                Err(e) => plain(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "text/plain",
                                    format!("encoding metrics: {e}\n"),
                                ),
                            }
                        }
                        "/healthz" | "/livez" | "/readyz" => {
                            plain(StatusCode::OK, "text/plain", "ok".into())
                        }
                        _ => plain(
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "not found: try /metrics or /healthz\n".into(),
                        ),
                    })
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_address_drops_its_port() {
        assert_eq!(host_of("proxy.example.com:9443"), "proxy.example.com");
        assert_eq!(host_of("127.0.0.1:9443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9443"), "::1");
        assert_eq!(host_of("proxy"), "proxy");
    }
}
