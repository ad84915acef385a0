//! Step 2: turn a ControlPlane's raw spec into a validated plan, once, with defaults applied.
//! Everything after this step works on `TenantPlan` and never re-reads the spec.

use hostplane_crds::{BackendType, ControlPlane, ControlPlaneType};
use kube::ResourceExt;

use crate::limits::TenantLimits;
use crate::upstream::{ReleaseBinaries, UpstreamCatalog};

/// A ControlPlane the controller knows how to build.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantPlan {
    pub name: String,
    pub uid: String,
    /// `<name>-system` on the host: the tenant's Secrets and (pods runtime) workloads.
    pub namespace: String,
    pub backend: BackendType,
    /// backend external: the user's Secret, with key `dsn` (a Postgres URL for Kine) or
    /// `endpoints` plus `ca.crt`, `tls.crt`, `tls.key` (an etcd).
    pub external_datastore: Option<SecretRef>,
    pub release: ReleaseBinaries,
    /// Lifetime of handed-out tokens.
    pub token_ttl_seconds: i64,
    /// `spec.limits` over the controller's defaults.
    pub limits: TenantLimits,
}

impl TenantPlan {
    /// Name of the tenant's Postgres database and login role: derived from the UID, so that a
    /// ControlPlane deleted and created again under the same name never reuses old data, and
    /// teardown finds it without reading status.
    pub fn database_name(&self) -> String {
        database_name_for_uid(&self.uid)
    }

    /// A short, stable, filesystem-safe key for state directories.
    pub fn key(&self) -> String {
        tenant_key(&self.name, &self.uid)
    }
}

pub fn database_name_for_uid(uid: &str) -> String {
    format!("hp_{}", uid.replace('-', "").to_ascii_lowercase())
}

pub fn tenant_key(name: &str, uid: &str) -> String {
    format!("{name}-{}", uid.split('-').next().unwrap_or(uid))
}

pub fn system_namespace(name: &str) -> String {
    format!("{name}-system")
}

/// A Secret the user names.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretRef {
    pub name: String,
    pub namespace: String,
}

/// Why a spec cannot be built. Each variant is a condition reason users can grep for.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidateError {
    #[error("type {0} is not supported yet; supported types: k8s, host, external")]
    UnsupportedType(&'static str),
    #[error(
        "backend {0} needs what this spec lacks; supported backends: shared, dedicated, external (with datastoreSecretRef)"
    )]
    UnsupportedBackend(&'static str),
    #[error("Kubernetes version {requested} is not available on this host; available: {}", available.join(", "))]
    UnknownVersion {
        requested: String,
        available: Vec<String>,
    },
    #[error(
        "version {requested} would downgrade the tenant from {running}: Kubernetes cannot downgrade its stored data; set version back to {}",
        minor_of(running)
    )]
    VersionDowngrade { running: String, requested: String },
    #[error(
        "version {requested} skips a minor: the tenant runs {running}; upgrade one minor at a time (next: {next})"
    )]
    VersionSkipsMinor {
        running: String,
        requested: String,
        next: String,
    },
    #[error("the ControlPlane has no name or uid yet")]
    Incomplete,
}

impl ValidateError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnsupportedType(_) => "UnsupportedType",
            Self::UnsupportedBackend(_) => "UnsupportedBackend",
            Self::UnknownVersion { .. } => "UnknownVersion",
            Self::VersionDowngrade { .. } => "VersionDowngrade",
            Self::VersionSkipsMinor { .. } => "VersionSkipsMinor",
            Self::Incomplete => "InvalidSpec",
        }
    }
}

/// `default_limits` fill what `spec.limits` leaves out.
pub fn validate(
    cp: &ControlPlane,
    catalog: &UpstreamCatalog,
    default_limits: &TenantLimits,
) -> Result<TenantPlan, ValidateError> {
    let name = cp.metadata.name.clone().ok_or(ValidateError::Incomplete)?;
    let uid = cp.uid().ok_or(ValidateError::Incomplete)?;
    let spec = &cp.spec;
    match spec.type_ {
        ControlPlaneType::K8s => {}
        other => return Err(ValidateError::UnsupportedType(other.as_str())),
    }
    let external_datastore = match (spec.backend, &spec.datastore_secret_ref) {
        (BackendType::Shared | BackendType::Dedicated, _) => None,
        (BackendType::External, Some(r)) => Some(SecretRef {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
        }),
        (other, _) => return Err(ValidateError::UnsupportedBackend(other.as_str())),
    };
    let release = catalog
        .release(spec.version.as_deref())
        .cloned()
        .ok_or_else(|| ValidateError::UnknownVersion {
            requested: spec.version.clone().unwrap_or_default(),
            available: catalog.minors(),
        })?;
    // The version the tenant runs (status.version moves once it runs the new binaries): an
    // upgrade goes one minor at a time, as Kubernetes supports, and never down.
    if let Some(running) = cp.status.as_ref().and_then(|s| s.version.as_deref()) {
        check_upgrade(running, &release.version)?;
    }
    Ok(TenantPlan {
        namespace: system_namespace(&name),
        name,
        uid,
        backend: spec.backend,
        external_datastore,
        release,
        token_ttl_seconds: spec.token_expiration_seconds,
        limits: TenantLimits::resolve(spec.limits.as_ref(), default_limits),
    })
}

/// "1.37" of "1.37.2".
fn minor_of(version: &str) -> String {
    version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

fn minor_number(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Whether a tenant running `running` may move to `target` (full versions): the same minor
/// (a patch change), or the next one.
pub fn check_upgrade(running: &str, target: &str) -> Result<(), ValidateError> {
    let (Some(from), Some(to)) = (minor_number(running), minor_number(target)) else {
        return Ok(());
    };
    if to < from {
        return Err(ValidateError::VersionDowngrade {
            running: running.into(),
            requested: minor_of(target),
        });
    }
    if to.0 != from.0 || to.1 > from.1 + 1 {
        return Err(ValidateError::VersionSkipsMinor {
            running: running.into(),
            requested: minor_of(target),
            next: format!("{}.{}", from.0, from.1 + 1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostplane_crds::ControlPlaneSpec;
    use std::path::PathBuf;

    fn catalog() -> UpstreamCatalog {
        let release = |v: &str| ReleaseBinaries {
            version: v.into(),
            kube_apiserver: PathBuf::from(format!("/b/kube-apiserver-{v}")),
            kube_controller_manager: PathBuf::from(format!("/b/kube-controller-manager-{v}")),
            kube_scheduler: PathBuf::from(format!("/b/kube-scheduler-{v}")),
            kine: PathBuf::from("/b/kine"),
            etcd: PathBuf::from("/b/etcd"),
        };
        UpstreamCatalog::from_releases(vec![release("1.36.3"), release("1.37.2")])
    }

    fn cp(spec: ControlPlaneSpec) -> ControlPlane {
        let mut cp = ControlPlane::new("acme", spec);
        cp.metadata.uid = Some("0f8e2a7c-1111-2222-3333-444455556666".into());
        cp
    }

    #[test]
    fn defaults_give_the_newest_release_and_shared_backend() {
        let spec: ControlPlaneSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let plan = validate(&cp(spec), &catalog(), &TenantLimits::default()).unwrap();
        assert_eq!(
            plan,
            TenantPlan {
                name: "acme".into(),
                uid: "0f8e2a7c-1111-2222-3333-444455556666".into(),
                namespace: "acme-system".into(),
                backend: BackendType::Shared,
                external_datastore: None,
                release: catalog().release(Some("1.37")).unwrap().clone(),
                token_ttl_seconds: 7200,
                limits: TenantLimits::default(),
            }
        );
        assert_eq!(plan.database_name(), "hp_0f8e2a7c111122223333444455556666");
        assert_eq!(plan.key(), "acme-0f8e2a7c");
    }

    #[test]
    fn unknown_version_lists_the_available_ones() {
        let spec = ControlPlaneSpec {
            version: Some("1.20".into()),
            ..Default::default()
        };
        let err = validate(&cp(spec), &catalog(), &TenantLimits::default()).unwrap_err();
        assert_eq!(err.reason(), "UnknownVersion");
        assert_eq!(
            err.to_string(),
            "Kubernetes version 1.20 is not available on this host; available: 1.36, 1.37"
        );
    }

    #[test]
    fn unimplemented_types_are_reported_not_built() {
        let spec = ControlPlaneSpec {
            type_: ControlPlaneType::Vcluster,
            ..Default::default()
        };
        let err = validate(&cp(spec), &catalog(), &TenantLimits::default()).unwrap_err();
        assert_eq!(
            (err.reason(), err.to_string()),
            (
                "UnsupportedType",
                "type vcluster is not supported yet; supported types: k8s, host, external"
                    .to_string()
            )
        );
    }

    #[test]
    fn upgrades_go_one_minor_at_a_time_and_never_down() {
        assert_eq!(check_upgrade("1.36.3", "1.37.2"), Ok(()));
        assert_eq!(check_upgrade("1.37.1", "1.37.2"), Ok(()));
        let refusals = [
            check_upgrade("1.35.4", "1.37.2").unwrap_err(),
            check_upgrade("1.37.2", "1.36.3").unwrap_err(),
        ];
        assert_eq!(
            refusals.map(|e| (e.reason(), e.to_string())),
            [
                (
                    "VersionSkipsMinor",
                    "version 1.37 skips a minor: the tenant runs 1.35.4; upgrade one minor at a time (next: 1.36)".to_string()
                ),
                (
                    "VersionDowngrade",
                    "version 1.36 would downgrade the tenant from 1.37.2: Kubernetes cannot downgrade its stored data; set version back to 1.37".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_running_version_bounds_the_requested_one() {
        let mut running = cp(ControlPlaneSpec {
            version: Some("1.36".into()),
            ..Default::default()
        });
        running.status = Some(hostplane_crds::ControlPlaneStatus {
            version: Some("1.37.2".into()),
            ..Default::default()
        });
        assert_eq!(
            validate(&running, &catalog(), &TenantLimits::default())
                .unwrap_err()
                .reason(),
            "VersionDowngrade"
        );
        running.spec.version = Some("1.37".into());
        assert_eq!(
            validate(&running, &catalog(), &TenantLimits::default()).map(|p| p.release.version),
            Ok("1.37.2".to_string())
        );
    }
}
