//! Small synthetic responses: error pages and configured bodies.

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use crate::request_id::X_REQUEST_ID;
use crate::{Body, Error};

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

/// The response a client receives for `error`: its status, a one-line plain-text body naming
/// the problem and the request id, and the `x-request-id` header.
///
/// Bad requests also carry `connection: close`: after a malformed request nothing else on the
/// connection can be trusted. So do request timeouts: the rest of the stalled body is unread.
pub fn error(error: &Error, request_id: &HeaderValue) -> Response<Body> {
    let status = error.status();
    let body = format!(
        "{} {}: {} (request id {})\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        error.message(),
        String::from_utf8_lossy(request_id.as_bytes()),
    );
    let mut response = fixed(status, TEXT_PLAIN.clone(), body.into());
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if status == StatusCode::BAD_REQUEST || error.kind() == crate::ErrorKind::RequestTimeout {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
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
}
