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

use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait for an idle connection to finish closing gracefully before it is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Shortest tick of the watch timer.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Buckets of held frames, by the epoch they were handed over in (modulo this).
const HELD_RING: u32 = 8;
/// A frame still held this many epochs after the one it was handed over in has been held for
/// at least four quarters of `send_timeout`.
const HELD_EPOCHS: u32 = 5;

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
    /// Whether the connection speaks HTTP/2 (bytes then do not count as activity).
    pub(crate) http2: bool,
    /// Cancelled on server shutdown: the connection is drained.
    pub(crate) shutdown: CancellationToken,
}

/// A hyper connection that can be asked to finish its in-flight requests and close.
pub(crate) trait Drain {
    /// Starts a graceful shutdown: no new requests, close once the current ones are answered.
    fn drain(self: Pin<&mut Self>);
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
}

// === impl Watch ===

impl Watch {
    /// Drives `conn` to its end, or drops it (see [`Ended`]).
    pub(crate) async fn drive<C, E>(self, conn: C) -> Ended
    where
        C: Future<Output = Result<(), E>> + Drain,
        E: std::fmt::Display,
    {
        let mut conn = pin!(conn);
        let tick = (self.idle.min(self.send) / 4).max(MIN_TICK);
        let start = Instant::now();
        let mut ticker = tokio::time::interval_at(start + tick, tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = self.meter.sample();
        let mut active_at = start;
        let mut progress_at = start;
        let quarter_send = self.send / 4;
        let mut epoch_at = start;
        let mut drain_deadline: Option<Instant> = None;
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return Ended::Finished;
                }
                () = self.shutdown.cancelled(), if !draining => {
                    conn.as_mut().drain();
                    draining = true;
                }
                now = ticker.tick() => {
                    let s = self.meter.sample();
                    let busy = s.open > 0
                        || s.started != last.started
                        || (!self.http2 && s.io != last.io);
                    if busy {
                        active_at = now;
                    } else if !draining && now - active_at >= self.idle {
                        tracing::debug!("closing idle connection");
                        conn.as_mut().drain();
                        draining = true;
                        drain_deadline = Some(now + DRAIN_LIMIT.min(self.idle));
                    }
                    let blocked = s.write_blocked && s.written == last.written;
                    if !blocked {
                        progress_at = now;
                    }
                    let mut stuck = now - progress_at >= self.send;
                    if now - epoch_at >= quarter_send {
                        epoch_at = now;
                        stuck |= self.meter.advance() && self.http2;
                    }
                    if stuck {
                        tracing::info!(
                            send_timeout_ms = self.send.as_millis() as u64,
                            "send timeout: the client read nothing; connection dropped"
                        );
                        return Ended::SendTimeout;
                    }
                    // A request that was already open when the drain began runs to its end:
                    // its own timeouts bound it.
                    if s.open == 0 && drain_deadline.is_some_and(|d| now >= d) {
                        tracing::debug!("idle connection did not close in time; dropped");
                        return Ended::IdleDrainTimeout;
                    }
                    last = s;
                }
            }
        }
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
            Poll::Ready(Some(Ok(_))) => *this.held = Some(open.0.hold()),
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

    /// A connection future that never finishes and records drains.
    struct Stuck(Arc<AtomicBool>);

    impl Future for Stuck {
        type Output = Result<(), Infallible>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Pending
        }
    }

    impl Drain for Stuck {
        fn drain(self: Pin<&mut Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn watch(meter: &Arc<Meter>, http2: bool) -> Watch {
        Watch {
            meter: meter.clone(),
            idle: Duration::from_millis(400),
            send: Duration::from_millis(200),
            http2,
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_blocked_write_without_progress_is_dropped_after_send_timeout() {
        let meter = Arc::new(Meter::default());
        meter.open.fetch_add(1, Ordering::Relaxed);
        meter.write_blocked.store(true, Ordering::Relaxed);
        let drained = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let ended = watch(&meter, false).drive(Stuck(drained.clone())).await;
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
        let ended = watch(&meter, true).drive(Stuck(Arc::default())).await;
        others.abort();
        assert_eq!(ended, Ended::SendTimeout);
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
            let drive = watch(&meter, http2).drive(Stuck(drained.clone()));
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
