//! The per-request contexts handed to devices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Uri, response};

use crate::{DeviceLogs, DeviceSlots};

/// What is known about a request when it arrives; shared (cheaply) by every phase, including
/// the body hooks that run where the body is polled.
#[derive(Debug)]
pub struct RequestInfo {
    /// The request id (`x-request-id`), kept from the client or generated.
    pub request_id: HeaderValue,
    /// The downstream peer's address.
    pub peer: SocketAddr,
    /// The method as received.
    pub method: Method,
    /// The URI as received, with the normalized path.
    pub uri: Uri,
    /// When the request arrived.
    pub started: Instant,
    /// State devices keep between their hooks of this request.
    pub slots: DeviceSlots,
    /// Log lines devices recorded for this request, not yet written.
    pub device_logs: DeviceLogs,
    /// Request body bytes read from the client so far, when something counts them.
    pub received: BodyBytes,
}

// === impl RequestInfo ===

impl RequestInfo {
    /// What is known about a request that arrived at `started`: no device state yet, its body
    /// bytes counted when `count_body` (some device needs the figure).
    pub fn new(
        request_id: HeaderValue,
        peer: SocketAddr,
        method: Method,
        uri: Uri,
        started: Instant,
        count_body: bool,
    ) -> Self {
        Self {
            request_id,
            peer,
            method,
            uri,
            started,
            slots: DeviceSlots::default(),
            device_logs: DeviceLogs::default(),
            received: if count_body {
                BodyBytes::counted()
            } else {
                BodyBytes::uncounted()
            },
        }
    }
}

/// A request's body bytes read from the client so far: counted where the body is polled
/// when a device needs the figure (a body or `complete` hook), else not counted at all.
#[derive(Debug)]
pub struct BodyBytes(AtomicU64);

/// Marks a count nobody keeps.
const UNCOUNTED: u64 = u64::MAX;

// === impl BodyBytes ===

impl BodyBytes {
    /// A count starting at zero.
    pub const fn counted() -> Self {
        Self(AtomicU64::new(0))
    }

    /// No count: [`BodyBytes::get`] answers `None`.
    pub const fn uncounted() -> Self {
        Self(AtomicU64::new(UNCOUNTED))
    }

    /// Adds `n` bytes read (nothing when uncounted).
    #[inline]
    pub fn add(&self, n: u64) {
        // One reader of the body adds; others only read, so no lost update is possible.
        let now = self.0.load(Relaxed);
        if now != UNCOUNTED {
            self.0
                .store(now.saturating_add(n).min(UNCOUNTED - 1), Relaxed);
        }
    }

    /// The bytes read so far, or `None` when nothing counts them.
    #[inline]
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Relaxed)).filter(|&n| n != UNCOUNTED)
    }
}

impl Default for BodyBytes {
    fn default() -> Self {
        Self::uncounted()
    }
}

/// What went over the wire for one request, as [`Device::on_complete`](crate::Device::on_complete)
/// sees it: body bytes only (no heads, no framing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes handed to the connection for the client.
    pub bytes_out: u64,
    /// Whether the response body was sent to its end; `false` when the exchange stopped early
    /// (the client went away, or the upstream body failed mid-stream).
    pub complete: bool,
}

/// The request context: what devices know about the request beyond its head, and the typed
/// extensions they use to share data (e.g. the identity device's `ClientIdentity`).
///
/// Extensions are never forwarded upstream nor logged unless a device chooses to.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    info: Arc<RequestInfo>,
    /// The matched route, once routing has happened (the server notes it when some device
    /// runs after routing: no other could read it).
    pub route: Option<Arc<str>>,
    /// The upstream service the route leads to, if it is a service route (noted like
    /// `route`).
    pub service: Option<Arc<str>>,
    /// Typed data shared between devices.
    pub extensions: Extensions,
    /// Where the response came from, once there is one.
    pub origin: Option<Origin>,
    /// Fields for the response, decided before there was one (see
    /// [`RequestCtx::add_response_header`]).
    response_headers: ResponseHeaders,
}

/// Response fields devices decided on the request side, in the order they were added: the
/// first kept inline (a throttling device adds one to every request it counts), any others in
/// a list made for the second (a request with one field has no list to drop).
#[derive(Clone, Debug, Default)]
struct ResponseHeaders {
    first: Option<(HeaderName, HeaderValue)>,
    more: Option<Vec<(HeaderName, HeaderValue)>>,
}

// === impl ResponseHeaders ===

impl ResponseHeaders {
    fn push(&mut self, field: (HeaderName, HeaderValue)) {
        if self.first.is_none() {
            self.first = Some(field);
        } else {
            self.more.get_or_insert_with(Vec::new).push(field);
        }
    }
}

// === impl RequestCtx ===

impl RequestCtx {
    /// A context for a request just received.
    pub fn new(info: RequestInfo) -> Self {
        Self {
            info: Arc::new(info),
            route: None,
            service: None,
            extensions: Extensions::new(),
            origin: None,
            response_headers: ResponseHeaders::default(),
        }
    }

    /// A context for a request that only left its [`RequestInfo`] behind (an inner service
    /// dropped the context).
    pub fn from_info(info: Arc<RequestInfo>) -> Self {
        Self {
            info,
            route: None,
            service: None,
            extensions: Extensions::new(),
            origin: None,
            response_headers: ResponseHeaders::default(),
        }
    }

    /// What is known about the request.
    pub fn info(&self) -> &Arc<RequestInfo> {
        &self.info
    }

    /// The request id.
    pub fn request_id(&self) -> &HeaderValue {
        &self.info.request_id
    }

    /// The downstream peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.info.peer
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.info.method
    }

    /// The normalized request path.
    pub fn path(&self) -> &str {
        self.info.uri.path()
    }

    /// Adds a field to whatever response this request gets (the upstream's, a static file, a
    /// synthetic or early answer, an error page): appended to its head before `on_response`
    /// runs, after any field of the same name already there (together they make one list,
    /// RFC 9110 §5.3). For a device that decides a response field on the request side, such as
    /// the throttling device's `RateLimit`, without keeping state for an `on_response` hook.
    /// A response a later `on_response` replaces (its hook failed) does not carry it.
    pub fn add_response_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.response_headers.push((name, value));
    }

    /// Appends the added fields to `headers` (the response's), in the order they were added.
    pub(crate) fn apply_response_headers(&mut self, headers: &mut HeaderMap) {
        let Some((name, value)) = self.response_headers.first.take() else {
            return;
        };
        headers.append(name, value);
        if let Some(more) = self.response_headers.more.take() {
            for (name, value) in more {
                headers.append(name, value);
            }
        }
    }
}

/// Where a response came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An upstream service.
    Upstream,
    /// The static-file handler.
    Static,
    /// A configured synthetic response.
    Synthetic,
    /// A device answered early.
    Device,
    /// Snakeway's error handling (no route, upstream failure, device failure, …).
    Error,
}

// === impl Origin ===

impl Origin {
    /// The origin's name as logged.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Static => "static",
            Self::Synthetic => "synthetic",
            Self::Device => "device",
            Self::Error => "error",
        }
    }
}

/// The response context for `on_response`: the response head (status, headers) and where the
/// response came from.
#[derive(Debug)]
pub struct ResponseCtx<'a> {
    /// The response head; devices may change status and headers.
    pub head: &'a mut response::Parts,
    /// Where the response came from.
    pub origin: Origin,
}

/// What the body hooks see: the request's [`RequestInfo`] (the body streams where the
/// upstream client polls it, away from the [`RequestCtx`]).
#[derive(Clone, Debug)]
pub struct BodyCtx {
    /// What is known about the request.
    pub info: Arc<RequestInfo>,
    /// Body bytes seen so far, before the current chunk.
    pub bytes_before: u64,
}
