//! Every rule and its precedence, driven through a real Tower stack: the pipeline's
//! `PipelineLayer` and `ProxyHooksLayer` around an upstream that reads the body and counts what
//! it received.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use snakeway_core::pipeline::Pipeline;
use snakeway_core::{Body, Device, Error, ErrorKind};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use crate::{FilterOptions, RequestFilter, RequestFilterLayer};

/// What the upstream saw.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    complete: Arc<AtomicBool>,
}

impl Seen {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
    fn complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Reads the request body frame by frame; a stopped body fails the call, as the upstream
    /// client does.
    async fn upstream(self, req: Request<Body>) -> Result<Response<Body>, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::new(ErrorKind::BadRequest, e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                self.bytes.fetch_add(data.len(), Ordering::SeqCst);
            }
        }
        self.complete.store(true, Ordering::SeqCst);
        Ok(Response::new(Body::from("upstream")))
    }
}

/// The answer, read whole.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
}

impl Answer {
    async fn read(response: Response<Body>) -> Self {
        let (head, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Self {
            status: head.status,
            headers: head.headers,
            text: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn allow(&self) -> Option<&str> {
        self.headers.get(ALLOW).map(|v| v.to_str().unwrap())
    }
}

/// Sends `req` through `PipelineLayer` + `ProxyHooksLayer` (running the filter) around a
/// counting upstream.
async fn send(options: FilterOptions, req: Request<Body>) -> (Answer, Seen) {
    let seen = Seen::default();
    let pipeline = Pipeline::new(vec![Arc::new(RequestFilter::new(options))]);
    let upstream = {
        let seen = seen.clone();
        service_fn(move |req| seen.clone().upstream(req))
    };
    let stack = ServiceBuilder::new()
        .layer(pipeline.layer())
        .layer(pipeline.proxy_hooks())
        .service(upstream);
    let response = stack.oneshot(req).await.unwrap();
    (Answer::read(response).await, seen)
}

/// A request with `host: h` and `x-request-id: rid-1`.
fn request(method: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri("/x")
        .header(HOST, "h")
        .header("x-request-id", "rid-1")
}

fn empty(method: &str) -> Request<Body> {
    request(method).body(Body::empty()).unwrap()
}

/// A body of `chunks`, streamed one frame at a time, with no `content-length`.
fn streamed(chunks: &[&'static str]) -> Body {
    let frames: Vec<_> = chunks
        .iter()
        .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

fn names(names: &[&'static str]) -> Vec<HeaderName> {
    names.iter().map(|n| HeaderName::from_static(n)).collect()
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

#[tokio::test]
async fn the_default_allows_everything() {
    let req = request("TRACE")
        .header("x-original-url", "/admin")
        .header("x-anything", "x".repeat(10_000))
        .body(streamed(&["abc", "def"]))
        .unwrap();
    let (answer, seen) = send(FilterOptions::default(), req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text, "upstream");
    assert_eq!((seen.calls(), seen.bytes(), seen.complete()), (1, 6, true));
}

#[tokio::test]
async fn a_denied_method_is_405_with_allow_listing_the_standard_methods_left() {
    let options = FilterOptions {
        deny_methods: vec![Method::TRACE, Method::DELETE],
        ..FilterOptions::default()
    };
    let (answer, seen) = send(options.clone(), empty("TRACE")).await;
    assert_eq!(answer.status, 405);
    assert_eq!(
        answer.text,
        "405 Method Not Allowed: TRACE is not allowed\n"
    );
    assert_eq!(
        answer.allow(),
        Some("GET, HEAD, POST, PUT, CONNECT, OPTIONS, PATCH")
    );
    assert_eq!(answer.headers[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(
        answer.headers[CONTENT_LENGTH],
        answer.text.len().to_string()
    );
    assert_eq!(answer.headers["x-request-id"], "rid-1");
    assert_eq!(seen.calls(), 0);

    let (answer, seen) = send(options.clone(), empty("GET")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.allow(), None);
    assert_eq!(seen.calls(), 1);
    // Extension methods pass when there is no allow list.
    assert_eq!(send(options, empty("PURGE")).await.0.status, 200);
}

#[tokio::test]
async fn an_allow_list_refuses_every_other_method() {
    let options = FilterOptions {
        allow_methods: vec![Method::GET, Method::HEAD, method("PURGE")],
        ..FilterOptions::default()
    };
    for allowed in ["GET", "HEAD", "PURGE"] {
        let (answer, seen) = send(options.clone(), empty(allowed)).await;
        assert_eq!(answer.status, 200, "{allowed}");
        assert_eq!(seen.calls(), 1);
    }
    for refused in ["POST", "OPTIONS", "BAN", "get"] {
        let (answer, seen) = send(options.clone(), empty(refused)).await;
        assert_eq!(answer.status, 405, "{refused}");
        assert_eq!(answer.allow(), Some("GET, HEAD, PURGE"));
        assert_eq!(
            answer.text,
            format!("405 Method Not Allowed: {refused} is not allowed\n")
        );
        assert_eq!(seen.calls(), 0);
    }
}

#[tokio::test]
async fn deny_methods_win_over_allow_methods() {
    let options = FilterOptions {
        allow_methods: vec![Method::GET, Method::POST, method("PURGE")],
        deny_methods: vec![Method::POST, method("PURGE")],
        ..FilterOptions::default()
    };
    for refused in ["POST", "PURGE"] {
        let (answer, seen) = send(options.clone(), empty(refused)).await;
        assert_eq!(answer.status, 405, "{refused}");
        // Allow names only what really passes.
        assert_eq!(answer.allow(), Some("GET"));
        assert_eq!(seen.calls(), 0);
    }
    assert_eq!(send(options, empty("GET")).await.0.status, 200);
}

#[tokio::test]
async fn when_no_method_passes_allow_is_empty() {
    let options = FilterOptions {
        allow_methods: vec![Method::TRACE],
        deny_methods: vec![Method::TRACE],
        ..FilterOptions::default()
    };
    let (answer, _) = send(options, empty("GET")).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.allow(), Some(""));
}

#[tokio::test]
async fn a_missing_required_header_is_400() {
    let options = FilterOptions {
        required_headers: names(&["host", "x-api-key"]),
        ..FilterOptions::default()
    };
    let (answer, seen) = send(options.clone(), empty("GET")).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.text,
        "400 Bad Request: missing required header x-api-key\n"
    );
    assert_eq!(seen.calls(), 0);

    let req = request("GET")
        .header("x-api-key", "k")
        .body(Body::empty())
        .unwrap();
    let (answer, seen) = send(options, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(seen.calls(), 1);
}

#[tokio::test]
async fn a_denied_header_is_403() {
    let options = FilterOptions {
        deny_headers: names(&["x-original-url", "x-rewrite-url"]),
        ..FilterOptions::default()
    };
    let req = request("GET")
        .header("x-rewrite-url", "/admin")
        .body(Body::empty())
        .unwrap();
    let (answer, seen) = send(options.clone(), req).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.text,
        "403 Forbidden: header x-rewrite-url is not allowed\n"
    );
    assert_eq!(answer.allow(), None);
    assert_eq!(seen.calls(), 0);
    assert_eq!(send(options, empty("GET")).await.0.status, 200);
}

#[tokio::test]
async fn an_allow_list_refuses_unlisted_headers() {
    let options = FilterOptions {
        allow_headers: names(&["accept", "user-agent"]),
        required_headers: names(&["authorization"]),
        ..FilterOptions::default()
    };
    // Listed, required (hence allowed) and implicitly allowed headers pass.
    let req = request("POST")
        .header("accept", "*/*")
        .header("user-agent", "t")
        .header("authorization", "Bearer x")
        .header("content-length", "3")
        .header("te", "trailers")
        .body(Body::from("abc"))
        .unwrap();
    let (answer, seen) = send(options.clone(), req).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!((seen.calls(), seen.bytes()), (1, 3));

    let req = request("GET")
        .header("authorization", "Bearer x")
        .header("cookie", "a=b")
        .body(Body::empty())
        .unwrap();
    let (answer, seen) = send(options.clone(), req).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.text, "403 Forbidden: header cookie is not allowed\n");
    assert_eq!(seen.calls(), 0);

    // `upgrade` is not implicitly allowed.
    let req = request("GET")
        .header("authorization", "Bearer x")
        .header("upgrade", "websocket")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(options, req).await.0.status, 403);
}

#[tokio::test]
async fn a_generated_request_id_passes_an_allow_list() {
    let options = FilterOptions {
        allow_headers: names(&["accept"]),
        ..FilterOptions::default()
    };
    let req = Request::get("/x").header(HOST, "h").body(Body::empty());
    let (answer, _) = send(options, req.unwrap()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
}

#[tokio::test]
async fn deny_headers_win_over_allow_headers() {
    let options = FilterOptions {
        allow_headers: names(&["x-a", "x-b"]),
        required_headers: names(&["x-b"]),
        deny_headers: names(&["x-a", "x-b", "host"]),
        ..FilterOptions::default()
    };
    for header in ["x-a", "x-b"] {
        let req = Request::get("/x").header(header, "1").body(Body::empty());
        let (answer, seen) = send(options.clone(), req.unwrap()).await;
        assert_eq!(answer.status, 403, "{header}");
        assert_eq!(
            answer.text,
            format!("403 Forbidden: header {header} is not allowed\n")
        );
        assert_eq!(seen.calls(), 0);
    }
    // Even an implicitly allowed header.
    let req = Request::get("/x").header(HOST, "h").header("x-b", "1");
    let (answer, _) = send(options, req.body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, 403);
    assert!(answer.text.contains("header host is not allowed"));
}

#[tokio::test]
async fn a_denied_header_is_reported_before_an_unlisted_one() {
    let options = FilterOptions {
        allow_headers: names(&["accept"]),
        deny_headers: names(&["x-evil"]),
        ..FilterOptions::default()
    };
    let req = request("GET")
        .header("x-unlisted", "1")
        .header("x-evil", "1")
        .body(Body::empty())
        .unwrap();
    let (answer, _) = send(options, req).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.text, "403 Forbidden: header x-evil is not allowed\n");
}

#[tokio::test]
async fn headers_over_max_header_bytes_are_431() {
    // host: h (4 + 1 + 4), x-request-id: rid-1 (12 + 5 + 4), x-a: 1 twice (3 + 1 + 4 each).
    let exact = 9 + 21 + 8 + 8;
    let req = || {
        request("GET")
            .header("x-a", "1")
            .header("x-a", "1")
            .body(Body::empty())
            .unwrap()
    };
    let limit = |max| FilterOptions {
        max_header_bytes: Some(max),
        ..FilterOptions::default()
    };
    let (answer, seen) = send(limit(exact), req()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(seen.calls(), 1);

    let (answer, seen) = send(limit(exact - 1), req()).await;
    assert_eq!(answer.status, 431);
    assert_eq!(
        answer.text,
        "431 Request Header Fields Too Large: request headers are too large\n"
    );
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn an_announced_body_over_the_limit_is_413_before_the_upstream() {
    let options = FilterOptions {
        max_body_bytes: Some(10),
        ..FilterOptions::default()
    };
    let req = request("POST")
        .header(CONTENT_LENGTH, "11")
        .body(Body::from("hello world"))
        .unwrap();
    let (answer, seen) = send(options.clone(), req).await;
    assert_eq!(answer.status, 413);
    assert!(answer.text.starts_with("413 "), "{}", answer.text);
    assert!(answer.text.ends_with(": request body is too large\n"));
    assert_eq!(answer.headers["x-request-id"], "rid-1");
    assert_eq!(seen.calls(), 0);

    let req = request("POST")
        .header(CONTENT_LENGTH, "10")
        .body(Body::from("0123456789"))
        .unwrap();
    let (answer, seen) = send(options, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!((seen.bytes(), seen.complete()), (10, true));
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413_and_the_upstream_never_gets_the_rest() {
    let options = FilterOptions {
        max_body_bytes: Some(10),
        ..FilterOptions::default()
    };
    let req = request("POST")
        .body(streamed(&["abcd", "efgh", "ijkl", "mnop"]))
        .unwrap();
    let (answer, seen) = send(options, req).await;
    assert_eq!(answer.status, 413);
    assert!(answer.text.ends_with(": request body is too large\n"));
    assert_eq!(answer.headers["x-request-id"], "rid-1");
    // The upstream was called and got the first two chunks; the one crossing the limit and
    // everything after it never reached it.
    assert_eq!(seen.calls(), 1);
    assert_eq!(seen.bytes(), 8);
    assert!(!seen.complete());
}

#[tokio::test]
async fn a_streamed_body_within_the_limit_reaches_the_upstream_whole() {
    let options = FilterOptions {
        max_body_bytes: Some(16),
        ..FilterOptions::default()
    };
    let req = request("POST")
        .body(streamed(&["abcd", "efgh", "ijkl", "mnop"]))
        .unwrap();
    let (answer, seen) = send(options, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text, "upstream");
    assert_eq!((seen.calls(), seen.bytes(), seen.complete()), (1, 16, true));
}

/// Requests breaking exactly one rule of `all_rules`, and the status each gets by default.
fn one_broken_rule_each() -> Vec<(&'static str, Request<Body>, u16)> {
    vec![
        ("method", empty("TRACE"), 405),
        (
            "header bytes",
            request("GET")
                .header("x-big", "x".repeat(200))
                .body(Body::empty())
                .unwrap(),
            431,
        ),
        (
            "denied header",
            request("GET")
                .header("x-evil", "1")
                .body(Body::empty())
                .unwrap(),
            403,
        ),
        (
            "unlisted header",
            request("GET")
                .header("x-unlisted", "1")
                .body(Body::empty())
                .unwrap(),
            403,
        ),
        (
            "required header",
            Request::get("/x")
                .header("x-request-id", "rid-1")
                .body(Body::empty())
                .unwrap(),
            400,
        ),
        (
            "announced body",
            request("POST")
                .header(CONTENT_LENGTH, "100")
                .body(Body::from("x".repeat(100)))
                .unwrap(),
            413,
        ),
        (
            "streamed body",
            request("POST")
                .body(streamed(&["0123456789", "0123456789", "0123456789"]))
                .unwrap(),
            413,
        ),
    ]
}

fn all_rules(deny_status: Option<StatusCode>) -> FilterOptions {
    FilterOptions {
        allow_methods: vec![Method::GET, Method::POST, Method::TRACE],
        deny_methods: vec![Method::TRACE],
        required_headers: names(&["host"]),
        deny_headers: names(&["x-evil"]),
        allow_headers: names(&["x-big", "x-evil", "accept"]),
        max_header_bytes: Some(128),
        max_body_bytes: Some(20),
        deny_status,
    }
}

#[tokio::test]
async fn each_rule_answers_its_status() {
    for (rule, req, status) in one_broken_rule_each() {
        let (answer, _) = send(all_rules(None), req).await;
        assert_eq!(answer.status, status, "{rule}: {}", answer.text);
        assert_eq!(answer.allow().is_some(), status == 405, "{rule}");
    }
    let (answer, seen) = send(all_rules(None), empty("GET")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(seen.calls(), 1);
}

#[tokio::test]
async fn deny_status_overrides_every_denial() {
    for (rule, req, _) in one_broken_rule_each() {
        let (answer, seen) = send(all_rules(Some(StatusCode::NOT_FOUND)), req).await;
        assert_eq!(answer.status, 404, "{rule}");
        assert!(answer.text.starts_with("404 Not Found: "), "{rule}");
        assert_eq!(answer.allow(), None, "{rule}: Allow belongs to 405 only");
        assert!(!seen.complete(), "{rule}");
    }
    // Passing requests are untouched.
    let (answer, _) = send(all_rules(Some(StatusCode::NOT_FOUND)), empty("GET")).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_405_deny_status_carries_allow_whatever_the_rule() {
    let req = request("GET")
        .header("x-evil", "1")
        .body(Body::empty())
        .unwrap();
    let (answer, _) = send(all_rules(Some(StatusCode::METHOD_NOT_ALLOWED)), req).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.allow(), Some("GET, POST"));
    assert_eq!(
        answer.text,
        "405 Method Not Allowed: header x-evil is not allowed\n"
    );
}

#[tokio::test]
async fn rules_are_checked_in_order_and_the_first_broken_one_answers() {
    // Breaks every rule: method, size, denied and unlisted headers, no host, body too large.
    let req = |method: &str, big: bool, evil: bool, unlisted: bool, host: bool| {
        let mut b = Request::builder()
            .method(method)
            .uri("/x")
            .header("x-request-id", "rid-1")
            .header(CONTENT_LENGTH, "100");
        if big {
            b = b.header("x-big", "x".repeat(200));
        }
        if evil {
            b = b.header("x-evil", "1");
        }
        if unlisted {
            b = b.header("x-unlisted", "1");
        }
        if host {
            b = b.header(HOST, "h");
        }
        b.body(Body::from("x".repeat(100))).unwrap()
    };
    let steps = [
        (
            req("TRACE", true, true, true, false),
            405,
            "TRACE is not allowed",
        ),
        (
            req("POST", true, true, true, false),
            431,
            "request headers are too large",
        ),
        (
            req("POST", false, true, true, false),
            403,
            "header x-evil is not allowed",
        ),
        (
            req("POST", false, false, true, false),
            403,
            "header x-unlisted is not allowed",
        ),
        (
            req("POST", false, false, false, false),
            400,
            "missing required header host",
        ),
        (
            req("POST", false, false, false, true),
            413,
            "request body is too large",
        ),
    ];
    for (req, status, reason) in steps {
        let (answer, seen) = send(all_rules(None), req).await;
        assert_eq!(answer.status, status, "{}", answer.text);
        assert!(
            answer.text.ends_with(&format!(": {reason}\n")),
            "{}",
            answer.text
        );
        assert_eq!(seen.calls(), 0);
    }
}

#[tokio::test]
async fn the_standalone_layer_filters_in_front_of_any_service() {
    let layer = RequestFilter::layer(FilterOptions {
        deny_methods: vec![Method::TRACE],
        max_body_bytes: Some(4),
        ..FilterOptions::default()
    });
    let seen = Seen::default();
    let svc = {
        let seen = seen.clone();
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |req| seen.clone().upstream(req)))
    };

    let answer = Answer::read(svc.clone().oneshot(empty("TRACE")).await.unwrap()).await;
    assert_eq!(answer.status, 405);
    assert_eq!(seen.calls(), 0);

    let req = request("POST").body(streamed(&["ab", "cd"])).unwrap();
    let answer = Answer::read(svc.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(answer.status, 200);

    let req = request("POST").body(streamed(&["ab", "cd", "e"])).unwrap();
    let answer = Answer::read(svc.oneshot(req).await.unwrap()).await;
    assert_eq!(answer.status, 413);
    assert_eq!(seen.bytes(), 4 + 4);

    // Over an infallible service too.
    let infallible = ServiceBuilder::new()
        .layer(RequestFilterLayer::new(FilterOptions::default()))
        .service(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let response = infallible.oneshot(empty("GET")).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn the_layer_and_its_service_meet_axum_bounds() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<RequestFilterLayer>();
    assert_send_sync_clone::<RequestFilter>();
    assert_send_sync_clone::<
        snakeway_core::pipeline::PipelineService<
            tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>,
        >,
    >();
    fn assert_send<T: Send + 'static>(_: &T) {}
    let mut svc = tower::Layer::layer(
        &RequestFilterLayer::new(FilterOptions::default()),
        service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) }),
    );
    let future = tower::Service::call(&mut svc, Request::new(Body::empty()));
    assert_send(&future);
    let filter: Arc<dyn Device> = Arc::new(RequestFilter::new(FilterOptions::default()));
    assert_eq!(filter.name(), "request_filter");
}
