//! The per-connection watch: idle and send timeouts, and graceful shutdown.
//!
//! Three cheap probes feed one [`Meter`] per connection, read by a timer that ticks a few times
//! per timeout (never per request):
//!
//! * [`Active`] wraps the socket: it counts reads and writes that moved bytes, and notes when a
//!   write is blocked because the peer does not read.
//! * [`Metered`] wraps the connection's service: a request counts as *open* from the moment it
//!   arrives until its response body has ended or was dropped (HTTP/2 streams included).
//! * [`MeteredBody`] wraps each response body: a frame (or the response head) handed to hyper
//!   that hyper has not come back for (because the socket is blocked, or the HTTP/2 peer gives
//!   that stream no window) is *held*, counted in a ring of buckets by the epoch of a clock the
//!   watch advances every quarter of `send_timeout`; hyper coming back for the next one takes
//!   it out again.
//!
//! A connection is **idle** when, for a whole `idle_timeout`, no request was open or started
//! and (HTTP/1 only) no byte moved. On HTTP/2, bytes do not count: PINGs, SETTINGS or
//! WINDOW_UPDATEs keep no connection alive, only streams do. An idle connection is asked to
//! close gracefully and is dropped if it has not within a short drain limit (a peer that never
//! answers the GOAWAY's PING cannot hold it).
//!
//! An HTTP/1 connection that has been **quiet** for a whole tick (no request open or started,
//! no byte moved), or that has no request open while its listener is under pressure, is asked
//! to park ([`ParkBell`], see `conn::park`): the tick between requests is at most
//! [`PARK_TICK`] and a quarter of `header_read_timeout` (hyper's header timer runs between
//! requests too), so an idle connection parks within two ticks (at most 1 s, less with short
//! timeouts; always before that timer fires) of its last byte, and a keep-alive client that sends its next request within a tick
//! never parks on the watch's ask (the framing guard parks a fresh connection once, after its
//! first request, without asking the watch).
//!
//! A listener is under **pressure** while all of its `max_connections` slots are taken (its
//! accept loop waits for one, see [`Pressure`]). Then connections that do no useful work are
//! closed much sooner, as Envoy's `reduce_timeouts` overload action does: one with no request
//! open that has not started a request since accept (a head trickling in, or silence) after
//! the reduced header time, and one with no request open between requests (keep-alive) after
//! the reduced idle time, bytes or not (see [`Reduced`]). A connection with a request open is
//! never closed for pressure. The check runs at the watch's tick, in the task that polls the
//! connection, so no request can start between the sample and the close.
//!
//! On the server's shutdown every connection is asked to finish (drained): at once, or at its
//! first tick (within 500 ms) if it is younger than that, as a connection waits for the
//! shutdown signal only from then on (most short-lived connections never need to).
//!
//! A plain connection whose protocol is still being decided (the h2c sniff, [`Watched::opening`])
//! is closed once `header_read_timeout` has passed since accept: the watch's timer bounds it,
//! so the sniff needs none of its own, and under pressure it is closed at the reduced header
//! time like any connection that has not started a request.
//!
//! A connection is **stuck** when a socket write has been blocked with nothing written for
//! `send_timeout`, or (HTTP/2) when any one response frame has been held that long, whatever
//! the other streams do: it is dropped at once, which frees its `max_connections` slot and every
//! upstream request its streams held. hyper offers no way to reset one stream from outside, so
//! a stream the peer stalls while it reads others costs the peer its whole connection. On
//! HTTP/1 only the socket counts: a slow reader that keeps taking bytes is never cut off.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use http::{Request, Response};
use hyper::body::Buf as _;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use snakeway_core::metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Longest wait for an idle connection to finish closing gracefully before it is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Shortest tick of the watch timer.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Longest tick of an HTTP/1 connection's watch between requests: an idle connection is asked
/// to park within two of them.
const PARK_TICK: Duration = Duration::from_millis(500);
/// Longest first tick of a connection's watch: it waits for the server's shutdown from then on.
const FIRST_TICK: Duration = Duration::from_millis(500);
/// Buckets of held frames, by the epoch they were handed over in (modulo this).
const HELD_RING: u32 = 8;
/// A frame still held this many epochs after the one it was handed over in has been held for
/// at least four quarters of `send_timeout`.
const HELD_EPOCHS: u32 = 5;
/// Under pressure, timeouts are divided by this ...
const PRESSURE_DIVISOR: u32 = 10;
/// ... but never below this: a client one slow round trip away still gets its head in.
const PRESSURE_FLOOR: Duration = Duration::from_millis(100);

/// A listener's shared pressure signal: set while any of its accept loops (one per worker under
/// `per_core`) waits for a free `max_connections` slot, read by the watch of each of its
/// connections (one relaxed load per tick; nothing per request). It counts the waiting loops,
/// so one loop getting its slot does not clear it for another still waiting.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pressure(Arc<AtomicUsize>);

// === impl Pressure ===

impl Pressure {
    /// Whether every slot of the listener is taken.
    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Sets the signal until the returned guard is dropped (the accept loop got a slot, or
    /// stopped waiting), and until every other loop's guard is dropped too.
    pub(crate) fn enter(&self) -> PressureGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        PressureGuard(self)
    }
}

/// Withdraws one waiter from a [`Pressure`] when dropped.
#[derive(Debug)]
pub(crate) struct PressureGuard<'a>(&'a Pressure);

impl Drop for PressureGuard<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shorter limits applied while a listener is under [`Pressure`]: each configured timeout
/// divided by 10, with a floor of 100 ms, and never more than the timeout itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reduced {
    /// For a connection that has not started its first request (TLS handshake, protocol
    /// sniff, first head): from `header_read_timeout_ms`.
    pub(crate) head: Duration,
    /// For a connection between requests: from `idle_timeout_ms`.
    pub(crate) idle: Duration,
}

// === impl Reduced ===

impl Reduced {
    /// The reduced limits for `header_read_timeout` and `idle_timeout`.
    pub(crate) fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Self {
        let reduce = |t: Duration| (t / PRESSURE_DIVISOR).max(PRESSURE_FLOOR).min(t);
        Self {
            head: reduce(header_read_timeout),
            idle: reduce(idle_timeout),
        }
    }
}

/// Why [`under_pressure`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("closed under pressure: no request within the reduced header time")]
pub(crate) struct Pressured;

/// Runs `fut` (a TLS handshake, which has its own full timeout), but
/// gives up once `limit` has passed since `accepted` while `pressure` is set.
pub(crate) async fn under_pressure<F: Future>(
    fut: F,
    accepted: Instant,
    limit: Duration,
    pressure: &Pressure,
) -> Result<F::Output, Pressured> {
    let mut fut = pin!(fut);
    let tick = (limit / 4).max(MIN_TICK);
    let mut ticker = tokio::time::interval_at(accepted + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = fut.as_mut() => return Ok(out),
            now = ticker.tick() => {
                if pressure.is_set() && now - accepted >= limit {
                    return Err(Pressured);
                }
            }
        }
    }
}

/// What the probes of one connection record; read by its [`Watch`].
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Reads and writes that moved bytes.
    io: AtomicU64,
    /// Writes that moved bytes.
    written: AtomicU64,
    /// The last write returned `Pending` and none succeeded since.
    write_blocked: AtomicBool,
    /// Requests started.
    started: AtomicU64,
    /// Requests open: from arrival until the response body ended or was dropped.
    open: AtomicUsize,
    /// The held-frame clock: advanced by the watch every quarter of `send_timeout`.
    epoch: AtomicU32,
    /// Response frames (and heads) handed to hyper that hyper has not come back after, by the
    /// epoch they were handed over in, modulo [`HELD_RING`].
    held: [AtomicU32; HELD_RING as usize],
    /// The listener's counter of response body bytes sent.
    sent: Option<Arc<Counter>>,
    /// Rung by the watch when an HTTP/1 connection should park.
    pub(crate) park: ParkBell,
}

/// The watch's request that an idle HTTP/1 connection park (`conn::park`): set at a tick, read
/// by the connection's framing guard, which registers its read waker here while it waits
/// between requests. No lock: a flag and an [`AtomicWaker`].
#[derive(Debug, Default)]
pub(crate) struct ParkBell {
    asked: AtomicBool,
    waker: AtomicWaker,
}

// === impl ParkBell ===

impl ParkBell {
    /// Asks the connection to park and wakes its guard, unless already asked.
    pub(crate) fn ring(&self) {
        if !self.asked.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Registers the guard's read waker, then says whether the connection was asked to park
    /// (in this order, so that a ring in between is not missed).
    #[inline]
    pub(crate) fn poll_asked(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.asked.load(Ordering::Acquire)
    }

    /// A request came: the connection is no longer asked to park.
    #[inline]
    pub(crate) fn clear(&self) {
        if self.asked.load(Ordering::Relaxed) {
            self.asked.store(false, Ordering::Release);
        }
    }
}

/// One reading of a [`Meter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    io: u64,
    written: u64,
    write_blocked: bool,
    started: u64,
    open: usize,
}

// === impl Meter ===

impl Meter {
    /// A meter that also counts the response body bytes handed to hyper into `sent`.
    pub(crate) fn counting(sent: Arc<Counter>) -> Self {
        Self {
            sent: Some(sent),
            ..Self::default()
        }
    }

    fn sample(&self) -> Sample {
        Sample {
            io: self.io.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_blocked: self.write_blocked.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }

    /// Counts a frame handed to hyper as held; returns the epoch to hand back to
    /// [`Meter::taken`].
    #[inline]
    fn hold(&self) -> u32 {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.held[(epoch % HELD_RING) as usize].fetch_add(1, Ordering::Relaxed);
        epoch
    }

    /// hyper came back after the frame held since `epoch`.
    #[inline]
    fn taken(&self, epoch: u32) {
        self.held[(epoch % HELD_RING) as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Advances the held-frame clock by one epoch; returns whether some frame is still held
    /// [`HELD_EPOCHS`] epochs or more after the one it was handed over in.
    fn advance(&self) -> bool {
        let now = self.epoch.load(Ordering::Relaxed).wrapping_add(1);
        let stuck = (HELD_EPOCHS..HELD_RING).any(|age| {
            self.held[(now.wrapping_sub(age) % HELD_RING) as usize].load(Ordering::Relaxed) > 0
        });
        self.epoch.store(now, Ordering::Relaxed);
        stuck
    }

    #[inline]
    fn wrote(&self) {
        self.io.fetch_add(1, Ordering::Relaxed);
        self.written.fetch_add(1, Ordering::Relaxed);
        if self.write_blocked.load(Ordering::Relaxed) {
            self.write_blocked.store(false, Ordering::Relaxed);
        }
    }
}

/// Drives one connection future: drains it on server shutdown or when idle, and drops it when
/// its writes are stuck for `send_timeout` (see the module docs).
#[derive(Debug)]
pub(crate) struct Watch {
    /// The connection's probes.
    pub(crate) meter: Arc<Meter>,
    /// `idle_timeout_ms`.
    pub(crate) idle: Duration,
    /// `send_timeout_ms`.
    pub(crate) send: Duration,
    /// `header_read_timeout_ms`: hyper's header timer also runs between requests, so an idle
    /// HTTP/1 connection is asked to park within half of it; and a connection still
    /// [opening](Watched::opening) this long after accept is closed.
    pub(crate) header: Duration,
    /// Cancelled on server shutdown: the connection is drained.
    pub(crate) shutdown: CancellationToken,
    /// The listener's pressure signal.
    pub(crate) pressure: Pressure,
    /// The limits applied under pressure.
    pub(crate) reduced: Reduced,
    /// When the connection was accepted (the reduced header time counts from here).
    pub(crate) accepted: Instant,
}

/// A connection a [`Watch`] drives: it can be asked to finish its in-flight requests and
/// close, and says what it speaks.
pub(crate) trait Watched {
    /// Starts a graceful shutdown: no new requests, close once the current ones are answered.
    fn drain(self: Pin<&mut Self>);

    /// Whether it speaks HTTP/2 (bytes then do not count as activity, and it never parks).
    fn http2(&self) -> bool {
        false
    }

    /// Whether its protocol is not decided yet (the h2c sniff): the watch closes it once
    /// `header_read_timeout` has passed since accept.
    fn opening(&self) -> bool {
        false
    }
}

/// A boxed connection is watched like the connection in it.
impl<C: Watched + ?Sized> Watched for Pin<Box<C>> {
    fn drain(self: Pin<&mut Self>) {
        self.get_mut().as_mut().drain();
    }

    fn http2(&self) -> bool {
        (**self).http2()
    }

    fn opening(&self) -> bool {
        (**self).opening()
    }
}

/// Why [`Watch::drive`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The connection finished (closed by either side, or drained).
    Finished,
    /// Dropped: writes made no progress for `send_timeout`.
    SendTimeout,
    /// Dropped: idle, and the graceful close did not finish within the drain limit.
    IdleDrainTimeout,
    /// Dropped: the listener was under pressure and the connection had no request open for
    /// the reduced limit.
    Pressure,
    /// Dropped: its protocol was not decided within `header_read_timeout` of accept.
    HeaderTimeout,
}

// === impl Watch ===

impl Watch {
    /// Drives `conn` to its end, or drops it (see [`Ended`]).
    pub(crate) fn drive<C: Watched>(self, conn: C) -> Driven<C> {
        let start = Instant::now();
        let first = self.ticks(conn.http2()).0.min(FIRST_TICK);
        let timer = tokio::time::sleep_until(start + first);
        let last = self.meter.sample();
        Driven {
            conn,
            timer,
            shutdown: None,
            ticking: Ticking {
                watch: self,
                last,
                active_at: start,
                progress_at: start,
                epoch_at: start,
                request_at: start,
                drain_deadline: None,
                draining: false,
            },
        }
    }

    /// The ticks of the timer before the first request and between requests, for a connection
    /// that speaks HTTP/2 or not. Finer than the timeouts need, so that the reduced limits hold
    /// under pressure. And an HTTP/1 connection quiet for a whole tick between requests parks,
    /// before hyper's header timer (which runs while it waits for the next head) could close
    /// it; the tick of the first request too, as the timer is reset only at a tick.
    fn ticks(&self, http2: bool) -> (Duration, Duration) {
        let tick = (self.idle.min(self.send) / 4).max(MIN_TICK);
        let park = if http2 {
            Duration::MAX
        } else {
            PARK_TICK.min(self.header / 4)
        };
        let head = tick.min(self.reduced.head / 4).min(park).max(MIN_TICK);
        let idle = tick.min(self.reduced.idle / 4).min(park).max(MIN_TICK);
        (head, idle)
    }
}

pin_project! {
    /// The future of [`Watch::drive`]. Written by hand, not as an `async fn`: every field is
    /// held once, for the connection's whole life (an `async fn` keeps its arguments beside
    /// the locals they are moved into).
    pub(crate) struct Driven<C> {
        #[pin]
        conn: C,
        #[pin]
        timer: Sleep,
        // Waits for the server's shutdown from the first tick on (see `Driven::poll`).
        #[pin]
        shutdown: Option<WaitForCancellationFutureOwned>,
        ticking: Ticking,
    }
}

/// What the watch's timer compares from one tick to the next.
struct Ticking {
    watch: Watch,
    last: Sample,
    active_at: Instant,
    progress_at: Instant,
    epoch_at: Instant,
    request_at: Instant,
    drain_deadline: Option<Instant>,
    draining: bool,
}

impl<C, E> Future for Driven<C>
where
    C: Future<Output = Result<(), E>> + Watched,
    E: std::fmt::Display,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(result) = this.conn.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Poll::Ready(Ended::Finished);
            }
            if !this.ticking.draining
                && let Some(shutdown) = this.shutdown.as_mut().as_pin_mut()
                && shutdown.poll(cx).is_ready()
            {
                this.conn.as_mut().drain();
                this.ticking.draining = true;
                continue;
            }
            ready!(this.timer.as_mut().poll(cx));
            let now = Instant::now();
            match this.ticking.tick(this.conn.as_mut(), now) {
                Ok(next) => this.timer.as_mut().reset(now + next),
                Err(ended) => return Poll::Ready(ended),
            }
            // A connection waits for the server's shutdown only once it has lived a tick (at
            // most `FIRST_TICK`): most of those that open, ask and close within one never join
            // the shared list of waiters (a lock to join it and one to leave). One that
            // shutdown finds younger is drained at its first tick.
            if this.shutdown.is_none() {
                let token = this.ticking.watch.shutdown.clone();
                this.shutdown.set(Some(token.cancelled_owned()));
            }
        }
    }
}

// === impl Ticking ===

impl Ticking {
    /// One tick of the timer at `now`: closes, drains or parks `conn` as the module docs say.
    /// Returns the time to the next tick, or why the connection is dropped.
    fn tick<C: Watched>(&mut self, mut conn: Pin<&mut C>, now: Instant) -> Result<Duration, Ended> {
        let watch = &self.watch;
        // Known once the protocol is decided (the h2c sniff).
        let http2 = conn.http2();
        if conn.opening() && now - watch.accepted >= watch.header {
            tracing::debug!(
                header_read_timeout_ms = watch.header.as_millis() as u64,
                "no protocol decided within the header read timeout; connection closed"
            );
            return Err(Ended::HeaderTimeout);
        }
        let s = watch.meter.sample();
        let last = self.last;
        let requests = s.open > 0 || s.started != last.started;
        let busy = requests || (!http2 && s.io != last.io);
        if requests {
            self.request_at = now;
        } else if !http2 && s.started > 0 && (s.io == last.io || watch.pressure.is_set()) {
            watch.meter.park.ring();
        }
        if busy {
            self.active_at = now;
        } else if !self.draining && now - self.active_at >= watch.idle {
            tracing::debug!("closing idle connection");
            conn.as_mut().drain();
            self.draining = true;
            self.drain_deadline = Some(now + DRAIN_LIMIT.min(watch.idle));
        }
        if !requests && watch.pressure.is_set() {
            // Nothing can start a request between this sample and the drop: the connection
            // is polled by this task only.
            let (since, limit) = if s.started == 0 {
                (watch.accepted, watch.reduced.head)
            } else {
                (self.request_at, watch.reduced.idle)
            };
            if now - since >= limit {
                tracing::debug!(
                    first_request = s.started == 0,
                    limit_ms = limit.as_millis() as u64,
                    "listener full: connection without a request open closed"
                );
                return Err(Ended::Pressure);
            }
        }
        let blocked = s.write_blocked && s.written == last.written;
        if !blocked {
            self.progress_at = now;
        }
        let mut stuck = now - self.progress_at >= watch.send;
        if now - self.epoch_at >= watch.send / 4 {
            self.epoch_at = now;
            stuck |= watch.meter.advance() && http2;
        }
        if stuck {
            tracing::info!(
                send_timeout_ms = watch.send.as_millis() as u64,
                "send timeout: the client read nothing; connection dropped"
            );
            return Err(Ended::SendTimeout);
        }
        // A request that was already open when the drain began runs to its end: its own
        // timeouts bound it.
        if s.open == 0 && self.drain_deadline.is_some_and(|d| now >= d) {
            tracing::debug!("idle connection did not close in time; dropped");
            return Err(Ended::IdleDrainTimeout);
        }
        self.last = s;
        let (head_tick, idle_tick) = watch.ticks(http2);
        Ok(if s.started == 0 { head_tick } else { idle_tick })
    }
}

pin_project! {
    /// A stream that records its progress in a [`Meter`] (see the module docs).
    #[derive(Debug)]
    pub(crate) struct Active<S> {
        #[pin]
        inner: S,
        meter: Arc<Meter>,
    }
}

// === impl Active ===

impl<S> Active<S> {
    /// Wraps `inner`, recording into `meter`.
    pub(crate) fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }

    /// The wrapped stream.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Active<S> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_read(cx, buf);
        if poll.is_ready() {
            this.meter.io.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite> AsyncWrite for Active<S> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        record_write(this.meter, &poll);
        poll
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        record_write(this.meter, &poll);
        poll
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[inline]
fn record_write(meter: &Meter, poll: &Poll<io::Result<usize>>) {
    match poll {
        Poll::Ready(Ok(n)) if *n > 0 => meter.wrote(),
        Poll::Pending => meter.write_blocked.store(true, Ordering::Relaxed),
        Poll::Ready(_) => {}
    }
}

/// A connection's service that counts its requests as open until their response bodies end.
#[derive(Clone, Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

// === impl Metered ===

impl<S> Metered<S> {
    /// Wraps the connection's service `inner`, recording into `meter`.
    pub(crate) fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

impl<S, R, B> hyper::service::Service<Request<R>> for Metered<S>
where
    S: hyper::service::Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<MeteredBody<B>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    #[inline]
    fn call(&self, req: Request<R>) -> Self::Future {
        self.meter.started.fetch_add(1, Ordering::Relaxed);
        let open = Open::enter(&self.meter);
        MeteredFuture {
            inner: self.inner.call(req),
            open: Some(open),
        }
    }
}

/// Counts one request as open until dropped.
#[derive(Debug)]
struct Open(Arc<Meter>);

impl Open {
    #[inline]
    fn enter(meter: &Arc<Meter>) -> Self {
        meter.open.fetch_add(1, Ordering::Relaxed);
        Self(meter.clone())
    }
}

impl Drop for Open {
    #[inline]
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The response future of [`Metered`].
    #[derive(Debug)]
    pub(crate) struct MeteredFuture<F> {
        #[pin]
        inner: F,
        open: Option<Open>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let open = this.open.take();
        Poll::Ready(result.map(|response| {
            // The response head is the first frame hyper has to take: an HTTP/2 peer that
            // grants no window at all never lets hyper ask for the body.
            let held = open.as_ref().map(|open| open.0.hold());
            response.map(|inner| MeteredBody { inner, open, held })
        }))
    }
}

pin_project! {
    /// A response body that keeps its request open until it ends and records whether hyper
    /// comes back for more (see the module docs).
    #[derive(Debug)]
    pub(crate) struct MeteredBody<B> {
        #[pin]
        inner: B,
        open: Option<Open>,
        // A frame was handed to hyper in this epoch and hyper has not polled since.
        held: Option<u32>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(epoch), Some(open)) = (this.held.take(), this.open.as_ref()) {
                open.0.taken(epoch);
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(open) = this.open.as_ref() else {
            return this.inner.poll_frame(cx);
        };
        if let Some(epoch) = this.held.take() {
            open.0.taken(epoch);
        }
        let poll = this.inner.poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(sent), Some(data)) = (&open.0.sent, frame.data_ref()) {
                    sent.add(data.remaining() as u64);
                }
                *this.held = Some(open.0.hold());
            }
            // The body is over: the request is no longer open.
            Poll::Ready(_) => *this.open = None,
            Poll::Pending => {}
        }
        poll
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::service::Service;

    use super::*;

    fn service(
        meter: &Arc<Meter>,
    ) -> Metered<
        impl Service<Request<Empty<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>,
    > {
        let inner = hyper::service::service_fn(|_req: Request<Empty<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
        });
        Metered::new(inner, meter.clone())
    }

    #[tokio::test]
    async fn a_request_is_open_until_its_body_ends() {
        let meter = Arc::new(Meter::default());
        let svc = service(&meter);
        let fut = svc.call(Request::new(Empty::new()));
        assert_eq!(meter.sample().open, 1);
        assert_eq!(meter.sample().started, 1);
        let mut body = fut.await.unwrap().into_body();
        assert_eq!(meter.sample().open, 1);
        assert_eq!(held(&meter), 1, "the head is held");
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hi");
        assert_eq!(held(&meter), 1, "a frame is held until hyper comes back");
        assert!(body.frame().await.is_none());
        assert_eq!((meter.sample().open, held(&meter)), (0, 0));
        drop(body);
        assert_eq!(meter.sample().open, 0);
    }

    #[tokio::test]
    async fn response_body_bytes_are_counted_for_the_listener() {
        let sent = Arc::new(Counter::default());
        let meter = Arc::new(Meter::counting(sent.clone()));
        let svc = service(&meter);
        for _ in 0..3 {
            let body = svc
                .call(Request::new(Empty::new()))
                .await
                .unwrap()
                .into_body();
            assert_eq!(body.collect().await.unwrap().to_bytes(), "hi");
        }
        assert_eq!(sent.get(), 6);
    }

    #[tokio::test]
    async fn dropping_a_held_body_or_a_pending_request_closes_it() {
        let meter = Arc::new(Meter::default());
        let svc = service(&meter);
        drop(svc.call(Request::new(Empty::new())));
        assert_eq!(meter.sample().open, 0);

        let chunks = futures_util::stream::iter(
            [b"a", b"b"].map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c)))),
        );
        let mut body = MeteredBody {
            inner: StreamBody::new(chunks),
            open: Some(Open::enter(&meter)),
            held: None,
        };
        body.frame().await.unwrap().unwrap();
        assert_eq!((meter.sample().open, held(&meter)), (1, 1));
        drop(body);
        assert_eq!((meter.sample().open, held(&meter)), (0, 0));
    }

    /// Frames held now, over every epoch.
    fn held(meter: &Meter) -> u32 {
        meter.held.iter().map(|h| h.load(Ordering::Relaxed)).sum()
    }

    #[test]
    fn a_frame_is_stuck_once_held_for_four_whole_epochs() {
        let meter = Meter::default();
        let epoch = meter.hold();
        for _ in 1..HELD_EPOCHS {
            assert!(!meter.advance());
        }
        assert!(meter.advance(), "held since {HELD_EPOCHS} epochs");
        meter.taken(epoch);
        assert!(!meter.advance());
        // Frames handed over and taken back every epoch never count.
        for _ in 0..3 * HELD_RING {
            let e = meter.hold();
            assert!(!meter.advance());
            meter.taken(e);
        }
    }

    /// A connection future that never finishes and records drains; speaks HTTP/2 or not, and
    /// is still opening (its protocol undecided) or not.
    #[derive(Default)]
    struct Stuck {
        drained: Arc<AtomicBool>,
        http2: bool,
        opening: bool,
    }

    impl Stuck {
        fn new(drained: &Arc<AtomicBool>, http2: bool) -> Self {
            Self {
                drained: drained.clone(),
                http2,
                opening: false,
            }
        }
    }

    impl Future for Stuck {
        type Output = Result<(), Infallible>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Pending
        }
    }

    impl Watched for Stuck {
        fn drain(self: Pin<&mut Self>) {
            self.drained.store(true, Ordering::SeqCst);
        }

        fn http2(&self) -> bool {
            self.http2
        }

        fn opening(&self) -> bool {
            self.opening
        }
    }

    fn watch(meter: &Arc<Meter>) -> Watch {
        Watch {
            meter: meter.clone(),
            idle: Duration::from_millis(400),
            send: Duration::from_millis(200),
            header: Duration::from_secs(10),
            shutdown: CancellationToken::new(),
            pressure: Pressure::default(),
            reduced: Reduced {
                head: Duration::from_millis(100),
                idle: Duration::from_millis(100),
            },
            accepted: Instant::now(),
        }
    }

    #[test]
    fn reduced_limits_are_a_tenth_with_a_floor_and_a_ceiling() {
        let ms = Duration::from_millis;
        assert_eq!(
            Reduced::new(ms(10_000), ms(60_000)),
            Reduced {
                head: ms(1_000),
                idle: ms(6_000)
            }
        );
        assert_eq!(
            Reduced::new(ms(500), ms(50)),
            Reduced {
                head: ms(100),
                idle: ms(50)
            },
            "the floor, but never above the timeout itself"
        );
    }

    #[tokio::test]
    async fn pressure_sets_while_waiting_and_clears_after() {
        let p = Pressure::default();
        {
            let _g = p.enter();
            assert!(p.is_set());
        }
        assert!(!p.is_set());
    }

    /// Drives a connection with `started` requests, `open` of them still open, for at most
    /// `wait` (20 s timeouts, 100 ms reduced), with or without pressure.
    async fn drive_for(started: u64, open: usize, pressure: bool, wait: Duration) -> Option<Ended> {
        let meter = Arc::new(Meter::default());
        meter.started.store(started, Ordering::Relaxed);
        meter.open.store(open, Ordering::Relaxed);
        let mut w = watch(&meter);
        w.idle = Duration::from_secs(20);
        w.send = Duration::from_secs(20);
        let signal = w.pressure.clone();
        let _guard = pressure.then(|| signal.enter());
        tokio::time::timeout(wait, w.drive(Stuck::default()))
            .await
            .ok()
    }

    #[tokio::test]
    async fn under_pressure_a_connection_without_a_request_is_dropped_at_the_reduced_time() {
        for started in [0, 3] {
            let start = Instant::now();
            let ended = drive_for(started, 0, true, Duration::from_secs(2)).await;
            assert_eq!(ended, Some(Ended::Pressure), "started {started}");
            let waited = start.elapsed();
            assert!(waited >= Duration::from_millis(100), "{waited:?}");
            assert!(waited < Duration::from_secs(1), "{waited:?}");
        }
    }

    #[tokio::test]
    async fn without_pressure_or_with_a_request_open_nothing_is_dropped() {
        assert_eq!(
            drive_for(0, 0, false, Duration::from_millis(600)).await,
            None
        );
        assert_eq!(
            drive_for(1, 1, true, Duration::from_millis(600)).await,
            None
        );
    }

    #[tokio::test]
    async fn a_handshake_is_cut_under_pressure_only() {
        let p = Pressure::default();
        let never = std::future::pending::<()>();
        let ms = Duration::from_millis;
        let free =
            tokio::time::timeout(ms(400), under_pressure(never, Instant::now(), ms(100), &p));
        assert!(
            free.await.is_err(),
            "no pressure: the handshake keeps its full time"
        );
        let _g = p.enter();
        let never = std::future::pending::<()>();
        let cut = tokio::time::timeout(ms(400), under_pressure(never, Instant::now(), ms(100), &p));
        assert!(matches!(cut.await, Ok(Err(Pressured))));
    }

    /// Shutdown drains a connection: one that has lived a tick at once, a younger one at its
    /// first tick (it waits for shutdown only from then on).
    #[tokio::test]
    async fn shutdown_drains_a_connection_young_or_old() {
        for old in [false, true] {
            let meter = Arc::new(Meter::default());
            let mut w = watch(&meter);
            w.idle = Duration::from_secs(20);
            w.send = Duration::from_secs(20);
            let token = w.shutdown.clone();
            let drained = Arc::new(AtomicBool::new(false));
            let drive = tokio::spawn(w.drive(Stuck::new(&drained, false)));
            if old {
                tokio::time::sleep(FIRST_TICK * 2).await;
                assert!(!drained.load(Ordering::SeqCst), "drained before shutdown");
            }
            token.cancel();
            let since = Instant::now();
            while !drained.load(Ordering::SeqCst) {
                assert!(since.elapsed() < 4 * FIRST_TICK, "not drained (old: {old})");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drive.abort();
        }
    }

    /// The h2c sniff sets no timer of its own: the watch closes a connection still opening at
    /// `header_read_timeout` after accept, and leaves one alone once its protocol is decided.
    #[tokio::test]
    async fn a_connection_still_opening_is_closed_at_the_header_read_timeout() {
        for opening in [true, false] {
            let meter = Arc::new(Meter::default());
            let mut w = watch(&meter);
            w.header = Duration::from_millis(300);
            w.idle = Duration::from_secs(20);
            w.send = Duration::from_secs(20);
            let start = Instant::now();
            let conn = Stuck {
                opening,
                ..Stuck::default()
            };
            let ended = tokio::time::timeout(Duration::from_secs(2), w.drive(conn)).await;
            if opening {
                assert_eq!(ended, Ok(Ended::HeaderTimeout));
                let waited = start.elapsed();
                assert!(waited >= Duration::from_millis(300), "{waited:?}");
            } else {
                assert!(ended.is_err(), "a decided connection is not cut: {ended:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_blocked_write_without_progress_is_dropped_after_send_timeout() {
        let meter = Arc::new(Meter::default());
        meter.open.fetch_add(1, Ordering::Relaxed);
        meter.write_blocked.store(true, Ordering::Relaxed);
        let drained = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let ended = watch(&meter).drive(Stuck::new(&drained, false)).await;
        assert_eq!(ended, Ended::SendTimeout);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited <= Duration::from_millis(300),
            "{waited:?}"
        );
        assert!(
            !drained.load(Ordering::SeqCst),
            "a busy connection is not idle"
        );
    }

    #[tokio::test]
    async fn a_held_frame_without_progress_is_dropped_whatever_else_is_written() {
        let meter = Arc::new(Meter::default());
        meter.open.fetch_add(2, Ordering::Relaxed);
        // One stream's frame stays held ...
        meter.hold();
        let m = meter.clone();
        // ... while another stream's frames keep moving and PING answers keep being written.
        let others = tokio::spawn(async move {
            loop {
                let epoch = m.hold();
                tokio::time::sleep(Duration::from_millis(20)).await;
                m.taken(epoch);
                m.wrote();
            }
        });
        let ended = watch(&meter).drive(Stuck::new(&Arc::default(), true)).await;
        others.abort();
        assert_eq!(ended, Ended::SendTimeout);
    }

    /// Whether the connection was asked to park.
    fn asked(meter: &Meter) -> bool {
        meter.park.asked.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_quiet_http1_connection_is_asked_to_park_a_busy_one_is_not() {
        let meter = Arc::new(Meter::default());
        meter.started.store(1, Ordering::Relaxed);
        let mut w = watch(&meter);
        // Long timeouts: the watch ticks at the park tick between requests.
        w.idle = Duration::from_secs(20);
        w.send = Duration::from_secs(20);
        w.reduced = Reduced::new(w.idle, w.idle);
        let drive = tokio::spawn(w.drive(Stuck::default()));
        // Requests back to back, each a few milliseconds apart, for three ticks.
        let busy_until = Instant::now() + 3 * PARK_TICK;
        while Instant::now() < busy_until {
            meter.started.fetch_add(1, Ordering::Relaxed);
            meter.io.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(!asked(&meter), "asked to park while busy");
        }
        // Then quiet: asked within two ticks (slack for a loaded machine).
        let quiet = Instant::now();
        while !asked(&meter) {
            assert!(quiet.elapsed() < 6 * PARK_TICK, "not asked to park");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drive.abort();
    }

    #[tokio::test]
    async fn http2_bytes_without_streams_are_idle_http1_bytes_are_not() {
        for http2 in [true, false] {
            let meter = Arc::new(Meter::default());
            let m = meter.clone();
            let pings = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    m.io.fetch_add(1, Ordering::Relaxed);
                }
            });
            let drained = Arc::new(AtomicBool::new(false));
            let drive = watch(&meter).drive(Stuck::new(&drained, http2));
            let ended = tokio::time::timeout(Duration::from_millis(1500), drive).await;
            pings.abort();
            if http2 {
                assert_eq!(ended, Ok(Ended::IdleDrainTimeout));
                assert!(drained.load(Ordering::SeqCst));
            } else {
                assert!(ended.is_err(), "HTTP/1 bytes are activity");
                assert!(!drained.load(Ordering::SeqCst));
            }
        }
    }
}
