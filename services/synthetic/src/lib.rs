//! Synthetic responses: routes that answer with a configured status, headers and body, without
//! an upstream (`respond = { status = 200, body = "ok" }`), and redirects built from the request
//! (`respond = { status = 308, headers = { location = "https://{host}{path}{query}" } }`).
//!
//! Header values and the body may hold the placeholders `{scheme}`, `{host}`, `{path}` and
//! `{query}` (see [`Vars`]). Everything is parsed and checked when the response is built; a
//! response without placeholders is built once and shared, never copied, per request.

mod template;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use snakeway_core::Body;

use crate::template::Template;
pub use crate::template::{UnknownPlaceholder, Vars};

/// A service that answers every request with the same configured response, its placeholders
/// filled in from the request. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Synthetic {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    status: StatusCode,
    content_type: HeaderValue,
    body: Part<Bytes>,
    headers: Vec<(HeaderName, Part<HeaderValue>)>,
}

/// A body or header value: fixed, or a template expanded per request.
#[derive(Clone, Debug)]
enum Part<T> {
    Fixed(T),
    Template(Template),
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
    /// A header name is not a valid field name.
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    /// A header value without placeholders is not a valid field value.
    #[error("header {name}: {value:?} is not a valid header value")]
    HeaderValue {
        /// The header's name.
        name: String,
        /// The value as configured.
        value: String,
    },
    /// A header value names an unknown placeholder.
    #[error("header {name}: {source}")]
    HeaderPlaceholder {
        /// The header's name.
        name: String,
        /// The unknown placeholder.
        source: UnknownPlaceholder,
    },
    /// The body names an unknown placeholder.
    #[error("body: {0}")]
    BodyPlaceholder(UnknownPlaceholder),
}

/// A header template expanded, for a request, to bytes that are not a valid field value (a
/// control character from the request's host or path). The request is refused; nothing is
/// sent with the bad bytes.
#[derive(Debug, thiserror::Error)]
#[error("header {name}: the value expanded from the request is not a valid header value")]
pub struct InvalidExpansion {
    /// The header whose value could not be made.
    pub name: HeaderName,
}

// === impl Synthetic ===

impl Synthetic {
    /// A response with `status`, `content_type` and `body` (a template).
    pub fn new(status: u16, content_type: &str, body: &str) -> Result<Self, SyntheticError> {
        let status = StatusCode::from_u16(status).map_err(|_| SyntheticError::Status(status))?;
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|_| SyntheticError::ContentType(content_type.to_owned()))?;
        let template = Template::parse(body).map_err(SyntheticError::BodyPlaceholder)?;
        let body = if template.is_literal() {
            Part::Fixed(Bytes::copy_from_slice(body.as_bytes()))
        } else {
            Part::Template(template)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                status,
                content_type,
                body,
                headers: Vec::new(),
            }),
        })
    }

    /// Adds the header `name: value` (a template) to the response.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self, SyntheticError> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SyntheticError::HeaderName(name.to_owned()))?;
        let template =
            Template::parse(value).map_err(|source| SyntheticError::HeaderPlaceholder {
                name: name.to_owned(),
                source,
            })?;
        let part = if template.is_literal() {
            Part::Fixed(
                HeaderValue::from_str(value).map_err(|_| SyntheticError::HeaderValue {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })?,
            )
        } else {
            Part::Template(template)
        };
        Arc::make_mut(&mut self.inner).headers.push((header, part));
        Ok(self)
    }

    /// The configured response for a request described by `vars`. A fixed body is shared,
    /// never copied.
    pub fn respond(&self, vars: &Vars<'_>) -> Result<Response<Body>, InvalidExpansion> {
        let inner = &*self.inner;
        let body = match &inner.body {
            Part::Fixed(bytes) => bytes.clone(),
            Part::Template(template) => Bytes::from(template.expand(vars)),
        };
        let mut response =
            snakeway_core::respond::fixed(inner.status, inner.content_type.clone(), body);
        let headers = response.headers_mut();
        for (name, part) in &inner.headers {
            let value = match part {
                Part::Fixed(value) => value.clone(),
                Part::Template(template) => {
                    HeaderValue::from_maybe_shared(Bytes::from(template.expand(vars)))
                        .map_err(|_| InvalidExpansion { name: name.clone() })?
                }
            };
            headers.append(name.clone(), value);
        }
        Ok(response)
    }
}

/// The [`Vars`] of `req`, reached over `scheme`: the host is the target's authority (an
/// absolute-form target or HTTP/2's `:authority`) or else the `host` field, without its port;
/// empty when there is neither (or it is not text).
pub fn vars<'a, B>(req: &'a Request<B>, scheme: &'a str) -> Vars<'a> {
    let host = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    Vars {
        scheme,
        host: without_port(host),
        path: req.uri().path(),
        query: req.uri().query(),
    }
}

/// `host[:port]` without the port; an IPv6 literal keeps its brackets (`[::1]:8080` →
/// `[::1]`), so it can be written into a URL again.
fn without_port(authority: &str) -> &str {
    // Userinfo is never valid in a request's authority; drop it rather than echo it.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Answers with the configured response; a request whose host or path cannot be written into
/// a header the response needs gets a plain 400 instead. The scheme is the target's, else
/// `http`.
impl<B> tower::Service<Request<B>> for Synthetic {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let scheme = req.uri().scheme_str().unwrap_or("http");
        let response = self.respond(&vars(&req, scheme)).unwrap_or_else(|_| {
            snakeway_core::respond::fixed(
                StatusCode::BAD_REQUEST,
                snakeway_core::respond::TEXT_PLAIN.clone(),
                Bytes::from_static(b"400 Bad Request\n"),
            )
        });
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_LENGTH;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn answers_with_the_configured_response() {
        let svc = Synthetic::new(418, "text/plain", "short and stout").unwrap();
        let response = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), 418);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.headers()["content-length"], "15");
    }

    #[tokio::test]
    async fn redirects_fill_in_the_request() {
        let svc = Synthetic::new(308, "text/plain", "moved to {path}")
            .unwrap()
            .with_header("location", "https://{host}:8443{path}{query}")
            .unwrap()
            .with_header("x-fixed", "yes")
            .unwrap();
        let req = Request::get("/a/b?q=1")
            .header(HOST, "example.com:8080")
            .body(())
            .unwrap();
        let response = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), 308);
        assert_eq!(
            response.headers()["location"],
            "https://example.com:8443/a/b?q=1"
        );
        assert_eq!(response.headers()["x-fixed"], "yes");
        assert_eq!(response.headers()[CONTENT_LENGTH], "13");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"moved to /a/b");

        let req = Request::get("http://[::1]:80/x").body(()).unwrap();
        let response = svc.oneshot(req).await.unwrap();
        assert_eq!(response.headers()["location"], "https://[::1]:8443/x");
    }

    #[test]
    fn a_control_byte_from_the_request_is_refused_not_sent() {
        let svc = Synthetic::new(308, "text/plain", "")
            .unwrap()
            .with_header("location", "https://{host}/")
            .unwrap();
        let vars = Vars {
            scheme: "http",
            host: "evil\r\nset-cookie: x=1",
            path: "/",
            query: None,
        };
        let err = svc.respond(&vars).unwrap_err();
        assert_eq!(err.name, "location");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Synthetic::new(1000, "text/plain", "").is_err());
        assert!(Synthetic::new(200, "bad\nvalue", "").is_err());
        assert!(matches!(
            Synthetic::new(200, "text/plain", "{nope}"),
            Err(SyntheticError::BodyPlaceholder(_))
        ));
        let ok = || Synthetic::new(200, "text/plain", "").unwrap();
        assert!(matches!(
            ok().with_header("bad name", "x"),
            Err(SyntheticError::HeaderName(_))
        ));
        assert!(matches!(
            ok().with_header("x", "a\nb"),
            Err(SyntheticError::HeaderValue { .. })
        ));
        let err = ok().with_header("location", "/{hots}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "header location: unknown placeholder {hots} (expected one of {scheme}, {host}, \
             {path}, {query})"
        );
    }

    #[test]
    fn ports_come_off_the_host() {
        assert_eq!(without_port("example.com:8080"), "example.com");
        assert_eq!(without_port("example.com"), "example.com");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
        assert_eq!(without_port("user@h:1"), "h");
    }
}
