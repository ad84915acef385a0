//! The dedicated etcd of a tenant in the `pods` runtime (`backend: dedicated`): a one-replica
//! StatefulSet `<cp>-etcd` with a PersistentVolumeClaim, its headless Service and a
//! NetworkPolicy admitting only the tenant's control-plane pods. Pure, like `build::pods`.
//!
//! The etcd runs exactly the flags of the processes runtime (`control_plane_bundle`), with the
//! addresses moved from loopback ports to the pod's and the Service's names: mTLS only, client
//! certificates of the tenant's etcd CA, the same compaction, quota and defragmentation.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use crate::build::objects::{CERTS_SECRET, CONTROLPLANE_LABEL};
use crate::build::pods::{
    self, COMPONENT_LABEL, CONFIG_DIR, PodsConfig, PodsTenant, Readiness, SECRET_FILE_MODE,
};
use crate::build::processes::{ControlPlaneBundle, pki_file_path};
use crate::validate::{TenantPlan, system_namespace};

pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// Plain-http health endpoints (`/livez`, `/readyz`) for the kubelet's probes; no data.
pub const ETCD_METRICS_PORT: u16 = 2381;
/// NetworkPolicy admitting the control-plane pods to the etcd's client port.
pub const ETCD_INGRESS_POLICY: &str = "etcd-ingress";
/// The volumeClaimTemplate: the PVC of the one replica is `data-<cp>-etcd-0`.
pub const DATA_VOLUME: &str = "data";
const COMPONENT: &str = "etcd";
/// Where the PVC is mounted; etcd creates its data dir (mode 0700) inside.
const DATA_MOUNT: &str = "/var/lib/etcd";
/// The etcd's own files: its CA, serving and peer certificates.
const ETCD_PKI: [&str; 5] = [
    "etcd-ca.crt",
    "etcd-server.crt",
    "etcd-server.key",
    "etcd-peer.crt",
    "etcd-peer.key",
];
/// PKI entries only the etcd pod (or nobody: the CA key) needs: kept out of the control-plane pod.
pub const ETCD_ONLY_PKI: [&str; 5] = [
    "etcd-ca.key",
    "etcd-server.crt",
    "etcd-server.key",
    "etcd-peer.crt",
    "etcd-peer.key",
];

/// The objects of a dedicated etcd, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdObjects {
    pub network_policy: NetworkPolicy,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// Name of the StatefulSet and of its headless Service.
pub fn etcd_name(name: &str) -> String {
    format!("{name}-etcd")
}

fn service_host(name: &str) -> String {
    format!("{}.{}.svc", etcd_name(name), system_namespace(name))
}

fn pod_host(name: &str) -> String {
    format!("{}-0.{}", etcd_name(name), service_host(name))
}

/// kube-apiserver's `--etcd-servers`: the headless Service.
pub fn client_url(plan: &TenantPlan) -> String {
    format!("https://{}:{ETCD_CLIENT_PORT}", service_host(&plan.name))
}

/// The names the etcd's serving and peer certificates carry beyond loopback: its Service's and
/// its pod's, short and qualified.
pub fn server_names(name: &str) -> Vec<String> {
    let (etcd, ns) = (etcd_name(name), system_namespace(name));
    vec![
        etcd.clone(),
        format!("{etcd}.{ns}"),
        format!("{etcd}.{ns}.svc"),
        format!("{etcd}.{ns}.svc.cluster.local"),
        format!("{etcd}-0.{etcd}.{ns}.svc"),
        format!("{etcd}-0.{etcd}.{ns}.svc.cluster.local"),
    ]
}

fn selector(plan: &TenantPlan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CONTROLPLANE_LABEL.into(), plan.name.clone()),
        (COMPONENT_LABEL.into(), COMPONENT.into()),
    ])
}

pub fn etcd_objects(
    plan: &TenantPlan,
    config: &PodsConfig,
    tenant: &PodsTenant<'_>,
    bundle: &ControlPlaneBundle,
) -> EtcdObjects {
    EtcdObjects {
        network_policy: network_policy(plan),
        service: service(plan),
        stateful_set: stateful_set(plan, config, tenant, bundle),
    }
}

/// Only the tenant's control-plane pods reach the client port; the peer port stays closed (one
/// member). The kubelet's probes come from the node, which NetworkPolicy implementations admit.
fn network_policy(plan: &TenantPlan) -> NetworkPolicy {
    pods::from_json(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": pods::meta(plan, ETCD_INGRESS_POLICY),
        "spec": {
            "podSelector": {"matchLabels": selector(plan)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": pods::selector(plan)}}],
                "ports": [{"protocol": "TCP", "port": ETCD_CLIENT_PORT}],
            }],
        },
    }))
}

/// Headless: stable DNS names for the StatefulSet's pod, published before it is ready (etcd
/// must resolve its own peer name to start).
fn service(plan: &TenantPlan) -> Service {
    pods::from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": pods::meta(plan, &etcd_name(&plan.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(plan),
            "ports": [
                {"name": "client", "protocol": "TCP", "port": ETCD_CLIENT_PORT, "targetPort": ETCD_CLIENT_PORT},
                {"name": "peer", "protocol": "TCP", "port": ETCD_PEER_PORT, "targetPort": ETCD_PEER_PORT},
            ],
        },
    }))
}

/// The processes runtime's etcd flags with the pod's addresses.
fn etcd_args(plan: &TenantPlan, bundle: &ControlPlaneBundle) -> Vec<String> {
    let process = bundle
        .processes
        .iter()
        .find(|p| p.name == "etcd")
        .expect("a bundle for a dedicated etcd runs etcd");
    let pod = pod_host(&plan.name);
    let peer_url = format!("https://{pod}:{ETCD_PEER_PORT}");
    let mut args: Vec<String> = process
        .args
        .iter()
        .map(|a| {
            let (flag, _) = a.split_once('=').unwrap_or((a, ""));
            let value = match flag {
                "--data-dir" => format!("{DATA_MOUNT}/data"),
                "--listen-client-urls" => format!("https://0.0.0.0:{ETCD_CLIENT_PORT}"),
                "--advertise-client-urls" => client_url(plan),
                "--listen-peer-urls" => format!("https://0.0.0.0:{ETCD_PEER_PORT}"),
                "--initial-advertise-peer-urls" => peer_url.clone(),
                "--initial-cluster" => format!("{}={peer_url}", plan.name),
                _ => return a.clone(),
            };
            format!("{flag}={value}")
        })
        .collect();
    args.push(format!(
        "--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}"
    ));
    args
}

fn http_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": ETCD_METRICS_PORT, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 15,
        "failureThreshold": failures,
    })
}

fn stateful_set(
    plan: &TenantPlan,
    config: &PodsConfig,
    tenant: &PodsTenant<'_>,
    bundle: &ControlPlaneBundle,
) -> StatefulSet {
    let env: Vec<Value> = bundle
        .processes
        .iter()
        .find(|p| p.name == "etcd")
        .map(|p| {
            p.env
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect()
        })
        .unwrap_or_default();
    let container = json!({
        "name": "etcd",
        "image": config.images.etcd,
        "command": ["etcd"],
        "args": etcd_args(plan, bundle),
        "env": env,
        "ports": [
            {"name": "client", "containerPort": ETCD_CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": ETCD_PEER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ETCD_METRICS_PORT, "protocol": "TCP"},
        ],
        // kubeadm's etcd probes: up to 4 minutes to start, restarted after 80 s of failing
        // /livez, out of the endpoints while /readyz fails.
        "startupProbe": http_probe("/readyz", 10, 24),
        "readinessProbe": http_probe("/readyz", 5, 3),
        "livenessProbe": http_probe("/livez", 10, 8),
        "resources": config.resources.etcd.to_json(),
        "securityContext": pods::container_security(),
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": DATA_MOUNT},
            {"name": "certs", "mountPath": CONFIG_DIR, "readOnly": true},
        ],
    });
    let items: Vec<Value> = ETCD_PKI
        .iter()
        .filter(|k| tenant.pki.contains_key(**k))
        .map(|k| json!({"key": k, "path": pki_file_path(k)}))
        .collect();
    let placement = tenant.placement.cloned().unwrap_or_default();
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pods::pod_security(),
        "containers": [container],
        "volumes": [{"name": "certs", "projected": {"defaultMode": SECRET_FILE_MODE, "sources": [
            {"secret": {"name": CERTS_SECRET, "items": items}},
        ]}}],
    });
    if !placement.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(placement.node_selector);
    }
    if !placement.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(placement.tolerations);
    }
    let mut pod_labels = pods::labels(plan);
    pod_labels.extend(selector(plan));
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": config.etcd_storage_size}},
    });
    if let Some(class) = &config.etcd_storage_class {
        claim_spec["storageClassName"] = json!(class);
    }
    pods::from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": pods::meta(plan, &etcd_name(&plan.name)),
        "spec": {
            "replicas": 1,
            "serviceName": etcd_name(&plan.name),
            "selector": {"matchLabels": selector(plan)},
            "revisionHistoryLimit": 2,
            // The PVC holds the tenant's data: deleted with the StatefulSet (tenant deletion),
            // kept when hibernation scales it to zero.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": DATA_VOLUME, "labels": pods::labels(plan)},
                "spec": claim_spec,
            }],
        },
    }))
}

/// What the StatefulSet's status says about the etcd: a ready replica of the current spec.
pub fn readiness(stateful_set: &StatefulSet) -> Readiness {
    let generation = stateful_set.metadata.generation.unwrap_or_default();
    let Some(status) = &stateful_set.status else {
        return Readiness::Starting {
            detail: "the etcd StatefulSet has no status yet".into(),
        };
    };
    let ready = status.ready_replicas.unwrap_or_default();
    if ready < 1 {
        return Readiness::Starting {
            detail: format!(
                "etcd: {ready} of {} replicas ready",
                stateful_set.spec.replicas.unwrap_or(1)
            ),
        };
    }
    if status.observed_generation.unwrap_or_default() < generation {
        return Readiness::Updating {
            detail: format!(
                "generation {generation} is not yet observed by the StatefulSet controller"
            ),
        };
    }
    if status.current_revision != status.update_revision {
        return Readiness::Updating {
            detail: "the etcd StatefulSet is rolling out a new revision".into(),
        };
    }
    Readiness::Ready
}

/// The tenant's readiness from both: Ready when both are, Starting when either is.
pub fn combine(control_plane: Readiness, etcd: Readiness) -> Readiness {
    match (control_plane, etcd) {
        (Readiness::Starting { detail }, _) | (_, Readiness::Starting { detail }) => {
            Readiness::Starting { detail }
        }
        (Readiness::Updating { detail }, _) | (_, Readiness::Updating { detail }) => {
            Readiness::Updating { detail }
        }
        (Readiness::Ready, Readiness::Ready) => Readiness::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::pods::tests::{hardened, owned_meta, pki, plan, to_json};
    use crate::build::pods::{PodsObjects, pods_objects};
    use crate::pki::PkiFiles;

    fn etcd_pki() -> PkiFiles {
        let mut files = pki();
        for f in [
            "etcd-ca.key",
            "etcd-server.crt",
            "etcd-server.key",
            "etcd-peer.crt",
            "etcd-peer.key",
            "apiserver-etcd-client.crt",
            "apiserver-etcd-client.key",
        ] {
            files.insert(f.into(), format!("PEM of {f}"));
        }
        files
    }

    fn objects(config: &PodsConfig, files: &PkiFiles, dedicated_etcd: bool) -> PodsObjects {
        pods_objects(
            &plan(),
            config,
            &PodsTenant {
                pki: files,
                datastore_secret: "datastore",
                datastore_key: "url",
                workers: false,
                dedicated_etcd,
                placement: None,
            },
        )
    }

    fn selector_json() -> Value {
        json!({"app.kubernetes.io/component": "etcd", "tenancy.hostplane.io/controlplane": "acme"})
    }

    #[test]
    fn kine_tenants_have_no_etcd() {
        assert_eq!(objects(&PodsConfig::default(), &pki(), false).etcd, None);
    }

    #[test]
    fn the_certificates_name_the_service_and_the_pod() {
        assert_eq!(
            server_names("acme"),
            [
                "acme-etcd",
                "acme-etcd.acme-system",
                "acme-etcd.acme-system.svc",
                "acme-etcd.acme-system.svc.cluster.local",
                "acme-etcd-0.acme-etcd.acme-system.svc",
                "acme-etcd-0.acme-etcd.acme-system.svc.cluster.local",
            ]
        );
        assert_eq!(
            client_url(&plan()),
            "https://acme-etcd.acme-system.svc:2379"
        );
    }

    #[test]
    fn the_etcd_is_a_stateful_set_with_a_claim_running_the_processes_runtime_flags() {
        let config = PodsConfig {
            etcd_storage_class: Some("fast".into()),
            ..PodsConfig::default()
        };
        let etcd = objects(&config, &etcd_pki(), true).etcd.unwrap();
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": {"path": path, "port": 2381, "scheme": "HTTP"},
                "periodSeconds": period, "timeoutSeconds": 15, "failureThreshold": failures
            })
        };
        let pod_labels = json!({
            "app.kubernetes.io/component": "etcd",
            "app.kubernetes.io/managed-by": "hostplane",
            "tenancy.hostplane.io/controlplane": "acme"
        });
        assert_eq!(
            to_json(&etcd.stateful_set),
            json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": owned_meta("acme-etcd"),
                "spec": {
                    "replicas": 1,
                    "serviceName": "acme-etcd",
                    "selector": {"matchLabels": selector_json()},
                    "revisionHistoryLimit": 2,
                    "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "enableServiceLinks": false,
                            "securityContext": {
                                "fsGroup": 65532, "runAsGroup": 65532, "runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}
                            },
                            "containers": [{
                                "name": "etcd",
                                "image": "registry.k8s.io/etcd:3.6.16-0",
                                "command": ["etcd"],
                                "args": [
                                    "--name=acme",
                                    "--data-dir=/var/lib/etcd/data",
                                    "--listen-client-urls=https://0.0.0.0:2379",
                                    "--advertise-client-urls=https://acme-etcd.acme-system.svc:2379",
                                    "--client-cert-auth=true",
                                    "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
                                    "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
                                    "--key-file=/etc/kubernetes/pki/etcd/server.key",
                                    "--listen-peer-urls=https://0.0.0.0:2380",
                                    "--initial-advertise-peer-urls=https://acme-etcd-0.acme-etcd.acme-system.svc:2380",
                                    "--initial-cluster=acme=https://acme-etcd-0.acme-etcd.acme-system.svc:2380",
                                    "--initial-cluster-state=new",
                                    "--peer-client-cert-auth=true",
                                    "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
                                    "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
                                    "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key",
                                    "--auto-compaction-mode=periodic",
                                    "--auto-compaction-retention=10m",
                                    "--quota-backend-bytes=1342177280",
                                    "--snapshot-count=5000",
                                    "--bootstrap-defrag-threshold-megabytes=64",
                                    "--listen-metrics-urls=http://0.0.0.0:2381"
                                ],
                                "env": [{"name": "GOGC", "value": "50"}],
                                "ports": [
                                    {"containerPort": 2379, "name": "client", "protocol": "TCP"},
                                    {"containerPort": 2380, "name": "peer", "protocol": "TCP"},
                                    {"containerPort": 2381, "name": "metrics", "protocol": "TCP"}
                                ],
                                "startupProbe": probe("/readyz", 10, 24),
                                "readinessProbe": probe("/readyz", 5, 3),
                                "livenessProbe": probe("/livez", 10, 8),
                                "resources": {"limits": {"cpu": "1", "memory": "1536Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                                "securityContext": hardened(),
                                "volumeMounts": [
                                    {"mountPath": "/var/lib/etcd", "name": "data"},
                                    {"mountPath": "/etc/kubernetes", "name": "certs", "readOnly": true}
                                ]
                            }],
                            "volumes": [{"name": "certs", "projected": {"defaultMode": 288, "sources": [
                                {"secret": {"name": "k8s-certs", "items": [
                                    {"key": "etcd-ca.crt", "path": "pki/etcd/ca.crt"},
                                    {"key": "etcd-server.crt", "path": "pki/etcd/server.crt"},
                                    {"key": "etcd-server.key", "path": "pki/etcd/server.key"},
                                    {"key": "etcd-peer.crt", "path": "pki/etcd/peer.crt"},
                                    {"key": "etcd-peer.key", "path": "pki/etcd/peer.key"}
                                ]}}
                            ]}}]
                        }
                    },
                    "volumeClaimTemplates": [{
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data", "labels": {
                            "app.kubernetes.io/managed-by": "hostplane",
                            "tenancy.hostplane.io/controlplane": "acme"
                        }},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "2Gi"}},
                            "storageClassName": "fast"
                        }
                    }]
                }
            })
        );
        // Without a class: the host's default StorageClass.
        let default = objects(&PodsConfig::default(), &etcd_pki(), true)
            .etcd
            .unwrap();
        assert_eq!(
            to_json(&default.stateful_set)["spec"]["volumeClaimTemplates"][0]["spec"],
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}})
        );
    }

    #[test]
    fn a_headless_service_names_the_etcd_and_only_control_plane_pods_reach_it() {
        let etcd = objects(&PodsConfig::default(), &etcd_pki(), true)
            .etcd
            .unwrap();
        assert_eq!(
            to_json(&etcd.service),
            json!({
                "apiVersion": "v1", "kind": "Service", "metadata": owned_meta("acme-etcd"),
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": true,
                    "selector": selector_json(),
                    "ports": [
                        {"name": "client", "port": 2379, "protocol": "TCP", "targetPort": 2379},
                        {"name": "peer", "port": 2380, "protocol": "TCP", "targetPort": 2380}
                    ]
                }
            })
        );
        assert_eq!(
            to_json(&etcd.network_policy),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": owned_meta("etcd-ingress"),
                "spec": {
                    "podSelector": {"matchLabels": selector_json()},
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [{"podSelector": {"matchLabels": {
                            "app.kubernetes.io/component": "control-plane",
                            "tenancy.hostplane.io/controlplane": "acme"
                        }}}],
                        "ports": [{"port": 2379, "protocol": "TCP"}]
                    }]
                }
            })
        );
    }

    /// The Deployment of a dedicated-etcd tenant is the Kine tenant's without the sidecar, with
    /// the API server on the etcd's Service and none of the etcd's own keys mounted.
    #[test]
    fn the_deployment_drops_kine_and_reaches_the_etcd_over_mtls() {
        let mut expected = to_json(&objects(&PodsConfig::default(), &pki(), false).deployment);
        let deployment = to_json(&objects(&PodsConfig::default(), &etcd_pki(), true).deployment);
        let mut apiserver_args = crate::build::processes::kube_apiserver_args(
            std::path::Path::new("/etc/kubernetes/pki"),
            6443,
            "https://acme-etcd.acme-system.svc:2379",
        );
        apiserver_args[0] = "--bind-address=0.0.0.0".into();
        apiserver_args.extend([
            "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt".to_string(),
            "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt".to_string(),
            "--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key".to_string(),
        ]);
        apiserver_args.extend(crate::limits::TenantLimits::default().apiserver_args());
        let pod = &mut expected["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array_mut().unwrap();
        assert_eq!(containers.remove(0)["name"], "kine");
        assert_eq!(containers[0]["name"], "kube-apiserver");
        containers[0]["args"] = json!(apiserver_args);
        let items = pod["volumes"][0]["projected"]["sources"][0]["secret"]["items"]
            .as_array_mut()
            .unwrap();
        items.insert(
            0,
            json!({"key": "apiserver-etcd-client.crt", "path": "pki/apiserver-etcd-client.crt"}),
        );
        items.insert(
            1,
            json!({"key": "apiserver-etcd-client.key", "path": "pki/apiserver-etcd-client.key"}),
        );
        // The etcd client pair is mounted, and digested with the rest.
        let digest = |d: &Value| {
            d["spec"]["template"]["metadata"]["annotations"]
                [crate::build::pods::RESTART_DIGEST_ANNOTATION]
                .clone()
        };
        assert_ne!(digest(&deployment), digest(&expected));
        expected["spec"]["template"]["metadata"]["annotations"]
            [crate::build::pods::RESTART_DIGEST_ANNOTATION] = digest(&deployment);
        assert_eq!(deployment, expected);
    }

    fn stateful_set_with(generation: i64, status: Value) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "acme-etcd", "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "acme-etcd", "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn etcd_readiness_is_a_ready_replica_of_the_current_revision() {
        let ready = json!({"replicas": 1, "readyReplicas": 1, "observedGeneration": 1,
            "currentRevision": "acme-etcd-1", "updateRevision": "acme-etcd-1"});
        assert_eq!(
            readiness(&stateful_set_with(1, ready.clone())),
            Readiness::Ready
        );
        assert_eq!(
            readiness(&stateful_set_with(1, json!({"replicas": 1}))),
            Readiness::Starting {
                detail: "etcd: 0 of 1 replicas ready".into()
            }
        );
        assert_eq!(
            readiness(&stateful_set_with(2, ready)),
            Readiness::Updating {
                detail: "generation 2 is not yet observed by the StatefulSet controller".into()
            }
        );
        assert_eq!(
            readiness(&stateful_set_with(
                1,
                json!({"replicas": 1, "readyReplicas": 1, "observedGeneration": 1,
                    "currentRevision": "acme-etcd-1", "updateRevision": "acme-etcd-2"})
            )),
            Readiness::Updating {
                detail: "the etcd StatefulSet is rolling out a new revision".into()
            }
        );
        let mut none = stateful_set_with(1, json!({}));
        none.status = None;
        assert_eq!(
            readiness(&none),
            Readiness::Starting {
                detail: "the etcd StatefulSet has no status yet".into()
            }
        );
        let starting = |d: &str| Readiness::Starting { detail: d.into() };
        let updating = |d: &str| Readiness::Updating { detail: d.into() };
        assert_eq!(
            combine(Readiness::Ready, Readiness::Ready),
            Readiness::Ready
        );
        assert_eq!(combine(Readiness::Ready, starting("e")), starting("e"));
        assert_eq!(combine(starting("d"), Readiness::Ready), starting("d"));
        assert_eq!(combine(updating("d"), starting("e")), starting("e"));
        assert_eq!(combine(Readiness::Ready, updating("e")), updating("e"));
    }
}
