//! The per-request contexts handed to devices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Extensions, HeaderValue, Method, Uri, response};

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
}

/// The request context: what devices know about the request beyond its head, and the typed
/// extensions they use to share data (e.g. the identity device's `ClientIdentity`).
///
/// Extensions are never forwarded upstream nor logged unless a device chooses to.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    info: Arc<RequestInfo>,
    /// The matched route, once routing has happened.
    pub route: Option<Arc<str>>,
    /// The upstream service the route leads to, if it is a service route.
    pub service: Option<Arc<str>>,
    /// Typed data shared between devices.
    pub extensions: Extensions,
    /// Where the response came from, once there is one.
    pub origin: Option<Origin>,
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
