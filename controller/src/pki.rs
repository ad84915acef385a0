//! Tenant PKI: pure functions from a request (and what already exists) to PEM files named as
//! kubeadm names them. No I/O; the caller stores the files in `<cp>-system/k8s-certs`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// PEM files keyed by kubeadm file name (`ca.crt`, `ca.key`, `apiserver.crt`, ...).
pub type PkiFiles = BTreeMap<String, String>;

/// What a tenant's certificates must say.
#[derive(Clone, Debug, PartialEq)]
pub struct PkiRequest {
    /// Used in CA common names, e.g. "acme" → "hostplane-acme-ca".
    pub cluster_name: String,
    /// Extra names the apiserver serving cert carries: DNS names or IP literals (the endpoint host,
    /// the in-cluster Service DNS). `kubernetes*`, `localhost` and 127.0.0.1 are always added.
    pub apiserver_sans: Vec<String>,
    pub ca_validity: Duration,
    pub leaf_validity: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key pair: {0}")]
    KeyGeneration(String),
    #[error("signing {name}: {reason}")]
    Signing { name: String, reason: String },
    #[error("{name} is not a usable PEM certificate or key: {reason}")]
    BadPem { name: String, reason: String },
}

/// Returns the complete file set: everything in `existing` that is still good, plus what is
/// missing or due. CAs and the service-account key are never replaced when present.
pub fn ensure_pki(
    _existing: &PkiFiles,
    _req: &PkiRequest,
    _now: SystemTime,
) -> Result<PkiFiles, PkiError> {
    todo!("implemented by the PKI work")
}

/// Issues a client certificate signed by the given CA (used for the controller's own admin
/// identity and by test harnesses). Returns (cert PEM, key PEM).
pub fn issue_client_cert(
    _ca_crt: &str,
    _ca_key: &str,
    _common_name: &str,
    _organizations: &[&str],
    _validity: Duration,
    _now: SystemTime,
) -> Result<(String, String), PkiError> {
    todo!("implemented by the PKI work")
}

/// True when a third of the certificate's lifetime or less remains at `now`.
pub fn needs_renewal(_cert_pem: &str, _now: SystemTime) -> Result<bool, PkiError> {
    todo!("implemented by the PKI work")
}
