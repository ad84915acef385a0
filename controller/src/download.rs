//! Kubeconfig download over HTTPS (DESIGN.md, "Proxy"):
//! `GET /controlplanes/{name}/kubeconfig[?ttl=SECONDS]`.
//!
//! The caller proves who they are with a bearer token of the *host* cluster, checked with a
//! TokenReview; host RBAC decides, through a SubjectAccessReview on the subresource
//! `controlplanes/kubeconfig`, whether they may have the tenant; the answer is a kubeconfig with
//! a token minted for them on the tenant just now. So access to tenants is granted and revoked
//! with ordinary RoleBindings on the host, and every download is a short-lived credential.
//! The endpoint mints with the token the controller keeps in `<cp>-system/kubeconfig-minter`,
//! which may only request tokens for the handed-out account (`build::minter`); it never reads
//! the tenant's certificates or keys.
//!
//! The decisions are pure functions of the request and the reviews' answers (unit-tested
//! below); [`DownloadServer`] only does the I/O around them. [`download_kubeconfig`] is the
//! client side, used by `hostplane kubeconfig --url`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostplane_crds::ControlPlane;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, field, info, info_span, warn};

use crate::build::kubeconfig;
use crate::build::minter::{MINTER_CA_KEY, MINTER_SECRET, MINTER_TOKEN_KEY};
use crate::build::objects::secret_strings;
use crate::config::ProxyAccess;
use crate::provision::tenant_access;
use crate::validate::system_namespace;

/// TokenRequest refuses shorter lifetimes.
pub const MIN_TTL_SECONDS: i64 = 600;
/// The API group, resource and subresource a caller must be allowed to `get`.
pub const GROUP: &str = "tenancy.hostplane.io";
pub const RESOURCE: &str = "controlplanes";
pub const SUBRESOURCE: &str = "kubeconfig";

/// A client has this long to finish the TLS handshake, then to send its request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one request's work against the host and the tenant.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of a generated serving certificate and its CA.
const GENERATED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

// ---------------------------------------------------------------------------------------------
// Pure decisions

/// A refusal: the status code and a body saying why, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The ControlPlane name in `/controlplanes/{name}/kubeconfig`, if the path is that.
pub fn controlplane_in_path(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix("/controlplanes/")?
        .strip_suffix("/kubeconfig")?;
    is_object_name(name).then_some(name)
}

/// A Kubernetes object name (DNS-1123 subdomain): only these go into reviews and API paths.
fn is_object_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

/// The `ttl` query parameter: absent, or whole seconds of at least [`MIN_TTL_SECONDS`].
pub fn requested_ttl(query: Option<&str>) -> Result<Option<i64>, Rejection> {
    let mut ttl = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "ttl" {
            continue;
        }
        if ttl.is_some() {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "ttl is given more than once",
            ));
        }
        let seconds: i64 = value.parse().map_err(|_| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("ttl must be a whole number of seconds, not {value:?}"),
            )
        })?;
        if seconds < MIN_TTL_SECONDS {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "ttl must be at least {MIN_TTL_SECONDS} seconds (the shortest token \
                     Kubernetes issues), not {seconds}"
                ),
            ));
        }
        ttl = Some(seconds);
    }
    Ok(ttl)
}

/// The lifetime of the minted token: what was asked for, never more than the ControlPlane's
/// `tokenExpirationSeconds`, which is also the default.
pub fn granted_ttl(requested: Option<i64>, limit_seconds: i64) -> i64 {
    requested.map_or(limit_seconds, |r| r.min(limit_seconds))
}

/// The bearer token of an `Authorization` header.
pub fn bearer_token(header: Option<&HeaderValue>) -> Result<&str, Rejection> {
    let missing = || {
        Rejection::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer TOKEN` with a token of the host \
             cluster (e.g. from `kubectl create token`)",
        )
    };
    let value = header
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// The TokenReview for a caller's token (audiences left empty: the host API server's own).
pub fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Who the host says the token belongs to, or 401.
pub fn authenticated_user(status: Option<&TokenReviewStatus>) -> Result<UserInfo, Rejection> {
    let refused = |why: &str| {
        Rejection::new(
            StatusCode::UNAUTHORIZED,
            format!("the host cluster did not authenticate this token: {why}"),
        )
    };
    let status = status.ok_or_else(|| refused("the TokenReview has no status"))?;
    if status.authenticated != Some(true) {
        return Err(refused(
            status
                .error
                .as_deref()
                .filter(|e| !e.is_empty())
                .unwrap_or("invalid or expired token"),
        ));
    }
    match &status.user {
        Some(user) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => Ok(user.clone()),
        _ => Err(refused("the TokenReview names no user")),
    }
}

/// The SubjectAccessReview asking whether `user` may `get controlplanes/kubeconfig` of `name`.
pub fn access_review(user: &UserInfo, name: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".into()),
                group: Some(GROUP.into()),
                resource: Some(RESOURCE.into()),
                subresource: Some(SUBRESOURCE.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether the host's answer to [`access_review`] lets the caller have the kubeconfig.
pub fn authorization(
    username: &str,
    name: &str,
    status: Option<&SubjectAccessReviewStatus>,
) -> Result<(), Rejection> {
    if status.is_some_and(|s| s.allowed && s.denied != Some(true)) {
        return Ok(());
    }
    let reason = status
        .and_then(|s| s.reason.as_deref())
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    Err(Rejection::new(
        StatusCode::FORBIDDEN,
        format!(
            "user {username} may not get {RESOURCE}/{SUBRESOURCE} for {name}{reason}: grant \
             verb get on {RESOURCE}/{SUBRESOURCE} in API group {GROUP}"
        ),
    ))
}

/// The endpoint of a ControlPlane that can hand out kubeconfigs (Ready=True), or 503.
pub fn ready_endpoint(cp: &ControlPlane) -> Result<String, Rejection> {
    let name = cp.metadata.name.as_deref().unwrap_or_default();
    let not_ready = |detail: String| {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("controlplane {name} is not Ready: {detail}"),
        )
    };
    match cp.condition("Ready") {
        Some(c) if c.status == "True" => {}
        Some(c) => return Err(not_ready(format!("{}: {}", c.reason, c.message))),
        None => return Err(not_ready("no Ready condition yet".into())),
    }
    cp.status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .ok_or_else(|| not_ready("no endpoint in its status".into()))
}

/// The CA bundle and minter token of a `kubeconfig-minter` Secret's entries, or 503 while the
/// controller has not filled it.
pub fn minter_credentials(
    name: &str,
    entries: &BTreeMap<String, String>,
) -> Result<(String, String), Rejection> {
    let entry = |key: &str| entries.get(key).filter(|v| !v.trim().is_empty()).cloned();
    match (entry(MINTER_CA_KEY), entry(MINTER_TOKEN_KEY)) {
        (Some(ca), Some(token)) => Ok((ca, token.trim().to_string())),
        _ => Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "controlplane {name} cannot hand out kubeconfigs yet: {MINTER_SECRET} lacks \
                 {MINTER_CA_KEY} or {MINTER_TOKEN_KEY}; try again shortly"
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Download requests by response code. Cheap to clone; clones share their values.
#[derive(Clone, Debug, Default)]
pub struct DownloadMetrics {
    requests: Family<CodeLabel, Counter>,
}

impl DownloadMetrics {
    /// Registers `kubeconfig_download_requests` in `registry` (usually prefixed `hostplane`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubeconfig_download_requests",
            "Kubeconfig download requests by HTTP response code",
            self.requests.clone(),
        );
    }

    fn count(&self, status: StatusCode) {
        self.requests
            .get_or_create(&CodeLabel {
                code: status.as_u16().to_string(),
            })
            .inc();
    }

    /// Requests answered with `code`.
    pub fn requests(&self, code: u16) -> u64 {
        self.requests
            .get(&CodeLabel {
                code: code.to_string(),
            })
            .map_or(0, |c| c.get())
    }
}

// ---------------------------------------------------------------------------------------------
// Serving certificate

/// Where the HTTPS certificate comes from.
#[derive(Clone, Debug)]
pub enum ServingCert {
    /// PEM files given by the operator (certificate chain, private key).
    Files { cert: PathBuf, key: PathBuf },
    /// Generated at start for `names`; the CA certificate is written to `ca_file` for clients.
    /// The CA's key is dropped once the serving certificate is signed, so nothing else can
    /// ever be issued under it; a restart makes a new CA.
    Generated {
        names: Vec<String>,
        ca_file: PathBuf,
    },
}

/// A generated CA and the serving certificate it signed, in PEM.
pub struct GeneratedCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn cert_error(e: impl std::fmt::Display) -> DownloadError {
    DownloadError::Certificate(e.to_string())
}

/// A fresh CA and a serving certificate for `names` (DNS names or IP literals) signed by it.
pub fn generate_serving_cert(names: &[String]) -> Result<GeneratedCert, DownloadError> {
    let now = time::OffsetDateTime::now_utc();
    // Tolerates a client clock a little behind ours.
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + GENERATED_VALIDITY;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "hostplane kubeconfig download CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_error)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(cert_error)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "hostplane kubeconfig download");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    (leaf.not_before, leaf.not_after) = (not_before, not_after);
    let cert = leaf.signed_by(&key, &issuer).map_err(cert_error)?;
    Ok(GeneratedCert {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration for a PEM certificate chain and key.
pub fn server_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, DownloadError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(cert_error("no certificate in the PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(cert_error)?;
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(cert_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(cert_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Writes `contents` to `path` whole (through a temporary file), so a reader never sees half.
fn write_whole(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

// ---------------------------------------------------------------------------------------------
// Server

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the serving certificate: {0}")]
    Certificate(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the CA certificate to {path}: {source}")]
    WriteCa {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the endpoint needs besides its certificate.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    pub listen: SocketAddr,
    pub serving: ServingCert,
    /// When set, kubeconfigs point at the SNI proxy; else straight at each tenant's endpoint.
    pub proxy: Option<ProxyAccess>,
}

/// The bound HTTPS endpoint; [`DownloadServer::serve`] answers until dropped.
pub struct DownloadServer {
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    endpoint: Arc<Endpoint>,
    ca_file: Option<PathBuf>,
}

struct Endpoint {
    host: kube::Client,
    proxy: Option<ProxyAccess>,
    metrics: DownloadMetrics,
}

impl DownloadServer {
    /// Loads or generates the certificate (writing the CA for clients) and binds `listen`.
    pub async fn bind(
        config: DownloadConfig,
        host: kube::Client,
        metrics: DownloadMetrics,
    ) -> Result<Self, DownloadError> {
        let (tls, ca_file) = match &config.serving {
            ServingCert::Files { cert, key } => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| DownloadError::Read {
                        path: path.clone(),
                        source,
                    })
                };
                (server_tls(&read(cert)?, &read(key)?)?, None)
            }
            ServingCert::Generated { names, ca_file } => {
                let generated = generate_serving_cert(names)?;
                write_whole(ca_file, &generated.ca_pem).map_err(|source| {
                    DownloadError::WriteCa {
                        path: ca_file.clone(),
                        source,
                    }
                })?;
                (
                    server_tls(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?,
                    Some(ca_file.clone()),
                )
            }
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| DownloadError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            endpoint: Arc::new(Endpoint {
                host,
                proxy: config.proxy,
                metrics,
            }),
            ca_file,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The generated CA's file, when the certificate was generated.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Answers connections until the future is dropped.
    pub async fn serve(self) {
        let addr = self.local_addr().ok();
        match &self.ca_file {
            Some(ca) => info!(
                addr = ?addr,
                ca_file = %ca.display(),
                "serving kubeconfig downloads at https://{}/controlplanes/NAME/kubeconfig; \
                 clients trust the CA in {}",
                addr.map(|a| a.to_string()).unwrap_or_default(),
                ca.display()
            ),
            None => info!(addr = ?addr, "serving kubeconfig downloads"),
        }
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "kubeconfig download accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let endpoint = self.endpoint.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            info!(%peer, error = %e, "kubeconfig download: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            info!(%peer, "kubeconfig download: TLS handshake timed out");
                            return;
                        }
                    };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(endpoint.respond(req, peer).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    info!(%peer, error = %e, "kubeconfig download connection ended");
                }
            });
        }
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl Endpoint {
    /// One request, in one span, counted by its response code.
    async fn respond(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let span = info_span!(
            "kubeconfig_download",
            %peer,
            method = %req.method(),
            path = %req.uri().path(),
            user = field::Empty,
            controlplane = field::Empty,
            ttl = field::Empty,
            code = field::Empty,
        );
        // Only the head is needed (a GET has no body); owned, so the work is Send.
        let (head, _body) = req.into_parts();
        async move {
            let work = self.answer(&head.method, &head.uri, head.headers.get(AUTHORIZATION));
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Rejection::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the kubeconfig was not ready within {}s; try again",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                )),
            };
            let response = match outcome {
                Ok(yaml) => {
                    let mut response = Response::new(Full::new(Bytes::from(yaml)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
                    response
                }
                Err(rejection) => text(rejection.status, &rejection.message),
            };
            let status = response.status();
            tracing::Span::current().record("code", status.as_u16());
            self.metrics.count(status);
            if status.is_server_error() {
                warn!("kubeconfig download failed");
            } else {
                info!("kubeconfig download answered");
            }
            response
        }
        .instrument(span)
        .await
    }

    async fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        authorization_header: Option<&HeaderValue>,
    ) -> Result<String, Rejection> {
        let Some(name) = controlplane_in_path(uri.path()) else {
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                "not found: the endpoint is GET /controlplanes/NAME/kubeconfig[?ttl=SECONDS]",
            ));
        };
        if method != Method::GET {
            return Err(Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served",
            ));
        }
        let span = tracing::Span::current();
        span.record("controlplane", name);
        let token = bearer_token(authorization_header)?;

        let review = Api::<TokenReview>::all(self.host.clone())
            .create(&PostParams::default(), &token_review(token))
            .await
            .map_err(|e| host_failure("TokenReview", e))?;
        let user = authenticated_user(review.status.as_ref())?;
        let username = user.username.clone().unwrap_or_default();
        span.record("user", username.as_str());

        let review = Api::<SubjectAccessReview>::all(self.host.clone())
            .create(&PostParams::default(), &access_review(&user, name))
            .await
            .map_err(|e| host_failure("SubjectAccessReview", e))?;
        authorization(&username, name, review.status.as_ref())?;

        let requested = requested_ttl(uri.query())?;
        let cp = Api::<ControlPlane>::all(self.host.clone())
            .get_opt(name)
            .await
            .map_err(|e| host_failure("reading the ControlPlane", e))?
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::NOT_FOUND,
                    format!("controlplane {name} not found"),
                )
            })?;
        let endpoint = ready_endpoint(&cp)?;
        let ttl = granted_ttl(requested, cp.spec.token_expiration_seconds);
        span.record("ttl", ttl);

        // Only the minter Secret: a token that may mint handed-out tokens, and the CAs. Never
        // the tenant's certificates, whose keys would let this internet-facing endpoint forge
        // any identity in every tenant (build::minter).
        let namespace = system_namespace(name);
        let minter = Api::<Secret>::namespaced(self.host.clone(), &namespace)
            .get_opt(MINTER_SECRET)
            .await
            .map_err(|e| host_failure("reading the kubeconfig minter Secret", e))?
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "controlplane {name} cannot hand out kubeconfigs yet: the controller has \
                         not written {namespace}/{MINTER_SECRET}; try again shortly"
                    ),
                )
            })?;
        let (ca, minter_token) = minter_credentials(name, &secret_strings(&minter))?;
        let tenant_failure = |e: tenant_access::TenantAccessError| {
            warn!(error = %e, "minting a tenant token failed");
            Rejection::new(
                StatusCode::BAD_GATEWAY,
                format!("minting a token on controlplane {name} failed: {e}"),
            )
        };
        let tenant = tenant_access::token_client(&endpoint, &ca, &minter_token)
            .await
            .map_err(tenant_failure)?;
        let minted = tenant_access::mint_token(&tenant, ttl)
            .await
            .map_err(tenant_failure)?;
        let config =
            kubeconfig::handed_out(name, &endpoint, &ca, &minted.token, self.proxy.as_ref());
        info!(expires_at = %minted.expires_at, "issued a kubeconfig");
        Ok(kubeconfig::to_yaml(&config))
    }
}

/// A failed call to the host API server: details in the log, a short answer to the client.
fn host_failure(what: &str, e: kube::Error) -> Rejection {
    warn!(error = %e, "{what} on the host failed");
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        format!("{what} on the host cluster failed; try again"),
    )
}

// ---------------------------------------------------------------------------------------------
// Client

/// What `hostplane kubeconfig NAME --url …` asks for.
#[derive(Clone, Debug)]
pub struct DownloadRequest<'a> {
    /// `https://host:port` of the endpoint.
    pub url: &'a str,
    pub name: &'a str,
    /// A bearer token of the host cluster.
    pub token: &'a str,
    /// PEM CA to trust for the endpoint (else the system's roots).
    pub ca_file: Option<&'a Path>,
    pub ttl: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadClientError {
    #[error("{0}")]
    Setup(String),
    #[error("reaching {url}: {source}")]
    Transport { url: String, source: kube::Error },
    /// The server refused; `body` says why.
    #[error("the server answered {status}: {}", body.trim())]
    Refused { status: StatusCode, body: String },
}

/// The request path for `name`, with `ttl` when given.
pub fn download_path(name: &str, ttl: Option<i64>) -> String {
    match ttl {
        Some(ttl) => format!("/controlplanes/{name}/kubeconfig?ttl={ttl}"),
        None => format!("/controlplanes/{name}/kubeconfig"),
    }
}

/// Fetches a kubeconfig from a download endpoint.
pub async fn download_kubeconfig(
    request: &DownloadRequest<'_>,
) -> Result<String, DownloadClientError> {
    let setup = |e: String| DownloadClientError::Setup(e);
    let url: http::Uri = request
        .url
        .parse()
        .map_err(|e| setup(format!("--url {:?}: {e}", request.url)))?;
    if url.scheme_str() != Some("https") {
        return Err(setup(format!(
            "--url {:?} must be https://HOST:PORT",
            request.url
        )));
    }
    if !is_object_name(request.name) {
        return Err(setup(format!(
            "{:?} is not a ControlPlane name",
            request.name
        )));
    }
    // kube's client brings TLS (rustls with ring) and timeouts; the bearer token is set here
    // rather than through its auth so that nothing else of the caller's kubeconfig is sent.
    let mut config = kube::Config::new(url);
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(REQUEST_TIMEOUT + Duration::from_secs(5));
    // A 503 (tenant not Ready) is an answer for the person asking, not something to retry for
    // minutes, as kube's default server retry policy would.
    config.default_retry = false;
    if let Some(path) = request.ca_file {
        let roots = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| setup(format!("--ca-file {}: {e}", path.display())))?;
        if roots.is_empty() {
            return Err(setup(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            )));
        }
        config.root_cert = Some(roots.into_iter().map(|c| c.to_vec()).collect());
    }
    let client = kube::Client::try_from(config).map_err(|e| setup(e.to_string()))?;
    let authorization = HeaderValue::from_str(&format!("Bearer {}", request.token))
        .map_err(|_| setup("the token contains characters not allowed in a header".into()))?;
    let http_request = http::Request::get(download_path(request.name, request.ttl))
        .header(AUTHORIZATION, authorization)
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| setup(e.to_string()))?;
    let transport = |source| DownloadClientError::Transport {
        url: request.url.to_string(),
        source,
    };
    let response = client.send(http_request).await.map_err(transport)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .map_err(transport)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(DownloadClientError::Refused { status, body })
    }
}

#[cfg(test)]
mod tests {
    use hostplane_crds::{ControlPlaneCondition, ControlPlaneSpec, ControlPlaneStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    #[test]
    fn only_the_kubeconfig_path_names_a_controlplane() {
        assert_eq!(
            controlplane_in_path("/controlplanes/acme/kubeconfig"),
            Some("acme")
        );
        assert_eq!(
            controlplane_in_path("/controlplanes/a.b-c9/kubeconfig"),
            Some("a.b-c9")
        );
        for path in [
            "/",
            "/controlplanes/acme",
            "/controlplanes//kubeconfig",
            "/controlplanes/acme/kubeconfig/",
            "/controlplanes/a/b/kubeconfig",
            "/controlplanes/Acme/kubeconfig",
            "/controlplanes/-acme/kubeconfig",
            "/controlplanes/%2e%2e/kubeconfig",
            "/controlplanes/acme/kubeconfigs",
        ] {
            assert_eq!(controlplane_in_path(path), None, "{path}");
        }
        let long = format!("/controlplanes/{}/kubeconfig", "a".repeat(254));
        assert_eq!(controlplane_in_path(&long), None);
    }

    #[test]
    fn ttl_is_whole_seconds_no_shorter_than_token_request_allows() {
        assert_eq!(requested_ttl(None), Ok(None));
        assert_eq!(requested_ttl(Some("")), Ok(None));
        assert_eq!(requested_ttl(Some("ttl=900")), Ok(Some(900)));
        assert_eq!(requested_ttl(Some("x=1&ttl=600")), Ok(Some(600)));
        for bad in [
            "ttl=5", "ttl=599", "ttl=-900", "ttl=abc", "ttl=", "ttl", "ttl=9e3",
        ] {
            let rejection = requested_ttl(Some(bad)).unwrap_err();
            assert_eq!(rejection.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(
            requested_ttl(Some("ttl=5"))
                .unwrap_err()
                .message
                .contains("at least 600 seconds")
        );
        assert!(
            requested_ttl(Some("ttl=abc"))
                .unwrap_err()
                .message
                .contains("whole number")
        );
        assert_eq!(
            requested_ttl(Some("ttl=900&ttl=1200")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn ttl_is_capped_at_the_controlplanes_token_lifetime() {
        assert_eq!(granted_ttl(None, 7200), 7200);
        assert_eq!(granted_ttl(Some(900), 7200), 900);
        assert_eq!(granted_ttl(Some(86_400), 7200), 7200);
    }

    #[test]
    fn only_bearer_tokens_are_accepted() {
        let header = |v: &'static str| HeaderValue::from_static(v);
        assert_eq!(bearer_token(Some(&header("Bearer abc.def"))), Ok("abc.def"));
        assert_eq!(bearer_token(Some(&header("bearer  abc "))), Ok("abc"));
        for bad in ["Basic dTpw", "Bearer", "Bearer ", "abc"] {
            let rejection = bearer_token(Some(&header(bad))).unwrap_err();
            assert_eq!(rejection.status, StatusCode::UNAUTHORIZED, "{bad}");
        }
        let missing = bearer_token(None).unwrap_err();
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(missing.message.contains("missing bearer token"));
    }

    fn alice() -> UserInfo {
        UserInfo {
            username: Some("system:serviceaccount:team:alice".into()),
            uid: Some("u-1".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            extra: Some(BTreeMap::from([(
                "authentication.kubernetes.io/pod-name".to_string(),
                vec!["p".to_string()],
            )])),
        }
    }

    #[test]
    fn unauthenticated_tokens_are_refused_with_the_hosts_reason() {
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(alice()),
            ..Default::default()
        };
        assert_eq!(authenticated_user(Some(&ok)), Ok(alice()));
        let refused = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..Default::default()
        };
        let rejection = authenticated_user(Some(&refused)).unwrap_err();
        assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
        assert!(
            rejection.message.contains("token has expired"),
            "{rejection:?}"
        );
        let silent = TokenReviewStatus::default();
        assert!(
            authenticated_user(Some(&silent))
                .unwrap_err()
                .message
                .contains("invalid or expired token")
        );
        assert_eq!(
            authenticated_user(None).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        let nameless = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo::default()),
            ..Default::default()
        };
        assert_eq!(
            authenticated_user(Some(&nameless)).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn the_access_review_asks_for_the_kubeconfig_subresource_as_the_reviewed_user() {
        let review = serde_json::to_value(access_review(&alice(), "acme")).unwrap();
        assert_eq!(
            review["spec"],
            serde_json::json!({
                "user": "system:serviceaccount:team:alice",
                "uid": "u-1",
                "groups": ["system:serviceaccounts"],
                "extra": {"authentication.kubernetes.io/pod-name": ["p"]},
                "resourceAttributes": {
                    "verb": "get",
                    "group": "tenancy.hostplane.io",
                    "resource": "controlplanes",
                    "subresource": "kubeconfig",
                    "name": "acme",
                },
            })
        );
    }

    #[test]
    fn only_an_allowed_review_authorizes() {
        let allowed = SubjectAccessReviewStatus {
            allowed: true,
            ..Default::default()
        };
        assert_eq!(authorization("alice", "acme", Some(&allowed)), Ok(()));
        let no_opinion = SubjectAccessReviewStatus {
            allowed: false,
            reason: Some(String::new()),
            ..Default::default()
        };
        let rejection = authorization("alice", "acme", Some(&no_opinion)).unwrap_err();
        assert_eq!(rejection.status, StatusCode::FORBIDDEN);
        assert!(
            rejection
                .message
                .starts_with("user alice may not get controlplanes/kubeconfig for acme:"),
            "{}",
            rejection.message
        );
        let contradictory = SubjectAccessReviewStatus {
            allowed: true,
            denied: Some(true),
            reason: Some("denied by webhook".into()),
            ..Default::default()
        };
        let rejection = authorization("alice", "acme", Some(&contradictory)).unwrap_err();
        assert!(rejection.message.contains("(denied by webhook)"));
        assert_eq!(
            authorization("alice", "acme", None).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    fn controlplane(ready: Option<(&str, &str)>, endpoint: Option<&str>) -> ControlPlane {
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        cp.status = Some(ControlPlaneStatus {
            conditions: ready
                .map(|(status, reason)| ControlPlaneCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: now.clone(),
                    last_update_time: now.clone(),
                    reason: reason.into(),
                    message: "details".into(),
                })
                .into_iter()
                .collect(),
            endpoint: endpoint.map(String::from),
            ..Default::default()
        });
        cp
    }

    #[test]
    fn only_ready_controlplanes_with_an_endpoint_hand_out_kubeconfigs() {
        assert_eq!(
            ready_endpoint(&controlplane(
                Some(("True", "Available")),
                Some("https://127.0.0.1:7443")
            )),
            Ok("https://127.0.0.1:7443".to_string())
        );
        for cp in [
            controlplane(Some(("False", "Creating")), Some("https://127.0.0.1:7443")),
            controlplane(None, None),
            controlplane(Some(("True", "Available")), None),
        ] {
            assert_eq!(
                ready_endpoint(&cp).unwrap_err().status,
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        assert_eq!(
            ready_endpoint(&controlplane(Some(("False", "Creating")), None))
                .unwrap_err()
                .message,
            "controlplane acme is not Ready: Creating: details"
        );
    }

    #[test]
    fn the_minter_secret_must_hold_both_the_cas_and_a_token() {
        let entries = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            minter_credentials("acme", &entries(&[("ca.crt", "CA"), ("token", "t\n")])),
            Ok(("CA".to_string(), "t".to_string()))
        );
        for partial in [
            entries(&[]),
            entries(&[("ca.crt", "CA")]),
            entries(&[("token", "t")]),
            entries(&[("ca.crt", "CA"), ("token", " ")]),
        ] {
            let rejection = minter_credentials("acme", &partial).unwrap_err();
            assert_eq!(rejection.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                rejection.message.contains("kubeconfig-minter"),
                "{rejection:?}"
            );
        }
    }

    #[test]
    fn responses_are_counted_by_code() {
        let metrics = DownloadMetrics::default();
        let mut registry = Registry::with_prefix("hostplane");
        metrics.register(&mut registry);
        metrics.count(StatusCode::OK);
        metrics.count(StatusCode::FORBIDDEN);
        metrics.count(StatusCode::FORBIDDEN);
        assert_eq!(metrics.requests(403), 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("hostplane_kubeconfig_download_requests_total{code=\"403\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_generated_certificate_serves_its_names_under_its_ca() {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let generated = generate_serving_cert(&names).unwrap();
        server_tls(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(generated.ca_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        assert!(ca.is_ca());
        let (_, leaf) = x509_parser::pem::parse_x509_pem(generated.cert_pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        assert!(!leaf.is_ca());
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        let sans = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 2);
        assert!(server_tls(generated.cert_pem.as_bytes(), b"not a key").is_err());
    }

    #[test]
    fn download_paths_carry_the_ttl_only_when_asked() {
        assert_eq!(
            download_path("acme", None),
            "/controlplanes/acme/kubeconfig"
        );
        assert_eq!(
            download_path("acme", Some(900)),
            "/controlplanes/acme/kubeconfig?ttl=900"
        );
    }
}
