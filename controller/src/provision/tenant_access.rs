//! Credentials inside a tenant: the controller's own client (a private client certificate),
//! and the ServiceAccount whose expiring tokens people get in their kubeconfigs.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;

use crate::build::kubeconfig::{self, Credential};
use crate::pki::PkiFiles;

/// The tenant ServiceAccount behind handed-out kubeconfigs.
pub const ADMIN_SERVICE_ACCOUNT: &str = "hostplane-admin";
pub const ADMIN_NAMESPACE: &str = "kube-system";
const FIELD_MANAGER: &str = "hostplane-controller-tenant-access";

#[derive(Debug, thiserror::Error)]
pub enum TenantAccessError {
    #[error("the tenant certificates lack {0}")]
    MissingCert(&'static str),
    #[error("building a client for the tenant API server: {0}")]
    Client(String),
    #[error("the tenant API server is not ready yet: {0}")]
    NotReady(String),
    #[error("creating the tenant admin ServiceAccount: {0}")]
    Account(kube::Error),
    #[error("requesting a token for {ADMIN_NAMESPACE}/{ADMIN_SERVICE_ACCOUNT}: {0}")]
    TokenRequest(kube::Error),
    #[error("removing Node {name} of a deleted worker VM: {source}")]
    RemoveNode { name: String, source: kube::Error },
}

/// A client for the tenant API server as the controller itself (client certificate, group
/// system:masters). This identity never leaves the controller.
pub async fn controller_client(
    endpoint: &str,
    pki: &PkiFiles,
) -> Result<kube::Client, TenantAccessError> {
    let get = |k: &'static str| {
        pki.get(k)
            .map(String::as_str)
            .ok_or(TenantAccessError::MissingCert(k))
    };
    let config = kubeconfig::kubeconfig(
        "tenant",
        endpoint,
        // Both CAs during a CA rotation: the serving certificate may come from either.
        crate::pki::rotation::trusted(pki).ok_or(TenantAccessError::MissingCert("ca.crt"))?,
        "hostplane-controller",
        &Credential::ClientCert {
            cert_pem: get("admin.crt")?,
            key_pem: get("admin.key")?,
        },
    );
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| TenantAccessError::Client(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| TenantAccessError::Client(e.to_string()))
}

/// Asks the tenant API server's /readyz (all its checks, the datastore's among them).
pub async fn check_ready(client: &kube::Client) -> Result<(), TenantAccessError> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("static request");
    match client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => Ok(()),
        Ok(body) => Err(TenantAccessError::NotReady(failing_checks(&body))),
        Err(kube::Error::Api(status)) => {
            Err(TenantAccessError::NotReady(failing_checks(&status.message)))
        }
        Err(e) => Err(TenantAccessError::NotReady(e.to_string())),
    }
}

/// The failing checks of a /readyz?verbose answer ("[-]etcd failed: ..."), or the answer itself.
fn failing_checks(body: &str) -> String {
    let failed: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("[-]"))
        .map(|l| l.trim_start_matches("[-]"))
        .collect();
    if failed.is_empty() {
        body.trim().to_string()
    } else {
        format!("failing checks: {}", failed.join(", "))
    }
}

/// Ensures the tenant ServiceAccount and its cluster-admin binding (server-side apply, so a
/// deleted or edited binding is repaired on the next pass).
pub async fn ensure_admin_account(client: &kube::Client) -> Result<(), TenantAccessError> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let labels = BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "hostplane".to_string(),
    )]);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(ADMIN_SERVICE_ACCOUNT.into()),
            namespace: Some(ADMIN_NAMESPACE.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ADMIN_NAMESPACE)
        .patch(ADMIN_SERVICE_ACCOUNT, &pp, &Patch::Apply(&sa))
        .await
        .map_err(TenantAccessError::Account)?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(ADMIN_SERVICE_ACCOUNT.into()),
            labels: Some(labels),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ADMIN_SERVICE_ACCOUNT.into(),
            namespace: Some(ADMIN_NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(ADMIN_SERVICE_ACCOUNT, &pp, &Patch::Apply(&binding))
        .await
        .map_err(TenantAccessError::Account)?;
    Ok(())
}

/// Removes the Nodes of worker VMs that are gone: cordoned first, so nothing is scheduled onto
/// them meanwhile, then deleted (their kubelets went with the VMs, so there is nothing to drain
/// cooperatively; pods bound to them are garbage-collected with the Node).
pub async fn remove_nodes(
    client: &kube::Client,
    names: &[String],
) -> Result<(), TenantAccessError> {
    let nodes = Api::<Node>::all(client.clone());
    for name in names {
        let cordon = serde_json::json!({ "spec": { "unschedulable": true } });
        let result = match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&cordon))
            .await
        {
            Ok(_) => nodes
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::info!(node = %name, "removed the Node of a deleted worker VM"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(TenantAccessError::RemoveNode {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A token minted for people, with its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct MintedToken {
    pub token: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// TokenRequest on the tenant admin ServiceAccount; the token expires after `ttl_seconds`.
pub async fn mint_token(
    client: &kube::Client,
    ttl_seconds: i64,
) -> Result<MintedToken, TenantAccessError> {
    request_token(client, ADMIN_NAMESPACE, ADMIN_SERVICE_ACCOUNT, ttl_seconds)
        .await?
        .ok_or_else(|| TenantAccessError::Client("TokenRequest returned no token or expiry".into()))
}

/// TokenRequest on any ServiceAccount; `Ok(None)` when the answer lacks the token or its expiry.
pub async fn request_token(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    ttl_seconds: i64,
) -> Result<Option<MintedToken>, TenantAccessError> {
    let issued_at = Timestamp::now();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(ttl_seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .map_err(TenantAccessError::TokenRequest)?;
    Ok(response.status.and_then(|status| {
        Some(MintedToken {
            token: status.token?,
            issued_at,
            expires_at: status.expiration_timestamp?.0,
        })
    }))
}

/// Whether the handed-out token must be replaced now: when `renew_fraction` of its life has
/// passed, or when its lifetime no longer matches the spec (tokenExpirationSeconds changed).
pub fn token_due(
    issued_at: Timestamp,
    expires_at: Timestamp,
    wanted_ttl_seconds: i64,
    renew_fraction: f64,
    now: Timestamp,
) -> bool {
    let life = expires_at.duration_since(issued_at);
    // TokenRequest may round; a minute of slack avoids re-minting on every pass.
    let ttl_changed = (life.as_secs() - wanted_ttl_seconds).abs() > 60;
    now >= renew_at(issued_at, expires_at, renew_fraction) || ttl_changed
}

/// When a token issued at `issued_at` and expiring at `expires_at` is renewed.
pub fn renew_at(issued_at: Timestamp, expires_at: Timestamp, renew_fraction: f64) -> Timestamp {
    let life = expires_at.duration_since(issued_at);
    let renew_after = SignedDuration::from_secs_f64(life.as_secs_f64() * renew_fraction);
    issued_at.checked_add(renew_after).unwrap_or(expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn token_renews_at_eighty_percent_of_its_life() {
        let issued = ts("2026-01-01T00:00:00Z");
        let expires = ts("2026-01-01T02:00:00Z");
        assert_eq!(renew_at(issued, expires, 0.8), ts("2026-01-01T01:36:00Z"));
        assert!(!token_due(
            issued,
            expires,
            7200,
            0.8,
            ts("2026-01-01T01:35:59Z")
        ));
        assert!(token_due(
            issued,
            expires,
            7200,
            0.8,
            ts("2026-01-01T01:36:00Z")
        ));
    }

    #[test]
    fn readiness_reports_only_failing_checks() {
        let body = "[+]ping ok\n[-]etcd failed: reason withheld\n[+]log ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\nreadyz check failed";
        assert_eq!(
            failing_checks(body),
            "failing checks: etcd failed: reason withheld, poststarthook/rbac/bootstrap-roles failed: reason withheld"
        );
        assert_eq!(failing_checks("connection refused"), "connection refused");
    }

    #[test]
    fn a_changed_lifetime_renews_at_once() {
        let issued = ts("2026-01-01T00:00:00Z");
        let expires = ts("2026-01-01T02:00:00Z");
        assert!(token_due(
            issued,
            expires,
            600,
            0.8,
            ts("2026-01-01T00:00:01Z")
        ));
        assert!(!token_due(
            issued,
            expires,
            7230,
            0.8,
            ts("2026-01-01T00:00:01Z")
        ));
    }
}
