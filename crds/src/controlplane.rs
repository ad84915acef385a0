//! `ControlPlane`: one tenant Kubernetes control plane. Field names follow KubeFlex's
//! `tenancy.kflex.kubestellar.org/v1alpha1` so that a KubeFlex manifest moves by changing its
//! `apiVersion` only.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Lifetime of handed-out tokens when the spec names none (KubeFlex's default as well).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 7200;

/// The desired state of a tenant control plane.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tenancy.hostplane.io",
    version = "v1alpha1",
    kind = "ControlPlane",
    plural = "controlplanes",
    shortname = "cp",
    shortname = "cps",
    category = "hostplane",
    status = "ControlPlaneStatus",
    derive = "PartialEq",
    doc = "A tenant Kubernetes control plane hosted by hostplane.",
    printcolumn(name = "TYPE", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "BACKEND", type_ = "string", json_path = ".spec.backend"),
    printcolumn(name = "VERSION", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type=='Ready')].reason"
    ),
    printcolumn(
        name = "SYNCED",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type=='Synced')].status"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 56").message(
        "a ControlPlane name must be at most 56 characters: its '<name>-system' namespace must fit in 63"
    ),
)]
#[x_kube(
    validation = Rule::new("self.type != 'external' || has(self.bootstrapSecretRef)")
        .message("bootstrapSecretRef is required when type is external: name the Secret holding the cluster's kubeconfig"),
    validation = Rule::new("self.backend != 'external' || has(self.datastoreSecretRef)")
        .message("datastoreSecretRef is required when backend is external: name the Secret holding the DSN or etcd endpoints"),
)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// What kind of control plane this is. Immutable.
    #[serde(default, rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("type is immutable: delete and recreate the ControlPlane to change it"))]
    pub type_: ControlPlaneType,

    /// Where the tenant's state is stored. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("backend is immutable: the tenant's data lives there"))]
    pub backend: BackendType,

    /// The tenant's Kubernetes minor version, such as "1.37"; the newest the host has when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^1\\\\.[0-9]+$')").message("version must be a Kubernetes minor version such as \"1.37\""))]
    pub version: Option<String>,

    /// Lifetime of the tokens in every kubeconfig handed out; they are renewed before they expire.
    #[serde(default = "default_token_expiration_seconds")]
    #[x_kube(validation = Rule::new("self >= 600 && self <= 31536000").message(
        "tokenExpirationSeconds must be between 600 (the TokenRequest minimum) and 31536000 (one year)"
    ))]
    pub token_expiration_seconds: i64,

    /// For type external: the Secret holding the kubeconfig of the cluster to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_secret_ref: Option<BootstrapSecretReference>,

    /// For backend external: the Secret holding a Postgres DSN or etcd endpoints and client certs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_secret_ref: Option<DatastoreSecretReference>,

    /// The single PostCreateHook to run after creation (KubeFlex's older single-hook form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_create_hook: Option<String>,

    /// Variables for `postCreateHook`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub post_create_hook_vars: BTreeMap<String, String>,

    /// PostCreateHooks to run after creation, each with its own variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub post_create_hooks: Vec<PostCreateHookUse>,

    /// Variables every hook of this control plane sees (below per-hook vars in precedence).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub global_vars: BTreeMap<String, String>,

    /// Hold Ready=False until every hook's Jobs have succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_post_create_hooks: Option<bool>,

    /// When the tenant's processes are stopped to save memory (its datastore is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation: Option<Hibernation>,

    /// Where the tenant's control plane pods run on the host (the `pods` runtime only; the
    /// `processes` runtime ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// What the tenant may use: storage, API concurrency, datastore connections. Unset fields
    /// take the controller's defaults (`hostplane controller --help`, "Tenant limits").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// Per-tenant limits. Storage over `maxStorageBytes` makes the tenant read-only (condition
/// `QuotaExceeded`: reads and deletes work, creates and updates are refused with a message that
/// says why) until its usage falls below the limit again, the contract etcd's NOSPACE alarm gives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Bytes of live data (keys and values) the tenant may keep in its datastore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub max_storage_bytes: Option<i64>,

    /// The tenant API server's `--max-requests-inflight` (non-mutating requests at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_requests_inflight: Option<i32>,

    /// The tenant API server's `--max-mutating-requests-inflight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_mutating_requests_inflight: Option<i32>,

    /// Connections the tenant may hold to its datastore: the Postgres role's `CONNECTION LIMIT`
    /// (Kine's pool keeps a quarter of it free). At least 8: with a pool of 3 a starting API
    /// server's requests queue for tens of seconds and it never becomes ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 1000))]
    pub max_datastore_connections: Option<i32>,

    /// Longest a single datastore statement may run (Postgres `statement_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub statement_timeout_seconds: Option<i32>,

    /// CPU the tenant's control plane processes may use together, in millicores (1000 = one
    /// core): a CPU bandwidth limit on a control group per tenant (processes runtime), so one
    /// tenant's request storm leaves the machine's other cores to the other tenants. The start
    /// of the API server is spared; the limit applies once it is ready. Unset: the controller's
    /// `--default-max-cpu-millicores`, which is unlimited unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 256000))]
    pub max_cpu_millicores: Option<i32>,
}

/// Host nodes for a tenant's control plane pods: copied into its Deployment's pod template, so a
/// change rolls the pods onto the nodes it names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a host node must carry to run the control plane pods (the pod's `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints of host nodes the control plane pods tolerate (the pod's `tolerations`), such as
    /// those of nodes reserved for tenant control planes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}

/// Hibernation: an idle tenant's API server and controller-manager are stopped, its data kept;
/// the first connection through the proxy wakes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hibernation {
    /// Hibernate after this many seconds without a connection through the proxy; 0 never.
    /// Unset: the controller's default (`--idle-after-seconds`). Needs the proxy, which is
    /// what sees the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub idle_after_seconds: Option<i64>,

    /// Hibernate now and stay hibernated, whatever the traffic: connections through the proxy
    /// are refused until this is false again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// Annotation the proxy writes on a ControlPlane: when it last relayed a connection for it
/// (RFC 3339). The controller hibernates tenants idle for longer than `idleAfterSeconds`.
pub const LAST_ACTIVITY_ANNOTATION: &str = "tenancy.hostplane.io/last-activity";

/// Annotation the proxy writes on a hibernated ControlPlane when a client connects (RFC 3339);
/// the controller wakes the tenant.
pub const WAKE_REQUESTED_ANNOTATION: &str = "tenancy.hostplane.io/wake-requested";

/// Annotation an operator sets to `"true"` on a ControlPlane to pause its reconciliation (for
/// manual maintenance): the controller changes nothing it owns until the annotation is removed,
/// and says so in `Synced` (reason `ReconcilePaused`). Not `spec.hibernation.paused`, which
/// stops the tenant; this one leaves it running as it is.
pub const RECONCILE_PAUSED_ANNOTATION: &str = "tenancy.hostplane.io/reconcile-paused";

fn default_token_expiration_seconds() -> i64 {
    DEFAULT_TOKEN_EXPIRATION_SECONDS
}

/// The kinds of control plane. `vcluster`, `ocm` and `k3s` are accepted (KubeFlex manifests
/// name them) and reported as unsupported until implemented.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlaneType {
    /// Own kube-apiserver and kube-controller-manager.
    #[default]
    K8s,
    /// The host cluster itself is handed out (kubeconfig only).
    Host,
    /// An existing cluster adopted from `bootstrapSecretRef`.
    External,
    Vcluster,
    Ocm,
    K3s,
}

impl ControlPlaneType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::K8s => "k8s",
            Self::Host => "host",
            Self::External => "external",
            Self::Vcluster => "vcluster",
            Self::Ocm => "ocm",
            Self::K3s => "k3s",
        }
    }
}

/// Where a tenant's state lives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    /// Kine on the shared Postgres: one database and one login role per tenant.
    #[default]
    Shared,
    /// An etcd of the tenant's own, mTLS only.
    Dedicated,
    /// A datastore the user provides through `datastoreSecretRef`; never dropped on delete.
    External,
}

impl BackendType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Dedicated => "dedicated",
            Self::External => "external",
        }
    }
}

/// One use of a PostCreateHook by a control plane.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.hookName)").message("hookName is required: name the PostCreateHook to run"))]
#[serde(rename_all = "camelCase")]
pub struct PostCreateHookUse {
    /// Name of the PostCreateHook object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message(
        "hookName must be a DNS subdomain name: lowercase letters, digits, '-' and '.', at most 253 characters"
    ))]
    pub hook_name: Option<String>,

    /// Variables for this hook (a map, so every name appears once).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

/// Reference to the Secret holding an external cluster's kubeconfig.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSecretReference {
    pub name: String,
    pub namespace: String,
    /// Key of the kubeconfig usable from inside the host cluster, when it differs from `kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster_key: Option<String>,
}

/// Reference to the Secret describing an external datastore: key `dsn` (Postgres, through Kine)
/// or `endpoints` plus `ca.crt`, `tls.crt`, `tls.key` (etcd).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreSecretReference {
    pub name: String,
    pub namespace: String,
}

/// The observed state of a tenant control plane.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneStatus {
    #[serde(default)]
    pub conditions: Vec<ControlPlaneCondition>,
    #[serde(default)]
    pub observed_generation: i64,
    /// The Secret holding the tenant's kubeconfigs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// KubeFlex's shape: hook name → applied. Kept so KubeFlex tooling still reads it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub post_create_hooks: BTreeMap<String, bool>,
    #[serde(default)]
    pub post_create_hook_completed: bool,
    /// Per-hook progress, richer than `postCreateHooks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook_statuses: Vec<HookStatus>,
    /// Worker VirtualMachines hooks no longer render (a lower `node_count`, a dropped hook),
    /// kept until their tenant Node is drained and deleted and then the VM itself is: a step
    /// that fails is retried on the next pass instead of leaking the Node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub retiring_nodes: Vec<HookObject>,
    /// Where the tenant's API server listens, as `https://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Kubernetes version the tenant runs, such as "1.37.2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What was provisioned for the tenant's state; written before the finalizer relies on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<DatastoreStatus>,
    /// Since when the tenant is hibernated (processes stopped); absent while it is awake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated_at: Option<Time>,
    /// Progress of the last cluster CA rotation asked for by the annotation
    /// `tenancy.hostplane.io/rotate-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotationStatus>,
    /// What the tenant used when last sampled (`hostplane usage` shows it as a table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
}

/// A tenant's resource usage, sampled periodically by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// When these figures were sampled.
    pub sampled_time: Time,
    /// CPU time the tenant's control plane components have used, in seconds (cumulative over
    /// the components' current lives).
    pub cpu_seconds: f64,
    /// Resident memory of the tenant's control plane components, in bytes (0 while hibernated).
    pub memory_bytes: i64,
    /// Bytes of live data (keys and values) the tenant keeps: what `limits.maxStorageBytes`
    /// is measured against.
    pub storage_bytes: i64,
    /// The datastore's own size on disk for this tenant (Postgres `pg_database_size`, Kine's
    /// SQLite file, the dedicated etcd's db size), history and free pages included; absent
    /// where the tenant shares it (shared etcd) or it is not ours to measure (external etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_bytes: Option<i64>,
    /// Objects (keys) the tenant stores.
    pub objects: i64,
    /// API requests the tenant API server has served (its `apiserver_request_total`, over the
    /// API server's current life).
    pub api_requests: i64,
    /// API requests per second over the last sampling interval.
    pub api_request_rate: f64,
}

/// Where a cluster CA rotation stands: `TrustingBoth` (new CA trusted beside the old, leaves
/// still from the old), `Switched` (leaves from the new CA, old still trusted), `Completed`
/// (old CA dropped).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaRotationStatus {
    /// The annotation value this rotation answers.
    pub requested: String,
    pub stage: String,
    /// When the stage began (RFC 3339).
    pub since: String,
}

/// Reference to the Secret with the tenant's kubeconfigs (KubeFlex's shape).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    pub name: String,
    pub namespace: String,
    /// Key of the kubeconfig usable from outside the host cluster.
    pub key: String,
    /// Key of the kubeconfig usable from inside the host cluster.
    pub in_cluster_key: String,
}

impl ControlPlane {
    /// The condition of this type (`Ready`, `Synced`), if the controller has written one.
    pub fn condition(&self, type_: &str) -> Option<&ControlPlaneCondition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// A condition in KubeFlex's shape (with `lastUpdateTime`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneCondition {
    /// `Ready` or `Synced`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub last_transition_time: Time,
    pub last_update_time: Time,
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// Progress of one post-create hook.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    pub name: String,
    pub phase: HookPhase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How many times the hook was applied with a different outcome, or retried after failing.
    #[serde(default)]
    pub attempts: i32,
    /// When the hook was last applied or retried: the backoff of the next retry counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// When the hook's objects were first applied: its Jobs must succeed within the hook
    /// timeout from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_time: Option<Time>,
    /// The objects the hook applied, so that ones it no longer renders (and, on delete,
    /// cluster-scoped ones) are removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub objects: Vec<HookObject>,
}

/// One object a hook applied to the host.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct HookObject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HookPhase {
    #[default]
    Pending,
    Applied,
    Succeeded,
    Failed,
}

/// What was provisioned to hold a tenant's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreStatus {
    /// `postgres` (Kine on the shared Postgres), `sqlite` (Kine on a local file, embedded
    /// default), `etcd` (dedicated), `shared-etcd` (a user and key prefix on the shared etcd)
    /// or `external`.
    pub kind: String,
    /// Postgres database owned by the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Postgres login role owning `database`; for `shared-etcd`, the tenant's etcd user (and
    /// role), confined to the key prefix `/hostplane/<uid>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}
