//! [`RequestFilter`]: the device.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, request};
use snakeway_core::request_id::X_REQUEST_ID;
use snakeway_core::respond::{self, TEXT_PLAIN};
use snakeway_core::{Body, BodyCtx, Device, DeviceResult, Flow, Phase, Phases, RequestCtx};

use crate::FilterOptions;
use crate::layer::RequestFilterLayer;
use crate::sets::{MethodRule, NameSet};

/// Headers that an `allow_headers` list lets through without naming them (a `deny_headers`
/// entry still refuses them).
///
/// They belong to the connection and its framing, not to the application: `host` (mandatory in
/// HTTP/1.1), `content-length`, `transfer-encoding`, `trailer`, `connection`, `keep-alive` and
/// `te` (HTTP/2 allows `te: trailers`, which gRPC sends); and `x-request-id`, which the pipeline
/// itself adds to every request before any device runs. Pseudo-headers (`:authority`, …) never
/// appear as headers. `upgrade` is deliberately absent: listing it is how an allow list opts
/// into WebSocket upgrades.
pub static IMPLICITLY_ALLOWED: [HeaderName; 8] = [
    HOST,
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
    TRAILER,
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    TE,
    HeaderName::from_static("x-request-id"),
];

/// The bytes a header line counts for [`FilterOptions::max_header_bytes`] beyond its name and
/// value: `": "` and `"\r\n"`.
pub const HEADER_LINE_OVERHEAD: usize = 4;

/// Echoed names (a method, a header name) are cut to this many bytes in response bodies.
const ECHO_MAX: usize = 64;

/// A device that refuses requests by method, headers and size before they reach the upstream.
///
/// Its rules come from [`FilterOptions`] and are compiled once, in [`RequestFilter::new`], into
/// bitsets and name sets: checking a request that passes allocates nothing. The checks run in
/// this order, and the first that refuses answers:
///
/// 1. the method (`deny_methods`, then `allow_methods`) → 405 with `Allow`;
/// 2. the size of the headers (`max_header_bytes`) → 431;
/// 3. a denied header (`deny_headers`) → 403, then a header not in `allow_headers` → 403;
/// 4. a missing required header (`required_headers`) → 400;
/// 5. an announced body too large (`content-length` over `max_body_bytes`) → 413.
///
/// Without a `content-length` (or within it), the body hook counts the body as it streams and
/// answers 413 as soon as it goes past `max_body_bytes`; the body then stops, so the upstream
/// never receives more than the limit.
///
/// Every refusal is a short `text/plain` body naming the reason, e.g.
/// `405 Method Not Allowed: TRACE is not allowed`, with the request's `x-request-id`.
/// `deny_status` replaces the status of every refusal. A 405 (and only a 405, whatever rule
/// produced it) carries `Allow`, listing the methods that pass: the allow list minus the
/// denied methods, or, without an allow list, the standard methods (RFC 9110 and PATCH) that
/// are not denied. RFC 9110 requires `Allow` on a 405, and an empty `Allow` is its way of
/// saying no method is allowed.
#[derive(Clone, Debug)]
pub struct RequestFilter {
    methods: MethodRule,
    /// The `Allow` header of a 405.
    allow: HeaderValue,
    required: Box<[HeaderName]>,
    deny_headers: NameSet,
    /// `None` when any header may appear.
    allow_headers: Option<NameSet>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    deny_status: Option<StatusCode>,
    /// Whether `on_request` must walk the headers (a size limit or a name rule is set).
    walk_headers: bool,
    phases: Phases,
}

// === impl RequestFilter ===

impl RequestFilter {
    /// The device's name.
    pub const NAME: &'static str = "request_filter";

    /// A filter applying `options`.
    pub fn new(options: FilterOptions) -> Self {
        let FilterOptions {
            allow_methods,
            deny_methods,
            required_headers,
            deny_headers,
            allow_headers,
            max_header_bytes,
            max_body_bytes,
            deny_status,
        } = options;

        let methods = MethodRule::new(&allow_methods, &deny_methods);
        let allow = methods
            .allowed(&allow_methods)
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        // Methods are tokens, always valid in a header value.
        let allow = HeaderValue::try_from(allow).unwrap_or(HeaderValue::from_static(""));

        let mut required: Vec<HeaderName> = Vec::with_capacity(required_headers.len());
        for name in &required_headers {
            if !required.contains(name) {
                required.push(name.clone());
            }
        }
        let allow_headers = (!allow_headers.is_empty()).then(|| {
            NameSet::new(
                allow_headers
                    .into_iter()
                    .chain(required_headers)
                    .chain(IMPLICITLY_ALLOWED.iter().cloned()),
            )
        });
        let deny_headers = NameSet::new(deny_headers);
        let walk_headers =
            max_header_bytes.is_some() || !deny_headers.is_empty() || allow_headers.is_some();
        // A filter without rules can refuse nothing: it takes part in no phase, so the
        // pipeline never calls it.
        let checks_head = !(allow_methods.is_empty() && deny_methods.is_empty())
            || walk_headers
            || !required.is_empty()
            || max_body_bytes.is_some();
        let phases = match (checks_head, max_body_bytes) {
            (false, _) => Phases::NONE,
            (true, None) => Phases::only(Phase::Request),
            (true, Some(_)) => Phases::only(Phase::Request).with(Phase::RequestBody),
        };
        Self {
            methods,
            allow,
            required: required.into_boxed_slice(),
            deny_headers,
            allow_headers,
            max_header_bytes,
            max_body_bytes,
            deny_status,
            walk_headers,
            phases,
        }
    }

    /// A standalone Tower layer running this filter over `options`; see [`RequestFilterLayer`].
    pub fn layer(options: FilterOptions) -> RequestFilterLayer {
        RequestFilterLayer::new(options)
    }

    /// The first rule `req` breaks, if any.
    #[inline]
    fn check<'a>(&'a self, req: &'a request::Parts) -> Option<Denial<'a>> {
        if !self.methods.permits(&req.method) {
            return Some(Denial::Method(&req.method));
        }
        let headers = &req.headers;
        if self.walk_headers
            && let Some(denial) = self.check_header_lines(headers)
        {
            return Some(denial);
        }
        for name in self.required.iter() {
            if !headers.contains_key(name) {
                return Some(Denial::MissingHeader(name));
            }
        }
        if let Some(max) = self.max_body_bytes
            && let Some(length) = headers.get(CONTENT_LENGTH)
            && parse_content_length(length.as_bytes()).is_some_and(|n| n > max)
        {
            return Some(Denial::BodyTooLarge);
        }
        None
    }

    /// One pass over the header lines: their size, denied names, names not allowed.
    #[inline]
    fn check_header_lines<'r>(&self, headers: &'r HeaderMap) -> Option<Denial<'r>> {
        let mut bytes = 0usize;
        let mut denied = None;
        let mut unlisted = None;
        for (name, value) in headers {
            bytes += name.as_str().len() + value.len() + HEADER_LINE_OVERHEAD;
            if denied.is_some() {
                continue;
            }
            if self.deny_headers.contains(name) {
                denied = Some(name);
            } else if unlisted.is_none()
                && let Some(allowed) = &self.allow_headers
                && !allowed.contains(name)
            {
                unlisted = Some(name);
            }
        }
        if self.max_header_bytes.is_some_and(|max| bytes > max) {
            return Some(Denial::HeaderBytes);
        }
        denied.or(unlisted).map(Denial::Header)
    }

    /// The response refusing a request for `denial`.
    fn refuse(&self, denial: &Denial<'_>, request_id: &HeaderValue) -> Response<Body> {
        let status = self.deny_status.unwrap_or(denial.status());
        let mut text = String::with_capacity(96);
        let _ = write!(text, "{}", status.as_u16());
        if let Some(reason) = status.canonical_reason() {
            text.push(' ');
            text.push_str(reason);
        }
        text.push_str(": ");
        denial.write_reason(&mut text);
        text.push('\n');
        let mut response = respond::fixed(status, TEXT_PLAIN.clone(), Bytes::from(text));
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, self.allow.clone());
        }
        response
    }
}

impl Device for RequestFilter {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// `Request`, plus `RequestBody` only when `max_body_bytes` is set.
    fn phases(&self) -> Phases {
        self.phases
    }

    /// Checks the method and the headers (see [`RequestFilter`] for the order) and answers the
    /// first rule broken; otherwise continues, without touching the request.
    fn on_request(&self, ctx: &mut RequestCtx, req: &mut request::Parts) -> DeviceResult {
        match self.check(req) {
            None => Ok(Flow::Continue),
            Some(denial) => Ok(Flow::respond(self.refuse(&denial, ctx.request_id()))),
        }
    }

    /// Answers 413 as soon as the body seen so far goes past `max_body_bytes`, which stops the
    /// body before the chunk that crossed the limit is passed on.
    fn on_request_body(&self, ctx: &BodyCtx, chunk: &Bytes, _end_of_stream: bool) -> DeviceResult {
        match self.max_body_bytes {
            Some(max) if ctx.bytes_before.saturating_add(chunk.len() as u64) > max => Ok(
                Flow::respond(self.refuse(&Denial::BodyTooLarge, &ctx.info.request_id)),
            ),
            _ => Ok(Flow::Continue),
        }
    }
}

/// Why a request is refused.
#[derive(Debug)]
enum Denial<'r> {
    Method(&'r Method),
    HeaderBytes,
    /// Denied, or not in the allow list: the client is told the same either way.
    Header(&'r HeaderName),
    MissingHeader(&'r HeaderName),
    BodyTooLarge,
}

// === impl Denial ===

impl Denial<'_> {
    /// The status when no `deny_status` replaces it.
    fn status(&self) -> StatusCode {
        match self {
            Self::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeaderBytes => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Header(_) => StatusCode::FORBIDDEN,
            Self::MissingHeader(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn write_reason(&self, out: &mut String) {
        match self {
            Self::Method(method) => {
                out.push_str(echo(method.as_str()));
                out.push_str(" is not allowed");
            }
            Self::HeaderBytes => out.push_str("request headers are too large"),
            Self::Header(name) => {
                out.push_str("header ");
                out.push_str(echo(name.as_str()));
                out.push_str(" is not allowed");
            }
            Self::MissingHeader(name) => {
                out.push_str("missing required header ");
                out.push_str(name.as_str());
            }
            Self::BodyTooLarge => out.push_str("request body is too large"),
        }
    }
}

/// At most [`ECHO_MAX`] bytes of `s`, cut on a character boundary.
fn echo(s: &str) -> &str {
    let mut end = s.len().min(ECHO_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A `content-length` value: ASCII digits only, no overflow.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_parsing() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1048576"), Some(1_048_576));
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"12a"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999999"), None);
    }

    #[test]
    fn echoed_names_are_capped() {
        assert_eq!(echo("TRACE"), "TRACE");
        assert_eq!(echo(&"X".repeat(100)).len(), ECHO_MAX);
    }

    #[test]
    fn phases_follow_the_rules() {
        let open = RequestFilter::new(FilterOptions::default());
        assert_eq!(open.name(), "request_filter");
        assert_eq!(open.phases(), Phases::NONE, "no rule: no phase");
        for rules in [
            FilterOptions {
                allow_methods: vec![Method::GET],
                ..FilterOptions::default()
            },
            FilterOptions {
                deny_methods: vec![Method::TRACE],
                ..FilterOptions::default()
            },
            FilterOptions {
                required_headers: vec![HOST],
                ..FilterOptions::default()
            },
            FilterOptions {
                deny_headers: vec![HOST],
                ..FilterOptions::default()
            },
            FilterOptions {
                allow_headers: vec![HOST],
                ..FilterOptions::default()
            },
            FilterOptions {
                max_header_bytes: Some(100),
                ..FilterOptions::default()
            },
        ] {
            let filter = RequestFilter::new(rules);
            assert_eq!(filter.phases(), Phases::only(Phase::Request), "{filter:?}");
        }
        let limited = RequestFilter::new(FilterOptions {
            max_body_bytes: Some(10),
            ..FilterOptions::default()
        });
        assert_eq!(
            limited.phases(),
            Phases::only(Phase::Request).with(Phase::RequestBody)
        );
    }
}
