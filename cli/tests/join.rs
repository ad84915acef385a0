//! End to end: a worker node joins a tenant control plane with a bootstrap token. The
//! `hostplane controller` binary brings a tenant up; `ensure_join` puts kubeadm's join objects
//! and a token into it; a node client speaks the kubelet TLS bootstrap to the tenant, whose own
//! kube-controller-manager signs cluster-info and approves and signs the node's certificate.

mod common;

use std::time::Duration;

use common::*;
use hostplane_controller::build::join::{BootstrapToken, JoinConfig, bootstrap_token_secret};
use hostplane_controller::provision::join::{JoinInput, JoinMaterial, ensure_join};
use hostplane_tests::Binaries;
use hostplane_tests::node_bootstrap::{
    NodeBootstrapError, NodeJoin, bootstrap_node, create_node_csr, is_unauthorized,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams};

const NODE_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN_TTL: Duration = Duration::from_secs(3600);

fn node_join<'a>(
    server: &'a str,
    material: &'a JoinMaterial,
    token: &'a str,
    node_name: &'a str,
) -> NodeJoin<'a> {
    NodeJoin {
        server,
        token,
        ca_cert_hash: &material.ca_cert_hash,
        node_name,
        timeout: NODE_TIMEOUT,
        resolve: None,
    }
}

/// The CSR create of a node using `token` is refused as unauthenticated (HTTP 401) within
/// `within`. kube-apiserver caches successful token authentications for 10 s, so a token that
/// just worked is refused only once that entry ages out; a token never accepted, at once.
async fn assert_token_refused(
    server: &str,
    ca_pem: &str,
    token: &str,
    what: &str,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        match create_node_csr(server, ca_pem, token, "refused-node").await {
            Err(NodeBootstrapError::CreateCsr(e)) if is_unauthorized(&e) => return,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            other => panic!(
                "{what}: the CSR create was not refused with 401 within {within:?}: {other:?}"
            ),
        }
    }
}

#[tokio::test]
async fn worker_node_joins_a_tenant_with_a_bootstrap_token() {
    // The embedded default datastore (Kine on SQLite): joining does not depend on it.
    let bed = ControllerBed::with(None, &[]).await;
    let cp = bed.create("workers", "").await;
    let server = cp
        .status
        .unwrap()
        .endpoint
        .expect("a Ready tenant has an endpoint");
    let endpoint = server.trim_start_matches("https://").to_string();

    // A client for the tenant as a person gets it: the handed-out kubeconfig (cluster-admin).
    let tenant = tenant_client(&bed.host.client(), "workers", "kubeconfig").await;
    let ca_pem = secret_text(&bed.host.client(), "workers-system", "k8s-certs", "ca.crt").await;
    let input = JoinInput {
        config: JoinConfig {
            cluster_name: "workers",
            endpoint: &endpoint,
            ca_pem: &ca_pem,
            kubernetes_version: &Binaries::get().kube_version,
        },
        token_ttl: TOKEN_TTL,
    };
    let issued = Timestamp::now();
    let material = ensure_join(&tenant, &input).await.expect("ensure_join");
    assert_eq!(material.endpoint, endpoint);
    let pin = material.ca_cert_hash.strip_prefix("sha256:").unwrap();
    assert!(
        pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        material.ca_cert_hash
    );
    let life = material.expires_at.duration_since(issued);
    assert!(
        (life - SignedDuration::from_secs(3600)).abs() < SignedDuration::from_secs(5),
        "token lives {life:?}"
    );

    // A node pinning another CA refuses the tenant before it sends anything.
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let token = material.token.to_string();
    let mut wrong = node_join(&server, &material, &token, "wrong-pin");
    wrong.ca_cert_hash = &wrong_pin;
    match bootstrap_node(&wrong).await {
        Err(NodeBootstrapError::CaMismatch { expected, actual }) => {
            assert_eq!(
                (expected, actual),
                (wrong_pin.clone(), material.ca_cert_hash.clone())
            )
        }
        other => panic!("a wrong CA pin was not refused: {other:?}"),
    }

    // The node joins: discovery signed by the tenant's bootstrapsigner, certificate approved
    // and signed by its kube-controller-manager, the Node created with that certificate.
    let join = node_join(&server, &material, &token, "worker-1");
    let joined = bootstrap_node(&join).await.expect("worker-1 joins");
    assert_eq!(
        joined.user.username.as_deref(),
        Some("system:node:worker-1")
    );
    let groups = joined.user.groups.clone().unwrap_or_default();
    assert!(groups.iter().any(|g| g == "system:nodes"), "{groups:?}");
    assert_eq!(joined.node.metadata.name.as_deref(), Some("worker-1"));
    let node = Api::<Node>::all(tenant.clone())
        .get("worker-1")
        .await
        .unwrap();
    assert_eq!(node.metadata.uid, joined.node.metadata.uid);
    let csr = Api::<CertificateSigningRequest>::all(tenant.clone())
        .get(&joined.csr_name)
        .await
        .unwrap();
    assert_eq!(
        csr.spec.username.as_deref(),
        Some(format!("system:bootstrap:{}", material.token.id).as_str())
    );
    let csr_groups = joined.csr.spec.groups.clone().unwrap_or_default();
    assert!(
        csr_groups.iter().any(|g| g == "system:bootstrappers"),
        "{csr_groups:?}"
    );
    let approved = csr
        .status
        .unwrap()
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .expect("the CSR was approved");
    assert_eq!(
        (approved.status.as_str(), approved.reason.as_deref()),
        ("True", Some("AutoApproved"))
    );

    // The next pass hands out the same token.
    let again = ensure_join(&tenant, &input)
        .await
        .expect("second ensure_join");
    assert_eq!(again, material);

    // A deleted token stops working; the next pass mints a fresh one.
    let tokens = Api::<Secret>::namespaced(tenant.clone(), "kube-system");
    tokens
        .delete(&material.token.secret_name(), &DeleteParams::default())
        .await
        .unwrap();
    // An expired token, built as ours but unlabelled so that ensure_join leaves it alone.
    let expired = BootstrapToken::generate();
    let mut expired_secret = bootstrap_token_secret(
        &expired,
        Timestamp::now() - SignedDuration::from_hours(1),
        "expired on purpose",
    );
    expired_secret.metadata.labels = None;
    tokens
        .create(&PostParams::default(), &expired_secret)
        .await
        .unwrap();
    let fresh = ensure_join(&tenant, &input)
        .await
        .expect("ensure_join after delete");
    assert_ne!(fresh.token, material.token);
    let fresh_token = fresh.token.to_string();
    let join = node_join(&server, &fresh, &fresh_token, "worker-2");
    let second = bootstrap_node(&join).await.expect("worker-2 joins");
    assert_eq!(
        second.user.username.as_deref(),
        Some("system:node:worker-2")
    );

    // The API server's view of Secrets has the fresh token's, so it also has the deletion and
    // the expired Secret made before it.
    assert_token_refused(
        &server,
        &ca_pem,
        &token,
        "deleted token",
        Duration::from_secs(30),
    )
    .await;
    assert_token_refused(
        &server,
        &ca_pem,
        &expired.to_string(),
        "expired token",
        Duration::ZERO,
    )
    .await;
}
