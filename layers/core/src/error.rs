//! The error type of the Snakeway stack, and helpers for walking error chains.

use std::fmt;

use http::StatusCode;

/// A type-erased error, as used at generic boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, which decides the status code the client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or ambiguous (framing, path): 400.
    BadRequest,
    /// The client stalled while sending its request body: 408. Never the upstream's fault.
    RequestTimeout,
    /// No route matches the request: 404.
    NoRoute,
    /// The upstream refused or reset the connection, or sent something invalid: 502.
    UpstreamUnavailable,
    /// The upstream did not send response headers in time: 504.
    UpstreamTimeout,
    /// No upstream may take the request (all down, circuit open): 503.
    NoHealthyUpstream,
    /// A configured limit on concurrent work is reached (a route's `max_websockets`): 503.
    Overloaded,
    /// A device failed while handling the request: 500.
    Device,
    /// Anything else inside the proxy: 500.
    Internal,
}

// === impl ErrorKind ===

impl ErrorKind {
    /// The status code a client receives for this kind of failure.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoHealthyUpstream | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Device | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short reason for clients that names nothing internal (no upstream, device or cause):
    /// what [`ErrorDetail::Minimal`](crate::respond::ErrorDetail::Minimal) error pages say.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "the request is malformed",
            Self::RequestTimeout => "the request body was not sent in time",
            Self::NoRoute => "no route matches the request",
            Self::UpstreamUnavailable => "the upstream failed",
            Self::UpstreamTimeout => "the upstream did not respond in time",
            Self::NoHealthyUpstream => "no upstream is available",
            Self::Overloaded => "a limit on concurrent work is reached",
            Self::Device => "the request could not be processed",
            Self::Internal => "internal error",
        }
    }

    /// A short, stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::RequestTimeout => "request_timeout",
            Self::NoRoute => "no_route",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::Overloaded => "overloaded",
            Self::Device => "device",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error raised while handling a request: a [`ErrorKind`], a message for the client and the
/// operator, and the underlying cause, if any.
pub struct Error {
    kind: ErrorKind,
    status: Option<StatusCode>,
    ctx: Option<Box<crate::RequestCtx>>,
    message: std::borrow::Cow<'static, str>,
    reason: Option<&'static str>,
    source: Option<BoxError>,
}

// === impl Error ===

impl Error {
    /// An error of `kind` with a message for the operator (the log, and clients only with
    /// [`ErrorDetail::Full`](crate::respond::ErrorDetail::Full)).
    pub fn new(kind: ErrorKind, message: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            kind,
            status: None,
            ctx: None,
            message: message.into(),
            reason: None,
            source: None,
        }
    }

    /// Sets the short reason clients are told instead of the kind's (see [`Error::reason`]):
    /// it must name nothing internal (e.g. which framing rule a request broke).
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Attaches the underlying cause (logged, never shown to clients).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Answers the client with `status` instead of the kind's status (devices with their own
    /// failure status).
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Carries the request context of the failed request back to the pipeline, so
    /// `on_error` and `on_response` still see what earlier devices stored.
    #[must_use]
    pub fn with_ctx(mut self, ctx: crate::RequestCtx) -> Self {
        self.ctx = Some(Box::new(ctx));
        self
    }

    /// Takes the request context carried by [`Error::with_ctx`].
    pub fn take_ctx(&mut self) -> Option<crate::RequestCtx> {
        self.ctx.take().map(|ctx| *ctx)
    }

    /// What went wrong.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operator's message: it may name services, upstreams and devices.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The short, client-safe reason: the one given by [`Error::with_reason`], else the
    /// kind's [`ErrorKind::reason`].
    pub fn reason(&self) -> &'static str {
        match self.reason {
            Some(reason) => reason,
            None => self.kind.reason(),
        }
    }

    /// The status code the client receives.
    pub const fn status(&self) -> StatusCode {
        match self.status {
            Some(status) => status,
            None => self.kind.status(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("message", &self.message)
            .field("reason", &self.reason)
            .field("source", &self.source)
            .finish()
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        let mut source = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Whether `error` or any error in its `source()` chain is an `E`.
pub fn is_caused_by<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    cause_ref::<E>(error).is_some()
}

/// The first `E` in the `source()` chain of `error` (including `error` itself).
pub fn cause_ref<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses() {
        assert_eq!(ErrorKind::UpstreamUnavailable.status(), 502);
        assert_eq!(ErrorKind::UpstreamTimeout.status(), 504);
        assert_eq!(ErrorKind::NoHealthyUpstream.status(), 503);
        assert_eq!(ErrorKind::Overloaded.status(), 503);
        assert_eq!(ErrorKind::NoRoute.status(), 404);
        assert_eq!(ErrorKind::RequestTimeout.status(), 408);
    }

    #[test]
    fn cause_chain_is_walked() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::UpstreamUnavailable, "upstream refused").with_source(io);
        assert!(is_caused_by::<std::io::Error>(&err));
        assert_eq!(
            cause_ref::<std::io::Error>(&err).unwrap().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        assert_eq!(err.to_string(), "upstream refused: refused");
    }
}
