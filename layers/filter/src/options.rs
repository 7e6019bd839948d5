//! [`FilterOptions`]: the rules of a request filter, as typed values.

use http::{HeaderName, Method, StatusCode};

/// The rules of a [`RequestFilter`](crate::RequestFilter).
///
/// The default allows everything: every list empty, no limit, no status override. Deny rules
/// win over allow rules. Header names are [`HeaderName`]s, hence already lowercase; methods are
/// case-sensitive, as in HTTP (`get` is not `GET`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterOptions {
    /// When non-empty, only these methods pass; any other is answered 405.
    pub allow_methods: Vec<Method>,
    /// These methods are answered 405, even when they are also in `allow_methods`.
    pub deny_methods: Vec<Method>,
    /// Each of these headers must be present, or the request is answered 400. A required header
    /// is implicitly allowed by `allow_headers`.
    pub required_headers: Vec<HeaderName>,
    /// A request carrying any of these headers is answered 403, even when the header is also
    /// allowed (explicitly, implicitly or as a required header).
    pub deny_headers: Vec<HeaderName>,
    /// When non-empty, a request carrying a header that is not in this list (nor implicitly
    /// allowed, see [`IMPLICITLY_ALLOWED`](crate::IMPLICITLY_ALLOWED)) is answered 403.
    pub allow_headers: Vec<HeaderName>,
    /// The most header bytes a request may carry, counted as `name + value + 4` for each header
    /// line (the HTTP/1.1 wire size of `name: value\r\n`, request line excluded; HTTP/2
    /// requests are counted the same way, so the limit means the same on both); more is
    /// answered 431. The `x-request-id` the pipeline adds when the client sent none counts too.
    pub max_header_bytes: Option<usize>,
    /// The largest request body, in bytes; more is answered 413: at once when `content-length`
    /// announces it, otherwise as soon as the streamed body goes past it.
    pub max_body_bytes: Option<u64>,
    /// When set, every denial above is answered with this status instead (the body still names
    /// the reason; `Allow` is sent only when this status is 405).
    pub deny_status: Option<StatusCode>,
}
