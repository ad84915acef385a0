//! ControlPlanes of type `host` and `external`: no processes and no datastore, only access to a
//! cluster that already exists, handed out as expiring ServiceAccount tokens in the same Secret
//! (`<cp>-system/admin-kubeconfig`, keys `kubeconfig` and `kubeconfig-incluster`, token times
//! in annotations) and renewed at the same fraction of their life as those of `k8s` tenants.
//!
//! `host`: ServiceAccount `<cp>-system/<cp>-admin` on the host, bound to `cluster-admin`. That is
//! what KubeFlex grants for its host type, and the point of the type: whoever may read the
//! ControlPlane's Secret gets the host itself. Tokens come from TokenRequest on the host.
//!
//! `external`: the bootstrap kubeconfig (typically a long-lived cluster-admin credential) is used
//! once, to create in the adopted cluster
//! - `kube-system/hostplane-admin`, bound to `cluster-admin`: the identity people get tokens of;
//! - `kube-system/hostplane-controller`: the controller's own identity, allowed only to mint
//!   tokens of those two ServiceAccounts, to read them, and to delete what hostplane created.
//!
//! From then on the controller holds only a token of `hostplane-controller`, bounded to
//! [`CONTROLLER_TOKEN_TTL_SECONDS`] and renewed by itself (at the same fraction of its life) in
//! `<cp>-system/external-access`, and it deletes the bootstrap Secret: no credential broader than
//! "mint tokens for hostplane-admin" stays on the host. Should that token ever lapse (the
//! controller down for longer than its life), a kubeconfig put in the bootstrap Secret again
//! adopts the cluster anew; the condition says so.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hostplane_crds::{ControlPlane, ControlPlaneType};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::build::kubeconfig::{self, Credential};
use crate::build::objects::{
    CONTROLPLANE_LABEL, KUBECONFIG_INCLUSTER_KEY, KUBECONFIG_KEY, KUBECONFIG_SECRET, MANAGED_BY,
    MANAGED_BY_LABEL, TOKEN_EXPIRES_AT, TOKEN_ISSUED_AT, secret_strings,
};
use crate::config::HostAccess;
use crate::provision::tenant_access::{self, MintedToken, TenantAccessError};
use crate::validate::system_namespace;

/// Lifetime of the controller's own token for an adopted external cluster: a day, renewed by
/// itself like handed-out tokens; a controller down for longer needs the bootstrap Secret again.
pub const CONTROLLER_TOKEN_TTL_SECONDS: i64 = 24 * 3600;
/// In the external cluster: whose tokens people get, and the controller's own identity.
pub const EXTERNAL_NAMESPACE: &str = "kube-system";
pub const EXTERNAL_ADMIN: &str = "hostplane-admin";
pub const EXTERNAL_CONTROLLER: &str = "hostplane-controller";
/// Host Secret with the controller's token for an external cluster, and where that cluster is.
pub const ACCESS_SECRET: &str = "external-access";
/// Key of the bootstrap Secret read when `inClusterKey` is not given.
pub const BOOTSTRAP_KEY: &str = "kubeconfig";

const FIELD_MANAGER: &str = "hostplane-controller-adopted";

/// Whether a ControlPlane is served by this module rather than by tenant processes.
pub fn is_adopted(cp: &ControlPlane) -> bool {
    matches!(
        cp.spec.type_,
        ControlPlaneType::Host | ControlPlaneType::External
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptedError {
    #[error(
        "the controller does not know the host API server's URL and CA (its kubeconfig names no certificate authority); type host cannot hand it out"
    )]
    HostAccessUnknown,
    #[error("Secret {namespace}/{name} named by bootstrapSecretRef {problem}")]
    BootstrapSecret {
        namespace: String,
        name: String,
        problem: String,
    },
    #[error(
        "the controller's access to the external cluster lapsed ({detail}) and the bootstrap Secret {namespace}/{name} is gone: put a kubeconfig under key {key} in it to adopt the cluster again"
    )]
    AccessLost {
        detail: String,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{what} in the {cluster} cluster: {source}")]
    Kube {
        cluster: &'static str,
        what: String,
        source: kube::Error,
    },
    #[error("{0}")]
    Client(String),
}

impl AdoptedError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::HostAccessUnknown => "HostAccessUnknown",
            Self::BootstrapSecret { .. } => "BootstrapSecretInvalid",
            Self::AccessLost { .. } => "ExternalAccessLost",
            Self::Kube {
                cluster: "external",
                ..
            } => "ExternalClusterFailed",
            Self::Kube { .. } => "HostAccessFailed",
            Self::Client(_) => "ExternalClusterFailed",
        }
    }
}

fn kube_err(
    cluster: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(kube::Error) -> AdoptedError {
    let what = what.into();
    move |source| AdoptedError::Kube {
        cluster,
        what,
        source,
    }
}

/// What a pass established: where the handed-out kubeconfig points, the version that cluster
/// runs, when the next token renewal is due, and whether the bootstrap Secret was consumed now.
#[derive(Clone, Debug, PartialEq)]
pub struct AdoptedReport {
    pub endpoint: String,
    pub version: String,
    pub renew_at: Timestamp,
    pub bootstrap_consumed: Option<String>,
}

/// What a pass needs from the controller.
pub struct AdoptedContext<'a> {
    pub host: &'a kube::Client,
    pub host_access: Option<&'a HostAccess>,
    pub token_renew_fraction: f64,
}

/// The host access of a controller using `config`; people outside reach it at `external_url`
/// when given. `None` when the config names no CA to hand out.
pub fn host_access(config: &kube::Config, external_url: Option<&str>) -> Option<HostAccess> {
    let ca_pem: String = config
        .root_cert
        .as_ref()?
        .iter()
        .map(|der| pem("CERTIFICATE", der))
        .collect();
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    Some(HostAccess {
        external_url: external_url.map_or_else(|| url.clone(), str::to_string),
        url,
        ca_pem,
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The ControlPlane as owner of the host objects made for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
    pub namespace: String,
}

impl Owner {
    pub fn of(cp: &ControlPlane) -> Self {
        let name = cp.name_any();
        Self {
            namespace: system_namespace(&name),
            uid: cp.uid().unwrap_or_default(),
            name,
        }
    }

    /// Host ServiceAccount of a `host` ControlPlane.
    pub fn host_account(&self) -> String {
        format!("{}-admin", self.name)
    }

    /// Host ClusterRoleBinding of a `host` ControlPlane.
    pub fn host_binding(&self) -> String {
        format!("hostplane:{}-admin", self.name)
    }

    fn meta(&self, name: &str, namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(str::to_string),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (CONTROLPLANE_LABEL.to_string(), self.name.clone()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "tenancy.hostplane.io/v1alpha1".into(),
                kind: "ControlPlane".into(),
                name: self.name.clone(),
                uid: self.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        }
    }

    fn secret(&self, name: &str, data: BTreeMap<String, String>) -> Secret {
        Secret {
            metadata: self.meta(name, Some(&self.namespace)),
            type_: Some("Opaque".into()),
            data: Some(
                data.into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        }
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])
}

fn subject(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
    }
}

fn rule(group: &str, resource: &str, verbs: &[&str], names: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: Some(names.iter().map(|n| n.to_string()).collect()),
        ..Default::default()
    }
}

/// The host objects of a `host` ControlPlane: its ServiceAccount, bound to cluster-admin.
pub fn host_objects(owner: &Owner) -> (ServiceAccount, ClusterRoleBinding) {
    let account = owner.host_account();
    let sa = ServiceAccount {
        metadata: owner.meta(&account, Some(&owner.namespace)),
        ..Default::default()
    };
    let binding = ClusterRoleBinding {
        metadata: owner.meta(&owner.host_binding(), None),
        role_ref: role_ref("ClusterRole", "cluster-admin"),
        subjects: Some(vec![subject(&owner.namespace, &account)]),
    };
    (sa, binding)
}

/// What hostplane creates in an adopted external cluster (no owner references: the
/// ControlPlane lives in another cluster).
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalObjects {
    pub accounts: [ServiceAccount; 2],
    pub admin_binding: ClusterRoleBinding,
    pub controller_role: Role,
    pub controller_role_binding: RoleBinding,
    pub controller_cluster_role: ClusterRole,
    pub controller_cluster_role_binding: ClusterRoleBinding,
}

pub fn external_objects() -> ExternalObjects {
    let meta = |name: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels()),
        ..Default::default()
    };
    let ns = Some(EXTERNAL_NAMESPACE);
    let both = [EXTERNAL_ADMIN, EXTERNAL_CONTROLLER];
    ExternalObjects {
        accounts: both.map(|name| ServiceAccount {
            metadata: meta(name, ns),
            ..Default::default()
        }),
        admin_binding: ClusterRoleBinding {
            metadata: meta(EXTERNAL_ADMIN, None),
            role_ref: role_ref("ClusterRole", "cluster-admin"),
            subjects: Some(vec![subject(EXTERNAL_NAMESPACE, EXTERNAL_ADMIN)]),
        },
        // Mint (and renew its own) tokens, check the accounts exist, remove them on delete.
        controller_role: Role {
            metadata: meta(EXTERNAL_CONTROLLER, ns),
            rules: Some(vec![
                rule("", "serviceaccounts/token", &["create"], &both),
                rule("", "serviceaccounts", &["get", "delete"], &both),
            ]),
        },
        controller_role_binding: RoleBinding {
            metadata: meta(EXTERNAL_CONTROLLER, ns),
            role_ref: role_ref("Role", EXTERNAL_CONTROLLER),
            subjects: Some(vec![subject(EXTERNAL_NAMESPACE, EXTERNAL_CONTROLLER)]),
        },
        // Only to remove the admin binding (and its own) when the ControlPlane is deleted.
        controller_cluster_role: ClusterRole {
            metadata: meta(EXTERNAL_CONTROLLER, None),
            rules: Some(vec![rule(
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                &["delete"],
                &both,
            )]),
            ..Default::default()
        },
        controller_cluster_role_binding: ClusterRoleBinding {
            metadata: meta(EXTERNAL_CONTROLLER, None),
            role_ref: role_ref("ClusterRole", EXTERNAL_CONTROLLER),
            subjects: Some(vec![subject(EXTERNAL_NAMESPACE, EXTERNAL_CONTROLLER)]),
        },
    }
}

/// A server and the CA that verifies it, as read from a kubeconfig.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub url: String,
    pub ca_pem: String,
}

/// The server of a kubeconfig's current context (or its only cluster), which must embed its CA:
/// the CA is handed out again in every kubeconfig.
pub fn kubeconfig_server(config: &Kubeconfig) -> Result<Server, String> {
    let cluster_name = config
        .current_context
        .as_ref()
        .and_then(|current| config.contexts.iter().find(|c| &c.name == current))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = match cluster_name {
        Some(name) => config.clusters.iter().find(|c| c.name == name),
        None => config.clusters.first(),
    }
    .and_then(|c| c.cluster.as_ref())
    .ok_or("names no cluster for its current context")?;
    let url = cluster
        .server
        .clone()
        .ok_or("names no server for its cluster")?;
    let ca = cluster
        .certificate_authority_data
        .as_deref()
        .ok_or("has no certificate-authority-data (the CA must be embedded)")?;
    let ca_pem = STANDARD
        .decode(ca.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|p| p.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or("has certificate-authority-data that is not base64 of a PEM certificate")?;
    Ok(Server { url, ca_pem })
}

/// The controller's hold on an external cluster, as kept in `<cp>-system/external-access`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalAccess {
    /// For people outside the host (the bootstrap Secret's `kubeconfig`).
    pub outside: Server,
    /// For the controller and workloads inside the host (its `inClusterKey`, else the same).
    pub inside: Server,
    pub token: MintedToken,
}

impl ExternalAccess {
    pub fn to_secret(&self, owner: &Owner) -> Secret {
        let mut s = owner.secret(
            ACCESS_SECRET,
            BTreeMap::from([
                ("server".to_string(), self.outside.url.clone()),
                ("ca.crt".to_string(), self.outside.ca_pem.clone()),
                ("incluster-server".to_string(), self.inside.url.clone()),
                ("incluster-ca.crt".to_string(), self.inside.ca_pem.clone()),
                ("token".to_string(), self.token.token.clone()),
            ]),
        );
        s.metadata.annotations = Some(token_annotations(&self.token));
        s
    }

    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret_strings(secret);
        let (issued_at, expires_at) = token_times(secret)?;
        let get = |k: &str| data.get(k).cloned();
        Some(Self {
            outside: Server {
                url: get("server")?,
                ca_pem: get("ca.crt")?,
            },
            inside: Server {
                url: get("incluster-server")?,
                ca_pem: get("incluster-ca.crt")?,
            },
            token: MintedToken {
                token: get("token")?,
                issued_at,
                expires_at,
            },
        })
    }
}

fn token_annotations(token: &MintedToken) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TOKEN_ISSUED_AT.to_string(), token.issued_at.to_string()),
        (TOKEN_EXPIRES_AT.to_string(), token.expires_at.to_string()),
    ])
}

fn token_times(secret: &Secret) -> Option<(Timestamp, Timestamp)> {
    let a = secret.metadata.annotations.as_ref()?;
    Some((
        a.get(TOKEN_ISSUED_AT)?.parse().ok()?,
        a.get(TOKEN_EXPIRES_AT)?.parse().ok()?,
    ))
}

/// The handed-out kubeconfig Secret, laid out as for `k8s` tenants.
pub fn kubeconfig_secret(
    owner: &Owner,
    outside: &Server,
    inside: &Server,
    token: &MintedToken,
) -> Secret {
    let user = format!("{}-admin", owner.name);
    let yaml = |server: &Server| {
        kubeconfig::to_yaml(&kubeconfig::kubeconfig(
            &owner.name,
            &server.url,
            &server.ca_pem,
            &user,
            &Credential::Token(&token.token),
        ))
    };
    let mut s = owner.secret(
        KUBECONFIG_SECRET,
        BTreeMap::from([
            (KUBECONFIG_KEY.to_string(), yaml(outside)),
            (KUBECONFIG_INCLUSTER_KEY.to_string(), yaml(inside)),
        ]),
    );
    s.metadata.annotations = Some(token_annotations(token));
    s
}

async fn client_for(config: Kubeconfig) -> Result<kube::Client, AdoptedError> {
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| AdoptedError::Client(format!("a client for the external cluster: {e}")))?;
    kube::Client::try_from(config)
        .map_err(|e| AdoptedError::Client(format!("a client for the external cluster: {e}")))
}

async fn token_client(server: &Server, token: &str) -> Result<kube::Client, AdoptedError> {
    client_for(kubeconfig::kubeconfig(
        "external",
        &server.url,
        &server.ca_pem,
        EXTERNAL_CONTROLLER,
        &Credential::Token(token),
    ))
    .await
}

async fn apply<K>(
    client: &kube::Client,
    cluster: &'static str,
    object: &K,
) -> Result<(), AdoptedError>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.name_any();
    Api::<K>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(kube_err(
            cluster,
            format!("applying {} {name}", K::kind(&K::DynamicType::default())),
        ))?;
    Ok(())
}

async fn apply_namespaced<K>(
    client: &kube::Client,
    cluster: &'static str,
    object: &K,
) -> Result<(), AdoptedError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.name_any();
    let ns = object.namespace().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(kube_err(
            cluster,
            format!(
                "applying {} {ns}/{name}",
                K::kind(&K::DynamicType::default())
            ),
        ))?;
    Ok(())
}

async fn mint(
    client: &kube::Client,
    cluster: &'static str,
    namespace: &str,
    account: &str,
    ttl_seconds: i64,
) -> Result<MintedToken, AdoptedError> {
    let what = format!("requesting a token for ServiceAccount {namespace}/{account}");
    match tenant_access::request_token(client, namespace, account, ttl_seconds).await {
        Ok(Some(token)) => Ok(token),
        Ok(None) => Err(AdoptedError::Client(format!(
            "{what}: the answer has no token or expiry"
        ))),
        Err(TenantAccessError::TokenRequest(source)) => Err(kube_err(cluster, what)(source)),
        Err(e) => Err(AdoptedError::Client(format!("{what}: {e}"))),
    }
}

async fn version(client: &kube::Client, cluster: &'static str) -> Result<String, AdoptedError> {
    let info = client
        .apiserver_version()
        .await
        .map_err(kube_err(cluster, "reading /version"))?;
    Ok(info.git_version.trim_start_matches('v').to_string())
}

async fn get_secret(
    host: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, AdoptedError> {
    Api::<Secret>::namespaced(host.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(kube_err(
            "host",
            format!("reading Secret {namespace}/{name}"),
        ))
}

/// Creates or repairs what a `host` or `external` ControlPlane needs and keeps its handed-out
/// token fresh.
pub async fn apply_adopted(
    cp: &ControlPlane,
    ctx: &AdoptedContext<'_>,
) -> Result<AdoptedReport, AdoptedError> {
    let owner = Owner::of(cp);
    let host = ctx.host;
    let namespace = Namespace {
        metadata: owner.meta(&owner.namespace, None),
        ..Default::default()
    };
    apply(host, "host", &namespace).await?;
    match cp.spec.type_ {
        ControlPlaneType::External => apply_external(cp, &owner, ctx).await,
        _ => apply_host(cp, &owner, ctx).await,
    }
}

async fn apply_host(
    cp: &ControlPlane,
    owner: &Owner,
    ctx: &AdoptedContext<'_>,
) -> Result<AdoptedReport, AdoptedError> {
    let access = ctx.host_access.ok_or(AdoptedError::HostAccessUnknown)?;
    let (sa, binding) = host_objects(owner);
    apply_namespaced(ctx.host, "host", &sa).await?;
    apply(ctx.host, "host", &binding).await?;
    let outside = Server {
        url: access.external_url.clone(),
        ca_pem: access.ca_pem.clone(),
    };
    let inside = Server {
        url: access.url.clone(),
        ca_pem: access.ca_pem.clone(),
    };
    let renew_at = ensure_handed_out(
        cp,
        owner,
        ctx,
        (ctx.host, "host"),
        (&owner.namespace, &owner.host_account()),
        (&outside, &inside),
    )
    .await?;
    Ok(AdoptedReport {
        endpoint: outside.url,
        version: version(ctx.host, "host").await?,
        renew_at,
        bootstrap_consumed: None,
    })
}

/// Mints a new handed-out token when the current one is due (or the Secret no longer matches
/// where the cluster is); returns when the next renewal is due.
async fn ensure_handed_out(
    cp: &ControlPlane,
    owner: &Owner,
    ctx: &AdoptedContext<'_>,
    (client, cluster): (&kube::Client, &'static str),
    (namespace, account): (&str, &str),
    (outside, inside): (&Server, &Server),
) -> Result<Timestamp, AdoptedError> {
    let ttl = cp.spec.token_expiration_seconds;
    let fraction = ctx.token_renew_fraction;
    let current = get_secret(ctx.host, &owner.namespace, KUBECONFIG_SECRET).await?;
    let still_good = current.as_ref().and_then(|s| {
        let (issued, expires) = token_times(s)?;
        let data = secret_strings(s);
        let token = data.get(KUBECONFIG_KEY).and_then(|k| token_of(k))?;
        let minted = MintedToken {
            token,
            issued_at: issued,
            expires_at: expires,
        };
        // Same server, same CA, same token in both keys: else re-issue.
        let wanted = kubeconfig_secret(owner, outside, inside, &minted);
        let same = secret_strings(&wanted) == data;
        (same && !tenant_access::token_due(issued, expires, ttl, fraction, Timestamp::now()))
            .then(|| tenant_access::renew_at(issued, expires, fraction))
    });
    if let Some(renew_at) = still_good {
        return Ok(renew_at);
    }
    let minted = mint(client, cluster, namespace, account, ttl).await?;
    apply_namespaced(
        ctx.host,
        "host",
        &kubeconfig_secret(owner, outside, inside, &minted),
    )
    .await?;
    info!(controlplane = %owner.name, expires_at = %minted.expires_at, "issued kubeconfig token");
    Ok(tenant_access::renew_at(
        minted.issued_at,
        minted.expires_at,
        fraction,
    ))
}

/// The bearer token of a kubeconfig's first user.
fn token_of(kubeconfig_yaml: &str) -> Option<String> {
    let config: serde_yaml::Value = serde_yaml::from_str(kubeconfig_yaml).ok()?;
    config["users"][0]["user"]["token"]
        .as_str()
        .map(str::to_string)
}

/// Whether an error means the credential is no longer accepted (rather than a cluster down).
fn is_unauthorized(e: &AdoptedError) -> bool {
    matches!(e, AdoptedError::Kube { source: kube::Error::Api(s), .. } if s.code == 401)
}

async fn apply_external(
    cp: &ControlPlane,
    owner: &Owner,
    ctx: &AdoptedContext<'_>,
) -> Result<AdoptedReport, AdoptedError> {
    let fraction = ctx.token_renew_fraction;
    let stored = get_secret(ctx.host, &owner.namespace, ACCESS_SECRET)
        .await?
        .and_then(|s| ExternalAccess::from_secret(&s));
    let now = Timestamp::now();
    // The stored token, if it still works: checked by reading the admin ServiceAccount, which
    // also proves that account still exists.
    let mut lapsed = None;
    let usable = match stored {
        Some(access) if access.token.expires_at > now => {
            let client = token_client(&access.inside, &access.token.token).await?;
            match check_accounts(&client).await {
                Ok(()) => Some((access, client)),
                Err(e) if is_unauthorized(&e) || is_missing(&e) => {
                    lapsed = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e),
            }
        }
        Some(access) => {
            lapsed = Some(format!("its token expired at {}", access.token.expires_at));
            None
        }
        None => None,
    };
    let (mut access, client, consumed) = match usable {
        Some((access, client)) => (access, client, None),
        None => {
            let (access, client, consumed) = adopt(cp, owner, ctx, lapsed).await?;
            (access, client, Some(consumed))
        }
    };
    let mut client = client;
    if consumed.is_none()
        && tenant_access::token_due(
            access.token.issued_at,
            access.token.expires_at,
            CONTROLLER_TOKEN_TTL_SECONDS,
            fraction,
            now,
        )
    {
        // The controller renews its own token with itself: no bootstrap credential needed.
        access.token = mint(
            &client,
            "external",
            EXTERNAL_NAMESPACE,
            EXTERNAL_CONTROLLER,
            CONTROLLER_TOKEN_TTL_SECONDS,
        )
        .await?;
        apply_namespaced(ctx.host, "host", &access.to_secret(owner)).await?;
        client = token_client(&access.inside, &access.token.token).await?;
        info!(controlplane = %owner.name, expires_at = %access.token.expires_at, "renewed the controller's token for the external cluster");
    }
    let handed_out_renewal = ensure_handed_out(
        cp,
        owner,
        ctx,
        (&client, "external"),
        (EXTERNAL_NAMESPACE, EXTERNAL_ADMIN),
        (&access.outside, &access.inside),
    )
    .await?;
    let own_renewal =
        tenant_access::renew_at(access.token.issued_at, access.token.expires_at, fraction);
    Ok(AdoptedReport {
        endpoint: access.outside.url.clone(),
        version: version(&client, "external").await?,
        renew_at: handed_out_renewal.min(own_renewal),
        bootstrap_consumed: consumed,
    })
}

fn is_missing(e: &AdoptedError) -> bool {
    matches!(e, AdoptedError::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
}

async fn check_accounts(client: &kube::Client) -> Result<(), AdoptedError> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), EXTERNAL_NAMESPACE);
    for name in [EXTERNAL_ADMIN, EXTERNAL_CONTROLLER] {
        api.get(name).await.map_err(kube_err(
            "external",
            format!("reading ServiceAccount {EXTERNAL_NAMESPACE}/{name}"),
        ))?;
    }
    Ok(())
}

/// First setup (or setup again after the controller's access lapsed) with the bootstrap
/// kubeconfig; deletes the bootstrap Secret once the controller's own access works. Returns the
/// access, a client with it, and a note on the consumed Secret.
async fn adopt(
    cp: &ControlPlane,
    owner: &Owner,
    ctx: &AdoptedContext<'_>,
    lapsed: Option<String>,
) -> Result<(ExternalAccess, kube::Client, String), AdoptedError> {
    let r = cp
        .spec
        .bootstrap_secret_ref
        .as_ref()
        .ok_or_else(|| AdoptedError::Client("type external needs bootstrapSecretRef".into()))?;
    let key = r.in_cluster_key.clone().unwrap_or(BOOTSTRAP_KEY.into());
    let invalid = |problem: String| AdoptedError::BootstrapSecret {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        problem,
    };
    let Some(secret) = get_secret(ctx.host, &r.namespace, &r.name).await? else {
        return Err(match lapsed {
            Some(detail) => AdoptedError::AccessLost {
                detail,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                key,
            },
            None => invalid("does not exist".into()),
        });
    };
    let data = secret_strings(&secret);
    let parse = |k: &str| -> Result<Kubeconfig, AdoptedError> {
        Kubeconfig::from_yaml(&data[k])
            .map_err(|e| invalid(format!("holds under key {k:?} no kubeconfig: {e}")))
    };
    if !data.contains_key(&key) {
        return Err(invalid(format!("has no key {key:?}")));
    }
    let inside_config = parse(&key)?;
    let outside_config = match data.contains_key(BOOTSTRAP_KEY) {
        true => parse(BOOTSTRAP_KEY)?,
        false => inside_config.clone(),
    };
    let server_of = |k: &str, c: &Kubeconfig| {
        kubeconfig_server(c)
            .map_err(|p| invalid(format!("holds a kubeconfig under {k:?} that {p}")))
    };
    let inside = server_of(&key, &inside_config)?;
    let outside = server_of(BOOTSTRAP_KEY, &outside_config)?;
    let bootstrap = client_for(inside_config).await?;

    let objects = external_objects();
    for sa in &objects.accounts {
        apply_namespaced(&bootstrap, "external", sa).await?;
    }
    apply(&bootstrap, "external", &objects.admin_binding).await?;
    apply_namespaced(&bootstrap, "external", &objects.controller_role).await?;
    apply_namespaced(&bootstrap, "external", &objects.controller_role_binding).await?;
    apply(&bootstrap, "external", &objects.controller_cluster_role).await?;
    apply(
        &bootstrap,
        "external",
        &objects.controller_cluster_role_binding,
    )
    .await?;
    let token = mint(
        &bootstrap,
        "external",
        EXTERNAL_NAMESPACE,
        EXTERNAL_CONTROLLER,
        CONTROLLER_TOKEN_TTL_SECONDS,
    )
    .await?;
    let access = ExternalAccess {
        outside,
        inside,
        token,
    };
    // Proven before the bootstrap credential goes: the controller's own access works.
    let client = token_client(&access.inside, &access.token.token).await?;
    check_accounts(&client).await?;
    apply_namespaced(ctx.host, "host", &access.to_secret(owner)).await?;
    match Api::<Secret>::namespaced(ctx.host.clone(), &r.namespace)
        .delete(&r.name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => {
            return Err(kube_err(
                "host",
                format!(
                    "deleting the consumed bootstrap Secret {}/{}",
                    r.namespace, r.name
                ),
            )(source));
        }
    }
    let note = format!(
        "adopted the cluster at {} and deleted the bootstrap Secret {}/{}: the controller keeps only a {}-hour token of {EXTERNAL_NAMESPACE}/{EXTERNAL_CONTROLLER}, which may only mint tokens for {EXTERNAL_NAMESPACE}/{EXTERNAL_ADMIN}",
        access.outside.url,
        r.namespace,
        r.name,
        CONTROLLER_TOKEN_TTL_SECONDS / 3600
    );
    info!(controlplane = %owner.name, "{note}");
    Ok((access, client, note))
}

/// Removes what a `host` or `external` ControlPlane made outside its `<cp>-system` namespace:
/// the host ClusterRoleBinding, or the ServiceAccounts and bindings in the external cluster.
/// Deleting `hostplane-admin` there invalidates every token handed out for it. An unreachable
/// external cluster does not block the delete (tokens expire anyway): it is logged.
pub async fn cleanup_adopted(cp: &ControlPlane, host: &kube::Client) -> Result<(), AdoptedError> {
    let owner = Owner::of(cp);
    match cp.spec.type_ {
        ControlPlaneType::Host => {
            delete_cluster_scoped::<ClusterRoleBinding>(host, "host", &owner.host_binding()).await
        }
        ControlPlaneType::External => {
            let Some(access) = get_secret(host, &owner.namespace, ACCESS_SECRET)
                .await?
                .and_then(|s| ExternalAccess::from_secret(&s))
            else {
                return Ok(());
            };
            match remove_external(&access).await {
                // Done: a repeated teardown finds nothing left to do.
                Ok(()) => ignore_missing(
                    Api::<Secret>::namespaced(host.clone(), &owner.namespace)
                        .delete(ACCESS_SECRET, &DeleteParams::default())
                        .await,
                )
                .map_err(kube_err(
                    "host",
                    format!("deleting Secret {}/{ACCESS_SECRET}", owner.namespace),
                )),
                Err(e) => {
                    warn!(controlplane = %owner.name, error = %e, "cannot remove hostplane's accounts from the external cluster; handed-out tokens lapse when they expire");
                    Ok(())
                }
            }
        }
        _ => Ok(()),
    }
}

async fn remove_external(access: &ExternalAccess) -> Result<(), AdoptedError> {
    let client = token_client(&access.inside, &access.token.token).await?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), EXTERNAL_NAMESPACE);
    delete_cluster_scoped::<ClusterRoleBinding>(&client, "external", EXTERNAL_ADMIN).await?;
    ignore_missing(
        accounts
            .delete(EXTERNAL_ADMIN, &DeleteParams::default())
            .await,
    )
    .map_err(kube_err(
        "external",
        format!("deleting ServiceAccount {EXTERNAL_ADMIN}"),
    ))?;
    delete_cluster_scoped::<ClusterRoleBinding>(&client, "external", EXTERNAL_CONTROLLER).await?;
    // Last: deleting its own account ends the controller's token. The Role, RoleBinding and
    // ClusterRole left behind grant nothing to anybody who exists.
    ignore_missing(
        accounts
            .delete(EXTERNAL_CONTROLLER, &DeleteParams::default())
            .await,
    )
    .map_err(kube_err(
        "external",
        format!("deleting ServiceAccount {EXTERNAL_CONTROLLER}"),
    ))
}

fn ignore_missing<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_cluster_scoped<K>(
    client: &kube::Client,
    cluster: &'static str,
    name: &str,
) -> Result<(), AdoptedError>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    ignore_missing(
        Api::<K>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await,
    )
    .map_err(kube_err(
        cluster,
        format!("deleting {} {name}", K::kind(&K::DynamicType::default())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner() -> Owner {
        Owner {
            name: "acme".into(),
            uid: "u-1".into(),
            namespace: "acme-system".into(),
        }
    }

    fn owned_meta(name: &str, namespace: Option<&str>) -> serde_json::Value {
        let mut meta = json!({
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "hostplane", "tenancy.hostplane.io/controlplane": "acme"},
            "ownerReferences": [{
                "apiVersion": "tenancy.hostplane.io/v1alpha1", "kind": "ControlPlane", "name": "acme",
                "uid": "u-1", "controller": true, "blockOwnerDeletion": true
            }]
        });
        if let Some(ns) = namespace {
            meta["namespace"] = json!(ns);
        }
        meta
    }

    #[test]
    fn host_type_binds_its_own_account_to_cluster_admin() {
        let (sa, binding) = host_objects(&owner());
        assert_eq!(
            (
                serde_json::to_value(sa).unwrap(),
                serde_json::to_value(binding).unwrap()
            ),
            (
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": owned_meta("acme-admin", Some("acme-system"))}),
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": owned_meta("hostplane:acme-admin", None),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "ServiceAccount", "name": "acme-admin", "namespace": "acme-system"}]
                })
            )
        );
    }

    #[test]
    fn the_controller_may_only_mint_read_and_remove_its_own_accounts_in_an_external_cluster() {
        let o = external_objects();
        let meta = |name: &str, ns: Option<&str>| {
            let mut m =
                json!({"name": name, "labels": {"app.kubernetes.io/managed-by": "hostplane"}});
            if let Some(ns) = ns {
                m["namespace"] = json!(ns);
            }
            m
        };
        let names = json!(["hostplane-admin", "hostplane-controller"]);
        assert_eq!(
            serde_json::to_value(&o.controller_role).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": meta("hostplane-controller", Some("kube-system")),
                "rules": [
                    {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"], "resourceNames": names},
                    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "delete"], "resourceNames": names}
                ]
            })
        );
        assert_eq!(
            serde_json::to_value(&o.controller_cluster_role).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": meta("hostplane-controller", None),
                "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterrolebindings"], "verbs": ["delete"], "resourceNames": names}]
            })
        );
        assert_eq!(
            serde_json::to_value(&o.admin_binding).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": meta("hostplane-admin", None),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": "hostplane-admin", "namespace": "kube-system"}]
            })
        );
        assert_eq!(
            serde_json::to_value(&o.controller_role_binding).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": meta("hostplane-controller", Some("kube-system")),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hostplane-controller"},
                "subjects": [{"kind": "ServiceAccount", "name": "hostplane-controller", "namespace": "kube-system"}]
            })
        );
        assert_eq!(
            o.accounts.map(|a| a.name_any()),
            ["hostplane-admin", "hostplane-controller"].map(String::from)
        );
    }

    fn token() -> MintedToken {
        MintedToken {
            token: "t0k".into(),
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: "2026-01-01T02:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn handed_out_secret_is_laid_out_as_for_k8s_tenants() {
        let outside = Server {
            url: "https://people:6443".into(),
            ca_pem: "CA".into(),
        };
        let inside = Server {
            url: "https://10.0.0.1:443".into(),
            ca_pem: "CA2".into(),
        };
        let s = kubeconfig_secret(&owner(), &outside, &inside, &token());
        let data = secret_strings(&s);
        let expected = |server: &str, ca: &str| {
            kubeconfig::to_yaml(&kubeconfig::kubeconfig(
                "acme",
                server,
                ca,
                "acme-admin",
                &Credential::Token("t0k"),
            ))
        };
        assert_eq!(
            data,
            BTreeMap::from([
                (
                    "kubeconfig".to_string(),
                    expected("https://people:6443", "CA")
                ),
                (
                    "kubeconfig-incluster".to_string(),
                    expected("https://10.0.0.1:443", "CA2")
                ),
            ])
        );
        let mut meta = owned_meta("admin-kubeconfig", Some("acme-system"));
        meta["annotations"] = json!({
            "tenancy.hostplane.io/token-issued-at": "2026-01-01T00:00:00Z",
            "tenancy.hostplane.io/token-expires-at": "2026-01-01T02:00:00Z"
        });
        assert_eq!(serde_json::to_value(&s.metadata).unwrap(), meta);
        assert_eq!(token_of(&data["kubeconfig"]).as_deref(), Some("t0k"));
    }

    #[test]
    fn external_access_round_trips_through_its_secret() {
        let access = ExternalAccess {
            outside: Server {
                url: "https://a:1".into(),
                ca_pem: "A".into(),
            },
            inside: Server {
                url: "https://b:2".into(),
                ca_pem: "B".into(),
            },
            token: token(),
        };
        let secret = access.to_secret(&owner());
        assert_eq!(secret.name_any(), "external-access");
        assert_eq!(ExternalAccess::from_secret(&secret), Some(access));
    }

    fn bootstrap(ca_data: Option<&str>) -> Kubeconfig {
        let mut cluster = json!({"server": "https://127.0.0.1:7000"});
        if let Some(ca) = ca_data {
            cluster["certificate-authority-data"] = json!(ca);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "other", "cluster": {"server": "https://elsewhere:1"}}, {"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": "x"}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "ctx"
        }))
        .unwrap()
    }

    #[test]
    fn bootstrap_kubeconfigs_must_embed_their_ca() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            kubeconfig_server(&bootstrap(Some(&STANDARD.encode(pem)))),
            Ok(Server {
                url: "https://127.0.0.1:7000".into(),
                ca_pem: pem.into()
            })
        );
        assert_eq!(
            kubeconfig_server(&bootstrap(None)),
            Err("has no certificate-authority-data (the CA must be embedded)".into())
        );
        assert_eq!(
            kubeconfig_server(&bootstrap(Some("bm90IGEgY2VydA=="))),
            Err("has certificate-authority-data that is not base64 of a PEM certificate".into())
        );
    }

    #[test]
    fn host_access_hands_out_the_controllers_url_and_ca_unless_overridden() {
        let pki = crate::pki::ensure_pki(
            &Default::default(),
            &crate::pki::PkiRequest {
                cluster_name: "host".into(),
                apiserver_sans: vec![],
                ca_validity: std::time::Duration::from_secs(3600),
                leaf_validity: std::time::Duration::from_secs(600),
            },
            std::time::SystemTime::now(),
        )
        .unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(pki["ca.crt"].as_bytes()).unwrap();
        let mut config = kube::Config::new("https://127.0.0.1:6443/".parse().unwrap());
        assert_eq!(host_access(&config, None), None);
        config.root_cert = Some(vec![ca.contents.clone()]);
        assert_eq!(
            host_access(&config, None),
            Some(HostAccess {
                url: "https://127.0.0.1:6443".into(),
                external_url: "https://127.0.0.1:6443".into(),
                ca_pem: pki["ca.crt"].clone(),
            })
        );
        assert_eq!(
            host_access(&config, Some("https://host.example:443")).map(|a| a.external_url),
            Some("https://host.example:443".into())
        );
    }
}
