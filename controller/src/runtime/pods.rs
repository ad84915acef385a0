//! The `pods` runtime: a tenant's control plane as a Deployment and Service in its
//! `<cp>-system` namespace of the host (objects from `build::pods`). Kubernetes supervises the
//! pods; this runtime applies the objects, reads the Deployment's status once per pass, scales
//! it to zero for hibernation and deletes what it applied on teardown.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::pods::{
    self, COMPONENT_KUBECONFIGS_SECRET, CONTROL_PLANE_INGRESS_POLICY, DEFAULT_DENY_POLICY,
    LIMIT_RANGE_NAME, PodsObjects, QUOTA_NAME, Readiness,
};
use crate::build::pods_etcd::{self, ETCD_INGRESS_POLICY};
use crate::validate::system_namespace;

/// Field manager of everything this runtime applies.
pub const FIELD_MANAGER: &str = "hostplane-controller-pods";
/// Field manager of the replica count set by hibernation; the next apply takes it back.
const SCALE_MANAGER: &str = "hostplane-controller-hibernation";

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("applying {what}: {source}")]
    Apply { what: String, source: kube::Error },
    #[error("reading {what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error("deleting {what}: {source}")]
    Delete { what: String, source: kube::Error },
    #[error(
        "the pods runtime runs Kine on a Postgres datastore or a dedicated etcd only, and this tenant's is {0}: configure the controller with a Postgres DSN (backend shared), use backend dedicated, or give backend external a Secret with a \"dsn\""
    )]
    UnsupportedDatastore(&'static str),
}

impl PodsError {
    /// The reason users see in conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "ApplyFailed",
            Self::Read { .. } => "FetchFailed",
            Self::Delete { .. } => "CleanupFailed",
            Self::UnsupportedDatastore(_) => "DatastoreUnsupported",
        }
    }
}

/// Applies and reads tenants' control plane objects on the host.
pub struct PodsRuntime {
    client: kube::Client,
}

/// A delete's outcome: done, or already gone.
fn deleted<T>(what: String, result: Result<T, kube::Error>) -> Result<(), PodsError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(PodsError::Delete { what, source }),
    }
}

fn describe<K: Resource<DynamicType = ()>>(object: &K) -> String {
    match object.meta().namespace.as_deref() {
        Some(ns) => format!("{} {ns}/{}", K::kind(&()), object.name_any()),
        None => format!("{} {}", K::kind(&()), object.name_any()),
    }
}

impl PodsRuntime {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn apply_one<K>(&self, api: &Api<K>, object: &K) -> Result<(), PodsError>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        api.patch(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| PodsError::Apply {
            what: describe(object),
            source,
        })?;
        Ok(())
    }

    /// Server-side apply of every object, fences first (quota, limits, policies), then the
    /// Secret the pods mount, then the Deployment and Service. The namespace must exist.
    pub async fn apply(&self, objects: &PodsObjects) -> Result<(), PodsError> {
        let ns = objects.deployment.namespace().unwrap_or_default();
        self.apply_one(
            &Api::<Namespace>::all(self.client.clone()),
            &objects.namespace,
        )
        .await?;
        self.apply_one(&self.api::<ResourceQuota>(&ns), &objects.resource_quota)
            .await?;
        self.apply_one(&self.api::<LimitRange>(&ns), &objects.limit_range)
            .await?;
        for policy in &objects.network_policies {
            self.apply_one(&self.api::<NetworkPolicy>(&ns), policy)
                .await?;
        }
        self.apply_one(&self.api::<Secret>(&ns), &objects.component_kubeconfigs)
            .await?;
        // The dedicated etcd before the API server that needs it.
        if let Some(etcd) = &objects.etcd {
            self.apply_one(&self.api::<NetworkPolicy>(&ns), &etcd.network_policy)
                .await?;
            self.apply_one(&self.api::<Service>(&ns), &etcd.service)
                .await?;
            self.apply_one(&self.api::<StatefulSet>(&ns), &etcd.stateful_set)
                .await?;
        }
        self.apply_one(&self.api::<Deployment>(&ns), &objects.deployment)
            .await?;
        self.apply_one(&self.api::<Service>(&ns), &objects.service)
            .await
    }

    /// One read of the tenant's Deployment (and its etcd StatefulSet with `dedicated_etcd`):
    /// whether its API server is available.
    pub async fn readiness(
        &self,
        name: &str,
        dedicated_etcd: bool,
    ) -> Result<Readiness, PodsError> {
        let ns = system_namespace(name);
        let deployment = pods::deployment_name(name);
        let found = self
            .api::<Deployment>(&ns)
            .get_opt(&deployment)
            .await
            .map_err(|source| PodsError::Read {
                what: format!("Deployment {ns}/{deployment}"),
                source,
            })?;
        let control_plane = match found {
            Some(d) => pods::readiness(&d),
            None => Readiness::Starting {
                detail: format!("Deployment {ns}/{deployment} does not exist"),
            },
        };
        if !dedicated_etcd {
            return Ok(control_plane);
        }
        let etcd = pods_etcd::etcd_name(name);
        let found = self
            .api::<StatefulSet>(&ns)
            .get_opt(&etcd)
            .await
            .map_err(|source| PodsError::Read {
                what: format!("StatefulSet {ns}/{etcd}"),
                source,
            })?;
        let etcd = match found {
            Some(s) => pods_etcd::readiness(&s),
            None => Readiness::Starting {
                detail: format!("StatefulSet {ns}/{etcd} does not exist"),
            },
        };
        Ok(pods_etcd::combine(control_plane, etcd))
    }

    /// Scales the tenant's Deployment and its dedicated etcd, if any, to zero (hibernation);
    /// its Secrets and datastore (the etcd's PVC) stay, and the next apply scales them up again.
    pub async fn stop(&self, name: &str) -> Result<(), PodsError> {
        let ns = system_namespace(name);
        let deployment = pods::deployment_name(name);
        let scale = serde_json::json!({ "spec": { "replicas": 0 } });
        let params = PatchParams {
            field_manager: Some(SCALE_MANAGER.into()),
            ..Default::default()
        };
        match self
            .api::<Deployment>(&ns)
            .patch(&deployment, &params, &Patch::Merge(&scale))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(PodsError::Apply {
                    what: format!("replicas 0 of Deployment {ns}/{deployment}"),
                    source,
                });
            }
        }
        let etcd = pods_etcd::etcd_name(name);
        match self
            .api::<StatefulSet>(&ns)
            .patch(&etcd, &params, &Patch::Merge(&scale))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(PodsError::Apply {
                what: format!("replicas 0 of StatefulSet {ns}/{etcd}"),
                source,
            }),
        }
    }

    /// Deletes what `apply` created (not the namespace, which the caller deletes with the rest
    /// of the tenant's objects). Finding an object gone is success: a teardown resumes.
    pub async fn remove(&self, name: &str) -> Result<(), PodsError> {
        let ns = system_namespace(name);
        // Background: dependents (ReplicaSets, pods) go with the host's garbage collector; the
        // objects themselves are gone at once.
        let params = DeleteParams::background();
        let deployment = pods::deployment_name(name);
        deleted(
            format!("Deployment {ns}/{deployment}"),
            self.api::<Deployment>(&ns)
                .delete(&deployment, &params)
                .await,
        )?;
        deleted(
            format!("Service {ns}/{name}"),
            self.api::<Service>(&ns).delete(name, &params).await,
        )?;
        // The dedicated etcd: its PVC goes with the StatefulSet (retention policy whenDeleted:
        // Delete) and with the namespace, which the caller deletes.
        let etcd = pods_etcd::etcd_name(name);
        deleted(
            format!("StatefulSet {ns}/{etcd}"),
            self.api::<StatefulSet>(&ns).delete(&etcd, &params).await,
        )?;
        deleted(
            format!("Service {ns}/{etcd}"),
            self.api::<Service>(&ns).delete(&etcd, &params).await,
        )?;
        deleted(
            format!("Secret {ns}/{COMPONENT_KUBECONFIGS_SECRET}"),
            self.api::<Secret>(&ns)
                .delete(COMPONENT_KUBECONFIGS_SECRET, &params)
                .await,
        )?;
        for policy in [
            ETCD_INGRESS_POLICY,
            CONTROL_PLANE_INGRESS_POLICY,
            DEFAULT_DENY_POLICY,
        ] {
            deleted(
                format!("NetworkPolicy {ns}/{policy}"),
                self.api::<NetworkPolicy>(&ns).delete(policy, &params).await,
            )?;
        }
        deleted(
            format!("LimitRange {ns}/{LIMIT_RANGE_NAME}"),
            self.api::<LimitRange>(&ns)
                .delete(LIMIT_RANGE_NAME, &params)
                .await,
        )?;
        deleted(
            format!("ResourceQuota {ns}/{QUOTA_NAME}"),
            self.api::<ResourceQuota>(&ns)
                .delete(QUOTA_NAME, &params)
                .await,
        )
    }
}
