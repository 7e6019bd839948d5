//! Synthetic responses: routes that answer with a configured status and body, without an
//! upstream (`respond = { status = 200, body = "ok" }`).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use snakeway_core::Body;

/// A service that answers every request with the same configured response.
#[derive(Clone, Debug)]
pub struct Synthetic {
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
}

/// Why a synthetic response could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// The status is not a valid HTTP status code.
    #[error("invalid status code {0}")]
    Status(u16),
    /// The content type is not a valid header value.
    #[error("invalid content type {0:?}")]
    ContentType(String),
}

// === impl Synthetic ===

impl Synthetic {
    /// A response with `status`, `content_type` and `body`.
    pub fn new(
        status: u16,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Self, SyntheticError> {
        let status = StatusCode::from_u16(status).map_err(|_| SyntheticError::Status(status))?;
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|_| SyntheticError::ContentType(content_type.to_owned()))?;
        Ok(Self {
            status,
            content_type,
            body: body.into(),
        })
    }

    /// The configured response. The body is shared, never copied.
    pub fn respond(&self) -> Response<Body> {
        snakeway_core::respond::fixed(self.status, self.content_type.clone(), self.body.clone())
    }
}

impl<B> tower::Service<Request<B>> for Synthetic {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(self.respond()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn answers_with_the_configured_response() {
        let svc = Synthetic::new(418, "text/plain", "short and stout").unwrap();
        let response = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), 418);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.headers()["content-length"], "15");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Synthetic::new(1000, "text/plain", "").is_err());
        assert!(Synthetic::new(200, "bad\nvalue", "").is_err());
    }
}
