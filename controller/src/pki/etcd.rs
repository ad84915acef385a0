//! The etcd part of a tenant PKI, under Secret-safe names that the processes runtime lays out as
//! kubeadm does (`etcd-ca.crt` → `pki/etcd/ca.crt`, `apiserver-etcd-client.crt` beside the rest).
//!
//! A dedicated etcd has a CA of its own, never the cluster CA: a certificate the cluster CA signs
//! (kubelets, the controller-manager) must not open the tenant's etcd. Only the tenant API server
//! gets an etcd client certificate. A tenant on the shared etcd gets a client certificate from
//! the shared etcd's client CA naming its etcd user, which confines it to its key prefix.

use std::time::{Duration, SystemTime};

use super::{
    Ca, Identity, PkiError, PkiFiles, PkiRequest, Usage, ensure_ca, leaf_is_current, load_ca,
    new_key, sign_leaf, with_cert,
};

/// The names a dedicated etcd serves and peers under: it listens on loopback only.
const LOOPBACK_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The API server's etcd client certificate (kubeadm's name).
pub const API_SERVER_ETCD_CLIENT: &str = "apiserver-etcd-client";

/// One leaf of a dedicated etcd.
struct EtcdLeaf {
    stem: &'static str,
    identity: Identity<'static>,
    loopback_names: bool,
}

const DEDICATED_LEAVES: [EtcdLeaf; 3] = [
    EtcdLeaf {
        stem: "etcd-server",
        identity: Identity {
            common_name: "kube-etcd",
            organizations: &[],
            usage: Usage::Server,
        },
        loopback_names: true,
    },
    EtcdLeaf {
        stem: "etcd-peer",
        identity: Identity {
            common_name: "kube-etcd-peer",
            organizations: &[],
            usage: Usage::Peer,
        },
        loopback_names: true,
    },
    EtcdLeaf {
        stem: API_SERVER_ETCD_CLIENT,
        identity: Identity {
            common_name: "kube-apiserver-etcd-client",
            organizations: &[],
            usage: Usage::Client,
        },
        loopback_names: false,
    },
];

/// Keeps the existing pair when it is current (signed by `ca`, not due, carrying exactly
/// `names`, naming `identity`), else issues a new one.
fn ensure_leaf(
    existing: &PkiFiles,
    ca: &Ca,
    stem: &str,
    identity: &Identity<'_>,
    names: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<(String, String), PkiError> {
    let (crt_file, key_file) = (format!("{stem}.crt"), format!("{stem}.key"));
    if let (Some(crt), Some(key)) = (existing.get(&crt_file), existing.get(&key_file)) {
        let names_subject = with_cert(&crt_file, crt, |c| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                == Some(identity.common_name)
        })
        .unwrap_or(false);
        if names_subject && leaf_is_current(crt, key, ca, Some(names), now) {
            return Ok((crt.clone(), key.clone()));
        }
    }
    let key = new_key()?;
    let crt = sign_leaf(&crt_file, ca, &key, identity, names, validity, now)?;
    Ok((crt, key.serialize_pem()))
}

/// The files of a dedicated etcd: its CA (`etcd-ca.*`, created once, never replaced), serving
/// and peer certificates for 127.0.0.1/localhost (`etcd-server.*`, `etcd-peer.*`) and the API
/// server's client certificate (`apiserver-etcd-client.*`). Leaves are renewed like the rest of
/// the tenant PKI: when missing, broken, from another CA or a third of their life from expiry.
pub fn ensure_dedicated_etcd_pki(
    existing: &PkiFiles,
    req: &PkiRequest,
    now: SystemTime,
) -> Result<PkiFiles, PkiError> {
    ensure_dedicated_etcd_pki_with_names(existing, req, &[], now)
}

/// `ensure_dedicated_etcd_pki` for an etcd reached under further names too: the serving and peer
/// certificates also carry `extra_names` (the pods runtime's StatefulSet and headless Service).
pub fn ensure_dedicated_etcd_pki_with_names(
    existing: &PkiFiles,
    req: &PkiRequest,
    extra_names: &[String],
    now: SystemTime,
) -> Result<PkiFiles, PkiError> {
    let ca = ensure_ca(
        existing,
        "etcd-ca",
        &format!("hostplane-{}-etcd-ca", req.cluster_name),
        req.ca_validity,
        now,
    )?;
    let mut out = PkiFiles::from([
        ("etcd-ca.crt".to_string(), ca.crt.clone()),
        ("etcd-ca.key".to_string(), ca.key.clone()),
    ]);
    let loopback: Vec<String> = LOOPBACK_NAMES
        .map(String::from)
        .into_iter()
        .chain(extra_names.iter().cloned())
        .collect();
    for leaf in &DEDICATED_LEAVES {
        let names = if leaf.loopback_names {
            loopback.as_slice()
        } else {
            &[]
        };
        let (crt, key) = ensure_leaf(
            existing,
            &ca,
            leaf.stem,
            &leaf.identity,
            names,
            req.leaf_validity,
            now,
        )?;
        out.insert(format!("{}.crt", leaf.stem), crt);
        out.insert(format!("{}.key", leaf.stem), key);
    }
    Ok(out)
}

/// The shared etcd's CA this controller was configured with, as PEM.
#[derive(Clone, Debug)]
pub struct SharedEtcdCas<'a> {
    /// The CA that signed the shared etcd's serving certificate (what clients trust).
    pub server_ca_crt: &'a str,
    /// The CA the shared etcd trusts for client certificates (`--trusted-ca-file`) and its key.
    pub client_ca_crt: &'a str,
    pub client_ca_key: &'a str,
}

/// The files of a tenant on the shared etcd: the shared etcd's CA as `etcd-ca.crt` (no key:
/// not ours) and `apiserver-etcd-client.*`, whose common name is the tenant's etcd `user` (etcd
/// takes the user from the common name when clients authenticate by certificate).
pub fn ensure_shared_etcd_client(
    existing: &PkiFiles,
    cas: &SharedEtcdCas<'_>,
    user: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<PkiFiles, PkiError> {
    let ca = load_ca(
        "shared etcd client CA certificate",
        cas.client_ca_crt,
        "shared etcd client CA key",
        cas.client_ca_key,
    )?;
    let identity = Identity {
        common_name: user,
        organizations: &[],
        usage: Usage::Client,
    };
    let (crt, key) = ensure_leaf(
        existing,
        &ca,
        API_SERVER_ETCD_CLIENT,
        &identity,
        &[],
        validity,
        now,
    )?;
    Ok(PkiFiles::from([
        ("etcd-ca.crt".to_string(), cas.server_ca_crt.to_string()),
        (format!("{API_SERVER_ETCD_CLIENT}.crt"), crt),
        (format!("{API_SERVER_ETCD_CLIENT}.key"), key),
    ]))
}

#[cfg(test)]
mod tests {
    use super::super::ensure_pki;
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const NOW: i64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    fn request() -> PkiRequest {
        PkiRequest {
            cluster_name: "acme".into(),
            apiserver_sans: vec![],
            ca_validity: 3650 * DAY,
            leaf_validity: 365 * DAY,
        }
    }

    /// Subject, issuer, extended key usages, names and validity of a certificate.
    fn summary(pem: &str) -> (String, String, Vec<&'static str>, Vec<String>, i64, i64) {
        with_cert("test", pem, |c| {
            let ekus = c
                .extended_key_usage()
                .unwrap()
                .map(|e| {
                    [
                        (e.value.server_auth, "serverAuth"),
                        (e.value.client_auth, "clientAuth"),
                    ]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect()
                })
                .unwrap_or_default();
            (
                c.subject().to_string(),
                c.issuer().to_string(),
                ekus,
                super::super::cert_names(c),
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
            )
        })
        .unwrap()
    }

    fn verifies(crt: &str, ca: &str) -> bool {
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        with_cert("test", crt, |c| {
            c.verify_signature(Some(ca.public_key())).is_ok()
        })
        .unwrap()
    }

    #[test]
    fn a_dedicated_etcd_gets_its_own_ca_loopback_serving_and_peer_certs_and_one_client() {
        let cluster = ensure_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let etcd = ensure_dedicated_etcd_pki(&cluster, &request(), now()).unwrap();
        assert_eq!(
            etcd.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "apiserver-etcd-client.crt",
                "apiserver-etcd-client.key",
                "etcd-ca.crt",
                "etcd-ca.key",
                "etcd-peer.crt",
                "etcd-peer.key",
                "etcd-server.crt",
                "etcd-server.key",
            ]
        );
        let (start, leaf_end) = (NOW - 300, NOW + 365 * 86400);
        let ca = "CN=hostplane-acme-etcd-ca".to_string();
        let loopback = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        assert_eq!(
            summary(&etcd["etcd-ca.crt"]),
            (
                ca.clone(),
                ca.clone(),
                vec![],
                vec![],
                start,
                NOW + 3650 * 86400
            )
        );
        assert_eq!(
            summary(&etcd["etcd-server.crt"]),
            (
                "CN=kube-etcd".into(),
                ca.clone(),
                vec!["serverAuth"],
                loopback.clone(),
                start,
                leaf_end
            )
        );
        assert_eq!(
            summary(&etcd["etcd-peer.crt"]),
            (
                "CN=kube-etcd-peer".into(),
                ca.clone(),
                vec!["serverAuth", "clientAuth"],
                loopback,
                start,
                leaf_end
            )
        );
        assert_eq!(
            summary(&etcd["apiserver-etcd-client.crt"]),
            (
                "CN=kube-apiserver-etcd-client".into(),
                ca,
                vec!["clientAuth"],
                vec![],
                start,
                leaf_end
            )
        );
        for leaf in ["etcd-server", "etcd-peer", "apiserver-etcd-client"] {
            let crt = &etcd[&format!("{leaf}.crt")];
            assert!(verifies(crt, &etcd["etcd-ca.crt"]), "{leaf}");
            // The cluster CA signs what tenant users hold: it must never vouch for etcd access.
            assert!(!verifies(crt, &cluster["ca.crt"]), "{leaf}");
        }

        // Kept as it is until due; then leaves are renewed by the same CA.
        assert_eq!(
            ensure_dedicated_etcd_pki(&etcd, &request(), now() + 30 * DAY).unwrap(),
            etcd
        );
        let renewed = ensure_dedicated_etcd_pki(&etcd, &request(), now() + 300 * DAY).unwrap();
        assert_eq!(renewed["etcd-ca.crt"], etcd["etcd-ca.crt"]);
        assert_eq!(renewed["etcd-ca.key"], etcd["etcd-ca.key"]);
        for leaf in ["etcd-server", "etcd-peer", "apiserver-etcd-client"] {
            let crt = &renewed[&format!("{leaf}.crt")];
            assert_ne!(crt, &etcd[&format!("{leaf}.crt")], "{leaf}");
            assert!(verifies(crt, &etcd["etcd-ca.crt"]), "{leaf}");
        }

        // Extra names (the pods runtime's Service): serving and peer certificates are reissued
        // carrying them too, by the same CA; the client certificate is kept.
        let extra = vec![
            "acme-etcd".to_string(),
            "acme-etcd.acme-system.svc".to_string(),
        ];
        let named = ensure_dedicated_etcd_pki_with_names(&etcd, &request(), &extra, now()).unwrap();
        assert_eq!(named["etcd-ca.crt"], etcd["etcd-ca.crt"]);
        for leaf in ["etcd-server", "etcd-peer"] {
            let crt = &named[&format!("{leaf}.crt")];
            let mut names = summary(crt).3;
            names.sort();
            assert_eq!(
                names,
                [
                    "127.0.0.1",
                    "acme-etcd",
                    "acme-etcd.acme-system.svc",
                    "localhost"
                ],
                "{leaf}"
            );
            assert!(verifies(crt, &etcd["etcd-ca.crt"]), "{leaf}");
        }
        assert_eq!(
            named["apiserver-etcd-client.crt"],
            etcd["apiserver-etcd-client.crt"]
        );

        // A lost CA key is an error, never a new CA under the running etcd.
        let mut broken = etcd.clone();
        broken.remove("etcd-ca.key");
        assert!(matches!(
            ensure_dedicated_etcd_pki(&broken, &request(), now()),
            Err(PkiError::BadPem { name, .. }) if name == "etcd-ca.key"
        ));
    }

    #[test]
    fn a_shared_etcd_tenant_gets_a_client_cert_naming_its_user() {
        let shared = ensure_dedicated_etcd_pki(&PkiFiles::new(), &request(), now()).unwrap();
        let cas = SharedEtcdCas {
            server_ca_crt: "the server CA",
            client_ca_crt: &shared["etcd-ca.crt"],
            client_ca_key: &shared["etcd-ca.key"],
        };
        let files =
            ensure_shared_etcd_client(&PkiFiles::new(), &cas, "hp-0f8e", DAY, now()).unwrap();
        assert_eq!(
            files.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "apiserver-etcd-client.crt",
                "apiserver-etcd-client.key",
                "etcd-ca.crt"
            ]
        );
        assert_eq!(files["etcd-ca.crt"], "the server CA");
        assert_eq!(
            summary(&files["apiserver-etcd-client.crt"]),
            (
                "CN=hp-0f8e".into(),
                "CN=hostplane-acme-etcd-ca".into(),
                vec!["clientAuth"],
                vec![],
                NOW - 300,
                NOW + 86400
            )
        );
        assert!(verifies(
            &files["apiserver-etcd-client.crt"],
            &shared["etcd-ca.crt"]
        ));
        assert_eq!(
            ensure_shared_etcd_client(&files, &cas, "hp-0f8e", DAY, now()).unwrap(),
            files
        );
        // Another user name is another certificate.
        let other = ensure_shared_etcd_client(&files, &cas, "hp-1234", DAY, now()).unwrap();
        assert_eq!(summary(&other["apiserver-etcd-client.crt"]).0, "CN=hp-1234");
        let wrong_key = SharedEtcdCas {
            client_ca_key: &shared["etcd-server.key"],
            ..cas
        };
        assert!(matches!(
            ensure_shared_etcd_client(&PkiFiles::new(), &wrong_key, "hp-0f8e", DAY, now()),
            Err(PkiError::BadPem { .. })
        ));
    }
}
