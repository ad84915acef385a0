//! Worker nodes join a tenant: ensure inside the tenant the discovery, RBAC and config objects
//! of `build::join`, and a bootstrap token that is reused while it has life left.

use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::join::{
    self, BootstrapToken, CaCertError, JOIN_TOKEN_LABEL, JOIN_TOKEN_LABEL_VALUE, JoinConfig,
};
use crate::build::objects::{MANAGED_BY, MANAGED_BY_LABEL};

pub const FIELD_MANAGER: &str = "hostplane-controller-join";
const TOKEN_NAMESPACE: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the tenant CA certificate cannot be pinned: {0}")]
    CaCert(#[from] CaCertError),
    #[error("the bootstrap token lifetime {0:?} is out of range")]
    TokenLifetime(Duration),
    #[error("applying {kind} {name} in the tenant: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("listing the bootstrap tokens in {TOKEN_NAMESPACE}: {0}")]
    ListTokens(kube::Error),
    #[error("deleting the expired bootstrap token Secret {name}: {source}")]
    DeleteToken { name: String, source: kube::Error },
}

/// What a joining node needs to know: `kubeadm join <endpoint> --token <token>
/// --discovery-token-ca-cert-hash <ca_cert_hash>`.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinMaterial {
    pub token: BootstrapToken,
    pub ca_cert_hash: String,
    /// `host:port` of the tenant API server.
    pub endpoint: String,
    pub expires_at: Timestamp,
}

impl JoinMaterial {
    /// The arguments of `kubeadm join` (they carry the token: keep them out of logs).
    pub fn kubeadm_join_args(&self) -> Vec<String> {
        vec![
            "join".into(),
            self.endpoint.clone(),
            "--token".into(),
            self.token.to_string(),
            "--discovery-token-ca-cert-hash".into(),
            self.ca_cert_hash.clone(),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct JoinInput<'a> {
    pub config: JoinConfig<'a>,
    /// Lifetime of a new bootstrap token.
    pub token_ttl: Duration,
}

/// One of our bootstrap token Secrets as found in the tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct ExistingToken {
    pub secret_name: String,
    pub token: BootstrapToken,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl ExistingToken {
    /// Reads a bootstrap token Secret; None when it is not a complete, valid one.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| std::str::from_utf8(&v.0).ok())
                .map(str::to_string)
        };
        let token =
            BootstrapToken::parse(&format!("{}.{}", text("token-id")?, text("token-secret")?))
                .ok()?;
        Some(Self {
            secret_name: secret.metadata.name.clone()?,
            token,
            created_at: secret.metadata.creation_timestamp.as_ref()?.0,
            expires_at: text("expiration")?.parse().ok()?,
        })
    }
}

/// What to do with the tokens found: which one to hand out again, which to delete.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TokenPlan {
    pub reuse: Option<ExistingToken>,
    pub delete: Vec<String>,
}

/// A token is handed out again while more than a third of its life remains, so a node given it
/// has time to join; the one that lives longest wins. Expired tokens are deleted (the tenant's
/// tokencleaner would too, later).
pub fn plan_tokens(existing: &[ExistingToken], now: Timestamp) -> TokenPlan {
    let mut plan = TokenPlan::default();
    for token in existing {
        if token.expires_at <= now {
            plan.delete.push(token.secret_name.clone());
            continue;
        }
        let life = token.expires_at.duration_since(token.created_at);
        let remaining = token.expires_at.duration_since(now);
        let reusable = remaining.as_secs_f64() > life.as_secs_f64() / 3.0;
        if reusable
            && plan
                .reuse
                .as_ref()
                .is_none_or(|best| token.expires_at > best.expires_at)
        {
            plan.reuse = Some(token.clone());
        }
    }
    plan.delete.sort();
    plan
}

async fn apply<K>(client: &kube::Client, object: &K) -> Result<(), JoinError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| JoinError::Apply {
            kind: K::kind(&()).into_owned(),
            name: format!("{namespace}/{name}"),
            source,
        })?;
    Ok(())
}

async fn apply_cluster<K>(client: &kube::Client, object: &K) -> Result<(), JoinError>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| JoinError::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })?;
    Ok(())
}

/// The description kubeadm shows in `kubeadm token list`.
fn token_description(cluster_name: &str) -> String {
    format!("hostplane: worker nodes join tenant {cluster_name}")
}

/// Ensures everything nodes need to join the tenant (drift repaired on every call) and a
/// bootstrap token, reusing ours while it has more than a third of its life left.
pub async fn ensure_join(
    tenant: &kube::Client,
    input: &JoinInput<'_>,
) -> Result<JoinMaterial, JoinError> {
    let config = &input.config;
    let ca_cert_hash = join::ca_cert_hash(config.ca_pem)?;
    let ttl = SignedDuration::try_from(input.token_ttl)
        .ok()
        .filter(|d| d.is_positive())
        .ok_or(JoinError::TokenLifetime(input.token_ttl))?;

    let objects = join::join_objects(config);
    for o in &objects.config_maps {
        apply(tenant, o).await?;
    }
    for o in &objects.roles {
        apply(tenant, o).await?;
    }
    for o in &objects.role_bindings {
        apply(tenant, o).await?;
    }
    for o in &objects.cluster_roles {
        apply_cluster(tenant, o).await?;
    }
    for o in &objects.cluster_role_bindings {
        apply_cluster(tenant, o).await?;
    }

    let secrets = Api::<Secret>::namespaced(tenant.clone(), TOKEN_NAMESPACE);
    let selector =
        format!("{MANAGED_BY_LABEL}={MANAGED_BY},{JOIN_TOKEN_LABEL}={JOIN_TOKEN_LABEL_VALUE}");
    let found: Vec<ExistingToken> = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(JoinError::ListTokens)?
        .items
        .iter()
        .filter(|s| s.type_.as_deref() == Some(join::BOOTSTRAP_TOKEN_TYPE))
        .filter_map(ExistingToken::from_secret)
        .collect();
    let now = Timestamp::now();
    let plan = plan_tokens(&found, now);
    for name in &plan.delete {
        match secrets.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            // The tenant's tokencleaner may have been first.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(JoinError::DeleteToken {
                    name: name.clone(),
                    source,
                });
            }
        }
    }

    let (token, expires_at) = match plan.reuse {
        Some(existing) => (existing.token, existing.expires_at),
        None => {
            let expires_at = now
                .checked_add(ttl)
                .map_err(|_| JoinError::TokenLifetime(input.token_ttl))?;
            // Whole seconds, as stored: what we report is what the authenticator enforces.
            let expires_at = Timestamp::from_second(expires_at.as_second()).unwrap_or(expires_at);
            (BootstrapToken::generate(), expires_at)
        }
    };
    // Applied also when reused: a tampered Secret is put back as it was.
    apply(
        tenant,
        &join::bootstrap_token_secret(&token, expires_at, &token_description(config.cluster_name)),
    )
    .await?;
    tracing::debug!(token_id = %token.id, %expires_at, "bootstrap token for joining nodes ensured");

    Ok(JoinMaterial {
        token,
        ca_cert_hash,
        endpoint: config.endpoint.to_string(),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn existing(id: &str, created: &str, expires: &str) -> ExistingToken {
        ExistingToken {
            secret_name: format!("bootstrap-token-{id}"),
            token: BootstrapToken::parse(&format!("{id}.0123456789abcdef")).unwrap(),
            created_at: ts(created),
            expires_at: ts(expires),
        }
    }

    #[test]
    fn a_token_is_reused_while_more_than_a_third_of_its_life_remains() {
        // Three hours of life: reused until one hour before it expires.
        let t = existing("aaaaaa", "2026-01-01T00:00:00Z", "2026-01-01T03:00:00Z");
        let plan = plan_tokens(std::slice::from_ref(&t), ts("2026-01-01T01:59:59Z"));
        assert_eq!(
            plan,
            TokenPlan {
                reuse: Some(t.clone()),
                delete: vec![]
            }
        );
        let plan = plan_tokens(std::slice::from_ref(&t), ts("2026-01-01T02:00:00Z"));
        assert_eq!(plan, TokenPlan::default());
    }

    #[test]
    fn expired_tokens_are_deleted_and_the_longest_lived_is_reused() {
        let expired = existing("eeeeee", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z");
        let short = existing("ssssss", "2026-01-01T00:30:00Z", "2026-01-01T03:00:00Z");
        let long = existing("llllll", "2026-01-01T00:40:00Z", "2026-01-01T04:00:00Z");
        let plan = plan_tokens(&[long.clone(), expired, short], ts("2026-01-01T01:00:00Z"));
        assert_eq!(
            plan,
            TokenPlan {
                reuse: Some(long),
                delete: vec!["bootstrap-token-eeeeee".into()]
            }
        );
    }

    #[test]
    fn token_secrets_are_read_back_as_built() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let mut secret =
            join::bootstrap_token_secret(&token, ts("2026-01-01T02:00:00Z"), "join acme");
        assert_eq!(
            ExistingToken::from_secret(&secret),
            None,
            "no creation time yet"
        );
        secret.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        assert_eq!(
            ExistingToken::from_secret(&secret),
            Some(ExistingToken {
                secret_name: "bootstrap-token-abcdef".into(),
                token,
                created_at: ts("2026-01-01T00:00:00Z"),
                expires_at: ts("2026-01-01T02:00:00Z"),
            })
        );
        secret.data.as_mut().unwrap().insert(
            "token-secret".into(),
            k8s_openapi::ByteString(b"short".to_vec()),
        );
        assert_eq!(ExistingToken::from_secret(&secret), None);
    }

    #[test]
    fn kubeadm_join_arguments() {
        let material = JoinMaterial {
            token: BootstrapToken::parse("abcdef.0123456789abcdef").unwrap(),
            ca_cert_hash: "sha256:00".into(),
            endpoint: "127.0.0.1:6443".into(),
            expires_at: ts("2026-01-01T02:00:00Z"),
        };
        assert_eq!(
            material.kubeadm_join_args(),
            [
                "join",
                "127.0.0.1:6443",
                "--token",
                "abcdef.0123456789abcdef",
                "--discovery-token-ca-cert-hash",
                "sha256:00"
            ]
        );
    }
}
