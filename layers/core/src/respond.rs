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

/// The response a client receives for `error`: its status, a one-line plain-text body naming
/// the problem and the request id, and the `x-request-id` header.
///
/// Bad requests also carry `connection: close`: after a malformed request nothing else on the
/// connection can be trusted. So do request timeouts: the rest of the stalled body is unread.
pub fn error(error: &Error, request_id: &HeaderValue) -> Response<Body> {
    error_as(error, request_id, ErrorFormat::Page)
}

/// The response for `error` in `format`: [`error`]'s page, or for gRPC HTTP 200 with the
/// `grpc-status` its status maps to and its message as `grpc-message` (see [`crate::grpc`]).
/// Either carries `x-request-id`, and `connection: close` where [`error`] says.
pub fn error_as(error: &Error, request_id: &HeaderValue, format: ErrorFormat) -> Response<Body> {
    let status = error.status();
    let mut response = match format {
        ErrorFormat::Page => page(error, request_id),
        ErrorFormat::Grpc => grpc::trailers_only(status, error.message(), request_id),
    };
    if status == StatusCode::BAD_REQUEST || error.kind() == crate::ErrorKind::RequestTimeout {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The plain-text error page for `error`.
fn page(error: &Error, request_id: &HeaderValue) -> Response<Body> {
    let status = error.status();
    let body = format!(
        "{} {}: {} (request id {})\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        error.message(),
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
        let response = error(&err, &HeaderValue::from_static("rid-1"));
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[&X_REQUEST_ID], "rid-1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"504 Gateway Timeout: upstream timed out (request id rid-1)\n"
        );
    }

    #[tokio::test]
    async fn grpc_errors_are_headers_only_grpc_statuses() {
        let err = Error::new(ErrorKind::UpstreamTimeout, "upstream timed out");
        let response = error_as(&err, &HeaderValue::from_static("rid-2"), ErrorFormat::Grpc);
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
        let response = error_as(&bad, &HeaderValue::from_static("rid-3"), ErrorFormat::Grpc);
        assert_eq!(response.headers()[&grpc::GRPC_STATUS], "13");
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
