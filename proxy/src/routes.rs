//! The route table fed by a watch on ControlPlanes: `<name>.<tenant domain>` → the tenant API
//! server's endpoint from `status.endpoint`. Tenants appear and disappear without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hostplane_crds::{ControlPlane, LAST_ACTIVITY_ANNOTATION, WAKE_REQUESTED_ANNOTATION};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info, warn};

use crate::table::{Route, RouteMap, RouteState};

/// The host name a tenant is reached by through the proxy.
pub fn tenant_host(name: &str, domain: &str) -> String {
    format!("{name}.{domain}")
}

/// The route of one ControlPlane, when it has an endpoint to route to.
pub fn route_of(cp: &ControlPlane, domain: &str) -> Option<(String, Route)> {
    let name = cp.metadata.name.as_deref()?;
    let status = cp.status.as_ref()?;
    let endpoint = status.endpoint.as_deref()?;
    let authority = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    let backend: SocketAddr = authority.trim_end_matches('/').parse().ok()?;
    let ready = cp.condition("Ready");
    let paused = cp
        .spec
        .hibernation
        .as_ref()
        .and_then(|h| h.paused)
        .unwrap_or(false);
    let state = match ready.map(|c| (c.status.as_str(), c.reason.as_str())) {
        Some(("True", _)) => RouteState::Awake,
        _ if paused => RouteState::Paused,
        _ if status.hibernated_at.is_some() => RouteState::Hibernated,
        // Waking (or being created again after a restart): wait for it rather than fail.
        Some((_, "Creating")) => RouteState::Starting,
        // Unavailable and the like: connect and let the client see what the server does.
        _ => RouteState::Awake,
    };
    let route = Route {
        backend,
        tenant: name.to_string(),
        state,
    };
    Some((tenant_host(name, domain), route))
}

/// Keeps `routes` equal to the ControlPlanes' endpoints until the watch ends (it restarts
/// itself with backoff on errors, as kube's watcher does). Wake requests from the route table
/// become the `wake-requested` annotation on the ControlPlane.
pub async fn follow_controlplanes(client: kube::Client, domain: String, routes: Arc<RouteMap>) {
    let api = Api::<ControlPlane>::all(client);
    let waker_api = api.clone();
    routes.set_waker(Arc::new(move |tenant: &str| {
        let api = waker_api.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            if let Err(e) = annotate_now(&api, &tenant, WAKE_REQUESTED_ANNOTATION).await {
                warn!(%tenant, error = %e, "cannot ask the controller to wake the tenant");
            }
        });
    }));
    let mut pending: Vec<(String, Route)> = Vec::new();
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(cp)) => match route_of(&cp, &domain) {
                Some((host, route)) => {
                    let (state, backend) = (route.state, route.backend);
                    let old = routes.insert_route(&host, route);
                    if old.as_ref().map(|r| (r.state, r.backend)) != Some((state, backend)) {
                        info!(%host, %backend, ?state, "route updated");
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

/// Every `interval`, stamps the `last-activity` annotation on the ControlPlanes that had
/// connections since the last round, so that the controller hibernates only idle tenants.
pub async fn report_activity(client: kube::Client, routes: Arc<RouteMap>, interval: Duration) {
    let api = Api::<ControlPlane>::all(client);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for tenant in routes.take_activity() {
            match annotate_now(&api, &tenant, LAST_ACTIVITY_ANNOTATION).await {
                Ok(()) => debug!(%tenant, "activity reported"),
                // Deleted meanwhile: nothing to report.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => warn!(%tenant, error = %e, "cannot report tenant activity"),
            }
        }
    }
}

/// Sets an annotation to the current time (RFC 3339) with a merge patch: no conflict with the
/// controller's server-side applies, which never own annotations.
async fn annotate_now(api: &Api<ControlPlane>, name: &str, key: &str) -> Result<(), kube::Error> {
    let now = Timestamp::now().to_string();
    let patch = serde_json::json!({ "metadata": { "annotations": { key: now } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostplane_crds::{
        ControlPlaneCondition, ControlPlaneSpec, ControlPlaneStatus, Hibernation,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn condition(status: &str, reason: &str) -> ControlPlaneCondition {
        let t = Time("2026-11-23T12:00:00Z".parse().unwrap());
        ControlPlaneCondition {
            type_: "Ready".into(),
            status: status.into(),
            last_transition_time: t.clone(),
            last_update_time: t,
            reason: reason.into(),
            message: String::new(),
        }
    }

    #[test]
    fn routes_come_from_status_endpoints_with_the_tenant_state() {
        let mut cp = ControlPlane::new("acme", ControlPlaneSpec::default());
        assert_eq!(route_of(&cp, "tenants.test"), None);
        let state = |cp: &ControlPlane| route_of(cp, "tenants.test").map(|(_, r)| r.state);
        cp.status = Some(ControlPlaneStatus {
            endpoint: Some("https://127.0.0.1:41000".into()),
            conditions: vec![condition("True", "Available")],
            ..Default::default()
        });
        assert_eq!(
            route_of(&cp, "tenants.test"),
            Some((
                "acme.tenants.test".to_string(),
                Route {
                    backend: "127.0.0.1:41000".parse().unwrap(),
                    tenant: "acme".into(),
                    state: RouteState::Awake,
                }
            ))
        );
        let status = cp.status.as_mut().unwrap();
        status.conditions = vec![condition("False", "Hibernated")];
        status.hibernated_at = Some(condition("False", "").last_transition_time);
        assert_eq!(state(&cp), Some(RouteState::Hibernated));
        cp.spec.hibernation = Some(Hibernation {
            paused: Some(true),
            ..Default::default()
        });
        assert_eq!(state(&cp), Some(RouteState::Paused));
        cp.spec.hibernation = None;
        let status = cp.status.as_mut().unwrap();
        status.hibernated_at = None;
        status.conditions = vec![condition("False", "Creating")];
        assert_eq!(state(&cp), Some(RouteState::Starting));
        cp.status.as_mut().unwrap().conditions = vec![condition("False", "Unavailable")];
        assert_eq!(state(&cp), Some(RouteState::Awake));
    }
}
