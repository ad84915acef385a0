//! Prometheus metrics of the SNI proxy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a connection ended up: `routed`, `rejected` (the client's fault: no usable
/// hello, unknown name) or `backend_unavailable`; the reason says why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
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
    wakes: Counter,
    wait_seconds: Histogram,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            connections: Family::default(),
            errors: Family::default(),
            bytes: Family::default(),
            active: Gauge::default(),
            wakes: Counter::default(),
            // 50 ms .. ~100 s: a wake takes seconds.
            wait_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
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
            "Accepted connections by result and reason",
            self.connections.clone(),
        );
        registry.register("errors", "Connection errors by reason", self.errors.clone());
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
            "Connections that found their tenant hibernated and asked for it to wake",
            self.wakes.clone(),
        );
        registry.register(
            "wake_wait_seconds",
            "How long connections were held until their tenant was ready",
            self.wait_seconds.clone(),
        );
    }

    pub(crate) fn count_wake(&self) {
        self.wakes.inc();
    }

    pub(crate) fn observe_wait(&self, waited: std::time::Duration) {
        self.wait_seconds.observe(waited.as_secs_f64());
    }

    /// Connections that asked for a hibernated tenant to wake.
    pub fn wakes(&self) -> u64 {
        self.wakes.get()
    }

    pub(crate) fn count_connection(&self, result: &'static str, reason: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels { result, reason })
            .inc();
    }

    pub(crate) fn count_error(&self, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
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

    /// Connections counted with this result and reason.
    pub fn connections(&self, result: &'static str, reason: &'static str) -> u64 {
        self.connections
            .get(&ConnectionLabels { result, reason })
            .map_or(0, |c| c.get())
    }

    /// Errors counted with this reason.
    pub fn errors(&self, reason: &'static str) -> u64 {
        self.errors
            .get(&ErrorLabels { reason })
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
}

pub(crate) struct ActiveGuard {
    active: Gauge,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}
