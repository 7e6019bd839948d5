//! The process-wide state shared by every connection: the current snapshot, and the few
//! process facts the admin API reports (start time, draining, reload outcomes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::stack::Snapshot;

/// What every connection shares. Requests load the snapshot once (one atomic operation, no
/// lock) and keep it for their whole life; a reload stores a new one.
pub(crate) struct State {
    pub(crate) snapshot: ArcSwap<Snapshot>,
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

// === impl State ===

impl State {
    /// The state of a server starting now with `snapshot`.
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            started: Instant::now(),
            started_at: SystemTime::now(),
            draining: AtomicBool::new(false),
            reloads: Reloads::default(),
        }
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
