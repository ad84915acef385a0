//! The route table: server name → tenant backend and whether it is awake. Changed at run time by
//! the ControlPlane watch; connections for a hibernated tenant ask for a wake-up and wait for the
//! route to turn awake. It also keeps per-tenant activity, which the watch side reports to the
//! controller (idle tenants hibernate).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Whether a tenant's API server can take connections now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteState {
    /// Ready: connect at once.
    Awake,
    /// Processes stopped for idleness: the first connection wakes it and waits.
    Hibernated,
    /// Waking or restarting: connections wait until it is ready.
    Starting,
    /// Hibernated on purpose (`spec.hibernation.paused`): connections are refused.
    Paused,
}

/// Where a tenant's API server listens: an address (the processes runtime's loopback port), or a
/// host name resolved at every connect (the pods runtime's Service, `NAME.NAME-system.svc`, whose
/// address is the cluster DNS's to give).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Backend {
    /// Parses an endpoint's authority (`127.0.0.1:6443`, `[::1]:6443`, `acme.acme-system.svc:443`,
    /// or a bare host, which means port 443). `None` for anything that is not an authority.
    pub fn parse(authority: &str) -> Option<Backend> {
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return Some(Backend::Addr(addr));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok()?),
            None => (authority, 443),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        valid.then(|| Backend::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Connects, resolving a host name first.
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            Backend::Addr(addr) => tokio::net::TcpStream::connect(addr).await,
            Backend::Name { host, port } => {
                tokio::net::TcpStream::connect((host.as_str(), *port)).await
            }
        }
    }
}

impl From<SocketAddr> for Backend {
    fn from(addr: SocketAddr) -> Self {
        Backend::Addr(addr)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Addr(addr) => addr.fmt(f),
            Backend::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Where one server name goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub backend: Backend,
    /// The ControlPlane's name.
    pub tenant: String,
    pub state: RouteState,
}

/// Asks the controller to wake a tenant (by name); called at most once per
/// [`WAKE_REQUEST_INTERVAL`] per tenant.
pub type Waker = Arc<dyn Fn(&str) + Send + Sync>;

/// A wake request not answered within this time is sent again by the next connection.
pub const WAKE_REQUEST_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Activity {
    open: usize,
    /// A connection opened or closed since the last report.
    seen: bool,
}

/// The route table. Lookups see every change at once.
pub struct RouteMap {
    routes: RwLock<HashMap<String, Route>>,
    /// Bumped on every change, so that waiting connections look again.
    changes: watch::Sender<u64>,
    waker: OnceLock<Waker>,
    wake_requests: Mutex<HashMap<String, Instant>>,
    activity: Mutex<HashMap<String, Activity>>,
}

impl Default for RouteMap {
    fn default() -> Self {
        Self {
            routes: RwLock::default(),
            changes: watch::Sender::new(0),
            waker: OnceLock::new(),
            wake_requests: Mutex::default(),
            activity: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for RouteMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMap")
            .field("routes", &*self.read())
            .finish_non_exhaustive()
    }
}

impl RouteMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an awake route named after its server name; returns the backend it
    /// replaced.
    pub fn insert(&self, server_name: &str, backend: impl Into<Backend>) -> Option<Backend> {
        let route = Route {
            backend: backend.into(),
            tenant: server_name.to_string(),
            state: RouteState::Awake,
        };
        self.insert_route(server_name, route).map(|r| r.backend)
    }

    /// Adds or replaces a route; returns the route it replaced.
    pub fn insert_route(&self, server_name: &str, route: Route) -> Option<Route> {
        if route.state != RouteState::Hibernated {
            self.lock_wake_requests().remove(&route.tenant);
        }
        let old = self.write().insert(server_name.to_ascii_lowercase(), route);
        self.changed();
        old
    }

    /// Removes a route; returns its backend.
    pub fn remove(&self, server_name: &str) -> Option<Backend> {
        let old = self.write().remove(&server_name.to_ascii_lowercase());
        self.changed();
        old.map(|r| r.backend)
    }

    /// Replaces every route at once (after a watch restarts, say).
    pub fn replace_all(&self, routes: impl IntoIterator<Item = (String, Route)>) {
        let routes = routes
            .into_iter()
            .map(|(name, route)| (name.to_ascii_lowercase(), route))
            .collect();
        *self.write() = routes;
        self.changed();
    }

    /// The backend for a (lower-case) server name, whatever its state.
    pub fn resolve(&self, server_name: &str) -> Option<Backend> {
        self.route(server_name).map(|r| r.backend)
    }

    pub fn route(&self, server_name: &str) -> Option<Route> {
        self.read().get(server_name).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Sets who is asked to wake hibernated tenants (once; later calls are ignored).
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    /// Asks for `tenant` to be woken, unless that was asked recently.
    pub fn request_wake(&self, tenant: &str) {
        let Some(waker) = self.waker.get() else {
            return;
        };
        let now = Instant::now();
        {
            let mut requests = self.lock_wake_requests();
            if requests
                .get(tenant)
                .is_some_and(|at| now.duration_since(*at) < WAKE_REQUEST_INTERVAL)
            {
                return;
            }
            requests.insert(tenant.to_string(), now);
        }
        waker(tenant);
    }

    /// Waits until the route for `server_name` is awake and returns its backend; `None` when the
    /// route goes away, is paused, or `timeout` passes first.
    pub async fn wait_awake(&self, server_name: &str, timeout: Duration) -> Option<Backend> {
        let mut changes = self.changes.subscribe();
        let wait = async {
            loop {
                match self.route(server_name) {
                    Some(route) if route.state == RouteState::Awake => return Some(route.backend),
                    None => return None,
                    Some(route) if route.state == RouteState::Paused => return None,
                    Some(_) => {}
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Counts a connection to `tenant` as open until the guard is dropped.
    pub fn connection_opened(self: &Arc<Self>, tenant: &str) -> ActivityGuard {
        let mut activity = self.lock_activity();
        let entry = activity.entry(tenant.to_string()).or_default();
        entry.open += 1;
        entry.seen = true;
        ActivityGuard {
            routes: self.clone(),
            tenant: tenant.to_string(),
        }
    }

    /// Tenants with traffic since the last call: a connection opened, closed or still open.
    /// Tenants without any are forgotten.
    pub fn take_activity(&self) -> Vec<String> {
        let mut activity = self.lock_activity();
        activity.retain(|_, a| a.open > 0 || a.seen);
        let mut active: Vec<String> = activity
            .iter_mut()
            .map(|(tenant, a)| {
                a.seen = false;
                tenant.clone()
            })
            .collect();
        active.sort();
        active
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    // A panic while holding a lock cannot leave a map half-changed (every change is one
    // HashMap call), so a poisoned lock is still good to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Route>> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Route>> {
        self.routes.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_wake_requests(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.wake_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_activity(&self) -> std::sync::MutexGuard<'_, HashMap<String, Activity>> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An open connection to a tenant, for activity tracking.
pub struct ActivityGuard {
    routes: Arc<RouteMap>,
    tenant: String,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let mut activity = self.routes.lock_activity();
        if let Some(a) = activity.get_mut(&self.tenant) {
            a.open = a.open.saturating_sub(1);
            a.seen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_into_addresses_or_host_names() {
        assert_eq!(
            Backend::parse("127.0.0.1:6443"),
            Some(Backend::Addr("127.0.0.1:6443".parse().unwrap()))
        );
        assert_eq!(
            Backend::parse("[::1]:6443"),
            Some(Backend::Addr("[::1]:6443".parse().unwrap()))
        );
        let service = Backend::Name {
            host: "acme.acme-system.svc".into(),
            port: 443,
        };
        assert_eq!(
            Backend::parse("Acme.acme-system.svc:443"),
            Some(service.clone())
        );
        assert_eq!(
            Backend::parse("acme.acme-system.svc"),
            Some(service.clone())
        );
        assert_eq!(service.to_string(), "acme.acme-system.svc:443");
        for bad in [
            "",
            ":443",
            "acme.svc:port",
            "acme.svc:70000",
            "a/b:443",
            "user@acme:443",
        ] {
            assert_eq!(Backend::parse(bad), None, "{bad:?}");
        }
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn backend() -> Backend {
        Backend::Addr("127.0.0.1:6443".parse().unwrap())
    }

    fn route(state: RouteState) -> Route {
        Route {
            backend: backend(),
            tenant: "acme".into(),
            state,
        }
    }

    #[test]
    fn route_map_is_case_insensitive_and_changes_at_run_time() {
        let routes = RouteMap::new();
        assert_eq!(routes.insert("Acme.Example", backend()), None);
        assert_eq!(routes.resolve("acme.example"), Some(backend()));
        assert_eq!(routes.remove("ACME.example"), Some(backend()));
        assert_eq!(routes.resolve("acme.example"), None);
        routes.replace_all([("Other.Example".to_string(), route(RouteState::Awake))]);
        assert_eq!(routes.resolve("other.example"), Some(backend()));
        assert_eq!(routes.len(), 1);
    }

    #[tokio::test]
    async fn a_waiting_connection_proceeds_when_its_route_wakes_and_gives_up_otherwise() {
        let routes = Arc::new(RouteMap::new());
        routes.insert_route("acme.t", route(RouteState::Hibernated));
        let waiter = {
            let routes = routes.clone();
            tokio::spawn(async move { routes.wait_awake("acme.t", Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        routes.insert_route("acme.t", route(RouteState::Starting));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "starting is not awake");
        routes.insert_route("acme.t", route(RouteState::Awake));
        assert_eq!(waiter.await.unwrap(), Some(backend()));

        routes.insert_route("acme.t", route(RouteState::Paused));
        assert_eq!(
            routes.wait_awake("acme.t", Duration::from_secs(10)).await,
            None
        );
        routes.insert_route("acme.t", route(RouteState::Hibernated));
        assert_eq!(
            routes.wait_awake("acme.t", Duration::from_millis(50)).await,
            None
        );
    }

    #[test]
    fn wake_requests_are_sent_once_per_interval_and_again_after_a_wake() {
        let routes = RouteMap::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        routes.set_waker(Arc::new(move |tenant| {
            assert_eq!(tenant, "acme");
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        routes.insert_route("acme.t", route(RouteState::Hibernated));
        routes.request_wake("acme");
        routes.request_wake("acme");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Once it was awake, the next hibernation's first connection asks again.
        routes.insert_route("acme.t", route(RouteState::Awake));
        routes.insert_route("acme.t", route(RouteState::Hibernated));
        routes.request_wake("acme");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn activity_reports_open_and_recent_connections_once() {
        let routes = Arc::new(RouteMap::new());
        let open = routes.connection_opened("acme");
        drop(routes.connection_opened("zeta"));
        assert_eq!(routes.take_activity(), ["acme", "zeta"]);
        // Still open: still active. Closed and reported: forgotten.
        assert_eq!(routes.take_activity(), ["acme"]);
        drop(open);
        assert_eq!(routes.take_activity(), ["acme"]);
        assert!(routes.take_activity().is_empty());
    }
}
