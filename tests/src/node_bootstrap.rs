//! A worker node joining a tenant the way kubelet and `kubeadm join` do (TLS bootstrap with a
//! bootstrap token), spoken over the wire to a real API server: discovery of
//! `kube-public/cluster-info` (CA pinned by hash, JWS checked against the token), a
//! CertificateSigningRequest created as the bootstrap token, the certificate the tenant's
//! kube-controller-manager approves and signs, and the Node created with that certificate.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hostplane_controller::build::join::{
    BootstrapToken, CLUSTER_INFO, CLUSTER_INFO_JWS_PREFIX, CLUSTER_INFO_KUBECONFIG_KEY,
    CLUSTER_INFO_NAMESPACE, ca_cert_hash,
};
use hostplane_controller::build::kubeconfig::{self, Credential};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use sha2::{Digest, Sha256};

/// The signer kubelets ask for their client certificate.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const POLL: Duration = Duration::from_millis(250);

/// What a node is told out of band (kubeadm join's arguments).
#[derive(Clone, Debug)]
pub struct NodeJoin<'a> {
    /// `https://host:port` of the tenant API server (discovery endpoint).
    pub server: &'a str,
    /// The bootstrap token `<id>.<secret>`.
    pub token: &'a str,
    /// `sha256:<hex>` pin of the cluster CA's public key.
    pub ca_cert_hash: &'a str,
    pub node_name: &'a str,
    /// Bound on each wait (the cluster-info signature, the certificate).
    pub timeout: Duration,
    /// Where the servers' host names resolve, as an /etc/hosts line would make them (a tenant
    /// named at the SNI proxy); `None` uses the URLs as they are. TLS still names the host.
    pub resolve: Option<IpAddr>,
}

/// A server URL as the node dials it: the URL to connect to and the TLS server name to send.
fn reach(server: &str, resolve: Option<IpAddr>) -> (String, Option<String>) {
    let Some(ip) = resolve else {
        return (server.to_string(), None);
    };
    let authority = server.trim_start_matches("https://");
    let authority = authority.split('/').next().unwrap_or(authority);
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "443"));
    let ip = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    (format!("https://{ip}:{port}"), Some(host.to_string()))
}

/// A kubeconfig for `server` as reached through `resolve` (see [`NodeJoin::resolve`]).
fn reached(config: Kubeconfig, server_name: Option<&str>) -> Kubeconfig {
    match server_name {
        Some(name) => kubeconfig::with_tls_server_name(config, name),
        None => config,
    }
}

/// A node that joined: its Node object as read back with its own certificate, and who the API
/// server says that certificate is.
#[derive(Clone, Debug)]
pub struct JoinedNode {
    pub node: Node,
    pub user: UserInfo,
    pub csr_name: String,
    /// The CSR as the bootstrap token read it once signed (its `spec.username` and
    /// `spec.groups` are who the API server took the token for).
    pub csr: CertificateSigningRequest,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeBootstrapError {
    #[error("the bootstrap token is malformed: {0}")]
    Token(String),
    #[error("building a client for {what}: {message}")]
    Client { what: &'static str, message: String },
    #[error("reading {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} anonymously: {0}")]
    ClusterInfo(kube::Error),
    #[error("cluster-info is unusable: {0}")]
    ClusterInfoContent(String),
    #[error("cluster-info was not signed for token {token_id} within {timeout:?}")]
    NotSigned { token_id: String, timeout: Duration },
    #[error("the cluster-info signature does not verify with the token: {0}")]
    BadSignature(String),
    #[error("the cluster CA does not match the pin: expected {expected}, got {actual}")]
    CaMismatch { expected: String, actual: String },
    #[error("generating the node key and CSR: {0}")]
    Csr(String),
    #[error("creating the CertificateSigningRequest as the bootstrap token: {0}")]
    CreateCsr(kube::Error),
    #[error("reading CertificateSigningRequest {name}: {source}")]
    ReadCsr { name: String, source: kube::Error },
    #[error("CertificateSigningRequest {name} was {reason}: {message}")]
    CsrRefused {
        name: String,
        reason: String,
        message: String,
    },
    #[error(
        "CertificateSigningRequest {name} was not signed within {timeout:?} (conditions: {conditions})"
    )]
    NotIssued {
        name: String,
        timeout: Duration,
        conditions: String,
    },
    #[error("creating Node {name} with the node certificate: {source}")]
    CreateNode { name: String, source: kube::Error },
    #[error("reading Node {name} with the node certificate: {source}")]
    ReadNode { name: String, source: kube::Error },
    #[error("asking who the node certificate is: {0}")]
    WhoAmI(kube::Error),
}

/// Is this error the API server refusing the credentials (HTTP 401)?
pub fn is_unauthorized(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 401)
}

async fn client(
    what: &'static str,
    config: Kubeconfig,
) -> Result<kube::Client, NodeBootstrapError> {
    let client_error = |message: String| NodeBootstrapError::Client { what, message };
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| client_error(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| client_error(e.to_string()))
}

/// HMAC-SHA256 (RFC 2104), the MAC of the bootstrapsigner's HS256 JWS.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Checks a detached JWS (`<header>..<signature>`, payload left out) over `payload`: HS256
/// keyed by the token secret, `kid` the token id, as kube-controller-manager's bootstrapsigner
/// writes them and kubeadm's discovery checks them.
pub fn verify_detached_jws(jws: &str, payload: &str, token: &BootstrapToken) -> Result<(), String> {
    let mut parts = jws.split('.');
    let (Some(header_b64), Some(""), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a detached compact JWS".into());
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("the JWS header is not base64url JSON")?;
    if header["alg"] != "HS256" || header["kid"] != token.id.as_str() {
        return Err(format!(
            "the JWS header is {header}, not HS256 keyed by {}",
            token.id
        ));
    }
    let signing_input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(payload));
    let expected = hmac_sha256(token.secret.as_bytes(), signing_input.as_bytes());
    let actual = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| "the JWS signature is not base64url")?;
    if actual == expected {
        Ok(())
    } else {
        Err("the HMAC differs".into())
    }
}

/// Discovery as kubeadm does it: read cluster-info without trusting the server yet, wait for
/// the signature made with our token, check it, then pin the CA. Returns (server, CA PEM).
async fn discover(
    join: &NodeJoin<'_>,
    token: &BootstrapToken,
) -> Result<(String, String), NodeBootstrapError> {
    let (url, server_name) = reach(join.server, join.resolve);
    let insecure: Kubeconfig = serde_json::from_value(serde_json::json!({
        "clusters": [{ "name": "discovery", "cluster": {
            "server": url,
            "insecure-skip-tls-verify": true,
            // Sent as SNI even unverified: a proxy routes by it.
            "tls-server-name": server_name,
        }}],
        "contexts": [{ "name": "discovery", "context": { "cluster": "discovery" } }],
        "current-context": "discovery",
    }))
    .expect("a static kubeconfig");
    let anonymous = client("anonymous discovery", insecure).await?;
    let configmaps = Api::<ConfigMap>::namespaced(anonymous, CLUSTER_INFO_NAMESPACE);
    let jws_key = format!("{CLUSTER_INFO_JWS_PREFIX}{}", token.id);
    let deadline = Instant::now() + join.timeout;
    let (kubeconfig_text, jws) = loop {
        let cm = configmaps
            .get(CLUSTER_INFO)
            .await
            .map_err(NodeBootstrapError::ClusterInfo)?;
        let data = cm.data.unwrap_or_default();
        if let (Some(k), Some(j)) = (data.get(CLUSTER_INFO_KUBECONFIG_KEY), data.get(&jws_key)) {
            break (k.clone(), j.clone());
        }
        if Instant::now() >= deadline {
            return Err(NodeBootstrapError::NotSigned {
                token_id: token.id.clone(),
                timeout: join.timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    };
    verify_detached_jws(&jws, &kubeconfig_text, token).map_err(NodeBootstrapError::BadSignature)?;

    let content = |m: &str| NodeBootstrapError::ClusterInfoContent(m.to_string());
    let kubeconfig =
        Kubeconfig::from_yaml(&kubeconfig_text).map_err(|e| content(&e.to_string()))?;
    let cluster = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| content("no cluster"))?;
    let server = cluster.server.ok_or_else(|| content("no server"))?;
    let ca_pem = cluster
        .certificate_authority_data
        .and_then(|d| STANDARD.decode(d).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| content("no certificate-authority-data"))?;
    let actual = ca_cert_hash(&ca_pem).map_err(|e| content(&e.to_string()))?;
    if actual != join.ca_cert_hash {
        return Err(NodeBootstrapError::CaMismatch {
            expected: join.ca_cert_hash.to_string(),
            actual,
        });
    }
    Ok((server, ca_pem))
}

/// A fresh key and a CSR for `system:node:<name>` in `system:nodes`, as kubelet makes them.
fn node_csr(node_name: &str) -> Result<(String, String), NodeBootstrapError> {
    let csr_error = |e: rcgen::Error| NodeBootstrapError::Csr(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(csr_error)?;
    let mut params = rcgen::CertificateParams::default();
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::OrganizationName, "system:nodes");
    subject.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params.distinguished_name = subject;
    let csr = params.serialize_request(&key).map_err(csr_error)?;
    Ok((csr.pem().map_err(csr_error)?, key.serialize_pem()))
}

/// Waits until the CSR carries a certificate; a Denied or Failed condition ends the wait.
async fn wait_issued(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    timeout: Duration,
) -> Result<(String, CertificateSigningRequest), NodeBootstrapError> {
    let deadline = Instant::now() + timeout;
    loop {
        let csr = csrs
            .get(name)
            .await
            .map_err(|source| NodeBootstrapError::ReadCsr {
                name: name.to_string(),
                source,
            })?;
        let status = csr.status.clone().unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        if let Some(c) = conditions
            .iter()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(NodeBootstrapError::CsrRefused {
                name: name.to_string(),
                reason: c.type_.clone(),
                message: c.message.clone().unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let pem = String::from_utf8(cert.0).map_err(|_| NodeBootstrapError::NotIssued {
                name: name.to_string(),
                timeout,
                conditions: "the certificate is not PEM text".into(),
            })?;
            return Ok((pem, csr));
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = conditions
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect();
            return Err(NodeBootstrapError::NotIssued {
                name: name.to_string(),
                timeout,
                conditions: seen.join(", "),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Creates the node's CSR as the bootstrap token; returns its name. Separate from
/// [`bootstrap_node`] so tests can see a revoked token refused right there.
pub async fn create_node_csr(
    server: &str,
    ca_pem: &str,
    token: &str,
    node_name: &str,
) -> Result<(String, String), NodeBootstrapError> {
    let bootstrap = bootstrap_client(server, None, ca_pem, token).await?;
    create_csr_as(bootstrap, node_name).await
}

/// A client authenticating with the bootstrap token.
async fn bootstrap_client(
    server: &str,
    resolve: Option<IpAddr>,
    ca_pem: &str,
    token: &str,
) -> Result<kube::Client, NodeBootstrapError> {
    let (url, server_name) = reach(server, resolve);
    client(
        "the bootstrap token",
        reached(
            kubeconfig::kubeconfig(
                "tenant",
                &url,
                ca_pem,
                "kubelet-bootstrap",
                &Credential::Token(token),
            ),
            server_name.as_deref(),
        ),
    )
    .await
}

async fn create_csr_as(
    bootstrap: kube::Client,
    node_name: &str,
) -> Result<(String, String), NodeBootstrapError> {
    let (csr_pem, key_pem) = node_csr(node_name)?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = Api::<CertificateSigningRequest>::all(bootstrap)
        .create(&PostParams::default(), &csr)
        .await
        .map_err(NodeBootstrapError::CreateCsr)?;
    Ok((created.metadata.name.unwrap_or_default(), key_pem))
}

/// The whole TLS bootstrap of one node; see the module documentation.
pub async fn bootstrap_node(join: &NodeJoin<'_>) -> Result<JoinedNode, NodeBootstrapError> {
    let token =
        BootstrapToken::parse(join.token).map_err(|e| NodeBootstrapError::Token(e.to_string()))?;
    let (server, ca_pem) = discover(join, &token).await?;

    let bootstrap = bootstrap_client(&server, join.resolve, &ca_pem, join.token).await?;
    let (csr_name, client_key_pem) = create_csr_as(bootstrap.clone(), join.node_name).await?;
    let (client_cert_pem, csr) = wait_issued(
        &Api::<CertificateSigningRequest>::all(bootstrap),
        &csr_name,
        join.timeout,
    )
    .await?;

    let (url, server_name) = reach(&server, join.resolve);
    let node_client = client(
        "the node certificate",
        reached(
            kubeconfig::kubeconfig(
                "tenant",
                &url,
                &ca_pem,
                &format!("system:node:{}", join.node_name),
                &Credential::ClientCert {
                    cert_pem: &client_cert_pem,
                    key_pem: &client_key_pem,
                },
            ),
            server_name.as_deref(),
        ),
    )
    .await?;
    let review = Api::<SelfSubjectReview>::all(node_client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(NodeBootstrapError::WhoAmI)?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();

    let nodes = Api::<Node>::all(node_client);
    let node = Node {
        metadata: ObjectMeta {
            name: Some(join.node_name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let node_error = |source| NodeBootstrapError::CreateNode {
        name: join.node_name.to_string(),
        source,
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(node_error)?;
    let node = nodes
        .get(join.node_name)
        .await
        .map_err(|source| NodeBootstrapError::ReadNode {
            name: join.node_name.to_string(),
            source,
        })?;
    Ok(JoinedNode {
        node,
        user,
        csr_name,
        csr,
        client_cert_pem,
        client_key_pem,
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_resolved_server_is_dialled_by_address_and_named_by_tls() {
        let server = "https://acme.tenants.test:9443";
        assert_eq!(reach(server, None), (server.to_string(), None));
        assert_eq!(
            reach(server, Some(IpAddr::from([127, 0, 0, 1]))),
            (
                "https://127.0.0.1:9443".to_string(),
                Some("acme.tenants.test".to_string())
            )
        );
    }

    #[test]
    fn detached_jws_verifies_only_with_the_right_token_and_payload() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"abcdef"}"#);
        let payload = "apiVersion: v1\n";
        let mac = hmac_sha256(
            b"0123456789abcdef",
            format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload)).as_bytes(),
        );
        let jws = format!("{header}..{}", URL_SAFE_NO_PAD.encode(mac));
        assert_eq!(verify_detached_jws(&jws, payload, &token), Ok(()));
        assert!(verify_detached_jws(&jws, "apiVersion: v2\n", &token).is_err());
        let other = BootstrapToken::parse("abcdef.fedcba9876543210").unwrap();
        assert!(verify_detached_jws(&jws, payload, &other).is_err());
        let other_id = BootstrapToken::parse("zzzzzz.0123456789abcdef").unwrap();
        assert!(verify_detached_jws(&jws, payload, &other_id).is_err());
        assert!(verify_detached_jws("a.b.c", payload, &token).is_err());
    }
}
