//! Tenant PKI: pure functions from a request (and what already exists) to PEM files named as
//! kubeadm names them. No I/O; the caller stores the files in `<cp>-system/k8s-certs`.
//!
//! CAs and the service-account key are created once and never replaced: a regenerated CA
//! would break every client and kubelet. Leaves are re-issued when missing, broken, signed by
//! another CA, due for renewal (a third of their life left) or, for the serving certificate,
//! when the names it must carry change.

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
}

/// One leaf certificate of the set.
struct Leaf {
    /// File stem: `apiserver` → `apiserver.crt` + `apiserver.key`.
    stem: &'static str,
    /// Stem of the CA that signs it.
    ca: &'static str,
    common_name: &'static str,
    organizations: &'static [&'static str],
    usage: Usage,
}

const LEAVES: [Leaf; 6] = [
    Leaf {
        stem: "apiserver",
        ca: "ca",
        common_name: "kube-apiserver",
        organizations: &[],
        usage: Usage::Server,
    },
    Leaf {
        stem: "apiserver-kubelet-client",
        ca: "ca",
        common_name: "kube-apiserver-kubelet-client",
        organizations: &["kubeadm:cluster-admins"],
        usage: Usage::Client,
    },
    Leaf {
        stem: "controller-manager",
        ca: "ca",
        common_name: "system:kube-controller-manager",
        organizations: &[],
        usage: Usage::Client,
    },
    Leaf {
        stem: "scheduler",
        ca: "ca",
        common_name: "system:kube-scheduler",
        organizations: &[],
        usage: Usage::Client,
    },
    Leaf {
        stem: "admin",
        ca: "ca",
        common_name: "hostplane-controller",
        organizations: &["system:masters"],
        usage: Usage::Client,
    },
    Leaf {
        stem: "front-proxy-client",
        ca: "front-proxy-ca",
        common_name: "front-proxy-client",
        organizations: &[],
        usage: Usage::Client,
    },
];

fn bad_pem(name: &str, reason: impl ToString) -> PkiError {
    PkiError::BadPem {
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

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
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

fn san(entry: &str) -> Result<SanType, PkiError> {
    match entry.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(entry.try_into().map_err(|e| {
            PkiError::Signing {
                name: "apiserver.crt".into(),
                reason: format!("{entry:?} is not a valid DNS name: {e}"),
            }
        })?)),
    }
}

/// The serving certificate's names, deduplicated, in a stable order.
fn apiserver_names(req: &PkiRequest) -> Vec<String> {
    let mut seen = BTreeSet::new();
    DEFAULT_APISERVER_SANS
        .iter()
        .map(|s| s.to_string())
        .chain(req.apiserver_sans.iter().cloned())
        .filter(|s| seen.insert(normalize_name(s)))
        .collect()
}

fn normalize_name(s: &str) -> String {
    match s.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => s.to_ascii_lowercase(),
    }
}

fn ca_params(common_name: &str, validity: Duration, now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(common_name, &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = to_offset(now - BACKDATE);
    p.not_after = to_offset(now + validity);
    p.serial_number = Some(random_serial());
    p
}

/// Signs a leaf for `key` with the CA; it never outlives the CA.
#[allow(clippy::too_many_arguments)]
fn sign_leaf(
    file: &str,
    ca_crt: &str,
    ca_key: &str,
    key: &KeyPair,
    common_name: &str,
    organizations: &[&str],
    usage: Usage,
    sans: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<String, PkiError> {
    let ca_not_after = with_cert("CA certificate", ca_crt, |c| {
        c.validity().not_after.timestamp()
    })?;
    let ca_key = parse_key("CA key", ca_key)?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_crt, ca_key).map_err(|e| bad_pem("CA certificate", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = name(common_name, organizations);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    p.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    p.not_before = to_offset(now - BACKDATE);
    let wanted = to_offset(now + validity);
    let ca_end = OffsetDateTime::from_unix_timestamp(ca_not_after).unwrap_or(wanted);
    p.not_after = wanted.min(ca_end);
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(key, &issuer).map_err(|e| PkiError::Signing {
        name: file.to_string(),
        reason: e.to_string(),
    })?;
    Ok(cert.pem())
}

/// Keeps a present CA (it must be whole), or creates one when absent.
fn ensure_ca(
    existing: &PkiFiles,
    stem: &str,
    common_name: &str,
    req: &PkiRequest,
    now: SystemTime,
    out: &mut PkiFiles,
) -> Result<(), PkiError> {
    let (crt_file, key_file) = (format!("{stem}.crt"), format!("{stem}.key"));
    if let Some(crt) = existing.get(&crt_file) {
        let cert_key = with_cert(&crt_file, crt, |c| {
            c.public_key().subject_public_key.data.to_vec()
        })?;
        let key_pem = existing
            .get(&key_file)
            .ok_or_else(|| bad_pem(&key_file, "missing while its certificate exists"))?;
        let key = parse_key(&key_file, key_pem)?;
        if key.public_key_raw() != cert_key.as_slice() {
            return Err(bad_pem(&key_file, format!("does not match {crt_file}")));
        }
        out.insert(crt_file, crt.clone());
        out.insert(key_file, key_pem.clone());
        return Ok(());
    }
    let key = new_key()?;
    let cert = ca_params(common_name, req.ca_validity, now)
        .self_signed(&key)
        .map_err(|e| PkiError::Signing {
            name: crt_file.clone(),
            reason: e.to_string(),
        })?;
    out.insert(crt_file, cert.pem());
    out.insert(key_file, key.serialize_pem());
    Ok(())
}

/// Whether an existing leaf can stay: it parses, matches its key, was signed by the current CA,
/// is not due, and (when `sans` is given) carries exactly those names.
fn leaf_is_current(
    crt: &str,
    key: &str,
    ca_crt: &str,
    sans: Option<&[String]>,
    now: SystemTime,
) -> bool {
    let Ok(key) = KeyPair::from_pem(key) else {
        return false;
    };
    let Ok(Some(ca_spki)) = with_cert("CA", ca_crt, |ca| Some(ca.public_key().raw.to_vec())) else {
        return false;
    };
    let Ok((_, ca_pem)) = x509_parser::pem::parse_x509_pem(ca_crt.as_bytes()) else {
        return false;
    };
    let Ok(ca) = ca_pem.parse_x509() else {
        return false;
    };
    debug_assert_eq!(ca.public_key().raw, ca_spki.as_slice());
    let checks = with_cert("leaf", crt, |c| {
        let signed_by_ca = c.verify_signature(Some(ca.public_key())).is_ok();
        let key_matches = c.public_key().subject_public_key.data.as_ref() == key.public_key_raw();
        let names_match = sans.is_none_or(|wanted| {
            let wanted: BTreeSet<String> = wanted.iter().map(|s| normalize_name(s)).collect();
            cert_names(c) == wanted
        });
        signed_by_ca && key_matches && names_match
    });
    checks.unwrap_or(false) && needs_renewal(crt, now).is_ok_and(|due| !due)
}

fn cert_names(c: &X509Certificate<'_>) -> BTreeSet<String> {
    let Ok(Some(ext)) = c.subject_alternative_name() else {
        return BTreeSet::new();
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

/// Returns the complete file set: everything in `existing` that is still good, plus what is
/// missing or due. CAs and the service-account key are never replaced when present.
pub fn ensure_pki(
    existing: &PkiFiles,
    req: &PkiRequest,
    now: SystemTime,
) -> Result<PkiFiles, PkiError> {
    let mut out = PkiFiles::new();
    ensure_ca(
        existing,
        "ca",
        &format!("hostplane-{}-ca", req.cluster_name),
        req,
        now,
        &mut out,
    )?;
    ensure_ca(
        existing,
        "front-proxy-ca",
        &format!("hostplane-{}-front-proxy-ca", req.cluster_name),
        req,
        now,
        &mut out,
    )?;

    // Service-account signing key: kept when present (tokens already issued stay valid);
    // sa.pub is always derived from it, so a lost or edited sa.pub heals.
    let sa_key = match existing.get("sa.key") {
        Some(pem) => {
            parse_key("sa.key", pem)?;
            pem.clone()
        }
        None => new_key()?.serialize_pem(),
    };
    out.insert(
        "sa.pub".into(),
        parse_key("sa.key", &sa_key)?.public_key_pem(),
    );
    out.insert("sa.key".into(), sa_key);

    let apiserver_sans = apiserver_names(req);
    for leaf in &LEAVES {
        let (crt_file, key_file) = (format!("{}.crt", leaf.stem), format!("{}.key", leaf.stem));
        let ca_crt = out[&format!("{}.crt", leaf.ca)].clone();
        let ca_key = out[&format!("{}.key", leaf.ca)].clone();
        let sans: &[String] = if leaf.usage == Usage::Server {
            &apiserver_sans
        } else {
            &[]
        };
        if let (Some(crt), Some(key)) = (existing.get(&crt_file), existing.get(&key_file))
            && leaf_is_current(
                crt,
                key,
                &ca_crt,
                (leaf.usage == Usage::Server).then_some(sans),
                now,
            )
        {
            out.insert(crt_file, crt.clone());
            out.insert(key_file, key.clone());
            continue;
        }
        let key = new_key()?;
        let crt = sign_leaf(
            &crt_file,
            &ca_crt,
            &ca_key,
            &key,
            leaf.common_name,
            leaf.organizations,
            leaf.usage,
            sans,
            req.leaf_validity,
            now,
        )?;
        out.insert(crt_file, crt);
        out.insert(key_file, key.serialize_pem());
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
    if organizations.len() > 1 {
        return Err(PkiError::Signing {
            name: common_name.into(),
            reason: "at most one organization (group) is supported".into(),
        });
    }
    let key = new_key()?;
    let crt = sign_leaf(
        common_name,
        ca_crt,
        ca_key,
        &key,
        common_name,
        organizations,
        Usage::Client,
        &[],
        validity,
        now,
    )?;
    Ok((crt, key.serialize_pem()))
}

/// True when a third of the certificate's lifetime or less remains at `now`.
pub fn needs_renewal(cert_pem: &str, now: SystemTime) -> Result<bool, PkiError> {
    let (start, end) = with_cert("certificate", cert_pem, |c| {
        (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        )
    })?;
    let now = to_offset(now).unix_timestamp();
    let remaining = end - now;
    Ok(remaining * 3 <= end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn request() -> PkiRequest {
        PkiRequest {
            cluster_name: "acme".into(),
            apiserver_sans: vec!["acme.example".into(), "10.0.0.7".into(), "localhost".into()],
            ca_validity: 3650 * DAY,
            leaf_validity: 365 * DAY,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    struct Parsed {
        subject: String,
        issuer: String,
        is_ca: bool,
        ekus: Vec<&'static str>,
        names: BTreeSet<String>,
        not_after: i64,
    }

    fn parse(pem: &str) -> Parsed {
        with_cert("t", pem, |c| {
            let ekus = c
                .extended_key_usage()
                .ok()
                .flatten()
                .map(|e| {
                    let mut v = vec![];
                    if e.value.server_auth {
                        v.push("serverAuth");
                    }
                    if e.value.client_auth {
                        v.push("clientAuth");
                    }
                    v
                })
                .unwrap_or_default();
            Parsed {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                is_ca: c.is_ca(),
                ekus,
                names: cert_names(c),
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

    #[test]
    fn a_fresh_set_has_every_kubeadm_file_with_the_right_identities() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
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
        let ca = parse(&pki["ca.crt"]);
        assert_eq!(
            (ca.subject.as_str(), ca.issuer.as_str(), ca.is_ca),
            ("CN=hostplane-acme-ca", "CN=hostplane-acme-ca", true)
        );
        let fp = parse(&pki["front-proxy-ca.crt"]);
        assert_eq!(
            (fp.subject.as_str(), fp.is_ca),
            ("CN=hostplane-acme-front-proxy-ca", true)
        );

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
            let leaf = parse(&pki[&format!("{stem}.crt")]);
            assert_eq!(
                (leaf.subject.as_str(), leaf.is_ca, leaf.ekus.clone()),
                (subject, false, vec![eku]),
                "{stem}"
            );
            assert!(
                verifies(
                    &pki[&format!("{stem}.crt")],
                    &pki[&format!("{ca_stem}.crt")]
                ),
                "{stem} not signed by {ca_stem}"
            );
            assert!(!verifies(
                &pki[&format!("{stem}.crt")],
                &pki[if ca_stem == "ca" {
                    "front-proxy-ca.crt"
                } else {
                    "ca.crt"
                }]
            ));
        }
        let names: Vec<&str> = vec![
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "127.0.0.1",
            "10.96.0.1",
            "acme.example",
            "10.0.0.7",
        ];
        assert_eq!(
            parse(&pki["apiserver.crt"]).names,
            names.into_iter().map(String::from).collect()
        );
        assert!(pki["sa.pub"].starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            KeyPair::from_pem(&pki["sa.key"]).unwrap().public_key_pem(),
            pki["sa.pub"]
        );
    }

    #[test]
    fn a_complete_set_comes_back_unchanged() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        assert_eq!(ensure_pki(&pki, &request(), now() + 30 * DAY).unwrap(), pki);
    }

    #[test]
    fn a_lost_leaf_is_reissued_by_the_same_ca() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let mut damaged = pki.clone();
        damaged.remove("controller-manager.crt");
        damaged.insert("scheduler.key".into(), "garbage".into());
        let repaired = ensure_pki(&damaged, &request(), now()).unwrap();
        assert_eq!(repaired["ca.crt"], pki["ca.crt"]);
        assert_eq!(repaired["apiserver.crt"], pki["apiserver.crt"]);
        assert_ne!(
            repaired["controller-manager.crt"],
            pki["controller-manager.crt"]
        );
        assert_ne!(repaired["scheduler.crt"], pki["scheduler.crt"]);
        assert!(verifies(
            &repaired["controller-manager.crt"],
            &pki["ca.crt"]
        ));
    }

    #[test]
    fn leaves_are_renewed_when_a_third_of_their_life_remains_and_cas_stay() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let at_two_thirds = now() + 244 * DAY;
        assert!(needs_renewal(&pki["admin.crt"], at_two_thirds).unwrap());
        assert!(!needs_renewal(&pki["admin.crt"], now() + 240 * DAY).unwrap());
        let renewed = ensure_pki(&pki, &request(), at_two_thirds).unwrap();
        for f in ["ca.crt", "ca.key", "front-proxy-ca.crt", "sa.key", "sa.pub"] {
            assert_eq!(renewed[f], pki[f], "{f} changed");
        }
        for f in ["admin.crt", "apiserver.crt", "front-proxy-client.crt"] {
            assert_ne!(renewed[f], pki[f], "{f} was not renewed");
        }
    }

    #[test]
    fn changed_names_reissue_only_the_serving_certificate() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let mut req = request();
        req.apiserver_sans.push("acme.proxy.example".into());
        let next = ensure_pki(&pki, &req, now()).unwrap();
        let changed: Vec<&str> = pki
            .keys()
            .filter(|k| pki[*k] != next[*k])
            .map(String::as_str)
            .collect();
        assert_eq!(changed, ["apiserver.crt", "apiserver.key"]);
        assert!(
            parse(&next["apiserver.crt"])
                .names
                .contains("acme.proxy.example")
        );
    }

    #[test]
    fn a_ca_without_its_key_is_an_error_not_a_new_ca() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let mut broken = pki.clone();
        broken.insert("ca.key".into(), "not a key".into());
        let err = ensure_pki(&broken, &request(), now()).unwrap_err();
        assert!(
            matches!(&err, PkiError::BadPem { name, .. } if name == "ca.key"),
            "{err}"
        );
        broken.remove("ca.key");
        assert!(
            ensure_pki(&broken, &request(), now())
                .unwrap_err()
                .to_string()
                .starts_with("ca.key is not a usable PEM")
        );
        let mut swapped = pki.clone();
        swapped.insert("ca.key".into(), pki["front-proxy-ca.key"].clone());
        assert!(
            ensure_pki(&swapped, &request(), now())
                .unwrap_err()
                .to_string()
                .contains("does not match ca.crt")
        );
    }

    #[test]
    fn leaves_never_outlive_their_ca() {
        let mut req = request();
        req.ca_validity = 100 * DAY;
        let pki = ensure_pki(&PkiFiles::new(), &req, now()).unwrap();
        assert_eq!(
            parse(&pki["apiserver.crt"]).not_after,
            parse(&pki["ca.crt"]).not_after
        );
    }

    #[test]
    fn client_certificates_carry_name_and_groups() {
        let pki = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let (crt, key) = issue_client_cert(
            &pki["ca.crt"],
            &pki["ca.key"],
            "alice",
            &["team-a"],
            DAY,
            now(),
        )
        .unwrap();
        let p = parse(&crt);
        assert_eq!(
            (p.subject.as_str(), p.ekus),
            ("O=team-a, CN=alice", vec!["clientAuth"])
        );
        assert!(
            issue_client_cert(
                &pki["ca.crt"],
                &pki["ca.key"],
                "bob",
                &["a", "b"],
                DAY,
                now()
            )
            .is_err()
        );
        assert!(verifies(&crt, &pki["ca.crt"]));
        assert!(KeyPair::from_pem(&key).is_ok());
        assert!(issue_client_cert("x", &pki["ca.key"], "a", &[], DAY, now()).is_err());
    }
}
