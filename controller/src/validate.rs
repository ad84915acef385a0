//! Step 2: turn a ControlPlane's raw spec into a validated plan, once, with defaults applied.
//! Everything after this step works on `TenantPlan` and never re-reads the spec.

use hostplane_crds::{BackendType, ControlPlane, ControlPlaneType};
use kube::ResourceExt;

use crate::upstream::{ReleaseBinaries, UpstreamCatalog};

/// A ControlPlane the controller knows how to build.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantPlan {
    pub name: String,
    pub uid: String,
    /// `<name>-system` on the host: the tenant's Secrets and (pods runtime) workloads.
    pub namespace: String,
    pub backend: BackendType,
    /// backend external: the user's Secret with key `dsn` (a Postgres URL for Kine).
    pub external_datastore: Option<SecretRef>,
    pub release: ReleaseBinaries,
    /// Lifetime of handed-out tokens.
    pub token_ttl_seconds: i64,
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
    #[error("type {0} is not supported yet; supported types: k8s")]
    UnsupportedType(&'static str),
    #[error(
        "backend {0} is not supported yet; supported backends: shared, external (Postgres DSN)"
    )]
    UnsupportedBackend(&'static str),
    #[error("Kubernetes version {requested} is not available on this host; available: {}", available.join(", "))]
    UnknownVersion {
        requested: String,
        available: Vec<String>,
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
            Self::Incomplete => "InvalidSpec",
        }
    }
}

pub fn validate(cp: &ControlPlane, catalog: &UpstreamCatalog) -> Result<TenantPlan, ValidateError> {
    let name = cp.metadata.name.clone().ok_or(ValidateError::Incomplete)?;
    let uid = cp.uid().ok_or(ValidateError::Incomplete)?;
    let spec = &cp.spec;
    match spec.type_ {
        ControlPlaneType::K8s => {}
        other => return Err(ValidateError::UnsupportedType(other.as_str())),
    }
    let external_datastore = match (spec.backend, &spec.datastore_secret_ref) {
        (BackendType::Shared, _) => None,
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
    Ok(TenantPlan {
        namespace: system_namespace(&name),
        name,
        uid,
        backend: spec.backend,
        external_datastore,
        release,
        token_ttl_seconds: spec.token_expiration_seconds,
    })
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
        let plan = validate(&cp(spec), &catalog()).unwrap();
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
        let err = validate(&cp(spec), &catalog()).unwrap_err();
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
        let err = validate(&cp(spec), &catalog()).unwrap_err();
        assert_eq!(
            (err.reason(), err.to_string()),
            (
                "UnsupportedType",
                "type vcluster is not supported yet; supported types: k8s".to_string()
            )
        );
    }
}
