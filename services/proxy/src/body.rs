//! Body wrappers that let time be blamed on the side that stalled.
//!
//! * [`SendBody`] wraps a request body on its way upstream and tells the proxy what the
//!   exchange is waiting for: the client (its body is not ready), the upstream (taking the
//!   bytes), or nothing more to send. `response_timeout` runs only while the upstream is the one
//!   holding things up, and from the end of the request body on.
//! * [`UpstreamBody`] wraps a response body from upstream and fails it when the upstream sends
//!   nothing for `read_timeout` while the client waits; the upstream's circuit counts that.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use snakeway_core::{Body, BoxError, ClientBodyTimeout, GapTimer, is_caused_by};
use tokio::sync::Notify;

use crate::service::Blame;

/// What a request on its way upstream is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sending {
    /// The upstream connection is taking the request (or has not asked for the body yet).
    Upstream,
    /// The next piece of the request body has not arrived from the client.
    Client,
    /// The whole request has been handed to the upstream connection.
    Sent,
    /// The client body failed: it stalled past `body_read_timeout`.
    ClientTimedOut,
    /// The client body failed otherwise (the client went away mid-body).
    ClientFailed,
}

impl Sending {
    const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Upstream,
            1 => Self::Client,
            2 => Self::Sent,
            3 => Self::ClientTimedOut,
            _ => Self::ClientFailed,
        }
    }
}

/// Shared between a [`SendBody`] (polled by the upstream connection) and the proxy's wait for
/// the response head.
#[derive(Debug)]
pub(crate) struct Progress {
    state: AtomicU8,
    /// Frames handed to the upstream connection (each is progress on the upstream's side).
    frames: AtomicU32,
    /// Woken when `state` changes.
    changed: Notify,
}

// === impl Progress ===

impl Progress {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU8::new(Sending::Upstream as u8),
            frames: AtomicU32::new(0),
            changed: Notify::new(),
        })
    }

    pub(crate) fn state(&self) -> Sending {
        Sending::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn frames(&self) -> u32 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Waits for the next state change (a change since the last wait counts).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    fn set(&self, state: Sending) {
        if self.state.swap(state as u8, Ordering::AcqRel) != state as u8 {
            self.changed.notify_one();
        }
    }
}

pin_project! {
    /// A request body on its way upstream, reporting to a [`Progress`].
    pub(crate) struct SendBody {
        #[pin]
        body: Body,
        progress: Arc<Progress>,
    }
}

impl SendBody {
    pub(crate) fn new(body: Body, progress: Arc<Progress>) -> Self {
        Self { body, progress }
    }
}

impl http_body::Body for SendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        let state = match &polled {
            Poll::Pending => Sending::Client,
            Poll::Ready(None) => Sending::Sent,
            Poll::Ready(Some(Ok(_))) => {
                this.progress.frames.fetch_add(1, Ordering::Relaxed);
                // hyper stops asking once the body says it is complete.
                if http_body::Body::is_end_stream(&*this.body) {
                    Sending::Sent
                } else {
                    Sending::Upstream
                }
            }
            Poll::Ready(Some(Err(e))) if is_caused_by::<ClientBodyTimeout>(&**e) => {
                Sending::ClientTimedOut
            }
            Poll::Ready(Some(Err(_))) => Sending::ClientFailed,
        };
        this.progress.set(state);
        polled
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

/// The upstream went quiet in the middle of its response body.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream} sent no response body data for {} ms", gap.as_millis())]
pub struct UpstreamBodyTimeout {
    /// The upstream (`host:port` or `unix:/path`).
    pub upstream: Box<str>,
    /// The configured `read_timeout`.
    pub gap: Duration,
}

pin_project! {
    /// A response body from upstream that fails with [`UpstreamBodyTimeout`] when the upstream
    /// sends nothing for `read_timeout` while it is being read, and then counts a failure
    /// against the upstream's circuit.
    pub(crate) struct UpstreamBody<B> {
        #[pin]
        body: B,
        timer: GapTimer,
        blame: Blame,
        // Counted once: a reader polling again after the error sees it again, uncounted.
        stalled: bool,
    }
}

impl<B> UpstreamBody<B> {
    pub(crate) fn new(body: B, read_timeout: Duration, blame: Blame) -> Self {
        Self {
            body,
            timer: GapTimer::new(read_timeout),
            blame,
            stalled: false,
        }
    }
}

impl<B> http_body::Body for UpstreamBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.on_ready();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.timer.poll_expired(cx) => {
                let error = this.blame.body_stalled(this.timer.gap(), !*this.stalled);
                *this.stalled = true;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => Poll::Pending,
        }
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
