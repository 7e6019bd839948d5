//! How a refused request is answered: through the normal error path, not by the guard.
//!
//! On a violation the guard records a [`Rejection`] in the connection's [`Rejections`] slot,
//! which the connection's hyper service shares, and, once hyper owes no other response, hands
//! hyper [`SYNTHETIC_HEAD`] followed by the end of the stream. The service finds the slot
//! filled when hyper calls it for that head and answers with the rejection's status through
//! the device pipeline's error path (`on_error`, `on_response`, the access log), never routing
//! it. A client cannot forge the synthetic request: nothing it sends after a violation is read.

use std::sync::{Arc, OnceLock};

use http::{Method, Uri};

use super::head::{RequestLine, Violation};

/// The request hyper is given in place of a refused one: well-formed, no body, and the last
/// one of the connection.
pub(crate) const SYNTHETIC_HEAD: &[u8] = b"GET / HTTP/1.1\r\nhost: -\r\nconnection: close\r\n\r\n";

/// A refused request: why, and what its request line said when it could be read.
#[derive(Clone, Debug)]
pub(crate) struct Rejection {
    /// The status and reason.
    pub(crate) violation: Violation,
    /// The method, when the request line parsed.
    pub(crate) method: Option<Method>,
    /// The request target, when the request line parsed and the target is a valid URI.
    pub(crate) target: Option<Uri>,
}

// === impl Rejection ===

impl Rejection {
    /// A rejection for `violation`, keeping what can be kept of `line` for the log.
    pub(crate) fn new(violation: Violation, line: Option<RequestLine<'_>>) -> Self {
        let method = line.and_then(|l| Method::from_bytes(l.method.as_bytes()).ok());
        let target = line.and_then(|l| Uri::try_from(l.target).ok());
        Self {
            violation,
            method,
            target,
        }
    }
}

/// The per-connection slot a rejection is handed over in: filled at most once, by the guard,
/// read by the connection's service. Made once per connection; reading it is one atomic load.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rejections(Arc<OnceLock<Rejection>>);

// === impl Rejections ===

impl Rejections {
    /// Records the connection's rejection (the first one stays).
    pub(crate) fn set(&self, rejection: Rejection) {
        let _ = self.0.set(rejection);
    }

    /// The connection's rejection, once the guard has handed hyper the synthetic request.
    #[inline]
    pub(crate) fn get(&self) -> Option<&Rejection> {
        self.0.get()
    }
}
