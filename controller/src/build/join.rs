//! What a tenant needs so that worker nodes join it the way kubeadm's do: a bootstrap token,
//! the signed `kube-public/cluster-info` discovery document, the RBAC that lets bootstrapping
//! kubelets ask for (and get auto-approved) client certificates, and the `kubeadm-config` /
//! `kubelet-config` ConfigMaps `kubeadm join` reads. Names and shapes are kubeadm's, so a real
//! `kubeadm join` and a kubelet TLS bootstrap both work against a tenant. Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::build::objects::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::build::processes::SERVICE_CLUSTER_IP_RANGE;

/// Marks the bootstrap token Secrets hostplane made (found again by this label, never by name).
pub const JOIN_TOKEN_LABEL: &str = "tenancy.hostplane.io/bootstrap-token";
pub const JOIN_TOKEN_LABEL_VALUE: &str = "node-join";

pub const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const BOOTSTRAP_TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
/// The group kubeadm gives its default node-join token; every join binding names it.
pub const NODE_BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
pub const NODES_GROUP: &str = "system:nodes";

pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO: &str = "cluster-info";
pub const CLUSTER_INFO_KUBECONFIG_KEY: &str = "kubeconfig";
/// Prefix of the keys kube-controller-manager's bootstrapsigner adds to cluster-info: one
/// detached JWS of the `kubeconfig` value per signing token, keyed by the token id.
pub const CLUSTER_INFO_JWS_PREFIX: &str = "jws-kubeconfig-";

pub const KUBEADM_CONFIG: &str = "kubeadm-config";
pub const KUBEADM_CONFIG_KEY: &str = "ClusterConfiguration";
pub const KUBELET_CONFIG: &str = "kubelet-config";
pub const KUBELET_CONFIG_KEY: &str = "kubelet";

const KUBE_SYSTEM: &str = "kube-system";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const TOKEN_ID_LEN: usize = 6;
const TOKEN_SECRET_LEN: usize = 16;
const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token `<id>.<secret>` (`[a-z0-9]{6}.[a-z0-9]{16}`). The id is public (it names
/// the Secret and the JWS key); the secret authenticates, so Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("a bootstrap token has the form <id>.<secret>, [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Shape,
}

impl BootstrapToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut pick = |len: usize| -> String {
            (0..len)
                .map(|_| char::from(TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())]))
                .collect()
        };
        let id = pick(TOKEN_ID_LEN);
        let secret = pick(TOKEN_SECRET_LEN);
        Self { id, secret }
    }

    /// Parses `<id>.<secret>` as the API server's bootstrap authenticator accepts it.
    pub fn parse(token: &str) -> Result<Self, TokenFormatError> {
        let (id, secret) = token.split_once('.').ok_or(TokenFormatError::Shape)?;
        let valid = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if valid(id, TOKEN_ID_LEN) && valid(secret, TOKEN_SECRET_LEN) {
            Ok(Self {
                id: id.to_string(),
                secret: secret.to_string(),
            })
        } else {
            Err(TokenFormatError::Shape)
        }
    }

    /// The name of the Secret in kube-system that holds this token.
    pub fn secret_name(&self) -> String {
        format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{}", self.id)
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaCertError {
    #[error("the CA certificate is not PEM: {0}")]
    Pem(String),
    #[error("the CA certificate does not parse as X.509: {0}")]
    X509(String),
}

/// The discovery pin `kubeadm join --discovery-token-ca-cert-hash` takes: "sha256:" and the
/// hex SHA-256 of the CA certificate's DER SubjectPublicKeyInfo (the key, not the whole
/// certificate, so a re-issued CA with the same key still matches).
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, CaCertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| CaCertError::Pem(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CaCertError::X509(e.to_string()))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(spki))))
}

/// A token's expiry as the bootstrap authenticator parses it (RFC 3339, whole seconds).
pub fn expiration_rfc3339(expires_at: Timestamp) -> String {
    Timestamp::from_second(expires_at.as_second())
        .unwrap_or(expires_at)
        .to_string()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// The Secret `kube-system/bootstrap-token-<id>` that makes `token` valid until `expires_at`
/// for authentication (as `system:bootstrap:<id>` in the node-join group) and for signing
/// cluster-info.
pub fn bootstrap_token_secret(
    token: &BootstrapToken,
    expires_at: Timestamp,
    description: &str,
) -> Secret {
    let mut metadata = meta(&token.secret_name(), Some(KUBE_SYSTEM));
    metadata.labels.get_or_insert_default().insert(
        JOIN_TOKEN_LABEL.to_string(),
        JOIN_TOKEN_LABEL_VALUE.to_string(),
    );
    let data = [
        ("auth-extra-groups", NODE_BOOTSTRAPPERS_GROUP.to_string()),
        ("description", description.to_string()),
        ("expiration", expiration_rfc3339(expires_at)),
        ("token-id", token.id.clone()),
        ("token-secret", token.secret.clone()),
        ("usage-bootstrap-authentication", "true".to_string()),
        ("usage-bootstrap-signing", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata,
        type_: Some(BOOTSTRAP_TOKEN_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

/// What the join objects of one tenant are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinConfig<'a> {
    pub cluster_name: &'a str,
    /// `host:port` nodes reach the tenant API server at (what `kubeadm join` takes).
    pub endpoint: &'a str,
    /// The tenant cluster CA, PEM.
    pub ca_pem: &'a str,
    /// The tenant's Kubernetes version, e.g. "1.37.2".
    pub kubernetes_version: &'a str,
}

impl JoinConfig<'_> {
    pub fn server_url(&self) -> String {
        format!("https://{}", self.endpoint)
    }
}

/// Everything but the token: applied on every pass (drift repair), same for every token.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JoinObjects {
    pub config_maps: Vec<ConfigMap>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
}

fn group(name: &str) -> Subject {
    Subject {
        kind: "Group".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

fn user(name: &str) -> Subject {
    Subject {
        kind: "User".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some(RBAC_GROUP.into()),
        kind: kind.into(),
        name: name.into(),
    }
}

fn get_rule(resource: &str, names: Option<&str>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        resource_names: names.map(|n| vec![n.to_string()]),
        verbs: vec!["get".into()],
        ..Default::default()
    }
}

fn config_map(namespace: &str, name: &str, key: &str, value: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(name, Some(namespace)),
        data: Some(BTreeMap::from([(key.to_string(), value)])),
        ..Default::default()
    }
}

/// A Role that may get one ConfigMap, and its binding to `subjects`.
fn configmap_reader(
    namespace: &str,
    name: &str,
    config_map: &str,
    subjects: Vec<Subject>,
) -> (Role, RoleBinding) {
    let role = Role {
        metadata: meta(name, Some(namespace)),
        rules: Some(vec![get_rule("configmaps", Some(config_map))]),
    };
    let binding = RoleBinding {
        metadata: meta(name, Some(namespace)),
        role_ref: role_ref("Role", name),
        subjects: Some(subjects),
    };
    (role, binding)
}

fn cluster_role_binding(name: &str, cluster_role: &str, subject: Subject) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: role_ref("ClusterRole", cluster_role),
        subjects: Some(vec![subject]),
    }
}

/// cluster-info's `kubeconfig`: the cluster only (no user, no context), as kubeadm writes it;
/// joining nodes trust it once its CA matches their pin and its JWS matches their token.
pub fn cluster_info_kubeconfig(config: &JoinConfig<'_>) -> String {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "", "cluster": {
            "certificate-authority-data": STANDARD.encode(config.ca_pem),
            "server": config.server_url(),
        }}],
        "contexts": null,
        "current-context": "",
        "preferences": {},
        "users": null,
    });
    serde_yaml::to_string(&value).expect("a JSON value always serializes as YAML")
}

/// kubeadm's ClusterConfiguration for the tenant, as `kubeadm join` reads it from kube-system.
pub fn cluster_configuration(config: &JoinConfig<'_>) -> String {
    let value = json!({
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": config.cluster_name,
        "kubernetesVersion": format!("v{}", config.kubernetes_version.trim_start_matches('v')),
        "controlPlaneEndpoint": config.endpoint,
        "certificatesDir": "/etc/kubernetes/pki",
        "networking": {
            "dnsDomain": "cluster.local",
            "serviceSubnet": SERVICE_CLUSTER_IP_RANGE,
        },
    });
    serde_yaml::to_string(&value).expect("a JSON value always serializes as YAML")
}

/// The KubeletConfiguration joining kubelets start with (kubeadm's defaults that matter).
pub fn kubelet_configuration() -> String {
    let value = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": "/etc/kubernetes/pki/ca.crt" },
        },
        "authorization": { "mode": "Webhook" },
        "cgroupDriver": "systemd",
        "clusterDNS": ["10.96.0.10"],
        "clusterDomain": "cluster.local",
        "rotateCertificates": true,
        "staticPodPath": "/etc/kubernetes/manifests",
    });
    serde_yaml::to_string(&value).expect("a JSON value always serializes as YAML")
}

/// The objects kubeadm's `init` phases `bootstrap-token` and `upload-config` create, for a
/// tenant: discovery, CSR auto-approval and the configs `kubeadm join` reads.
pub fn join_objects(config: &JoinConfig<'_>) -> JoinObjects {
    let bootstrappers = || group(NODE_BOOTSTRAPPERS_GROUP);
    let nodes = || group(NODES_GROUP);
    let (cluster_info_role, cluster_info_binding) = configmap_reader(
        CLUSTER_INFO_NAMESPACE,
        "kubeadm:bootstrap-signer-clusterinfo",
        CLUSTER_INFO,
        vec![user("system:anonymous")],
    );
    let (kubeadm_config_role, kubeadm_config_binding) = configmap_reader(
        KUBE_SYSTEM,
        "kubeadm:nodes-kubeadm-config",
        KUBEADM_CONFIG,
        vec![bootstrappers(), nodes()],
    );
    let (kubelet_config_role, kubelet_config_binding) = configmap_reader(
        KUBE_SYSTEM,
        "kubeadm:kubelet-config",
        KUBELET_CONFIG,
        vec![nodes(), bootstrappers()],
    );
    JoinObjects {
        config_maps: vec![
            config_map(
                CLUSTER_INFO_NAMESPACE,
                CLUSTER_INFO,
                CLUSTER_INFO_KUBECONFIG_KEY,
                cluster_info_kubeconfig(config),
            ),
            config_map(
                KUBE_SYSTEM,
                KUBEADM_CONFIG,
                KUBEADM_CONFIG_KEY,
                cluster_configuration(config),
            ),
            config_map(
                KUBE_SYSTEM,
                KUBELET_CONFIG,
                KUBELET_CONFIG_KEY,
                kubelet_configuration(),
            ),
        ],
        roles: vec![cluster_info_role, kubeadm_config_role, kubelet_config_role],
        role_bindings: vec![
            cluster_info_binding,
            kubeadm_config_binding,
            kubelet_config_binding,
        ],
        cluster_roles: vec![ClusterRole {
            metadata: meta("kubeadm:get-nodes", None),
            rules: Some(vec![get_rule("nodes", None)]),
            ..Default::default()
        }],
        cluster_role_bindings: vec![
            // Bootstrapping kubelets may create CSRs...
            cluster_role_binding(
                "kubeadm:kubelet-bootstrap",
                "system:node-bootstrapper",
                bootstrappers(),
            ),
            // ...which kube-controller-manager approves for them...
            cluster_role_binding(
                "kubeadm:node-autoapprove-bootstrap",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                bootstrappers(),
            ),
            // ...and later for the node itself when it renews its certificate.
            cluster_role_binding(
                "kubeadm:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                nodes(),
            ),
            cluster_role_binding("kubeadm:get-nodes", "kubeadm:get-nodes", bootstrappers()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// An EC CA made with openssl; its pin computed with the command kubeadm documents:
    /// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBgTCCASegAwIBAgIUQJzsMPITaABwPyTQplG+lp6xc3AwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXJuZXRlczAgFw0yNjExMjMxMTQwMjVaGA8yMTI2MTAz
MDExNDAyNVowFTETMBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABH+kfIAQye801Wxy5vgL49DE28mmLVqQ6GxrwObpXpdeH2Dz796J
dv3MUWbZLWYucY81DbW2h/l3V+Seu7ItqPijUzBRMB0GA1UdDgQWBBTdA5N91Vj0
9vR6RswxZ3tlrdseADAfBgNVHSMEGDAWgBTdA5N91Vj09vR6RswxZ3tlrdseADAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIELk+0AqK4rsR7EUi5Kq
AiBo6lJRsPcRQUGVR1WGoHvoAiEA2SOaNcbYcqf/aitke8RYz3zju1Qjhwt7JPgN
DsUvjg8=
-----END CERTIFICATE-----
";
    const CA_PIN: &str = "sha256:4c929b41e4276dc7e4bad7733a714a9a73ccffc2fb9c299ffabd932ae0c3bc3e";

    fn config() -> JoinConfig<'static> {
        JoinConfig {
            cluster_name: "acme",
            endpoint: "127.0.0.1:6443",
            ca_pem: CA_PEM,
            kubernetes_version: "1.37.2",
        }
    }

    fn to_json<T: serde::Serialize>(objects: &[T]) -> Value {
        serde_json::to_value(objects).unwrap()
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn ours() -> Value {
        json!({ "app.kubernetes.io/managed-by": "hostplane" })
    }

    #[test]
    fn ca_pin_is_the_sha256_of_the_public_key_info() {
        assert_eq!(ca_cert_hash(CA_PEM).unwrap(), CA_PIN);
        assert!(matches!(ca_cert_hash("no pem"), Err(CaCertError::Pem(_))));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(ca_cert_hash(garbage), Err(CaCertError::X509(_))));
    }

    #[test]
    fn generated_tokens_have_the_bootstrap_shape_and_differ() {
        let a = BootstrapToken::generate();
        let b = BootstrapToken::generate();
        assert_ne!(a, b);
        for t in [&a, &b] {
            assert_eq!(BootstrapToken::parse(&t.to_string()).unwrap(), *t);
        }
        assert_eq!(
            format!("{a:?}"),
            format!("BootstrapToken({}.<redacted>)", a.id)
        );
    }

    #[test]
    fn token_parsing_accepts_only_the_bootstrap_shape() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            (t.id.as_str(), t.secret.as_str()),
            ("abcdef", "0123456789abcdef")
        );
        assert_eq!(t.secret_name(), "bootstrap-token-abcdef");
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcdefg",
            "abcdef.0123456789abcde!",
            "abcdef:0123456789abcdef",
            "abc.def.0123456789abcdef",
        ] {
            assert_eq!(
                BootstrapToken::parse(bad),
                Err(TokenFormatError::Shape),
                "{bad}"
            );
        }
    }

    #[test]
    fn bootstrap_token_secret_is_kubeadms() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let expires: Timestamp = "2026-11-23T12:00:00.75Z".parse().unwrap();
        let secret = bootstrap_token_secret(&token, expires, "worker join for acme");
        assert_eq!(
            serde_json::to_value(&secret).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "bootstrap-token-abcdef",
                    "namespace": "kube-system",
                    "labels": {
                        "app.kubernetes.io/managed-by": "hostplane",
                        "tenancy.hostplane.io/bootstrap-token": "node-join",
                    },
                },
                "type": "bootstrap.kubernetes.io/token",
                "data": {
                    "auth-extra-groups": b64("system:bootstrappers:kubeadm:default-node-token"),
                    "description": b64("worker join for acme"),
                    "expiration": b64("2026-11-23T12:00:00Z"),
                    "token-id": b64("abcdef"),
                    "token-secret": b64("0123456789abcdef"),
                    "usage-bootstrap-authentication": b64("true"),
                    "usage-bootstrap-signing": b64("true"),
                },
            })
        );
    }

    #[test]
    fn config_maps_carry_discovery_and_the_configs_kubeadm_join_reads() {
        let objects = join_objects(&config());
        let cluster_info = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: ''\ncontexts: null\ncurrent-context: ''\nkind: Config\npreferences: {{}}\nusers: null\n",
            b64(CA_PEM)
        );
        assert_eq!(
            to_json(&objects.config_maps),
            json!([
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": { "name": "cluster-info", "namespace": "kube-public", "labels": ours() },
                    "data": { "kubeconfig": cluster_info },
                },
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": { "name": "kubeadm-config", "namespace": "kube-system", "labels": ours() },
                    "data": { "ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\ncertificatesDir: /etc/kubernetes/pki\nclusterName: acme\ncontrolPlaneEndpoint: 127.0.0.1:6443\nkind: ClusterConfiguration\nkubernetesVersion: v1.37.2\nnetworking:\n  dnsDomain: cluster.local\n  serviceSubnet: 10.96.0.0/12\n" },
                },
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": { "name": "kubelet-config", "namespace": "kube-system", "labels": ours() },
                    "data": { "kubelet": "apiVersion: kubelet.config.k8s.io/v1beta1\nauthentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\nauthorization:\n  mode: Webhook\ncgroupDriver: systemd\nclusterDNS:\n- 10.96.0.10\nclusterDomain: cluster.local\nkind: KubeletConfiguration\nrotateCertificates: true\nstaticPodPath: /etc/kubernetes/manifests\n" },
                },
            ])
        );
        // What a joining node does with it: the server and the CA it pins.
        let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&cluster_info).unwrap();
        let cluster = kubeconfig.clusters[0].cluster.clone().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        let ca = STANDARD
            .decode(cluster.certificate_authority_data.unwrap())
            .unwrap();
        assert_eq!(
            ca_cert_hash(std::str::from_utf8(&ca).unwrap()).unwrap(),
            CA_PIN
        );
    }

    #[test]
    fn roles_let_anonymous_read_cluster_info_and_joining_nodes_read_their_configs() {
        let objects = join_objects(&config());
        let get_configmap = |name: &str| json!([{ "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get"] }]);
        let group = |name: &str| json!({ "kind": "Group", "name": name, "apiGroup": "rbac.authorization.k8s.io" });
        let role = |ns: &str, name: &str, cm: &str| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": { "name": name, "namespace": ns, "labels": ours() },
                "rules": get_configmap(cm),
            })
        };
        let binding = |ns: &str, name: &str, subjects: Value| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": { "name": name, "namespace": ns, "labels": ours() },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
                "subjects": subjects,
            })
        };
        assert_eq!(
            to_json(&objects.roles),
            json!([
                role(
                    "kube-public",
                    "kubeadm:bootstrap-signer-clusterinfo",
                    "cluster-info"
                ),
                role(
                    "kube-system",
                    "kubeadm:nodes-kubeadm-config",
                    "kubeadm-config"
                ),
                role("kube-system", "kubeadm:kubelet-config", "kubelet-config"),
            ])
        );
        assert_eq!(
            to_json(&objects.role_bindings),
            json!([
                binding(
                    "kube-public",
                    "kubeadm:bootstrap-signer-clusterinfo",
                    json!([{ "kind": "User", "name": "system:anonymous", "apiGroup": "rbac.authorization.k8s.io" }])
                ),
                binding(
                    "kube-system",
                    "kubeadm:nodes-kubeadm-config",
                    json!([
                        group("system:bootstrappers:kubeadm:default-node-token"),
                        group("system:nodes")
                    ])
                ),
                binding(
                    "kube-system",
                    "kubeadm:kubelet-config",
                    json!([
                        group("system:nodes"),
                        group("system:bootstrappers:kubeadm:default-node-token")
                    ])
                ),
            ])
        );
    }

    #[test]
    fn cluster_bindings_let_bootstrappers_get_auto_approved_client_certificates() {
        let objects = join_objects(&config());
        assert_eq!(
            to_json(&objects.cluster_roles),
            json!([{
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": { "name": "kubeadm:get-nodes", "labels": ours() },
                "rules": [{ "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] }],
            }])
        );
        let binding = |name: &str, role: &str, group: &str| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": { "name": name, "labels": ours() },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
                "subjects": [{ "kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io" }],
            })
        };
        let bootstrappers = "system:bootstrappers:kubeadm:default-node-token";
        assert_eq!(
            to_json(&objects.cluster_role_bindings),
            json!([
                binding(
                    "kubeadm:kubelet-bootstrap",
                    "system:node-bootstrapper",
                    bootstrappers
                ),
                binding(
                    "kubeadm:node-autoapprove-bootstrap",
                    "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                    bootstrappers
                ),
                binding(
                    "kubeadm:node-autoapprove-certificate-rotation",
                    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                    "system:nodes"
                ),
                binding("kubeadm:get-nodes", "kubeadm:get-nodes", bootstrappers),
            ])
        );
    }
}
