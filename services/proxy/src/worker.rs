//! Which worker the current thread is, for per-worker upstream pools.
//!
//! Under Envoy's worker model each worker thread runs its own single-threaded runtime, and a
//! service built with [`ServiceOptions::worker_pools`](crate::ServiceOptions::worker_pools)
//! keeps one connection pool per upstream per worker: a request on worker `i` takes (and
//! returns) connections of pool `i` only, whose connection tasks run on that worker too. The
//! server marks each worker thread once, when it starts, with [`enter`]; any other thread (a
//! multi-threaded runtime's, a test's) is no worker and uses the shared pool.

use std::cell::Cell;

thread_local! {
    /// This thread's worker index; `usize::MAX`: not a worker.
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the current thread as worker `index` (zero-based) for the rest of its life, or as no
/// worker with `None`.
pub fn enter(index: Option<usize>) {
    WORKER.with(|w| w.set(index.unwrap_or(usize::MAX)));
}

/// The current thread's worker index, if it is a worker.
pub fn current() -> Option<usize> {
    let index = WORKER.with(Cell::get);
    (index != usize::MAX).then_some(index)
}

/// The slot of the current thread among `1 + workers` pools: `1 + i` on worker `i` (when
/// there is such a pool), else `0`, the shared one.
#[inline]
pub(crate) fn slot(pools: usize) -> usize {
    let index = WORKER.with(Cell::get);
    match index.checked_add(1) {
        Some(slot) if slot < pools => slot,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gets_its_own_slot_and_others_the_shared_one() {
        // Test threads are no workers until marked.
        assert_eq!(current(), None);
        assert_eq!(slot(3), 0);
        enter(Some(1));
        assert_eq!(current(), Some(1));
        assert_eq!(slot(3), 2);
        // A worker beyond the pools there are (a service built for fewer workers) shares.
        enter(Some(2));
        assert_eq!(slot(3), 0);
        assert_eq!(slot(1), 0);
        enter(None);
        assert_eq!((current(), slot(3)), (None, 0));
    }
}
