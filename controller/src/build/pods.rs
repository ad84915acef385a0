//! The objects of the `pods` runtime: a tenant's control plane as a Deployment and a Service in
//! its `<cp>-system` namespace of the host, and the objects that fence that namespace in
//! (ResourceQuota, LimitRange, NetworkPolicies, Pod Security labels). Pure: from the plan, the
//! controller's `PodsConfig` and the tenant's facts to whole k8s-openapi objects.
//!
//! The containers run exactly the flags of the processes runtime: their args come from
//! `control_plane_bundle` with the state dir replaced by the mount point of the tenant's files,
//! so the two runtimes cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostplane_crds::Placement;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::build::objects::{self, CERTS_SECRET, CONTROLPLANE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use crate::build::pods_etcd;
use crate::build::processes::{
    BundleInput, ControlPlaneBundle, RELOAD_MARGIN, Reload, Store, TenantPorts,
    control_plane_bundle, pki_file_path,
};
use crate::pki::{PkiFiles, rotation};
use crate::validate::TenantPlan;

/// Port the tenant API server listens on inside its pod.
pub const APISERVER_PORT: u16 = 6443;
/// Port of the tenant's Service: `https://<cp>.<cp>-system.svc:443`.
pub const SERVICE_PORT: u16 = 443;
/// Secret with the kubeconfigs of kube-controller-manager and kube-scheduler.
pub const COMPONENT_KUBECONFIGS_SECRET: &str = "component-kubeconfigs";
/// Secret holding the user's Postgres DSN (backend external), copied from their Secret: a pod
/// can only read Secrets of its own namespace.
pub const EXTERNAL_DATASTORE_SECRET: &str = "external-datastore";
/// Key of the Kine DSN in the datastore Secrets.
pub const DATASTORE_URL_KEY: &str = "url";
pub const QUOTA_NAME: &str = "tenant-quota";
pub const LIMIT_RANGE_NAME: &str = "tenant-limits";
pub const DEFAULT_DENY_POLICY: &str = "default-deny-ingress";
pub const CONTROL_PLANE_INGRESS_POLICY: &str = "control-plane-ingress";

pub(crate) const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
const COMPONENT: &str = "control-plane";
/// Where the files of the processes runtime's state dir appear in the containers.
pub(crate) const CONFIG_DIR: &str = "/etc/kubernetes";
/// Loopback ports inside the pod (the pod is the tenant's own network namespace).
const POD_PORTS: TenantPorts = TenantPorts {
    kine: 2379,
    apiserver: APISERVER_PORT,
    controller_manager: 10257,
    etcd_client: 0,
    etcd_peer: 0,
};
/// The unprivileged user of distroless images; also the group owning the mounted Secrets.
pub(crate) const RUN_AS: i64 = 65532;
/// Mounted certificates and kubeconfigs: readable by owner and group (fsGroup), nobody else.
pub(crate) const SECRET_FILE_MODE: i32 = 0o440;
/// PKI entries that are the controller's own identity (system:masters) in the tenant: they stay
/// out of the pods.
const CONTROLLER_ONLY_PKI: [&str; 2] = ["admin.crt", "admin.key"];
/// PKI entries of a CA rotation that no container reads: the incoming CA's key (it signs
/// nothing until it is `ca.key`), the CAs that the trust bundle `ca-bundle.crt` carries, and the
/// rotation's state.
const ROTATION_ONLY_PKI: [&str; 4] = [
    rotation::NEXT_CRT,
    rotation::NEXT_KEY,
    rotation::PREVIOUS_CRT,
    rotation::STATE,
];

/// Pod-template annotation: a digest of the mounted files that the containers read only when
/// they start (CAs, the trust bundle of a CA rotation, the service-account key, kubeconfigs with
/// their embedded CAs), and of the leaf pairs whose renewal would not reach the container
/// presenting them before the certificate it holds expires (`renewal_reaches_process`). When it
/// changes the Deployment rolls; leaves renewed in time change only the Secret, which the
/// kubelet brings into the running pods' volume.
pub const RESTART_DIGEST_ANNOTATION: &str = "tenancy.hostplane.io/restart-digest";

/// How long a changed Secret takes to appear in a running pod's volume: the kubelet's sync
/// period (`--sync-frequency`, 1 minute) plus its Secret cache's time to live (1 minute).
pub const SECRET_VOLUME_REFRESH: Duration = Duration::from_secs(120);

pub const DEFAULT_KUBE_APISERVER_IMAGE: &str = "registry.k8s.io/kube-apiserver";
pub const DEFAULT_KUBE_CONTROLLER_MANAGER_IMAGE: &str = "registry.k8s.io/kube-controller-manager";
pub const DEFAULT_KUBE_SCHEDULER_IMAGE: &str = "registry.k8s.io/kube-scheduler";
/// Kine's release pinned in tools/upstream/versions.env.
pub const DEFAULT_KINE_IMAGE: &str = "docker.io/rancher/kine:v0.17.5";
/// etcd's release pinned in tools/upstream/versions.env (`ETCD_VERSION`), for `backend: dedicated`.
pub const DEFAULT_ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.6.16-0";
/// Size of a dedicated etcd's volume: twice its backend quota (1 GiB) leaves room for the WAL
/// and snapshots.
pub const DEFAULT_ETCD_STORAGE_SIZE: &str = "2Gi";

/// Images of the tenant components.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Repositories of the Kubernetes components; the tag is the tenant's version (`v1.37.2`).
    pub kube_apiserver: String,
    pub kube_controller_manager: String,
    pub kube_scheduler: String,
    /// Full reference of the Kine image (Kine's version is not the tenant's).
    pub kine: String,
    /// Full reference of the etcd image of a dedicated etcd (`backend: dedicated`).
    pub etcd: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            kube_apiserver: DEFAULT_KUBE_APISERVER_IMAGE.into(),
            kube_controller_manager: DEFAULT_KUBE_CONTROLLER_MANAGER_IMAGE.into(),
            kube_scheduler: DEFAULT_KUBE_SCHEDULER_IMAGE.into(),
            kine: DEFAULT_KINE_IMAGE.into(),
            etcd: DEFAULT_ETCD_IMAGE.into(),
        }
    }
}

/// Requests and limits of one container, as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_cpu: String,
    pub limits_memory: String,
}

impl Resources {
    pub(crate) fn new(requests: (&str, &str), limits: (&str, &str)) -> Self {
        Self {
            requests_cpu: requests.0.into(),
            requests_memory: requests.1.into(),
            limits_cpu: limits.0.into(),
            limits_memory: limits.1.into(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "requests": {"cpu": self.requests_cpu, "memory": self.requests_memory},
            "limits": {"cpu": self.limits_cpu, "memory": self.limits_memory},
        })
    }
}

/// A CPU quantity ("250m", "2", "1.5") in millicores; `None` for other forms.
fn millicores_of(quantity: &str) -> Option<u32> {
    match quantity.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => quantity
            .parse::<f64>()
            .ok()
            .map(|cores| (cores * 1000.0).round() as u32),
    }
}

/// Requests and limits per component.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentResources {
    pub kube_apiserver: Resources,
    pub kube_controller_manager: Resources,
    pub kube_scheduler: Resources,
    pub kine: Resources,
    pub etcd: Resources,
}

impl Default for ComponentResources {
    /// Sized from the processes runtime's measurements: an idle tenant kube-apiserver holds
    /// about 240 MiB (GOGC=50); the limits leave room for bursts of lists and watches.
    fn default() -> Self {
        Self {
            kube_apiserver: Resources::new(("250m", "384Mi"), ("2", "1Gi")),
            kube_controller_manager: Resources::new(("100m", "128Mi"), ("1", "512Mi")),
            kube_scheduler: Resources::new(("50m", "64Mi"), ("500m", "256Mi")),
            kine: Resources::new(("100m", "64Mi"), ("1", "256Mi")),
            // A dedicated etcd with a 1 GiB backend quota maps at most that much.
            etcd: Resources::new(("100m", "128Mi"), ("1", "1536Mi")),
        }
    }
}

/// Pods of the host allowed to reach tenant API servers: by namespace name and pod labels.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for PeerPods {
    /// The Helm chart's controller pods, which also run the proxy.
    fn default() -> Self {
        Self {
            namespace: "hostplane-system".into(),
            labels: BTreeMap::from([
                ("app.kubernetes.io/name".into(), "hostplane".into()),
                (COMPONENT_LABEL.into(), "controller".into()),
            ]),
        }
    }
}

/// Settings of the pods runtime, from the controller's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PodsConfig {
    pub images: Images,
    pub resources: ComponentResources,
    /// `spec.hard` of every tenant namespace's ResourceQuota. The control plane (twice, during
    /// a rolling update), hook Jobs and worker VMs all count against it.
    pub quota: BTreeMap<String, String>,
    /// Requests and limits the LimitRange gives containers that name none (hook Jobs), so that
    /// the quota admits them.
    pub container_defaults: Resources,
    /// The SNI proxy's pods: they relay people's connections to the tenant API servers.
    pub proxy: PeerPods,
    /// The controller's pods: health checks, token minting, hooks.
    pub controller: PeerPods,
    /// The volume of a dedicated etcd (`backend: dedicated`): its size, and its StorageClass
    /// (None: the host's default class).
    pub etcd_storage_size: String,
    pub etcd_storage_class: Option<String>,
}

impl Default for PodsConfig {
    fn default() -> Self {
        Self {
            images: Images::default(),
            resources: ComponentResources::default(),
            quota: [
                ("pods", "20"),
                ("requests.cpu", "4"),
                ("requests.memory", "8Gi"),
                ("limits.cpu", "16"),
                ("limits.memory", "32Gi"),
                ("services.loadbalancers", "0"),
                ("services.nodeports", "0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            container_defaults: Resources::new(("100m", "128Mi"), ("1", "1Gi")),
            proxy: PeerPods::default(),
            controller: PeerPods::default(),
            etcd_storage_size: DEFAULT_ETCD_STORAGE_SIZE.into(),
            etcd_storage_class: None,
        }
    }
}

/// What the pods runtime needs to know about one tenant beyond its plan.
#[derive(Clone, Debug)]
pub struct PodsTenant<'a> {
    /// The tenant PKI (what `<cp>-system/k8s-certs` holds).
    pub pki: &'a PkiFiles,
    /// The Secret in `<cp>-system` and its key holding Kine's DSN.
    pub datastore_secret: &'a str,
    pub datastore_key: &'a str,
    /// The tenant has worker nodes: it runs kube-scheduler too.
    pub workers: bool,
    /// `backend: dedicated`: the tenant's etcd runs as a StatefulSet beside the Deployment,
    /// which then has no Kine sidecar (`datastore_secret` is unused).
    pub dedicated_etcd: bool,
    pub placement: Option<&'a Placement>,
}

/// Every host object of a tenant in the pods runtime, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct PodsObjects {
    /// Only the labels the pods runtime adds (the namespace itself is applied as for every
    /// runtime).
    pub namespace: Namespace,
    pub resource_quota: ResourceQuota,
    pub limit_range: LimitRange,
    pub network_policies: Vec<NetworkPolicy>,
    pub component_kubeconfigs: Secret,
    pub deployment: Deployment,
    pub service: Service,
    /// The dedicated etcd (`backend: dedicated`), applied before the Deployment.
    pub etcd: Option<crate::build::pods_etcd::EtcdObjects>,
}

/// Name of the tenant's Deployment.
pub fn deployment_name(name: &str) -> String {
    format!("{name}-control-plane")
}

/// The tenant's endpoint inside the host: its Service.
pub fn endpoint(plan: &TenantPlan) -> String {
    format!(
        "https://{}.{}.svc:{SERVICE_PORT}",
        plan.name, plan.namespace
    )
}

pub(crate) fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the objects built here always match k8s-openapi's types")
}

pub(crate) fn labels(plan: &TenantPlan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
        (CONTROLPLANE_LABEL.into(), plan.name.clone()),
    ])
}

/// Labels selecting the control plane pods (immutable in the Deployment: never change them).
pub(crate) fn selector(plan: &TenantPlan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CONTROLPLANE_LABEL.into(), plan.name.clone()),
        (COMPONENT_LABEL.into(), COMPONENT.into()),
    ])
}

pub(crate) fn meta(plan: &TenantPlan, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": plan.namespace,
        "labels": labels(plan),
        "ownerReferences": [objects::owner_reference(plan)],
    })
}

/// The Secret holding a user's Postgres DSN for Kine (backend external).
pub fn external_datastore_secret(plan: &TenantPlan, url: &str) -> Secret {
    let mut secret: Secret = from_json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(plan, EXTERNAL_DATASTORE_SECRET),
        "type": "Opaque",
    }));
    secret.data = Some(BTreeMap::from([(
        DATASTORE_URL_KEY.to_string(),
        ByteString(url.as_bytes().to_vec()),
    )]));
    secret
}

/// The flags and files of the processes runtime, as if the state dir were `CONFIG_DIR` and Kine
/// (its DSN is set from a Secret, never here) or the dedicated etcd were the datastore.
pub(crate) fn bundle(plan: &TenantPlan, tenant: &PodsTenant<'_>) -> ControlPlaneBundle {
    let store = match tenant.dedicated_etcd {
        true => Store::DedicatedEtcd,
        false => Store::Postgres { url: String::new() },
    };
    control_plane_bundle(&BundleInput {
        name: &plan.name,
        dir: Path::new(CONFIG_DIR),
        release: &plan.release,
        ports: POD_PORTS,
        pki: tenant.pki,
        store: &store,
        workers: tenant.workers,
        limits: Some(&plan.limits),
    })
}

pub fn pods_objects(
    plan: &TenantPlan,
    config: &PodsConfig,
    tenant: &PodsTenant<'_>,
) -> PodsObjects {
    let bundle = bundle(plan, tenant);
    PodsObjects {
        namespace: namespace_labels(plan),
        resource_quota: resource_quota(plan, config),
        limit_range: limit_range(plan, config),
        network_policies: network_policies(plan, config),
        component_kubeconfigs: component_kubeconfigs(plan, &bundle),
        deployment: deployment(plan, config, tenant, &bundle),
        service: service(plan),
        etcd: tenant
            .dedicated_etcd
            .then(|| pods_etcd::etcd_objects(plan, config, tenant, &bundle)),
    }
}

/// Pod Security admission: `baseline` enforced (no privileged or host-namespace pods, no
/// hostPath: nothing in the tenant's namespace reaches the node), `restricted` warned about —
/// not enforced, because KubeVirt's virt-launcher pods of worker VMs need more than it allows.
fn namespace_labels(plan: &TenantPlan) -> Namespace {
    let mut labels = labels(plan);
    for (k, v) in [
        ("pod-security.kubernetes.io/enforce", "baseline"),
        ("pod-security.kubernetes.io/warn", "restricted"),
        ("pod-security.kubernetes.io/audit", "restricted"),
    ] {
        labels.insert(k.into(), v.into());
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": plan.namespace, "labels": labels},
    }))
}

fn resource_quota(plan: &TenantPlan, config: &PodsConfig) -> ResourceQuota {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": meta(plan, QUOTA_NAME),
        "spec": {"hard": config.quota},
    }))
}

fn limit_range(plan: &TenantPlan, config: &PodsConfig) -> LimitRange {
    let d = &config.container_defaults;
    from_json(json!({
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": meta(plan, LIMIT_RANGE_NAME),
        "spec": {"limits": [{
            "type": "Container",
            "defaultRequest": {"cpu": d.requests_cpu, "memory": d.requests_memory},
            "default": {"cpu": d.limits_cpu, "memory": d.limits_memory},
        }]},
    }))
}

fn peer(pods: &PeerPods) -> Value {
    json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pods.namespace}},
        "podSelector": {"matchLabels": pods.labels},
    })
}

/// Nothing reaches pods in the namespace unless a policy says so; the control plane pods admit
/// the proxy, the controller, and every pod of the tenant's own namespace (hook Jobs, worker VMs'
/// launchers: only hostplane and the platform's hooks create pods there, and a hook's Job pods
/// carry whatever labels its template gives them) on the API server port only. Kubelet probes
/// come from the node, which NetworkPolicy implementations admit.
fn network_policies(plan: &TenantPlan, config: &PodsConfig) -> Vec<NetworkPolicy> {
    let deny = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, DEFAULT_DENY_POLICY),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    });
    let mut from = vec![peer(&config.proxy)];
    // The Helm chart runs the proxy in the controller's pods: one peer then.
    if config.controller != config.proxy {
        from.push(peer(&config.controller));
    }
    from.push(json!({"podSelector": {}}));
    let admit = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, CONTROL_PLANE_INGRESS_POLICY),
        "spec": {
            "podSelector": {"matchLabels": selector(plan)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": from,
                "ports": [{"protocol": "TCP", "port": APISERVER_PORT}],
            }],
        },
    });
    vec![from_json(deny), from_json(admit)]
}

/// kube-controller-manager's and kube-scheduler's kubeconfigs (client certificates, server
/// https://127.0.0.1:6443), as the processes runtime writes them.
fn component_kubeconfigs(plan: &TenantPlan, bundle: &ControlPlaneBundle) -> Secret {
    let data: BTreeMap<String, ByteString> = bundle
        .files
        .iter()
        .filter(|(path, _)| path.extension().is_some_and(|e| e == "conf"))
        .map(|(path, data)| {
            (
                path.to_string_lossy().into_owned(),
                ByteString(data.clone()),
            )
        })
        .collect();
    let mut secret: Secret = from_json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(plan, COMPONENT_KUBECONFIGS_SECRET),
        "type": "Opaque",
    }));
    secret.data = Some(data);
    secret
}

fn https_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": APISERVER_PORT, "scheme": "HTTPS"},
        "periodSeconds": period,
        "timeoutSeconds": 15,
        "failureThreshold": failures,
    })
}

/// Every tenant pod runs as the distroless user; the mounted Secrets and volumes belong to its
/// group.
pub(crate) fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

pub(crate) fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn deployment(
    plan: &TenantPlan,
    config: &PodsConfig,
    tenant: &PodsTenant<'_>,
    bundle: &ControlPlaneBundle,
) -> Deployment {
    let version = &plan.release.version;
    let images = &config.images;
    let containers: Vec<Value> = bundle
        .processes
        .iter()
        // The dedicated etcd is a StatefulSet of its own (`pods_etcd`).
        .filter(|process| process.name != "etcd")
        .map(|process| {
            let (image, resources) = match process.name {
                "kine" => (images.kine.clone(), &config.resources.kine),
                "kube-apiserver" => (
                    format!("{}:v{version}", images.kube_apiserver),
                    &config.resources.kube_apiserver,
                ),
                "kube-controller-manager" => (
                    format!("{}:v{version}", images.kube_controller_manager),
                    &config.resources.kube_controller_manager,
                ),
                _ => (
                    format!("{}:v{version}", images.kube_scheduler),
                    &config.resources.kube_scheduler,
                ),
            };
            let env: Vec<Value> = process
                .env
                .iter()
                .map(|(name, value)| match name.as_str() {
                    // The DSN carries the role's password: from the Secret, never in the spec.
                    "KINE_ENDPOINT" => json!({"name": name, "valueFrom": {"secretKeyRef": {
                        "name": tenant.datastore_secret, "key": tenant.datastore_key,
                    }}}),
                    _ => json!({"name": name, "value": value}),
                })
                .collect();
            let args: Vec<String> = process
                .args
                .iter()
                .map(|a| match a.as_str() {
                    // The Service reaches the API server on the pod's address.
                    "--bind-address=127.0.0.1" if process.name == "kube-apiserver" => {
                        "--bind-address=0.0.0.0".into()
                    }
                    // The dedicated etcd's headless Service, not the processes runtime's port.
                    _ if tenant.dedicated_etcd && a.starts_with("--etcd-servers=") => {
                        format!("--etcd-servers={}", pods_etcd::client_url(plan))
                    }
                    _ => a.clone(),
                })
                .collect();
            let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"})];
            if process.name != "kine" {
                mounts.push(json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}));
                // Where kube components write generated serving certificates and the like.
                mounts.push(json!({"name": "run", "mountPath": "/var/run/kubernetes"}));
            }
            let mut container = json!({
                "name": process.name,
                "image": image,
                "command": [process.name],
                "args": args,
                "env": env,
                "resources": resources.to_json(),
                "securityContext": container_security(),
                "volumeMounts": mounts,
            });
            // The tenant's CPU limit bounds its API server, where a request storm burns CPU.
            if process.name == "kube-apiserver"
                && let Some(millicores) = bundle.cpu_millicores
            {
                container["resources"]["limits"]["cpu"] = json!(format!("{millicores}m"));
                // A request above the limit would make the pod invalid.
                if millicores_of(&resources.requests_cpu).is_none_or(|r| r > millicores) {
                    container["resources"]["requests"]["cpu"] = json!(format!("{millicores}m"));
                }
            }
            if process.name == "kube-apiserver" {
                container["ports"] =
                    json!([{"name": "https", "containerPort": APISERVER_PORT, "protocol": "TCP"}]);
                // kubeadm's timings: up to 4 minutes to start, out of the Service while
                // /readyz fails, restarted after 80 s of failing /livez.
                container["startupProbe"] = https_probe("/livez", 10, 24);
                container["readinessProbe"] = https_probe("/readyz", 1, 3);
                container["livenessProbe"] = https_probe("/livez", 10, 8);
            }
            container
        })
        .collect();
    // Every PKI file at the path the processes runtime's flags name (kubeadm's layout).
    let pki_keys: Vec<&String> = tenant
        .pki
        .keys()
        .filter(|k| !CONTROLLER_ONLY_PKI.contains(&k.as_str()))
        .filter(|k| !pods_etcd::ETCD_ONLY_PKI.contains(&k.as_str()))
        .filter(|k| !ROTATION_ONLY_PKI.contains(&k.as_str()))
        .collect();
    let pki_items: Vec<Value> = pki_keys
        .iter()
        .map(|k| json!({"key": k, "path": pki_file_path(k)}))
        .collect();
    let conf_items: Vec<Value> = bundle
        .files
        .keys()
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .map(|p| json!({"key": p, "path": p}))
        .collect();
    let placement = tenant.placement.cloned().unwrap_or_default();
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_security(),
        "containers": containers,
        "volumes": [
            {"name": "config", "projected": {"defaultMode": SECRET_FILE_MODE, "sources": [
                {"secret": {"name": CERTS_SECRET, "items": pki_items}},
                {"secret": {"name": COMPONENT_KUBECONFIGS_SECRET, "items": conf_items}},
            ]}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "run", "emptyDir": {"sizeLimit": "16Mi"}},
        ],
    });
    if !placement.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(placement.node_selector);
    }
    if !placement.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(placement.tolerations);
    }
    let mut pod_labels = labels(plan);
    pod_labels.extend(selector(plan));
    from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(plan, &deployment_name(&plan.name)),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector(plan)},
            // A new pod serves before the old one stops: a spec change is no outage.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        RESTART_DIGEST_ANNOTATION: restart_digest(tenant.pki, &pki_keys, bundle),
                    },
                },
                "spec": pod_spec,
            },
        },
    }))
}

/// Whether a leaf renewed with a third of its life left (`pki::needs_renewal`) reaches the
/// container presenting it before the one it holds expires: through the Secret volume, then the
/// process's own reload (`Reload`), with `RELOAD_MARGIN` to spare. Decided on the certificate's
/// lifetime, so that the digest does not depend on when it is computed. An unreadable
/// certificate does not (the container restarts with it).
fn renewal_reaches_process(cert_pem: &str, reload: Reload) -> bool {
    let Ok((start, end)) = crate::pki::validity(cert_pem) else {
        return false;
    };
    let poll = match reload {
        Reload::AtOnce => Duration::ZERO,
        Reload::Polled(period) => period,
    };
    let needed = SECRET_VOLUME_REFRESH + poll + RELOAD_MARGIN;
    (end - start) / 3 > i128::from(needed.as_secs())
}

/// The value of `RESTART_DIGEST_ANNOTATION`: the mounted PKI entries `pki_keys` and the
/// component kubeconfigs, by path, with the content of all but the leaf pairs renewed in place
/// (like `ControlPlaneBundle::fingerprint` for the processes runtime; flags and images are in
/// the pod template already).
fn restart_digest(pki: &PkiFiles, pki_keys: &[&String], bundle: &ControlPlaneBundle) -> String {
    let files: BTreeMap<PathBuf, &[u8]> = pki_keys
        .iter()
        .map(|k| (pki_file_path(k), pki[*k].as_bytes()))
        .chain(
            bundle
                .files
                .iter()
                .filter(|(path, _)| path.extension().is_some_and(|e| e == "conf"))
                .map(|(path, data)| (path.clone(), data.as_slice())),
        )
        .collect();
    let in_pod =
        |process: &str| bundle.processes.iter().any(|p| p.name == process) && process != "etcd";
    let renewed_in_place = |path: &Path| {
        bundle
            .reloaded
            .iter()
            .filter(|pair| pair.files().iter().any(|f| f == path))
            .any(|pair| match pair.presented_by {
                // Presented by no container of this pod: its renewal concerns none.
                None => true,
                Some((process, _)) if !in_pod(process) => true,
                Some((_, reload)) => files
                    .get(&pair.files()[0])
                    .and_then(|pem| std::str::from_utf8(pem).ok())
                    .is_some_and(|pem| renewal_reaches_process(pem, reload)),
            })
    };
    let mut h = Sha256::new();
    for (path, data) in &files {
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        if !renewed_in_place(path) {
            h.update(data);
        }
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn service(plan: &TenantPlan) -> Service {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(plan, &plan.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(plan),
            "ports": [{"name": "https", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": APISERVER_PORT}],
        },
    }))
}

/// What the Deployment's status says about the tenant API server.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    /// The current spec is observed and a replica is available.
    Ready,
    /// A replica is available, but the Deployment controller has not yet observed the newest
    /// spec: the old pods still serve while it rolls out, so this is no outage.
    Updating { detail: String },
    /// No replica available.
    Starting { detail: String },
}

/// Reads a Deployment's status: observedGeneration, availableReplicas and condition Available.
pub fn readiness(deployment: &Deployment) -> Readiness {
    let generation = deployment.metadata.generation.unwrap_or_default();
    let Some(status) = &deployment.status else {
        return Readiness::Starting {
            detail: "the Deployment has no status yet".into(),
        };
    };
    let available = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Available"));
    let available_replicas = status.available_replicas.unwrap_or_default();
    let observed = status.observed_generation.unwrap_or_default() >= generation;
    if available_replicas >= 1 && available.is_some_and(|c| c.status.as_deref() == Some("True")) {
        return if observed {
            Readiness::Ready
        } else {
            Readiness::Updating {
                detail: format!(
                    "generation {generation} is not yet observed by the Deployment controller"
                ),
            }
        };
    }
    let why = available
        .and_then(|c| c.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "no replica is available".into());
    Readiness::Starting {
        detail: format!(
            "{available_replicas} of {} replicas available: {why}",
            deployment.spec.replicas.unwrap_or(1)
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upstream::ReleaseBinaries;
    use k8s_openapi::api::core::v1::Toleration;

    pub(crate) fn plan() -> TenantPlan {
        TenantPlan {
            name: "acme".into(),
            uid: "u-1".into(),
            namespace: "acme-system".into(),
            backend: hostplane_crds::BackendType::Shared,
            external_datastore: None,
            release: ReleaseBinaries {
                version: "1.37.2".into(),
                kube_apiserver: "/b/kube-apiserver".into(),
                kube_controller_manager: "/b/kube-controller-manager".into(),
                kube_scheduler: "/b/kube-scheduler".into(),
                kine: "/b/kine".into(),
                etcd: "/b/etcd".into(),
            },
            token_ttl_seconds: 7200,
            limits: crate::limits::TenantLimits::default(),
        }
    }

    pub(crate) fn pki() -> PkiFiles {
        [
            "admin.crt",
            "admin.key",
            "apiserver.crt",
            "ca.crt",
            "ca.key",
            "controller-manager.crt",
            "controller-manager.key",
            "etcd-ca.crt",
            "sa.key",
            "scheduler.crt",
            "scheduler.key",
        ]
        .iter()
        .map(|f| (f.to_string(), format!("PEM of {f}")))
        .collect()
    }

    fn objects(workers: bool, placement: Option<&Placement>) -> PodsObjects {
        objects_of(&plan(), workers, placement)
    }

    fn objects_of(plan: &TenantPlan, workers: bool, placement: Option<&Placement>) -> PodsObjects {
        pods_objects(
            plan,
            &PodsConfig::default(),
            &PodsTenant {
                pki: &pki(),
                datastore_secret: "datastore",
                datastore_key: "url",
                dedicated_etcd: false,
                workers,
                placement,
            },
        )
    }

    #[test]
    fn a_cpu_limit_caps_the_api_server_container_and_its_request() {
        let mut plan = plan();
        plan.limits.max_cpu_millicores = Some(200);
        let objects = objects_of(&plan, false, None);
        let deployment = to_json(&objects.deployment);
        let containers = deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        let resources = |name: &str| {
            containers
                .iter()
                .find(|c| c["name"] == name)
                .map(|c| c["resources"].clone())
                .unwrap()
        };
        assert_eq!(
            resources("kube-apiserver"),
            json!({"requests": {"cpu": "200m", "memory": "384Mi"}, "limits": {"cpu": "200m", "memory": "1Gi"}})
        );
        // The other containers keep their configured resources.
        assert_eq!(
            resources("kine"),
            ComponentResources::default().kine.to_json()
        );
        assert_eq!(
            [
                millicores_of("250m"),
                millicores_of("2"),
                millicores_of("1.5"),
                millicores_of("x")
            ],
            [Some(250), Some(2000), Some(1500), None]
        );
    }

    pub(crate) fn owned_meta(name: &str) -> Value {
        json!({
            "labels": {"app.kubernetes.io/managed-by": "hostplane", "tenancy.hostplane.io/controlplane": "acme"},
            "name": name,
            "namespace": "acme-system",
            "ownerReferences": [{
                "apiVersion": "tenancy.hostplane.io/v1alpha1", "blockOwnerDeletion": true, "controller": true,
                "kind": "ControlPlane", "name": "acme", "uid": "u-1"
            }]
        })
    }

    pub(crate) fn to_json<T: serde::Serialize>(object: &T) -> Value {
        serde_json::to_value(object).unwrap()
    }

    #[test]
    fn the_namespace_is_fenced_by_pod_security_quota_limits_and_network_policies() {
        let o = objects(false, None);
        assert_eq!(
            to_json(&o.namespace),
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "acme-system", "labels": {
                    "app.kubernetes.io/managed-by": "hostplane",
                    "tenancy.hostplane.io/controlplane": "acme",
                    "pod-security.kubernetes.io/enforce": "baseline",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                }}
            })
        );
        assert_eq!(
            to_json(&o.resource_quota),
            json!({
                "apiVersion": "v1", "kind": "ResourceQuota", "metadata": owned_meta("tenant-quota"),
                "spec": {"hard": {
                    "limits.cpu": "16", "limits.memory": "32Gi", "pods": "20", "requests.cpu": "4",
                    "requests.memory": "8Gi", "services.loadbalancers": "0", "services.nodeports": "0"
                }}
            })
        );
        assert_eq!(
            to_json(&o.limit_range),
            json!({
                "apiVersion": "v1", "kind": "LimitRange", "metadata": owned_meta("tenant-limits"),
                "spec": {"limits": [{
                    "type": "Container",
                    "default": {"cpu": "1", "memory": "1Gi"},
                    "defaultRequest": {"cpu": "100m", "memory": "128Mi"}
                }]}
            })
        );
        let hostplane_pods = json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hostplane-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "controller", "app.kubernetes.io/name": "hostplane"}}
        });
        assert_eq!(
            to_json(&o.network_policies),
            json!([
                {
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": owned_meta("default-deny-ingress"),
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
                },
                {
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": owned_meta("control-plane-ingress"),
                    "spec": {
                        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "control-plane", "tenancy.hostplane.io/controlplane": "acme"}},
                        "policyTypes": ["Ingress"],
                        "ingress": [{
                            "from": [
                                hostplane_pods,
                                {"podSelector": {}}
                            ],
                            "ports": [{"port": 6443, "protocol": "TCP"}]
                        }]
                    }
                }
            ])
        );
    }

    #[test]
    fn a_proxy_apart_from_the_controller_is_admitted_as_its_own_peer() {
        let config = PodsConfig {
            proxy: PeerPods {
                namespace: "edge".into(),
                labels: BTreeMap::from([("app".into(), "sni-proxy".into())]),
            },
            ..PodsConfig::default()
        };
        let o = pods_objects(
            &plan(),
            &config,
            &PodsTenant {
                pki: &pki(),
                datastore_secret: "datastore",
                datastore_key: "url",
                dedicated_etcd: false,
                workers: false,
                placement: None,
            },
        );
        assert_eq!(
            to_json(&o.network_policies[1])["spec"]["ingress"][0]["from"],
            json!([
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}},
                 "podSelector": {"matchLabels": {"app": "sni-proxy"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hostplane-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/component": "controller", "app.kubernetes.io/name": "hostplane"}}},
                {"podSelector": {}}
            ])
        );
    }

    #[test]
    fn the_service_is_the_tenant_endpoint_on_443() {
        assert_eq!(endpoint(&plan()), "https://acme.acme-system.svc:443");
        assert_eq!(
            to_json(&objects(false, None).service),
            json!({
                "apiVersion": "v1", "kind": "Service", "metadata": owned_meta("acme"),
                "spec": {
                    "type": "ClusterIP",
                    "selector": {"app.kubernetes.io/component": "control-plane", "tenancy.hostplane.io/controlplane": "acme"},
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
                }
            })
        );
    }

    pub(crate) fn hardened() -> Value {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"}
        })
    }

    fn component_mounts() -> Value {
        json!([
            {"mountPath": "/tmp", "name": "tmp"},
            {"mountPath": "/etc/kubernetes", "name": "config", "readOnly": true},
            {"mountPath": "/var/run/kubernetes", "name": "run"}
        ])
    }

    fn gogc() -> Value {
        json!([{"name": "GOGC", "value": "50"}])
    }

    #[test]
    fn the_deployment_runs_the_processes_runtime_flags_in_hardened_containers() {
        let placement = Placement {
            node_selector: BTreeMap::from([(
                "node-role.hostplane.io/tenants".into(),
                "true".into(),
            )]),
            tolerations: vec![Toleration {
                key: Some("hostplane.io/tenants".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }],
        };
        let deployment = objects(true, Some(&placement)).deployment;
        // The API server's flags are the shared ones, listening on the pod's address for the
        // Service and on the Kine sidecar over the pod's loopback.
        let mut apiserver_args: Vec<String> = crate::build::processes::kube_apiserver_args(
            Path::new("/etc/kubernetes/pki"),
            6443,
            "http://127.0.0.1:2379",
        );
        assert_eq!(apiserver_args[0], "--bind-address=127.0.0.1");
        apiserver_args[0] = "--bind-address=0.0.0.0".into();
        apiserver_args.extend(crate::limits::TenantLimits::default().apiserver_args());
        // Kine's pool stays below the role's connection limit (the default limits here).
        let kine_args: Vec<String> = [
            "--listen-address=127.0.0.1:2379",
            "--metrics-bind-address=0",
        ]
        .map(String::from)
        .into_iter()
        .chain(crate::limits::TenantLimits::default().kine_pool().args())
        .collect();
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": {"path": path, "port": 6443, "scheme": "HTTPS"},
                "periodSeconds": period, "timeoutSeconds": 15, "failureThreshold": failures
            })
        };
        let expected = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": owned_meta("acme-control-plane"),
            "spec": {
                "replicas": 1,
                "revisionHistoryLimit": 2,
                "selector": {"matchLabels": {"app.kubernetes.io/component": "control-plane", "tenancy.hostplane.io/controlplane": "acme"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {
                        "labels": {
                            "app.kubernetes.io/component": "control-plane",
                            "app.kubernetes.io/managed-by": "hostplane",
                            "tenancy.hostplane.io/controlplane": "acme"
                        },
                        // Over the mounted files (`rollouts` tests what changes it).
                        "annotations": {
                            "tenancy.hostplane.io/restart-digest": "17daad3a92a572c1d01f26c45326228690e667a3d8b9a443dc8c41068502f1d7"
                        }
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "securityContext": {
                            "fsGroup": 65532, "runAsGroup": 65532, "runAsNonRoot": true, "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "nodeSelector": {"node-role.hostplane.io/tenants": "true"},
                        "tolerations": [{"effect": "NoSchedule", "key": "hostplane.io/tenants", "operator": "Exists"}],
                        "containers": [
                            {
                                "name": "kine",
                                "image": "docker.io/rancher/kine:v0.17.5",
                                "command": ["kine"],
                                "args": kine_args,
                                "env": [
                                    {"name": "KINE_ENDPOINT", "valueFrom": {"secretKeyRef": {"key": "url", "name": "datastore"}}},
                                    {"name": "GOGC", "value": "50"}
                                ],
                                "resources": {"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}},
                                "securityContext": hardened(),
                                "volumeMounts": [{"mountPath": "/tmp", "name": "tmp"}]
                            },
                            {
                                "name": "kube-apiserver",
                                "image": "registry.k8s.io/kube-apiserver:v1.37.2",
                                "command": ["kube-apiserver"],
                                "args": apiserver_args,
                                "env": gogc(),
                                "ports": [{"containerPort": 6443, "name": "https", "protocol": "TCP"}],
                                "startupProbe": probe("/livez", 10, 24),
                                "readinessProbe": probe("/readyz", 1, 3),
                                "livenessProbe": probe("/livez", 10, 8),
                                "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "250m", "memory": "384Mi"}},
                                "securityContext": hardened(),
                                "volumeMounts": component_mounts()
                            },
                            {
                                "name": "kube-controller-manager",
                                "image": "registry.k8s.io/kube-controller-manager:v1.37.2",
                                "command": ["kube-controller-manager"],
                                "args": [
                                    "--kubeconfig=/etc/kubernetes/controller-manager.conf",
                                    "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
                                    "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
                                    "--bind-address=127.0.0.1",
                                    "--secure-port=10257",
                                    "--cluster-name=acme",
                                    "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
                                    "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
                                    "--root-ca-file=/etc/kubernetes/pki/ca.crt",
                                    "--service-account-private-key-file=/etc/kubernetes/pki/sa.key",
                                    "--service-cluster-ip-range=10.96.0.0/12",
                                    "--use-service-account-credentials=true",
                                    "--controllers=*,bootstrapsigner,tokencleaner",
                                    "--leader-elect=false",
                                    "--profiling=false"
                                ],
                                "env": gogc(),
                                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                                "securityContext": hardened(),
                                "volumeMounts": component_mounts()
                            },
                            {
                                "name": "kube-scheduler",
                                "image": "registry.k8s.io/kube-scheduler:v1.37.2",
                                "command": ["kube-scheduler"],
                                "args": [
                                    "--kubeconfig=/etc/kubernetes/scheduler.conf",
                                    "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
                                    "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
                                    "--secure-port=0",
                                    "--leader-elect=false",
                                    "--profiling=false"
                                ],
                                "env": gogc(),
                                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}},
                                "securityContext": hardened(),
                                "volumeMounts": component_mounts()
                            }
                        ],
                        "volumes": [
                            {"name": "config", "projected": {"defaultMode": 288, "sources": [
                                {"secret": {"name": "k8s-certs", "items": [
                                    {"key": "apiserver.crt", "path": "pki/apiserver.crt"},
                                    {"key": "ca.crt", "path": "pki/ca.crt"},
                                    {"key": "ca.key", "path": "pki/ca.key"},
                                    {"key": "controller-manager.crt", "path": "pki/controller-manager.crt"},
                                    {"key": "controller-manager.key", "path": "pki/controller-manager.key"},
                                    {"key": "etcd-ca.crt", "path": "pki/etcd/ca.crt"},
                                    {"key": "sa.key", "path": "pki/sa.key"},
                                    {"key": "scheduler.crt", "path": "pki/scheduler.crt"},
                                    {"key": "scheduler.key", "path": "pki/scheduler.key"}
                                ]}},
                                {"secret": {"name": "component-kubeconfigs", "items": [
                                    {"key": "controller-manager.conf", "path": "controller-manager.conf"},
                                    {"key": "scheduler.conf", "path": "scheduler.conf"}
                                ]}}
                            ]}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                            {"name": "run", "emptyDir": {"sizeLimit": "16Mi"}}
                        ]
                    }
                }
            }
        });
        assert_eq!(to_json(&deployment), expected);
    }

    #[test]
    fn without_workers_or_placement_there_is_no_scheduler_and_the_pods_go_anywhere() {
        let o = objects(false, None);
        let spec = &to_json(&o.deployment)["spec"]["template"]["spec"];
        let names: Vec<&str> = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["kine", "kube-apiserver", "kube-controller-manager"]);
        assert_eq!(spec.get("nodeSelector"), None);
        assert_eq!(spec.get("tolerations"), None);
        assert_eq!(
            spec["volumes"][0]["projected"]["sources"][1],
            json!({"secret": {"name": "component-kubeconfigs", "items": [
                {"key": "controller-manager.conf", "path": "controller-manager.conf"}
            ]}})
        );
        let keys: Vec<&String> = o
            .component_kubeconfigs
            .data
            .as_ref()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["controller-manager.conf"]);
    }

    #[test]
    fn component_kubeconfigs_reach_the_api_server_on_the_pods_loopback() {
        let secret = objects(true, None).component_kubeconfigs;
        let mut value = to_json(&secret);
        let data = value.as_object_mut().unwrap().remove("data").unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": owned_meta("component-kubeconfigs"), "type": "Opaque"})
        );
        let read = |key: &str| -> serde_yaml::Value {
            let b64 = data[key].as_str().unwrap();
            serde_yaml::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap(),
            )
            .unwrap()
        };
        for (key, user) in [
            ("controller-manager.conf", "system:kube-controller-manager"),
            ("scheduler.conf", "system:kube-scheduler"),
        ] {
            let conf = read(key);
            assert_eq!(
                conf["clusters"][0]["cluster"]["server"],
                "https://127.0.0.1:6443"
            );
            assert_eq!(conf["users"][0]["name"], user);
        }
    }

    #[test]
    fn a_users_dsn_is_copied_into_the_tenant_namespace() {
        assert_eq!(
            to_json(&external_datastore_secret(&plan(), "postgres://u:p@db/x")),
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": owned_meta("external-datastore"),
                "type": "Opaque", "data": {"url": "cG9zdGdyZXM6Ly91OnBAZGIveA=="}
            })
        );
    }

    mod rollouts {
        use std::time::SystemTime;

        use super::*;
        use crate::pki::rotation::{Inputs, Stage, ensure_pki_rotating};
        use crate::pki::{PkiRequest, ensure_pki};

        const NOW: u64 = 1_800_000_000;
        const OVERLAP: Duration = Duration::from_secs(600);

        fn at(secs: u64) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        }

        fn request(leaf_seconds: u64) -> PkiRequest {
            PkiRequest {
                cluster_name: "acme".into(),
                apiserver_sans: vec!["acme.acme-system.svc".into()],
                ca_validity: Duration::from_secs(3650 * 24 * 3600),
                leaf_validity: Duration::from_secs(leaf_seconds),
            }
        }

        /// The Deployment of a tenant with these files, as JSON.
        fn deployment_of(pki: &PkiFiles) -> Value {
            let objects = pods_objects(
                &plan(),
                &PodsConfig::default(),
                &PodsTenant {
                    pki,
                    datastore_secret: "datastore",
                    datastore_key: "url",
                    dedicated_etcd: false,
                    workers: false,
                    placement: None,
                },
            );
            to_json(&objects.deployment)
        }

        fn digest(deployment: &Value) -> String {
            let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(annotations.as_object().unwrap().len(), 1, "{annotations}");
            annotations[RESTART_DIGEST_ANNOTATION]
                .as_str()
                .unwrap()
                .to_string()
        }

        fn args(deployment: &Value, container: &str) -> Vec<String> {
            deployment["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == container)
                .unwrap()["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .filter(|a| a.contains("ca.crt") || a.contains("ca-bundle"))
                .collect()
        }

        /// The `config` volume for these PKI entries (besides the kubeconfig).
        fn config_volume(keys: &[&str]) -> Value {
            let items: Vec<Value> = keys
                .iter()
                .map(|k| json!({"key": k, "path": format!("pki/{k}")}))
                .collect();
            json!({"name": "config", "projected": {"defaultMode": 288, "sources": [
                {"secret": {"name": "k8s-certs", "items": items}},
                {"secret": {"name": "component-kubeconfigs", "items": [
                    {"key": "controller-manager.conf", "path": "controller-manager.conf"}
                ]}}
            ]}})
        }

        /// What every stage mounts besides the trust bundle, in the Secret's order.
        const MOUNTED: [&str; 16] = [
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key",
            "apiserver.crt",
            "apiserver.key",
            "ca.crt",
            "ca.key",
            "controller-manager.crt",
            "controller-manager.key",
            "front-proxy-ca.crt",
            "front-proxy-ca.key",
            "front-proxy-client.crt",
            "front-proxy-client.key",
            "sa.key",
            "sa.pub",
            "scheduler.crt",
            "scheduler.key",
        ];

        fn with_bundle() -> Vec<&'static str> {
            let mut keys = MOUNTED.to_vec();
            keys.insert(4, "ca-bundle.crt");
            keys
        }

        #[test]
        fn a_ca_rotation_mounts_the_trust_bundle_and_rolls_the_pods_once_per_stage() {
            let req = request(365 * 24 * 3600);
            let start = ensure_pki(&PkiFiles::new(), &req, at(NOW)).unwrap();
            let step = |files: &PkiFiles, secs: u64| {
                let input = Inputs {
                    annotation: Some("v1"),
                    recorded: None,
                    overlap: OVERLAP,
                };
                ensure_pki_rotating(files, &req, &input, at(secs)).unwrap()
            };
            let one = step(&start, NOW);
            let two = step(&one.files, NOW + 600);
            let three = step(&two.files, NOW + 1200);
            let stages: Vec<Option<Stage>> = [&one, &two, &three]
                .iter()
                .map(|o| o.record.as_ref().map(|r| r.stage))
                .collect();
            assert_eq!(
                stages,
                [
                    Some(Stage::TrustingBoth),
                    Some(Stage::Switched),
                    Some(Stage::Completed)
                ]
            );

            let before = deployment_of(&start);
            let trusting = deployment_of(&one.files);
            let switched = deployment_of(&two.files);
            let completed = deployment_of(&three.files);
            let volume = |d: &Value| d["spec"]["template"]["spec"]["volumes"][0].clone();

            // Before and after: ca.crt is what clients are checked against.
            let plain_apiserver = [
                "--client-ca-file=/etc/kubernetes/pki/ca.crt",
                "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
            ];
            let plain_kcm = [
                "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
                "--root-ca-file=/etc/kubernetes/pki/ca.crt",
            ];
            for d in [&before, &completed] {
                assert_eq!(volume(d), config_volume(&MOUNTED));
                assert_eq!(args(d, "kube-apiserver"), plain_apiserver);
                assert_eq!(args(d, "kube-controller-manager"), plain_kcm);
            }
            // During the rotation: the bundle, never the incoming CA's key nor the state.
            let bundle_apiserver = [
                "--client-ca-file=/etc/kubernetes/pki/ca-bundle.crt",
                "--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt",
            ];
            let bundle_kcm = [
                "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
                "--root-ca-file=/etc/kubernetes/pki/ca-bundle.crt",
            ];
            for d in [&trusting, &switched] {
                assert_eq!(volume(d), config_volume(&with_bundle()));
                assert_eq!(args(d, "kube-apiserver"), bundle_apiserver);
                assert_eq!(args(d, "kube-controller-manager"), bundle_kcm);
            }
            let (old_ca, new_ca) = (&start["ca.crt"], &three.files["ca.crt"]);
            assert_eq!(one.files["ca-bundle.crt"], format!("{old_ca}{new_ca}"));
            assert_eq!(two.files["ca-bundle.crt"], format!("{new_ca}{old_ca}"));

            // Every stage rolls the pods: four different digests, each stable across passes.
            let digests: Vec<String> = [&before, &trusting, &switched, &completed]
                .into_iter()
                .map(digest)
                .collect();
            let distinct: std::collections::BTreeSet<&String> = digests.iter().collect();
            assert_eq!(distinct.len(), 4, "{digests:?}");
            assert_eq!(digest(&deployment_of(&two.files)), digests[2]);
            // Waiting inside a stage changes nothing.
            assert_eq!(step(&one.files, NOW + 599).files, one.files);
        }

        #[test]
        fn leaves_renewed_in_time_change_the_secret_only() {
            // One-year leaves, all renewed at once: the pods keep running.
            let req = request(365 * 24 * 3600);
            let start = ensure_pki(&PkiFiles::new(), &req, at(NOW)).unwrap();
            let renewed = ensure_pki(&start, &req, at(NOW + 250 * 24 * 3600)).unwrap();
            for leaf in [
                "apiserver.crt",
                "controller-manager.crt",
                "front-proxy-client.crt",
            ] {
                assert_ne!(start[leaf], renewed[leaf], "{leaf}");
            }
            let (before, after) = (deployment_of(&start), deployment_of(&renewed));
            assert_eq!(before, after);
        }

        #[test]
        fn short_leaves_roll_the_pods_when_a_container_would_miss_the_renewal() {
            // Ten-minute leaves (twelve with the backdating) are renewed with 240 s left:
            // kube-apiserver picks its serving pair up in time (volume 120 s + 30 s),
            // kube-controller-manager its client pair not (volume 120 s + client-go's 300 s + 30 s).
            let req = request(600);
            let start = ensure_pki(&PkiFiles::new(), &req, at(NOW)).unwrap();
            let renewed = ensure_pki(&start, &req, at(NOW + 401)).unwrap();
            let with = |keys: &[&str]| {
                let mut files = start.clone();
                for k in keys {
                    files.insert(k.to_string(), renewed[*k].clone());
                }
                digest(&deployment_of(&files))
            };
            let unchanged = with(&[]);
            assert_eq!(
                with(&["apiserver.crt", "apiserver.key", "front-proxy-client.crt"]),
                unchanged
            );
            // No node: nothing presents the kubelet client certificate.
            assert_eq!(with(&["apiserver-kubelet-client.crt"]), unchanged);
            assert_ne!(with(&["controller-manager.crt"]), unchanged);
            assert_ne!(with(&["controller-manager.key"]), unchanged);
            // A new CA always does.
            let mut other_ca = start.clone();
            other_ca.insert("front-proxy-ca.crt".into(), renewed["ca.crt"].clone());
            assert_ne!(digest(&deployment_of(&other_ca)), unchanged);
        }

        #[test]
        fn a_renewal_reaches_a_process_when_a_third_of_the_life_covers_the_way() {
            let req = |seconds| request(seconds);
            let leaf = |seconds: u64| {
                ensure_pki(&PkiFiles::new(), &req(seconds), at(NOW)).unwrap()["apiserver.crt"]
                    .clone()
            };
            let polled = Reload::Polled(crate::build::processes::CLIENT_GO_CERT_POLL);
            // Lifetimes are backdated by a fifth (at most 300 s): 375 s gives a 450 s validity.
            assert!(!renewal_reaches_process(&leaf(375), Reload::AtOnce));
            assert!(renewal_reaches_process(&leaf(380), Reload::AtOnce));
            assert!(!renewal_reaches_process(&leaf(1125), polled));
            assert!(renewal_reaches_process(&leaf(1130), polled));
            assert!(!renewal_reaches_process("not a PEM", Reload::AtOnce));
        }
    }

    fn deployment_with(generation: i64, status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "acme-control-plane", "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn readiness_is_read_from_the_deployment_status() {
        let available =
            json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"});
        let cases = [
            (
                deployment_with(
                    1,
                    json!({"observedGeneration": 1, "replicas": 1, "availableReplicas": 1, "conditions": [available]}),
                ),
                Readiness::Ready,
            ),
            (
                deployment_with(
                    2,
                    json!({"observedGeneration": 1, "replicas": 1, "availableReplicas": 1, "conditions": [available]}),
                ),
                Readiness::Updating {
                    detail: "generation 2 is not yet observed by the Deployment controller".into(),
                },
            ),
            (
                deployment_with(1, json!({})),
                Readiness::Starting {
                    detail: "0 of 1 replicas available: no replica is available".into(),
                },
            ),
            (
                deployment_with(
                    1,
                    json!({"observedGeneration": 1, "replicas": 1, "conditions": [
                        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                         "message": "Deployment does not have minimum availability."}
                    ]}),
                ),
                Readiness::Starting {
                    detail:
                        "0 of 1 replicas available: Deployment does not have minimum availability."
                            .into(),
                },
            ),
        ];
        for (deployment, expected) in cases {
            assert_eq!(readiness(&deployment), expected, "{:?}", deployment.status);
        }
        let mut no_status = deployment_with(1, json!({}));
        no_status.status = None;
        assert_eq!(
            readiness(&no_status),
            Readiness::Starting {
                detail: "the Deployment has no status yet".into()
            }
        );
    }
}
