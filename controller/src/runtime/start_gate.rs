//! How many tenants of the processes runtime start at once.
//!
//! A starting kube-apiserver is CPU-bound for seconds (and kube-controller-manager after it).
//! The reconcile concurrency does not bound starts: a pass waits for its tenant only for the
//! startup patience, then requeues and frees its place for the next tenant while the first is
//! still starting. With many ControlPlanes applied at once every tenant was started within
//! seconds, each took many times longer on a small machine, and all their memory was committed
//! together. Here a tenant holds a slot from its start until its API server answers (or it is
//! stopped, or [`SLOT_LIMIT`] passes); a tenant that finds no free slot is not started and its
//! pass ends at once (it is retried shortly), so waiting tenants never hold up other passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest one tenant may hold a slot: one that never becomes ready must not block the rest.
pub const SLOT_LIMIT: Duration = Duration::from_secs(120);

/// Admission of tenants to start, at most `limit` at a time.
pub struct StartGate {
    slots: Arc<Semaphore>,
    limit: usize,
    /// Tenants holding a slot, since when.
    starting: Mutex<HashMap<String, (OwnedSemaphorePermit, Instant)>>,
}

/// The tenant may not start yet: others hold every slot.
#[derive(Debug, thiserror::Error)]
#[error("waiting for its turn to start: {starting} tenants are starting, at most {limit} at once")]
pub struct StartBusy {
    pub starting: usize,
    pub limit: usize,
}

impl StartGate {
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            starting: Mutex::default(),
        }
    }

    /// Ok when `key` may start its processes: it holds a slot already, or takes a free one.
    pub fn admit(&self, key: &str) -> Result<(), StartBusy> {
        let mut starting = self.starting.lock().expect("start gate lock");
        // Slots held too long go back (dropping the permit frees it).
        starting.retain(|_, (_, since)| since.elapsed() < SLOT_LIMIT);
        if starting.contains_key(key) {
            return Ok(());
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                starting.insert(key.to_string(), (slot, Instant::now()));
                Ok(())
            }
            Err(_) => Err(StartBusy {
                starting: starting.len(),
                limit: self.limit,
            }),
        }
    }

    /// `key` has started (its API server answers) or was stopped: its slot goes back.
    pub fn release(&self, key: &str) {
        self.starting.lock().expect("start gate lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_limit_tenants_start_at_once() {
        let gate = StartGate::new(2);
        gate.admit("a").unwrap();
        gate.admit("b").unwrap();
        let busy = gate.admit("c").unwrap_err();
        assert_eq!((busy.starting, busy.limit), (2, 2));
        // A tenant holding a slot is admitted again without another.
        gate.admit("a").unwrap();
        gate.release("a");
        gate.admit("c").unwrap();
        assert!(gate.admit("a").is_err());
        gate.release("b");
        gate.admit("a").unwrap();
        // Releasing a tenant without a slot changes nothing.
        gate.release("nobody");
        assert!(gate.admit("d").is_err());
    }
}
