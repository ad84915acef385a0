//! Prometheus metrics of the controller, and the HTTP endpoint serving them with health checks.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Labels of a failed pass: the pipeline step that failed (`fetch`, `validate`, `provision`,
/// `apply`, `status`, `cleanup`, or `finalizer` for the finalizer helper's own writes) and the
/// reason users see in the condition and the Event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub step: String,
    pub reason: String,
}

/// The state a tenant is counted in while its reconciliation is paused (annotation
/// `tenancy.hostplane.io/reconcile-paused`) instead of its Ready reason, which then only says
/// what the last pass before the pause saw.
pub const PAUSED_STATE: &str = "Paused";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

type TenantGauge = Family<TenantLabel, Gauge>;
type TenantFloatGauge = Family<TenantLabel, Gauge<f64, AtomicU64>>;

/// Each tenant's `status.usage` as last sampled (`usage`), one series per tenant, removed when
/// the tenant is deleted. Gauges, counters included: they restart with the tenant's processes.
#[derive(Default)]
pub struct TenantUsageGauges {
    cpu_seconds: TenantFloatGauge,
    memory_bytes: TenantGauge,
    storage_bytes: TenantGauge,
    datastore_bytes: TenantGauge,
    objects: TenantGauge,
    api_requests: TenantGauge,
    api_request_rate: TenantFloatGauge,
}

impl TenantUsageGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tenant_cpu_seconds",
            "CPU seconds a tenant's control plane components used (over their current lives)",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "tenant_memory_bytes",
            "Resident memory of a tenant's control plane components",
            self.memory_bytes.clone(),
        );
        registry.register(
            "tenant_storage_bytes",
            "Bytes of live keys and values a tenant keeps in its datastore",
            self.storage_bytes.clone(),
        );
        registry.register(
            "tenant_datastore_bytes",
            "Size of a tenant's own datastore (its database or etcd file)",
            self.datastore_bytes.clone(),
        );
        registry.register(
            "tenant_objects",
            "Objects (keys) a tenant keeps in its datastore",
            self.objects.clone(),
        );
        registry.register(
            "tenant_api_requests",
            "Requests a tenant API server has served (over its current life)",
            self.api_requests.clone(),
        );
        registry.register(
            "tenant_api_request_rate",
            "Requests per second a tenant API server served over the last sampling interval",
            self.api_request_rate.clone(),
        );
    }

    pub fn set(&self, tenant: &str, usage: &hostplane_crds::UsageStatus) {
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.cpu_seconds
            .get_or_create(&label)
            .set(usage.cpu_seconds);
        self.memory_bytes
            .get_or_create(&label)
            .set(usage.memory_bytes);
        self.storage_bytes
            .get_or_create(&label)
            .set(usage.storage_bytes);
        match usage.datastore_bytes {
            Some(bytes) => {
                self.datastore_bytes.get_or_create(&label).set(bytes);
            }
            None => {
                self.datastore_bytes.remove(&label);
            }
        }
        self.objects.get_or_create(&label).set(usage.objects);
        self.api_requests
            .get_or_create(&label)
            .set(usage.api_requests);
        self.api_request_rate
            .get_or_create(&label)
            .set(usage.api_request_rate);
    }

    pub fn remove(&self, tenant: &str) {
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.cpu_seconds.remove(&label);
        self.memory_bytes.remove(&label);
        self.storage_bytes.remove(&label);
        self.datastore_bytes.remove(&label);
        self.objects.remove(&label);
        self.api_requests.remove(&label);
        self.api_request_rate.remove(&label);
    }
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub provisioning_duration: Histogram,
    /// 1 while this instance reconciles: it holds the leader Lease, or runs without leader
    /// election. `/readyz` fails while it is 0, so only the leader is ready.
    pub leader: Gauge,
    tenants_by_state: Family<StateLabel, Gauge>,
    states: Mutex<HashMap<String, String>>,
    /// UIDs of the tenants this instance has seen Ready=True (see [`Metrics::tenant_ready`]).
    seen_ready: Mutex<HashSet<String>>,
    pub tenant_usage: TenantUsageGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hostplane");
        let reconciles = Counter::default();
        let reconcile_failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let provisioning_duration = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        let tenants_by_state = Family::<StateLabel, Gauge>::default();
        let leader = Gauge::default();
        leader.set(1);
        registry.register(
            "leader",
            "1 while this instance reconciles (holds the leader Lease, or runs without election)",
            leader.clone(),
        );
        registry.register(
            "reconciles",
            "ControlPlane reconcile passes",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed passes by the step that failed and its reason",
            reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile pass",
            reconcile_duration.clone(),
        );
        registry.register(
            "tenant_provisioning_seconds",
            "Time from a ControlPlane's creation to its first Ready=True",
            provisioning_duration.clone(),
        );
        registry.register(
            "tenants",
            "ControlPlanes by the reason of their Ready condition (Paused while reconciliation is paused)",
            tenants_by_state.clone(),
        );
        let tenant_usage = TenantUsageGauges::default();
        tenant_usage.register(&mut registry);
        Self {
            registry,
            tenant_usage,
            reconciles,
            reconcile_failures,
            reconcile_duration,
            provisioning_duration,
            leader,
            tenants_by_state,
            states: Mutex::default(),
            seen_ready: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Records the Ready reason of a tenant ([`PAUSED_STATE`] while paused, `None` once it is
    /// gone). A state no tenant is in
    /// any more loses its series: reasons are open-ended (every error reason is one), so zeros
    /// would pile up for as long as the controller runs.
    pub fn set_tenant_state(&self, tenant: &str, state: Option<&str>) {
        let mut states = self.states.lock().expect("metrics lock");
        let previous = match state {
            Some(s) => states.insert(tenant.to_string(), s.to_string()),
            None => states.remove(tenant),
        };
        if previous.as_deref() == state {
            return;
        }
        if let Some(p) = previous {
            let label = StateLabel { state: p };
            let before = self.tenants_by_state.get_or_create(&label).dec();
            if before <= 1 {
                self.tenants_by_state.remove(&label);
            }
        }
        if let Some(s) = state {
            self.tenants_by_state
                .get_or_create(&StateLabel {
                    state: s.to_string(),
                })
                .inc();
        }
    }

    /// A pass wrote Ready=True for the tenant with this UID. `provisioning` is the time from its
    /// creation when the status showed it was the tenant's first Ready=True
    /// (`status::first_ready`); it is observed unless this instance saw the tenant Ready
    /// already (a hook added after it was Ready holds Ready again, which status alone cannot
    /// tell from a first time). Returns whether it was observed.
    pub fn tenant_ready(&self, uid: &str, provisioning: Option<Duration>) -> bool {
        let newly_seen = self
            .seen_ready
            .lock()
            .expect("metrics lock")
            .insert(uid.to_string());
        match provisioning {
            Some(time) if newly_seen => {
                self.provisioning_duration.observe(time.as_secs_f64());
                true
            }
            _ => false,
        }
    }

    /// Drops a deleted tenant's state series and what this instance remembers of it.
    pub fn forget_tenant(&self, tenant: &str, uid: &str) {
        self.set_tenant_state(tenant, None);
        self.seen_ready.lock().expect("metrics lock").remove(uid);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics endpoint accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/metrics" => respond(
                            StatusCode::OK,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            metrics.encode(),
                        ),
                        "/healthz" | "/livez" => respond(StatusCode::OK, "text/plain", "ok".into()),
                        "/readyz" if metrics.leader.get() == 1 => {
                            respond(StatusCode::OK, "text/plain", "ok".into())
                        }
                        "/readyz" => respond(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            "standing by: another instance holds the leader Lease\n".into(),
                        ),
                        _ => respond(
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "not found: try /metrics, /healthz or /readyz\n".into(),
                        ),
                    })
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!(error = %e, "metrics connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_states_are_counted_once_each() {
        let m = Metrics::default();
        m.set_tenant_state("a", Some("Creating"));
        m.set_tenant_state("b", Some("Creating"));
        m.set_tenant_state("a", Some("Available"));
        m.set_tenant_state("a", Some("Available"));
        m.set_tenant_state("b", None);
        m.reconcile_failures
            .get_or_create(&FailureLabels {
                step: "provision".into(),
                reason: "DatastoreUnavailable".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("hostplane_tenants{state=\"Available\"} 1"),
            "{text}"
        );
        // No tenant is Creating any more: no series left behind.
        assert!(!text.contains("state=\"Creating\""), "{text}");
        assert!(
            text.contains(
                "hostplane_reconcile_failures_total{step=\"provision\",reason=\"DatastoreUnavailable\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_deleted_tenant_leaves_no_state_series() {
        let m = Metrics::default();
        m.set_tenant_state("a", Some("Available"));
        m.set_tenant_state("b", Some("Available"));
        m.set_tenant_state("a", Some("Deleting"));
        m.forget_tenant("a", "uid-a");
        let text = m.encode();
        assert!(
            text.contains("hostplane_tenants{state=\"Available\"} 1"),
            "{text}"
        );
        assert!(!text.contains("Deleting"), "{text}");
        m.forget_tenant("b", "uid-b");
        assert!(!m.encode().contains("hostplane_tenants{"), "{}", m.encode());
    }

    #[test]
    fn provisioning_time_is_observed_once_per_tenant() {
        let m = Metrics::default();
        let count = |m: &Metrics| {
            m.encode()
                .lines()
                .find_map(|l| l.strip_prefix("hostplane_tenant_provisioning_seconds_count "))
                .map(str::to_string)
        };
        assert_eq!(count(&m).as_deref(), Some("0"));
        // A restarted controller's first pass over a tenant that was Ready: nothing to observe.
        assert!(!m.tenant_ready("old", None));
        assert!(!m.tenant_ready("old", Some(Duration::from_secs(900))));
        assert!(m.tenant_ready("new", Some(Duration::from_secs(3))));
        // Ready again (after hooks held it, say): once is enough.
        assert!(!m.tenant_ready("new", Some(Duration::from_secs(60))));
        assert_eq!(count(&m).as_deref(), Some("1"));
        assert!(
            m.encode()
                .contains("hostplane_tenant_provisioning_seconds_sum 3.0"),
            "{}",
            m.encode()
        );
        // A ControlPlane of the same name made again is a new tenant (a new UID).
        m.forget_tenant("n", "new");
        assert!(m.tenant_ready("new", Some(Duration::from_secs(4))));
        assert_eq!(count(&m).as_deref(), Some("2"));
    }

    #[test]
    fn tenant_usage_series_come_and_go_with_tenants() {
        let m = Metrics::default();
        let usage = hostplane_crds::UsageStatus {
            cpu_seconds: 12.5,
            memory_bytes: 300 << 20,
            storage_bytes: 524288,
            datastore_bytes: Some(8 << 20),
            objects: 240,
            api_requests: 4182,
            api_request_rate: 1.5,
            sampled_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        m.tenant_usage.set("a", &usage);
        m.tenant_usage.set(
            "b",
            &hostplane_crds::UsageStatus {
                datastore_bytes: None,
                ..usage.clone()
            },
        );
        let text = m.encode();
        for line in [
            "hostplane_tenant_cpu_seconds{tenant=\"a\"} 12.5",
            "hostplane_tenant_memory_bytes{tenant=\"a\"} 314572800",
            "hostplane_tenant_storage_bytes{tenant=\"a\"} 524288",
            "hostplane_tenant_datastore_bytes{tenant=\"a\"} 8388608",
            "hostplane_tenant_objects{tenant=\"a\"} 240",
            "hostplane_tenant_api_requests{tenant=\"a\"} 4182",
            "hostplane_tenant_api_request_rate{tenant=\"a\"} 1.5",
            "hostplane_tenant_objects{tenant=\"b\"} 240",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains("hostplane_tenant_datastore_bytes{tenant=\"b\"}"),
            "{text}"
        );
        m.tenant_usage.remove("a");
        let text = m.encode();
        assert!(!text.contains("tenant=\"a\""), "{text}");
        assert!(
            text.contains("hostplane_tenant_objects{tenant=\"b\"} 240"),
            "{text}"
        );
    }
}
