//! Post-create hooks: once a tenant is Ready and its kubeconfig Secret exists, every hook the
//! ControlPlane names is rendered (crate `hooks`) and its objects are applied to the host in
//! `<cp>-system` with server-side apply, one field manager per hook. Applied on every pass, so
//! deleted or edited hook objects come back (drift); removed with the tenant's namespace.

use std::collections::BTreeMap;

use hostplane_crds::{ControlPlane, HookPhase, HookStatus, PostCreateHook};
use hostplane_hooks::{hook_uses, place_in_namespace, render_hook, variables};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{self, Scope};
use serde_json::Value;

use crate::build::objects::{CONTROLPLANE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use crate::validate::TenantPlan;

/// Label naming the hook an object came from.
pub const HOOK_LABEL: &str = "tenancy.hostplane.io/hook";

/// Reason on Events when a hook cannot be applied.
pub fn failure_reason(message: &str) -> &'static str {
    if message.starts_with("PostCreateHook ") && message.ends_with(" not found") {
        "HookNotFound"
    } else {
        "HookFailed"
    }
}

/// Applies every hook of the ControlPlane; returns one status per hook, in order.
pub async fn apply_hooks(
    client: &kube::Client,
    cp: &ControlPlane,
    plan: &TenantPlan,
) -> Vec<HookStatus> {
    let previous: BTreeMap<String, HookStatus> = cp
        .status
        .iter()
        .flat_map(|s| s.hook_statuses.iter().cloned())
        .map(|h| (h.name.clone(), h))
        .collect();
    let mut statuses = Vec::new();
    for hook_use in hook_uses(cp) {
        let name = hook_use.hook_name.clone();
        let result = apply_hook(client, cp, plan, &hook_use).await;
        let before = previous.get(&name);
        let (phase, message) = match result {
            Ok(count) => (
                HookPhase::Applied,
                format!("{count} objects applied in {}", plan.namespace),
            ),
            Err(message) => (HookPhase::Failed, message),
        };
        // Attempts count changes of outcome, not passes: a status that changes on every pass
        // would trigger the next pass at once.
        let changed = before.is_none_or(|b| b.phase != phase || b.message != message);
        let attempts = before.map(|b| b.attempts).unwrap_or(0) + i32::from(changed);
        statuses.push(HookStatus {
            name,
            phase,
            message,
            attempts,
        });
    }
    statuses
}

async fn apply_hook(
    client: &kube::Client,
    cp: &ControlPlane,
    plan: &TenantPlan,
    hook_use: &hostplane_hooks::HookUse,
) -> Result<usize, String> {
    let name = &hook_use.hook_name;
    let hook = Api::<PostCreateHook>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| format!("reading PostCreateHook {name}: {e}"))?
        .ok_or_else(|| format!("PostCreateHook {name} not found"))?;
    let vars = variables(
        &hook,
        hook_use,
        &plan.name,
        &cp.spec.global_vars,
        &plan.namespace,
    );
    let objects = render_hook(&hook, &vars).map_err(|e| e.to_string())?;
    let manager = format!("hostplane-hook-{name}");
    let manager: String = manager.chars().take(128).collect();
    for mut object in objects {
        place_in_namespace(&mut object, &plan.namespace);
        label(&mut object, &plan.name, name);
        apply_object(client, &object, &manager).await?;
    }
    Ok(hook.spec.templates.len())
}

fn label(object: &mut Value, controlplane: &str, hook: &str) {
    let labels = &mut object["metadata"]["labels"];
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    labels[MANAGED_BY_LABEL] = MANAGED_BY.into();
    labels[CONTROLPLANE_LABEL] = controlplane.into();
    labels[HOOK_LABEL] = hook.into();
}

async fn apply_object(client: &kube::Client, object: &Value, manager: &str) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("the host does not serve {api_version} {kind}: {e}"))?;
    let api: Api<DynamicObject> =
        match (capabilities.scope, object["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|e| format!("applying {kind} {name}: {e}"))?;
    Ok(())
}
