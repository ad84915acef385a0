//! etcd datastores reached over the network: the shared etcd, where each tenant is an etcd user
//! whose role may read and write only the tenant's key prefix, and users' own etcds, checked
//! before a tenant API server is pointed at them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, Identity, Permission, TlsOptions,
    UserAddOptions,
};
use tracing::info;

use crate::build::processes::EtcdClientTls;
use crate::pki::SharedEtcdCas;

/// How long connecting to an etcd, and each request, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "the tenant lives on the shared etcd, but this controller has no --shared-etcd-endpoints"
    )]
    NotConfigured,
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd endpoints {0:?} are not https:// URLs")]
    BadEndpoints(String),
    #[error("cannot reach etcd at {endpoints}: {detail}")]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd at {endpoints} refused {operation}: {detail}")]
    Refused {
        endpoints: String,
        operation: String,
        detail: String,
    },
}

/// What an etcd error says: a gRPC status's message, or the transport error's causes (tonic
/// alone says only "transport error").
pub(crate) fn detail(e: &etcd_client::Error) -> String {
    if let etcd_client::Error::GRpcStatus(status) = e {
        return status.message().to_string();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// etcd's refusal of a request its user has no permission for.
fn is_permission_denied(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("permission denied"))
}

/// Comma-separated https URLs, as `--etcd-servers` takes them.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, EtcdError> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    if endpoints.is_empty() || endpoints.iter().any(|e| !e.starts_with("https://")) {
        return Err(EtcdError::BadEndpoints(list.to_string()));
    }
    Ok(endpoints)
}

/// A client with TLS client authentication; every request is bounded by `REQUEST_TIMEOUT`.
pub(crate) async fn connect(
    endpoints: &[String],
    tls: &EtcdClientTls,
) -> Result<Client, EtcdError> {
    let options = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
        )
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    let unreachable = |detail: String| EtcdError::Unreachable {
        endpoints: endpoints.join(","),
        detail,
    };
    match tokio::time::timeout(
        REQUEST_TIMEOUT * 2,
        Client::connect(endpoints, Some(options)),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(unreachable(detail(&e))),
        Err(_) => Err(unreachable(format!(
            "no answer within {:?}",
            REQUEST_TIMEOUT * 2
        ))),
    }
}

/// Runs one request under the timeout, naming the operation in the error.
pub(crate) async fn request<T>(
    endpoints: &[String],
    operation: &str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<Result<T, etcd_client::Error>, EtcdError> {
    tokio::time::timeout(REQUEST_TIMEOUT * 2, call)
        .await
        .map_err(|_| EtcdError::Unreachable {
            endpoints: endpoints.join(","),
            detail: format!("{operation}: no answer within {:?}", REQUEST_TIMEOUT * 2),
        })
}

pub(crate) fn refused(endpoints: &[String], operation: &str, e: &etcd_client::Error) -> EtcdError {
    match e {
        etcd_client::Error::GRpcStatus(_) => EtcdError::Refused {
            endpoints: endpoints.join(","),
            operation: operation.into(),
            detail: detail(e),
        },
        _ => EtcdError::Unreachable {
            endpoints: endpoints.join(","),
            detail: format!("{operation}: {}", detail(e)),
        },
    }
}

/// Checks that an etcd answers these credentials, the way `etcdctl endpoint health` does: a
/// read of the key `health`, where "permission denied" still proves a working, authenticated
/// connection (the credentials may be confined to a prefix).
pub async fn check_health(endpoints: &[String], tls: &EtcdClientTls) -> Result<(), EtcdError> {
    let mut client = connect(endpoints, tls).await?;
    match request(endpoints, "a health read", client.get("health", None)).await? {
        Ok(_) => Ok(()),
        Err(e) if is_permission_denied(&e) => Ok(()),
        Err(e) => Err(refused(endpoints, "a health read", &e)),
    }
}

/// A tenant's identity on the shared etcd, derived from its UID (like its Postgres database):
/// a ControlPlane created again under the same name never reaches the old one's keys.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantEtcdUser {
    /// etcd user, and the common name of the tenant API server's client certificate.
    pub user: String,
    /// etcd role granting readwrite on `key_prefix` only.
    pub role: String,
    /// kube-apiserver's `--etcd-prefix`.
    pub apiserver_prefix: String,
    /// What the role covers: `apiserver_prefix` and a slash, so `/hostplane/ab` never covers
    /// `/hostplane/abc/`.
    pub key_prefix: String,
}

impl TenantEtcdUser {
    pub fn for_uid(uid: &str) -> Self {
        let hex = uid.replace('-', "").to_ascii_lowercase();
        let name = format!("hp-{hex}");
        Self {
            user: name.clone(),
            role: name,
            apiserver_prefix: format!("/hostplane/{hex}"),
            key_prefix: format!("/hostplane/{hex}/"),
        }
    }
}

/// The controller's access to the shared etcd: a root client certificate (to manage users and
/// roles) and the client CA with its key (to issue tenants certificates naming their users).
#[derive(Clone, Debug)]
pub struct SharedEtcd {
    endpoints: Vec<String>,
    root: EtcdClientTls,
    client_ca_crt: String,
    client_ca_key: String,
}

/// Where the shared etcd's credentials are, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedEtcdFiles {
    /// Comma-separated https URLs.
    pub endpoints: String,
    /// CA of the shared etcd's serving certificate.
    pub ca_file: PathBuf,
    /// Client certificate and key of the etcd `root` user.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA the shared etcd trusts for client certificates; `ca_file` when unset.
    pub client_ca_file: Option<PathBuf>,
    /// Key of that client CA.
    pub client_ca_key_file: PathBuf,
}

fn read(path: &Path) -> Result<String, EtcdError> {
    std::fs::read_to_string(path).map_err(|source| EtcdError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

impl SharedEtcd {
    pub fn from_files(files: &SharedEtcdFiles) -> Result<Self, EtcdError> {
        let ca_pem = read(&files.ca_file)?;
        Ok(Self {
            endpoints: parse_endpoints(&files.endpoints)?,
            client_ca_crt: match &files.client_ca_file {
                Some(path) => read(path)?,
                None => ca_pem.clone(),
            },
            client_ca_key: read(&files.client_ca_key_file)?,
            root: EtcdClientTls {
                ca_pem,
                cert_pem: read(&files.cert_file)?,
                key_pem: read(&files.key_file)?,
            },
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A client as the etcd `root` user (usage metering reads tenants' prefixes with it).
    pub(crate) async fn root_client(&self) -> Result<Client, EtcdError> {
        connect(&self.endpoints, &self.root).await
    }

    pub fn cas(&self) -> SharedEtcdCas<'_> {
        SharedEtcdCas {
            server_ca_crt: &self.root.ca_pem,
            client_ca_crt: &self.client_ca_crt,
            client_ca_key: &self.client_ca_key,
        }
    }

    /// Creates the tenant's role (readwrite on its prefix, nothing else) and its password-less
    /// user (it authenticates by certificate only) holding that role. Idempotent.
    pub async fn ensure_tenant(&self, tenant: &TenantEtcdUser) -> Result<(), EtcdError> {
        let eps = &self.endpoints;
        let mut client = connect(eps, &self.root).await?;
        let op = format!("adding role {}", tenant.role);
        match request(eps, &op, client.role_add(tenant.role.as_str())).await? {
            Ok(_) => {}
            Err(e) if detail(&e).contains("role name already exists") => {}
            Err(e) => return Err(refused(eps, &op, &e)),
        }
        let op = format!(
            "granting role {} readwrite on {}",
            tenant.role, tenant.key_prefix
        );
        let permission = Permission::read_write(tenant.key_prefix.as_str()).with_prefix();
        request(
            eps,
            &op,
            client.role_grant_permission(tenant.role.as_str(), permission),
        )
        .await?
        .map_err(|e| refused(eps, &op, &e))?;
        let op = format!("adding user {}", tenant.user);
        let no_password = UserAddOptions::new().with_no_pwd();
        match request(
            eps,
            &op,
            client.user_add(tenant.user.as_str(), "", Some(no_password)),
        )
        .await?
        {
            Ok(_) => {}
            Err(e) if detail(&e).contains("user name already exists") => {}
            Err(e) => return Err(refused(eps, &op, &e)),
        }
        let op = format!("granting role {} to user {}", tenant.role, tenant.user);
        request(
            eps,
            &op,
            client.user_grant_role(tenant.user.as_str(), tenant.role.as_str()),
        )
        .await?
        .map_err(|e| refused(eps, &op, &e))?;
        Ok(())
    }

    /// Deletes the tenant's keys, then its user and role. Each step tolerates finding its work
    /// done, so a teardown interrupted half way resumes.
    pub async fn remove_tenant(&self, tenant: &TenantEtcdUser) -> Result<(), EtcdError> {
        let eps = &self.endpoints;
        let mut client = connect(eps, &self.root).await?;
        let op = format!("deleting keys under {}", tenant.key_prefix);
        let deleted = request(
            eps,
            &op,
            client.delete(
                tenant.key_prefix.as_str(),
                Some(DeleteOptions::new().with_prefix()),
            ),
        )
        .await?
        .map_err(|e| refused(eps, &op, &e))?;
        let op = format!("deleting user {}", tenant.user);
        match request(eps, &op, client.user_delete(tenant.user.as_str())).await? {
            Ok(_) => {}
            Err(e) if detail(&e).contains("user name not found") => {}
            Err(e) => return Err(refused(eps, &op, &e)),
        }
        let op = format!("deleting role {}", tenant.role);
        match request(eps, &op, client.role_delete(tenant.role.as_str())).await? {
            Ok(_) => {}
            Err(e) if detail(&e).contains("role name not found") => {}
            Err(e) => return Err(refused(eps, &op, &e)),
        }
        info!(prefix = %tenant.key_prefix, keys = deleted.deleted(), user = %tenant.user, "removed tenant from the shared etcd");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_come_from_the_uid_and_prefixes_end_in_a_slash() {
        assert_eq!(
            TenantEtcdUser::for_uid("0F8E2A7C-1111-2222-3333-444455556666"),
            TenantEtcdUser {
                user: "hp-0f8e2a7c111122223333444455556666".into(),
                role: "hp-0f8e2a7c111122223333444455556666".into(),
                apiserver_prefix: "/hostplane/0f8e2a7c111122223333444455556666".into(),
                key_prefix: "/hostplane/0f8e2a7c111122223333444455556666/".into(),
            }
        );
    }

    #[test]
    fn endpoints_are_https_urls() {
        assert_eq!(
            parse_endpoints(" https://10.0.0.1:2379, https://10.0.0.2:2379 ,").unwrap(),
            ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        );
        for bad in [
            "",
            " , ",
            "http://10.0.0.1:2379",
            "https://a:1,10.0.0.2:2379",
        ] {
            assert!(
                matches!(parse_endpoints(bad), Err(EtcdError::BadEndpoints(_))),
                "{bad:?}"
            );
        }
    }
}
