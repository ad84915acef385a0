//! Post-create hooks: once a tenant is Ready and its kubeconfig Secret exists, every hook the
//! ControlPlane names is rendered (crate `hooks`) and its objects are applied to the host in
//! `<cp>-system` with server-side apply, one field manager per hook. Applied on every pass, so
//! deleted or edited hook objects come back (drift); objects a hook no longer renders (a lower
//! `node_count`, a hook dropped from the spec) are deleted, and so is everything on teardown;
//! worker VirtualMachines among them are retired instead (`retire_nodes`): their tenant Nodes
//! drained and deleted first, the VMs after, tracked in `status.retiringNodes` until done.
//!
//! A hook is `Pending` until it is applied — while its tenant is not Ready yet, and while it
//! waits for the retry of an apply that failed — with a message saying what it waits for;
//! `Applied` once its objects are, `Succeeded` once its Jobs have completed (at once when it has
//! none), `Failed` when applying fails, a Job fails, or its Jobs do not complete within the hook
//! timeout. A hook that failed to apply is retried with exponential backoff.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::BoxFuture;
use hostplane_crds::{ControlPlane, HookObject, HookPhase, HookStatus, PostCreateHook};
use hostplane_hooks::{
    HookUse, KUBEVIRT_NODES, NODE_COUNT_VAR, hook_uses, place_in_namespace, render_hook,
    render_hook_per_node, variables,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::discovery::{self, Scope};
use serde_json::Value;
use tracing::{info, warn};

use crate::build::objects::{CONTROLPLANE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use crate::provision::tenant_access::{self, NodeRetirement};
use crate::validate::TenantPlan;

/// Label naming the hook an object came from.
pub const HOOK_LABEL: &str = "tenancy.hostplane.io/hook";

/// First retry of a hook that failed to apply; doubled per attempt up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Longest wait between retries: a fixed hook object is picked up within this time.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Reason on Events when a hook cannot be applied.
pub fn failure_reason(message: &str) -> &'static str {
    if message.starts_with("PostCreateHook ") && message.ends_with(" not found") {
        "HookNotFound"
    } else if message.contains("did not complete within") {
        "HookTimedOut"
    } else {
        "HookFailed"
    }
}

/// The join built-ins (`JoinEndpoint`, `BootstrapToken`, `CACertHash`) of node hooks, asked for
/// only when a hook renders nodes.
pub type JoinVars<'a> =
    Box<dyn Fn() -> BoxFuture<'a, Result<BTreeMap<String, String>, String>> + Send + Sync + 'a>;

/// Settings and inputs of one pass over the hooks.
pub struct HookPass<'a> {
    /// A hook's Jobs must complete within this time of its first apply.
    pub timeout: Duration,
    pub join_vars: JoinVars<'a>,
    pub now: Timestamp,
}

/// What a pass over the hooks found.
#[derive(Debug, Default)]
pub struct HookReport {
    /// One status per hook in use, in order.
    pub statuses: Vec<HookStatus>,
    /// When the pass should run again for the hooks' sake (a retry, a Job being watched).
    pub recheck_in: Option<Duration>,
    /// Worker VirtualMachines no hook renders any more, kept until [`retire_nodes`] has removed
    /// their tenant Nodes and then them: those already retiring and those found now.
    pub retiring: Vec<HookObject>,
    /// VirtualMachines that were retiring and are rendered again (their Nodes are uncordoned).
    pub reprieved: Vec<HookObject>,
}

/// Whether a hook object is a worker node's VirtualMachine: its tenant Node has its name (the
/// VM's cloud-init sets the hostname), and it is removed only after that Node.
pub fn is_worker_vm(object: &HookObject) -> bool {
    object.kind == "VirtualMachine"
}

/// Whether the ControlPlane asks for worker nodes (so its tenant runs kube-scheduler).
pub fn wants_workers(cp: &ControlPlane) -> bool {
    hook_uses(cp).iter().any(|u| {
        u.vars
            .get(NODE_COUNT_VAR)
            .map_or(u.hook_name == KUBEVIRT_NODES, |n| {
                n.trim().parse::<u32>().is_ok_and(|n| n > 0)
            })
    })
}

/// Delay before retry number `attempts` (1 = first retry) of a hook that failed.
pub fn retry_delay(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_RETRY_DELAY)
}

/// When a hook that failed to apply is retried (also while it is `Pending` for that retry).
fn retry_due(previous: &HookStatus) -> Option<Timestamp> {
    let failed_to_apply = match previous.phase {
        HookPhase::Failed => true,
        // Pending for a retry, rather than for its tenant: it has been attempted.
        HookPhase::Pending => previous.attempts > 0,
        HookPhase::Applied | HookPhase::Succeeded => false,
    };
    if !failed_to_apply || previous.applied_time.is_some() {
        // Job failures and timeouts are not retried by re-applying: the Job's own backoffLimit
        // retries, and deleting the failed Job makes the next pass create it again.
        return None;
    }
    let last = previous.last_attempt_time.as_ref()?.0;
    last.checked_add(SignedDuration::try_from(retry_delay(previous.attempts)).ok()?)
        .ok()
}

/// Whether a hook that failed to apply waits for its backoff still; returns the time left.
pub fn backoff_left(previous: &HookStatus, now: Timestamp) -> Option<Duration> {
    let left = retry_due(previous)?.duration_since(now);
    Duration::try_from(left).ok().filter(|d| !d.is_zero())
}

/// The status of a hook waiting for the retry of a failed apply, with the time left: `Pending`,
/// naming the retry, when it is due and why the last attempt failed. Counters and times stay, so
/// the message is the same on every pass until the retry (no status churn).
pub fn waiting_for_retry(previous: &HookStatus, now: Timestamp) -> Option<(HookStatus, Duration)> {
    let left = backoff_left(previous, now)?;
    if previous.phase == HookPhase::Pending {
        return Some((previous.clone(), left));
    }
    let due = retry_due(previous)?;
    let status = HookStatus {
        phase: HookPhase::Pending,
        message: format!(
            "waiting for retry {} at {}; the last attempt failed: {}",
            previous.attempts + 1,
            due.strftime("%Y-%m-%dT%H:%M:%SZ"),
            previous.message
        ),
        ..previous.clone()
    };
    Some((status, left))
}

/// The hook statuses of a pass that applies no hooks because the tenant cannot take them yet
/// (`waiting_for` says why, as in "waiting for ..."): every hook not applied yet is `Pending`
/// with that message. What earlier passes recorded for the others stays (an outage does not
/// undo an applied hook), and so do the statuses of hooks dropped from the spec, whose objects
/// the next pass that applies hooks removes.
pub fn waiting_statuses(cp: &ControlPlane, waiting_for: &str) -> Vec<HookStatus> {
    let previous: &[HookStatus] = cp
        .status
        .as_ref()
        .map(|s| s.hook_statuses.as_slice())
        .unwrap_or_default();
    let uses = hook_uses(cp);
    let mut statuses: Vec<HookStatus> = uses
        .iter()
        .map(|u| match previous.iter().find(|h| h.name == u.hook_name) {
            // Pending for its tenant (never attempted): the message follows what it waits for.
            Some(before) if before.phase != HookPhase::Pending || before.attempts > 0 => {
                before.clone()
            }
            _ => HookStatus {
                name: u.hook_name.clone(),
                phase: HookPhase::Pending,
                message: format!("waiting for {waiting_for}"),
                ..Default::default()
            },
        })
        .collect();
    statuses.extend(
        previous
            .iter()
            .filter(|h| !uses.iter().any(|u| u.hook_name == h.name))
            .cloned(),
    );
    statuses
}

/// Applies every hook of the ControlPlane and removes what hooks no longer render.
pub async fn apply_hooks(
    client: &kube::Client,
    cp: &ControlPlane,
    plan: &TenantPlan,
    pass: &HookPass<'_>,
) -> HookReport {
    let previous: BTreeMap<String, HookStatus> = cp
        .status
        .iter()
        .flat_map(|s| s.hook_statuses.iter().cloned())
        .map(|h| (h.name.clone(), h))
        .collect();
    let target = Target {
        client,
        cp,
        plan,
        pass,
    };
    let mut resources = Resources::default();
    let mut report = HookReport::default();
    let uses = hook_uses(cp);
    for hook_use in &uses {
        let before = previous.get(&hook_use.hook_name);
        if let Some((waiting, left)) = before.and_then(|b| waiting_for_retry(b, pass.now)) {
            report.statuses.push(waiting);
            report.recheck_in = min_some(report.recheck_in, left);
            continue;
        }
        let status = apply_hook(&target, hook_use, before, &mut resources, &mut report).await;
        if status.phase == HookPhase::Applied {
            // Jobs are running: look again soon.
            report.recheck_in = min_some(report.recheck_in, Duration::from_secs(5));
        }
        if status.phase == HookPhase::Failed
            && let Some(left) = backoff_left(&status, pass.now)
        {
            report.recheck_in = min_some(report.recheck_in, left);
        }
        report.statuses.push(status);
    }
    // Hooks dropped from the spec: their objects go (their worker VMs after their Nodes).
    for (name, old) in &previous {
        if !uses.iter().any(|u| &u.hook_name == name) {
            info!(hook = %name, "hook no longer used; removing its objects");
            let (vms, others): (Vec<HookObject>, Vec<HookObject>) =
                old.objects.iter().cloned().partition(is_worker_vm);
            report.retiring.extend(vms);
            if let Err(e) = delete_objects(client, &others, &mut resources).await {
                warn!(hook = %name, error = %e, "cannot remove objects of an unused hook");
            }
        }
    }
    // Retiring VMs stay retiring until removed, unless a hook renders them again.
    let rendered: Vec<&HookObject> = report.statuses.iter().flat_map(|h| &h.objects).collect();
    let already = cp.status.iter().flat_map(|s| s.retiring_nodes.iter());
    let mut retiring: Vec<HookObject> = already.chain(&report.retiring).cloned().collect();
    retiring.sort();
    retiring.dedup();
    let (reprieved, retiring): (Vec<HookObject>, Vec<HookObject>) =
        retiring.into_iter().partition(|vm| rendered.contains(&vm));
    report.retiring = retiring;
    report.reprieved = reprieved;
    if !report.retiring.is_empty() {
        report.recheck_in = min_some(report.recheck_in, RETIRE_RECHECK);
    }
    report
}

/// How soon a pass looks again at Nodes being drained.
const RETIRE_RECHECK: Duration = Duration::from_secs(3);

/// What [`retire_nodes`] left for later.
#[derive(Debug, Default)]
pub struct Retirements {
    /// VirtualMachines whose Node or VM is not removed yet (recorded in status).
    pub remaining: Vec<HookObject>,
    /// How each of them stands, for the log and Events.
    pub messages: Vec<String>,
}

/// Retires worker nodes in order: cordon and drain the tenant Node, delete it, then delete its
/// VirtualMachine on the host. A VM leaves the list only once both are gone, so a step that
/// fails (or a drain still waiting) is taken up again on the next pass; a VM someone else
/// deleted first still has its Node removed. `reprieved` VMs get their Nodes uncordoned.
pub async fn retire_nodes(
    host: &kube::Client,
    tenant: &kube::Client,
    report: &HookReport,
    drain_timeout: Duration,
    now: Timestamp,
) -> Retirements {
    let mut resources = Resources::default();
    let mut left = Retirements::default();
    for vm in &report.reprieved {
        if let Err(e) = tenant_access::keep_node(tenant, &vm.name).await {
            warn!(node = %vm.name, error = %e, "cannot uncordon a worker Node wanted again");
        }
    }
    for vm in &report.retiring {
        let outcome = match tenant_access::retire_node(tenant, &vm.name, drain_timeout, now).await {
            Ok(NodeRetirement::Removed) => {
                delete_objects(host, std::slice::from_ref(vm), &mut resources).await
            }
            Ok(NodeRetirement::Draining(message)) => Err(message),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                info!(vm = %vm.name, "worker node retired: Node drained and deleted, then its VM")
            }
            Err(message) => {
                info!(vm = %vm.name, %message, "worker node still retiring");
                left.remaining.push(vm.clone());
                left.messages.push(message);
            }
        }
    }
    left
}

fn min_some(current: Option<Duration>, candidate: Duration) -> Option<Duration> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

/// What every hook of one pass is applied for and with.
struct Target<'a, 'p> {
    client: &'a kube::Client,
    cp: &'a ControlPlane,
    plan: &'a TenantPlan,
    pass: &'a HookPass<'p>,
}

async fn apply_hook(
    target: &Target<'_, '_>,
    hook_use: &HookUse,
    before: Option<&HookStatus>,
    resources: &mut Resources,
    report: &mut HookReport,
) -> HookStatus {
    let (plan, pass) = (target.plan, target.pass);
    let now = Time(pass.now);
    let outcome = render_and_apply(target, hook_use, before, resources, report).await;
    let applied_ok = outcome.is_ok();
    let timeout_seconds = outcome.as_ref().ok().and_then(|o| o.timeout_seconds);
    let (mut phase, mut message, objects) = match outcome {
        Ok(Applied { objects, jobs, .. }) => {
            let (phase, message) = match jobs {
                JobsState::Done(0) => (
                    HookPhase::Succeeded,
                    format!("{} objects applied in {}", objects.len(), plan.namespace),
                ),
                JobsState::Done(count) => (
                    HookPhase::Succeeded,
                    format!("{} objects applied, {count} Jobs succeeded", objects.len()),
                ),
                JobsState::Running(names) => (
                    HookPhase::Applied,
                    format!(
                        "{} objects applied; waiting for Jobs {}",
                        objects.len(),
                        names.join(", ")
                    ),
                ),
                JobsState::Failed(message) => (HookPhase::Failed, message),
            };
            (phase, message, objects)
        }
        Err(message) => (
            HookPhase::Failed,
            message,
            before.map(|b| b.objects.clone()).unwrap_or_default(),
        ),
    };
    // Applied since (kept while applying keeps succeeding): the timeout counts from here.
    let applied_time = if applied_ok {
        Some(
            before
                .and_then(|b| b.applied_time.clone())
                .unwrap_or(now.clone()),
        )
    } else {
        None
    };
    let timeout = timeout_seconds
        .map(|s| SignedDuration::from_secs(s.max(1)))
        .unwrap_or_else(|| SignedDuration::try_from(pass.timeout).unwrap_or(SignedDuration::MAX));
    if phase == HookPhase::Applied
        && let Some(since) = &applied_time
        && pass.now.duration_since(since.0) >= timeout
    {
        phase = HookPhase::Failed;
        message = format!(
            "{message}; the Jobs did not complete within {}s",
            timeout.as_secs()
        );
    }
    // Attempts count changes of outcome and retries, not passes: a status that changed on every
    // pass would trigger the next pass at once.
    let changed = before.is_none_or(|b| b.phase != phase || b.message != message);
    let retried = before.is_some_and(|b| b.phase == HookPhase::Failed && b.applied_time.is_none());
    let attempts = before.map(|b| b.attempts).unwrap_or(0) + i32::from(changed || retried);
    let last_attempt_time = if changed || retried || before.is_none() {
        Some(now)
    } else {
        before.and_then(|b| b.last_attempt_time.clone())
    };
    HookStatus {
        name: hook_use.hook_name.clone(),
        phase,
        message,
        attempts,
        last_attempt_time,
        applied_time,
        objects,
    }
}

/// What applying a hook did.
struct Applied {
    objects: Vec<HookObject>,
    jobs: JobsState,
    /// The hook's own Job timeout, if it sets one.
    timeout_seconds: Option<i64>,
}

enum JobsState {
    /// Every Job completed; how many there are.
    Done(usize),
    Running(Vec<String>),
    Failed(String),
}

async fn render_and_apply(
    target: &Target<'_, '_>,
    hook_use: &HookUse,
    before: Option<&HookStatus>,
    resources: &mut Resources,
    report: &mut HookReport,
) -> Result<Applied, String> {
    let Target {
        client,
        cp,
        plan,
        pass,
    } = *target;
    let name = &hook_use.hook_name;
    let hook = Api::<PostCreateHook>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| format!("reading PostCreateHook {name}: {e}"))?
        .ok_or_else(|| format!("PostCreateHook {name} not found"))?;
    let mut vars = variables(
        &hook,
        hook_use,
        &plan.name,
        &cp.spec.global_vars,
        &plan.namespace,
    );
    let rendered = if vars.contains_key(NODE_COUNT_VAR) {
        vars.extend((pass.join_vars)().await?);
        render_hook_per_node(&hook, &vars)
    } else {
        render_hook(&hook, &vars)
    }
    .map_err(|e| e.to_string())?;
    let manager: String = format!("hostplane-hook-{name}").chars().take(128).collect();
    let mut applied = Vec::new();
    let mut jobs = Vec::new();
    for mut object in rendered {
        place_in_namespace(&mut object, &plan.namespace);
        label(&mut object, &plan.name, name);
        let reference = object_ref(&object);
        let (api, _) = resources.api(client, &reference).await?;
        api.patch(
            &reference.name,
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| format!("applying {} {}: {e}", reference.kind, reference.name))?;
        if reference.api_version == "batch/v1" && reference.kind == "Job" {
            jobs.push(reference.clone());
        }
        applied.push(reference);
    }
    // What the hook rendered before and no longer does goes (a lower node_count, an edited hook).
    let stale: Vec<HookObject> = before
        .map(|b| {
            b.objects
                .iter()
                .filter(|o| !applied.contains(o))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // Worker VMs are not deleted here: their Nodes are drained and removed first.
    let (vms, stale): (Vec<HookObject>, Vec<HookObject>) =
        stale.into_iter().partition(is_worker_vm);
    delete_objects(client, &stale, resources).await?;
    report.retiring.extend(vms);
    let jobs = jobs_state(client, &jobs).await?;
    applied.sort();
    Ok(Applied {
        objects: applied,
        jobs,
        timeout_seconds: hook.spec.timeout_seconds,
    })
}

async fn jobs_state(client: &kube::Client, jobs: &[HookObject]) -> Result<JobsState, String> {
    let mut running = Vec::new();
    for reference in jobs {
        let namespace = reference.namespace.as_deref().unwrap_or_default();
        let job = Api::<Job>::namespaced(client.clone(), namespace)
            .get(&reference.name)
            .await
            .map_err(|e| format!("reading Job {namespace}/{}: {e}", reference.name))?;
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let holds = |type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
        };
        if let Some(failed) = holds("Failed") {
            return Ok(JobsState::Failed(format!(
                "Job {namespace}/{} failed: {}{}",
                reference.name,
                failed.reason.as_deref().unwrap_or("Failed"),
                failed
                    .message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            )));
        }
        if holds("Complete").is_none() {
            running.push(reference.name.clone());
        }
    }
    Ok(if running.is_empty() {
        JobsState::Done(jobs.len())
    } else {
        JobsState::Running(running)
    })
}

/// Deletes every object every hook of this ControlPlane applied (teardown): cluster-scoped
/// ones would outlive the namespace otherwise.
pub async fn remove_all(client: &kube::Client, cp: &ControlPlane) -> Result<(), String> {
    let objects: Vec<HookObject> = cp
        .status
        .iter()
        .flat_map(|s| {
            let applied = s.hook_statuses.iter().flat_map(|h| h.objects.iter());
            applied.chain(&s.retiring_nodes).cloned()
        })
        .collect();
    delete_objects(client, &objects, &mut Resources::default()).await
}

async fn delete_objects(
    client: &kube::Client,
    objects: &[HookObject],
    resources: &mut Resources,
) -> Result<(), String> {
    for object in objects {
        let api = match resources.api(client, object).await {
            Ok((api, _)) => api,
            // The kind is gone from the host (its CRD removed): so are its objects.
            Err(_) => continue,
        };
        match api.delete(&object.name, &DeleteParams::background()).await {
            Ok(_) => info!(kind = %object.kind, name = %object.name, "removed hook object"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("deleting {} {}: {e}", object.kind, object.name)),
        }
    }
    Ok(())
}

fn object_ref(object: &Value) -> HookObject {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    HookObject {
        api_version: text(&object["apiVersion"]),
        kind: text(&object["kind"]),
        name: text(&object["metadata"]["name"]),
        namespace: object["metadata"]["namespace"].as_str().map(str::to_string),
    }
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

/// API resources found by discovery, cached for one pass.
#[derive(Default)]
struct Resources {
    found: HashMap<(String, String), (ApiResource, Scope)>,
}

impl Resources {
    async fn api(
        &mut self,
        client: &kube::Client,
        object: &HookObject,
    ) -> Result<(Api<DynamicObject>, Scope), String> {
        let key = (object.api_version.clone(), object.kind.clone());
        let (resource, scope) = match self.found.get(&key) {
            Some(found) => found.clone(),
            None => {
                let (group, version) = object
                    .api_version
                    .rsplit_once('/')
                    .unwrap_or(("", &object.api_version));
                let gvk = GroupVersionKind::gvk(group, version, &object.kind);
                let (resource, capabilities) =
                    discovery::pinned_kind(client, &gvk).await.map_err(|e| {
                        format!(
                            "the host does not serve {} {}: {e}",
                            object.api_version, object.kind
                        )
                    })?;
                self.found
                    .insert(key, (resource.clone(), capabilities.scope.clone()));
                (resource, capabilities.scope)
            }
        };
        let api = match (&scope, object.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        Ok((api, scope))
    }
}

/// Whether every hook is done (for `waitForPostCreateHooks` and `postCreateHookCompleted`).
pub fn all_succeeded(statuses: &[HookStatus]) -> bool {
    statuses.iter().all(|h| h.phase == HookPhase::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(attempts: i32, last: &str) -> HookStatus {
        HookStatus {
            name: "h".into(),
            phase: HookPhase::Failed,
            message: "PostCreateHook h not found".into(),
            attempts,
            last_attempt_time: Some(Time(last.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_minute() {
        let delays: Vec<u64> = (1..=6).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(retry_delay(i32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_failed_apply_waits_for_its_backoff_but_a_failed_job_is_not_reapplied_early() {
        let now: Timestamp = "2026-11-23T12:00:10Z".parse().unwrap();
        assert_eq!(
            backoff_left(&failed(3, "2026-11-23T12:00:00Z"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(backoff_left(&failed(1, "2026-11-23T12:00:00Z"), now), None);
        let mut job_failed = failed(3, "2026-11-23T12:00:00Z");
        job_failed.applied_time = job_failed.last_attempt_time.clone();
        assert_eq!(backoff_left(&job_failed, now), None);
    }

    #[test]
    fn workers_are_wanted_when_a_hook_use_asks_for_nodes() {
        use hostplane_crds::{ControlPlaneSpec, PostCreateHookUse};
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        assert!(!wants_workers(&cp));
        cp.spec.post_create_hooks = vec![PostCreateHookUse {
            hook_name: Some(KUBEVIRT_NODES.into()),
            vars: Default::default(),
        }];
        assert!(wants_workers(&cp));
        cp.spec.post_create_hooks[0].vars = [(NODE_COUNT_VAR.to_string(), "0".to_string())].into();
        assert!(!wants_workers(&cp));
        cp.spec.post_create_hooks[0].hook_name = Some("my-nodes".into());
        cp.spec.post_create_hooks[0].vars = [(NODE_COUNT_VAR.to_string(), "2".to_string())].into();
        assert!(wants_workers(&cp));
    }

    fn hooked(uses: &[&str], previous: Vec<HookStatus>) -> ControlPlane {
        use hostplane_crds::{ControlPlaneSpec, ControlPlaneStatus, PostCreateHookUse};
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        cp.spec.post_create_hooks = uses
            .iter()
            .map(|name| PostCreateHookUse {
                hook_name: Some(name.to_string()),
                vars: Default::default(),
            })
            .collect();
        cp.status = Some(ControlPlaneStatus {
            hook_statuses: previous,
            ..Default::default()
        });
        cp
    }

    #[test]
    fn hooks_wait_as_pending_while_the_tenant_is_not_ready() {
        let applied = HookStatus {
            name: "applied".into(),
            phase: HookPhase::Succeeded,
            message: "1 objects applied in acme-system".into(),
            attempts: 1,
            ..Default::default()
        };
        let dropped = HookStatus {
            name: "dropped".into(),
            phase: HookPhase::Succeeded,
            objects: vec![HookObject {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "x".into(),
                namespace: Some("acme-system".into()),
            }],
            ..Default::default()
        };
        let earlier_wait = HookStatus {
            name: "new".into(),
            phase: HookPhase::Pending,
            message: "waiting for the tenant to be Ready (now Creating)".into(),
            ..Default::default()
        };
        let cp = hooked(
            &["new", "applied"],
            vec![earlier_wait, applied.clone(), dropped.clone()],
        );
        assert_eq!(
            waiting_statuses(&cp, "the tenant to be Ready (now DatastoreUnavailable)"),
            vec![
                HookStatus {
                    name: "new".into(),
                    phase: HookPhase::Pending,
                    message: "waiting for the tenant to be Ready (now DatastoreUnavailable)".into(),
                    ..Default::default()
                },
                // Applied before an outage: still applied.
                applied,
                // Kept so that the next pass applying hooks removes its objects.
                dropped,
            ]
        );
        // A ControlPlane seen for the first time.
        let mut fresh = hooked(&[KUBEVIRT_NODES], vec![]);
        fresh.status = None;
        let statuses = waiting_statuses(&fresh, "the tenant to be Ready (now Creating)");
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].phase, HookPhase::Pending);
        assert_eq!(
            statuses[0].message,
            "waiting for the tenant to be Ready (now Creating)"
        );
        assert!(!all_succeeded(&statuses));
    }

    #[test]
    fn a_hook_waiting_for_its_retry_is_pending_with_the_last_failure() {
        let now: Timestamp = "2026-11-23T12:00:10Z".parse().unwrap();
        let failure = failed(3, "2026-11-23T12:00:00Z");
        let (waiting, left) = waiting_for_retry(&failure, now).expect("in its backoff");
        assert_eq!(left, Duration::from_secs(10));
        assert_eq!(
            waiting,
            HookStatus {
                phase: HookPhase::Pending,
                message: "waiting for retry 4 at 2026-11-23T12:00:20Z; the last attempt failed: \
                          PostCreateHook h not found"
                    .into(),
                ..failure.clone()
            }
        );
        // The next pass keeps it as it is, and still knows when the retry is due.
        let later: Timestamp = "2026-11-23T12:00:15Z".parse().unwrap();
        assert_eq!(
            waiting_for_retry(&waiting, later),
            Some((waiting.clone(), Duration::from_secs(5)))
        );
        // Due: applied again (no waiting status), whether the last pass said Failed or Pending.
        let due: Timestamp = "2026-11-23T12:00:20Z".parse().unwrap();
        assert_eq!(waiting_for_retry(&waiting, due), None);
        assert_eq!(waiting_for_retry(&failure, due), None);
        // Pending for its tenant is not a retry: applied as soon as the tenant is Ready.
        let for_tenant = HookStatus {
            name: "h".into(),
            phase: HookPhase::Pending,
            message: "waiting for the tenant to be Ready (now Creating)".into(),
            ..Default::default()
        };
        assert_eq!(waiting_for_retry(&for_tenant, now), None);
    }

    /// Worker VMs of the built-in hook reach their tenant's API server directly, so the pods
    /// runtime's NetworkPolicy must admit their pods: every pod of the tenant's namespace (hook
    /// Jobs included, whose labels are the hook author's), and any label it selects on.
    #[test]
    fn kubevirt_node_pods_are_admitted_by_the_control_plane_policy() {
        use crate::build::pods::{self, CONTROL_PLANE_INGRESS_POLICY, PodsConfig, PodsTenant};
        let plan = crate::build::pods::tests::plan();
        let objects = pods::pods_objects(
            &plan,
            &PodsConfig::default(),
            &PodsTenant {
                pki: &crate::build::pods::tests::pki(),
                datastore_secret: "datastore",
                datastore_key: "url",
                workers: true,
                dedicated_etcd: false,
                placement: None,
            },
        );
        let policy = objects
            .network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(CONTROL_PLANE_INGRESS_POLICY))
            .expect("the control plane's ingress policy");
        let policy = serde_json::to_value(policy).unwrap();
        // The peer admitting pods of the tenant's own namespace: a pod selector alone.
        let admitted: Vec<&Value> = policy["spec"]["ingress"][0]["from"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|peer| peer.get("namespaceSelector").is_none())
            .map(|peer| &peer["podSelector"])
            .collect();
        assert_eq!(
            admitted,
            [&serde_json::json!({})],
            "every pod of the namespace"
        );

        let hook = hostplane_hooks::builtin_hook(KUBEVIRT_NODES).unwrap();
        let hook_use = HookUse {
            hook_name: KUBEVIRT_NODES.into(),
            vars: [(NODE_COUNT_VAR.to_string(), "2".to_string())].into(),
        };
        let mut vars = variables(
            &hook,
            &hook_use,
            &plan.name,
            &Default::default(),
            &plan.namespace,
        );
        for name in [
            hostplane_hooks::JOIN_ENDPOINT_VAR,
            hostplane_hooks::BOOTSTRAP_TOKEN_VAR,
            hostplane_hooks::CA_CERT_HASH_VAR,
        ] {
            vars.insert(name.to_string(), "x".to_string());
        }
        let mut vms = render_hook_per_node(&hook, &vars).unwrap();
        assert_eq!(vms.len(), 2);
        for vm in &mut vms {
            place_in_namespace(vm, &plan.namespace);
            label(vm, &plan.name, KUBEVIRT_NODES);
            // Same namespace as the policy, and every label it selects on.
            assert_eq!(vm["metadata"]["namespace"], policy["metadata"]["namespace"]);
            let pod_labels = &vm["spec"]["template"]["metadata"]["labels"];
            let selected = admitted[0].get("matchLabels").and_then(Value::as_object);
            for (key, value) in selected.into_iter().flatten() {
                assert_eq!(&pod_labels[key], value, "{key} on {pod_labels}");
            }
        }
    }
}
