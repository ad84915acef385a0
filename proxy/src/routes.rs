//! The route table fed by a watch on ControlPlanes: `<name>.<tenant domain>` → the tenant API
//! server's endpoint from `status.endpoint`. Tenants appear and disappear without a restart.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use hostplane_crds::ControlPlane;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{info, warn};

use crate::router::RouteMap;

/// The host name a tenant is reached by through the proxy.
pub fn tenant_host(name: &str, domain: &str) -> String {
    format!("{name}.{domain}")
}

/// The route of one ControlPlane, when it has an endpoint to route to.
pub fn route_of(cp: &ControlPlane, domain: &str) -> Option<(String, SocketAddr)> {
    let name = cp.metadata.name.as_deref()?;
    let endpoint = cp.status.as_ref()?.endpoint.as_deref()?;
    let authority = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    let backend: SocketAddr = authority.trim_end_matches('/').parse().ok()?;
    Some((tenant_host(name, domain), backend))
}

/// Keeps `routes` equal to the ControlPlanes' endpoints until the watch ends (it restarts
/// itself with backoff on errors, as kube's watcher does).
pub async fn follow_controlplanes(client: kube::Client, domain: String, routes: Arc<RouteMap>) {
    let api = Api::<ControlPlane>::all(client);
    let mut pending: Vec<(String, SocketAddr)> = Vec::new();
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(cp)) => match route_of(&cp, &domain) {
                Some((host, backend)) => {
                    if routes.insert(&host, backend) != Some(backend) {
                        info!(%host, %backend, "route added");
                    }
                }
                None => {
                    if let Some(name) = cp.metadata.name.as_deref() {
                        routes.remove(&tenant_host(name, &domain));
                    }
                }
            },
            Ok(Event::Delete(cp)) => {
                if let Some(name) = cp.metadata.name.as_deref()
                    && routes.remove(&tenant_host(name, &domain)).is_some()
                {
                    info!(host = %tenant_host(name, &domain), "route removed");
                }
            }
            Ok(Event::Init) => pending.clear(),
            Ok(Event::InitApply(cp)) => pending.extend(route_of(&cp, &domain)),
            Ok(Event::InitDone) => {
                info!(
                    routes = pending.len(),
                    "route table synchronised with ControlPlanes"
                );
                routes.replace_all(std::mem::take(&mut pending));
            }
            Err(e) => warn!(error = %e, "ControlPlane watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostplane_crds::{ControlPlaneSpec, ControlPlaneStatus};

    #[test]
    fn routes_come_from_status_endpoints() {
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        assert_eq!(route_of(&cp, "tenants.test"), None);
        cp.status = Some(ControlPlaneStatus {
            endpoint: Some("https://127.0.0.1:41000".into()),
            ..Default::default()
        });
        assert_eq!(
            route_of(&cp, "tenants.test"),
            Some((
                "acme.tenants.test".to_string(),
                "127.0.0.1:41000".parse().unwrap()
            ))
        );
    }
}
