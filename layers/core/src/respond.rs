//! Small synthetic responses: error pages and configured bodies.

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::request_id::X_REQUEST_ID;
use crate::{Body, Error, grpc};

/// `text/plain; charset=utf-8`.
pub static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// A response with `status`, a `content-type` and a fixed body.
pub fn fixed(status: StatusCode, content_type: HeaderValue, body: bytes::Bytes) -> Response<Body> {
    let len = HeaderValue::from(body.len());
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, len);
    response
}

/// How Snakeway answers its own failures for a request: decided once per request, from the
/// request's headers as the client sent them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorFormat {
    /// An HTTP status and a plain-text page (see [`error`]).
    #[default]
    Page,
    /// A headers-only gRPC answer with `grpc-status` (see [`crate::grpc`]), for a request whose
    /// `content-type` is gRPC.
    Grpc,
}

// === impl ErrorFormat ===

impl ErrorFormat {
    /// The format for a request with these headers.
    #[inline]
    pub fn of(headers: &HeaderMap) -> Self {
        if grpc::is_grpc(headers) {
            Self::Grpc
        } else {
            Self::Page
        }
    }
}

/// How much of a failure its client is told.
///
/// Whatever the choice, the whole story (upstream address, device name, cause chain) goes to
/// the server log and to `on_error` devices (the access log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorDetail {
    /// The status, a short reason for the kind of failure ([`ErrorKind::reason`]) and the
    /// request id; nothing about upstreams, devices or causes. For production.
    ///
    /// [`ErrorKind::reason`]: crate::ErrorKind::reason
    #[default]
    Minimal,
    /// The error's full message, naming services, upstreams and devices. For development.
    Full,
}

// === impl ErrorDetail ===

impl ErrorDetail {
    /// What the client is told about `error` at this level of detail.
    #[inline]
    pub fn message(self, error: &Error) -> &str {
        match self {
            Self::Minimal => error.reason(),
            Self::Full => error.message(),
        }
    }
}

/// The response a client receives for `error`: its status, a one-line plain-text body naming
/// the problem (at `detail`) and the request id, and the `x-request-id` header.
///
/// Bad requests also carry `connection: close`: after a malformed request nothing else on the
/// connection can be trusted. So do request timeouts: the rest of the stalled body is unread.
pub fn error(error: &Error, request_id: &HeaderValue, detail: ErrorDetail) -> Response<Body> {
    error_as(error, request_id, ErrorFormat::Page, detail)
}

/// The response for `error` in `format`: [`error`]'s page, or for gRPC HTTP 200 with the
/// `grpc-status` its status maps to and its message (at `detail`) as `grpc-message` (see
/// [`crate::grpc`]). Either carries `x-request-id`, and `connection: close` where [`error`]
/// says.
pub fn error_as(
    error: &Error,
    request_id: &HeaderValue,
    format: ErrorFormat,
    detail: ErrorDetail,
) -> Response<Body> {
    let status = error.status();
    let message = detail.message(error);
    let mut response = match format {
        ErrorFormat::Page => page(status, message, request_id),
        ErrorFormat::Grpc => grpc::trailers_only(status, message, request_id),
    };
    if status == StatusCode::BAD_REQUEST || error.kind() == crate::ErrorKind::RequestTimeout {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The plain-text error page: `504 Gateway Timeout: <message> (request id <id>)`.
fn page(status: StatusCode, message: &str, request_id: &HeaderValue) -> Response<Body> {
    let body = format!(
        "{} {}: {} (request id {})\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        message,
        String::from_utf8_lossy(request_id.as_bytes()),
    );
    let mut response = fixed(status, TEXT_PLAIN.clone(), body.into());
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_pages_name_the_request_id() {
        let err = Error::new(ErrorKind::UpstreamTimeout, "upstream timed out");
        let response = error(&err, &HeaderValue::from_static("rid-1"), ErrorDetail::Full);
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[&X_REQUEST_ID], "rid-1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"504 Gateway Timeout: upstream timed out (request id rid-1)\n"
        );
    }

    #[tokio::test]
    async fn minimal_pages_name_no_upstream_and_no_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(
            ErrorKind::UpstreamUnavailable,
            "service \"api\": upstream 127.0.0.1:3001 refused the connection",
        )
        .with_source(io);
        let response = error(
            &err,
            &HeaderValue::from_static("rid-9"),
            ErrorDetail::Minimal,
        );
        assert_eq!(response.status(), 502);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"502 Bad Gateway: the upstream failed (request id rid-9)\n"
        );

        let framing = Error::new(ErrorKind::BadRequest, "framing").with_reason("duplicate host");
        let response = error(
            &framing,
            &HeaderValue::from_static("r"),
            ErrorDetail::Minimal,
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"400 Bad Request: duplicate host (request id r)\n"
        );
    }

    #[tokio::test]
    async fn grpc_errors_are_headers_only_grpc_statuses() {
        let err = Error::new(ErrorKind::UpstreamTimeout, "upstream timed out");
        let response = error_as(
            &err,
            &HeaderValue::from_static("rid-2"),
            ErrorFormat::Grpc,
            ErrorDetail::Full,
        );
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[&grpc::GRPC_STATUS], "4");
        assert_eq!(headers[&grpc::GRPC_MESSAGE], "upstream timed out");
        assert_eq!(headers[&X_REQUEST_ID], "rid-2");
        assert!(headers.get(CONNECTION).is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());

        let bad = Error::new(ErrorKind::BadRequest, "invalid host");
        let response = error_as(
            &bad,
            &HeaderValue::from_static("rid-3"),
            ErrorFormat::Grpc,
            ErrorDetail::Minimal,
        );
        assert_eq!(response.headers()[&grpc::GRPC_STATUS], "13");
        assert_eq!(
            response.headers()[&grpc::GRPC_MESSAGE],
            "the request is malformed"
        );
        assert_eq!(response.headers()[CONNECTION], "close");
    }

    #[test]
    fn error_format_follows_the_content_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(ErrorFormat::of(&headers), ErrorFormat::Page);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(ErrorFormat::of(&headers), ErrorFormat::Grpc);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert_eq!(ErrorFormat::of(&headers), ErrorFormat::Page);
    }
}
