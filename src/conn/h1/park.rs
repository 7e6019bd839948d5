//! The guard's side of parking: the one-shot slot through which it hands its transport back to
//! the connection task (`conn::park` drives the rest).

use std::sync::{Arc, OnceLock};

/// Where a parked transport waits, shared by the connection task and the guard of its current
/// hyper connection. Set once per park, by the guard; emptied by the task once hyper's
/// connection (and the guard's handle with it) is dropped, so the task then holds it alone
/// and needs no lock.
pub(crate) type Slot<IO> = Arc<OnceLock<IO>>;

/// A guard's handle on its connection's [`Slot`].
pub(crate) struct Park<IO> {
    slot: Slot<IO>,
    /// Parking is allowed: the connection was parked before, or this guard has handed hyper a
    /// request (never before the first request, whose head is bounded from accept).
    armed: bool,
}

// === impl Park ===

impl<IO> Park<IO> {
    /// A handle on `slot`; `resumed`: the connection was parked before, so it may park again
    /// before its next request (a wake-up that brought no request).
    pub(crate) fn new(slot: Slot<IO>, resumed: bool) -> Self {
        Self {
            slot,
            armed: resumed,
        }
    }

    /// Whether the guard may park.
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// A request was handed to hyper: the guard may park once it is answered.
    pub(super) fn arm(&mut self) {
        self.armed = true;
    }

    /// Hands `io` to the connection task.
    pub(super) fn put(&self, io: IO) {
        if self.slot.set(io).is_err() {
            // Not reachable: a guard parks once, and each hyper connection has its own guard.
            tracing::debug!("a parked transport was already in the slot; connection closed");
        }
    }
}
