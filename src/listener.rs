//! Listening sockets and the connections accepted on them.
//!
//! Each configured address has one accept loop. A connection takes a permit from the listener's
//! `max_connections` semaphore before it is accepted, so excess clients wait in the kernel's
//! accept queue. Connection settings (TLS, HTTP versions, timeouts) are read from the current
//! snapshot at accept time, so a reload changes them for new connections without re-binding.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use snakeway_config::{Problem, Report};
use snakeway_proxy::Downstream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::ConnService;
use crate::stack::{ListenerRuntime, Snapshot};
use crate::state::State;
use crate::strict_h1::StrictH1;

/// The open listeners, by configured address.
pub(crate) struct Listeners {
    open: HashMap<SocketAddr, Open>,
    /// Every connection task, so shutdown can wait for them.
    connections: TaskTracker,
    /// Cancelled when the server shuts down: connections finish their requests and close.
    shutdown: CancellationToken,
}

struct Open {
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    max_connections: usize,
}

/// Sockets bound for a new configuration but not serving yet.
pub(crate) struct Bound(Vec<(SocketAddr, TcpListener)>);

// === impl Listeners ===

impl Listeners {
    pub(crate) fn new() -> Self {
        Self {
            open: HashMap::new(),
            connections: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Binds the addresses of `snapshot` that are not open yet. Nothing is served until
    /// [`Listeners::apply`]; on failure every socket bound here is closed again.
    pub(crate) fn bind(&self, snapshot: &Snapshot) -> Result<Bound, Report> {
        let mut bound = Vec::new();
        let mut problems = Vec::new();
        for (i, l) in snapshot.config.listeners.iter().enumerate() {
            if self.open.contains_key(&l.listen) {
                continue;
            }
            match bind(l.listen) {
                Ok(listener) => bound.push((l.listen, listener)),
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
        for (addr, open) in &mut self.open {
            let max = snapshot.listeners[addr].max_connections;
            if max > open.max_connections {
                open.permits.add_permits(max - open.max_connections);
            } else {
                // Permits held by live connections are forgotten as those connections end.
                let mut excess = open.max_connections - max;
                excess -= open.permits.forget_permits(excess);
                if excess > 0 {
                    let permits = open.permits.clone();
                    tokio::spawn(async move {
                        if let Ok(p) = permits.acquire_many_owned(excess as u32).await {
                            p.forget();
                        }
                    });
                }
            }
            open.max_connections = max;
        }
        for (addr, listener) in bound.0 {
            let runtime = &snapshot.listeners[&addr];
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(listener = %runtime.name, addr = %local, tls = runtime.tls.is_some(), "listening");
            let open = Open {
                stop: CancellationToken::new(),
                permits: Arc::new(Semaphore::new(runtime.max_connections)),
                max_connections: runtime.max_connections,
            };
            let accept = AcceptLoop {
                key: addr,
                listener,
                state: state.clone(),
                permits: open.permits.clone(),
                stop: open.stop.clone(),
                connections: self.connections.clone(),
                shutdown: self.shutdown.clone(),
            };
            tokio::spawn(accept.run());
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
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

struct AcceptLoop {
    key: SocketAddr,
    listener: TcpListener,
    state: Arc<State>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    connections: TaskTracker,
    shutdown: CancellationToken,
}

// === impl AcceptLoop ===

impl AcceptLoop {
    async fn run(self) {
        loop {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                () = self.stop.cancelled() => return,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = self.stop.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(runtime) = self.state.snapshot.load().listeners.get(&self.key).cloned() else {
                continue;
            };
            let conn = Connection {
                runtime,
                state: self.state.clone(),
                shutdown: self.shutdown.clone(),
                _permit: permit,
            };
            self.connections.spawn(conn.serve(stream, peer));
        }
    }
}

struct Connection {
    runtime: Arc<ListenerRuntime>,
    state: Arc<State>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

// === impl Connection ===

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(AtomicU64::new(0));
        let stream = Active {
            inner: stream,
            activity: activity.clone(),
        };
        let tls = self.runtime.tls.is_some();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let trusted = self.runtime.trusted_proxies.contains(peer.ip());
        let service = ConnService::new(
            self.state.clone(),
            Downstream { peer, tls, trusted },
            in_flight.clone(),
            self.runtime.body_read_timeout,
        );
        let watch = Watch {
            activity,
            in_flight,
            idle: self.runtime.idle_timeout,
            shutdown: self.shutdown.clone(),
        };
        let max_head = self.runtime.max_header_bytes;
        match &self.runtime.tls {
            None => {
                self.serve_http(StrictH1::new(stream, max_head), service, watch)
                    .await
            }
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.runtime.header_read_timeout, acceptor.accept(stream));
                let tls = match handshake.await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    // ALPN offers h2 only when the listener serves HTTP/2.
                    let conn = self
                        .runtime
                        .http
                        .serve_connection_with_upgrades(TokioIo::new(tls), service);
                    watch.drive(conn).await;
                } else {
                    self.serve_http(StrictH1::new(tls, max_head), service, watch)
                        .await;
                }
            }
        }
    }

    /// Serves HTTP/1.1 on `io`, plus prior-knowledge h2c unless the listener disables HTTP/2.
    async fn serve_http<I>(&self, io: I, service: ConnService, watch: Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if self.runtime.http2 {
            watch
                .drive(
                    self.runtime
                        .http
                        .serve_connection_with_upgrades(io, service),
                )
                .await;
        } else {
            watch
                .drive(
                    self.runtime
                        .http1
                        .serve_connection(io, service)
                        .with_upgrades(),
                )
                .await;
        }
    }
}

/// A hyper connection that can be asked to finish its in-flight requests and close.
trait Drain {
    fn drain(self: Pin<&mut Self>);
}

impl<I> Drain
    for hyper_util::server::conn::auto::UpgradeableConnection<
        '_,
        TokioIo<I>,
        ConnService,
        TokioExecutor,
    >
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Drain for hyper::server::conn::http1::UpgradeableConnection<TokioIo<I>, ConnService>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives one connection: closes it gracefully on server shutdown, or when it has been idle
/// (no bytes either way and no request waiting for its response) for a whole `idle` period.
struct Watch {
    activity: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    idle: Duration,
    shutdown: CancellationToken,
}

impl Watch {
    async fn drive<C, E>(self, conn: C)
    where
        C: std::future::Future<Output = Result<(), E>> + Drain,
        E: std::fmt::Display,
    {
        let mut conn = pin!(conn);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.idle, self.idle);
        let mut seen = self.activity.load(Ordering::Relaxed);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.shutdown.cancelled(), if !draining => {
                    conn.as_mut().drain();
                    draining = true;
                }
                _ = ticker.tick(), if !draining => {
                    let now = self.activity.load(Ordering::Relaxed);
                    if now == seen && self.in_flight.load(Ordering::Relaxed) == 0 {
                        tracing::debug!("closing idle connection");
                        conn.as_mut().drain();
                        draining = true;
                    }
                    seen = now;
                }
            }
        }
    }
}

/// A stream that counts its successful reads and writes, for idle detection.
struct Active<S> {
    inner: S,
    activity: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if poll.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
