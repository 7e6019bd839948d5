//! Explicit retries: which requests may be sent again ([`RetryPolicy`]), which outcomes of a
//! try are retried ([`RetryOn`]), and the budget that keeps a failing upstream from doubling the
//! load on the others (Envoy's retry budget).
//!
//! Nothing here runs unless a service has a policy: without one, `forward` takes no counter,
//! copies nothing and never sends a request twice.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use snakeway_core::{Body, BoxError, ClientBodyTimeout, cause_ref};

use crate::body::Sending;
use crate::connector::ConnectError;

/// The largest request body read into memory so that it can be sent again. A request with a
/// larger body, or one of unknown length, is never retried.
pub(crate) const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// An outcome of one try that a [`RetryPolicy`] may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// Connecting failed: refused, timed out (`connect_timeout`) or the TLS handshake failed.
    /// Nothing was sent.
    ConnectFailure,
    /// The upstream closed or reset the connection before sending a response head.
    ResetBeforeResponse,
    /// The upstream answered 502.
    Status502,
    /// The upstream answered 503.
    Status503,
    /// The upstream answered 504 (its own; a `response_timeout` expiry is never retried).
    Status504,
}

impl RetryOn {
    /// The config name: `connect_failure`, `reset_before_response`, `502`, `503` or `504`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConnectFailure => "connect_failure",
            Self::ResetBeforeResponse => "reset_before_response",
            Self::Status502 => "502",
            Self::Status503 => "503",
            Self::Status504 => "504",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The condition an upstream response status meets, if any.
    #[inline]
    pub(crate) fn of_status(status: StatusCode) -> Option<Self> {
        match status {
            StatusCode::BAD_GATEWAY => Some(Self::Status502),
            StatusCode::SERVICE_UNAVAILABLE => Some(Self::Status503),
            StatusCode::GATEWAY_TIMEOUT => Some(Self::Status504),
            _ => None,
        }
    }

    /// The condition a failed exchange meets, if any. `sending` is where the request body
    /// stood: a failure of the client's body is never retried, and neither is a response head
    /// the upstream did send but that was invalid or too large.
    pub(crate) fn of_failure(
        error: &(dyn std::error::Error + 'static),
        sending: Option<Sending>,
    ) -> Option<Self> {
        if matches!(
            sending,
            Some(Sending::ClientTimedOut | Sending::ClientFailed)
        ) || cause_ref::<ClientBodyTimeout>(error).is_some()
        {
            return None;
        }
        if cause_ref::<ConnectError>(error).is_some() {
            return Some(Self::ConnectFailure);
        }
        if let Some(h) = cause_ref::<hyper::Error>(error) {
            if h.is_user() || h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return None;
            }
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return Some(Self::ResetBeforeResponse);
            }
        }
        match cause_ref::<std::io::Error>(error).map(std::io::Error::kind) {
            Some(
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof,
            ) => Some(Self::ResetBeforeResponse),
            _ => None,
        }
    }
}

/// Which failed requests a service sends again, and how many retries it lets run at once.
///
/// Only requests with an idempotent method (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
/// `DELETE`) whose body is empty or declares at most 64 KiB (read into memory before the first
/// try) are retried, and only before any of the response reached the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    on: u8,
    budget_percent: u32,
}

impl RetryPolicy {
    /// Retries allowed in flight whatever the budget's share says, so that a quiet service can
    /// still retry (Envoy's `min_retry_concurrency`).
    pub const MIN_CONCURRENCY: usize = 3;

    /// `attempts` tries per request at most, the first included (0 is taken as 1: no retry),
    /// after an outcome listed in `on`, while retries in flight stay below `budget_percent`
    /// (at most 100) of the service's requests in flight, or below
    /// [`RetryPolicy::MIN_CONCURRENCY`].
    pub fn new(attempts: u32, on: impl IntoIterator<Item = RetryOn>, budget_percent: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            on: on.into_iter().fold(0, |set, cond| set | cond.bit()),
            budget_percent: budget_percent.min(100),
        }
    }

    /// Tries per request at most, the first included.
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether `cond` is retried.
    pub const fn retries_on(&self, cond: RetryOn) -> bool {
        self.on & cond.bit() != 0
    }

    /// The share, in percent, of the service's requests in flight that may be retries.
    pub const fn budget_percent(&self) -> u32 {
        self.budget_percent
    }

    /// Whether `req` may be sent more than once: an idempotent method, and a body that is empty
    /// or declares at most [`MAX_REPLAY_BODY`] bytes.
    #[inline]
    pub(crate) fn may_retry(&self, req: &Request<Body>) -> bool {
        use http_body::Body as _;
        self.attempts > 1
            && matches!(
                *req.method(),
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
            && (req.body().is_end_stream()
                || req
                    .body()
                    .size_hint()
                    .exact()
                    .is_some_and(|n| n <= MAX_REPLAY_BODY))
    }
}

/// The retry budget of one service: its requests and retries in flight. Shared by the
/// snapshots a reload replaces, like the upstreams' counters.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    requests: AtomicUsize,
    retries: AtomicUsize,
}

impl Budget {
    /// Counts one more request in flight until the guard drops.
    #[inline]
    pub(crate) fn request(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.requests)
    }

    /// Starts a retry if fewer than `max(MIN_CONCURRENCY, percent% of the requests in flight)`
    /// retries are in flight; it counts until the guard drops. `None`: over budget.
    pub(crate) fn try_retry(&self, percent: u32) -> Option<InFlight<'_>> {
        let requests = self.requests.load(Ordering::Relaxed);
        let share = requests.saturating_mul(percent as usize) / 100;
        let limit = share.max(RetryPolicy::MIN_CONCURRENCY);
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |retries| {
                (retries < limit).then_some(retries + 1)
            })
            .ok()
            .map(|_| InFlight(&self.retries))
    }
}

#[cfg(test)]
impl Budget {
    pub(crate) fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn retries_in_flight(&self) -> usize {
        self.retries.load(Ordering::Relaxed)
    }
}

/// One request or retry counted in flight; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body read into memory, to be sent once per try.
#[derive(Debug)]
pub(crate) struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

/// Why a request body could not be read for replay.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client's body failed (stalled past `body_read_timeout`, or broke off).
    Client(BoxError),
    /// The body turned out longer than [`MAX_REPLAY_BODY`] despite its declared length.
    TooLong,
}

impl Replay {
    /// Reads `body` (at most [`MAX_REPLAY_BODY`] bytes) into memory.
    pub(crate) async fn read(body: Body) -> Result<Self, ReadError> {
        use http_body::Body as _;
        let mut body = body;
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(ReadError::Client)?;
            match frame.into_data() {
                Ok(chunk) => {
                    if (data.len() + chunk.len()) as u64 > MAX_REPLAY_BODY {
                        return Err(ReadError::TooLong);
                    }
                    data.extend_from_slice(&chunk);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        Ok(Self {
            data: data.freeze(),
            trailers,
        })
    }

    /// A fresh body with the same bytes (and trailers).
    pub(crate) fn body(&self) -> Body {
        match &self.trailers {
            None => Body::full(self.data.clone()),
            Some(trailers) => Body::new(ReplayBody {
                data: Some(self.data.clone()).filter(|d| !d.is_empty()),
                trailers: Some(trailers.clone()),
            }),
        }
    }
}

/// A replayed body that ends with trailers.
struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RetryOn; 5] = [
        RetryOn::ConnectFailure,
        RetryOn::ResetBeforeResponse,
        RetryOn::Status502,
        RetryOn::Status503,
        RetryOn::Status504,
    ];

    #[test]
    fn policy_holds_exactly_its_conditions() {
        let p = RetryPolicy::new(3, [RetryOn::Status503, RetryOn::ConnectFailure], 20);
        let held: Vec<RetryOn> = ALL.into_iter().filter(|c| p.retries_on(*c)).collect();
        assert_eq!(held, [RetryOn::ConnectFailure, RetryOn::Status503]);
        assert_eq!((p.attempts(), p.budget_percent()), (3, 20));
        let p = RetryPolicy::new(0, ALL, 250);
        assert!(ALL.iter().all(|c| p.retries_on(*c)));
        assert_eq!((p.attempts(), p.budget_percent()), (1, 100), "clamped");
        let names: Vec<&str> = ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "connect_failure",
                "reset_before_response",
                "502",
                "503",
                "504"
            ]
        );
    }

    #[test]
    fn statuses_match_their_condition_only() {
        assert_eq!(
            RetryOn::of_status(StatusCode::BAD_GATEWAY),
            Some(RetryOn::Status502)
        );
        assert_eq!(
            RetryOn::of_status(StatusCode::SERVICE_UNAVAILABLE),
            Some(RetryOn::Status503)
        );
        assert_eq!(
            RetryOn::of_status(StatusCode::GATEWAY_TIMEOUT),
            Some(RetryOn::Status504)
        );
        for status in [200, 404, 500, 501, 505, 429] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(RetryOn::of_status(status), None, "{status}");
        }
    }

    #[test]
    fn failures_match_their_condition() {
        use std::io;
        let refused = ConnectError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            RetryOn::of_failure(&refused, None),
            Some(RetryOn::ConnectFailure)
        );
        let timeout = ConnectError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(
            RetryOn::of_failure(&timeout, None),
            Some(RetryOn::ConnectFailure)
        );
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
        ] {
            let e = io::Error::from(kind);
            assert_eq!(
                RetryOn::of_failure(&e, None),
                Some(RetryOn::ResetBeforeResponse),
                "{kind:?}"
            );
            // The client's body failing is never the upstream's, nor retried.
            assert_eq!(RetryOn::of_failure(&e, Some(Sending::ClientFailed)), None);
            assert_eq!(RetryOn::of_failure(&e, Some(Sending::ClientTimedOut)), None);
        }
        let stalled = ClientBodyTimeout {
            gap: std::time::Duration::from_secs(1),
        };
        assert_eq!(RetryOn::of_failure(&stalled, None), None);
        let other = io::Error::other("something else");
        assert_eq!(RetryOn::of_failure(&other, None), None);
    }

    #[test]
    fn budget_allows_the_minimum_then_its_share() {
        let budget = Budget::default();
        // Nothing in flight: still MIN_CONCURRENCY retries, even at 0 %.
        let first: Vec<_> = (0..3).map(|_| budget.try_retry(0).expect("min")).collect();
        assert!(budget.try_retry(0).is_none());
        assert!(
            budget.try_retry(100).is_none(),
            "no requests: only the minimum"
        );
        // 40 requests in flight at 10 %: 4 retries.
        let requests: Vec<_> = (0..40).map(|_| budget.request()).collect();
        let fourth = budget.try_retry(10).expect("4 of 40");
        assert!(budget.try_retry(10).is_none());
        // A finished retry frees its slot.
        drop(fourth);
        let fourth = budget.try_retry(10).expect("freed");
        // At 50 %: 20.
        let more: Vec<_> = (0..16)
            .map(|_| budget.try_retry(50).expect("20 of 40"))
            .collect();
        assert!(budget.try_retry(50).is_none());
        drop((first, fourth, more));
        assert_eq!(budget.retries.load(Ordering::Relaxed), 0);
        drop(requests);
        assert_eq!(budget.requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_idempotent_small_requests_may_be_retried() {
        let p = RetryPolicy::new(2, ALL, 20);
        let req = |method: Method, body: Body| {
            let mut r = Request::new(body);
            *r.method_mut() = method;
            r
        };
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(p.may_retry(&req(m.clone(), Body::empty())), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!p.may_retry(&req(m.clone(), Body::empty())), "{m}");
        }
        let small = Body::full(vec![7u8; MAX_REPLAY_BODY as usize]);
        assert!(p.may_retry(&req(Method::PUT, small)));
        let big = Body::full(vec![7u8; MAX_REPLAY_BODY as usize + 1]);
        assert!(!p.may_retry(&req(Method::PUT, big)));
        // Unknown length: never.
        assert!(!p.may_retry(&req(Method::PUT, Body::new(Unsized))));
        // One attempt: nothing to retry.
        let once = RetryPolicy::new(1, ALL, 20);
        assert!(!once.may_retry(&req(Method::GET, Body::empty())));
    }

    /// A body of unknown length.
    struct Unsized;

    impl http_body::Body for Unsized {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(None)
        }
    }

    #[tokio::test]
    async fn replay_gives_the_same_bytes_and_trailers_each_time() {
        use http_body_util::BodyExt;
        let replay = Replay::read(Body::full(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        for _ in 0..2 {
            let got = replay.body().collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], b"hello");
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let with_trailers = ReplayBody {
            data: Some(Bytes::from_static(b"ab")),
            trailers: Some(trailers.clone()),
        };
        let replay = Replay::read(Body::new(with_trailers)).await.unwrap();
        for _ in 0..2 {
            let got = replay.body().collect().await.unwrap();
            assert_eq!(got.trailers(), Some(&trailers));
            assert_eq!(&got.to_bytes()[..], b"ab");
        }
        let big = Body::new(ReplayBody {
            data: Some(Bytes::from(vec![0u8; MAX_REPLAY_BODY as usize + 1])),
            trailers: None,
        });
        assert!(matches!(Replay::read(big).await, Err(ReadError::TooLong)));
    }
}
