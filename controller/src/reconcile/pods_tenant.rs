//! The pods runtime's part of a pass: after the namespace, datastore and certificates (shared
//! with the processes runtime), apply the tenant's Deployment, Service and fences, and report
//! readiness from the Deployment's status.
//!
//! Ready follows the Deployment, which the kubelet's probes on /readyz drive, not the
//! controller's own view: a controller outside the host's network (a laptop, CI) cannot resolve
//! `<cp>.<cp>-system.svc`, yet the tenant serves everyone inside. What needs the tenant itself
//! (minting kubeconfig tokens, join material, hooks) is attempted, and when the controller
//! cannot reach it the tenant stays Ready while Synced=False says what is not done and why.

use std::time::Duration;

use hostplane_crds::ControlPlane;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use super::{
    Context, DATASTORE_SECRET, Progress, ReadyReport, ReconcileError, apply_secret, ca_rotation,
    publish, serve_tenant,
};
use crate::build::pods::{self, PodsTenant, Readiness};
use crate::build::processes::Store;
use crate::pki::PkiFiles;
use crate::provision::{hooks, tenant_access};
use crate::runtime::pods::PodsError;
use crate::status::{ConditionState, SYNCED, reason};
use crate::validate::TenantPlan;

/// How long the controller tries to reach an available tenant within one pass.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Event reason when an available tenant cannot be reached from the controller.
const TENANT_ACCESS_FAILED: &str = "TenantAccessFailed";

/// The names a dedicated etcd's certificates carry beyond loopback: in the pods runtime, its
/// StatefulSet's and headless Service's; none for the processes runtime.
pub(super) fn etcd_server_names(plan: &TenantPlan, ctx: &Context) -> Vec<String> {
    match ctx.config.runtime {
        crate::config::TenantRuntime::Pods => crate::build::pods_etcd::server_names(&plan.name),
        crate::config::TenantRuntime::Processes => vec![],
    }
}

/// Applies the tenant's pods objects and reports where it stands.
pub(super) async fn provision(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    store: &Store,
    pki: &PkiFiles,
) -> Result<Progress, ReconcileError> {
    let datastore_secret = match (store, &plan.external_datastore) {
        // ensure_datastore stored the tenant role's DSN there.
        (Store::Postgres { .. }, None) => DATASTORE_SECRET,
        (Store::Postgres { url }, Some(_)) => {
            apply_secret(ctx, &pods::external_datastore_secret(plan, url)).await?;
            pods::EXTERNAL_DATASTORE_SECRET
        }
        (Store::Sqlite, _) => {
            return Err(PodsError::UnsupportedDatastore(
                "Kine on SQLite (the controller has no Postgres DSN)",
            )
            .into());
        }
        // The StatefulSet of `build::pods_etcd`; no Secret of ours holds a DSN.
        (Store::DedicatedEtcd, _) => "",
        (Store::SharedEtcd { .. }, _) => {
            return Err(PodsError::UnsupportedDatastore("the shared etcd").into());
        }
        (Store::ExternalEtcd { .. }, _) => {
            return Err(PodsError::UnsupportedDatastore("an external etcd").into());
        }
    };
    let tenant = PodsTenant {
        pki,
        datastore_secret,
        datastore_key: pods::DATASTORE_URL_KEY,
        workers: hooks::wants_workers(cp),
        dedicated_etcd: matches!(store, Store::DedicatedEtcd),
        placement: cp.spec.placement.as_ref(),
    };
    ctx.pods
        .apply(&pods::pods_objects(plan, &ctx.config.pods, &tenant))
        .await?;

    let endpoint = pods::endpoint(plan);
    let dedicated_etcd = matches!(store, Store::DedicatedEtcd);
    match ctx.pods.readiness(&plan.name, dedicated_etcd).await? {
        Readiness::Starting { detail } => return Ok(Progress::Starting { endpoint, detail }),
        Readiness::Updating { detail } => {
            tracing::debug!(controlplane = %plan.name, %detail, "control plane rolling out")
        }
        Readiness::Ready => {}
    }

    let client = tenant_access::controller_client(&endpoint, pki).await?;
    let reached =
        match tokio::time::timeout(REACH_TIMEOUT, tenant_access::check_ready(&client)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", REACH_TIMEOUT.as_secs())),
        };
    let failure = match reached {
        Ok(()) => match serve_tenant(cp, plan, ctx, &client, endpoint.clone(), pki).await {
            Err(ReconcileError::TenantAccess(e)) => e.to_string(),
            done => return done,
        },
        Err(e) => e,
    };
    let deployment = pods::deployment_name(&plan.name);
    let message = format!(
        "the tenant API server is available (Deployment {ns}/{deployment}), but the controller \
         cannot use it at {endpoint}: {failure}. Kubeconfig tokens are not minted and \
         post-create hooks are not applied until it can: run the controller inside the host \
         cluster, where the Service's name resolves, and check that NetworkPolicy \
         {ns}/{policy} admits its pods",
        ns = plan.namespace,
        policy = pods::CONTROL_PLANE_INGRESS_POLICY,
    );
    let recheck = SignedDuration::try_from(ctx.config.health_interval).unwrap_or_default();
    Ok(Progress::Ready(ReadyReport {
        endpoint,
        version: plan.release.version.clone(),
        renew_at: Timestamp::now()
            .checked_add(recheck)
            .unwrap_or_else(|_| Timestamp::now()),
        // Not applied this pass: what earlier passes recorded stays, new hooks are Pending.
        hooks: hooks::waiting_statuses(cp, "the controller to reach the tenant API server"),
        hooks_recheck_in: None,
        unreachable: Some(message),
        quota: None,
    }))
}

/// Synced for a pass that found the tenant ready (either runtime): False with the reason the
/// controller could not finish its work inside the tenant, with a Warning Event when that reason
/// is new. A tenant CA near its end is told in the message too (Synced stays True for it alone),
/// with a Warning Event `CAExpiringSoon` when the condition did not say so already: once per
/// change of the CAs or their dates.
pub(super) async fn synced_when_ready(
    ctx: &Context,
    cp: &ControlPlane,
    report: &ReadyReport,
) -> ConditionState {
    let previous = cp.condition(SYNCED);
    let expiring = ca_rotation::expiry_warning(ctx, cp).await;
    if let Some(warning) = &expiring
        && !previous.is_some_and(|c| c.message.contains(warning.as_str()))
    {
        publish(
            ctx,
            cp,
            EventType::Warning,
            ca_rotation::CA_EXPIRING_SOON,
            warning.clone(),
        )
        .await;
    }
    let Some(message) = &report.unreachable else {
        return ConditionState::new(
            true,
            reason::RECONCILE_SUCCESS,
            expiring.unwrap_or_default(),
        );
    };
    let known =
        previous.is_some_and(|c| c.status == "False" && c.message.starts_with(message.as_str()));
    if !known {
        publish(
            ctx,
            cp,
            EventType::Warning,
            TENANT_ACCESS_FAILED,
            message.clone(),
        )
        .await;
    }
    let message = match expiring {
        Some(warning) => format!("{message}; {warning}"),
        None => message.clone(),
    };
    ConditionState::new(false, reason::RECONCILE_ERROR, message)
}
