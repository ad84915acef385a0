//! `proxy`: the SNI passthrough against a direct connection and against HAProxy, side by side.
//!
//! One TLS backend (tokio-rustls, self-signed certificate) on loopback, reached three ways in the
//! same run: (a) directly, (b) through hostplane's `serve` on its own 2-thread runtime (as the
//! `hostplane proxy` process has), (c) through Debian's HAProxy in TCP mode routing by
//! `req_ssl_sni`. Each run measures every mode once, in a rotating order, and the medians over
//! the runs are reported, with the ratios taken per run (paired) before the median.
//!
//! Workloads, each a full TLS session from client to backend (TLS is passed through):
//! - bulk: one connection downloads `transfer` bytes; MB/s.
//! - round trips: small requests and responses over persistent connections, one in flight at a
//!   time; p50/p99 of each round trip.
//! - handshakes: new connection + TLS 1.3 handshake (no resumption, as kubectl does) + one small
//!   round trip; p50/p99.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostplane_proxy::{ProxyConfig, ProxyMetrics, RouteMap, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::median;

/// The server name every client asks for; both proxies route it to the backend.
const SERVER_NAME: &str = "bench.example";
/// Request and response sizes of a small round trip (a `GET` of a small object, roughly).
const SMALL_REQUEST: usize = 256;
const SMALL_RESPONSE: usize = 1024;
/// Longest one workload of one mode may take before the benchmark gives up.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(300);
/// Chunk size the backend writes and the client reads in the bulk download.
const CHUNK: usize = 64 * 1024;

/// How much work each mode does in each run.
pub struct Workload {
    pub runs: usize,
    pub transfer_bytes: u64,
    pub round_trips: usize,
    pub connections: usize,
    pub handshakes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Hostplane,
    Haproxy,
}

const MODES: [Mode; 3] = [Mode::Direct, Mode::Hostplane, Mode::Haproxy];

impl Mode {
    fn index(self) -> usize {
        match self {
            Mode::Direct => 0,
            Mode::Hostplane => 1,
            Mode::Haproxy => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Hostplane => "hostplane",
            Mode::Haproxy => "HAProxy",
        }
    }
}

/// One mode's figures in one run.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    mb_per_s: f64,
    round_trip_p50_us: f64,
    round_trip_p99_us: f64,
    handshake_p50_us: f64,
    handshake_p99_us: f64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The backend: each request is an 8-byte header (request body length, response length, both
/// big-endian u32) and the body; the answer is that many bytes.
async fn start_backend() -> anyhow::Result<(SocketAddr, CertificateDer<'static>)> {
    let issued = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let certificate = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = answer_requests(tls).await;
                }
            });
        }
    });
    Ok((addr, certificate))
}

async fn answer_requests(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
) -> std::io::Result<()> {
    let zeros = vec![0u8; CHUNK];
    let mut body = vec![0u8; CHUNK];
    loop {
        let mut header = [0u8; 8];
        match tls.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (request, response) = header.split_at(4);
        let mut request = u32::from_be_bytes(request.try_into().unwrap_or_default()) as usize;
        let mut response = u32::from_be_bytes(response.try_into().unwrap_or_default()) as usize;
        while request > 0 {
            let n = request.min(CHUNK);
            tls.read_exact(&mut body[..n]).await?;
            request -= n;
        }
        while response > 0 {
            let n = response.min(CHUNK);
            tls.write_all(&zeros[..n]).await?;
            response -= n;
        }
        tls.flush().await?;
    }
}

struct Client {
    connector: TlsConnector,
    request: Vec<u8>,
}

impl Client {
    fn new(trusted: &CertificateDer<'static>) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        roots.add(trusted.clone())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every handshake is a full one, as kubectl's (Go keeps no session cache by default).
        config.resumption = Resumption::disabled();
        let mut request = Vec::with_capacity(8 + SMALL_REQUEST);
        request.extend_from_slice(&(SMALL_REQUEST as u32).to_be_bytes());
        request.extend_from_slice(&(SMALL_RESPONSE as u32).to_be_bytes());
        request.resize(8 + SMALL_REQUEST, b'r');
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            request,
        })
    }

    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME)?;
        Ok(self.connector.connect(name, tcp).await?)
    }

    async fn round_trip(&self, tls: &mut TlsStream<TcpStream>) -> anyhow::Result<()> {
        tls.write_all(&self.request).await?;
        tls.flush().await?;
        let mut response = [0u8; SMALL_RESPONSE];
        tls.read_exact(&mut response).await?;
        Ok(())
    }

    async fn bulk(&self, addr: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
        let mut tls = self.connect(addr).await?;
        let started = Instant::now();
        let mut header = [0u8; 8];
        header[4..].copy_from_slice(&u32::try_from(bytes)?.to_be_bytes());
        tls.write_all(&header).await?;
        tls.flush().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                bail!("the backend closed with {left} bytes still to come");
            }
            left = left.saturating_sub(n as u64);
        }
        Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
    }

    /// `count` round trips over `connections` persistent connections, used in turn, one
    /// request in flight at a time; returns each round trip's time in µs.
    async fn round_trips(
        &self,
        addr: SocketAddr,
        count: usize,
        connections: usize,
    ) -> anyhow::Result<Vec<f64>> {
        let mut open = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let mut tls = self.connect(addr).await?;
            self.round_trip(&mut tls).await?; // warm-up, untimed
            open.push(tls);
        }
        let mut times = Vec::with_capacity(count);
        for i in 0..count {
            let tls = &mut open[i % connections.max(1)];
            let started = Instant::now();
            self.round_trip(tls).await?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(times)
    }

    /// `count` new connections, each timed from connect to the first response; in µs.
    async fn handshakes(&self, addr: SocketAddr, count: usize) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let mut tls = self.connect(addr).await?;
            self.round_trip(&mut tls).await?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
            // A clean close, so the proxies' connection counts go back down.
            let _ = tls.shutdown().await;
        }
        Ok(times)
    }
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// hostplane's proxy on a runtime of its own, so that it does not share worker threads with
/// the benchmark's clients and backend (HAProxy does not either).
struct HostplaneProxy {
    addr: SocketAddr,
    metrics: Arc<ProxyMetrics>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HostplaneProxy {
    fn start(backend: SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hostplane-proxy")
            .enable_all()
            .build()?;
        // Bound here, registered with the proxy's own runtime (block_on cannot run inside the
        // benchmark's runtime).
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let routes = Arc::new(RouteMap::new());
        routes.insert(SERVER_NAME, backend);
        let metrics = Arc::new(ProxyMetrics::default());
        runtime.spawn(serve(
            listener,
            routes,
            ProxyConfig::default(),
            metrics.clone(),
        ));
        Ok(Self {
            addr,
            metrics,
            runtime: Some(runtime),
        })
    }
}

impl Drop for HostplaneProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Debian's HAProxy, TCP mode, routing by the ClientHello's SNI.
struct Haproxy {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(backend: SocketAddr) -> anyhow::Result<Self> {
        let version = Command::new("haproxy").arg("-v").output().map_err(|e| {
            anyhow::anyhow!(
                "haproxy is required ({e}): apt-get install haproxy (scripts/deps installs it)"
            )
        })?;
        eprintln!(
            "{}",
            String::from_utf8_lossy(&version.stdout)
                .lines()
                .next()
                .unwrap_or("haproxy")
        );
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 4096\n\
                 defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend tls\n  bind {addr}\n  tcp-request inspect-delay 5s\n\
                 \x20 tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
                 \x20 use_backend tenant if {{ req_ssl_sni -i {SERVER_NAME} }}\n\
                 backend tenant\n  server backend {backend}\n"
            ),
        )?;
        let log = dir.path().join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting haproxy")?;
        let mut haproxy = Self {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            let log = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = haproxy.child.try_wait()? {
                bail!("haproxy exited ({status}):\n{}", log());
            }
            if Instant::now() > deadline {
                bail!("haproxy does not listen on {addr} after 10 s:\n{}", log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn measure(client: &Client, addr: SocketAddr, work: &Workload) -> anyhow::Result<Figures> {
    let mb_per_s = tokio::time::timeout(WORKLOAD_LIMIT, client.bulk(addr, work.transfer_bytes))
        .await
        .context("bulk transfer hung")??;
    let mut round_trips = tokio::time::timeout(
        WORKLOAD_LIMIT,
        client.round_trips(addr, work.round_trips, work.connections),
    )
    .await
    .context("round trips hung")??;
    round_trips.sort_by(f64::total_cmp);
    let mut handshakes =
        tokio::time::timeout(WORKLOAD_LIMIT, client.handshakes(addr, work.handshakes))
            .await
            .context("handshakes hung")??;
    handshakes.sort_by(f64::total_cmp);
    Ok(Figures {
        mb_per_s,
        round_trip_p50_us: percentile(&round_trips, 50),
        round_trip_p99_us: percentile(&round_trips, 99),
        handshake_p50_us: percentile(&handshakes, 50),
        handshake_p99_us: percentile(&handshakes, 99),
    })
}

/// Runs the benchmark; returns the Markdown table for RESULTS.md.
pub async fn run(work: Workload) -> anyhow::Result<String> {
    if work.runs == 0 || work.round_trips == 0 || work.handshakes == 0 || work.connections == 0 {
        bail!("--runs, --round-trips, --handshakes and --connections must be at least 1");
    }
    let (backend, certificate) = start_backend().await?;
    let hostplane = HostplaneProxy::start(backend)?;
    let haproxy = Haproxy::start(backend).await?;
    let client = Client::new(&certificate)?;
    let addr = |mode: Mode| match mode {
        Mode::Direct => backend,
        Mode::Hostplane => hostplane.addr,
        Mode::Haproxy => haproxy.addr,
    };

    let mut runs: Vec<[Figures; 3]> = Vec::with_capacity(work.runs);
    for run in 0..work.runs {
        let mut figures = [Figures::default(); 3];
        // A different mode goes first in each run, so none always gets a warm (or cold) cache.
        for k in 0..MODES.len() {
            let mode = MODES[(run + k) % MODES.len()];
            let f = measure(&client, addr(mode), &work)
                .await
                .with_context(|| format!("run {run}, {}", mode.name()))?;
            eprintln!(
                "run {run} {:>9}: {:7.0} MB/s, round trip p50 {:5.0} µs p99 {:5.0} µs, \
                 handshake p50 {:5.0} µs p99 {:5.0} µs",
                mode.name(),
                f.mb_per_s,
                f.round_trip_p50_us,
                f.round_trip_p99_us,
                f.handshake_p50_us,
                f.handshake_p99_us
            );
            figures[mode.index()] = f;
        }
        runs.push(figures);
    }
    let routed = hostplane.metrics.connections("routed", "ok");
    let expected = work.runs * (1 + work.connections + work.handshakes);
    if routed != expected as u64 {
        bail!("hostplane's proxy routed {routed} connections, expected {expected}");
    }
    Ok(table(&runs, &work))
}

fn table(runs: &[[Figures; 3]], work: &Workload) -> String {
    let per_mode = |mode: Mode, pick: fn(&Figures) -> f64| {
        median(runs.iter().map(|r| pick(&r[mode.index()])).collect())
    };
    let paired = |mode: Mode, pick: fn(&Figures) -> f64, combine: fn(f64, f64) -> f64| {
        median(
            runs.iter()
                .map(|r| combine(pick(&r[mode.index()]), pick(&r[Mode::Direct.index()])))
                .collect(),
        )
    };
    let ratio = |a: f64, b: f64| a / b;
    let added = |a: f64, b: f64| a - b;
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick); 5] = [
        ("bulk download, MB/s", |f| f.mb_per_s),
        ("round trip p50, µs", |f| f.round_trip_p50_us),
        ("round trip p99, µs", |f| f.round_trip_p99_us),
        ("new connection p50, µs", |f| f.handshake_p50_us),
        ("new connection p99, µs", |f| f.handshake_p99_us),
    ];
    let mut t = String::new();
    t.push_str(&format!(
        "Medians of {} interleaved runs; each run per mode: a {} MiB download on one connection, \
         {} round trips ({SMALL_REQUEST} B request, {SMALL_RESPONSE} B response) over {} \
         persistent connection(s) one at a time, {} new connections (TCP + full TLS 1.3 handshake \
         + one round trip). Ratios and differences are taken per run, then the median.\n\n",
        runs.len(),
        work.transfer_bytes / (1024 * 1024),
        work.round_trips,
        work.connections,
        work.handshakes,
    ));
    t.push_str(
        "| figure | direct | hostplane | HAProxy | hostplane vs direct | HAProxy vs direct |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, (name, pick)) in rows.iter().enumerate() {
        let combine = if i == 0 { ratio } else { added };
        let fmt = |v: f64| {
            if i == 0 {
                format!("{v:.2}×")
            } else {
                format!("{v:+.0} µs")
            }
        };
        t.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            per_mode(Mode::Direct, *pick),
            per_mode(Mode::Hostplane, *pick),
            per_mode(Mode::Haproxy, *pick),
            fmt(paired(Mode::Hostplane, *pick, combine)),
            fmt(paired(Mode::Haproxy, *pick, combine)),
        ));
    }
    let throughput_vs_haproxy = median(
        runs.iter()
            .map(|r| r[Mode::Hostplane.index()].mb_per_s / r[Mode::Haproxy.index()].mb_per_s)
            .collect(),
    );
    t.push_str(&format!(
        "\n| goal | value | met |\n| --- | --- | --- |\n\
         | throughput ≥ 0.95× direct | {:.2}× | {} |\n\
         | throughput ≥ HAProxy's | {:.2}× | {} |\n\
         | added round-trip p99 ≤ 100 µs | {:+.0} µs | {} |\n\
         | added new-connection p99 ≤ 100 µs | {:+.0} µs | {} |\n",
        paired(Mode::Hostplane, |f| f.mb_per_s, ratio),
        yes(paired(Mode::Hostplane, |f| f.mb_per_s, ratio) >= 0.95),
        throughput_vs_haproxy,
        yes(throughput_vs_haproxy >= 1.0),
        paired(Mode::Hostplane, |f| f.round_trip_p99_us, added),
        yes(paired(Mode::Hostplane, |f| f.round_trip_p99_us, added) <= 100.0),
        paired(Mode::Hostplane, |f| f.handshake_p99_us, added),
        yes(paired(Mode::Hostplane, |f| f.handshake_p99_us, added) <= 100.0),
    ));
    t.push_str(
        "\nClient, backend and proxy share the machine's cores (and, on the development machine, \
         other engineers' builds), so a proxy in the path takes CPU the TLS ends would otherwise \
         use: that, not the copying alone, is most of the throughput gap to direct, and HAProxy \
         pays it too. p99 of new connections swings by milliseconds between runs on a busy \
         machine; read it next to HAProxy's.\n",
    );
    t
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}
