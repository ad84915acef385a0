//! hostplane proxy (see DESIGN.md, "Proxy"): one TLS port for all tenants. The
//! ClientHello's server name picks the tenant's API server; TLS is passed through,
//! never terminated.

pub mod client_hello;
pub mod metrics;
pub mod router;
#[cfg(feature = "routes")]
pub mod routes;
#[cfg(all(feature = "splice", target_os = "linux"))]
mod splice;
pub mod table;

pub use client_hello::{HelloError, NameError, Parsed, ServerName, parse_client_hello};
pub use metrics::ProxyMetrics;
pub use router::{ProxyConfig, Relay, serve};
pub use table::{Backend, Route, RouteMap, RouteState};
