//! Prometheus metrics of the SNI proxy.
//!
//! Every series of a tenant carries its name, taken from the route table only: never whatever a
//! client put in SNI, so that clients cannot grow the series without bound. Connections that
//! found no tenant (no usable hello, an unknown name) are counted under [`UNKNOWN_TENANT`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

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
    /// The `tenant` label values counted so far (bounded by the route table), so that totals
    /// over tenants can be read back: a [`Family`] cannot be iterated.
    tenants: Arc<Mutex<BTreeSet<String>>>,
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
        self.wakes
            .get_or_create(&TenantLabels {
                tenant: self.tenant_label(tenant),
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
        let tenant = self.tenant_label(tenant.unwrap_or(UNKNOWN_TENANT));
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
        let tenant = self.tenant_label(tenant.unwrap_or(UNKNOWN_TENANT));
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

    /// Remembers a tenant label value and returns it owned, for a label set.
    fn tenant_label(&self, tenant: &str) -> String {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if !tenants.contains(tenant) {
            tenants.insert(tenant.to_string());
        }
        tenant.to_string()
    }

    fn known_tenants(&self) -> Vec<String> {
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.iter().cloned().collect()
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
