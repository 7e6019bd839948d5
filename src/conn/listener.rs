//! Listening sockets and the connections accepted on them.
//!
//! Each configured address has one accept loop, or under the `per_core` runtime one per
//! worker, each on its worker's own `SO_REUSEPORT` socket (the kernel spreads connections over
//! them; a connection is served on the worker that accepted it). A connection takes a slot of
//! the listener's `max_connections` [`Limit`] (one per address, shared by its accept loops)
//! before it is accepted, so excess clients wait in the kernel's accept queue. While a loop
//! waits for a slot, the listener is under pressure (see [`watch`](super::watch)): its
//! connections that do no useful work, including those still in the TLS handshake or the
//! protocol sniff, are closed sooner. Connection settings (TLS, HTTP
//! versions, timeouts) are read from the current snapshot at accept time, so a reload changes
//! them for new connections without re-binding.
//!
//! A connection's protocol is decided once (see [`detect`](super::detect)): HTTP/2 goes to
//! hyper's `http2` builder, HTTP/1 to its `http1` builder over the framing guard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use snakeway_config::{Problem, Report};
use snakeway_core::metrics::GaugeGuard;
use snakeway_proxy::Downstream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::detect;
use super::park::ParkingH1;
use super::plain::Plain;
use super::serving::{Handshake, Http, Serving, Tcp};
use super::tunnel::TunnelHost;
use super::watch::{self, Active, Meter, Metered, Pressure, Reduced, Watch, Watched};
use crate::conn::h1::Rejections;
use crate::session::{ConnService, ListenerTag};
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::state::State;
use crate::telemetry::recorded::TlsFailure;

/// The open listeners, by configured address.
pub(crate) struct Listeners {
    open: HashMap<SocketAddr, Open>,
    /// Every connection task, so shutdown can wait for them.
    connections: TaskTracker,
    /// Cancelled when the server shuts down: connections finish their requests and close.
    shutdown: CancellationToken,
    /// The `per_core` workers' runtimes: each gets its own `SO_REUSEPORT` socket and accept
    /// loop per address. Empty under `work_stealing`: one socket and accept loop per address,
    /// on the current (multi-threaded) runtime.
    workers: Vec<Handle>,
}

struct Open {
    stop: CancellationToken,
    /// Shared by the address's accept loops (one per worker under `per_core`).
    limit: Arc<Limit>,
}

/// Sockets bound for a new configuration but not serving yet: per address, one socket, or one
/// per worker (in worker order).
pub(crate) struct Bound(Vec<(SocketAddr, Vec<TcpListener>)>);

// === impl Listeners ===

impl Listeners {
    /// No listeners open yet. `workers` as for the field: empty under `work_stealing`.
    pub(crate) fn new(workers: Vec<Handle>) -> Self {
        Self {
            open: HashMap::new(),
            connections: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            workers,
        }
    }

    /// Binds the addresses of `snapshot` that are not open yet (under `per_core`, one socket
    /// per worker). Nothing is served until [`Listeners::apply`]; on failure every socket
    /// bound here is closed again.
    pub(crate) fn bind(&self, snapshot: &Snapshot) -> Result<Bound, Report> {
        let mut bound = Vec::new();
        let mut problems = Vec::new();
        for (i, l) in snapshot.config.listeners.iter().enumerate() {
            if self.open.contains_key(&l.listen) {
                continue;
            }
            let sockets = if self.workers.is_empty() {
                bind(l.listen).map(|listener| vec![listener])
            } else {
                bind_per_worker(l.listen, &self.workers)
            };
            match sockets {
                Ok(sockets) => bound.push((l.listen, sockets)),
                Err(e) => problems.push(Problem {
                    file: snapshot.source.clone(),
                    key: format!("listener[{i}].listen"),
                    message: format!("cannot listen on {}: {e}", l.listen),
                }),
            }
        }
        if problems.is_empty() {
            Ok(Bound(bound))
        } else {
            Err(Report { problems })
        }
    }

    /// Starts serving `bound`, closes listeners that `snapshot` no longer has, and applies
    /// changed connection limits. Call after the snapshot is stored.
    pub(crate) fn apply(&mut self, bound: Bound, snapshot: &Snapshot, state: &Arc<State>) {
        self.open.retain(|addr, open| {
            let keep = snapshot.listeners.contains_key(addr);
            if !keep {
                tracing::info!(%addr, "listener closed");
                open.stop.cancel();
            }
            keep
        });
        for (addr, open) in &self.open {
            open.limit.resize(snapshot.listeners[addr].max_connections);
        }
        for (addr, sockets) in bound.0 {
            let runtime = &snapshot.listeners[&addr];
            let local = sockets.first().and_then(|s| s.local_addr().ok());
            let local = local.unwrap_or(addr);
            tracing::info!(
                listener = %runtime.name,
                addr = %local,
                tls = runtime.tls.is_some(),
                sockets = sockets.len(),
                "listening"
            );
            let open = Open {
                stop: CancellationToken::new(),
                limit: Arc::new(Limit::new(runtime.max_connections)),
            };
            for (i, listener) in sockets.into_iter().enumerate() {
                let accept = AcceptLoop {
                    key: addr,
                    listener,
                    slot_first: self.workers.is_empty(),
                    state: state.clone(),
                    limit: open.limit.clone(),
                    stop: open.stop.clone(),
                    connections: self.connections.clone(),
                    shutdown: self.shutdown.clone(),
                };
                match self.workers.get(i) {
                    Some(worker) => worker.spawn(accept.run()),
                    None => tokio::spawn(accept.run()),
                };
            }
            self.open.insert(addr, open);
        }
    }

    /// Stops accepting, asks every connection to finish, and waits up to `grace` for them.
    /// Returns whether every connection finished in time.
    pub(crate) async fn shutdown(self, grace: Duration) -> bool {
        for open in self.open.values() {
            open.stop.cancel();
        }
        self.shutdown.cancel();
        self.connections.close();
        tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(listen(addr, false)?.into())
}

/// A non-blocking socket listening on `addr`, with `SO_REUSEPORT` if `reuse_port`.
fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Type};
    let socket =
        socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// One `SO_REUSEPORT` socket per worker on `addr`, each registered with its worker's runtime;
/// the kernel spreads new connections over them. Port 0 is resolved by the first socket, and
/// the others join it.
fn bind_per_worker(addr: SocketAddr, workers: &[Handle]) -> std::io::Result<Vec<TcpListener>> {
    let mut sockets = Vec::with_capacity(workers.len());
    let mut port = addr;
    for worker in workers {
        let socket = listen(port, true)?;
        if port.port() == 0 {
            port = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        }
        let _runtime = worker.enter();
        sockets.push(TcpListener::from_std(socket.into())?);
    }
    Ok(sockets)
}

/// A listener's `max_connections`: one semaphore permit per open connection, resizable.
///
/// Shrinking takes the free permits away at once; permits still held by connections are owed
/// (`debt`) and forgotten as those connections end. Growing first cancels what is owed, then
/// adds permits. Either way the permits in circulation converge on the new limit, with no task
/// and no lock. A single accept loop holds one permit while it waits for the next connection;
/// the workers' loops take theirs once they have a connection (see [`AcceptLoop::accept`]).
///
/// While an accept loop waits for a permit, every slot is taken: the limit's [`Pressure`] is
/// set, and the connections' watches close those doing no useful work sooner.
#[derive(Debug)]
struct Limit {
    permits: Semaphore,
    /// Set while [`Limit::acquire`] waits.
    pressure: Pressure,
    /// Permits to forget instead of returning, as connections end.
    debt: AtomicUsize,
    /// The configured limit (only [`Limit::resize`] writes it, from the reload task).
    max: AtomicUsize,
}

/// A slot of a [`Limit`], held by one connection (and, once it is upgraded, by its tunnel): its
/// permit goes back (or pays the limit's debt) when dropped, and so does its unit of the
/// listener's `connections_open` gauge.
pub(crate) struct Slot(Arc<Limit>, Option<GaugeGuard>);

// === impl Limit ===

impl Limit {
    fn new(max: usize) -> Self {
        let max = Self::clamp(max);
        Self {
            permits: Semaphore::new(max),
            pressure: Pressure::default(),
            debt: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// Tokio's semaphore holds at most `Semaphore::MAX_PERMITS`; config validation keeps the
    /// limit far below, this keeps any value from panicking.
    fn clamp(max: usize) -> usize {
        max.clamp(1, Semaphore::MAX_PERMITS)
    }

    /// Changes the limit to `max` (see the type docs).
    fn resize(&self, max: usize) {
        let max = Self::clamp(max);
        let old = self.max.swap(max, Ordering::AcqRel);
        if max > old {
            let grow = max - old;
            let cancelled = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .map_or(0, |d| d.min(grow));
            if grow > cancelled {
                self.permits.add_permits(grow - cancelled);
            }
        } else if max < old {
            let shrink = old - max;
            let forgotten = self.permits.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    /// Waits for a free slot, with the limit's [`Pressure`] set while it waits.
    async fn acquire(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed, so `acquire` cannot fail; the permit's return is
        // managed by `Slot`.
        if let Ok(permit) = self.permits.try_acquire() {
            permit.forget();
        } else {
            let _pressure = self.pressure.enter();
            if let Ok(permit) = self.permits.acquire().await {
                permit.forget();
            }
        }
        Slot(self.clone(), None)
    }

    /// Permits not held by anyone (for tests).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let paid = self
            .0
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if !paid {
            self.0.permits.add_permits(1);
        }
    }
}

struct AcceptLoop {
    key: SocketAddr,
    listener: TcpListener,
    /// Whether a slot is taken before accepting (the only socket of its address) or after (one
    /// of the workers'); see [`AcceptLoop::accept`].
    slot_first: bool,
    state: Arc<State>,
    limit: Arc<Limit>,
    stop: CancellationToken,
    connections: TaskTracker,
    shutdown: CancellationToken,
}

// === impl AcceptLoop ===

impl AcceptLoop {
    async fn run(self) {
        // The listener's runtime in the snapshot of the last accept: looked up again only when
        // a reload has stored a new snapshot.
        let mut cached: Option<Arc<ListenerRuntime>> = None;
        while let Some(accepted) = self.accept().await {
            let (mut slot, stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let snapshot = self.state.snapshot.load();
            let runtime = match &cached {
                Some(runtime) if runtime.epoch == snapshot.epoch => runtime.clone(),
                _ => {
                    cached = snapshot.listeners.get(&self.key).cloned();
                    let Some(runtime) = &cached else {
                        continue;
                    };
                    runtime.clone()
                }
            };
            drop(snapshot);
            runtime.recorders.accepted.inc();
            slot.1 = Some(runtime.recorders.open.track());
            let conn = Connection {
                key: self.key,
                accepted: tokio::time::Instant::now(),
                pressure: self.limit.pressure.clone(),
                runtime,
                state: self.state.clone(),
                shutdown: self.shutdown.clone(),
                tunnels: self.connections.clone(),
                slot,
            };
            let task = conn.serve(stream, peer);
            // The connection's future, held inline in its task (docs/benchmarks.md § connections).
            tracing::trace!(bytes = std::mem::size_of_val(&task), "connection task");
            self.connections.spawn(task);
        }
    }

    /// The next connection with the slot it takes; `None` once the loop is stopped.
    ///
    /// The only socket of an address takes a slot, then waits for a connection. A worker's
    /// socket does it the other way round: holding a slot while it waits, a worker whose socket
    /// is quiet would keep that slot from the others (with `max_connections` below the number
    /// of workers, for good). So a worker accepts first and then waits for a slot, holding at
    /// most that one connection unserved, as if it were still in the accept queue. Either way
    /// the listener is under pressure while a loop waits for a slot, and no more than
    /// `max_connections` connections are served at once.
    async fn accept(&self) -> Option<std::io::Result<(Slot, TcpStream, SocketAddr)>> {
        let slot = if self.slot_first {
            Some(tokio::select! {
                slot = self.limit.acquire() => slot,
                () = self.stop.cancelled() => return None,
            })
        } else {
            None
        };
        let (stream, peer) = tokio::select! {
            accepted = self.listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => return Some(Err(e)),
            },
            () = self.stop.cancelled() => return None,
        };
        let slot = match slot {
            Some(slot) => slot,
            None => tokio::select! {
                slot = self.limit.acquire() => slot,
                () = self.stop.cancelled() => return None,
            },
        };
        Some(Ok((slot, stream, peer)))
    }
}

/// The service every connection is served with.
pub(crate) type Service = Metered<ConnService>;

struct Connection {
    /// The listener's configured address.
    key: SocketAddr,
    /// When the connection was accepted.
    accepted: tokio::time::Instant,
    /// The listener's pressure signal.
    pressure: Pressure,
    runtime: Arc<ListenerRuntime>,
    state: Arc<State>,
    shutdown: CancellationToken,
    /// Where an upgraded connection's tunnel runs (the connection tasks' tracker).
    tunnels: TaskTracker,
    /// Held by the connection's [`TunnelHost`] (and so by its tunnel, if it is upgraded).
    slot: Slot,
}

// === impl Connection ===

impl Connection {
    /// The future of the connection's task (see [`Serving`]).
    fn serve(self, stream: TcpStream, peer: SocketAddr) -> Serving {
        let _ = stream.set_nodelay(true);
        let Self {
            key,
            accepted,
            pressure,
            runtime,
            state,
            shutdown,
            tunnels,
            slot,
        } = self;
        let meter = Arc::new(Meter::counting(runtime.recorders.sent.clone()));
        let stream = Active::new(stream, meter.clone());
        let tls = runtime.tls.is_some();
        let rejections = Rejections::default();
        let trusted = runtime.trusted_proxies.contains(peer.ip());
        let service = Metered::new(
            ConnService::new(
                state,
                Downstream { peer, tls, trusted },
                rejections.clone(),
                &runtime,
                TunnelHost::new(tunnels, runtime.idle_timeout, slot),
                ListenerTag {
                    addr: key,
                    epoch: runtime.epoch,
                    index: runtime.index,
                },
                runtime.recorders.received.clone(),
            ),
            meter.clone(),
        );
        let watch = Watch {
            meter: meter.clone(),
            idle: runtime.idle_timeout,
            send: runtime.send_timeout,
            header: runtime.header_read_timeout,
            shutdown,
            pressure,
            reduced: Reduced::new(runtime.header_read_timeout, runtime.idle_timeout),
            accepted,
        };
        if runtime.tls.is_some() {
            let handshake = handshake(stream, peer, watch, runtime, service, rejections, meter);
            Serving::Handshake { handshake }
        } else if runtime.http2 {
            // The protocol decided by the first bytes.
            let conn = Plain::new(stream, runtime, service, rejections, meter);
            Serving::Plain {
                driven: watch.drive(conn),
            }
        } else {
            let conn = ParkingH1::new(stream, runtime, service, rejections, meter);
            Serving::Http1 {
                driven: watch.drive(conn),
            }
        }
    }
}

/// The TLS handshake of a connection, bounded by `header_read_timeout` (sooner under
/// pressure); then the connection under `watch`, HTTP/2 if ALPN chose it (offered only when the
/// listener serves HTTP/2; such a connection speaks nothing else), else HTTP/1. Boxed: held
/// inline, the handshake's state (a whole TLS stream) would size every connection's task for
/// its whole life.
fn handshake(
    stream: Tcp,
    peer: SocketAddr,
    watch: Watch,
    runtime: Arc<ListenerRuntime>,
    service: Service,
    rejections: Rejections,
    meter: Arc<Meter>,
) -> Handshake {
    Box::pin(async move {
        let accept = async {
            let Some(acceptor) = &runtime.tls else {
                return Err(std::io::Error::other("no TLS acceptor"));
            };
            let mut stream = stream;
            if detect::is_plain_http(stream.get_ref()).await? {
                detect::answer_plain_http(&mut stream).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "plain HTTP sent to a TLS listener (answered 400)",
                ));
            }
            acceptor.accept(stream).await
        };
        let accept = tokio::time::timeout(runtime.header_read_timeout, accept);
        let handshake =
            watch::under_pressure(accept, watch.accepted, watch.reduced.head, &watch.pressure);
        let tls = match handshake.await {
            Ok(Ok(Ok(tls))) => tls,
            Ok(Ok(Err(e))) => {
                runtime.recorders.tls_failed(TlsFailure::Error);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Ok(Err(_)) => {
                runtime.recorders.tls_failed(TlsFailure::Timeout);
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
            Err(e) => {
                runtime.recorders.tls_failed(TlsFailure::Pressure);
                tracing::debug!(%peer, error = %e, "TLS handshake cut");
                return None;
            }
        };
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let conn = Http::new(http2, tls, runtime, service, rejections, meter);
        Some(watch.drive(conn))
    })
}

impl<I> Watched for hyper::server::conn::http2::Connection<TokioIo<I>, Service, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }

    fn http2(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_limit_shrinks_and_grows_back_with_connections_open() {
        let limit = Arc::new(Limit::new(4));
        let held: Vec<Slot> = vec![
            limit.acquire().await,
            limit.acquire().await,
            limit.acquire().await,
        ];
        assert_eq!(limit.available(), 1);
        // 4 -> 1 with 3 open: the free permit goes, 2 are owed.
        limit.resize(1);
        assert_eq!(limit.available(), 0);
        assert_eq!(limit.debt.load(Ordering::SeqCst), 2);
        // 1 -> 4 before any closes: the debt is cancelled and one permit added.
        limit.resize(4);
        assert_eq!(limit.debt.load(Ordering::SeqCst), 0);
        assert_eq!(limit.available(), 1);
        drop(held);
        assert_eq!(limit.available(), 4);
        // 4 -> 2 -> 4 with nothing open.
        limit.resize(2);
        assert_eq!(limit.available(), 2);
        limit.resize(4);
        assert_eq!(limit.available(), 4);
    }

    #[tokio::test]
    async fn closing_connections_pay_the_debt() {
        let limit = Arc::new(Limit::new(3));
        let a = limit.acquire().await;
        let b = limit.acquire().await;
        limit.resize(1);
        assert_eq!(
            (limit.available(), limit.debt.load(Ordering::SeqCst)),
            (0, 1)
        );
        drop(a);
        assert_eq!(
            (limit.available(), limit.debt.load(Ordering::SeqCst)),
            (0, 0)
        );
        drop(b);
        assert_eq!(limit.available(), 1);
    }

    #[tokio::test]
    async fn waiting_for_a_slot_sets_the_pressure() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire().await;
        assert!(!limit.pressure.is_set(), "a free slot is no pressure");
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        while !limit.pressure.is_set() {
            tokio::task::yield_now().await;
        }
        drop(held);
        let _slot = waiting.await.unwrap();
        assert!(!limit.pressure.is_set(), "cleared once the slot is taken");
    }

    /// Two accept loops (two workers) wait on one limit: the pressure stays set until both
    /// have their slot.
    #[tokio::test]
    async fn the_pressure_holds_while_any_loop_waits() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire().await;
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move { limit.acquire().await })
            })
            .collect();
        // The test runtime is single-threaded: a few yields let both loops start waiting.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(limit.pressure.is_set());
        drop(held);
        let mut waiters = waiters.into_iter();
        let first = waiters.next().unwrap().await.unwrap();
        assert!(limit.pressure.is_set(), "another loop still waits");
        drop(first);
        let _second = waiters.next().unwrap().await.unwrap();
        assert!(!limit.pressure.is_set());
    }

    #[test]
    fn any_limit_is_clamped_not_a_panic() {
        for max in [
            0,
            1,
            Semaphore::MAX_PERMITS,
            Semaphore::MAX_PERMITS + 1,
            usize::MAX,
        ] {
            let limit = Limit::new(max);
            limit.resize(usize::MAX);
            limit.resize(0);
            limit.resize(max);
        }
    }
}
