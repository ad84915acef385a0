//! Usage metering: every `--usage-interval-seconds` the leader samples what each tenant uses —
//! CPU time and memory of its control plane components, what it keeps in its datastore, the API
//! requests it served — into `status.usage` and the tenant-labelled `hostplane_tenant_*`
//! metrics. Storage limits (`quota`) read `status.usage.storageBytes`.
//!
//! A sample never fails as a whole: what cannot be measured this time keeps its last figure
//! (a datastore that does not answer for a moment must not look empty to the storage quota),
//! and the failure is logged with the tenant's name when it first happens or changes, not at
//! every sample.

mod datastore;
mod pod_metrics;
mod process_stats;
mod prometheus_text;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostplane_crds::{
    ControlPlane, ControlPlaneType, DatastoreSecretReference, DatastoreStatus, UsageStatus,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::build::objects::{self, CERTS_SECRET, DATASTORE_SECRET};
use crate::build::processes::{EtcdClientTls, TenantPorts};
use crate::config::TenantRuntime;
use crate::pki::PkiFiles;
use crate::provision::etcd::TenantEtcdUser;
use crate::provision::tenant_access;
use crate::reconcile::Context;
use crate::validate::{system_namespace, tenant_key};
use datastore::StoreFigures;

/// The field manager of `status.usage`: the reconciler's status writes (their own managers)
/// neither own nor drop it.
const FIELD_MANAGER: &str = "hostplane-controller-usage";

/// Tenants sampled at once.
const CONCURRENCY: usize = 4;

/// How long reading a tenant API server's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one tenant's whole sample may take before it is given up for this pass.
const TENANT_TIMEOUT: Duration = Duration::from_secs(60);

/// Samples tenants every `config.usage_interval` until the task is dropped. Runs beside the
/// reconcile passes, so only on the leader.
pub async fn run(ctx: Arc<Context>) {
    let Some(interval) = ctx.config.usage_interval else {
        info!("usage metering is off (--usage-interval-seconds=0)");
        return;
    };
    let sampler = Sampler::new(ctx);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let span = info_span!("usage_pass", tenants = tracing::field::Empty);
        sampler.pass().instrument(span).await;
    }
}

/// A tenant as the sampler sees it: what it needs to find the tenant's processes, API server
/// and datastore.
#[derive(Clone, Debug)]
struct Tenant {
    name: String,
    uid: String,
    namespace: String,
    endpoint: String,
    hibernated: bool,
    datastore: DatastoreStatus,
    external: Option<DatastoreSecretReference>,
    previous: Option<UsageStatus>,
}

impl Tenant {
    /// Tenants with something to measure: `type: k8s`, not being deleted, provisioned far
    /// enough to have an endpoint and a datastore.
    fn of(cp: &ControlPlane) -> Option<Self> {
        if cp.spec.type_ != ControlPlaneType::K8s || cp.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let status = cp.status.as_ref()?;
        Some(Self {
            name: cp.name_any(),
            uid: cp.uid()?,
            namespace: system_namespace(&cp.name_any()),
            endpoint: status.endpoint.clone()?,
            hibernated: status.hibernated_at.is_some(),
            datastore: status.datastore.clone()?,
            external: cp.spec.datastore_secret_ref.clone(),
            previous: status.usage.clone(),
        })
    }

    fn key(&self) -> String {
        tenant_key(&self.name, &self.uid)
    }
}

/// What the tenant API server's `/metrics` says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ApiFigures {
    requests: i64,
    /// The API server's own count of stored objects, added up over resources: objects where
    /// the datastore cannot be read. Refreshed by the API server about once a minute.
    storage_objects: Option<i64>,
}

impl ApiFigures {
    fn from_metrics(text: &str) -> Result<Self, prometheus_text::ParseError> {
        // Every request it served: the tenant's, its own components' and the controller's
        // health checks alike.
        let requests = prometheus_text::sum(text, "apiserver_request_total")?.unwrap_or(0.0);
        // `apiserver_storage_objects` until Kubernetes 1.33, then `apiserver_resource_objects`.
        let mut objects = prometheus_text::values(text, "apiserver_resource_objects")?;
        if objects.is_empty() {
            objects = prometheus_text::values(text, "apiserver_storage_objects")?;
        }
        // -1 is the API server's "could not count this resource".
        Ok(Self {
            requests: requests as i64,
            storage_objects: (!objects.is_empty())
                .then(|| objects.iter().filter(|v| **v >= 0.0).sum::<f64>() as i64),
        })
    }
}

/// Requests per second between two readings of a counter `elapsed_seconds` apart; a counter
/// lower than before was reset (the API server restarted), and counts from zero.
fn request_rate(previous: Option<(i64, f64)>, current: i64) -> f64 {
    match previous {
        Some((before, elapsed)) if elapsed > 0.0 => {
            let delta = if current >= before {
                current - before
            } else {
                current
            };
            delta as f64 / elapsed
        }
        _ => 0.0,
    }
}

/// A sample that only moves `sampledTime` is written once every this many intervals: every
/// write of status starts a reconcile pass, and a host with a thousand hibernated tenants
/// would otherwise make a thousand passes per interval for nothing.
const UNCHANGED_REWRITE_INTERVALS: u32 = 10;

/// Whether a sample is worth a status write: some figure moved, or the last one written is
/// getting old.
fn worth_writing(previous: Option<&UsageStatus>, sample: &UsageStatus, interval: Duration) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let same_figures = UsageStatus {
        sampled_time: previous.sampled_time.clone(),
        ..sample.clone()
    } == *previous;
    let age = sample
        .sampled_time
        .0
        .duration_since(previous.sampled_time.0)
        .as_secs_f64();
    !same_figures || age >= (interval * UNCHANGED_REWRITE_INTERVALS).as_secs_f64()
}

/// CPU time a pod's measured rate adds over `elapsed` since the last sample, which is capped:
/// after a gap (the controller was down) the current rate says little about the whole of it.
fn integrated_cpu_seconds(before: f64, cores: f64, elapsed: f64, interval: Duration) -> f64 {
    before + cores * elapsed.clamp(0.0, 2.0 * interval.as_secs_f64())
}

struct Sampler {
    ctx: Arc<Context>,
    /// The last API request total per tenant UID and when it was read: rates from the
    /// controller's clock (status keeps whole seconds), status being the fallback after a
    /// restart.
    requests: Mutex<HashMap<String, (i64, Instant)>>,
    /// Failures already logged, by tenant and what failed: logged again when they change.
    failures: Mutex<HashMap<(String, &'static str), String>>,
    /// Notes logged once in the controller's life.
    noted: Mutex<HashSet<String>>,
    /// Tenants with `hostplane_tenant_*` series.
    metered: Mutex<HashSet<String>>,
}

impl Sampler {
    fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            requests: Mutex::default(),
            failures: Mutex::default(),
            noted: Mutex::default(),
            metered: Mutex::default(),
        }
    }

    fn failed(&self, tenant: &str, what: &'static str, error: impl std::fmt::Display) {
        let message = error.to_string();
        let mut failures = self.failures.lock().expect("usage lock");
        if failures.get(&(tenant.to_string(), what)) != Some(&message) {
            warn!(controlplane = tenant, what, error = %message, "cannot measure tenant usage");
            failures.insert((tenant.to_string(), what), message);
        } else {
            debug!(controlplane = tenant, what, error = %message, "cannot measure tenant usage");
        }
    }

    fn succeeded(&self, tenant: &str, what: &'static str) {
        let key = (tenant.to_string(), what);
        if self
            .failures
            .lock()
            .expect("usage lock")
            .remove(&key)
            .is_some()
        {
            info!(
                controlplane = tenant,
                what, "tenant usage is measured again"
            );
        }
    }

    fn note_once(&self, key: String, message: &str) {
        if self.noted.lock().expect("usage lock").insert(key) {
            info!("{message}");
        }
    }

    async fn pass(&self) {
        let cps = match Api::<ControlPlane>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                warn!(error = %e, "usage: cannot list ControlPlanes");
                return;
            }
        };
        self.forget_deleted(&cps);
        let tenants: Vec<Tenant> = cps.iter().filter_map(Tenant::of).collect();
        tracing::Span::current().record("tenants", tenants.len());
        let started = Instant::now();
        futures::stream::iter(&tenants)
            .for_each_concurrent(CONCURRENCY, |tenant| async move {
                let span = info_span!("usage_sample", controlplane = %tenant.name);
                self.sample_and_record(tenant).instrument(span).await;
            })
            .await;
        debug!(
            tenants = tenants.len(),
            seconds = started.elapsed().as_secs_f64(),
            "usage sampled"
        );
    }

    /// Drops the series and memory of tenants that are gone or being deleted.
    fn forget_deleted(&self, cps: &[ControlPlane]) {
        let live: HashSet<String> = cps
            .iter()
            .filter(|cp| cp.metadata.deletion_timestamp.is_none())
            .map(ResourceExt::name_any)
            .collect();
        self.metered.lock().expect("usage lock").retain(|name| {
            let keep = live.contains(name);
            if !keep {
                self.ctx.metrics.tenant_usage.remove(name);
            }
            keep
        });
        let uids: HashSet<String> = cps.iter().filter_map(ResourceExt::uid).collect();
        self.requests
            .lock()
            .expect("usage lock")
            .retain(|uid, _| uids.contains(uid));
        self.failures
            .lock()
            .expect("usage lock")
            .retain(|(name, _), _| live.contains(name));
    }

    async fn sample_and_record(&self, tenant: &Tenant) {
        let usage = match tokio::time::timeout(TENANT_TIMEOUT, self.sample(tenant)).await {
            Ok(usage) => usage,
            Err(_) => {
                self.failed(
                    &tenant.name,
                    "sample",
                    format!("no result within {TENANT_TIMEOUT:?}"),
                );
                return;
            }
        };
        self.ctx.metrics.tenant_usage.set(&tenant.name, &usage);
        self.metered
            .lock()
            .expect("usage lock")
            .insert(tenant.name.clone());
        let interval = self.ctx.config.usage_interval.unwrap_or_default();
        if !worth_writing(tenant.previous.as_ref(), &usage, interval) {
            return;
        }
        let patch = json!({
            "apiVersion": "tenancy.hostplane.io/v1alpha1",
            "kind": "ControlPlane",
            "status": { "usage": usage },
        });
        match Api::<ControlPlane>::all(self.ctx.client.clone())
            .patch_status(
                &tenant.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => self.succeeded(&tenant.name, "status"),
            // Deleted since the list: its series go at the next pass.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => self.failed(&tenant.name, "status", e),
        }
    }

    /// One tenant's usage now; what cannot be measured keeps its last figure.
    async fn sample(&self, tenant: &Tenant) -> UsageStatus {
        let previous = tenant.previous.as_ref();
        // Asleep, nothing it has answers with its certificates: not read.
        let pki = match tenant.hibernated {
            true => None,
            false => self.pki(tenant).await,
        };
        let (cpu_seconds, memory_bytes) = if tenant.hibernated {
            (0.0, 0)
        } else {
            self.components(tenant, previous).await
        };

        let api = if tenant.hibernated {
            Some(ApiFigures::default())
        } else {
            match self.scrape(tenant, pki.as_ref()).await {
                Ok(api) => {
                    self.succeeded(&tenant.name, "API server metrics");
                    Some(api)
                }
                Err(e) => {
                    self.failed(&tenant.name, "API server metrics", e);
                    None
                }
            }
        };
        let (api_requests, api_request_rate) = match api {
            Some(api) => (api.requests, self.rate(tenant, api.requests)),
            None => (previous.map_or(0, |p| p.api_requests), 0.0),
        };

        let store = match self.datastore(tenant, pki.as_ref()).await {
            Ok(figures) => {
                self.succeeded(&tenant.name, "datastore");
                figures
            }
            Err(e) => {
                self.failed(&tenant.name, "datastore", e);
                StoreFigures::default()
            }
        };
        let objects = store
            .objects
            .or(api.and_then(|a| a.storage_objects))
            .or(previous.map(|p| p.objects))
            .unwrap_or(0);
        UsageStatus {
            sampled_time: Time(Timestamp::now()),
            cpu_seconds,
            memory_bytes,
            storage_bytes: store
                .storage_bytes
                .or(previous.map(|p| p.storage_bytes))
                .unwrap_or(0),
            datastore_bytes: store
                .datastore_bytes
                .or(previous.and_then(|p| p.datastore_bytes)),
            objects,
            api_requests,
            api_request_rate,
        }
    }

    /// The tenant's certificates (`<cp>-system/k8s-certs`): the controller's client certificate
    /// for its API server, and a dedicated etcd's client certificate.
    async fn pki(&self, tenant: &Tenant) -> Option<PkiFiles> {
        match get_secret(&self.ctx.client, &tenant.namespace, CERTS_SECRET).await {
            Ok(Some(secret)) => Some(objects::secret_strings(&secret)),
            Ok(None) => None,
            Err(e) => {
                self.failed(&tenant.name, "certificates", e);
                None
            }
        }
    }

    /// CPU seconds and memory of the tenant's components.
    async fn components(&self, tenant: &Tenant, previous: Option<&UsageStatus>) -> (f64, i64) {
        match self.ctx.config.runtime {
            TenantRuntime::Processes => {
                // kube-apiserver, kube-controller-manager, kine or etcd, kube-scheduler:
                // whatever runs for the tenant has a pid file in its state dir.
                let pids: Vec<u32> = self
                    .ctx
                    .runtime
                    .pids(&tenant.key())
                    .into_iter()
                    .map(|(_, pid)| pid)
                    .collect();
                let usage = process_stats::total(pids);
                (usage.cpu_seconds, usage.rss_bytes as i64)
            }
            TenantRuntime::Pods => {
                match pod_metrics::namespace_usage(&self.ctx.client, &tenant.namespace).await {
                    Ok(pods) => {
                        self.succeeded(&tenant.name, "pod metrics");
                        let interval = self.ctx.config.usage_interval.unwrap_or_default();
                        // From the first sample on: before it, the rate says nothing.
                        let cpu = previous.map_or(0.0, |p| {
                            integrated_cpu_seconds(
                                p.cpu_seconds,
                                pods.cpu_cores,
                                previous_elapsed(p),
                                interval,
                            )
                        });
                        (cpu, pods.memory_bytes)
                    }
                    Err(pod_metrics::PodMetricsError::Absent) => {
                        self.note_once(
                            "pod-metrics-absent".into(),
                            "usage: the host serves no metrics.k8s.io API (no metrics-server), so \
                             tenants' cpuSeconds and memoryBytes stay 0 in the pods runtime; \
                             datastore and API figures are sampled all the same",
                        );
                        (0.0, 0)
                    }
                    Err(e) => {
                        self.failed(&tenant.name, "pod metrics", e);
                        previous.map_or((0.0, 0), |p| (p.cpu_seconds, p.memory_bytes))
                    }
                }
            }
        }
    }

    /// Reads the tenant API server's `/metrics` as the controller (its client certificate).
    async fn scrape(&self, tenant: &Tenant, pki: Option<&PkiFiles>) -> Result<ApiFigures, String> {
        let pki = pki.ok_or("the tenant has no certificates Secret yet")?;
        let client = tenant_access::controller_client(&tenant.endpoint, pki)
            .await
            .map_err(|e| e.to_string())?;
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .expect("static request");
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, client.request_text(request))
            .await
            .map_err(|_| {
                format!(
                    "{}/metrics: no answer within {SCRAPE_TIMEOUT:?}",
                    tenant.endpoint
                )
            })?
            .map_err(|e| format!("{}/metrics: {e}", tenant.endpoint))?;
        ApiFigures::from_metrics(&text).map_err(|e| format!("{}/metrics: {e}", tenant.endpoint))
    }

    /// Requests per second since the last reading (this controller's, else status's).
    fn rate(&self, tenant: &Tenant, requests: i64) -> f64 {
        let now = Instant::now();
        let remembered = self
            .requests
            .lock()
            .expect("usage lock")
            .insert(tenant.uid.clone(), (requests, now));
        let previous = match (remembered, &tenant.previous) {
            (Some((before, at)), _) => Some((before, now.duration_since(at).as_secs_f64())),
            (None, Some(usage)) => Some((usage.api_requests, previous_elapsed(usage))),
            (None, None) => None,
        };
        request_rate(previous, requests)
    }

    /// What the tenant keeps in its datastore, by what was provisioned for it.
    async fn datastore(
        &self,
        tenant: &Tenant,
        pki: Option<&PkiFiles>,
    ) -> Result<StoreFigures, String> {
        let processes = self.ctx.config.runtime == TenantRuntime::Processes;
        let dir = self.ctx.runtime.tenant_dir(&tenant.key());
        match tenant.datastore.kind.as_str() {
            "postgres" => {
                // As the admin where it may connect: the tenant role's connections are the
                // tenant's (limited by its CONNECTION LIMIT), and metering must not take one.
                if let (Some(pg), Some(database)) = (&self.ctx.postgres, &tenant.datastore.database)
                {
                    match datastore::kine_on_postgres(pg.database_config(database)).await {
                        Ok(figures) => return Ok(figures),
                        Err(e) => {
                            debug!(controlplane = %tenant.name, error = %e, "reading the tenant database as admin failed; trying as the tenant role")
                        }
                    }
                }
                let dsn =
                    secret_value(&self.ctx.client, &tenant.namespace, DATASTORE_SECRET, "url")
                        .await?;
                let config = datastore::postgres_config(&dsn).map_err(|e| e.to_string())?;
                datastore::kine_on_postgres(config)
                    .await
                    .map_err(|e| e.to_string())
            }
            "external" => {
                let Some(r) = &tenant.external else {
                    return Ok(StoreFigures::default());
                };
                let data = get_secret(&self.ctx.client, &r.namespace, &r.name)
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|s| objects::secret_strings(&s))
                    .unwrap_or_default();
                match data.get("dsn") {
                    Some(dsn) => {
                        let config = datastore::postgres_config(dsn).map_err(|e| e.to_string())?;
                        datastore::kine_on_postgres(config)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => {
                        self.note_once(
                            format!("external-etcd/{}", tenant.uid),
                            &format!(
                                "usage: {} keeps its state in the user's etcd; its datastore \
                                 figures are not sampled (objects come from its API server)",
                                tenant.name
                            ),
                        );
                        Ok(StoreFigures::default())
                    }
                }
            }
            "sqlite" if processes => {
                let kine_dir = dir.join("kine");
                if tenant.hibernated {
                    // Kine is stopped with the tenant; the file is still there.
                    return Ok(StoreFigures {
                        datastore_bytes: datastore::sqlite_file_bytes(&kine_dir),
                        ..StoreFigures::default()
                    });
                }
                let ports = read_ports(&dir)?;
                datastore::kine_on_sqlite(ports.kine, &kine_dir)
                    .await
                    .map_err(|e| e.to_string())
            }
            "etcd" => {
                if tenant.hibernated {
                    // Stopped with the tenant: its file is readable in the processes runtime.
                    return Ok(StoreFigures {
                        datastore_bytes: processes
                            .then(|| datastore::etcd_file_bytes(&dir.join("etcd")))
                            .flatten(),
                        ..StoreFigures::default()
                    });
                }
                let endpoint = if processes {
                    format!("https://127.0.0.1:{}", read_ports(&dir)?.etcd_client)
                } else {
                    format!(
                        "https://{}.{}.svc:{}",
                        crate::build::pods_etcd::etcd_name(&tenant.name),
                        tenant.namespace,
                        crate::build::pods_etcd::ETCD_CLIENT_PORT
                    )
                };
                let tls = etcd_client_tls(pki.ok_or("the tenant has no certificates Secret yet")?)?;
                datastore::dedicated_etcd(&endpoint, &tls)
                    .await
                    .map_err(|e| e.to_string())
            }
            "shared-etcd" => {
                let shared = self.ctx.shared_etcd.as_ref().ok_or(
                    "the tenant lives on the shared etcd, but this controller has no \
                     --shared-etcd-endpoints",
                )?;
                let prefix = TenantEtcdUser::for_uid(&tenant.uid).key_prefix;
                datastore::shared_etcd(shared, &prefix)
                    .await
                    .map_err(|e| e.to_string())
            }
            other => {
                self.note_once(
                    format!("datastore-kind/{other}"),
                    &format!("usage: datastores of kind {other:?} are not sampled"),
                );
                Ok(StoreFigures::default())
            }
        }
    }
}

/// Seconds since a status's sample.
fn previous_elapsed(previous: &UsageStatus) -> f64 {
    Timestamp::now()
        .duration_since(previous.sampled_time.0)
        .as_secs_f64()
}

async fn get_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, kube::Error> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

async fn secret_value(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let secret = get_secret(client, namespace, name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| format!("Secret {namespace}/{name} does not exist"))?;
    objects::secret_strings(&secret)
        .remove(key)
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))
}

/// The tenant's ports as the processes runtime recorded them (read only: a tenant deleted
/// meanwhile must not get its state dir back).
fn read_ports(dir: &std::path::Path) -> Result<TenantPorts, String> {
    let path = dir.join("ports.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The dedicated etcd's CA and the tenant API server's client certificate for it.
fn etcd_client_tls(pki: &PkiFiles) -> Result<EtcdClientTls, String> {
    let get = |key: &str| {
        pki.get(key)
            .cloned()
            .ok_or_else(|| format!("the tenant certificates lack {key}"))
    };
    let client = crate::pki::API_SERVER_ETCD_CLIENT;
    Ok(EtcdClientTls {
        ca_pem: get("etcd-ca.crt")?,
        cert_pem: get(&format!("{client}.crt"))?,
        key_pem: get(&format!("{client}.key"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_the_elapsed_time_and_survive_resets() {
        assert_eq!(request_rate(None, 500), 0.0);
        assert_eq!(request_rate(Some((100, 10.0)), 400), 30.0);
        // The API server restarted: its counter started again from zero.
        assert_eq!(request_rate(Some((4000, 20.0)), 60), 3.0);
        assert_eq!(request_rate(Some((100, 0.0)), 400), 0.0);
        assert_eq!(request_rate(Some((100, 10.0)), 100), 0.0);
    }

    #[test]
    fn api_figures_come_from_a_whole_metrics_page() {
        let text = include_str!("usage/testdata/apiserver_metrics.txt");
        assert_eq!(
            ApiFigures::from_metrics(text).unwrap(),
            ApiFigures {
                requests: 939,
                storage_objects: Some(137),
            }
        );
        // An older API server's name for the objects, and its "could not count" (-1).
        let older = "# TYPE apiserver_storage_objects gauge\n\
            apiserver_storage_objects{resource=\"configmaps\"} 52\n\
            apiserver_storage_objects{resource=\"flowschemas.flowcontrol.apiserver.k8s.io\"} -1\n\
            apiserver_storage_objects{resource=\"namespaces\"} 4\n\
            apiserver_request_total{code=\"201\",verb=\"POST\"} 50\n";
        assert_eq!(
            ApiFigures::from_metrics(older).unwrap(),
            ApiFigures {
                requests: 50,
                storage_objects: Some(56),
            }
        );
        assert_eq!(
            ApiFigures::from_metrics("# nothing here\n").unwrap(),
            ApiFigures::default()
        );
    }

    #[test]
    fn pod_cpu_is_integrated_over_at_most_two_intervals() {
        let interval = Duration::from_secs(30);
        assert_eq!(integrated_cpu_seconds(10.0, 0.5, 30.0, interval), 25.0);
        assert_eq!(integrated_cpu_seconds(10.0, 0.5, 3600.0, interval), 40.0);
        assert_eq!(integrated_cpu_seconds(10.0, 0.5, -5.0, interval), 10.0);
    }

    #[test]
    fn unchanged_samples_are_written_only_now_and_then() {
        let at = |s: &str| Time(s.parse().unwrap());
        let written = UsageStatus {
            sampled_time: at("2026-11-30T00:00:00Z"),
            cpu_seconds: 0.0,
            memory_bytes: 0,
            storage_bytes: 180_393,
            datastore_bytes: Some(4_443_712),
            objects: 251,
            api_requests: 0,
            api_request_rate: 0.0,
        };
        let interval = Duration::from_secs(30);
        let later = |s: &str| UsageStatus {
            sampled_time: at(s),
            ..written.clone()
        };
        assert!(worth_writing(None, &written, interval));
        assert!(!worth_writing(
            Some(&written),
            &later("2026-11-30T00:00:30Z"),
            interval
        ));
        assert!(!worth_writing(
            Some(&written),
            &later("2026-11-30T00:04:30Z"),
            interval
        ));
        assert!(worth_writing(
            Some(&written),
            &later("2026-11-30T00:05:00Z"),
            interval
        ));
        let grown = UsageStatus {
            objects: 252,
            ..later("2026-11-30T00:00:30Z")
        };
        assert!(worth_writing(Some(&written), &grown, interval));
    }

    fn cp(yaml: &str) -> ControlPlane {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn only_provisioned_k8s_tenants_are_sampled() {
        let provisioned = cp(r#"
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata: {name: t1, uid: 0f8e2a7c-1111-2222-3333-444455556666}
spec: {type: k8s}
status:
  endpoint: https://127.0.0.1:40001
  datastore: {kind: postgres, database: hp_0f8e, role: hp_0f8e}
  hibernatedAt: "2026-11-29T23:00:00Z"
"#);
        let tenant = Tenant::of(&provisioned).unwrap();
        assert_eq!(
            (tenant.key(), tenant.namespace.as_str(), tenant.hibernated),
            ("t1-0f8e2a7c".to_string(), "t1-system", true)
        );
        let creating = cp(r#"
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata: {name: t2, uid: u2}
spec: {type: k8s}
status: {datastore: {kind: sqlite}}
"#);
        assert!(Tenant::of(&creating).is_none());
        let host = cp(r#"
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata: {name: h, uid: u3}
spec: {type: host}
status: {endpoint: "https://10.0.0.1:6443", datastore: {kind: external}}
"#);
        assert!(Tenant::of(&host).is_none());
        let deleting = cp(r#"
apiVersion: tenancy.hostplane.io/v1alpha1
kind: ControlPlane
metadata: {name: d, uid: u4, deletionTimestamp: "2026-11-29T23:00:00Z"}
spec: {type: k8s}
status: {endpoint: "https://127.0.0.1:1", datastore: {kind: sqlite}}
"#);
        assert!(Tenant::of(&deleting).is_none());
    }
}
