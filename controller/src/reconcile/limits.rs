//! Holding a tenant to its limits once its API server answers (either runtime): the API Priority
//! and Fairness level of its users, the storage quota (`crate::quota` decides, the admission
//! policy of `build::tenant_limits` enforces), and a dedicated etcd's space upkeep. The flags
//! (inflight limits, Kine's pool, etcd's quota) and the Postgres role's limits are set where
//! the processes and the role are made.
//!
//! The quota reads `status.usage.storageBytes`, which the usage sampler writes; each sample is
//! a status change and so starts a pass, which is how a tenant turns read-only (and back)
//! within a pass of the sample that says so.

use hostplane_crds::ControlPlane;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

use super::{Context, ReconcileError, publish};
use crate::build::processes::EtcdClientTls;
use crate::build::tenant_limits::{self, FIELD_MANAGER, QUOTA_POLICY};
use crate::config::TenantRuntime;
use crate::pki::PkiFiles;
use crate::provision::etcd_quota;
use crate::quota::{self, PolicyAction, QUOTA_EXCEEDED, QuotaInputs, StorageState};
use crate::status::ConditionState;
use crate::validate::TenantPlan;
use hostplane_crds::BackendType;

fn failed(what: impl Into<String>, detail: impl ToString) -> ReconcileError {
    ReconcileError::Limits {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// Server-side apply of a cluster-scoped object into the tenant.
async fn apply<K>(tenant: &kube::Client, object: &K) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    Api::<K>::all(tenant.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|e| failed(format!("applying {} {name} in the tenant", K::kind(&())), e))?;
    Ok(())
}

/// Deletes a cluster-scoped object of the tenant; a missing one is fine.
async fn remove<K>(tenant: &kube::Client, name: &str) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::all(tenant.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(failed(
            format!("deleting {} {name} in the tenant", K::kind(&())),
            e,
        )),
    }
}

/// Applies the tenant's limits inside it; returns the `QuotaExceeded` condition to write
/// (`None`: leave it as it is).
pub(super) async fn enforce(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    tenant: &kube::Client,
    pki: &PkiFiles,
) -> Result<Option<ConditionState>, ReconcileError> {
    apply(tenant, &tenant_limits::priority_level()).await?;
    for schema in tenant_limits::flow_schemas() {
        apply::<FlowSchema>(tenant, &schema).await?;
    }

    let status = cp.status.as_ref();
    let decision = quota::decide(&QuotaInputs {
        tenant: &plan.name,
        limit_bytes: plan.limits.max_storage_bytes,
        used_bytes: status
            .and_then(|s| s.usage.as_ref())
            .map(|u| u.storage_bytes),
        previous: cp.condition(QUOTA_EXCEEDED),
    });
    match &decision.policy {
        PolicyAction::Deny { message } => {
            // The policy first: a binding naming a missing policy denies nothing, but one
            // naming an old policy would deny with old figures.
            apply(tenant, &tenant_limits::quota_policy(message)).await?;
            apply(tenant, &tenant_limits::quota_binding()).await?;
        }
        PolicyAction::Remove => {
            // Every pass, so a policy left by a pass that crashed before writing its condition
            // goes too (two 404s when there is none).
            remove::<ValidatingAdmissionPolicyBinding>(tenant, QUOTA_POLICY).await?;
            remove::<ValidatingAdmissionPolicy>(tenant, QUOTA_POLICY).await?;
        }
        PolicyAction::Keep => {}
    }

    if plan.backend == BackendType::Dedicated && plan.external_datastore.is_none() {
        let endpoint = match ctx.config.runtime {
            TenantRuntime::Pods => crate::build::pods_etcd::client_url(plan),
            TenantRuntime::Processes => format!(
                "https://127.0.0.1:{}",
                ctx.runtime.ports(&plan.key())?.etcd_client
            ),
        };
        let get = |key: &str| pki.get(key).cloned().unwrap_or_default();
        let tls = EtcdClientTls {
            ca_pem: get("etcd-ca.crt"),
            cert_pem: get("apiserver-etcd-client.crt"),
            key_pem: get("apiserver-etcd-client.key"),
        };
        etcd_quota::maintain(
            &[endpoint],
            &tls,
            decision.state == StorageState::Exceeded,
            plan.limits.etcd_quota_backend_bytes(),
        )
        .await
        .map_err(|e| failed("upkeep of the dedicated etcd", e))?;
    }

    if let Some(event) = &decision.event {
        info!(controlplane = %plan.name, reason = event.reason, "{}", event.message);
        let type_ = match event.warning {
            true => EventType::Warning,
            false => EventType::Normal,
        };
        publish(ctx, cp, type_, event.reason, event.message.clone()).await;
    }
    Ok(decision.condition)
}
