//! Cluster CA rotation, asked for by setting the annotation `tenancy.hostplane.io/rotate-ca` on
//! a ControlPlane to a new value. Pure: from the stored files, the annotation and what status
//! recorded, to the next file set and the record status should carry.
//!
//! Three stages, each lasting at least `overlap` (by default the tenant's token lifetime, so
//! that every kubeconfig handed out before a stage has expired when the next begins):
//! 1. `TrustingBoth`: a new CA (`ca-next.*`) is trusted beside the old one: the trust bundle
//!    `ca-bundle.crt` (old + new) is what the API server accepts client certificates from and
//!    what every kubeconfig carries. Leaves still come from the old CA (`ca.*`).
//! 2. `Switched`: the new CA becomes `ca.*`, the old one stays trusted as `ca-previous.crt`;
//!    every cluster leaf is re-issued from the new CA (`ensure_pki` sees leaves of another CA).
//! 3. `Completed`: the old CA is dropped from the bundle, which disappears: `ca.crt` alone is
//!    trusted again.
//!
//! The stage and its start live in the Secret (`ca-rotation`), beside the files it describes,
//! so a controller that crashes anywhere resumes; status mirrors it. The front-proxy and etcd
//! CAs are not rotated here.

use std::time::{Duration, SystemTime};

use super::{
    PkiError, PkiFiles, PkiRequest, bad_pem, ensure_ca, ensure_pki, load_ca, unix_seconds,
};

/// The ControlPlane annotation asking for a rotation: any value not handled before.
pub const ANNOTATION: &str = "tenancy.hostplane.io/rotate-ca";
/// The incoming CA during stage 1.
pub const NEXT_CRT: &str = "ca-next.crt";
pub const NEXT_KEY: &str = "ca-next.key";
/// The outgoing CA during stage 2 (certificate only: it signs nothing any more).
pub const PREVIOUS_CRT: &str = "ca-previous.crt";
/// Every cluster CA trusted during a rotation, the signing one first.
pub const BUNDLE: &str = "ca-bundle.crt";
/// The rotation's stage, start and request, while one is under way.
pub const STATE: &str = "ca-rotation";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    TrustingBoth,
    Switched,
    Completed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustingBoth => "TrustingBoth",
            Self::Switched => "Switched",
            Self::Completed => "Completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::TrustingBoth, Self::Switched, Self::Completed]
            .into_iter()
            .find(|stage| stage.as_str() == s)
    }
}

/// Where a rotation stands: what status says and (while under way) the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The annotation value it answers.
    pub requested: String,
    pub stage: Stage,
    /// Unix seconds when the stage began.
    pub since: i64,
}

impl Record {
    fn to_file(&self) -> String {
        format!(
            "stage={}\nsince={}\nrequested={}\n",
            self.stage.as_str(),
            self.since,
            self.requested
        )
    }

    fn from_file(text: &str) -> Result<Self, PkiError> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| bad_pem(STATE, format!("has no {name}")))
        };
        Ok(Self {
            stage: Stage::parse(field("stage")?)
                .filter(|s| *s != Stage::Completed)
                .ok_or_else(|| bad_pem(STATE, "names no stage under way"))?,
            since: field("since")?
                .parse()
                .map_err(|_| bad_pem(STATE, "has a since that is not a number"))?,
            requested: field("requested")?.to_string(),
        })
    }
}

/// What a pass knows besides the stored files.
pub struct Inputs<'a> {
    /// The annotation's value, if set.
    pub annotation: Option<&'a str>,
    /// What status recorded last (its `requested` is the last value handled).
    pub recorded: Option<&'a Record>,
    /// How long each stage lasts at least.
    pub overlap: Duration,
}

/// The next file set (what `ensure_pki` returns plus the rotation's files) and the record
/// status should carry (`None`: no rotation was ever asked for).
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub files: PkiFiles,
    pub record: Option<Record>,
}

/// `ensure_pki` with the rotation moved on as far as `now` allows.
pub fn ensure_pki_rotating(
    existing: &PkiFiles,
    req: &PkiRequest,
    input: &Inputs<'_>,
    now: SystemTime,
) -> Result<Outcome, PkiError> {
    let now_secs = i64::try_from(unix_seconds(now)).unwrap_or(i64::MAX);
    let overlap = i64::try_from(input.overlap.as_secs()).unwrap_or(i64::MAX);
    let due = |r: &Record| now_secs >= r.since.saturating_add(overlap);
    let mut files = existing.clone();
    let under_way = existing
        .get(STATE)
        .map(|s| Record::from_file(s))
        .transpose()?;
    let record = match under_way {
        Some(r) if r.stage == Stage::TrustingBoth && due(&r) => {
            let (Some(next_crt), Some(next_key), Some(old)) = (
                existing.get(NEXT_CRT),
                existing.get(NEXT_KEY),
                existing.get("ca.crt"),
            ) else {
                return Err(bad_pem(NEXT_CRT, "missing during a CA rotation"));
            };
            load_ca(NEXT_CRT, next_crt, NEXT_KEY, next_key)?;
            files.insert(PREVIOUS_CRT.into(), old.clone());
            files.insert("ca.crt".into(), next_crt.clone());
            files.insert("ca.key".into(), next_key.clone());
            Some(Record {
                stage: Stage::Switched,
                since: now_secs,
                ..r
            })
        }
        Some(r) if r.stage == Stage::Switched && due(&r) => Some(Record {
            stage: Stage::Completed,
            since: now_secs,
            ..r
        }),
        Some(r) => Some(r),
        None => {
            let handled = input.recorded.map(|r| r.requested.as_str());
            match input.annotation {
                Some(value) if Some(value) != handled => {
                    let stage = if existing.contains_key("ca.crt") {
                        let next = ensure_ca(
                            &PkiFiles::new(),
                            "ca",
                            &format!("hostplane-{}-ca-{now_secs}", req.cluster_name),
                            req.ca_validity,
                            now,
                        )?;
                        files.insert(NEXT_CRT.into(), next.crt);
                        files.insert(NEXT_KEY.into(), next.key);
                        Stage::TrustingBoth
                    } else {
                        // A tenant without a CA yet gets a new one anyway.
                        Stage::Completed
                    };
                    Some(Record {
                        requested: value.to_string(),
                        stage,
                        since: now_secs,
                    })
                }
                // A crash between the last stage's Secret and its status: complete the record.
                _ => input.recorded.map(|r| match r.stage {
                    Stage::Completed => r.clone(),
                    _ => Record {
                        stage: Stage::Completed,
                        since: now_secs,
                        ..r.clone()
                    },
                }),
            }
        }
    };

    let mut out = ensure_pki(&files, req, now)?;
    if let Some(r) = record.as_ref().filter(|r| r.stage != Stage::Completed) {
        let other = match r.stage {
            Stage::TrustingBoth => {
                let (Some(crt), Some(key)) = (files.get(NEXT_CRT), files.get(NEXT_KEY)) else {
                    return Err(bad_pem(NEXT_CRT, "missing during a CA rotation"));
                };
                load_ca(NEXT_CRT, crt, NEXT_KEY, key)?;
                out.insert(NEXT_CRT.into(), crt.clone());
                out.insert(NEXT_KEY.into(), key.clone());
                crt.clone()
            }
            _ => {
                let Some(crt) = files.get(PREVIOUS_CRT) else {
                    return Err(bad_pem(PREVIOUS_CRT, "missing during a CA rotation"));
                };
                super::with_cert(PREVIOUS_CRT, crt, |_| ())?;
                out.insert(PREVIOUS_CRT.into(), crt.clone());
                crt.clone()
            }
        };
        out.insert(BUNDLE.into(), bundle(&[&out["ca.crt"], &other]));
        out.insert(STATE.into(), r.to_file());
    }
    Ok(Outcome { files: out, record })
}

fn bundle(pems: &[&str]) -> String {
    pems.iter().map(|p| format!("{}\n", p.trim_end())).collect()
}

/// The cluster CA certificates clients must trust: the bundle during a rotation, else `ca.crt`.
pub fn trusted(files: &PkiFiles) -> Option<&str> {
    files
        .get(BUNDLE)
        .or_else(|| files.get("ca.crt"))
        .map(String::as_str)
}

/// When the rotation under way moves to its next stage, if one is under way.
pub fn next_stage_at(files: &PkiFiles, overlap: Duration) -> Option<SystemTime> {
    let r = Record::from_file(files.get(STATE)?).ok()?;
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(r.since).ok()?);
    since.checked_add(overlap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const OVERLAP: Duration = Duration::from_secs(600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn request() -> PkiRequest {
        PkiRequest {
            cluster_name: "acme".into(),
            apiserver_sans: vec!["acme.example".into()],
            ca_validity: Duration::from_secs(3650 * 24 * 3600),
            leaf_validity: Duration::from_secs(365 * 24 * 3600),
        }
    }

    fn step(
        files: &PkiFiles,
        annotation: Option<&str>,
        recorded: Option<&Record>,
        secs: u64,
    ) -> Outcome {
        let input = Inputs {
            annotation,
            recorded,
            overlap: OVERLAP,
        };
        ensure_pki_rotating(files, &request(), &input, at(secs)).unwrap()
    }

    fn verifies(crt: &str, ca: &str) -> bool {
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        let (_, c) = x509_parser::pem::parse_x509_pem(crt.as_bytes()).unwrap();
        c.parse_x509()
            .unwrap()
            .verify_signature(Some(ca.public_key()))
            .is_ok()
    }

    fn record(stage: Stage, since: u64) -> Record {
        Record {
            requested: "v1".into(),
            stage,
            since: since as i64,
        }
    }

    const CLUSTER_LEAVES: [&str; 5] = [
        "admin",
        "apiserver",
        "apiserver-kubelet-client",
        "controller-manager",
        "scheduler",
    ];

    #[test]
    fn a_rotation_trusts_both_then_switches_then_drops_the_old_ca() {
        let start = ensure_pki(&PkiFiles::new(), &request(), at(NOW)).unwrap();
        let old_ca = start["ca.crt"].clone();

        // No annotation, or one already handled: nothing happens.
        assert_eq!(
            step(&start, None, None, NOW),
            Outcome {
                files: start.clone(),
                record: None
            }
        );
        let done = record(Stage::Completed, NOW - 5);
        assert_eq!(
            step(&start, Some("v1"), Some(&done), NOW),
            Outcome {
                files: start.clone(),
                record: Some(done.clone())
            }
        );

        // Stage 1: a new CA beside the old, trusted by the bundle; nothing else changes.
        let one = step(&start, Some("v1"), None, NOW);
        let new_ca = one.files[NEXT_CRT].clone();
        let mut expected = start.clone();
        expected.insert(NEXT_CRT.into(), new_ca.clone());
        expected.insert(NEXT_KEY.into(), one.files[NEXT_KEY].clone());
        expected.insert(BUNDLE.into(), format!("{old_ca}{new_ca}"));
        expected.insert(
            STATE.into(),
            format!("stage=TrustingBoth\nsince={NOW}\nrequested=v1\n"),
        );
        assert_eq!(
            one,
            Outcome {
                files: expected,
                record: Some(record(Stage::TrustingBoth, NOW))
            }
        );
        assert_ne!(new_ca, old_ca);
        assert_eq!(trusted(&one.files), Some(one.files[BUNDLE].as_str()));
        load_ca(NEXT_CRT, &new_ca, NEXT_KEY, &one.files[NEXT_KEY]).unwrap();
        assert_eq!(next_stage_at(&one.files, OVERLAP), Some(at(NOW + 600)));

        // Until the overlap has passed it stays, even when status lags or a new value arrives.
        let stage1 = record(Stage::TrustingBoth, NOW);
        for (annotation, recorded) in [(Some("v1"), None), (Some("v2"), Some(&stage1))] {
            assert_eq!(
                step(&one.files, annotation, recorded, NOW + 599),
                Outcome {
                    files: one.files.clone(),
                    record: Some(stage1.clone())
                }
            );
        }

        // Stage 2: the new CA signs every cluster leaf; the old one is still trusted.
        let two = step(&one.files, Some("v1"), Some(&stage1), NOW + 600);
        assert_eq!(two.record, Some(record(Stage::Switched, NOW + 600)));
        let mut keys: Vec<&str> = two.files.keys().map(String::as_str).collect();
        keys.sort();
        let mut want: Vec<&str> = start
            .keys()
            .map(String::as_str)
            .chain([PREVIOUS_CRT, BUNDLE, STATE])
            .collect();
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(two.files["ca.crt"], new_ca);
        assert_eq!(two.files["ca.key"], one.files[NEXT_KEY]);
        assert_eq!(two.files[PREVIOUS_CRT], old_ca);
        assert_eq!(two.files[BUNDLE], format!("{new_ca}{old_ca}"));
        assert_eq!(
            two.files[STATE],
            format!("stage=Switched\nsince={}\nrequested=v1\n", NOW + 600)
        );
        for leaf in CLUSTER_LEAVES {
            let crt = &two.files[&format!("{leaf}.crt")];
            assert_ne!(crt, &start[&format!("{leaf}.crt")], "{leaf} kept");
            assert!(verifies(crt, &new_ca), "{leaf} not from the new CA");
        }
        for same in ["front-proxy-ca.crt", "front-proxy-client.crt", "sa.key"] {
            assert_eq!(two.files[same], start[same], "{same}");
        }
        assert_eq!(
            step(&two.files, Some("v1"), None, NOW + 1199).files,
            two.files
        );

        // Stage 3: the old CA is gone; the files are a plain set again, from the new CA.
        let stage2 = record(Stage::Switched, NOW + 600);
        let three = step(&two.files, Some("v1"), Some(&stage2), NOW + 1200);
        let mut expected = two.files.clone();
        for gone in [PREVIOUS_CRT, BUNDLE, STATE] {
            expected.remove(gone);
        }
        assert_eq!(
            three,
            Outcome {
                files: expected,
                record: Some(record(Stage::Completed, NOW + 1200))
            }
        );
        assert_eq!(trusted(&three.files), Some(new_ca.as_str()));
        assert_eq!(next_stage_at(&three.files, OVERLAP), None);

        // A controller that crashed before writing the last status completes the record; the
        // same annotation value does not start another rotation.
        let after = step(&three.files, Some("v1"), Some(&stage2), NOW + 1300);
        assert_eq!(after.files, three.files);
        assert_eq!(after.record, Some(record(Stage::Completed, NOW + 1300)));
        // A new value does.
        let again = step(&three.files, Some("v2"), after.record.as_ref(), NOW + 1400);
        assert_eq!(again.record.unwrap().stage, Stage::TrustingBoth);
        assert!(again.files.contains_key(NEXT_CRT));
    }

    #[test]
    fn a_kubeconfig_trusting_the_bundle_does_not_trust_exactly_one_ca() {
        use crate::build::kubeconfig::{
            Credential, handed_out, kubeconfig, to_yaml, trusts_exactly,
        };
        // 48 bytes: its base64 is a prefix of the bundle's.
        let (one, two) = ("A".repeat(47) + "\n", "B".repeat(47) + "\n");
        let both = format!("{one}{two}");
        let yaml = to_yaml(&handed_out("acme", "https://h:1", &both, "t", None));
        assert!(trusts_exactly(&yaml, &both));
        assert!(!trusts_exactly(&yaml, &one));
        assert!(!trusts_exactly(&yaml, &two));
        let cert = Credential::ClientCert {
            cert_pem: "c",
            key_pem: "k",
        };
        let yaml = to_yaml(&kubeconfig("acme", "https://h:1", &one, "u", &cert));
        assert!(trusts_exactly(&yaml, &one));
        assert!(!trusts_exactly("not yaml", &one));
    }

    #[test]
    fn a_tenant_without_a_ca_records_the_request_without_rotating() {
        let out = step(&PkiFiles::new(), Some("v1"), None, NOW);
        assert_eq!(out.record, Some(record(Stage::Completed, NOW)));
        assert_eq!(
            out.files,
            ensure_pki(&out.files, &request(), at(NOW)).unwrap()
        );
        assert!(!out.files.contains_key(BUNDLE));
    }

    #[test]
    fn broken_rotation_files_are_errors_not_a_silent_restart() {
        let start = ensure_pki(&PkiFiles::new(), &request(), at(NOW)).unwrap();
        let one = step(&start, Some("v1"), None, NOW).files;
        let input = Inputs {
            annotation: Some("v1"),
            recorded: None,
            overlap: OVERLAP,
        };
        let run = |files: &PkiFiles| ensure_pki_rotating(files, &request(), &input, at(NOW + 1));
        let mut lost = one.clone();
        lost.remove(NEXT_KEY);
        assert!(matches!(run(&lost), Err(PkiError::BadPem { name, .. }) if name == NEXT_CRT));
        let mut garbled = one.clone();
        garbled.insert(STATE.into(), "stage=Sideways\n".into());
        assert!(matches!(run(&garbled), Err(PkiError::BadPem { name, .. }) if name == STATE));
    }
}
