//! The body type that flows through the Snakeway stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::metrics::CounterHandle;

pin_project! {
    /// A request or response body.
    ///
    /// The common cases (nothing, one buffer, a body streamed from a hyper connection) need no
    /// allocation; anything else is boxed once with [`Body::new`].
    pub struct Body {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Empty,
        Full { data: Option<Bytes> },
        Incoming { #[pin] body: hyper::body::Incoming },
        TimedIncoming {
            #[pin] body: hyper::body::Incoming,
            timer: GapTimer,
            // Where the data bytes read are counted (the connection's handle on its
            // listener's counter).
            received: Option<Arc<CounterHandle>>,
        },
        Boxed { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

// === impl Body ===

impl Body {
    /// An empty body.
    pub const fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// A body made of one buffer.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let kind = if data.is_empty() {
            Kind::Empty
        } else {
            Kind::Full { data: Some(data) }
        };
        Self { kind }
    }

    /// A request body read from a client connection that fails with [`ClientBodyTimeout`] when
    /// the client sends nothing for `gap` while the body is being read.
    ///
    /// The clock runs only while a reader waits on the client: a reader that is slow to ask
    /// for more (an upstream applying backpressure) never makes the client look stalled. A
    /// body that is already complete (no body at all) stays a plain [`Body::from`] body.
    pub fn incoming_with_timeout(body: hyper::body::Incoming, gap: Duration) -> Self {
        Self::timed_incoming(body, gap, None)
    }

    /// [`Body::incoming_with_timeout`] that also adds the data bytes it reads to `received`
    /// (the connection's handle on its listener's counter).
    pub fn incoming_counted(
        body: hyper::body::Incoming,
        gap: Duration,
        received: &Arc<CounterHandle>,
    ) -> Self {
        Self::timed_incoming(body, gap, Some(received))
    }

    fn timed_incoming(
        body: hyper::body::Incoming,
        gap: Duration,
        received: Option<&Arc<CounterHandle>>,
    ) -> Self {
        use http_body::Body as _;
        if body.is_end_stream() {
            return Self::from(body);
        }
        Self {
            kind: Kind::TimedIncoming {
                body,
                timer: GapTimer::new(gap),
                received: received.cloned(),
            },
        }
    }

    /// Wraps any body whose data is `Bytes`, boxing it (a `Body` is returned as it is).
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        let mut slot = Some(body);
        let any: &mut dyn std::any::Any = &mut slot;
        if let Some(own) = any.downcast_mut::<Option<Self>>() {
            return own.take().unwrap_or_default();
        }
        let Some(body) = slot else {
            return Self::empty();
        };
        Self {
            kind: Kind::Boxed {
                body: body.map_err(Into::into).boxed_unsync(),
            },
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(body: hyper::body::Incoming) -> Self {
        Self {
            kind: Kind::Incoming { body },
        }
    }
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl From<&'static str> for Body {
    fn from(data: &'static str) -> Self {
        Self::full(Bytes::from_static(data.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(data: String) -> Self {
        Self::full(data)
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Empty => "Empty",
            Kind::Full { .. } => "Full",
            Kind::Incoming { .. } => "Incoming",
            Kind::TimedIncoming { .. } => "TimedIncoming",
            Kind::Boxed { .. } => "Boxed",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Incoming { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::TimedIncoming {
                body,
                timer,
                received,
            } => match body.poll_frame(cx) {
                Poll::Ready(frame) => {
                    timer.on_ready();
                    if let (Some(received), Some(Ok(frame))) = (received.as_ref(), &frame)
                        && let Some(data) = frame.data_ref()
                    {
                        received.add(data.len() as u64);
                    }
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending if timer.poll_expired(cx) => {
                    let error = ClientBodyTimeout { gap: timer.gap() };
                    Poll::Ready(Some(Err(error.into())))
                }
                Poll::Pending => Poll::Pending,
            },
            KindProj::Boxed { body } => body.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full { data } => data.is_none(),
            Kind::Incoming { body } | Kind::TimedIncoming { body, .. } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Incoming { body } | Kind::TimedIncoming { body, .. } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
        }
    }
}

/// The client went quiet while sending its request body: nothing arrived for `gap` while the
/// proxy was waiting for more. The client's fault (408), never the upstream's.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the client sent no request body data for {} ms", gap.as_millis())]
pub struct ClientBodyTimeout {
    /// The configured longest gap between two reads.
    pub gap: Duration,
}

/// A timer for the longest gap between two reads of a body, for body wrappers.
///
/// The gap is measured from the first time the reader finds the body not ready after a frame
/// (so a reader that is slow to ask is never counted against the sender) until the next frame.
/// One timer per body, allocated when the body first has to wait, then reset in place.
pub struct GapTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The gap in milliseconds: it sits in every timed [`Body`], so it is kept small.
    gap_ms: u32,
    /// Whether the current wait has started its clock.
    waiting: bool,
}

// === impl GapTimer ===

impl GapTimer {
    /// A timer for gaps of at most `gap`, to the millisecond (at least 1 ms, at most about
    /// 49 days).
    pub fn new(gap: Duration) -> Self {
        Self {
            sleep: None,
            gap_ms: u32::try_from(gap.as_millis()).unwrap_or(u32::MAX).max(1),
            waiting: false,
        }
    }

    /// The gap.
    pub fn gap(&self) -> Duration {
        Duration::from_millis(u64::from(self.gap_ms))
    }

    /// The body produced something (a frame, its end or an error): the current wait is over.
    #[inline]
    pub fn on_ready(&mut self) {
        self.waiting = false;
    }

    /// The body is not ready: starts the clock if this wait has not started it, and says
    /// whether the gap is over (else the task is woken when it will be).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + self.gap();
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

impl std::fmt::Debug for GapTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GapTimer")
            .field("gap_ms", &self.gap_ms)
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn gap_timer_fires_only_after_a_full_gap_of_waiting() {
        let gap = Duration::from_millis(80);
        let mut timer = GapTimer::new(gap);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Not waiting yet: a reader slow to ask counts nothing.
        tokio::time::sleep(gap * 2).await;
        assert!(!timer.poll_expired(&mut cx));
        tokio::time::sleep(gap / 2).await;
        assert!(!timer.poll_expired(&mut cx));
        // A frame arrives: the next wait starts its own clock.
        timer.on_ready();
        tokio::time::sleep(gap).await;
        assert!(!timer.poll_expired(&mut cx));
        tokio::time::sleep(gap / 2).await;
        assert!(!timer.poll_expired(&mut cx));
        tokio::time::sleep(gap * 3 / 4).await;
        assert!(timer.poll_expired(&mut cx));
    }

    #[tokio::test]
    async fn full_yields_its_bytes_once() {
        let body = Body::full("hello");
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }

    #[tokio::test]
    async fn empty_is_end_of_stream() {
        let body = Body::full(Bytes::new());
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn boxed_passes_frames_through() {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"abc")));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");
    }
}
