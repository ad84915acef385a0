//! The reconcile pass: fetch → validate → build → provision → apply → status, wrapped by kube's
//! finalizer helper so that creation/repair and teardown are separate branches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use hostplane_crds::{
    BackendType, ControlPlane, ControlPlaneStatus, DatastoreStatus, HookPhase, HookStatus,
    SecretReference,
};
use hostplane_hooks::{BOOTSTRAP_TOKEN_VAR, CA_CERT_HASH_VAR, JOIN_ENDPOINT_VAR};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::build::join::JoinConfig;
use crate::build::objects::{
    self, CERTS_SECRET, DATASTORE_SECRET, KUBECONFIG_INCLUSTER_KEY, KUBECONFIG_KEY,
    KUBECONFIG_SECRET,
};
use crate::build::processes::{BundleInput, EtcdClientTls, Store, control_plane_bundle};
use crate::build::{kubeconfig, minter};
use crate::config::{ControllerConfig, TenantRuntime};
use crate::hibernation::{self, Decision};
use crate::metrics::{FailureLabels, Metrics};
use crate::pki::{self, PkiError, PkiRequest};
use crate::provision::adopted::{self, AdoptedError};
use crate::provision::etcd::{self, EtcdError, SharedEtcd, TenantEtcdUser};
use crate::provision::postgres::{self, PostgresError, SharedPostgres};
use crate::provision::tenant_access::{self, TenantAccessError};
use crate::provision::{hooks, join};
use crate::runtime::pods::{PodsError, PodsRuntime};
use crate::runtime::processes::{ProcessRuntime, RuntimeError};
use crate::runtime::start_gate::StartGate;
use crate::status::{self, ConditionState, READY, SYNCED, reason};
use crate::upstream::UpstreamCatalog;
use crate::validate::{
    self, TenantPlan, ValidateError, database_name_for_uid, system_namespace, tenant_key,
};

mod ca_rotation;
mod limits;
mod paused;
mod pods_tenant;

pub const FINALIZER: &str = "tenancy.hostplane.io/cleanup";

/// Lifetime of the bootstrap tokens worker nodes join with (kubeadm's default); a new one is
/// made when a third of it remains.
const JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Field managers, one per call site, so server-side apply never drops another site's fields.
mod manager {
    pub const NAMESPACE: &str = "hostplane-controller-namespace";
    pub const SECRETS: &str = "hostplane-controller-secrets";
    pub const STATUS: &str = "hostplane-controller-status";
    pub const DATASTORE_STATUS: &str = "hostplane-controller-datastore";
    pub const HOOKS_STATUS: &str = "hostplane-controller-hooks";
    pub const RETIRING_NODES: &str = "hostplane-controller-retiring-nodes";
}

/// Why a pass failed; the variant names the step, and becomes the condition reason and the
/// Event reason.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error("reading {what}: {source}")]
    Fetch { what: String, source: kube::Error },
    #[error("Secret {namespace}/{name} named by datastoreSecretRef {problem}")]
    DatastoreSecret {
        namespace: String,
        name: String,
        problem: &'static str,
    },
    #[error("{0}")]
    Datastore(#[from] PostgresError),
    #[error("shared etcd: {0}")]
    SharedEtcd(#[from] EtcdError),
    #[error(
        "the datastore in Secret {namespace}/{name} (datastoreSecretRef) does not work: {detail}"
    )]
    ExternalDatastore {
        namespace: String,
        name: String,
        detail: String,
    },
    #[error("tenant certificates: {0}")]
    Certificates(#[from] PkiError),
    #[error("tenant processes: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("tenant pods: {0}")]
    Pods(#[from] PodsError),
    #[error("applying {what}: {source}")]
    Apply { what: String, source: kube::Error },
    #[error("writing {what}: {source}")]
    Status { what: String, source: kube::Error },
    #[error("{0}")]
    TenantAccess(#[from] TenantAccessError),
    #[error("deleting {what}: {detail}")]
    Cleanup { what: String, detail: String },
    #[error("{0}")]
    Adopted(#[from] AdoptedError),
    #[error("tenant limits: {what}: {detail}")]
    Limits { what: String, detail: String },
}

impl ReconcileError {
    /// The reason users see in conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.reason(),
            Self::Fetch { .. } => "FetchFailed",
            Self::DatastoreSecret { .. } => "DatastoreSecretInvalid",
            Self::Datastore(_) | Self::SharedEtcd(_) => "DatastoreUnavailable",
            Self::ExternalDatastore { .. } => "ExternalDatastoreUnavailable",
            Self::Certificates(_) => "CertificatesFailed",
            Self::Runtime(e) => e.reason(),
            Self::Pods(e) => e.reason(),
            Self::Apply { .. } => "ApplyFailed",
            Self::Status { .. } => "StatusFailed",
            Self::TenantAccess(_) => "TenantAccessFailed",
            Self::Cleanup { .. } => "CleanupFailed",
            Self::Adopted(e) => e.reason(),
            Self::Limits { .. } => "LimitsFailed",
        }
    }

    /// The pipeline step (DESIGN.md, "Reconcile pipeline") that failed, for the failure
    /// metric: the reason says why, the step says where.
    pub fn step(&self) -> &'static str {
        match self {
            Self::Fetch { .. }
            | Self::DatastoreSecret { .. }
            | Self::Adopted(AdoptedError::BootstrapSecret { .. }) => step::FETCH,
            Self::Invalid(_) => step::VALIDATE,
            Self::Datastore(_)
            | Self::SharedEtcd(_)
            | Self::ExternalDatastore { .. }
            | Self::Certificates(_)
            | Self::TenantAccess(_)
            | Self::Adopted(_) => step::PROVISION,
            Self::Runtime(_) | Self::Pods(_) | Self::Apply { .. } | Self::Limits { .. } => {
                step::APPLY
            }
            Self::Status { .. } => step::STATUS,
            Self::Cleanup { .. } => step::CLEANUP,
        }
    }
}

/// Names of the pipeline steps, as the failure metric labels them.
pub mod step {
    pub const FETCH: &str = "fetch";
    pub const VALIDATE: &str = "validate";
    pub const PROVISION: &str = "provision";
    pub const APPLY: &str = "apply";
    pub const STATUS: &str = "status";
    /// Teardown (the finalizer's cleanup branch), whatever part of it failed.
    pub const CLEANUP: &str = "cleanup";
    /// The finalizer helper's own writes (adding or removing the finalizer).
    pub const FINALIZER: &str = "finalizer";
}

/// The labels a failed pass is counted under.
fn failure_labels(error: &finalizer::Error<ReconcileError>) -> FailureLabels {
    let (step, reason) = match error {
        finalizer::Error::ApplyFailed(e) => (e.step(), e.reason()),
        finalizer::Error::CleanupFailed(e) => (step::CLEANUP, e.reason()),
        _ => (step::FINALIZER, "FinalizerFailed"),
    };
    FailureLabels {
        step: step.into(),
        reason: reason.into(),
    }
}

/// Everything a pass needs, shared by all passes.
pub struct Context {
    pub client: kube::Client,
    pub config: ControllerConfig,
    pub catalog: UpstreamCatalog,
    pub runtime: ProcessRuntime,
    /// The pods runtime (used when `config.runtime` is `Pods`).
    pub pods: PodsRuntime,
    pub postgres: Option<SharedPostgres>,
    pub shared_etcd: Option<SharedEtcd>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Bounds how many tenants of the processes runtime start at once.
    pub starts: StartGate,
    /// Pauses and resumes announced by this controller, so each is announced once.
    pub pause_announcements: paused::Announcements,
}

impl Context {
    pub fn new(
        client: kube::Client,
        config: ControllerConfig,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let catalog = UpstreamCatalog::scan(&config.upstream_root)?;
        let postgres = config
            .postgres_dsn
            .as_deref()
            .map(SharedPostgres::from_dsn)
            .transpose()?;
        let shared_etcd = config
            .shared_etcd
            .as_ref()
            .map(SharedEtcd::from_files)
            .transpose()?;
        let reporter = Reporter {
            controller: "hostplane-controller".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Ok(Self {
            metrics: Arc::default(),
            recorder: Recorder::new(client.clone(), reporter),
            runtime: tenant_process_runtime(&config),
            starts: StartGate::new(config.max_starting_tenants),
            pause_announcements: Default::default(),
            pods: PodsRuntime::new(client.clone()),
            client,
            config,
            catalog,
            postgres,
            shared_etcd,
        })
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let cps = Api::<ControlPlane>::all(ctx.client.clone());
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        objects::MANAGED_BY_LABEL,
        objects::MANAGED_BY
    ));
    info!(versions = ?ctx.catalog.minors(), shared_postgres = ctx.postgres.as_ref().map(|p| p.target()), "controller starting");
    // Not `owns`: it maps a child to an owner in the child's own namespace, and a ControlPlane is
    // cluster-scoped, so every Secret change started a second, concurrent pass under a
    // namespaced key (two tokens minted, two CAs generated). The label names the ControlPlane.
    let controller = Controller::new(cps, watcher::Config::default())
        .watches(
            Api::<Secret>::all(ctx.client.clone()),
            owned.clone(),
            owning_controlplane,
        )
        .watches(
            Api::<Namespace>::all(ctx.client.clone()),
            owned.clone(),
            owning_controlplane,
        );
    // The pods runtime's readiness is its Deployment's status: a change there starts a pass.
    let controller = match ctx.config.runtime {
        TenantRuntime::Pods => controller
            .watches(
                Api::<Deployment>::all(ctx.client.clone()),
                owned.clone(),
                owning_controlplane,
            )
            .watches(
                Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(ctx.client.clone()),
                owned,
                owning_controlplane,
            ),
        TenantRuntime::Processes => controller,
    };
    // Usage is sampled where passes run: on the leader only, and for as long as they run.
    let usage_sampler = tokio::spawn(crate::usage::run(ctx.clone()));
    controller
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    usage_sampler.abort();
}

/// The ControlPlane an object of ours belongs to, by its label (cluster-scoped: no namespace).
fn owning_controlplane<K: Resource>(object: K) -> Option<ObjectRef<ControlPlane>> {
    let name = object
        .meta()
        .labels
        .as_ref()?
        .get(objects::CONTROLPLANE_LABEL)?;
    Some(ObjectRef::new(name))
}

/// The processes runtime, enforcing tenants' CPU limits with control groups where the machine
/// lets it (the pods runtime leaves that to the kubelet).
fn tenant_process_runtime(config: &ControllerConfig) -> ProcessRuntime {
    let runtime = ProcessRuntime::new(config.state_dir.join("tenants"));
    if config.runtime != TenantRuntime::Processes {
        return runtime;
    }
    match crate::runtime::cgroup::CpuGroups::detect() {
        Ok(groups) => runtime.with_cpu_groups(groups),
        Err(e) => {
            warn!("tenant CPU limits (limits.maxCpuMillicores) cannot be enforced: {e}");
            runtime
        }
    }
}

#[instrument(skip(cp, ctx), fields(controlplane = %cp.name_any()))]
async fn reconcile(
    cp: Arc<ControlPlane>,
    ctx: Arc<Context>,
) -> Result<Action, finalizer::Error<ReconcileError>> {
    let api = Api::<ControlPlane>::all(ctx.client.clone());
    let started = std::time::Instant::now();
    // Decided before the finalizer helper, so a paused ControlPlane's deletion waits as well
    // (Cluster API's convention; why in `paused`).
    let decision = paused::decide(&cp);
    let result = match decision {
        paused::Decision::Hold { announce } => paused::hold(&cp, &ctx, announce)
            .await
            .map_err(finalizer::Error::ApplyFailed),
        paused::Decision::Resume | paused::Decision::Reconcile => {
            // Without our finalizer this pass only adds it, and the next one would announce
            // the resume a second time.
            if decision == paused::Decision::Resume
                && cp.finalizers().iter().any(|f| f == FINALIZER)
            {
                paused::announce_resume(&cp, &ctx).await;
            }
            finalizer(&api, FINALIZER, cp, |event| async {
                match event {
                    finalizer::Event::Apply(cp) => apply_branch(&cp, &ctx).await,
                    finalizer::Event::Cleanup(cp) => cleanup_branch(&cp, &ctx).await,
                }
            })
            .await
        }
    };
    ctx.metrics.reconciles.inc();
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_failures
            .get_or_create(&failure_labels(e))
            .inc();
    }
    result
}

fn error_policy(
    cp: Arc<ControlPlane>,
    error: &finalizer::Error<ReconcileError>,
    _ctx: Arc<Context>,
) -> Action {
    warn!(controlplane = %cp.name_any(), %error, "pass failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn publish(ctx: &Context, cp: &ControlPlane, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cp.object_ref(&())).await {
        warn!(error = %e, "cannot publish Event");
    }
}

/// Creates or repairs the tenant, then reports. Errors are written to status before returning.
async fn apply_branch(cp: &ControlPlane, ctx: &Context) -> Result<Action, ReconcileError> {
    // host and external types hand out a cluster that exists already: no processes to run.
    if adopted::is_adopted(cp) {
        return adopted_branch(cp, ctx).await;
    }
    let plan = match validate::validate(cp, &ctx.catalog, &ctx.config.default_limits) {
        Ok(plan) => plan,
        Err(e) => {
            // A spec we cannot build: say so and wait for it to change (no hot retry loop).
            let ready = ConditionState::new(false, e.reason(), e.to_string());
            let synced = ConditionState::new(false, reason::RECONCILE_ERROR, e.to_string());
            record_hooks_waiting(ctx, cp, &ready).await?;
            write_status(ctx, cp, ready, synced, None).await?;
            publish(ctx, cp, EventType::Warning, e.reason(), e.to_string()).await;
            return Ok(Action::await_change());
        }
    };
    let sleep = hibernation::Inputs::of(cp, ctx.config.idle_after, ctx.config.proxy.is_some());
    let recheck_at = match hibernation::decide(&sleep, Timestamp::now()) {
        Decision::Hibernate { why } => return hibernate(cp, &plan, ctx, why, &sleep).await,
        Decision::Run { recheck_at } => recheck_at,
    };
    let was_ready = cp
        .status
        .as_ref()
        .is_some_and(|s| status::is_ready(&s.conditions));
    // A starting tenant gets a few seconds to answer within this pass; one that was Ready is
    // checked once, so an outage is reported at once.
    let patience = if was_ready {
        Duration::ZERO
    } else {
        ctx.config.startup_wait
    };
    match provision_tenant(cp, &plan, ctx, patience).await {
        Ok(Progress::Ready(report)) => {
            let waiting: Vec<String> = report
                .hooks
                .iter()
                .filter(|h| h.phase != HookPhase::Succeeded)
                .map(|h| format!("{} ({:?})", h.name, h.phase))
                .collect();
            let ready = if cp.spec.wait_for_post_create_hooks == Some(true) && !waiting.is_empty() {
                ConditionState::new(
                    false,
                    reason::WAITING_FOR_HOOKS,
                    format!("waiting for post-create hooks: {}", waiting.join(", ")),
                )
            } else {
                ConditionState::new(
                    true,
                    reason::AVAILABLE,
                    format!("tenant API server is ready at {}", report.endpoint),
                )
            };
            let synced = pods_tenant::synced_when_ready(ctx, cp, &report).await;
            // Hooks first: whoever sees Ready=True (waiting for hooks or not) must also see
            // postCreateHookCompleted and the hook phases that allowed it.
            record_hooks(ctx, cp, &report.hooks).await?;
            write_status(ctx, cp, ready, synced, Some(&report)).await?;
            if !was_ready {
                publish(
                    ctx,
                    cp,
                    EventType::Normal,
                    reason::AVAILABLE,
                    format!("tenant API server ready at {}", report.endpoint),
                )
                .await;
            }
            // Checked again at the health interval, so an outage shows up in status.
            let until_renewal = report.renew_at.duration_since(Timestamp::now());
            let requeue = until_renewal
                .try_into()
                .unwrap_or(Duration::from_secs(1))
                .clamp(
                    Duration::from_secs(1),
                    ctx.config.health_interval.min(ctx.config.resync),
                );
            // Hooks being retried or Jobs being watched bring the pass back sooner.
            let requeue = report.hooks_recheck_in.map_or(requeue, |r| requeue.min(r));
            // Back when the tenant would have been idle long enough to hibernate.
            let requeue = recheck_at
                .and_then(|at| Duration::try_from(at.duration_since(Timestamp::now())).ok())
                .map_or(requeue, |idle_in| {
                    requeue.min(idle_in.max(Duration::from_millis(100)))
                });
            Ok(Action::requeue(requeue))
        }
        Ok(Progress::Starting { endpoint, detail }) => {
            let (why, message) = if was_ready {
                (
                    reason::UNAVAILABLE,
                    format!("tenant API server at {endpoint} is not ready: {detail}"),
                )
            } else {
                (
                    reason::CREATING,
                    format!("waiting for the tenant API server at {endpoint}: {detail}"),
                )
            };
            let ready = ConditionState::new(false, why, message.clone());
            record_hooks_waiting(ctx, cp, &ready).await?;
            write_status(
                ctx,
                cp,
                ready,
                ConditionState::new(true, reason::RECONCILE_SUCCESS, ""),
                None,
            )
            .await?;
            if was_ready {
                publish(ctx, cp, EventType::Warning, why, message).await;
            }
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Err(e) => {
            let ready = ConditionState::new(false, e.reason(), e.to_string());
            let synced = ConditionState::new(false, reason::RECONCILE_ERROR, e.to_string());
            if let Err(status_err) = record_hooks_waiting(ctx, cp, &ready).await {
                warn!(error = %status_err, "cannot write hook status");
            }
            if let Err(status_err) = write_status(ctx, cp, ready, synced, None).await {
                warn!(error = %status_err, "cannot write status");
            }
            publish(ctx, cp, EventType::Warning, e.reason(), e.to_string()).await;
            Err(e)
        }
    }
}

/// Stops the tenant's processes and keeps them stopped, its datastore and Secrets untouched.
async fn hibernate(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    why: hibernation::Why,
    sleep: &hibernation::Inputs,
) -> Result<Action, ReconcileError> {
    ctx.runtime.stop(&plan.key()).await;
    ctx.starts.release(&plan.key());
    if ctx.config.runtime == TenantRuntime::Pods {
        ctx.pods.stop(&plan.name).await?;
    }
    let message = why.message(sleep.idle_after);
    write_status(
        ctx,
        cp,
        ConditionState::new(false, reason::HIBERNATED, message.clone()),
        ConditionState::new(true, reason::RECONCILE_SUCCESS, ""),
        None,
    )
    .await?;
    if sleep.hibernated_at.is_none() {
        info!(controlplane = %plan.name, "hibernated: {message}");
        publish(ctx, cp, EventType::Normal, reason::HIBERNATED, message).await;
    }
    // A wake request or a spec change arrives as a watch event; the resync is a safety net.
    Ok(Action::requeue(ctx.config.resync))
}

enum Progress {
    /// Processes run but the API server does not answer /readyz yet.
    Starting {
        endpoint: String,
        detail: String,
    },
    Ready(ReadyReport),
}

struct ReadyReport {
    endpoint: String,
    version: String,
    renew_at: Timestamp,
    hooks: Vec<HookStatus>,
    hooks_recheck_in: Option<Duration>,
    /// The tenant is available but the controller cannot reach it (pods runtime, controller
    /// outside the host's network): reported in Synced, not Ready.
    unreachable: Option<String>,
    /// The `QuotaExceeded` condition to write (`reconcile::limits`); `None` leaves it as it is.
    quota: Option<ConditionState>,
}

async fn get_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, ReconcileError> {
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ReconcileError::Fetch {
            what: format!("Secret {namespace}/{name}"),
            source,
        })
}

async fn apply_secret(ctx: &Context, secret: &Secret) -> Result<(), ReconcileError> {
    let name = secret.name_any();
    let ns = secret.namespace().unwrap_or_default();
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(manager::SECRETS).force(),
            &Patch::Apply(secret),
        )
        .await
        .map_err(|source| ReconcileError::Apply {
            what: format!("Secret {ns}/{name}"),
            source,
        })?;
    Ok(())
}

/// Provision and apply: everything up to a ready tenant with a fresh kubeconfig.
async fn provision_tenant(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    patience: Duration,
) -> Result<Progress, ReconcileError> {
    // The namespace holding the tenant's Secrets.
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            &plan.namespace,
            &PatchParams::apply(manager::NAMESPACE).force(),
            &Patch::Apply(objects::system_namespace(plan)),
        )
        .await
        .map_err(|source| ReconcileError::Apply {
            what: format!("Namespace {}", plan.namespace),
            source,
        })?;

    let store = ensure_datastore(cp, plan, ctx).await?;

    // Certificates: created if missing, leaves renewed when due, CAs never replaced.
    let existing = get_secret(ctx, &plan.namespace, CERTS_SECRET)
        .await?
        .map(|s| objects::secret_strings(&s))
        .unwrap_or_default();
    let request = PkiRequest {
        cluster_name: plan.name.clone(),
        apiserver_sans: [
            plan.name.clone(),
            format!("{}.{}.svc", plan.name, plan.namespace),
            format!("{}.{}.svc.cluster.local", plan.name, plan.namespace),
        ]
        .into_iter()
        .chain(ctx.config.proxy.as_ref().map(|p| p.tenant_host(&plan.name)))
        .collect(),
        ca_validity: ctx.config.ca_validity,
        leaf_validity: ctx.config.leaf_validity,
    };
    // With a CA rotation (annotation `rotate-ca`) moved on as far as its stages allow.
    let rotation = ca_rotation::ensure_pki(cp, plan, ctx, &existing, &request)?;
    let pki = with_datastore_pki(rotation.files, &existing, &store, &request, plan, ctx)?;
    if pki != existing {
        // Stored before any process uses it: a crash here must not lose a CA in use.
        apply_secret(ctx, &objects::certs_secret(plan, &pki)).await?;
    }
    ca_rotation::record(ctx, cp, rotation.record.as_ref()).await?;

    if ctx.config.runtime == TenantRuntime::Pods {
        return pods_tenant::provision(cp, plan, ctx, &store, &pki).await;
    }
    let key = plan.key();
    let ports = ctx.runtime.ports(&key)?;
    let dir = ctx.runtime.tenant_dir(&key);
    let bundle = control_plane_bundle(&BundleInput {
        name: &plan.name,
        dir: &dir,
        release: &plan.release,
        ports,
        pki: &pki,
        store: &store,
        workers: hooks::wants_workers(cp),
        limits: Some(&plan.limits),
    });
    let endpoint = format!("https://127.0.0.1:{}", ports.apiserver);
    // A tenant whose processes are not running starts only in its turn (`runtime::start_gate`).
    // Running ones need no turn: a restarted controller adopts a Ready tenant's processes, and
    // waiting for a turn would report it Unavailable while it serves.
    if ctx.runtime.pids(&key).is_empty()
        && let Err(busy) = ctx.starts.admit(&key)
    {
        return Ok(Progress::Starting {
            endpoint,
            detail: busy.to_string(),
        });
    }
    ctx.runtime.ensure(&key, &bundle).await?;

    let client = tenant_access::controller_client(&endpoint, &pki).await?;
    if let Err(e) = wait_ready(&client, patience).await {
        return Ok(Progress::Starting {
            endpoint,
            detail: e.to_string(),
        });
    }
    ctx.runtime.mark_api_ready(&key);
    ctx.starts.release(&key);
    serve_tenant(cp, plan, ctx, &client, endpoint, &pki).await
}

/// Once the tenant API server answers (either runtime): its admin account, the handed-out
/// kubeconfig, the download endpoint's minter Secret, worker join material and post-create hooks.
async fn serve_tenant(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
    client: &kube::Client,
    endpoint: String,
    pki: &pki::PkiFiles,
) -> Result<Progress, ReconcileError> {
    tenant_access::ensure_admin_account(client).await?;
    let renew_at = ensure_kubeconfig(plan, ctx, client, &endpoint, pki).await?;
    let renew_at = renew_at.min(ensure_minter(plan, ctx, client, pki).await?);
    let quota = limits::enforce(cp, plan, ctx, client, pki).await?;
    // Back when a certificate is due as well, so that short leaf lifetimes never lapse.
    let renew_at = pki::next_renewal(pki)
        .into_iter()
        .chain(pki::rotation::next_stage_at(
            pki,
            ca_rotation::overlap(plan, ctx),
        ))
        .filter_map(|due| Timestamp::try_from(due).ok())
        .fold(renew_at, Timestamp::min);
    // Hooks run once the tenant answers and its kubeconfig Secret exists.
    let join_endpoint = match &ctx.config.proxy {
        // Nodes dial the tenant by name at the proxy (the serving cert carries that name).
        Some(proxy) => format!(
            "{}:{}",
            proxy.tenant_host(&plan.name),
            proxy
                .address
                .rsplit_once(':')
                .map_or("443", |(_, port)| port)
        ),
        None => endpoint.trim_start_matches("https://").to_string(),
    };
    let ca_pem = pki.get("ca.crt").cloned().unwrap_or_default();
    let join_vars: hooks::JoinVars<'_> = Box::new(|| {
        let (client, join_endpoint, ca_pem) = (&client, &join_endpoint, &ca_pem);
        Box::pin(async move {
            let input = join::JoinInput {
                config: JoinConfig {
                    cluster_name: &plan.name,
                    endpoint: join_endpoint,
                    ca_pem,
                    kubernetes_version: &plan.release.version,
                },
                token_ttl: JOIN_TOKEN_TTL,
            };
            let material = join::ensure_join(client, &input)
                .await
                .map_err(|e| format!("preparing worker node join: {e}"))?;
            Ok(BTreeMap::from([
                (JOIN_ENDPOINT_VAR.to_string(), material.endpoint.clone()),
                (BOOTSTRAP_TOKEN_VAR.to_string(), material.token.to_string()),
                (CA_CERT_HASH_VAR.to_string(), material.ca_cert_hash.clone()),
            ]))
        })
    });
    let pass = hooks::HookPass {
        timeout: ctx.config.hook_timeout,
        join_vars,
        now: Timestamp::now(),
    };
    let hooks = hooks::apply_hooks(&ctx.client, cp, plan, &pass).await;
    retire_nodes(cp, ctx, (&endpoint, pki), &hooks).await?;
    Ok(Progress::Ready(ReadyReport {
        endpoint,
        version: plan.release.version.clone(),
        renew_at,
        hooks: hooks.statuses,
        hooks_recheck_in: hooks.recheck_in,
        unreachable: None,
        quota,
    }))
}

/// Worker nodes no hook renders any more: each tenant Node drained and deleted, then its VM.
/// What is left is recorded in `status.retiringNodes` before the hook statuses stop listing
/// those VMs, so a crash or a failed step never loses a removal (and never leaks a Node).
async fn retire_nodes(
    cp: &ControlPlane,
    ctx: &Context,
    (endpoint, pki): (&str, &pki::PkiFiles),
    hooks: &hooks::HookReport,
) -> Result<(), ReconcileError> {
    let recorded = cp
        .status
        .as_ref()
        .map(|s| s.retiring_nodes.as_slice())
        .unwrap_or_default();
    let left = if hooks.retiring.is_empty() && hooks.reprieved.is_empty() {
        hooks::Retirements::default()
    } else {
        let tenant = tenant_access::drain_client(endpoint, pki).await?;
        let now = Timestamp::now();
        hooks::retire_nodes(
            &ctx.client,
            &tenant,
            hooks,
            ctx.config.node_drain_timeout,
            now,
        )
        .await
    };
    if left.remaining != recorded {
        apply_status(
            ctx,
            cp,
            manager::RETIRING_NODES,
            "status.retiringNodes",
            json!({ "retiringNodes": left.remaining }),
        )
        .await?;
    }
    Ok(())
}

/// Polls the tenant's /readyz briefly: a starting API server is usually ready within seconds,
/// and answering then beats a requeue (the ready-time benchmark measures exactly this).
async fn wait_ready(client: &kube::Client, patience: Duration) -> Result<(), TenantAccessError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match tenant_access::check_ready(client).await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The tenant's datastore: its dedicated etcd; the user's Postgres or etcd; or, for
/// `backend: shared`, its user and prefix on the shared etcd, its own database and role on the
/// shared Postgres, or SQLite. What a tenant was given is recorded in status before it is
/// created, and a recorded choice is kept: configuring a shared etcd later moves no one's data.
async fn ensure_datastore(
    cp: &ControlPlane,
    plan: &TenantPlan,
    ctx: &Context,
) -> Result<Store, ReconcileError> {
    if let Some(r) = &plan.external_datastore {
        return external_datastore(cp, r, ctx).await;
    }
    let recorded = cp
        .status
        .as_ref()
        .and_then(|s| s.datastore.as_ref())
        .map(|d| d.kind.as_str());
    if plan.backend == BackendType::Dedicated {
        // Lives in the tenant's state dir: removed with it, nothing else to record.
        record_datastore(ctx, cp, datastore_status("etcd", None)).await?;
        return Ok(Store::DedicatedEtcd);
    }
    let on_shared_etcd = match recorded {
        Some(kind) => kind == SHARED_ETCD,
        None => ctx.shared_etcd.is_some(),
    };
    if on_shared_etcd {
        let Some(shared) = &ctx.shared_etcd else {
            return Err(EtcdError::NotConfigured.into());
        };
        let tenant = TenantEtcdUser::for_uid(&plan.uid);
        // Recorded before the user exists, so a teardown after a crash knows what to remove.
        record_datastore(
            ctx,
            cp,
            datastore_status(SHARED_ETCD, Some(tenant.user.clone())),
        )
        .await?;
        shared.ensure_tenant(&tenant).await?;
        return Ok(Store::SharedEtcd {
            endpoints: shared.endpoints().to_vec(),
            prefix: tenant.apiserver_prefix,
        });
    }
    let Some(pg) = &ctx.postgres else {
        record_datastore(
            ctx,
            cp,
            DatastoreStatus {
                kind: "sqlite".into(),
                database: None,
                role: None,
            },
        )
        .await?;
        return Ok(Store::Sqlite);
    };
    let database = plan.database_name();
    // Recorded before the database exists, so a teardown after a crash knows what to drop.
    record_datastore(
        ctx,
        cp,
        DatastoreStatus {
            kind: "postgres".into(),
            database: Some(database.clone()),
            role: Some(database.clone()),
        },
    )
    .await?;
    let stored = get_secret(ctx, &plan.namespace, DATASTORE_SECRET)
        .await?
        .map(|s| objects::secret_strings(&s));
    let password = match stored.as_ref().and_then(|s| s.get("password")) {
        Some(p) => p.clone(),
        None => {
            let password = postgres::new_password();
            // Stored first: the role's password is then always recoverable.
            apply_secret(
                ctx,
                &objects::datastore_secret(plan, &password, &pg.tenant_url(&database, &password)),
            )
            .await?;
            password
        }
    };
    let admin = pg.connect().await?;
    postgres::ensure_database(&admin, &database, &password).await?;
    postgres::ensure_role_limits(
        &admin,
        &database,
        plan.limits.max_datastore_connections,
        plan.limits.statement_timeout_seconds,
    )
    .await?;
    let url = pg.tenant_url(&database, &password);
    if stored.as_ref().and_then(|s| s.get("url")) != Some(&url) {
        apply_secret(ctx, &objects::datastore_secret(plan, &password, &url)).await?;
    }
    Ok(Store::Postgres { url })
}

/// `status.datastore.kind` of a tenant on the shared etcd.
const SHARED_ETCD: &str = "shared-etcd";

fn datastore_status(kind: &str, role: Option<String>) -> DatastoreStatus {
    DatastoreStatus {
        kind: kind.into(),
        database: None,
        role,
    }
}

/// The user's datastore, from the Secret they named: key `dsn` (a Postgres URL, through Kine)
/// or `endpoints` with `ca.crt`, `tls.crt`, `tls.key` (an etcd). Checked before use, so a
/// mistake is a condition naming the Secret rather than a crash-looping API server; used as
/// given, never created or dropped by us.
async fn external_datastore(
    cp: &ControlPlane,
    r: &validate::SecretRef,
    ctx: &Context,
) -> Result<Store, ReconcileError> {
    let invalid = |problem| ReconcileError::DatastoreSecret {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        problem,
    };
    let unusable = |detail: String| ReconcileError::ExternalDatastore {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        detail,
    };
    let secret = get_secret(ctx, &r.namespace, &r.name)
        .await?
        .ok_or_else(|| invalid("does not exist"))?;
    let mut data = objects::secret_strings(&secret);
    let store = match (data.remove("dsn"), data.remove("endpoints")) {
        (Some(dsn), None) => {
            if !dsn.starts_with("postgres://") && !dsn.starts_with("postgresql://") {
                return Err(invalid("holds a dsn that is not a postgres:// URL"));
            }
            let target = SharedPostgres::from_dsn(&dsn).map_err(|e| unusable(e.to_string()))?;
            target
                .connect()
                .await
                .map_err(|e| unusable(postgres::connect_failure(&e)))?;
            Store::Postgres { url: dsn }
        }
        (None, Some(endpoints)) => {
            let endpoints = etcd::parse_endpoints(&endpoints).map_err(|_| {
                invalid("holds endpoints that are not comma-separated https:// URLs")
            })?;
            let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (
                data.remove("ca.crt"),
                data.remove("tls.crt"),
                data.remove("tls.key"),
            ) else {
                return Err(invalid(
                    "has endpoints but not all of \"ca.crt\", \"tls.crt\" and \"tls.key\"",
                ));
            };
            let tls = EtcdClientTls {
                ca_pem,
                cert_pem,
                key_pem,
            };
            etcd::check_health(&endpoints, &tls)
                .await
                .map_err(|e| unusable(e.to_string()))?;
            Store::ExternalEtcd { endpoints, tls }
        }
        (Some(_), Some(_)) => return Err(invalid("has both \"dsn\" and \"endpoints\"; keep one")),
        (None, None) => {
            return Err(invalid(
                "has neither key \"dsn\" (Postgres) nor \"endpoints\" (etcd)",
            ));
        }
    };
    record_datastore(ctx, cp, datastore_status("external", None)).await?;
    Ok(store)
}

/// The tenant PKI plus what its datastore needs: a dedicated etcd's CA and certificates, or
/// the client certificate naming its shared etcd user.
fn with_datastore_pki(
    mut pki: pki::PkiFiles,
    existing: &pki::PkiFiles,
    store: &Store,
    request: &PkiRequest,
    plan: &TenantPlan,
    ctx: &Context,
) -> Result<pki::PkiFiles, ReconcileError> {
    let now = SystemTime::now();
    match store {
        Store::DedicatedEtcd => pki.extend(pki::ensure_dedicated_etcd_pki_with_names(
            existing,
            request,
            &pods_tenant::etcd_server_names(plan, ctx),
            now,
        )?),
        Store::SharedEtcd { .. } => {
            // A SharedEtcd store is only made when the shared etcd is configured.
            if let Some(shared) = &ctx.shared_etcd {
                let user = TenantEtcdUser::for_uid(&plan.uid);
                pki.extend(pki::ensure_shared_etcd_client(
                    existing,
                    &shared.cas(),
                    &user.user,
                    request.leaf_validity,
                    now,
                )?);
            }
        }
        Store::Sqlite | Store::Postgres { .. } | Store::ExternalEtcd { .. } => {}
    }
    Ok(pki)
}

/// KubeFlex's `postCreateHooks` map and `postCreateHookCompleted`, and our `hookStatuses`,
/// under their own field manager; a Warning Event when a hook newly fails.
async fn record_hooks(
    ctx: &Context,
    cp: &ControlPlane,
    hooks: &[HookStatus],
) -> Result<(), ReconcileError> {
    let previous = cp
        .status
        .as_ref()
        .map(|s| s.hook_statuses.as_slice())
        .unwrap_or_default();
    if previous == hooks {
        return Ok(());
    }
    for hook in hooks.iter().filter(|h| h.phase == HookPhase::Failed) {
        if !previous.contains(hook) {
            publish(
                ctx,
                cp,
                EventType::Warning,
                hooks::failure_reason(&hook.message),
                hook.message.clone(),
            )
            .await;
        }
    }
    // KubeFlex's map says whether each hook's objects were applied.
    let applied: BTreeMap<&str, bool> = hooks
        .iter()
        .map(|h| {
            let applied = matches!(h.phase, HookPhase::Applied | HookPhase::Succeeded);
            (h.name.as_str(), applied)
        })
        .collect();
    let status = json!({
        "postCreateHooks": applied,
        "hookStatuses": hooks,
        "postCreateHookCompleted": hooks::all_succeeded(hooks),
    });
    apply_status(
        ctx,
        cp,
        manager::HOOKS_STATUS,
        "status.hookStatuses",
        status,
    )
    .await
}

/// Hooks of a tenant that is not Ready (`ready`): those not applied yet are Pending, waiting
/// for it.
async fn record_hooks_waiting(
    ctx: &Context,
    cp: &ControlPlane,
    ready: &ConditionState,
) -> Result<(), ReconcileError> {
    let waiting_for = format!("the tenant to be Ready (now {})", ready.reason);
    record_hooks(ctx, cp, &hooks::waiting_statuses(cp, &waiting_for)).await
}

async fn record_datastore(
    ctx: &Context,
    cp: &ControlPlane,
    datastore: DatastoreStatus,
) -> Result<(), ReconcileError> {
    if cp.status.as_ref().and_then(|s| s.datastore.as_ref()) == Some(&datastore) {
        return Ok(());
    }
    apply_status(
        ctx,
        cp,
        manager::DATASTORE_STATUS,
        "status.datastore",
        json!({ "datastore": datastore }),
    )
    .await
}

/// Mints a new token when the handed-out one is due, and returns when the next renewal is.
async fn ensure_kubeconfig(
    plan: &TenantPlan,
    ctx: &Context,
    tenant: &kube::Client,
    endpoint: &str,
    pki: &pki::PkiFiles,
) -> Result<Timestamp, ReconcileError> {
    let wanted_server = match &ctx.config.proxy {
        Some(proxy) => format!("https://{}", proxy.address),
        None => endpoint.to_string(),
    };
    let current = get_secret(ctx, &plan.namespace, KUBECONFIG_SECRET).await?;
    let times = current.as_ref().and_then(token_times);
    // The CAs to trust (two during a CA rotation): a kubeconfig with others is re-issued.
    let ca = pki::rotation::trusted(pki).unwrap_or_default();
    let server_matches = current.as_ref().is_some_and(|s| {
        let data = objects::secret_strings(s);
        data.get(KUBECONFIG_KEY)
            .is_some_and(|k| k.contains(&wanted_server) && kubeconfig::trusts_exactly(k, ca))
            && data
                .get(KUBECONFIG_INCLUSTER_KEY)
                .is_some_and(|k| kubeconfig::trusts_exactly(k, ca))
    });
    let fraction = ctx.config.token_renew_fraction;
    if let Some((issued, expires)) = times
        && server_matches
        && !tenant_access::token_due(
            issued,
            expires,
            plan.token_ttl_seconds,
            fraction,
            Timestamp::now(),
        )
    {
        return Ok(tenant_access::renew_at(issued, expires, fraction));
    }
    let minted = tenant_access::mint_token(tenant, plan.token_ttl_seconds).await?;
    // Inside the host, workloads reach the tenant directly; people go through the proxy when
    // there is one, naming the tenant by SNI.
    let incluster = kubeconfig::to_yaml(&kubeconfig::handed_out(
        &plan.name,
        endpoint,
        ca,
        &minted.token,
        None,
    ));
    let external = kubeconfig::to_yaml(&kubeconfig::handed_out(
        &plan.name,
        endpoint,
        ca,
        &minted.token,
        ctx.config.proxy.as_ref(),
    ));
    let secret = objects::kubeconfig_secret(
        plan,
        &external,
        &incluster,
        &minted.issued_at.to_string(),
        &minted.expires_at.to_string(),
    );
    apply_secret(ctx, &secret).await?;
    info!(controlplane = %plan.name, expires_at = %minted.expires_at, "issued kubeconfig token");
    Ok(tenant_access::renew_at(
        minted.issued_at,
        minted.expires_at,
        fraction,
    ))
}

/// The lifetime of the token a Secret holds, from the annotations it was written with.
fn token_times(secret: &Secret) -> Option<(Timestamp, Timestamp)> {
    let a = secret.metadata.annotations.as_ref()?;
    let issued: Timestamp = a.get(objects::TOKEN_ISSUED_AT)?.parse().ok()?;
    let expires: Timestamp = a.get(objects::TOKEN_EXPIRES_AT)?.parse().ok()?;
    Some((issued, expires))
}

/// Keeps `<cp>-system/kubeconfig-minter` current for the download endpoint (`build::minter`):
/// the CAs handed-out kubeconfigs trust and a token that may only mint handed-out tokens,
/// renewed like the handed-out token and re-issued when the CAs change. Returns when the next
/// renewal is.
async fn ensure_minter(
    plan: &TenantPlan,
    ctx: &Context,
    tenant: &kube::Client,
    pki: &pki::PkiFiles,
) -> Result<Timestamp, ReconcileError> {
    let ca = pki::rotation::trusted(pki).unwrap_or_default();
    let fraction = ctx.config.token_renew_fraction;
    let current = get_secret(ctx, &plan.namespace, minter::MINTER_SECRET).await?;
    if let Some(current) = &current
        && let Some((issued, expires)) = token_times(current)
        && objects::secret_strings(current)
            .get(minter::MINTER_CA_KEY)
            .is_some_and(|held| held == ca)
        && !tenant_access::token_due(
            issued,
            expires,
            minter::MINTER_TOKEN_TTL_SECONDS,
            fraction,
            Timestamp::now(),
        )
    {
        return Ok(tenant_access::renew_at(issued, expires, fraction));
    }
    // The account and its Role are applied when a token is minted, not on every pass: a pass
    // writes nothing to a tenant that needs nothing (and a tenant whose datastore hangs would
    // hold each write for a minute).
    tenant_access::ensure_minter_account(tenant).await?;
    let minted = tenant_access::mint_minter_token(tenant).await?;
    let secret = minter::minter_secret(
        plan,
        ca,
        &minted.token,
        &minted.issued_at.to_string(),
        &minted.expires_at.to_string(),
    );
    apply_secret(ctx, &secret).await?;
    info!(controlplane = %plan.name, expires_at = %minted.expires_at, "issued kubeconfig minter token");
    Ok(tenant_access::renew_at(
        minted.issued_at,
        minted.expires_at,
        fraction,
    ))
}

async fn write_status(
    ctx: &Context,
    cp: &ControlPlane,
    ready: ConditionState,
    synced: ConditionState,
    report: Option<&ReadyReport>,
) -> Result<(), ReconcileError> {
    let previous = cp.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let state = ready.reason.clone();
    let ready_now = ready.status;
    let first_ready = status::first_ready(&previous, ready_now);
    let hibernated = ready.reason == reason::HIBERNATED;
    let mut updates = vec![(READY, ready), (SYNCED, synced)];
    // Written with Ready: the list is one field, and a second writer would race this one.
    if let Some(quota) = report.and_then(|r| r.quota.clone()) {
        updates.push((crate::quota::QUOTA_EXCEEDED, quota));
    }
    let status = owned_status(
        cp,
        &updates,
        cp.metadata.generation.unwrap_or_default(),
        hibernated,
        report,
        &now,
    );
    apply_status(ctx, cp, manager::STATUS, "status", status).await?;
    // Metrics follow what status says, so only once it was written (a ControlPlane deleted
    // meanwhile must not come back as a series).
    ctx.metrics.set_tenant_state(&cp.name_any(), Some(&state));
    if ready_now {
        let provisioning = first_ready.then(|| provisioning_time(cp, now.0));
        if ctx
            .metrics
            .tenant_ready(&cp.uid().unwrap_or_default(), provisioning)
        {
            info!(controlplane = %cp.name_any(), seconds = ?provisioning, "first Ready");
        }
    }
    Ok(())
}

/// The whole status `manager::STATUS` owns: `updates` merged into the conditions, the
/// observed generation, and what was recorded before (endpoint, version, secretRef and
/// `hibernatedAt` while `hibernated`) unless `report` says it anew. Fields left out of a later
/// apply are removed, so every writer of this manager goes through here.
fn owned_status(
    cp: &ControlPlane,
    updates: &[(&str, ConditionState)],
    observed_generation: i64,
    hibernated: bool,
    report: Option<&ReadyReport>,
    now: &Time,
) -> serde_json::Value {
    let previous = cp.status.clone().unwrap_or_default();
    let conditions = status::merge_conditions(&previous.conditions, updates, now);
    let mut status = json!({
        "conditions": conditions,
        "observedGeneration": observed_generation,
    });
    // Once ready, endpoint, version and secretRef stay (an outage does not erase where it lives).
    let endpoint = report
        .map(|r| r.endpoint.clone())
        .or(previous.endpoint.clone());
    let version = report
        .map(|r| r.version.clone())
        .or(previous.version.clone());
    if let Some(endpoint) = endpoint {
        status["endpoint"] = json!(endpoint);
    }
    if let Some(version) = version {
        status["version"] = json!(version);
    }
    if hibernated {
        status["hibernatedAt"] = json!(previous.hibernated_at.unwrap_or(now.clone()));
    }
    if report.is_some() || previous.secret_ref.is_some() {
        status["secretRef"] = json!(SecretReference {
            name: KUBECONFIG_SECRET.into(),
            namespace: system_namespace(&cp.name_any()),
            key: KUBECONFIG_KEY.into(),
            in_cluster_key: KUBECONFIG_INCLUSTER_KEY.into(),
        });
    }
    status
}

/// From the ControlPlane's creation to `now` (zero when clocks disagree).
fn provisioning_time(cp: &ControlPlane, now: Timestamp) -> Duration {
    cp.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|created| Duration::try_from(now.duration_since(created.0)).ok())
        .unwrap_or_default()
}

/// Server-side apply of part of the status, owned by `manager`: fields another call site owns
/// (through its own manager) are left alone.
async fn apply_status(
    ctx: &Context,
    cp: &ControlPlane,
    manager: &str,
    what: &str,
    status: serde_json::Value,
) -> Result<(), ReconcileError> {
    let patch = json!({ "apiVersion": "tenancy.hostplane.io/v1alpha1", "kind": "ControlPlane", "status": status });
    Api::<ControlPlane>::all(ctx.client.clone())
        .patch_status(
            &cp.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|source| ReconcileError::Status {
            what: what.into(),
            source,
        })?;
    Ok(())
}

/// Tears the tenant down: processes and state dir, database and role, namespace. Every step
/// tolerates finding its work already done, so a teardown interrupted by a crash resumes.
async fn cleanup_branch(cp: &ControlPlane, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = cp.name_any();
    let uid = cp.uid().unwrap_or_default();
    let ready = ConditionState::new(
        false,
        reason::DELETING,
        "tearing down the tenant control plane",
    );
    if let Err(e) = write_status(
        ctx,
        cp,
        ready,
        ConditionState::new(true, reason::RECONCILE_SUCCESS, ""),
        None,
    )
    .await
    {
        warn!(error = %e, "cannot write Deleting status");
    }
    ctx.runtime.remove(&tenant_key(&name, &uid)).await?;
    ctx.starts.release(&tenant_key(&name, &uid));
    if ctx.config.runtime == TenantRuntime::Pods {
        ctx.pods.remove(&name).await?;
    }

    let recorded: Option<&DatastoreStatus> = cp
        .status
        .as_ref()
        .and_then(|s: &ControlPlaneStatus| s.datastore.as_ref());
    let database = recorded
        .and_then(|d| d.database.clone())
        .unwrap_or_else(|| database_name_for_uid(&uid));
    // The datastore is recorded in status before it is created, so what status does not name
    // was never created by us.
    match (&ctx.postgres, recorded.map(|d| d.kind.as_str())) {
        (Some(pg), Some("postgres")) => {
            let admin = pg.connect().await?;
            postgres::drop_database(&admin, &database).await?;
        }
        (None, Some("postgres")) => {
            return Err(ReconcileError::Cleanup {
                what: format!("database {database}"),
                detail: "it lives on a shared Postgres, but this controller has no Postgres DSN configured".into(),
            });
        }
        (_, Some(SHARED_ETCD)) => match &ctx.shared_etcd {
            Some(shared) => shared.remove_tenant(&TenantEtcdUser::for_uid(&uid)).await?,
            None => {
                return Err(ReconcileError::Cleanup {
                    what: format!("etcd keys under {}", TenantEtcdUser::for_uid(&uid).key_prefix),
                    detail: "they live on the shared etcd, but this controller has no --shared-etcd-endpoints configured".into(),
                });
            }
        },
        // SQLite and a dedicated etcd live in the state dir (removed above); an external
        // datastore is the user's.
        _ => {}
    }

    // Host bindings or external-cluster accounts of host/external types; their credentials
    // are in the namespace, so this comes first.
    adopted::cleanup_adopted(cp, &ctx.client).await?;
    // Cluster-scoped hook objects would outlive the namespace.
    hooks::remove_all(&ctx.client, cp)
        .await
        .map_err(|detail| ReconcileError::Cleanup {
            what: "post-create hook objects".into(),
            detail,
        })?;
    let namespace = system_namespace(&name);
    match Api::<Namespace>::all(ctx.client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            return Err(ReconcileError::Cleanup {
                what: format!("Namespace {namespace}"),
                detail: e.to_string(),
            });
        }
    }
    publish(
        ctx,
        cp,
        EventType::Normal,
        "Deleted",
        format!("tenant control plane {name} torn down"),
    )
    .await;
    // Gone once the finalizer helper removes the finalizer; a failed removal runs this branch
    // again, which writes Deleting back first.
    ctx.metrics.forget_tenant(&name, &uid);
    Ok(Action::await_change())
}

/// The apply branch of `host` and `external` ControlPlanes: hand out (and renew) a token for
/// the cluster, then report it as for a tenant.
async fn adopted_branch(cp: &ControlPlane, ctx: &Context) -> Result<Action, ReconcileError> {
    let was_ready = cp
        .status
        .as_ref()
        .is_some_and(|s| status::is_ready(&s.conditions));
    let adopted_ctx = adopted::AdoptedContext {
        host: &ctx.client,
        host_access: ctx.config.host_access.as_ref(),
        token_renew_fraction: ctx.config.token_renew_fraction,
    };
    let report = match adopted::apply_adopted(cp, &adopted_ctx).await {
        Ok(report) => report,
        Err(e) => {
            let e = ReconcileError::from(e);
            let ready = ConditionState::new(false, e.reason(), e.to_string());
            let synced = ConditionState::new(false, reason::RECONCILE_ERROR, e.to_string());
            if let Err(status_err) = write_status(ctx, cp, ready, synced, None).await {
                warn!(error = %status_err, "cannot write status");
            }
            publish(ctx, cp, EventType::Warning, e.reason(), e.to_string()).await;
            return Err(e);
        }
    };
    if let Some(note) = &report.bootstrap_consumed {
        publish(
            ctx,
            cp,
            EventType::Normal,
            "BootstrapConsumed",
            note.clone(),
        )
        .await;
    }
    let message = format!(
        "{} cluster at {} handed out",
        cp.spec.type_.as_str(),
        report.endpoint
    );
    let ready_report = ReadyReport {
        endpoint: report.endpoint,
        version: report.version,
        renew_at: report.renew_at,
        hooks: Vec::new(),
        hooks_recheck_in: None,
        unreachable: None,
        quota: None,
    };
    write_status(
        ctx,
        cp,
        ConditionState::new(true, reason::AVAILABLE, message.clone()),
        ConditionState::new(true, reason::RECONCILE_SUCCESS, ""),
        Some(&ready_report),
    )
    .await?;
    if !was_ready {
        publish(ctx, cp, EventType::Normal, reason::AVAILABLE, message).await;
    }
    let until_renewal = ready_report.renew_at.duration_since(Timestamp::now());
    let requeue = until_renewal
        .try_into()
        .unwrap_or(Duration::from_secs(1))
        .clamp(
            Duration::from_secs(1),
            ctx.config.health_interval.min(ctx.config.resync),
        );
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(step: &str, reason: &str) -> FailureLabels {
        FailureLabels {
            step: step.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn failures_are_counted_by_the_step_that_failed_and_its_reason() {
        let secret = || ReconcileError::DatastoreSecret {
            namespace: "ns".into(),
            name: "dsn".into(),
            problem: "does not exist",
        };
        let limits = ReconcileError::Limits {
            what: "ResourceQuota".into(),
            detail: "refused".into(),
        };
        let cleanup = || ReconcileError::Cleanup {
            what: "Namespace acme-system".into(),
            detail: "refused".into(),
        };
        let cases = [
            (
                finalizer::Error::ApplyFailed(secret()),
                labels("fetch", "DatastoreSecretInvalid"),
            ),
            (
                finalizer::Error::ApplyFailed(ReconcileError::Adopted(
                    AdoptedError::HostAccessUnknown,
                )),
                labels("provision", "HostAccessUnknown"),
            ),
            (
                finalizer::Error::ApplyFailed(limits),
                labels("apply", "LimitsFailed"),
            ),
            // Whatever fails during teardown, the step is the teardown.
            (
                finalizer::Error::CleanupFailed(secret()),
                labels("cleanup", "DatastoreSecretInvalid"),
            ),
            (
                finalizer::Error::CleanupFailed(cleanup()),
                labels("cleanup", "CleanupFailed"),
            ),
            (
                finalizer::Error::UnnamedObject,
                labels("finalizer", "FinalizerFailed"),
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(failure_labels(&error), expected, "{error}");
        }
    }
}
