//! The passthrough: read the ClientHello under a timeout, pick the backend by its
//! server name, replay the bytes read, then relay both ways. TLS is never terminated.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::client_hello::{
    HelloError, MAX_CLIENT_HELLO_BYTES, Parsed, ServerName, parse_client_hello,
};
use crate::metrics::{DIRECTION_IN, DIRECTION_OUT, ProxyMetrics};
use crate::table::ActivityGuard;
pub use crate::table::{Route, RouteMap, RouteState};

/// Settings of the passthrough.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long a client may take to send its whole ClientHello. It bounds the
    /// whole hello, not each read, so a client trickling bytes cannot hold a
    /// connection open.
    pub hello_timeout: Duration,
    /// How long connecting to a backend may take.
    pub connect_timeout: Duration,
    /// How long a connection for a hibernated or starting tenant is held waiting for it to be
    /// ready, before it is closed.
    pub wake_timeout: Duration,
    /// How the bytes of a routed connection are moved.
    pub relay: Relay,
}

/// How a routed connection's bytes are moved between client and backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Relay {
    /// splice(2) through a pipe per direction, the bytes never leaving the kernel (Linux with the
    /// `splice` feature; elsewhere, or when no pipe can be made, the copy relay).
    #[default]
    Splice,
    /// Read into a buffer and write it out, [`RELAY_BUFFER_BYTES`] per direction.
    Copy,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            wake_timeout: Duration::from_secs(30),
            relay: Relay::default(),
        }
    }
}

/// Buffer per direction of a relayed connection. tokio's default of 8 KiB caps bulk throughput
/// at about half of a direct connection on 2 cores (one small read and write per 8 KiB);
/// 64 KiB measured 1.39× the 8 KiB throughput (bench `proxy`), for 128 KiB per open connection.
const RELAY_BUFFER_BYTES: usize = 64 * 1024;

/// Pause after a failed accept (out of file descriptors, say), so that the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections and proxies each on its own task, until this future is
/// dropped. Connections already accepted go on after that.
pub async fn serve(
    listener: TcpListener,
    routes: Arc<RouteMap>,
    config: ProxyConfig,
    metrics: Arc<ProxyMetrics>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a connection failed");
                metrics.count_error(None, "accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let span = info_span!(
            "connection",
            %peer,
            server_name = field::Empty,
            backend = field::Empty
        );
        let connection = proxy_connection(client, routes.clone(), config.clone(), metrics.clone());
        tokio::spawn(connection.instrument(span));
    }
}

/// Why a connection was closed before it was relayed.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("no complete ClientHello within {0:?}")]
    HelloTimeout(Duration),
    #[error("client closed the connection after {bytes} bytes, before a complete ClientHello")]
    ClientClosed { bytes: usize },
    #[error("reading the ClientHello failed: {0}")]
    ClientIo(io::Error),
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("ClientHello longer than the {MAX_CLIENT_HELLO_BYTES}-byte buffer")]
    BufferFull,
    #[error("no route for server name {0}")]
    UnknownServerName(ServerName),
    #[error("tenant {0} is paused (spec.hibernation.paused)")]
    Paused(String),
    #[error("tenant {tenant} did not wake within {timeout:?}")]
    WakeTimeout { tenant: String, timeout: Duration },
    #[error("connecting to the backend of tenant {tenant} failed: {error}")]
    BackendConnect { tenant: String, error: io::Error },
    #[error("connecting to the backend of tenant {tenant} took longer than {timeout:?}")]
    BackendConnectTimeout { tenant: String, timeout: Duration },
}

impl Rejection {
    fn result(&self) -> &'static str {
        match self {
            Self::BackendConnect { .. }
            | Self::BackendConnectTimeout { .. }
            | Self::Paused(_)
            | Self::WakeTimeout { .. } => "backend_unavailable",
            _ => "rejected",
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::HelloTimeout(_) => "hello_timeout",
            Self::ClientClosed { .. } => "client_closed",
            Self::ClientIo(_) => "client_io",
            Self::Hello(error) => error.reason(),
            Self::BufferFull => "hello_buffer_full",
            Self::UnknownServerName(_) => "unknown_server_name",
            Self::Paused(_) => "tenant_paused",
            Self::WakeTimeout { .. } => "wake_timeout",
            Self::BackendConnect { .. } => "backend_connect",
            Self::BackendConnectTimeout { .. } => "backend_connect_timeout",
        }
    }

    /// The tenant whose route the connection found, if it got that far.
    fn tenant(&self) -> Option<&str> {
        match self {
            Self::Paused(tenant)
            | Self::WakeTimeout { tenant, .. }
            | Self::BackendConnect { tenant, .. }
            | Self::BackendConnectTimeout { tenant, .. } => Some(tenant),
            Self::HelloTimeout(_)
            | Self::ClientClosed { .. }
            | Self::ClientIo(_)
            | Self::Hello(_)
            | Self::BufferFull
            | Self::UnknownServerName(_) => None,
        }
    }
}

/// A connection with its backend, ready to be relayed.
struct Routed {
    server_name: ServerName,
    /// The ControlPlane's name, from the route.
    tenant: String,
    backend: TcpStream,
    _activity: ActivityGuard,
}

async fn proxy_connection(
    mut client: TcpStream,
    routes: Arc<RouteMap>,
    config: ProxyConfig,
    metrics: Arc<ProxyMetrics>,
) {
    let _active = metrics.track_active();
    let mut hello = Vec::with_capacity(2048);
    let routed = route(&mut client, &mut hello, &routes, &config, &metrics).await;
    let Routed {
        server_name,
        tenant,
        mut backend,
        _activity,
    } = match routed {
        Ok(routed) => routed,
        Err(rejection) => {
            let reason = rejection.reason();
            metrics.count_connection(rejection.tenant(), rejection.result(), reason);
            metrics.count_error(rejection.tenant(), reason);
            // Load-balancer health checks open and close without a byte: not worth
            // a warning.
            if matches!(rejection, Rejection::ClientClosed { bytes: 0 }) {
                debug!(reason, "connection closed: {rejection}");
            } else {
                warn!(reason, "connection closed: {rejection}");
            }
            return;
        }
    };
    metrics.count_connection(Some(&tenant), "routed", "ok");
    debug!("routing");
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);

    let bytes_in = metrics.traffic(server_name.as_str(), DIRECTION_IN);
    let bytes_out = metrics.traffic(server_name.as_str(), DIRECTION_OUT);
    // The backend must see the connection from its first byte: replay what was read.
    if let Err(error) = backend.write_all(&hello).await {
        metrics.count_error(Some(&tenant), "backend_write");
        warn!(reason = "backend_write", %error, "replaying the ClientHello failed");
        return;
    }
    bytes_in.inc_by(hello.len() as u64);
    drop(hello);

    match relay(client, &mut backend, config.relay, bytes_in, bytes_out).await {
        Ok((sent, received)) => debug!(sent, received, "connection finished"),
        Err(error) => {
            metrics.count_error(Some(&tenant), "relay_io");
            debug!(reason = "relay_io", %error, "connection ended with an error");
        }
    }
}

/// Relays both ways until both directions ended. Each direction is shut down for writing when
/// the other side ends it, and the other direction goes on: a half-closed TLS connection keeps
/// working. Bytes from the client count as `bytes_in`, to it as `bytes_out`, as they pass.
async fn relay(
    mut client: TcpStream,
    backend: &mut TcpStream,
    relay: Relay,
    bytes_in: Counter,
    bytes_out: Counter,
) -> io::Result<(u64, u64)> {
    #[cfg(all(feature = "splice", target_os = "linux"))]
    if relay == Relay::Splice {
        match crate::splice::Pipe::new().and_then(|up| Ok([up, crate::splice::Pipe::new()?])) {
            Ok(pipes) => {
                return crate::splice::relay(&mut client, backend, pipes, &bytes_in, &bytes_out)
                    .await;
            }
            Err(error) => debug!(%error, "no pipe for splice; copying instead"),
        }
    }
    #[cfg(not(all(feature = "splice", target_os = "linux")))]
    let _ = relay;
    let mut client = CountingStream {
        inner: client,
        read: bytes_in,
        written: bytes_out,
    };
    tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        backend,
        RELAY_BUFFER_BYTES,
        RELAY_BUFFER_BYTES,
    )
    .await
}

/// Reads the ClientHello and connects to the backend it names, waking a hibernated tenant first.
async fn route(
    client: &mut TcpStream,
    hello: &mut Vec<u8>,
    routes: &Arc<RouteMap>,
    config: &ProxyConfig,
    metrics: &ProxyMetrics,
) -> Result<Routed, Rejection> {
    let server_name = tokio::time::timeout(config.hello_timeout, read_server_name(client, hello))
        .await
        .map_err(|_| Rejection::HelloTimeout(config.hello_timeout))??;
    let span = tracing::Span::current();
    span.record("server_name", server_name.as_str());
    let route = routes
        .route(server_name.as_str())
        .ok_or_else(|| Rejection::UnknownServerName(server_name.clone()))?;
    // Counted from here: a connection waiting for its tenant to wake is traffic too.
    let activity = routes.connection_opened(&route.tenant);
    let backend_addr = match route.state {
        RouteState::Awake => route.backend,
        RouteState::Paused => return Err(Rejection::Paused(route.tenant)),
        RouteState::Hibernated | RouteState::Starting => {
            let started = std::time::Instant::now();
            if route.state == RouteState::Hibernated {
                info!(tenant = %route.tenant, "waking hibernated tenant");
                metrics.count_wake(&route.tenant);
                routes.request_wake(&route.tenant);
            }
            let backend = routes
                .wait_awake(server_name.as_str(), config.wake_timeout)
                .await
                .ok_or_else(|| Rejection::WakeTimeout {
                    tenant: route.tenant.clone(),
                    timeout: config.wake_timeout,
                })?;
            metrics.observe_wait(started.elapsed());
            info!(tenant = %route.tenant, waited_ms = started.elapsed().as_millis() as u64, "tenant awake; relaying");
            backend
        }
    };
    span.record("backend", field::display(&backend_addr));
    let backend = tokio::time::timeout(config.connect_timeout, backend_addr.connect())
        .await
        .map_err(|_| Rejection::BackendConnectTimeout {
            tenant: route.tenant.clone(),
            timeout: config.connect_timeout,
        })?
        .map_err(|error| Rejection::BackendConnect {
            tenant: route.tenant.clone(),
            error,
        })?;
    Ok(Routed {
        server_name,
        tenant: route.tenant,
        backend,
        _activity: activity,
    })
}

/// Reads into `hello` until the parser decides. The buffer never grows past
/// [`MAX_CLIENT_HELLO_BYTES`]; the parser always decides before that.
async fn read_server_name(
    client: &mut TcpStream,
    hello: &mut Vec<u8>,
) -> Result<ServerName, Rejection> {
    loop {
        match parse_client_hello(hello)? {
            Parsed::Found(server_name) => return Ok(server_name),
            Parsed::NeedMore => {}
        }
        let room = MAX_CLIENT_HELLO_BYTES.saturating_sub(hello.len());
        if room == 0 {
            return Err(Rejection::BufferFull);
        }
        let read = (&mut *client)
            .take(room as u64)
            .read_buf(hello)
            .await
            .map_err(Rejection::ClientIo)?;
        if read == 0 {
            return Err(Rejection::ClientClosed { bytes: hello.len() });
        }
    }
}

/// The client's side of a relayed connection, counting the bytes as they pass, so
/// that long-lived connections (watches) show up in the metrics while they last.
struct CountingStream {
    inner: TcpStream,
    read: Counter,
    written: Counter,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len().saturating_sub(before);
        self.read.inc_by(read as u64);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written.inc_by(written as u64);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
