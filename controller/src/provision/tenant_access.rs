//! Credentials inside a tenant: the controller's own client (a private client certificate),
//! the ServiceAccount whose expiring tokens people get in their kubeconfigs, and the minter
//! account that may only request those tokens (for the download endpoint); and the
//! retirement (cordon, drain, delete) of worker Nodes a scale-down removes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;

use crate::build::kubeconfig::{self, Credential};
use crate::build::minter::{self, MINTER_SERVICE_ACCOUNT};
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
    #[error(
        "the tenant's kubeconfig minter account ({ADMIN_NAMESPACE}/{MINTER_SERVICE_ACCOUNT}): {0}"
    )]
    Minter(kube::Error),
    #[error("requesting a token for {ADMIN_NAMESPACE}/{ADMIN_SERVICE_ACCOUNT}: {0}")]
    TokenRequest(kube::Error),
    #[error("{step} retiring worker Node {name}: {source}")]
    RetireNode {
        name: String,
        step: &'static str,
        source: kube::Error,
    },
}

/// A client for the tenant API server as the controller itself (client certificate, group
/// system:masters). This identity never leaves the controller.
pub async fn controller_client(
    endpoint: &str,
    pki: &PkiFiles,
) -> Result<kube::Client, TenantAccessError> {
    client_as_controller(endpoint, pki, true).await
}

/// [`controller_client`] without kube's retries of 429 answers: an eviction a
/// PodDisruptionBudget refuses answers 429, and is retried by the next pass instead of holding
/// this one for minutes.
pub async fn drain_client(
    endpoint: &str,
    pki: &PkiFiles,
) -> Result<kube::Client, TenantAccessError> {
    client_as_controller(endpoint, pki, false).await
}

async fn client_as_controller(
    endpoint: &str,
    pki: &PkiFiles,
    retry: bool,
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
    client_from(config, retry).await
}

/// A client for the tenant API server at `endpoint` with a bearer `token`, trusting `ca_pem`:
/// how the download endpoint acts with the minter token, holding no tenant key.
pub async fn token_client(
    endpoint: &str,
    ca_pem: &str,
    token: &str,
) -> Result<kube::Client, TenantAccessError> {
    let config = kubeconfig::kubeconfig(
        "tenant",
        endpoint,
        ca_pem,
        MINTER_SERVICE_ACCOUNT,
        &Credential::Token(token),
    );
    client_from(config, true).await
}

/// How long the controller waits for one answer of a tenant API server.
pub const TENANT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn client_from(
    config: kube::config::Kubeconfig,
    retry: bool,
) -> Result<kube::Client, TenantAccessError> {
    let mut config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| TenantAccessError::Client(e.to_string()))?;
    config.default_retry = retry;
    // A tenant whose datastore hangs holds every write for the API server's own minute: a pass
    // gives up sooner, and its next one finds the tenant not ready instead.
    config.read_timeout = Some(TENANT_REQUEST_TIMEOUT);
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

/// Ensures the minter ServiceAccount and its Role and RoleBinding in the tenant, which allow
/// only TokenRequest for [`ADMIN_SERVICE_ACCOUNT`] (server-side apply: drift is repaired).
pub async fn ensure_minter_account(client: &kube::Client) -> Result<(), TenantAccessError> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let account = minter::minter_service_account(ADMIN_NAMESPACE);
    Api::<ServiceAccount>::namespaced(client.clone(), ADMIN_NAMESPACE)
        .patch(MINTER_SERVICE_ACCOUNT, &pp, &Patch::Apply(&account))
        .await
        .map_err(TenantAccessError::Minter)?;
    let role = minter::minter_role(ADMIN_NAMESPACE, ADMIN_SERVICE_ACCOUNT);
    Api::<Role>::namespaced(client.clone(), ADMIN_NAMESPACE)
        .patch(MINTER_SERVICE_ACCOUNT, &pp, &Patch::Apply(&role))
        .await
        .map_err(TenantAccessError::Minter)?;
    let binding = minter::minter_role_binding(ADMIN_NAMESPACE);
    Api::<RoleBinding>::namespaced(client.clone(), ADMIN_NAMESPACE)
        .patch(MINTER_SERVICE_ACCOUNT, &pp, &Patch::Apply(&binding))
        .await
        .map_err(TenantAccessError::Minter)?;
    Ok(())
}

/// Annotation on a tenant Node: when the controller cordoned it to retire it (RFC 3339). Kept
/// in the tenant, so the drain's time bound survives a controller restart.
pub const DRAIN_STARTED_ANNOTATION: &str = "tenancy.hostplane.io/drain-started";
/// Pods a kubelet mirrors from static manifests: not evictable, they go with their Node.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Where the retirement of one worker Node stands after a pass.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeRetirement {
    /// Cordoned; pods are still on it (the message says which and why).
    Draining(String),
    /// The Node is gone from the tenant (or never registered): its VM may go now.
    Removed,
}

/// One pass of retiring a worker Node, as `kubectl drain` then `kubectl delete node` would:
/// cordon it (recording when), evict its pods through the Eviction API so PodDisruptionBudgets
/// are respected (a refused eviction is retried on the next pass), and delete the Node once no
/// pod is left. After `drain_timeout` the remaining pods are deleted regardless. Pods evicted
/// from a Node whose kubelet is not Ready are deleted at once: no kubelet will finish them.
/// DaemonSet and mirror pods are left to go with the Node.
pub async fn retire_node(
    client: &kube::Client,
    name: &str,
    drain_timeout: Duration,
    now: Timestamp,
) -> Result<NodeRetirement, TenantAccessError> {
    let failed = |step: &'static str| {
        move |source| TenantAccessError::RetireNode {
            name: name.to_string(),
            step,
            source,
        }
    };
    let nodes = Api::<Node>::all(client.clone());
    let Some(node) = nodes.get_opt(name).await.map_err(failed("reading"))? else {
        return Ok(NodeRetirement::Removed);
    };
    let recorded = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRAIN_STARTED_ANNOTATION))
        .and_then(|t| t.parse::<Timestamp>().ok());
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if recorded.is_none() || !cordoned {
        let started = recorded.unwrap_or(now).to_string();
        let cordon = serde_json::json!({
            "metadata": { "annotations": { DRAIN_STARTED_ANNOTATION: started } },
            "spec": { "unschedulable": true },
        });
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&cordon))
            .await
            .map_err(failed("cordoning"))?;
        tracing::info!(node = %name, "cordoned a retiring worker Node");
    }
    let started = recorded.unwrap_or(now);
    let timed_out = SignedDuration::try_from(drain_timeout)
        .ok()
        .is_some_and(|limit| now.duration_since(started) >= limit);
    let kubelet_ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));

    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await
        .map_err(failed("listing the pods of"))?;
    let mut waiting = Vec::new();
    for pod in pods.items.iter().filter(|p| drained(p)) {
        let (Some(pod_name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace)
        else {
            continue;
        };
        let api = Api::<Pod>::namespaced(client.clone(), namespace);
        let evicted = if timed_out || pod.metadata.deletion_timestamp.is_some() {
            Ok(())
        } else {
            match api.evict(pod_name, &EvictParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                // 429: a PodDisruptionBudget allows no disruption now.
                Err(kube::Error::Api(e)) if e.code == 429 => Err(e.message),
                Err(e) => return Err(failed("evicting the pods of")(e)),
            }
        };
        let force = match &evicted {
            Ok(()) => timed_out || !kubelet_ready,
            Err(_) => false,
        };
        if force {
            if timed_out {
                tracing::warn!(node = %name, pod = %format!("{namespace}/{pod_name}"), "drain timed out; deleting the pod");
            }
            match api
                .delete(pod_name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(failed("deleting the pods of")(e)),
            }
            continue;
        }
        waiting.push(match evicted {
            Ok(()) => format!("{namespace}/{pod_name} (terminating)"),
            Err(refused) => format!("{namespace}/{pod_name} ({refused})"),
        });
    }
    if !waiting.is_empty() {
        return Ok(NodeRetirement::Draining(format!(
            "draining Node {name}: waiting for {}",
            waiting.join(", ")
        )));
    }
    match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(node = %name, "removed a drained worker Node"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(failed("deleting")(e)),
    }
    Ok(NodeRetirement::Removed)
}

/// Whether draining waits for this pod: DaemonSet pods would come straight back (they tolerate
/// the cordon) and mirror pods cannot be evicted; both go with the Node.
fn drained(pod: &Pod) -> bool {
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION));
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    !mirror && !daemon
}

/// Takes back the cordon of a Node whose retirement was called off (its VM is wanted again),
/// only if the controller put it there.
pub async fn keep_node(client: &kube::Client, name: &str) -> Result<(), TenantAccessError> {
    let failed = |source| TenantAccessError::RetireNode {
        name: name.to_string(),
        step: "uncordoning",
        source,
    };
    let nodes = Api::<Node>::all(client.clone());
    let Some(node) = nodes.get_opt(name).await.map_err(failed)? else {
        return Ok(());
    };
    let ours = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DRAIN_STARTED_ANNOTATION));
    if ours {
        let uncordon = serde_json::json!({
            "metadata": { "annotations": { DRAIN_STARTED_ANNOTATION: null } },
            "spec": { "unschedulable": null },
        });
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&uncordon))
            .await
            .map_err(failed)?;
        tracing::info!(node = %name, "worker Node wanted again; uncordoned");
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

/// TokenRequest on the minter ServiceAccount, for [`minter::MINTER_TOKEN_TTL_SECONDS`].
pub async fn mint_minter_token(client: &kube::Client) -> Result<MintedToken, TenantAccessError> {
    request_token(
        client,
        ADMIN_NAMESPACE,
        MINTER_SERVICE_ACCOUNT,
        minter::MINTER_TOKEN_TTL_SECONDS,
    )
    .await
    .map_err(|e| match e {
        TenantAccessError::TokenRequest(e) => TenantAccessError::Minter(e),
        other => other,
    })?
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
    fn draining_waits_for_pods_but_not_daemonset_or_mirror_pods() {
        let pod = |extra: serde_json::Value| -> Pod {
            let mut value = serde_json::json!({ "metadata": { "name": "p", "namespace": "n" } });
            value["metadata"]
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(value).unwrap()
        };
        assert!(drained(&pod(serde_json::json!({}))));
        let owned_by = |kind: &str| {
            serde_json::json!({ "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": kind, "name": "o", "uid": "u", "controller": true,
            }]})
        };
        assert!(drained(&pod(owned_by("ReplicaSet"))));
        assert!(!drained(&pod(owned_by("DaemonSet"))));
        assert!(!drained(&pod(serde_json::json!({
            "annotations": { MIRROR_POD_ANNOTATION: "abc" },
        }))));
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
