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
//!   no window) is *held*; hyper coming back for the next one is *progress*.
//!
//! A connection is **idle** when, for a whole `idle_timeout`, no request was open or started
//! and (HTTP/1 only) no byte moved. On HTTP/2, bytes do not count: PINGs, SETTINGS or
//! WINDOW_UPDATEs keep no connection alive, only streams do. An idle connection is asked to
//! close gracefully and is dropped if it has not within a short drain limit (a peer that never
//! answers the GOAWAY's PING cannot hold it).
//!
//! A connection is **stuck** when a write is blocked, or a response frame is held, and nothing
//! progressed for `send_timeout`: it is dropped at once, whatever it was doing, which frees its
//! `max_connections` slot. On HTTP/2 the rule is per connection, not per stream: a stream that
//! the peer stalls while it keeps reading others is bounded by its flow-control window and the
//! per-stream send buffer, not closed.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Response frames handed to hyper.
    yielded: AtomicU64,
    /// Response frames hyper came back after (it asked for the next one, or dropped the body).
    taken: AtomicU64,
}

/// One reading of a [`Meter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    io: u64,
    written: u64,
    write_blocked: bool,
    started: u64,
    open: usize,
    yielded: u64,
    taken: u64,
}

// === impl Meter ===

impl Meter {
    fn sample(&self) -> Sample {
        // `taken` before `yielded`: a frame is yielded before it is taken, so a frame counted in
        // `taken` here is always counted in `yielded`.
        let taken = self.taken.load(Ordering::Acquire);
        Sample {
            io: self.io.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_blocked: self.write_blocked.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            yielded: self.yielded.load(Ordering::Acquire),
            taken,
        }
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
                    let held = s.yielded > s.taken && s.taken == last.taken;
                    let blocked = s.write_blocked && s.written == last.written;
                    if !(held || blocked) {
                        progress_at = now;
                    } else if now - progress_at >= self.send {
                        tracing::info!(
                            send_timeout_ms = self.send.as_millis() as u64,
                            "send timeout: the client read nothing; connection dropped"
                        );
                        return Ended::SendTimeout;
                    }
                    if drain_deadline.is_some_and(|d| now >= d) {
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
            if let Some(open) = &open {
                open.0.yielded.fetch_add(1, Ordering::Release);
            }
            response.map(|inner| MeteredBody {
                inner,
                open,
                held: true,
            })
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
        // A frame was handed to hyper and hyper has not polled since.
        held: bool,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.held && let Some(open) = this.open.as_ref() {
                open.0.taken.fetch_add(1, Ordering::Release);
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
        if *this.held {
            *this.held = false;
            open.0.taken.fetch_add(1, Ordering::Release);
        }
        let poll = this.inner.poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(_))) => {
                *this.held = true;
                open.0.yielded.fetch_add(1, Ordering::Release);
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
        let s = meter.sample();
        assert_eq!((s.open, s.yielded, s.taken), (1, 1, 0), "the head is held");
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hi");
        let s = meter.sample();
        assert_eq!(
            (s.yielded, s.taken),
            (2, 1),
            "a frame is held until hyper comes back"
        );
        assert!(body.frame().await.is_none());
        let s = meter.sample();
        assert_eq!((s.open, s.yielded, s.taken), (0, 2, 2));
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
            held: false,
        };
        body.frame().await.unwrap().unwrap();
        assert_eq!(meter.sample().open, 1);
        drop(body);
        let s = meter.sample();
        assert_eq!((s.open, s.yielded, s.taken), (0, 1, 1));
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
        meter.open.fetch_add(1, Ordering::Relaxed);
        meter.yielded.fetch_add(1, Ordering::Relaxed);
        let m = meter.clone();
        // PING answers keep being written: no progress for the held frame.
        let pings = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                m.wrote();
            }
        });
        let ended = watch(&meter, true).drive(Stuck(Arc::default())).await;
        pings.abort();
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
