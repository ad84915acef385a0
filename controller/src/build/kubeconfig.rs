//! Kubeconfigs, built as kube's `Kubeconfig` type so that what we hand out is what kubectl reads.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::Kubeconfig;
use serde_json::json;

use crate::config::ProxyAccess;

/// How a kubeconfig's user authenticates.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential<'a> {
    /// A bearer token (what people get: it expires and carries an identity that RBAC can revoke).
    Token(&'a str),
    /// A client certificate and key in PEM (components and the controller only).
    ClientCert { cert_pem: &'a str, key_pem: &'a str },
    /// A client certificate and key named by path: client-go re-reads such files, so a
    /// component picks up a renewed certificate without a restart.
    ClientCertFiles { cert: &'a str, key: &'a str },
}

/// A single-context kubeconfig for `server`, trusting `ca_pem`.
pub fn kubeconfig(
    context: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    credential: &Credential<'_>,
) -> Kubeconfig {
    let user_entry = match credential {
        Credential::Token(token) => json!({ "token": token }),
        Credential::ClientCert { cert_pem, key_pem } => json!({
            "client-certificate-data": STANDARD.encode(cert_pem),
            "client-key-data": STANDARD.encode(key_pem),
        }),
        Credential::ClientCertFiles { cert, key } => json!({
            "client-certificate": cert,
            "client-key": key,
        }),
    };
    let value = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": context, "cluster": {
            "server": server,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{ "name": context, "context": { "cluster": context, "user": user } }],
        "current-context": context,
    });
    serde_json::from_value(value)
        .expect("the kubeconfig built here always matches kube's Kubeconfig type")
}

/// The same kubeconfig, checking the server certificate for `server_name` (sent as SNI) rather
/// than the host in the server URL: how a client names its tenant at the shared proxy port.
pub fn with_tls_server_name(mut config: Kubeconfig, server_name: &str) -> Kubeconfig {
    for named in &mut config.clusters {
        if let Some(cluster) = named.cluster.as_mut() {
            cluster.tls_server_name = Some(server_name.to_string());
        }
    }
    config
}

/// The kubeconfig handed to people for tenant `name` (what the `kubeconfig` key of
/// `<name>-system/admin-kubeconfig` holds): through the SNI proxy, naming the tenant by TLS
/// server name, when there is one; else straight to the tenant's `endpoint`.
pub fn handed_out(
    name: &str,
    endpoint: &str,
    ca_pem: &str,
    token: &str,
    proxy: Option<&ProxyAccess>,
) -> Kubeconfig {
    let user = format!("{name}-admin");
    let credential = Credential::Token(token);
    match proxy {
        Some(proxy) => with_tls_server_name(
            kubeconfig(
                name,
                &format!("https://{}", proxy.address),
                ca_pem,
                &user,
                &credential,
            ),
            &proxy.tenant_host(name),
        ),
        None => kubeconfig(name, endpoint, ca_pem, &user, &credential),
    }
}

/// Whether every cluster of the kubeconfig `yaml` trusts exactly `ca_pem`.
pub fn trusts_exactly(yaml: &str, ca_pem: &str) -> bool {
    let wanted = STANDARD.encode(ca_pem);
    serde_yaml::from_str::<Kubeconfig>(yaml).is_ok_and(|k| {
        !k.clusters.is_empty()
            && k.clusters.iter().all(|c| {
                c.cluster
                    .as_ref()
                    .and_then(|c| c.certificate_authority_data.as_deref())
                    == Some(wanted.as_str())
            })
    })
}

/// The kubeconfig as YAML, the form kubectl and people read.
pub fn to_yaml(config: &Kubeconfig) -> String {
    serde_yaml::to_string(config).expect("a Kubeconfig always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_kubeconfig_is_complete_yaml() {
        let config = kubeconfig(
            "acme",
            "https://127.0.0.1:7443",
            "CA",
            "acme-admin",
            &Credential::Token("t0k"),
        );
        let yaml = to_yaml(&config);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let expected: serde_yaml::Value = serde_yaml::from_str(
            r#"
apiVersion: v1
kind: Config
clusters:
- name: acme
  cluster:
    server: https://127.0.0.1:7443
    certificate-authority-data: Q0E=
users:
- name: acme-admin
  user:
    token: t0k
contexts:
- name: acme
  context:
    cluster: acme
    user: acme-admin
current-context: acme
"#,
        )
        .unwrap();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn tls_server_name_names_the_tenant_behind_a_shared_address() {
        let config = with_tls_server_name(
            kubeconfig(
                "acme",
                "https://proxy:9443",
                "CA",
                "u",
                &Credential::Token("t"),
            ),
            "acme.tenants.test",
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&to_yaml(&config)).unwrap();
        assert_eq!(
            yaml["clusters"][0]["cluster"]["tls-server-name"],
            "acme.tenants.test"
        );
        assert_eq!(
            yaml["clusters"][0]["cluster"]["server"],
            "https://proxy:9443"
        );
    }

    #[test]
    fn handed_out_kubeconfigs_go_through_the_proxy_when_there_is_one() {
        let proxy = ProxyAccess {
            address: "proxy:9443".into(),
            domain: "tenants.test".into(),
        };
        let via_proxy: serde_yaml::Value = serde_yaml::from_str(&to_yaml(&handed_out(
            "acme",
            "https://127.0.0.1:7443",
            "CA",
            "t0k",
            Some(&proxy),
        )))
        .unwrap();
        let expected: serde_yaml::Value = serde_yaml::from_str(
            r#"
apiVersion: v1
kind: Config
clusters:
- name: acme
  cluster:
    server: https://proxy:9443
    certificate-authority-data: Q0E=
    tls-server-name: acme.tenants.test
users:
- name: acme-admin
  user:
    token: t0k
contexts:
- name: acme
  context:
    cluster: acme
    user: acme-admin
current-context: acme
"#,
        )
        .unwrap();
        assert_eq!(via_proxy, expected);
        let direct = handed_out("acme", "https://127.0.0.1:7443", "CA", "t0k", None);
        assert_eq!(
            to_yaml(&direct),
            to_yaml(&kubeconfig(
                "acme",
                "https://127.0.0.1:7443",
                "CA",
                "acme-admin",
                &Credential::Token("t0k")
            ))
        );
    }

    #[test]
    fn client_cert_kubeconfig_embeds_base64_pem() {
        let config = kubeconfig(
            "c",
            "https://h:1",
            "CA",
            "u",
            &Credential::ClientCert {
                cert_pem: "C",
                key_pem: "K",
            },
        );
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate_data.as_deref(), Some("Qw=="));
        assert_eq!(
            config.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .server
                .as_deref(),
            Some("https://h:1")
        );
    }
}
