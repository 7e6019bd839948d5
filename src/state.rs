//! The process-wide state shared by every connection: the current snapshot, and the few
//! process facts the admin API reports (start time, draining, reload outcomes).
//!
//! A request reads the snapshot with [`State::current`]. On a worker thread of the `per_core`
//! runtime (see [`State::attach_worker`]) that is a per-thread slot: the snapshot's `Arc` kept
//! with its epoch, refreshed only when [`State::store`] has published a newer epoch, so the
//! common case is one atomic load of a cache line written only by a reload (and the `Arc`
//! clone the request keeps). Elsewhere it is `ArcSwap`'s load.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// What every connection shares. Requests load the snapshot once (one atomic operation, no
/// lock) and keep it for their whole life; a reload stores a new one.
pub(crate) struct State {
    /// The current snapshot; replace it with [`State::store`] only.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// The epoch of `snapshot`, published after it (what the worker slots check).
    epoch: AtomicU64,
    /// When the server started (for uptime).
    pub(crate) started: Instant,
    /// The same moment on the wall clock (for `snakeway_process_start_time_seconds`).
    pub(crate) started_at: SystemTime,
    /// Set once shutdown has begun: listeners are closed, connections are draining.
    pub(crate) draining: AtomicBool,
    /// Reload attempts by outcome (SIGHUP and `POST /admin/reload` alike).
    pub(crate) reloads: Reloads,
}

/// Reload attempts by outcome. Written once per reload, never on the request path.
#[derive(Default)]
pub(crate) struct Reloads {
    /// Reloads that installed a new snapshot.
    pub(crate) succeeded: AtomicU64,
    /// Reloads refused (the running configuration stayed).
    pub(crate) failed: AtomicU64,
}

/// A worker thread's copy of the current snapshot.
struct Slot {
    /// The [`State`] it belongs to, by address (only compared, never followed).
    owner: usize,
    snapshot: Arc<Snapshot>,
}

thread_local! {
    /// Set on worker threads only ([`State::attach_worker`]).
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

// === impl State ===

impl State {
    /// The state of a server starting now with `snapshot`.
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            epoch: AtomicU64::new(snapshot.epoch),
            snapshot: ArcSwap::from_pointee(snapshot),
            started: Instant::now(),
            started_at: SystemTime::now(),
            draining: AtomicBool::new(false),
            reloads: Reloads::default(),
        }
    }

    /// The current snapshot, for one request (or connection) to keep to its end.
    #[inline]
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        SLOT.with(|slot| match &mut *slot.borrow_mut() {
            Some(slot) if slot.owner == self.address() => {
                let epoch = self.epoch.load(Ordering::Acquire);
                if slot.snapshot.epoch != epoch {
                    slot.snapshot = self.snapshot.load_full();
                }
                slot.snapshot.clone()
            }
            _ => self.snapshot.load_full(),
        })
    }

    /// Replaces the snapshot: new requests get `snapshot`, those in flight keep theirs. A
    /// worker's slot keeps the old one until that worker next calls [`State::current`].
    pub(crate) fn store(&self, snapshot: Snapshot) {
        let epoch = snapshot.epoch;
        self.snapshot.store(Arc::new(snapshot));
        // After the store: a slot that sees this epoch loads the new snapshot.
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Gives the current thread (a worker's) its own snapshot slot for this state.
    pub(crate) fn attach_worker(&self) {
        let slot = Slot {
            owner: self.address(),
            snapshot: self.snapshot.load_full(),
        };
        SLOT.with(|s| *s.borrow_mut() = Some(slot));
    }

    /// Drops the current thread's slot (the worker is stopping).
    pub(crate) fn detach_worker() {
        SLOT.with(|s| s.borrow_mut().take());
    }

    fn address(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Marks the start of shutdown.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

// === impl Reloads ===

impl Reloads {
    /// Counts one reload attempt.
    pub(crate) fn record(&self, succeeded: bool) {
        let counter = if succeeded {
            &self.succeeded
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(epoch: u64) -> Snapshot {
        let path = std::path::Path::new("/nonexistent/snakeway.toml");
        let text = "[[listener]]\nlisten = \"127.0.0.1:1\"\n";
        let config = snakeway_config::load_str(text, path).unwrap_or_else(|r| panic!("{r}"));
        Snapshot::build(
            config,
            path.to_owned(),
            epoch,
            None,
            crate::devices::Purpose::Check,
        )
        .unwrap_or_else(|r| panic!("{r}"))
    }

    #[test]
    fn a_worker_slot_follows_every_store() {
        let state = State::new(snapshot(1));
        let other = State::new(snapshot(7));
        // Not a worker: straight from the ArcSwap.
        assert_eq!(state.current().epoch, 1);
        state.attach_worker();
        let first = state.current();
        assert_eq!(first.epoch, 1);
        assert!(
            Arc::ptr_eq(&first, &state.current()),
            "the slot hands out the same snapshot until the next store"
        );
        state.store(snapshot(2));
        assert_eq!(state.current().epoch, 2);
        assert_eq!(state.snapshot.load().epoch, 2);
        // Only the old snapshot's own holders keep it now.
        assert_eq!(Arc::strong_count(&first), 1);
        // Another state on the same thread is never served from this one's slot.
        assert_eq!(other.current().epoch, 7);
        State::detach_worker();
        state.store(snapshot(3));
        assert_eq!(state.current().epoch, 3);
    }
}
