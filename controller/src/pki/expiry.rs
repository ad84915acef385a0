//! Warning before a tenant CA expires. Leaves are renewed by themselves; CAs are not: the
//! cluster CA is replaced only by an explicit rotation (`rotation`), and the front-proxy and
//! etcd CAs never are. A CA that expires takes every certificate it signed with it, so the
//! controller says so well before: when less than a fraction of the CA's life is left (by
//! default a tenth: a year of a ten-year CA, time enough to plan a rotation).
//! Pure: from the stored files and the time to the CAs to warn about.

use std::time::SystemTime;

use super::{PkiFiles, unix_seconds, validity};

/// The tenant CAs checked: the Secret key of the certificate, and what people call it.
pub const TENANT_CAS: [(&str, &str); 3] = [
    ("ca.crt", "cluster CA"),
    ("front-proxy-ca.crt", "front-proxy CA"),
    ("etcd-ca.crt", "etcd CA"),
];

/// The share of a CA's life left below which it is reported: a tenth.
pub const DEFAULT_WARN_FRACTION: f64 = 0.1;

/// A tenant CA close to (or past) its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringCa {
    /// `cluster CA`, `front-proxy CA` or `etcd CA`.
    pub ca: &'static str,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Whole seconds left at the time of the check, negative once expired.
    pub seconds_left: i128,
}

/// The tenant CAs of `files` with less than `warn_fraction` of their life left at `now`, in
/// `TENANT_CAS` order. A CA that is missing or unreadable is not reported here: `ensure_pki`
/// fails on it with its own error.
pub fn expiring_cas(files: &PkiFiles, warn_fraction: f64, now: SystemTime) -> Vec<ExpiringCa> {
    let now = unix_seconds(now);
    TENANT_CAS
        .into_iter()
        .filter_map(|(key, ca)| {
            let (start, end) = validity(files.get(key)?).ok()?;
            let life = (end - start).max(1) as f64;
            let left = end - now;
            ((left as f64) < life * warn_fraction).then(|| ExpiringCa {
                ca,
                not_after: i64::try_from(end)
                    .ok()
                    .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
                    .map_or_else(|| format!("{end} s after 1970"), |t| t.to_string()),
                seconds_left: left,
            })
        })
        .collect()
}

/// The message naming every CA of `expiring`, or `None` when there is none. It carries dates,
/// not durations, so that it changes only when the set of CAs or their dates do.
pub fn warning(expiring: &[ExpiringCa]) -> Option<String> {
    if expiring.is_empty() {
        return None;
    }
    let each: Vec<String> = expiring
        .iter()
        .map(|e| match e.seconds_left {
            left if left <= 0 => format!("the {} expired at {}", e.ca, e.not_after),
            _ => format!("the {} expires at {}", e.ca, e.not_after),
        })
        .collect();
    let rotate = match expiring.iter().any(|e| e.ca == "cluster CA") {
        true => {
            "; rotate the cluster CA with the annotation tenancy.hostplane.io/rotate-ca \
             (the front-proxy and etcd CAs are not rotated by hostplane)"
        }
        false => "; the front-proxy and etcd CAs are not rotated by hostplane",
    };
    Some(format!("{}{rotate}", each.join(", ")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{PkiRequest, ensure_dedicated_etcd_pki, ensure_pki};

    const YEAR: u64 = 365 * 24 * 3600;
    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A tenant's files with ten-year CAs issued at NOW (backdated by five minutes).
    fn files() -> PkiFiles {
        let req = PkiRequest {
            cluster_name: "acme".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(10 * YEAR),
            leaf_validity: Duration::from_secs(YEAR),
        };
        let mut files = ensure_pki(&PkiFiles::new(), &req, at(NOW)).unwrap();
        let etcd = ensure_dedicated_etcd_pki(&files, &req, at(NOW)).unwrap();
        files.extend(etcd);
        files
    }

    fn end() -> i128 {
        validity(&files()["ca.crt"]).unwrap().1
    }

    #[test]
    fn a_ca_is_reported_once_less_than_the_fraction_of_its_life_is_left() {
        let files = files();
        let (start, end) = validity(&files["ca.crt"]).unwrap();
        assert_eq!(end - start, i128::from(10 * YEAR + 300));
        // A tenth of ten years (and the five backdated minutes): one year and 30 s.
        let tenth = (end - start) / 10;
        let before = u64::try_from(end - tenth).unwrap();
        assert_eq!(
            expiring_cas(&files, DEFAULT_WARN_FRACTION, at(before)),
            Vec::<ExpiringCa>::new()
        );
        assert_eq!(
            expiring_cas(&files, DEFAULT_WARN_FRACTION, at(NOW)),
            Vec::<ExpiringCa>::new()
        );

        let inside = before + 1;
        let not_after = k8s_openapi::jiff::Timestamp::from_second(end as i64)
            .unwrap()
            .to_string();
        let expected: Vec<ExpiringCa> = ["cluster CA", "front-proxy CA", "etcd CA"]
            .into_iter()
            .map(|ca| ExpiringCa {
                ca,
                not_after: not_after.clone(),
                seconds_left: tenth - 1,
            })
            .collect();
        assert_eq!(
            expiring_cas(&files, DEFAULT_WARN_FRACTION, at(inside)),
            expected
        );
        // The fraction is the caller's: with a hundredth, a year before is no news yet.
        assert_eq!(
            expiring_cas(&files, 0.01, at(inside)),
            Vec::<ExpiringCa>::new()
        );
        assert_eq!(
            warning(&expected).unwrap(),
            format!(
                "the cluster CA expires at {not_after}, the front-proxy CA expires at \
                 {not_after}, the etcd CA expires at {not_after}; rotate the cluster CA with the \
                 annotation tenancy.hostplane.io/rotate-ca (the front-proxy and etcd CAs are not \
                 rotated by hostplane)"
            )
        );
    }

    #[test]
    fn the_warning_names_only_the_cas_concerned_and_changes_only_with_them() {
        let mut files = files();
        // A cluster CA fresh from a rotation: only the others are left to report.
        let later = u64::try_from(end()).unwrap() - YEAR / 2;
        let young = ensure_pki(
            &PkiFiles::new(),
            &PkiRequest {
                cluster_name: "acme".into(),
                apiserver_sans: vec![],
                ca_validity: Duration::from_secs(10 * YEAR),
                leaf_validity: Duration::from_secs(YEAR),
            },
            at(later),
        )
        .unwrap();
        files.insert("ca.crt".into(), young["ca.crt"].clone());
        let found = expiring_cas(&files, DEFAULT_WARN_FRACTION, at(later));
        let names: Vec<&str> = found.iter().map(|e| e.ca).collect();
        assert_eq!(names, ["front-proxy CA", "etcd CA"]);
        let text = warning(&found).unwrap();
        assert!(
            text.ends_with("; the front-proxy and etcd CAs are not rotated by hostplane"),
            "{text}"
        );
        // The same CAs an hour on: the same words (no Event again).
        assert_eq!(
            warning(&expiring_cas(
                &files,
                DEFAULT_WARN_FRACTION,
                at(later + 3600)
            )),
            Some(text)
        );
        // Past the end: said so.
        let past = u64::try_from(end()).unwrap() + 1;
        let gone = expiring_cas(&files, DEFAULT_WARN_FRACTION, at(past));
        assert!(
            warning(&gone)
                .unwrap()
                .starts_with("the front-proxy CA expired at "),
            "{gone:?}"
        );
        assert_eq!(warning(&[]), None);
    }

    #[test]
    fn missing_or_unreadable_cas_are_left_to_ensure_pki() {
        let mut files = files();
        files.remove("etcd-ca.crt");
        files.insert("front-proxy-ca.crt".into(), "not a PEM".into());
        let past = u64::try_from(end()).unwrap() + 1;
        let names: Vec<&str> = expiring_cas(&files, DEFAULT_WARN_FRACTION, at(past))
            .iter()
            .map(|e| e.ca)
            .collect();
        assert_eq!(names, ["cluster CA"]);
    }
}
