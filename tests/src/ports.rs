//! Free loopback ports for the servers a test starts.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

use rand::Rng;

/// Lowest port handed out; below it live well-known services.
const LOWEST: u16 = 10_000;

/// A loopback TCP port that is free now and has not been handed out before in this process.
///
/// Ports are drawn at random from *below* the kernel's ephemeral range: a port from
/// `bind(127.0.0.1:0)` lies inside that range, where any outgoing connection (a client of another
/// test's server, say) may take it as its source port between this call and the server binding
/// it. The hostplane controller allocates its tenants' ports with `bind(:0)`, so staying out of
/// the ephemeral range also keeps the harness off the controller's ports. Falls back to
/// `bind(:0)` when the range below is too small.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_start = ephemeral_range_start();
    if ephemeral_start > LOWEST + 1_000 {
        let mut rng = rand::rng();
        for _ in 0..1_000 {
            let port = rng.random_range(LOWEST..ephemeral_start);
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("binding a loopback port")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// First port of the kernel's ephemeral (automatic source port) range.
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
