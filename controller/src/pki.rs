//! Tenant PKI: pure functions from a request (and what already exists) to PEM files named as
//! kubeadm names them. No I/O; the caller stores the files in `<cp>-system/k8s-certs`.
//!
//! CAs and the service-account key are created once and never replaced: a regenerated CA
//! would break every client and kubelet, a regenerated service-account key every token. Leaves
//! are re-issued when missing, broken, signed by another CA, due for renewal (a third of their
//! life left) or, for the serving certificate, when the names it must carry change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

mod etcd;
pub mod expiry;
pub mod rotation;
pub use etcd::{
    API_SERVER_ETCD_CLIENT, SharedEtcdCas, ensure_dedicated_etcd_pki,
    ensure_dedicated_etcd_pki_with_names, ensure_shared_etcd_client,
};

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

/// Clock skew tolerated between the controller and the clients that check certificates.
const BACKDATE: Duration = Duration::from_secs(300);

/// The validity dates X.509 (and rcgen, which panics past them) can express: years 0000 to
/// 9999. `LATEST` is also RFC 5280's "no well-defined expiration date".
const EARLIEST: i128 = -62_167_219_200; // 0000-01-01T00:00:00Z
const LATEST: i128 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// The names every apiserver serving certificate carries (what in-cluster clients and local
/// tools dial), before the request's own.
const DEFAULT_APISERVER_SANS: [&str; 7] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
    "127.0.0.1",
    "10.96.0.1",
];

#[derive(Clone, Copy, PartialEq)]
enum Usage {
    Server,
    Client,
    /// etcd peers dial each other with the certificate they serve with.
    Peer,
}

/// Who a leaf certificate names and what it may be used for.
struct Identity<'a> {
    common_name: &'a str,
    /// Kubernetes groups. At most one: rcgen keeps one value per distinguished-name attribute.
    organizations: &'a [&'a str],
    usage: Usage,
}

#[derive(Clone, Copy)]
enum CaRole {
    Cluster,
    FrontProxy,
}

/// One leaf certificate of the set.
struct Leaf {
    /// File stem: `apiserver` → `apiserver.crt` + `apiserver.key`.
    stem: &'static str,
    ca: CaRole,
    identity: Identity<'static>,
}

const LEAVES: [Leaf; 6] = [
    Leaf {
        stem: "apiserver",
        ca: CaRole::Cluster,
        identity: Identity {
            common_name: "kube-apiserver",
            organizations: &[],
            usage: Usage::Server,
        },
    },
    Leaf {
        stem: "apiserver-kubelet-client",
        ca: CaRole::Cluster,
        identity: Identity {
            common_name: "kube-apiserver-kubelet-client",
            organizations: &["kubeadm:cluster-admins"],
            usage: Usage::Client,
        },
    },
    Leaf {
        stem: "controller-manager",
        ca: CaRole::Cluster,
        identity: Identity {
            common_name: "system:kube-controller-manager",
            organizations: &[],
            usage: Usage::Client,
        },
    },
    Leaf {
        stem: "scheduler",
        ca: CaRole::Cluster,
        identity: Identity {
            common_name: "system:kube-scheduler",
            organizations: &[],
            usage: Usage::Client,
        },
    },
    Leaf {
        stem: "admin",
        ca: CaRole::Cluster,
        identity: Identity {
            common_name: "hostplane-controller",
            organizations: &["system:masters"],
            usage: Usage::Client,
        },
    },
    Leaf {
        stem: "front-proxy-client",
        ca: CaRole::FrontProxy,
        identity: Identity {
            common_name: "front-proxy-client",
            organizations: &[],
            usage: Usage::Client,
        },
    },
];

/// A CA whose key matches its certificate, ready to sign.
struct Ca {
    crt: String,
    key: String,
    issuer: Issuer<'static, KeyPair>,
    /// Unix seconds; leaves end no later.
    not_after: i64,
    not_after_text: String,
}

fn bad_pem(name: &str, reason: impl ToString) -> PkiError {
    PkiError::BadPem {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

fn signing(name: &str, reason: impl ToString) -> PkiError {
    PkiError::Signing {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::KeyGeneration(e.to_string()))
}

fn parse_key(name: &str, pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| bad_pem(name, e))
}

/// Runs `f` on the parsed certificate (x509-parser borrows the DER, hence the closure).
fn with_cert<T>(
    name: &str,
    pem: &str,
    f: impl FnOnce(&X509Certificate<'_>) -> T,
) -> Result<T, PkiError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad_pem(name, e))?;
    let cert = pem.parse_x509().map_err(|e| bad_pem(name, e))?;
    Ok(f(&cert))
}

/// Whole seconds since the Unix epoch, negative before it. `SystemTime` arithmetic and
/// `OffsetDateTime::from(SystemTime)` panic at the extremes; integers do not.
fn unix_seconds(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::from(d.as_secs()),
        Err(e) => -i128::from(e.duration().as_secs()),
    }
}

/// notBefore and notAfter for a certificate issued at `now` for `lifetime`, backdated for
/// clock skew and ending no later than `limit` (the issuing CA's notAfter) or year 9999.
fn validity_window(
    file: &str,
    now: SystemTime,
    lifetime: Duration,
    limit: Option<(i64, &str)>,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = unix_seconds(now);
    // A fifth of the lifetime at most: a backdate longer than a short lifetime would make the
    // certificate due for renewal (a third of its validity left) from the moment it is issued.
    let not_before = now - i128::from(BACKDATE.min(lifetime / 5).as_secs());
    if not_before < EARLIEST || now > LATEST {
        return Err(signing(
            file,
            format!("the current time ({now} s after 1970) cannot be expressed in X.509"),
        ));
    }
    let mut not_after = (now + i128::from(lifetime.as_secs())).min(LATEST);
    if let Some((ca_end, ca_end_text)) = limit {
        if i128::from(ca_end) <= now {
            return Err(signing(
                file,
                format!("its CA expired at {ca_end_text}; a new CA must be rolled out by hand"),
            ));
        }
        not_after = not_after.min(i128::from(ca_end));
    }
    if not_after <= now {
        return Err(signing(file, "the requested validity is under one second"));
    }
    let date = |secs: i128| {
        i64::try_from(secs)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .ok_or_else(|| signing(file, format!("{secs} s after 1970 is out of range")))
    };
    Ok((date(not_before)?, date(not_after)?))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive ASN.1 integer
    SerialNumber::from_slice(&bytes)
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(file: &str, entry: &str) -> Result<SanType, PkiError> {
    match entry.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(entry.try_into().map_err(|e| {
            signing(file, format!("{entry:?} is not a valid DNS name: {e}"))
        })?)),
    }
}

/// The serving certificate's names: defaults first, then the request's, blanks dropped,
/// duplicates (same IP, or same DNS name in any case) dropped.
fn apiserver_names(req: &PkiRequest) -> Vec<String> {
    let mut seen = BTreeSet::new();
    DEFAULT_APISERVER_SANS
        .iter()
        .copied()
        .chain(req.apiserver_sans.iter().map(|s| s.trim()))
        .filter(|s| !s.is_empty() && seen.insert(normalize_name(s)))
        .map(String::from)
        .collect()
}

/// How a name is compared: IPs in canonical text form, DNS names case-insensitively.
fn normalize_name(s: &str) -> String {
    match s.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => s.to_ascii_lowercase(),
    }
}

/// The DNS and IP names a certificate carries, in its order, normalized.
fn cert_names(c: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Parses a CA pair and checks that the key belongs to the certificate.
fn load_ca(crt_file: &str, crt: &str, key_file: &str, key: &str) -> Result<Ca, PkiError> {
    let (public_key, not_after, not_after_text) = with_cert(crt_file, crt, |c| {
        (
            c.public_key().subject_public_key.data.to_vec(),
            c.validity().not_after.timestamp(),
            c.validity().not_after.to_string(),
        )
    })?;
    let key_pair = parse_key(key_file, key)?;
    if key_pair.public_key_raw() != public_key.as_slice() {
        return Err(bad_pem(key_file, format!("does not match {crt_file}")));
    }
    let issuer = Issuer::from_ca_cert_pem(crt, key_pair).map_err(|e| bad_pem(crt_file, e))?;
    Ok(Ca {
        crt: crt.to_string(),
        key: key.to_string(),
        issuer,
        not_after,
        not_after_text,
    })
}

/// Keeps a present CA (it must be whole), or creates one when neither half exists.
fn ensure_ca(
    existing: &PkiFiles,
    stem: &str,
    common_name: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Ca, PkiError> {
    let (crt_file, key_file) = (format!("{stem}.crt"), format!("{stem}.key"));
    match (existing.get(&crt_file), existing.get(&key_file)) {
        (Some(crt), Some(key)) => load_ca(&crt_file, crt, &key_file, key),
        (Some(_), None) => Err(bad_pem(
            &key_file,
            format!("missing while {crt_file} exists"),
        )),
        (None, Some(_)) => Err(bad_pem(
            &crt_file,
            format!("missing while {key_file} exists"),
        )),
        (None, None) => {
            let key = new_key()?;
            let mut p = CertificateParams::default();
            p.distinguished_name = name(common_name, &[]);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            (p.not_before, p.not_after) = validity_window(&crt_file, now, lifetime, None)?;
            p.serial_number = Some(random_serial());
            let crt = p.self_signed(&key).map_err(|e| signing(&crt_file, e))?;
            load_ca(&crt_file, &crt.pem(), &key_file, &key.serialize_pem())
        }
    }
}

/// Signs a leaf for `key` with the CA; it never outlives the CA.
fn sign_leaf(
    file: &str,
    ca: &Ca,
    key: &KeyPair,
    identity: &Identity<'_>,
    sans: &[String],
    lifetime: Duration,
    now: SystemTime,
) -> Result<String, PkiError> {
    if identity.organizations.len() > 1 {
        return Err(signing(
            file,
            "at most one organization (group) is supported",
        ));
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = name(identity.common_name, identity.organizations);
    p.is_ca = IsCa::ExplicitNoCa;
    // ECDSA keys only sign; keyEncipherment is for RSA key transport.
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = match identity.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Peer => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.subject_alt_names = sans
        .iter()
        .map(|s| san(file, s))
        .collect::<Result<_, _>>()?;
    (p.not_before, p.not_after) = validity_window(
        file,
        now,
        lifetime,
        Some((ca.not_after, &ca.not_after_text)),
    )?;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(key, &ca.issuer).map_err(|e| signing(file, e))?;
    Ok(cert.pem())
}

/// Whether an existing leaf can stay: it parses, matches its key, was issued and signed by
/// the current CA, is not due, and (when `sans` is given) carries exactly those names.
fn leaf_is_current(
    crt: &str,
    key: &str,
    ca: &Ca,
    sans: Option<&[String]>,
    now: SystemTime,
) -> bool {
    let Ok(key) = KeyPair::from_pem(key) else {
        return false;
    };
    let Ok((_, ca_pem)) = x509_parser::pem::parse_x509_pem(ca.crt.as_bytes()) else {
        return false;
    };
    let Ok(ca_cert) = ca_pem.parse_x509() else {
        return false;
    };
    let fits = with_cert("leaf", crt, |c| {
        let issued_by_ca = c.issuer().as_raw() == ca_cert.subject().as_raw()
            && c.verify_signature(Some(ca_cert.public_key())).is_ok();
        let key_matches = c.public_key().subject_public_key.data.as_ref() == key.public_key_raw();
        let names_match = sans.is_none_or(|wanted| {
            let wanted: BTreeSet<String> = wanted.iter().map(|s| normalize_name(s)).collect();
            cert_names(c).into_iter().collect::<BTreeSet<_>>() == wanted
        });
        issued_by_ca && key_matches && names_match
    });
    fits.unwrap_or(false) && needs_renewal(crt, now).is_ok_and(|due| !due)
}

/// Returns the complete file set: everything in `existing` that is still good, plus what is
/// missing or due. CAs and the service-account key are never replaced when present; a CA or
/// service-account key that is present but unusable, or half missing, is an error.
pub fn ensure_pki(
    existing: &PkiFiles,
    req: &PkiRequest,
    now: SystemTime,
) -> Result<PkiFiles, PkiError> {
    let cluster_ca = ensure_ca(
        existing,
        "ca",
        &format!("hostplane-{}-ca", req.cluster_name),
        req.ca_validity,
        now,
    )?;
    let front_proxy_ca = ensure_ca(
        existing,
        "front-proxy-ca",
        &format!("hostplane-{}-front-proxy-ca", req.cluster_name),
        req.ca_validity,
        now,
    )?;
    let mut out = PkiFiles::new();
    for (stem, ca) in [("ca", &cluster_ca), ("front-proxy-ca", &front_proxy_ca)] {
        out.insert(format!("{stem}.crt"), ca.crt.clone());
        out.insert(format!("{stem}.key"), ca.key.clone());
    }

    // Service-account signing key: kept when present (tokens already issued stay valid);
    // sa.pub is always derived from it, so a lost or edited sa.pub heals. A lone sa.pub means
    // tokens were signed by a key we no longer have: a person must decide.
    let sa_key = match (existing.get("sa.key"), existing.get("sa.pub")) {
        (Some(pem), _) => pem.clone(),
        (None, Some(_)) => return Err(bad_pem("sa.key", "missing while sa.pub exists")),
        (None, None) => new_key()?.serialize_pem(),
    };
    let sa_pub = parse_key("sa.key", &sa_key)?.public_key_pem();
    out.insert("sa.key".into(), sa_key);
    out.insert("sa.pub".into(), sa_pub);

    let apiserver_sans = apiserver_names(req);
    for leaf in &LEAVES {
        let (crt_file, key_file) = (format!("{}.crt", leaf.stem), format!("{}.key", leaf.stem));
        let ca = match leaf.ca {
            CaRole::Cluster => &cluster_ca,
            CaRole::FrontProxy => &front_proxy_ca,
        };
        let sans = (leaf.identity.usage == Usage::Server).then_some(apiserver_sans.as_slice());
        let kept = match (existing.get(&crt_file), existing.get(&key_file)) {
            (Some(crt), Some(key)) if leaf_is_current(crt, key, ca, sans, now) => {
                Some((crt.clone(), key.clone()))
            }
            _ => None,
        };
        let (crt, key) = match kept {
            Some(pair) => pair,
            None => {
                let key = new_key()?;
                let crt = sign_leaf(
                    &crt_file,
                    ca,
                    &key,
                    &leaf.identity,
                    sans.unwrap_or_default(),
                    req.leaf_validity,
                    now,
                )?;
                (crt, key.serialize_pem())
            }
        };
        out.insert(crt_file, crt);
        out.insert(key_file, key);
    }
    Ok(out)
}

/// Issues a client certificate signed by the given CA (used for the controller's own admin
/// identity and by test harnesses). Returns (cert PEM, key PEM). At most one organization
/// (Kubernetes group): rcgen keeps one value per distinguished-name attribute.
pub fn issue_client_cert(
    ca_crt: &str,
    ca_key: &str,
    common_name: &str,
    organizations: &[&str],
    validity: Duration,
    now: SystemTime,
) -> Result<(String, String), PkiError> {
    let ca = load_ca("CA certificate", ca_crt, "CA key", ca_key)?;
    let key = new_key()?;
    let identity = Identity {
        common_name,
        organizations,
        usage: Usage::Client,
    };
    let crt = sign_leaf(common_name, &ca, &key, &identity, &[], validity, now)?;
    Ok((crt, key.serialize_pem()))
}

/// When the first leaf (non-CA) certificate of `files` is due for renewal (a third of its
/// validity left): the controller comes back then, so that short lifetimes never lapse.
pub fn next_renewal(files: &PkiFiles) -> Option<SystemTime> {
    files
        .iter()
        .filter(|(name, _)| name.ends_with(".crt"))
        .filter_map(|(name, pem)| {
            with_cert(name, pem, |c| {
                let (start, end) = (
                    c.validity().not_before.timestamp(),
                    c.validity().not_after.timestamp(),
                );
                (!c.is_ca()).then(|| end - (end - start) / 3)
            })
            .ok()
            .flatten()
        })
        .min()
        .and_then(|due| u64::try_from(due).ok())
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// notBefore and notAfter of a certificate, in seconds since the Unix epoch.
pub fn validity(cert_pem: &str) -> Result<(i128, i128), PkiError> {
    with_cert("certificate", cert_pem, |c| {
        (
            i128::from(c.validity().not_before.timestamp()),
            i128::from(c.validity().not_after.timestamp()),
        )
    })
}

/// Whole seconds from `now` until the certificate expires, negative once it has.
pub fn seconds_left(cert_pem: &str, now: SystemTime) -> Result<i128, PkiError> {
    let end = with_cert("certificate", cert_pem, |c| {
        i128::from(c.validity().not_after.timestamp())
    })?;
    Ok(end - unix_seconds(now))
}

/// True when a third of the certificate's lifetime or less remains at `now` (so also when it
/// has expired).
pub fn needs_renewal(cert_pem: &str, now: SystemTime) -> Result<bool, PkiError> {
    let (start, end) = with_cert("certificate", cert_pem, |c| {
        (
            i128::from(c.validity().not_before.timestamp()),
            i128::from(c.validity().not_after.timestamp()),
        )
    })?;
    let remaining = end - unix_seconds(now);
    Ok(remaining * 3 <= end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const NOW: i64 = 1_800_000_000;

    fn request() -> PkiRequest {
        PkiRequest {
            cluster_name: "acme".into(),
            // A duplicate default, a duplicate in another case and a blank are dropped.
            apiserver_sans: vec![
                "acme.example".into(),
                "10.0.0.7".into(),
                "fd00::7".into(),
                "localhost".into(),
                "ACME.Example".into(),
                " ".into(),
            ],
            ca_validity: 3650 * DAY,
            leaf_validity: 365 * DAY,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    fn fresh() -> PkiFiles {
        ensure_pki(&PkiFiles::new(), &request(), now()).unwrap()
    }

    /// What a client checking the certificate sees.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        subject: String,
        issuer: String,
        is_ca: bool,
        key_usage: String,
        ekus: Vec<&'static str>,
        /// "DNS:name" / "IP:address", in certificate order.
        sans: Vec<String>,
        not_before: i64,
        not_after: i64,
    }

    fn parse(pem: &str) -> Parsed {
        with_cert("test", pem, |c| {
            let ekus = c
                .extended_key_usage()
                .unwrap()
                .map(|e| {
                    let e = e.value;
                    [
                        (e.server_auth, "serverAuth"),
                        (e.client_auth, "clientAuth"),
                        (e.any || e.code_signing || !e.other.is_empty(), "other"),
                    ]
                    .into_iter()
                    .filter_map(|(set, name)| set.then_some(name))
                    .collect()
                })
                .unwrap_or_default();
            let sans = c
                .subject_alternative_name()
                .unwrap()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .map(|n| match n {
                            GeneralName::DNSName(d) => format!("DNS:{d}"),
                            GeneralName::IPAddress(b) if b.len() == 4 => {
                                format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()))
                            }
                            GeneralName::IPAddress(b) => {
                                format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()))
                            }
                            other => format!("other:{other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Parsed {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                is_ca: c.is_ca(),
                key_usage: c
                    .key_usage()
                    .unwrap()
                    .map(|k| k.value.to_string())
                    .unwrap_or_default(),
                ekus,
                sans,
                not_before: c.validity().not_before.timestamp(),
                not_after: c.validity().not_after.timestamp(),
            }
        })
        .unwrap()
    }

    fn verifies(leaf: &str, ca: &str) -> bool {
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        with_cert("leaf", leaf, |c| {
            c.verify_signature(Some(ca.public_key())).is_ok()
        })
        .unwrap()
    }

    fn is_p256_pkcs8(key: &str) -> bool {
        key.starts_with("-----BEGIN PRIVATE KEY-----\n")
            && KeyPair::from_pem(key).is_ok_and(|k| k.algorithm() == &PKCS_ECDSA_P256_SHA256)
    }

    /// The files whose contents differ (or exist in only one of the sets).
    fn changed(before: &PkiFiles, after: &PkiFiles) -> Vec<String> {
        let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        names
            .into_iter()
            .filter(|n| before.get(*n) != after.get(*n))
            .cloned()
            .collect()
    }

    fn leaf_files() -> Vec<String> {
        let mut files: Vec<String> = LEAVES
            .iter()
            .flat_map(|l| [format!("{}.crt", l.stem), format!("{}.key", l.stem)])
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_fresh_set_has_every_kubeadm_file_with_the_right_identities() {
        let pki = fresh();
        let files: Vec<&str> = pki.keys().map(String::as_str).collect();
        assert_eq!(
            files,
            [
                "admin.crt",
                "admin.key",
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
            ]
        );

        let skewed = NOW - 300;
        for (stem, cn) in [
            ("ca", "CN=hostplane-acme-ca"),
            ("front-proxy-ca", "CN=hostplane-acme-front-proxy-ca"),
        ] {
            assert_eq!(
                parse(&pki[&format!("{stem}.crt")]),
                Parsed {
                    subject: cn.into(),
                    issuer: cn.into(),
                    is_ca: true,
                    key_usage: "Key Cert Sign, CRL Sign".into(),
                    ekus: vec![],
                    sans: vec![],
                    not_before: skewed,
                    not_after: NOW + 3650 * 86400,
                },
                "{stem}"
            );
            assert!(verifies(
                &pki[&format!("{stem}.crt")],
                &pki[&format!("{stem}.crt")]
            ));
        }

        let serving_names = [
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:localhost",
            "IP:127.0.0.1",
            "IP:10.96.0.1",
            "DNS:acme.example",
            "IP:10.0.0.7",
            "IP:fd00::7",
        ];
        let expect = [
            ("apiserver", "ca", "CN=kube-apiserver", "serverAuth"),
            (
                "apiserver-kubelet-client",
                "ca",
                "O=kubeadm:cluster-admins, CN=kube-apiserver-kubelet-client",
                "clientAuth",
            ),
            (
                "controller-manager",
                "ca",
                "CN=system:kube-controller-manager",
                "clientAuth",
            ),
            ("scheduler", "ca", "CN=system:kube-scheduler", "clientAuth"),
            (
                "admin",
                "ca",
                "O=system:masters, CN=hostplane-controller",
                "clientAuth",
            ),
            (
                "front-proxy-client",
                "front-proxy-ca",
                "CN=front-proxy-client",
                "clientAuth",
            ),
        ];
        for (stem, ca_stem, subject, eku) in expect {
            let crt = &pki[&format!("{stem}.crt")];
            let ca = &pki[&format!("{ca_stem}.crt")];
            let other_ca = &pki[if ca_stem == "ca" {
                "front-proxy-ca.crt"
            } else {
                "ca.crt"
            }];
            let sans = if stem == "apiserver" {
                serving_names.iter().map(|s| s.to_string()).collect()
            } else {
                vec![]
            };
            assert_eq!(
                parse(crt),
                Parsed {
                    subject: subject.into(),
                    issuer: parse(ca).subject,
                    is_ca: false,
                    key_usage: "Digital Signature".into(),
                    ekus: vec![eku],
                    sans,
                    not_before: skewed,
                    not_after: NOW + 365 * 86400,
                },
                "{stem}"
            );
            assert!(verifies(crt, ca), "{stem} not signed by {ca_stem}");
            assert!(
                !verifies(crt, other_ca),
                "{stem} verifies with the other CA"
            );
        }

        for (file, pem) in &pki {
            if file.ends_with(".key") {
                assert!(is_p256_pkcs8(pem), "{file} is not a P-256 PKCS#8 key");
            }
        }
        assert!(pki["sa.pub"].starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(
            KeyPair::from_pem(&pki["sa.key"]).unwrap().public_key_pem(),
            pki["sa.pub"]
        );
    }

    #[test]
    fn a_complete_set_comes_back_unchanged() {
        let pki = fresh();
        assert_eq!(ensure_pki(&pki, &request(), now() + 30 * DAY).unwrap(), pki);
    }

    #[test]
    fn a_lost_or_broken_leaf_is_reissued_by_the_same_ca() {
        let pki = fresh();
        let mut damaged = pki.clone();
        damaged.remove("controller-manager.crt");
        damaged.insert("scheduler.key".into(), "garbage".into());
        damaged.insert("admin.crt".into(), "garbage".into());
        // A certificate with somebody else's key is as good as lost.
        damaged.insert(
            "front-proxy-client.key".into(),
            pki["apiserver.key"].clone(),
        );
        let repaired = ensure_pki(&damaged, &request(), now()).unwrap();
        assert_eq!(
            changed(&pki, &repaired),
            [
                "admin.crt",
                "admin.key",
                "controller-manager.crt",
                "controller-manager.key",
                "front-proxy-client.crt",
                "front-proxy-client.key",
                "scheduler.crt",
                "scheduler.key",
            ]
        );
        for stem in ["admin", "controller-manager", "scheduler"] {
            assert!(verifies(&repaired[&format!("{stem}.crt")], &pki["ca.crt"]));
        }
        assert!(verifies(
            &repaired["front-proxy-client.crt"],
            &pki["front-proxy-ca.crt"]
        ));
        assert_eq!(ensure_pki(&repaired, &request(), now()).unwrap(), repaired);
    }

    #[test]
    fn a_leaf_from_another_ca_is_reissued() {
        let pki = fresh();
        let stranger = fresh();
        let mut mixed = pki.clone();
        for f in ["apiserver.crt", "apiserver.key"] {
            mixed.insert(f.into(), stranger[f].clone());
        }
        // Signed by the cluster CA, but this one must come from the front-proxy CA.
        mixed.insert(
            "front-proxy-client.crt".into(),
            pki["scheduler.crt"].clone(),
        );
        mixed.insert(
            "front-proxy-client.key".into(),
            pki["scheduler.key"].clone(),
        );
        let fixed = ensure_pki(&mixed, &request(), now()).unwrap();
        assert_eq!(
            changed(&pki, &fixed),
            [
                "apiserver.crt",
                "apiserver.key",
                "front-proxy-client.crt",
                "front-proxy-client.key",
            ]
        );
        assert_ne!(fixed["apiserver.crt"], stranger["apiserver.crt"]);
        assert!(verifies(&fixed["apiserver.crt"], &pki["ca.crt"]));
        assert!(verifies(
            &fixed["front-proxy-client.crt"],
            &pki["front-proxy-ca.crt"]
        ));
    }

    #[test]
    fn leaves_are_renewed_when_a_third_of_their_life_remains_and_cas_stay() {
        let pki = fresh();
        // Lifetime: 365 days plus the 300 s backdate = 31_536_300 s; a third is 10_512_100 s.
        let due = now() + 365 * DAY - Duration::from_secs(10_512_100);
        let admin = &pki["admin.crt"];
        assert!(!needs_renewal(admin, due - Duration::from_secs(1)).unwrap());
        assert!(needs_renewal(admin, due).unwrap());
        assert!(needs_renewal(admin, now() + 400 * DAY).unwrap());
        assert!(!needs_renewal(&pki["ca.crt"], due).unwrap());

        assert_eq!(
            ensure_pki(&pki, &request(), due - Duration::from_secs(1)).unwrap(),
            pki
        );
        let renewed = ensure_pki(&pki, &request(), due).unwrap();
        assert_eq!(changed(&pki, &renewed), leaf_files());
        assert_eq!(
            parse(&renewed["admin.crt"]).not_before,
            unix_seconds(due) as i64 - 300
        );
        assert!(verifies(&renewed["apiserver.crt"], &pki["ca.crt"]));
    }

    #[test]
    fn changed_names_reissue_only_the_serving_certificate() {
        let pki = fresh();

        // The same names in another order and case are the same set.
        let mut same = request();
        same.apiserver_sans.reverse();
        same.apiserver_sans.push("KUBERNETES".into());
        assert_eq!(ensure_pki(&pki, &same, now()).unwrap(), pki);

        let mut req = request();
        req.apiserver_sans
            .extend(["acme.proxy.example".into(), "192.0.2.10".into()]);
        let next = ensure_pki(&pki, &req, now()).unwrap();
        assert_eq!(changed(&pki, &next), ["apiserver.crt", "apiserver.key"]);
        let sans = parse(&next["apiserver.crt"]).sans;
        assert_eq!(
            sans[sans.len() - 5..],
            [
                "DNS:acme.example",
                "IP:10.0.0.7",
                "IP:fd00::7",
                "DNS:acme.proxy.example",
                "IP:192.0.2.10"
            ]
        );
        assert!(verifies(&next["apiserver.crt"], &pki["ca.crt"]));
    }

    #[test]
    fn a_half_present_or_broken_ca_is_an_error_not_a_new_ca() {
        let pki = fresh();
        let bad_file = |files: &PkiFiles| match ensure_pki(files, &request(), now()) {
            Err(PkiError::BadPem { name, reason }) => format!("{name}: {reason}"),
            other => panic!("expected BadPem, got {other:?}"),
        };

        let mut broken = pki.clone();
        broken.insert("ca.key".into(), "not a key".into());
        assert!(bad_file(&broken).starts_with("ca.key: "));

        broken.remove("ca.key");
        assert_eq!(bad_file(&broken), "ca.key: missing while ca.crt exists");

        let mut broken = pki.clone();
        broken.remove("front-proxy-ca.crt");
        assert_eq!(
            bad_file(&broken),
            "front-proxy-ca.crt: missing while front-proxy-ca.key exists"
        );

        let mut broken = pki.clone();
        broken.insert("ca.crt".into(), "-----BEGIN CERTIFICATE-----\n".into());
        assert!(bad_file(&broken).starts_with("ca.crt: "));

        let mut swapped = pki.clone();
        swapped.insert("ca.key".into(), pki["front-proxy-ca.key"].clone());
        assert_eq!(bad_file(&swapped), "ca.key: does not match ca.crt");
    }

    #[test]
    fn the_service_account_key_is_kept_and_never_guessed() {
        let pki = fresh();
        let other = fresh();

        let mut adopted = pki.clone();
        adopted.insert("sa.key".into(), other["sa.key"].clone());
        adopted.remove("sa.pub");
        let out = ensure_pki(&adopted, &request(), now()).unwrap();
        assert_eq!(changed(&pki, &out), ["sa.key", "sa.pub"]);
        assert_eq!(
            (&out["sa.key"], &out["sa.pub"]),
            (&other["sa.key"], &other["sa.pub"])
        );

        let mut edited = pki.clone();
        edited.insert("sa.pub".into(), "stale".into());
        assert_eq!(ensure_pki(&edited, &request(), now()).unwrap(), pki);

        let mut lost = pki.clone();
        lost.remove("sa.key");
        assert!(matches!(
            ensure_pki(&lost, &request(), now()),
            Err(PkiError::BadPem { name, .. }) if name == "sa.key"
        ));
        lost.insert("sa.key".into(), "garbage".into());
        assert!(matches!(
            ensure_pki(&lost, &request(), now()),
            Err(PkiError::BadPem { name, .. }) if name == "sa.key"
        ));
    }

    #[test]
    fn leaves_never_outlive_their_ca() {
        let mut req = request();
        req.ca_validity = 100 * DAY;
        let pki = ensure_pki(&PkiFiles::new(), &req, now()).unwrap();
        let ca_end = parse(&pki["ca.crt"]).not_after;
        assert_eq!(ca_end, NOW + 100 * 86400);
        for leaf in LEAVES {
            assert_eq!(parse(&pki[&format!("{}.crt", leaf.stem)]).not_after, ca_end);
        }
        assert_eq!(ensure_pki(&pki, &req, now() + DAY).unwrap(), pki);
    }

    #[test]
    fn an_expired_ca_is_an_error_not_an_expired_leaf() {
        let pki = fresh();
        let err = ensure_pki(&pki, &request(), now() + 3651 * DAY).unwrap_err();
        assert!(
            matches!(&err, PkiError::Signing { reason, .. } if reason.contains("CA expired")),
            "{err}"
        );
    }

    #[test]
    fn extreme_times_and_bad_input_are_errors_or_caps_not_panics() {
        let forever = PkiRequest {
            ca_validity: Duration::MAX,
            leaf_validity: Duration::MAX,
            ..request()
        };
        let pki = ensure_pki(&PkiFiles::new(), &forever, now()).unwrap();
        assert_eq!(parse(&pki["ca.crt"]).not_after, 253_402_300_799);
        assert_eq!(parse(&pki["admin.crt"]).not_after, 253_402_300_799);

        let instant = PkiRequest {
            leaf_validity: Duration::ZERO,
            ..request()
        };
        assert!(matches!(
            ensure_pki(&PkiFiles::new(), &instant, now()),
            Err(PkiError::Signing { .. })
        ));

        let millennia = Duration::from_secs(10_000 * 366 * 86400);
        for when in [
            SystemTime::UNIX_EPOCH + millennia,
            SystemTime::UNIX_EPOCH - millennia,
        ] {
            assert!(matches!(
                ensure_pki(&PkiFiles::new(), &request(), when),
                Err(PkiError::Signing { .. })
            ));
        }

        let mut non_ascii = request();
        non_ascii.apiserver_sans.push("bücher.example".into());
        assert!(matches!(
            ensure_pki(&PkiFiles::new(), &non_ascii, now()),
            Err(PkiError::Signing { name, .. }) if name == "apiserver.crt"
        ));

        assert!(matches!(
            needs_renewal("garbage", now()),
            Err(PkiError::BadPem { .. })
        ));
        let mut junk = PkiFiles::new();
        for (i, f) in fresh().keys().enumerate() {
            junk.insert(f.clone(), "x".repeat(i));
        }
        assert!(ensure_pki(&junk, &request(), now()).is_err());
    }

    #[test]
    fn client_certificates_carry_name_and_group() {
        let pki = fresh();
        let (crt, key) = issue_client_cert(
            &pki["ca.crt"],
            &pki["ca.key"],
            "alice",
            &["team-a"],
            DAY,
            now(),
        )
        .unwrap();
        assert_eq!(
            parse(&crt),
            Parsed {
                subject: "O=team-a, CN=alice".into(),
                issuer: "CN=hostplane-acme-ca".into(),
                is_ca: false,
                key_usage: "Digital Signature".into(),
                ekus: vec!["clientAuth"],
                sans: vec![],
                not_before: NOW - 300,
                not_after: NOW + 86400,
            }
        );
        assert!(verifies(&crt, &pki["ca.crt"]));
        assert!(is_p256_pkcs8(&key));

        let (crt, _) =
            issue_client_cert(&pki["ca.crt"], &pki["ca.key"], "bob", &[], DAY, now()).unwrap();
        assert_eq!(parse(&crt).subject, "CN=bob");

        let issue = |ca_crt: &str, ca_key: &str, orgs: &[&str]| {
            issue_client_cert(ca_crt, ca_key, "carol", orgs, DAY, now())
        };
        assert!(matches!(
            issue(&pki["ca.crt"], &pki["ca.key"], &["a", "b"]),
            Err(PkiError::Signing { .. })
        ));
        assert!(matches!(
            issue("x", &pki["ca.key"], &[]),
            Err(PkiError::BadPem { .. })
        ));
        assert!(matches!(
            issue(&pki["ca.crt"], &pki["front-proxy-ca.key"], &[]),
            Err(PkiError::BadPem { .. })
        ));
    }
}

#[cfg(test)]
mod renewal_tests {
    use super::*;

    fn request(leaf_seconds: u64) -> PkiRequest {
        PkiRequest {
            cluster_name: "acme".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(3650 * 24 * 3600),
            leaf_validity: Duration::from_secs(leaf_seconds),
        }
    }

    #[test]
    fn short_leaves_are_renewed_with_a_third_of_their_life_left_not_at_once() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let pki = ensure_pki(&PkiFiles::new(), &request(90), issued).unwrap();
        // 90 s from issue, backdated by 18 s (a fifth): due with 36 s left, 54 s after issue.
        let due = issued + Duration::from_secs(54);
        assert_eq!(next_renewal(&pki), Some(due));
        let just_before = due - Duration::from_secs(1);
        assert_eq!(ensure_pki(&pki, &request(90), just_before).unwrap(), pki);
        let renewed = ensure_pki(&pki, &request(90), due).unwrap();
        let changed: Vec<&String> = renewed
            .keys()
            .filter(|k| renewed.get(*k) != pki.get(*k))
            .collect();
        assert_eq!(
            changed,
            [
                "admin.crt",
                "admin.key",
                "apiserver-kubelet-client.crt",
                "apiserver-kubelet-client.key",
                "apiserver.crt",
                "apiserver.key",
                "controller-manager.crt",
                "controller-manager.key",
                "front-proxy-client.crt",
                "front-proxy-client.key",
                "scheduler.crt",
                "scheduler.key",
            ]
        );
    }

    #[test]
    fn seconds_left_counts_down_to_not_after_and_below() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let pki = ensure_pki(&PkiFiles::new(), &request(90), issued).unwrap();
        let crt = &pki["controller-manager.crt"];
        assert_eq!(seconds_left(crt, issued).unwrap(), 90);
        assert_eq!(
            seconds_left(crt, issued + Duration::from_secs(100)).unwrap(),
            -10
        );
        assert!(seconds_left("garbage", issued).is_err());
    }

    #[test]
    fn a_year_long_leaf_keeps_the_five_minute_backdate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let pki = ensure_pki(&PkiFiles::new(), &request(365 * 24 * 3600), now).unwrap();
        let life = 365 * 24 * 3600 + 300;
        let due = 1_800_000_000 + 365 * 24 * 3600 - life / 3;
        assert_eq!(
            next_renewal(&pki),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(due))
        );
    }
}
