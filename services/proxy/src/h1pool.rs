//! A lock-free pool of HTTP/1.1 connections to one upstream.
//!
//! hyper-util's pooled client keys its pool by scheme and authority in a SipHash map behind a
//! mutex, and spawns a task per request to return the connection when it is ready again. Our
//! pools already belong to one upstream, so a plain queue of idle senders does: a request takes
//! an idle connection (or opens one), and the connection goes back when the response body has
//! been read to its end. HTTP/2 upstreams (one multiplexed connection) keep hyper-util's client.
//!
//! Each connection owns its response timer, made with the connection and reset for each
//! request: moving a registered timer's deadline later is one compare-and-swap, where a
//! `tokio::time::Timeout` per request would register a new timer (under the timer wheel's lock)
//! and cancel it again (the lock once more), and copy the response through one more layer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use pin_project_lite::pin_project;
use snakeway_core::{Body, BoxError};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::connector::Connector;

/// Idle connections kept per upstream; more are closed when they finish.
const MAX_IDLE: usize = 512;

/// The smallest read buffer limit given to hyper (which refuses less than 8 KiB).
const MIN_READ_BUF: usize = 64 * 1024;

/// The idle HTTP/1.1 connections of one upstream.
pub(crate) struct H1Pool {
    connector: Connector,
    /// Response heads larger than `max_response_header_bytes` are refused (a parse error).
    builder: http1::Builder,
    idle: ArrayQueue<Conn>,
    /// Connections open, idle or busy (upgraded ones included), shared with their tasks.
    open: Arc<AtomicUsize>,
}

/// One upstream connection as the pool holds it: the sender of its requests and its response
/// timer.
struct Conn {
    sender: http1::SendRequest<Body>,
    /// Runs from the start of each exchange to its response head; reset per request. Boxed
    /// once per connection: a `Sleep` is not `Unpin` and the connection moves in and out of
    /// the queue.
    timer: Pin<Box<Sleep>>,
}

/// Why [`H1Pool::request`] produced no response.
pub(crate) enum SendError {
    /// Connecting or the exchange failed.
    Failed(BoxError),
    /// No response head within the limit given.
    TimedOut,
}

impl<E: Into<BoxError>> From<E> for SendError {
    fn from(error: E) -> Self {
        Self::Failed(error.into())
    }
}

/// One open upstream connection's place in [`H1Pool::open_connections`]: held by the task
/// that drives the connection, given back when it ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl H1Pool ===

impl H1Pool {
    /// A pool of connections made by `connector` that refuse response heads larger than
    /// `max_head` bytes.
    pub(crate) fn new(connector: Connector, max_head: usize) -> Self {
        let mut builder = http1::Builder::new();
        // hyper checks a complete head against `max_header_size`; the read buffer bounds a head
        // that never ends (hyper's floor for it is 8 KiB, 64 KiB keeps body reads efficient).
        builder
            .max_header_size(max_head)
            .max_buf_size(max_head.max(MIN_READ_BUF));
        Self {
            connector,
            builder,
            idle: ArrayQueue::new(MAX_IDLE),
            open: Arc::default(),
        }
    }

    /// How many connections to the upstream are open, idle or busy (a WebSocket tunnel's
    /// included).
    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many idle connections wait in the pool (some may have been closed by the peer
    /// since; they are discarded when next taken).
    pub(crate) fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Sends `req` over an idle connection, or a new one, and waits for the response head. The
    /// request URI must be absolute (as the caller builds it); it is sent in origin form.
    ///
    /// With a `limit`, no response head within it is [`SendError::TimedOut`]: it runs from
    /// now, connecting included. Without one the caller times the exchange itself (the timer
    /// of a connection made then is never polled, so never registered).
    pub(crate) async fn request(
        self: &Arc<Self>,
        mut req: Request<Body>,
        limit: Option<Duration>,
    ) -> Result<Response<Checkin>, SendError> {
        *req.uri_mut() = origin_form(req.uri());
        // One deadline for the whole request, whichever connection takes it.
        let deadline = limit.map(|limit| Instant::now() + limit);
        // At most one look at each idle connection: a closed one is dropped, a busy one (still
        // finishing its previous exchange) goes back.
        for _ in 0..self.idle.len() {
            let Some(mut conn) = self.idle.pop() else {
                break;
            };
            if conn.sender.is_closed() {
                continue;
            }
            if !conn.sender.is_ready() {
                // The queue is full only if others returned connections meanwhile; then this
                // one is closed, which is fine.
                let _ = self.idle.push(conn);
                continue;
            }
            let sent = Timed::new(conn.sender.try_send_request(req), &mut conn.timer, deadline);
            match sent.await {
                Some(Ok(response)) => return Ok(self.checkin_after(response, conn)),
                Some(Err(mut error)) => match error.take_message() {
                    // Never written: the upstream closed this keep-alive connection just as it
                    // was picked. The upstream saw nothing; use another connection.
                    Some(unsent) => req = unsent,
                    None => return Err(error.into_error().into()),
                },
                // The connection is dropped with the request in flight: hyper closes it.
                None => return Err(SendError::TimedOut),
            }
        }
        // A new connection's timer is made with it: the limit covers connecting too.
        let mut timer = Box::pin(tokio::time::sleep(Duration::MAX));
        let connected = Timed::new(self.connect(), &mut timer, deadline);
        let (sender, connection, open) = connected.await.ok_or(SendError::TimedOut)??;
        tokio::spawn(async move {
            let _open = open;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        let mut conn = Conn { sender, timer };
        let sent = Timed::new(conn.sender.send_request(req), &mut conn.timer, deadline);
        let response = sent.await.ok_or(SendError::TimedOut)??;
        Ok(self.checkin_after(response, conn))
    }

    /// Sends an upgrade request (a WebSocket handshake) over a new connection of its own,
    /// never a pooled one, and never pooled afterwards: after a `101` the connection belongs
    /// to the tunnel ([`hyper::upgrade::on`] on the response), after any other answer it is
    /// closed with the response body.
    pub(crate) async fn upgrade(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        *req.uri_mut() = origin_form(req.uri());
        let (mut sender, connection, open) = self.connect().await?;
        tokio::spawn(async move {
            // An upgraded connection lives on in its tunnel, which keeps the IO: it stays
            // counted until the handshake's connection task ends.
            let _open = open;
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream upgrade connection ended with an error");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// A new connection to the upstream, handshaken; the caller drives its connection task,
    /// which holds the connection's [`Open`] place.
    async fn connect(
        &self,
    ) -> Result<
        (
            http1::SendRequest<Body>,
            http1::Connection<<Connector as tower::Service<Uri>>::Response, Body>,
            Open,
        ),
        BoxError,
    > {
        let io = self
            .connector
            .clone()
            .oneshot(Uri::from_static("/"))
            .await?;
        let (sender, connection) = self.builder.handshake(io).await?;
        Ok((sender, connection, Open::new(&self.open)))
    }

    /// Wraps the response body so that the connection returns to the pool once the body has
    /// been read to its end (at once for a response without a body). A `101 Switching
    /// Protocols` nobody asked for never returns its connection: that connection now speaks
    /// something else.
    fn checkin_after(
        self: &Arc<Self>,
        response: Response<Incoming>,
        conn: Conn,
    ) -> Response<Checkin> {
        use http_body::Body as _;
        let conn = if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            None
        } else if response.body().is_end_stream() {
            let _ = self.idle.push(conn);
            None
        } else {
            Some(conn)
        };
        response.map(|body| Checkin {
            body,
            conn,
            pool: self.clone(),
        })
    }
}

/// `http://host/path?q` → `/path?q`: the request target an HTTP/1.1 origin server expects.
fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

pin_project! {
    /// `send` raced against a connection's response timer (`None`: not timed): `None` when
    /// the timer fires first. The exchange is polled first, so an answer that is there wins.
    struct Timed<'t, F> {
        #[pin]
        send: F,
        timer: Option<Pin<&'t mut Sleep>>,
    }
}

impl<'t, F> Timed<'t, F> {
    /// `send` raced against `timer` set to `deadline`; not timed without a deadline (the
    /// timer is then left as it is, never polled).
    fn new(send: F, timer: &'t mut Pin<Box<Sleep>>, deadline: Option<Instant>) -> Self {
        let timer = deadline.map(|deadline| {
            timer.as_mut().reset(deadline);
            timer.as_mut()
        });
        Self { send, timer }
    }
}

impl<F: Future> Future for Timed<'_, F> {
    type Output = Option<F::Output>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.send.poll(cx) {
            return Poll::Ready(Some(output));
        }
        match this.timer {
            Some(timer) => timer.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

pin_project! {
    /// An upstream response body that returns its connection to the pool at its end. Dropped
    /// early, it drops the connection (hyper closes it: the rest of the body is unread).
    pub(crate) struct Checkin {
        #[pin]
        body: Incoming,
        conn: Option<Conn>,
        pool: Arc<H1Pool>,
    }
}

impl Checkin {
    /// The body itself, once its connection is back in the pool (a response without a body).
    pub(crate) fn into_incoming(self) -> Incoming {
        self.body
    }
}

impl http_body::Body for Checkin {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        // The end: `None`, or the last frame (a server stops polling once the body says so).
        let ended = frame.is_none()
            || (frame.as_ref().is_some_and(Result::is_ok) && this.body.is_end_stream());
        if ended && let Some(conn) = this.conn.take() {
            let _ = this.pool.idle.push(conn);
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
