//! The route table fed by a watch on ControlPlanes: `<name>.<tenant domain>` → the tenant API
//! server's endpoint from `status.endpoint`. Tenants appear and disappear without a restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hostplane_crds::{ControlPlane, LAST_ACTIVITY_ANNOTATION, WAKE_REQUESTED_ANNOTATION};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info, warn};

use crate::metrics::ProxyMetrics;
use crate::table::{Backend, Route, RouteMap, RouteState};

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
    let backend = Backend::parse(authority.trim_end_matches('/'))?;
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
/// itself with backoff on errors, as kube's watcher does), and removes a deleted tenant's series
/// from `metrics` with its route. Wake requests from the route table become the
/// `wake-requested` annotation on the ControlPlane.
pub async fn follow_controlplanes(
    client: kube::Client,
    domain: String,
    routes: Arc<RouteMap>,
    metrics: ProxyMetrics,
) {
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
    let mut follower = RouteFollower::new(domain, routes, metrics);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => follower.apply(event),
            Err(e) => warn!(error = %e, "ControlPlane watch failed; retrying"),
        }
    }
}

/// Applies ControlPlane watch events to the route table and the metrics.
struct RouteFollower {
    domain: String,
    routes: Arc<RouteMap>,
    metrics: ProxyMetrics,
    /// Routes listed since the watch (re)started, applied at once when the list is complete.
    pending: Vec<(String, Route)>,
    /// Every ControlPlane listed since the watch (re)started, with an endpoint or not.
    listed: BTreeSet<String>,
}

impl RouteFollower {
    fn new(domain: String, routes: Arc<RouteMap>, metrics: ProxyMetrics) -> Self {
        Self {
            domain,
            routes,
            metrics,
            pending: Vec::new(),
            listed: BTreeSet::new(),
        }
    }

    fn apply(&mut self, event: Event<ControlPlane>) {
        match event {
            Event::Apply(cp) => match route_of(&cp, &self.domain) {
                Some((host, route)) => {
                    let old = self.routes.insert_route(&host, route.clone());
                    if old.as_ref().map(|r| (r.state, &r.backend))
                        != Some((route.state, &route.backend))
                    {
                        info!(%host, backend = %route.backend, state = ?route.state, "route updated");
                    }
                }
                // No endpoint (yet): nothing to route to, but the tenant and its series stay.
                None => {
                    if let Some(name) = cp.metadata.name.as_deref() {
                        self.routes.remove(&tenant_host(name, &self.domain));
                    }
                }
            },
            Event::Delete(cp) => {
                if let Some(name) = cp.metadata.name.as_deref() {
                    self.remove_deleted(name);
                }
            }
            Event::Init => {
                self.pending.clear();
                self.listed.clear();
            }
            Event::InitApply(cp) => {
                self.listed.extend(cp.metadata.name.clone());
                self.pending.extend(route_of(&cp, &self.domain));
            }
            Event::InitDone => {
                info!(
                    routes = self.pending.len(),
                    "route table synchronised with ControlPlanes"
                );
                self.routes.replace_all(std::mem::take(&mut self.pending));
                // Tenants deleted while the watch was down: no Delete event comes for them.
                let listed = std::mem::take(&mut self.listed);
                for tenant in self.metrics.tenants() {
                    if !listed.contains(&tenant) {
                        self.remove_deleted(&tenant);
                    }
                }
            }
        }
    }

    /// Removes a deleted tenant's route and its series.
    fn remove_deleted(&self, name: &str) {
        let host = tenant_host(name, &self.domain);
        if self.routes.remove(&host).is_some() {
            info!(%host, "route removed");
        }
        // Server names are matched, and so labelled, in lower case.
        self.metrics.remove_tenant(name, &host.to_ascii_lowercase());
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
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use crate::metrics::{DIRECTION_IN, DIRECTION_OUT};

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
                    backend: Backend::parse("127.0.0.1:41000").unwrap(),
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
        // The pods runtime's endpoint is the tenant's Service.
        cp.status.as_mut().unwrap().endpoint = Some("https://acme.acme-system.svc:443".into());
        assert_eq!(
            route_of(&cp, "tenants.test").map(|(_, r)| r.backend),
            Some(Backend::Name {
                host: "acme.acme-system.svc".into(),
                port: 443
            })
        );
    }

    /// A ControlPlane with an endpoint: Ready, or hibernated.
    fn tenant(name: &str, port: u16, hibernated: bool) -> ControlPlane {
        let mut cp = ControlPlane::new(name, ControlPlaneSpec::default());
        let ready = if hibernated {
            condition("False", "Hibernated")
        } else {
            condition("True", "Available")
        };
        cp.status = Some(ControlPlaneStatus {
            endpoint: Some(format!("https://127.0.0.1:{port}")),
            hibernated_at: hibernated.then(|| ready.last_transition_time.clone()),
            conditions: vec![ready],
            ..Default::default()
        });
        cp
    }

    /// A proxy's route table and metrics, following ControlPlanes `acme` and `other`, both
    /// with traffic, errors and wakes counted, and a connection that reached no tenant.
    fn follower_with_traffic() -> (RouteFollower, ProxyMetrics) {
        let metrics = ProxyMetrics::default();
        let routes = Arc::new(RouteMap::new());
        let mut follower = RouteFollower::new("tenants.test".into(), routes, metrics.clone());
        for (name, port) in [("acme", 41000), ("other", 41001)] {
            follower.apply(Event::Apply(tenant(name, port, false)));
            metrics.count_wake(name);
            metrics.count_connection(Some(name), "routed", "ok");
            metrics.count_error(Some(name), "relay_io");
            for direction in [DIRECTION_IN, DIRECTION_OUT] {
                metrics
                    .traffic(&format!("{name}.tenants.test"), direction)
                    .inc_by(100);
            }
        }
        metrics.count_connection(None, "rejected", "unknown_server_name");
        (follower, metrics)
    }

    /// The series Prometheus scrapes that name `tenant` (by its name or its server name).
    fn series_of(metrics: &ProxyMetrics, tenant: &str) -> Vec<String> {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text.lines()
            .filter(|l| {
                l.contains(&format!("tenant=\"{tenant}\""))
                    || l.contains(&format!("server_name=\"{tenant}.tenants.test\""))
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_deleted_tenants_series_go_with_its_route_and_a_hibernated_ones_stay() {
        let (mut follower, metrics) = follower_with_traffic();
        // Connections, errors, wakes, bytes in and out.
        assert_eq!(
            series_of(&metrics, "acme").len(),
            5,
            "{:?}",
            series_of(&metrics, "acme")
        );

        follower.apply(Event::Apply(tenant("acme", 41000, true)));
        assert_eq!(
            follower.routes.route("acme.tenants.test").map(|r| r.state),
            Some(RouteState::Hibernated)
        );
        assert_eq!(
            series_of(&metrics, "acme").len(),
            5,
            "hibernation keeps the series"
        );

        follower.apply(Event::Delete(tenant("acme", 41000, true)));
        assert_eq!(follower.routes.route("acme.tenants.test"), None);
        assert_eq!(series_of(&metrics, "acme"), Vec::<String>::new());
        assert_eq!(metrics.tenants(), ["other"]);
        assert_eq!(series_of(&metrics, "other").len(), 5);
        assert_eq!(metrics.connections("rejected", "unknown_server_name"), 1);
    }

    #[test]
    fn tenants_deleted_while_the_watch_was_down_lose_their_series_on_the_next_list() {
        let (mut follower, metrics) = follower_with_traffic();
        // The list after a restarted watch: `acme` is gone, `other` has no endpoint for now.
        let mut other = tenant("other", 41001, false);
        other.status = None;
        follower.apply(Event::Init);
        follower.apply(Event::InitApply(other));
        follower.apply(Event::InitDone);
        assert!(follower.routes.is_empty());
        assert_eq!(series_of(&metrics, "acme"), Vec::<String>::new());
        assert_eq!(
            series_of(&metrics, "other").len(),
            5,
            "a tenant still listed keeps them"
        );
    }
}
