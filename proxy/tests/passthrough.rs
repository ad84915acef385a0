//! The proxy between real TLS clients and a real TLS backend on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostplane_proxy::metrics::UNKNOWN_TENANT;
use hostplane_proxy::{ProxyConfig, ProxyMetrics, Relay, Route, RouteMap, RouteState, serve};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Longest any step of these tests may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A tenant's API server stand-in: TLS with its own certificate, echoing every byte.
struct TlsBackend {
    addr: SocketAddr,
    certificate: CertificateDer<'static>,
    certificate_pem: String,
}

impl TlsBackend {
    async fn start(names: &[&str], reply: BackendReply) -> Self {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let issued = rcgen::generate_simple_self_signed(names).unwrap();
        let certificate = issued.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    match reply {
                        BackendReply::Echo => {
                            let (mut reader, mut writer) = tokio::io::split(tls);
                            let _ = tokio::io::copy(&mut reader, &mut writer).await;
                            let _ = writer.shutdown().await;
                        }
                        BackendReply::Http => {
                            let mut request = Vec::new();
                            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                                if tls.read_buf(&mut request).await.unwrap_or(0) == 0 {
                                    return;
                                }
                            }
                            let response = "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\
                                            connection: close\r\n\r\nhello tenant";
                            let _ = tls.write_all(response.as_bytes()).await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            certificate,
            certificate_pem: issued.cert.pem(),
        }
    }
}

#[derive(Clone, Copy)]
enum BackendReply {
    Echo,
    Http,
}

struct Proxy {
    addr: SocketAddr,
    routes: Arc<RouteMap>,
    metrics: Arc<ProxyMetrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(config: ProxyConfig) -> Self {
        // Shows the proxy's connection spans and warnings with a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("hostplane_proxy=debug")
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(RouteMap::new());
        let metrics = Arc::new(ProxyMetrics::default());
        let task = tokio::spawn(serve(listener, routes.clone(), config, metrics.clone()));
        Self {
            addr,
            routes,
            metrics,
            task,
        }
    }

    /// Waits until every connection is closed on the proxy's side too.
    async fn wait_idle(&self) {
        let deadline = Instant::now() + PATIENCE;
        while self.metrics.active_connections() != 0 {
            assert!(Instant::now() < deadline, "connections stay open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn connector(trusted: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    proxy: SocketAddr,
    server_name: &str,
    trusted: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    tokio::time::timeout(PATIENCE, connector(trusted).connect(name, tcp))
        .await
        .expect("TLS handshake hung")
}

async fn echo_round_trip(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, text: &[u8]) {
    tls.write_all(text).await.unwrap();
    let mut echoed = vec![0; text.len()];
    tokio::time::timeout(PATIENCE, tls.read_exact(&mut echoed))
        .await
        .expect("echo hung")
        .unwrap();
    assert_eq!(echoed, text);
}

/// Reads until the proxy closes the connection; returns what came and how long it took.
async fn read_until_closed(tcp: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the proxy left the connection open");
    (received, started.elapsed())
}

#[tokio::test]
async fn tls_passes_through_to_the_tenant_backend() {
    let backend = TlsBackend::start(&["acme.example"], BackendReply::Echo).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;
    proxy.routes.insert("acme.example", backend.addr);

    let mut tls = tls_connect(proxy.addr, "acme.example", &backend.certificate)
        .await
        .expect("handshake through the proxy");
    // The client verified the backend's own certificate: the proxy did not terminate.
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.peer_certificates().unwrap().first(),
        Some(&backend.certificate)
    );
    echo_round_trip(&mut tls, b"GET /api HTTP/1.1\r\n\r\n").await;
    echo_round_trip(&mut tls, &[7; 100_000]).await;
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    drop(tls);
    proxy.wait_idle().await;

    let metrics = &proxy.metrics;
    assert_eq!(metrics.connections("routed", "ok"), 1);
    assert!(metrics.bytes("acme.example", "in") > 100_000);
    assert!(metrics.bytes("acme.example", "out") > 100_000);

    let text = metrics_text(metrics);
    assert!(text.contains(
        r#"hostplane_proxy_connections_total{tenant="acme.example",result="routed",reason="ok"} 1"#
    ));
    assert!(
        text.contains(r#"hostplane_proxy_bytes_total{server_name="acme.example",direction="in"}"#)
    );
    assert!(text.contains("hostplane_proxy_active_connections 0"));
}

/// A pods-runtime tenant's endpoint is its Service's host name: the proxy resolves it at connect.
#[tokio::test]
async fn a_backend_named_by_host_name_is_resolved_and_relayed() {
    let backend = TlsBackend::start(&["svc.example"], BackendReply::Echo).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;
    let named = hostplane_proxy::Backend::parse(&format!("localhost:{}", backend.addr.port()))
        .expect("a host:port authority");
    assert!(
        matches!(named, hostplane_proxy::Backend::Name { .. }),
        "{named:?}"
    );
    proxy.routes.insert("svc.example", named);

    let mut tls = tls_connect(proxy.addr, "svc.example", &backend.certificate)
        .await
        .expect("handshake through the proxy to a named backend");
    echo_round_trip(&mut tls, b"GET /api HTTP/1.1\r\n\r\n").await;
    drop(tls);
    proxy.wait_idle().await;
    assert_eq!(proxy.metrics.connections("routed", "ok"), 1);
}

#[tokio::test]
async fn unknown_server_name_is_closed_and_counted() {
    let backend = TlsBackend::start(&["acme.example", "other.example"], BackendReply::Echo).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;
    proxy.routes.insert("acme.example", backend.addr);

    let refused = tls_connect(proxy.addr, "other.example", &backend.certificate).await;
    assert!(refused.is_err(), "handshake for an unrouted name succeeded");
    proxy.wait_idle().await;
    assert_eq!(
        proxy.metrics.connections("rejected", "unknown_server_name"),
        1
    );
    assert_eq!(proxy.metrics.errors("unknown_server_name"), 1);
    assert_eq!(proxy.metrics.connections("routed", "ok"), 0);
}

#[tokio::test]
async fn plain_http_is_closed_and_counted() {
    let proxy = Proxy::start(ProxyConfig::default()).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: acme.example\r\n\r\n")
        .await
        .unwrap();
    let (received, _) = read_until_closed(&mut tcp).await;
    assert!(received.is_empty());
    proxy.wait_idle().await;
    assert_eq!(proxy.metrics.connections("rejected", "plain_http"), 1);
}

#[tokio::test]
async fn silent_client_is_closed_after_the_hello_timeout() {
    let timeout = Duration::from_millis(300);
    let proxy = Proxy::start(ProxyConfig {
        hello_timeout: timeout,
        ..ProxyConfig::default()
    })
    .await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // Half a hello, then nothing: the timeout covers the whole hello, not each read.
    let hello = std::fs::read(vector_path("curl.bin")).unwrap();
    tcp.write_all(&hello[..100]).await.unwrap();
    let (received, waited) = read_until_closed(&mut tcp).await;
    assert!(received.is_empty());
    assert!(waited >= timeout - Duration::from_millis(50), "{waited:?}");
    proxy.wait_idle().await;
    assert_eq!(proxy.metrics.connections("rejected", "hello_timeout"), 1);
}

#[tokio::test]
async fn route_added_at_run_time_is_used_without_restart() {
    let backend = TlsBackend::start(&["late.example"], BackendReply::Echo).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;

    let before = tls_connect(proxy.addr, "late.example", &backend.certificate).await;
    assert!(before.is_err());

    proxy.routes.insert("late.example", backend.addr);
    let mut tls = tls_connect(proxy.addr, "late.example", &backend.certificate)
        .await
        .expect("handshake after the route was added");
    echo_round_trip(&mut tls, b"hello").await;
    drop(tls);

    proxy.routes.remove("late.example");
    let after = tls_connect(proxy.addr, "late.example", &backend.certificate).await;
    assert!(after.is_err());
    proxy.wait_idle().await;
    assert_eq!(
        proxy.metrics.connections("rejected", "unknown_server_name"),
        2
    );
    assert_eq!(proxy.metrics.connections("routed", "ok"), 1);
}

#[tokio::test]
async fn unreachable_backend_is_counted() {
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(ProxyConfig::default()).await;
    proxy.routes.insert("acme.example", closed);
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&std::fs::read(vector_path("rustls.bin")).unwrap())
        .await
        .unwrap();
    read_until_closed(&mut tcp).await;
    proxy.wait_idle().await;
    assert_eq!(
        proxy
            .metrics
            .connections("backend_unavailable", "backend_connect"),
        1
    );
}

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// A backend that reads until the client half-closes, then sends back everything.
async fn start_collecting_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut received = Vec::new();
                if tcp.read_to_end(&mut received).await.is_ok() {
                    let _ = tcp.write_all(&received).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn hello_read_in_pieces_is_replayed_exactly_and_half_close_works() {
    replay_and_half_close(Relay::Splice).await;
}

/// The copy relay (the fallback when no pipe can be made) keeps the same contract.
#[tokio::test]
async fn copy_relay_replays_exactly_and_half_close_works() {
    replay_and_half_close(Relay::Copy).await;
}

async fn replay_and_half_close(relay: Relay) {
    let backend = start_collecting_backend().await;
    let proxy = Proxy::start(ProxyConfig {
        relay,
        ..ProxyConfig::default()
    })
    .await;
    proxy.routes.insert("acme.example", backend);

    // The post-quantum hello, re-framed into two records, arriving in three reads.
    let hello = std::fs::read(vector_path("kubectl-two-records.bin")).unwrap();
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for piece in [&hello[..3], &hello[3..710], &hello[710..]] {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tcp.write_all(b"after the hello").await.unwrap();
    // The client is done sending; the backend's answer must still come through.
    tcp.shutdown().await.unwrap();
    let (received, _) = read_until_closed(&mut tcp).await;
    assert_eq!(received, [&hello[..], b"after the hello"].concat());
    proxy.wait_idle().await;
    assert_eq!(proxy.metrics.connections("routed", "ok"), 1);
    let expected = u64::try_from(hello.len() + 15).unwrap();
    assert_eq!(proxy.metrics.bytes("acme.example", "in"), expected);
    assert_eq!(proxy.metrics.bytes("acme.example", "out"), expected);
}

/// curl, a client we did not write, through the proxy.
#[tokio::test]
async fn curl_reaches_the_tenant_through_the_proxy() {
    assert!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok(),
        "curl is required for this test: apt-get install curl (scripts/deps installs it)"
    );
    let backend = TlsBackend::start(&["acme.example"], BackendReply::Http).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;
    proxy.routes.insert("acme.example", backend.addr);
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &backend.certificate_pem).unwrap();

    let port = proxy.addr.port();
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .arg("--resolve")
        .arg(format!("acme.example:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca.path())
        .arg(format!("https://acme.example:{port}/"))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"hello tenant");
    proxy.wait_idle().await;
    assert_eq!(proxy.metrics.connections("routed", "ok"), 1);
}

/// Slowloris: clients that send part of a hello and stall, or trickle it byte by byte,
/// are cut at the hello timeout, not before; clients arriving meanwhile are served at
/// once.
#[tokio::test]
async fn stalled_hellos_are_cut_at_the_timeout_while_others_are_served() {
    const STALLED: usize = 20;
    const SERVED: usize = 10;
    let timeout = Duration::from_secs(2);
    let backend = TlsBackend::start(&["acme.example"], BackendReply::Echo).await;
    let proxy = Proxy::start(ProxyConfig {
        hello_timeout: timeout,
        ..ProxyConfig::default()
    })
    .await;
    proxy.routes.insert("acme.example", backend.addr);
    let hello = std::fs::read(vector_path("curl.bin")).unwrap();

    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..STALLED {
        let half = hello[..hello.len() / 2].to_vec();
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        stalled.spawn(async move {
            tcp.write_all(&half).await.unwrap();
            read_until_closed(&mut tcp).await
        });
    }
    // Busy but never done: a byte every 20 ms would take 10 s for the whole hello.
    let mut trickling = TcpStream::connect(proxy.addr).await.unwrap();
    trickling.set_nodelay(true).unwrap();
    let trickled = hello.clone();
    let trickler = tokio::spawn(async move {
        let started = Instant::now();
        for byte in trickled {
            if trickling.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The write after the close may still succeed (the proxy's socket buffer);
        // the close shows as the end of the stream.
        let (received, _) = read_until_closed(&mut trickling).await;
        (received, started.elapsed())
    });

    let serving = Instant::now();
    let mut served = tokio::task::JoinSet::new();
    for i in 0..SERVED {
        let (addr, certificate) = (proxy.addr, backend.certificate.clone());
        served.spawn(async move {
            let started = Instant::now();
            let mut tls = tls_connect(addr, "acme.example", &certificate)
                .await
                .expect("handshake beside the stalled clients");
            echo_round_trip(&mut tls, format!("client {i}").as_bytes()).await;
            started.elapsed()
        });
    }
    while let Some(took) = served.join_next().await {
        let took = took.unwrap();
        assert!(took < Duration::from_secs(1), "served after {took:?}");
    }
    let all_served = serving.elapsed();
    assert!(
        all_served < timeout,
        "others waited for the stalled: {all_served:?}"
    );
    assert_eq!(proxy.metrics.connections("rejected", "hello_timeout"), 0);

    while let Some(result) = stalled.join_next().await {
        let (received, waited) = result.unwrap();
        assert!(received.is_empty());
        // The proxy's clock started at accept, a moment before ours.
        assert!(
            waited >= timeout - Duration::from_millis(50),
            "cut early: {waited:?}"
        );
        assert!(
            waited < timeout + Duration::from_secs(2),
            "cut late: {waited:?}"
        );
    }
    let (received, trickled_for) = trickler.await.unwrap();
    assert!(received.is_empty());
    assert!(
        trickled_for >= timeout - Duration::from_millis(50)
            && trickled_for < timeout + Duration::from_secs(2),
        "trickling client cut after {trickled_for:?}"
    );
    proxy.wait_idle().await;
    let metrics = &proxy.metrics;
    assert_eq!(
        metrics.connections("rejected", "hello_timeout"),
        u64::try_from(STALLED + 1).unwrap()
    );
    assert_eq!(
        metrics.connections("routed", "ok"),
        u64::try_from(SERVED).unwrap()
    );
}

/// The proxy's metrics as a person reads them on /metrics.
fn metrics_text(metrics: &ProxyMetrics) -> String {
    let mut registry = Registry::with_prefix("hostplane");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// The rejected connections that reached no tenant, as on /metrics: reason → count.
fn rejected_by_reason(metrics: &ProxyMetrics) -> std::collections::BTreeMap<String, u64> {
    let text = metrics_text(metrics);
    let prefix = r#"hostplane_proxy_connections_total{tenant="unknown",result="rejected",reason=""#;
    text.lines()
        .filter_map(|line| {
            let (reason, count) = line.strip_prefix(prefix)?.split_once(r#""} "#)?;
            Some((reason.to_string(), count.parse().unwrap()))
        })
        .collect()
}

/// A burst of connections that are not routable TLS: each is closed, counted by its
/// reason, and the proxy goes on serving.
#[tokio::test]
async fn burst_of_garbage_connections_is_counted_by_reason() {
    const EACH: usize = 25;
    let backend = TlsBackend::start(&["acme.example"], BackendReply::Echo).await;
    let proxy = Proxy::start(ProxyConfig::default()).await;
    proxy.routes.insert("acme.example", backend.addr);

    // Deterministic random bytes (xorshift), so a failure can be replayed.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random_bytes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    };

    let mut burst = tokio::task::JoinSet::new();
    for i in 0..EACH {
        let addr = proxy.addr;
        burst.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let request = format!("GET /api/{i} HTTP/1.1\r\nHost: acme.example\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.unwrap();
            read_until_closed(&mut tcp).await.0
        });
        let noise = random_bytes(1 + i * 40);
        burst.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            // The proxy may close before taking it all; that is its answer.
            let _ = tcp.write_all(&noise).await;
            let _ = tcp.shutdown().await;
            read_until_closed(&mut tcp).await.0
        });
        // A real TLS client addressing an IP literal sends no SNI at all.
        let certificate = backend.certificate.clone();
        burst.spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let ip = rustls::pki_types::ServerName::from(addr.ip());
            let refused = tokio::time::timeout(PATIENCE, connector(&certificate).connect(ip, tcp))
                .await
                .expect("TLS handshake hung");
            assert!(refused.is_err(), "handshake without SNI succeeded");
            Vec::new()
        });
        // Opened and closed without a byte, as a health check does.
        burst.spawn(async move {
            drop(TcpStream::connect(addr).await.unwrap());
            Vec::new()
        });
    }
    while let Some(received) = burst.join_next().await {
        assert!(received.unwrap().is_empty(), "the proxy answered garbage");
    }
    proxy.wait_idle().await;

    let rejected = rejected_by_reason(&proxy.metrics);
    let each = u64::try_from(EACH).unwrap();
    assert_eq!(rejected.get("plain_http"), Some(&each), "{rejected:?}");
    assert_eq!(rejected.get("no_sni"), Some(&each), "{rejected:?}");
    // The noise and the empty connections end in whichever reason their bytes give,
    // but every one of them is counted.
    assert_eq!(rejected.values().sum::<u64>(), 4 * each, "{rejected:?}");
    assert!(rejected.get("client_closed") >= Some(&each), "{rejected:?}");
    assert_eq!(proxy.metrics.connections("routed", "ok"), 0);

    // Still serving.
    let mut tls = tls_connect(proxy.addr, "acme.example", &backend.certificate)
        .await
        .expect("handshake after the burst");
    echo_round_trip(&mut tls, b"still here").await;
}

/// Connections and errors are counted per tenant, named by the route (the ControlPlane), never by
/// what a client put in SNI: names without a route all count as `unknown`.
#[tokio::test]
async fn connections_and_errors_are_counted_per_tenant_of_the_route() {
    let backend =
        TlsBackend::start(&["acme.example", "stranger.example"], BackendReply::Echo).await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(ProxyConfig::default()).await;
    let route = |backend: std::net::SocketAddr, tenant: &str, state| Route {
        backend: backend.into(),
        tenant: tenant.to_string(),
        state,
    };
    proxy.routes.insert_route(
        "acme.example",
        route(backend.addr, "acme", RouteState::Awake),
    );
    proxy
        .routes
        .insert_route("gone.example", route(closed, "gone", RouteState::Awake));
    proxy.routes.insert_route(
        "asleep.example",
        route(backend.addr, "asleep", RouteState::Paused),
    );

    let mut tls = tls_connect(proxy.addr, "acme.example", &backend.certificate)
        .await
        .expect("handshake through the proxy");
    echo_round_trip(&mut tls, b"hello").await;
    drop(tls);
    for refused in [
        "stranger.example",
        "other.stranger.example",
        "gone.example",
        "asleep.example",
    ] {
        let answer = tls_connect(proxy.addr, refused, &backend.certificate).await;
        assert!(answer.is_err(), "{refused} was served");
    }
    proxy.wait_idle().await;

    let metrics = &proxy.metrics;
    assert_eq!(metrics.tenant_connections("acme", "routed", "ok"), 1);
    assert_eq!(
        metrics.tenant_connections(UNKNOWN_TENANT, "rejected", "unknown_server_name"),
        2
    );
    assert_eq!(
        metrics.tenant_errors(UNKNOWN_TENANT, "unknown_server_name"),
        2
    );
    assert_eq!(
        metrics.tenant_connections("gone", "backend_unavailable", "backend_connect"),
        1
    );
    assert_eq!(metrics.tenant_errors("gone", "backend_connect"), 1);
    assert_eq!(
        metrics.tenant_connections("asleep", "backend_unavailable", "tenant_paused"),
        1
    );
    assert_eq!(metrics.tenant_errors("asleep", "tenant_paused"), 1);
    assert_eq!(metrics.connections("routed", "ok"), 1);
    assert_eq!(metrics.errors("backend_connect"), 1);

    let text = metrics_text(metrics);
    for series in [
        r#"hostplane_proxy_connections_total{tenant="acme",result="routed",reason="ok"} 1"#,
        r#"hostplane_proxy_connections_total{tenant="unknown",result="rejected",reason="unknown_server_name"} 2"#,
        r#"hostplane_proxy_connections_total{tenant="gone",result="backend_unavailable",reason="backend_connect"} 1"#,
        r#"hostplane_proxy_connections_total{tenant="asleep",result="backend_unavailable",reason="tenant_paused"} 1"#,
        r#"hostplane_proxy_errors_total{tenant="unknown",reason="unknown_server_name"} 2"#,
        r#"hostplane_proxy_errors_total{tenant="gone",reason="backend_connect"} 1"#,
        r#"hostplane_proxy_errors_total{tenant="asleep",reason="tenant_paused"} 1"#,
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    // A client's made-up names never become label values.
    assert!(!text.contains("stranger"), "{text}");
}

/// A connection for a hibernated tenant that never wakes asks once for a wake-up, is held for
/// the wake timeout and no longer, then closed and counted; its backend never sees it.
#[tokio::test]
async fn a_tenant_that_never_wakes_holds_its_connection_only_for_the_wake_timeout() {
    let wake_timeout = Duration::from_millis(300);
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(ProxyConfig {
        wake_timeout,
        ..ProxyConfig::default()
    })
    .await;
    let wakes = Arc::new(Mutex::new(Vec::new()));
    let asked = wakes.clone();
    proxy.routes.set_waker(Arc::new(move |tenant: &str| {
        asked.lock().unwrap().push(tenant.to_string());
    }));
    proxy.routes.insert_route(
        "acme.example",
        Route {
            backend: backend.local_addr().unwrap().into(),
            tenant: "sleepy".into(),
            state: RouteState::Hibernated,
        },
    );

    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&std::fs::read(vector_path("rustls.bin")).unwrap())
        .await
        .unwrap();
    let (received, held) = read_until_closed(&mut tcp).await;
    assert!(received.is_empty());
    // The proxy's clock starts once it has the hello, a moment after our write.
    assert!(
        held >= wake_timeout - Duration::from_millis(50),
        "closed early: {held:?}"
    );
    assert!(
        held < wake_timeout + Duration::from_secs(1),
        "held too long: {held:?}"
    );
    proxy.wait_idle().await;

    assert_eq!(*wakes.lock().unwrap(), ["sleepy"], "one wake request");
    let metrics = &proxy.metrics;
    assert_eq!(metrics.wakes("sleepy"), 1);
    assert_eq!(
        metrics.tenant_connections("sleepy", "backend_unavailable", "wake_timeout"),
        1
    );
    assert_eq!(metrics.tenant_errors("sleepy", "wake_timeout"), 1);
    assert_eq!(metrics.connections("routed", "ok"), 0);
    let text = metrics_text(metrics);
    assert!(
        text.contains(r#"hostplane_proxy_wakes_total{tenant="sleepy"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"hostplane_proxy_errors_total{tenant="sleepy",reason="wake_timeout"} 1"#),
        "{text}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(100), backend.accept()).await;
    assert!(
        accepted.is_err(),
        "the backend of a sleeping tenant was dialled"
    );
}
