//! Connections kept per node address.

use super::conn::{CallError, Connection};
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long an address that failed is avoided while others are available.
const BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Pool {
    size: usize,
    max_frame: usize,
    slots: DashMap<String, Arc<Slot>>,
    failed: DashMap<String, Instant>,
    /// Whether `failed` may hold anything: spares the hot path a walk over the map's shards.
    any_failed: AtomicBool,
}

/// The connections to one address, and a lock so that only one dial runs at a time.
#[derive(Debug, Default)]
struct Slot {
    conns: Mutex<Vec<Connection>>,
    dialing: tokio::sync::Mutex<()>,
    next: AtomicUsize,
}

impl Slot {
    /// A usable connection, if the slot is full (fewer than `size` means: dial another).
    fn pick(&self, size: usize) -> Option<Connection> {
        let mut conns = self.conns.lock().unwrap();
        if conns.len() >= size {
            let k = if size == 1 {
                0
            } else {
                self.next.fetch_add(1, Ordering::Relaxed) % conns.len()
            };
            if conns[k].is_usable() {
                return Some(conns[k].clone());
            }
        }
        conns.retain(Connection::is_usable);
        None
    }
}

impl Pool {
    pub(crate) fn new(size: usize, max_frame: usize) -> Self {
        Self {
            size,
            max_frame,
            slots: DashMap::new(),
            failed: DashMap::new(),
            any_failed: AtomicBool::new(false),
        }
    }

    /// A usable connection to `addr`, dialing one if needed (one dial at a time per address).
    pub(crate) async fn get(&self, addr: &str, timeout: Duration) -> Result<Connection, CallError> {
        if let Some(c) = self.slots.get(addr).and_then(|s| s.pick(self.size)) {
            return Ok(c);
        }
        let slot = Arc::clone(&self.slots.entry(addr.to_owned()).or_default());
        let _dialing = slot.dialing.lock().await;
        if let Some(c) = slot.pick(self.size) {
            return Ok(c);
        }
        let conn =
            Connection::connect(addr, timeout.min(Duration::from_secs(5)), self.max_frame).await?;
        self.failed.remove(addr);
        slot.conns.lock().unwrap().push(conn.clone());
        Ok(conn)
    }

    /// Remembers that `addr` failed, so the selector avoids it for a while.
    pub(crate) fn mark_failed(&self, addr: &str) {
        self.failed
            .insert(addr.to_owned(), Instant::now() + BACKOFF);
    }

    /// Whether `addr` failed recently.
    pub(crate) fn is_backing_off(&self, addr: &str) -> bool {
        if !self.any_failed.load(Ordering::Relaxed) {
            return false;
        }
        self.failed
            .get(addr)
            .is_some_and(|until| *until > Instant::now())
    }
}
