//! WebSocket tunnels on the server side: where they run, what they hold, and how many a route
//! may have open.
//!
//! hyper hands an upgraded connection's socket over and its connection task ends, so the
//! tunnel runs as a task of its own. That task is tracked with the connections (shutdown waits
//! for it up to `shutdown_grace_ms`; whatever is still open then is closed with the runtime),
//! keeps holding the connection's `max_connections` slot, and holds one of its route's
//! `max_websockets` until it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use snakeway_proxy::{Tunnel, TunnelError};
use tokio_util::task::TaskTracker;

use super::listener::Slot;

/// Runs the tunnels of one downstream connection. The connection's service puts a clone in the
/// extensions of each request hyper could upgrade (only those: no cost for the others).
#[derive(Clone)]
pub(crate) struct TunnelHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    /// The server's connection tasks.
    tracker: TaskTracker,
    /// The listener's `idle_timeout_ms`: a tunnel with no byte either way for this long closes.
    idle: Duration,
    /// The connection's `max_connections` slot, held (with this host) until the connection and
    /// its tunnel, if any, have ended.
    _slot: Slot,
}

// === impl TunnelHost ===

impl TunnelHost {
    /// The host for one connection, holding its `max_connections` slot (one allocation per
    /// connection for both).
    pub(crate) fn new(tracker: TaskTracker, idle: Duration, slot: Slot) -> Self {
        Self {
            inner: Arc::new(HostInner {
                tracker,
                idle,
                _slot: slot,
            }),
        }
    }

    /// Runs `tunnel` to its end as a tracked task holding `open` (its place in the route's
    /// count) and the connection's slot.
    pub(crate) fn spawn(&self, tunnel: Tunnel, open: OpenWebSocket, route: Arc<str>) {
        // The tunnel keeps the host, and with it the connection's slot.
        let host = self.inner.clone();
        let idle = self.inner.idle;
        self.inner.tracker.spawn(async move {
            let _held = (host, open);
            match tunnel.run(idle).await {
                Ok(stats) => tracing::debug!(
                    %route,
                    sent = stats.sent,
                    received = stats.received,
                    "websocket closed"
                ),
                Err(error @ TunnelError::Idle(_)) => {
                    tracing::info!(%route, %error, "websocket closed: idle timeout");
                }
                Err(error) => tracing::debug!(%route, %error, "websocket closed with an error"),
            }
        });
    }
}

/// How many WebSockets one route has open. Shared by the snapshots that have the route (by
/// name), so a tunnel opened before a reload keeps counting against the route after it.
#[derive(Debug, Default)]
pub(crate) struct WebSocketCount {
    open: AtomicUsize,
}

/// A route's `max_websockets` and its open count.
#[derive(Clone, Debug)]
pub(crate) struct WebSockets {
    /// The open count, carried over reloads.
    pub(crate) count: Arc<WebSocketCount>,
    /// `max_websockets` of this snapshot.
    pub(crate) max: usize,
}

/// One open WebSocket of a route: its place in the count, given back on drop.
pub(crate) struct OpenWebSocket(Arc<WebSocketCount>);

// === impl WebSockets ===

impl WebSockets {
    /// Takes a place for one more WebSocket, unless `max` are open.
    pub(crate) fn try_open(&self) -> Option<OpenWebSocket> {
        self.count
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenWebSocket(self.count.clone()))
    }
}

impl Drop for OpenWebSocket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_bounded_and_given_back() {
        let ws = WebSockets {
            count: Arc::default(),
            max: 2,
        };
        let a = ws.try_open().expect("first");
        let b = ws.try_open().expect("second");
        assert!(ws.try_open().is_none(), "max reached");
        drop(a);
        let c = ws.try_open().expect("a place was given back");
        // A reload that lowers the limit: open ones stay, new ones wait for the count to drop.
        let lowered = WebSockets {
            count: ws.count,
            max: 1,
        };
        assert!(lowered.try_open().is_none());
        drop((b, c));
        assert!(lowered.try_open().is_some());
    }
}
