//! An HTTP/1 connection that holds no hyper buffers between requests.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the life of an HTTP/1
//! connection, and has no setting to release them while it waits for the next request. So an
//! idle keep-alive connection is *parked* instead (docs/benchmarks.md § connection scale): once
//! the connection's [`Watch`](super::watch::Watch) has seen it quiet for a whole tick (no request
//! open, no byte moved; at most 500 ms, so within 1 s of its last byte) or its listener is under
//! pressure, it rings the connection's [`ParkBell`](super::watch::ParkBell); then, if hyper owes
//! no response, holds no client byte and the transport has nothing to read, the framing guard
//! ([`StrictH1`]) flushes the transport, hands it back through a one-shot [`Slot`] and tells
//! hyper the stream has ended, which ends an idle keep-alive connection cleanly (no response is
//! owed, nothing is written). [`ParkingH1`] then drops hyper's
//! connection (both buffers with it) and waits for the transport to become readable; then it
//! serves the next request with a new hyper connection over the same transport and a clone of
//! the connection's service. A fresh connection does not wait for the watch after its first
//! request: it parks as soon as that is answered, if no next byte is waiting (many clients
//! pause after their first request; a busy one pays one resume for it). From then on a busy
//! keep-alive connection (its next request within a tick) never parks, and pays for it only a
//! waker registration and an atomic load per request.
//!
//! What holds while parked:
//!
//! * **Idle time**: the connection's [`Watch`](super::watch::Watch) drives this future parked
//!   or not; a parked connection moves no byte and has no request open, so `idle_timeout_ms`
//!   closes it as before (and the reduced idle time under pressure). A new hyper connection is
//!   made when bytes arrive, so its header timer (`header_read_timeout_ms`) bounds the next head
//!   from its first byte; the first request's head is bounded from accept (a connection never
//!   parks before its first request).
//! * **Shutdown and idle close**: [`Watched::drain`] on a parked connection shuts the transport
//!   down at once (a TLS `close_notify`, then FIN); on a serving one it asks hyper to finish,
//!   and a park after that closes instead of waiting.
//! * **Upgrades, pipelining, violations**: the guard never parks after an upgrade (nor while one
//!   is pending), nor while it or hyper holds bytes of a next request, nor after a framing
//!   violation (see [`crate::conn::h1`]).
//! * **TLS**: the whole TLS stream is parked; it is flushed first, so no record waits in rustls.
//!   rustls's own receive buffer stays with the stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use hyper::server::conn::http1::UpgradeableConnection;
use hyper_util::rt::TokioIo;
use snakeway_core::BoxError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::detect::Rewind;
use super::h1::{Park, Rejections, Slot, StrictH1};
use super::listener::Service;
use super::watch::{Active, Meter, Watched};
use crate::snapshot::ListenerRuntime;

/// A transport that can tell when it has something to read, without reading it.
pub(crate) trait ReadReady {
    /// Ready once a read would not block: bytes, the end of the stream, or an error.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for Active<TcpStream> {
    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl<S: ReadReady> ReadReady for Rewind<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_replay() {
            return Poll::Ready(Ok(()));
        }
        self.get_ref().poll_read_ready(cx)
    }
}

/// A TLS stream is parked only after a read found no plaintext and the socket empty (so rustls
/// holds at most part of a record): the socket says when more can come.
impl<S: ReadReady> ReadReady for tokio_rustls::server::TlsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The hyper connection of one burst of requests.
type H1<I> = UpgradeableConnection<TokioIo<StrictH1<I>>, Service>;

/// Serves HTTP/1 on one transport, parking between requests (see the module docs).
pub(crate) struct ParkingH1<I> {
    state: State<I>,
    /// Where the transport is while parked.
    slot: Slot<I>,
    /// The listener's settings as of accept (its `http1` builder).
    runtime: Arc<ListenerRuntime>,
    /// Cloned for each hyper connection.
    service: Service,
    /// The connection's meter: its watch says when to park.
    meter: Arc<Meter>,
    rejections: Rejections,
    /// Asked to finish: a park ends the connection.
    draining: bool,
}

enum State<I> {
    /// A hyper connection serves requests. Boxed, at its own size: held inline, it would size
    /// the connection's task for its whole life, parked or not.
    Serving(Pin<Box<H1<I>>>),
    /// Waiting for the parked transport to become readable.
    Parked,
    /// Shutting the parked transport down.
    Closing,
    /// Over.
    Done,
}

// === impl ParkingH1 ===

impl<I> ParkingH1<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + Sync + 'static,
{
    /// Starts serving `io` with `service` (which must answer the refusals the guards put in
    /// `rejections`), with the listener's HTTP/1 settings; parks when the watch of `meter` asks.
    pub(crate) fn new(
        io: I,
        runtime: Arc<ListenerRuntime>,
        service: Service,
        rejections: Rejections,
        meter: Arc<Meter>,
    ) -> Self {
        let mut this = Self {
            state: State::Done,
            slot: Arc::new(OnceLock::new()),
            runtime,
            service,
            meter,
            rejections,
            draining: false,
        };
        this.state = State::Serving(this.connection(io, false));
        this
    }

    /// A hyper connection over `io`, behind a framing guard that parks into the slot.
    fn connection(&self, io: I, resumed: bool) -> Pin<Box<H1<I>>> {
        let guard = StrictH1::new(io, self.runtime.max_header_bytes, self.rejections.clone())
            .parking(Park::new(self.slot.clone(), self.meter.clone(), resumed));
        let conn = self
            .runtime
            .http1
            .serve_connection(TokioIo::new(guard), self.service.clone())
            .with_upgrades();
        Box::pin(conn)
    }

    /// The parked transport, once no guard shares the slot.
    fn parked(&mut self) -> Option<&mut I> {
        Arc::get_mut(&mut self.slot).and_then(OnceLock::get_mut)
    }
}

impl<I> Future for ParkingH1<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + Sync + 'static,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Serving(conn) => {
                    let result = ready!(conn.as_mut().poll(cx));
                    // Dropping hyper's connection drops its buffers and the guard's handle on
                    // the slot.
                    this.state = State::Done;
                    if this.parked().is_none() {
                        return Poll::Ready(result.map_err(Into::into));
                    }
                    this.state = if this.draining {
                        State::Closing
                    } else {
                        tracing::trace!("connection parked");
                        State::Parked
                    };
                }
                State::Parked => {
                    let Some(io) = this.slot.get() else {
                        this.state = State::Done;
                        continue;
                    };
                    ready!(io.poll_read_ready(cx))?;
                    let Some(io) = Arc::get_mut(&mut this.slot).and_then(OnceLock::take) else {
                        this.state = State::Done;
                        continue;
                    };
                    tracing::trace!("connection resumed");
                    this.state = State::Serving(this.connection(io, true));
                }
                State::Closing => {
                    if let Some(io) = this.parked() {
                        // Best effort: the peer learns the connection is over.
                        let _ = ready!(Pin::new(io).poll_shutdown(cx));
                    }
                    if let Some(slot) = Arc::get_mut(&mut this.slot) {
                        drop(slot.take());
                    }
                    this.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<I> Watched for ParkingH1<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + Sync + 'static,
{
    fn drain(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.draining = true;
        match &mut this.state {
            State::Serving(conn) => conn.as_mut().graceful_shutdown(),
            State::Parked => this.state = State::Closing,
            State::Closing | State::Done => {}
        }
    }
}
