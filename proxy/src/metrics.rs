//! Prometheus metrics of the SNI proxy.
//!
//! Every series of a tenant carries its name, taken from the route table only: never whatever a
//! client put in SNI, so that clients cannot grow the series without bound. Connections that
//! found no tenant (no usable hello, an unknown name) are counted under [`UNKNOWN_TENANT`]. A
//! deleted tenant's series are removed with its route, so that they do not pile up either.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `tenant` label of connections that reached no tenant. The reasons such connections end
/// with (hello errors, `unknown_server_name`, `accept`) are never those of a routed one, so a
/// ControlPlane that happens to be named `unknown` stays told apart by its reasons.
pub const UNKNOWN_TENANT: &str = "unknown";

/// How a connection ended up: `routed`, `rejected` (the client's fault: no usable
/// hello, unknown name) or `backend_unavailable`; the reason says why. `tenant` is the
/// ControlPlane the route names, or [`UNKNOWN_TENANT`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub tenant: String,
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub tenant: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

/// Bytes of one tenant: `direction` is `in` (client to backend) or `out`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub server_name: String,
    pub direction: &'static str,
}

pub const DIRECTION_IN: &str = "in";
pub const DIRECTION_OUT: &str = "out";

/// The proxy's metrics. Cheap to clone; clones share their values.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    connections: Family<ConnectionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    bytes: Family<TrafficLabels, Counter>,
    active: Gauge,
    wakes: Family<TenantLabels, Counter>,
    wait_seconds: Histogram,
    /// The label sets counted so far for each tenant a route named (bounded by the route table),
    /// so that totals over tenants can be read back and a deleted tenant's series removed: a
    /// [`Family`] cannot be iterated.
    tenants: Arc<Mutex<BTreeMap<String, TenantSeries>>>,
}

/// The label sets of one tenant's series, besides its `tenant` label.
#[derive(Debug, Default)]
struct TenantSeries {
    /// (result, reason) of its connections.
    connections: BTreeSet<(&'static str, &'static str)>,
    /// Reasons of its errors.
    errors: BTreeSet<&'static str>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            connections: Family::default(),
            errors: Family::default(),
            bytes: Family::default(),
            active: Gauge::default(),
            wakes: Family::default(),
            // 50 ms .. ~100 s: a wake takes seconds.
            wait_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            tenants: Arc::default(),
        }
    }
}

impl ProxyMetrics {
    /// Registers the metrics under `proxy_` in `registry` (which usually carries
    /// the `hostplane` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("proxy");
        registry.register(
            "connections",
            "Accepted connections by tenant, result and reason",
            self.connections.clone(),
        );
        registry.register(
            "errors",
            "Connection errors by tenant and reason",
            self.errors.clone(),
        );
        // Labelled only with names found in the route table, never with whatever a
        // client put in SNI, so that clients cannot grow the series without bound.
        registry.register(
            "bytes",
            "Bytes relayed per tenant server name and direction",
            self.bytes.clone(),
        );
        registry.register(
            "active_connections",
            "Connections open now",
            self.active.clone(),
        );
        registry.register(
            "wakes",
            "Connections that found their tenant hibernated and asked for it to wake, by tenant",
            self.wakes.clone(),
        );
        registry.register(
            "wake_wait_seconds",
            "How long connections were held until their tenant was ready",
            self.wait_seconds.clone(),
        );
    }

    pub(crate) fn count_wake(&self, tenant: &str) {
        self.note_series(tenant, |_| {});
        self.wakes
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .inc();
    }

    pub(crate) fn observe_wait(&self, waited: std::time::Duration) {
        self.wait_seconds.observe(waited.as_secs_f64());
    }

    /// Connections that found `tenant` hibernated and asked for it to wake.
    pub fn wakes(&self, tenant: &str) -> u64 {
        self.wakes
            .get(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// Counts a connection; `tenant` is `None` when it reached no route.
    pub(crate) fn count_connection(
        &self,
        tenant: Option<&str>,
        result: &'static str,
        reason: &'static str,
    ) {
        if let Some(tenant) = tenant {
            self.note_series(tenant, |series| {
                series.connections.insert((result, reason));
            });
        }
        let tenant = tenant.unwrap_or(UNKNOWN_TENANT).to_string();
        self.connections
            .get_or_create(&ConnectionLabels {
                tenant,
                result,
                reason,
            })
            .inc();
    }

    /// Counts an error; `tenant` is `None` when the connection reached no route.
    pub(crate) fn count_error(&self, tenant: Option<&str>, reason: &'static str) {
        if let Some(tenant) = tenant {
            self.note_series(tenant, |series| {
                series.errors.insert(reason);
            });
        }
        let tenant = tenant.unwrap_or(UNKNOWN_TENANT).to_string();
        self.errors
            .get_or_create(&ErrorLabels { tenant, reason })
            .inc();
    }

    pub(crate) fn traffic(&self, server_name: &str, direction: &'static str) -> Counter {
        self.bytes.get_or_create_owned(&TrafficLabels {
            server_name: server_name.to_string(),
            direction,
        })
    }

    /// Counts a connection as active until the guard is dropped.
    pub(crate) fn track_active(&self) -> ActiveGuard {
        self.active.inc();
        ActiveGuard {
            active: self.active.clone(),
        }
    }

    /// Connections counted with this result and reason, over all tenants.
    pub fn connections(&self, result: &'static str, reason: &'static str) -> u64 {
        self.known_tenants()
            .iter()
            .map(|tenant| self.tenant_connections(tenant, result, reason))
            .sum()
    }

    /// Connections of one tenant ([`UNKNOWN_TENANT`] for those that reached none) counted with
    /// this result and reason.
    pub fn tenant_connections(
        &self,
        tenant: &str,
        result: &'static str,
        reason: &'static str,
    ) -> u64 {
        self.connections
            .get(&ConnectionLabels {
                tenant: tenant.to_string(),
                result,
                reason,
            })
            .map_or(0, |c| c.get())
    }

    /// Errors counted with this reason, over all tenants.
    pub fn errors(&self, reason: &'static str) -> u64 {
        self.known_tenants()
            .iter()
            .map(|tenant| self.tenant_errors(tenant, reason))
            .sum()
    }

    /// Errors of one tenant ([`UNKNOWN_TENANT`] for connections that reached none) counted
    /// with this reason.
    pub fn tenant_errors(&self, tenant: &str, reason: &'static str) -> u64 {
        self.errors
            .get(&ErrorLabels {
                tenant: tenant.to_string(),
                reason,
            })
            .map_or(0, |c| c.get())
    }

    /// Bytes relayed for a server name in a direction ([`DIRECTION_IN`] or
    /// [`DIRECTION_OUT`]).
    pub fn bytes(&self, server_name: &str, direction: &'static str) -> u64 {
        self.bytes
            .get(&TrafficLabels {
                server_name: server_name.to_string(),
                direction,
            })
            .map_or(0, |c| c.get())
    }

    /// Connections open now.
    pub fn active_connections(&self) -> i64 {
        self.active.get()
    }

    /// The tenants with series of their own: those routes named, not yet removed.
    pub fn tenants(&self) -> Vec<String> {
        self.lock_tenants().keys().cloned().collect()
    }

    /// Removes the series of a deleted tenant: those labelled with its name, and the bytes of
    /// its server name. Connections for [`UNKNOWN_TENANT`] that reached no route stay.
    pub fn remove_tenant(&self, tenant: &str, server_name: &str) {
        let series = self.lock_tenants().remove(tenant).unwrap_or_default();
        for (result, reason) in series.connections {
            self.connections.remove(&ConnectionLabels {
                tenant: tenant.to_string(),
                result,
                reason,
            });
        }
        for reason in series.errors {
            self.errors.remove(&ErrorLabels {
                tenant: tenant.to_string(),
                reason,
            });
        }
        self.wakes.remove(&TenantLabels {
            tenant: tenant.to_string(),
        });
        for direction in [DIRECTION_IN, DIRECTION_OUT] {
            self.bytes.remove(&TrafficLabels {
                server_name: server_name.to_string(),
                direction,
            });
        }
    }

    /// Records that `tenant` has series, and which: `record` notes the label sets.
    fn note_series(&self, tenant: &str, record: impl FnOnce(&mut TenantSeries)) {
        let mut tenants = self.lock_tenants();
        // Looked up first: a tenant's name is copied once, not on every connection.
        if !tenants.contains_key(tenant) {
            tenants.insert(tenant.to_string(), TenantSeries::default());
        }
        if let Some(series) = tenants.get_mut(tenant) {
            record(series);
        }
    }

    /// Every `tenant` label value in use: the routed tenants and [`UNKNOWN_TENANT`].
    fn known_tenants(&self) -> BTreeSet<String> {
        let mut known: BTreeSet<String> = self.lock_tenants().keys().cloned().collect();
        known.insert(UNKNOWN_TENANT.to_string());
        known
    }

    fn lock_tenants(&self) -> MutexGuard<'_, BTreeMap<String, TenantSeries>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct ActiveGuard {
    active: Gauge,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}
