//! Ordering, short-circuit, failure and panic semantics of the pipeline, per phase.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, request, response};
use http_body_util::{BodyExt, StreamBody};
use tower::{Service, ServiceExt, service_fn};

use std::pin::Pin;
use std::task::Poll;

use super::*;
use crate::{BodyCtx, ErrorKind, Pending, Phases, RequestInfo, ResponseCtx};

#[derive(Clone, Copy, Debug)]
enum Act {
    Respond(u16),
    Fail,
    Panic,
}

#[derive(Clone, Debug)]
struct Marker(&'static str);

struct Recorder {
    name: &'static str,
    phases: Phases,
    log: Arc<Mutex<Vec<String>>>,
    acts: HashMap<Phase, Act>,
}

impl Recorder {
    fn act(&self, phase: Phase) -> DeviceResult {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}.{}", self.name, phase));
        match self.acts.get(&phase) {
            None => Ok(Flow::Continue),
            Some(Act::Respond(status)) => {
                let mut response = Response::new(Body::from(format!("from {}", self.name)));
                *response.status_mut() = StatusCode::from_u16(*status).unwrap();
                Ok(Flow::respond(response))
            }
            Some(Act::Fail) => {
                Err(DeviceError::new("refused").with_status(StatusCode::SERVICE_UNAVAILABLE))
            }
            Some(Act::Panic) => panic!("{} exploded", self.name),
        }
    }
}

impl Device for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn phases(&self) -> Phases {
        self.phases
    }
    fn on_request(&self, ctx: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        ctx.extensions.insert(Marker(self.name));
        self.act(Phase::Request)
    }
    fn on_request_body(&self, _: &BodyCtx, chunk: &Bytes, end: bool) -> DeviceResult {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}.body({},{end})", self.name, chunk.len()));
        match self.acts.get(&Phase::RequestBody) {
            Some(Act::Panic) => panic!("{} exploded", self.name),
            Some(Act::Fail) => {
                Err(DeviceError::new("refused").with_status(StatusCode::SERVICE_UNAVAILABLE))
            }
            Some(Act::Respond(status)) if end => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::from_u16(*status).unwrap();
                Ok(Flow::respond(response))
            }
            _ => Ok(Flow::Continue),
        }
    }
    fn before_proxy(&self, _: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        self.act(Phase::BeforeProxy)
    }
    fn after_proxy(&self, _: &mut RequestCtx, _: &mut response::Parts) -> DeviceResult {
        self.act(Phase::AfterProxy)
    }
    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        let marker = ctx.extensions.get::<Marker>().map_or("-", |m| m.0);
        res.head
            .headers
            .append("x-seen-by", self.name.parse().unwrap());
        self.log.lock().unwrap().push(format!(
            "{}.response({},{},{})",
            self.name,
            res.head.status.as_u16(),
            res.origin.as_str(),
            marker
        ));
        match self.acts.get(&Phase::Response) {
            Some(Act::Fail) => Err(DeviceError::new("bad response")),
            Some(Act::Panic) => panic!("{} exploded", self.name),
            _ => Ok(()),
        }
    }
    fn on_error(&self, ctx: &mut RequestCtx, error: &Error) {
        let marker = ctx.extensions.get::<Marker>().map_or("-", |m| m.0);
        self.log
            .lock()
            .unwrap()
            .push(format!("{}.error({},{marker})", self.name, error.kind()));
    }
}

struct Harness {
    log: Arc<Mutex<Vec<String>>>,
    upstream_calls: Arc<AtomicUsize>,
    devices: Vec<Arc<dyn Device>>,
    detail: crate::respond::ErrorDetail,
}

impl Harness {
    fn new() -> Self {
        Self {
            log: Arc::default(),
            upstream_calls: Arc::default(),
            devices: Vec::new(),
            detail: crate::respond::ErrorDetail::Minimal,
        }
    }

    /// Tells clients the whole error message.
    fn full_detail(mut self) -> Self {
        self.detail = crate::respond::ErrorDetail::Full;
        self
    }

    fn device(mut self, name: &'static str, acts: &[(Phase, Act)]) -> Self {
        self.devices.push(Arc::new(Recorder {
            name,
            phases: Phases::ALL,
            log: self.log.clone(),
            acts: acts.iter().copied().collect(),
        }));
        self
    }

    fn device_with_phases(mut self, name: &'static str, phases: Phases) -> Self {
        self.devices.push(Arc::new(Recorder {
            name,
            phases,
            log: self.log.clone(),
            acts: HashMap::new(),
        }));
        self
    }

    /// The pipeline around proxy hooks around an upstream that answers 200 (after reading the
    /// body), or fails with `upstream_error`.
    async fn send(&self, body: Body, upstream_error: Option<ErrorKind>) -> Response<Body> {
        self.send_typed("text/plain", body, upstream_error).await
    }

    /// [`Harness::send`] for a request with `content-type`.
    async fn send_typed(
        &self,
        content_type: &'static str,
        body: Body,
        upstream_error: Option<ErrorKind>,
    ) -> Response<Body> {
        let pipeline = Pipeline::new(self.devices.clone()).with_error_detail(self.detail);
        let calls = self.upstream_calls.clone();
        let log = self.log.clone();
        let upstream = service_fn(move |req: Request<Body>| {
            let calls = calls.clone();
            let log = log.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let collected = req.into_body().collect().await;
                log.lock().unwrap().push("upstream".into());
                if collected.is_err() {
                    return Err(Error::new(ErrorKind::BadRequest, "body stopped"));
                }
                match upstream_error {
                    Some(kind) => Err(Error::new(kind, "upstream failed")),
                    None => Ok(Response::new(Body::from("upstream"))),
                }
            }
        });
        let stack = tower::ServiceBuilder::new()
            .layer(pipeline.layer())
            .layer(pipeline.proxy_hooks())
            .service(upstream);
        let req = Request::post("/x")
            .header("host", "h")
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        stack.oneshot(req).await.unwrap()
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn upstream_calls(&self) -> usize {
        self.upstream_calls.load(Ordering::SeqCst)
    }
}

/// The values of the response's `name` fields, in order.
fn values<'r>(response: &'r Response<Body>, name: &str) -> Vec<&'r str> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

fn seen_by(response: &Response<Body>) -> Vec<&str> {
    values(response, "x-seen-by")
}

#[tokio::test]
async fn every_phase_runs_in_configured_order() {
    let h = Harness::new()
        .device("a", &[])
        .device("b", &[])
        .device("c", &[]);
    let response = h.send(Body::from("hi"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(seen_by(&response), ["a", "b", "c"]);
    assert_eq!(
        h.log(),
        [
            "a.request",
            "b.request",
            "c.request",
            "a.before_proxy",
            "b.before_proxy",
            "c.before_proxy",
            "a.body(2,true)",
            "b.body(2,true)",
            "c.body(2,true)",
            "upstream",
            "a.after_proxy",
            "b.after_proxy",
            "c.after_proxy",
            "a.response(200,upstream,c)",
            "b.response(200,upstream,c)",
            "c.response(200,upstream,c)",
        ]
    );
}

#[tokio::test]
async fn early_answer_in_on_request_skips_the_rest_but_not_on_response() {
    let h = Harness::new()
        .device("a", &[])
        .device("b", &[(Phase::Request, Act::Respond(401))])
        .device("c", &[]);
    let response = h.send(Body::from("hi"), None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(h.upstream_calls(), 0);
    assert_eq!(
        h.log(),
        [
            "a.request",
            "b.request",
            "a.response(401,device,b)",
            "b.response(401,device,b)",
            "c.response(401,device,b)"
        ]
    );
    assert!(
        response.headers().contains_key("x-request-id") || seen_by(&response) == ["a", "b", "c"]
    );
}

#[tokio::test]
async fn early_answer_in_before_proxy_skips_the_upstream() {
    let h = Harness::new()
        .device("a", &[(Phase::BeforeProxy, Act::Respond(429))])
        .device("b", &[]);
    let response = h.send(Body::from("hi"), None).await;
    assert_eq!(response.status(), 429);
    assert_eq!(h.upstream_calls(), 0);
    assert_eq!(
        h.log(),
        [
            "a.request",
            "b.request",
            "a.before_proxy",
            "a.response(429,device,b)",
            "b.response(429,device,b)"
        ]
    );
}

#[tokio::test]
async fn after_proxy_may_replace_the_response() {
    let h = Harness::new()
        .device("a", &[(Phase::AfterProxy, Act::Respond(418))])
        .device("b", &[]);
    let response = h.send(Body::empty(), None).await;
    assert_eq!(response.status(), 418);
    let log = h.log();
    assert!(log.contains(&"a.after_proxy".to_owned()));
    assert!(!log.contains(&"b.after_proxy".to_owned()), "{log:?}");
    assert!(
        log.contains(&"b.response(418,device,b)".to_owned()),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_failing_device_fails_the_request_with_its_status_and_on_error_sees_it() {
    for phase in [Phase::Request, Phase::BeforeProxy, Phase::AfterProxy] {
        // By default the client learns the status and a short reason, not the device.
        let h = Harness::new()
            .device("a", &[])
            .device("b", &[(phase, Act::Fail)]);
        let response = h.send(Body::empty(), None).await;
        assert_eq!(response.status(), 503, "{phase}");
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.starts_with("503 Service Unavailable: the request could not be processed"),
            "{text}"
        );
        assert!(!text.contains("\"b\""), "{text}");
        assert!(
            h.log().contains(&"a.error(device,b)".to_owned()),
            "on_error sees the device: {:?}",
            h.log()
        );

        let h = Harness::new()
            .full_detail()
            .device("a", &[])
            .device("b", &[(phase, Act::Fail)]);
        let response = h.send(Body::empty(), None).await;
        assert_eq!(response.status(), 503, "{phase}");
        let log = h.log();
        assert!(
            log.contains(&"a.error(device,b)".to_owned()),
            "{phase}: {log:?}"
        );
        assert!(
            log.contains(&"b.response(503,error,b)".to_owned()),
            "{phase}: {log:?}"
        );
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains(&format!("device \"b\" failed in {phase}: refused")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_panicking_device_is_a_500_for_that_request_alone() {
    for phase in [
        Phase::Request,
        Phase::BeforeProxy,
        Phase::AfterProxy,
        Phase::Response,
    ] {
        let h = Harness::new()
            .full_detail()
            .device("a", &[(phase, Act::Panic)])
            .device("b", &[]);
        let response = h.send(Body::empty(), None).await;
        assert_eq!(response.status(), 500, "{phase}");
        let log = h.log();
        assert!(
            log.iter().any(|l| l.starts_with("b.error(device,")),
            "{phase}: {log:?}"
        );
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&text).contains("panicked: a exploded"),
            "{phase}"
        );
    }
    // The same pipeline keeps serving.
    let h = Harness::new().device("a", &[]);
    assert_eq!(h.send(Body::empty(), None).await.status(), 200);
}

#[tokio::test]
async fn a_failing_on_response_turns_the_response_into_a_500() {
    let h = Harness::new()
        .device("a", &[(Phase::Response, Act::Fail)])
        .device("b", &[]);
    let response = h.send(Body::empty(), None).await;
    assert_eq!(response.status(), 500);
    let log = h.log();
    assert!(
        log.contains(&"b.response(500,error,b)".to_owned()),
        "{log:?}"
    );
}

#[tokio::test]
async fn upstream_errors_reach_on_error_with_the_context() {
    let h = Harness::new().device("a", &[]);
    let response = h
        .send(Body::empty(), Some(ErrorKind::UpstreamTimeout))
        .await;
    assert_eq!(response.status(), 504);
    assert!(response.headers().contains_key("x-request-id"));
    let log = h.log();
    assert!(
        log.contains(&"a.error(upstream_timeout,a)".to_owned()),
        "{log:?}"
    );
    assert!(
        log.contains(&"a.response(504,error,a)".to_owned()),
        "{log:?}"
    );
}

#[tokio::test]
async fn body_hooks_see_each_chunk_and_may_stop_the_body() {
    let chunks =
        ["ab", "cde", "f"].map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c))));
    let body = Body::new(StreamBody::new(futures_util::stream::iter(chunks)));
    let h = Harness::new().device("a", &[(Phase::RequestBody, Act::Respond(413))]);
    let response = h.send(body, None).await;
    assert_eq!(response.status(), 413);
    let log = h.log();
    let body_calls: Vec<_> = log.iter().filter(|l| l.contains("body")).cloned().collect();
    assert_eq!(
        body_calls,
        [
            "a.body(2,false)",
            "a.body(3,false)",
            "a.body(1,false)",
            "a.body(0,true)"
        ]
    );
    // The context survives the stopped body: the marker stored in on_request is still there.
    assert!(
        log.contains(&"a.response(413,device,a)".to_owned()),
        "{log:?}"
    );
}

#[tokio::test]
async fn an_empty_body_reaches_its_end_right_after_on_request() {
    // An empty body is never polled, by an upstream or anything else: the hooks see its end
    // at once, and may still answer early.
    let h = Harness::new()
        .device_with_phases("a", Phases::only(Phase::Request).with(Phase::RequestBody));
    let response = h.send(Body::empty(), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.log(), ["a.request", "a.body(0,true)", "upstream"]);

    let h = Harness::new().device("a", &[(Phase::RequestBody, Act::Respond(413))]);
    let response = h.send(Body::empty(), None).await;
    assert_eq!(response.status(), 413);
    assert_eq!(h.upstream_calls(), 0);
    let log = h.log();
    assert_eq!(log[..2], ["a.request", "a.body(0,true)"], "{log:?}");
}

#[tokio::test]
async fn devices_are_only_called_in_their_phases() {
    let h = Harness::new()
        .device_with_phases("r", Phases::only(Phase::Response))
        .device_with_phases("q", Phases::only(Phase::Request));
    let response = h.send(Body::from("x"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        h.log(),
        ["q.request", "upstream", "r.response(200,upstream,q)"]
    );
}

#[test]
fn only_a_device_after_routing_needs_the_route_noted() {
    let recorder = |phases| -> Arc<dyn Device> {
        Arc::new(Recorder {
            name: "d",
            phases,
            log: Arc::default(),
            acts: HashMap::new(),
        })
    };
    let request_side = Phases::only(Phase::Request).with(Phase::RequestBody);
    assert!(!Pipeline::new(vec![recorder(request_side)]).runs_after_routing());
    assert!(!Pipeline::new(Vec::new()).runs_after_routing());
    for later in [
        Phase::BeforeProxy,
        Phase::AfterProxy,
        Phase::Response,
        Phase::Error,
        Phase::Complete,
    ] {
        let pipeline = Pipeline::new(vec![recorder(request_side), recorder(Phases::only(later))]);
        assert!(pipeline.runs_after_routing(), "{later:?}");
    }
}

#[tokio::test]
async fn an_empty_pipeline_passes_requests_through() {
    let h = Harness::new();
    let response = h.send(Body::from("x"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.log(), ["upstream"]);
}

#[test]
fn layers_and_services_meet_axum_bounds() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<PipelineLayer>();
    assert_send_sync_clone::<ProxyHooksLayer>();
    assert_send_sync_clone::<
        PipelineService<
            tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>,
        >,
    >();
    fn assert_send<T: Send>(_: &T) {}
    let svc = PipelineService::new(
        service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) }),
        Pipeline::default(),
    );
    let mut svc = svc;
    let future = svc.call(Request::new(Body::empty()));
    assert_send(&future);
}

#[tokio::test]
async fn standalone_layers_keep_their_context_when_the_handler_drops_extensions() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let device = |name| -> Arc<dyn Device> {
        Arc::new(Recorder {
            name,
            phases: Phases::only(Phase::Request).with(Phase::Response),
            log: log.clone(),
            acts: HashMap::new(),
        })
    };
    // An axum-like handler: it answers with a fresh response, extensions and all dropped.
    let handler =
        service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(Pipeline::new(vec![device("outer")])))
        .layer(PipelineLayer::new(Pipeline::new(vec![device("inner")])))
        .service(handler);
    let response = stack.oneshot(Request::new(Body::empty())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer.request",
            "inner.request",
            "inner.response(200,upstream,inner)",
            "outer.response(200,upstream,outer)"
        ]
    );
}

#[tokio::test]
async fn a_failing_or_panicking_body_hook_fails_that_request_and_stops_the_body() {
    for (act, status) in [(Act::Fail, 503), (Act::Panic, 500)] {
        let h = Harness::new()
            .device("a", &[(Phase::RequestBody, act)])
            .device("b", &[]);
        let response = h.send(Body::from("payload"), None).await;
        assert_eq!(response.status(), status, "{act:?}");
        let log = h.log();
        assert!(
            log.iter().any(|l| l.starts_with("b.error(device,")),
            "{act:?}: {log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with(&format!("b.response({status},error,"))),
            "{act:?}: {log:?}"
        );
        // The device stopped the body at its first chunk: b's body hook never saw it.
        assert!(
            !log.iter().any(|l| l.starts_with("b.body")),
            "{act:?}: {log:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_request_reaches_on_error_and_on_response_only() {
    let h = Harness::new().device("a", &[]).device("b", &[]);
    let pipeline = Pipeline::new(h.devices.clone());
    let info = RequestInfo {
        request_id: http::HeaderValue::from_static("rid-9"),
        peer: ([127, 0, 0, 1], 1).into(),
        method: http::Method::POST,
        uri: http::Uri::from_static("/x"),
        started: std::time::Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        received: Default::default(),
    };
    let error = Error::new(ErrorKind::BadRequest, "duplicate host")
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let response = pipeline.refuse(RequestCtx::new(info), error);
    assert_eq!(response.status(), 431);
    assert_eq!(response.headers()["x-request-id"], "rid-9");
    assert_eq!(
        h.log(),
        [
            "a.error(bad_request,-)",
            "b.error(bad_request,-)",
            "a.response(431,error,-)",
            "b.response(431,error,-)"
        ]
    );
}

fn grpc_status(response: &Response<Body>) -> Option<&str> {
    response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_grpc_requests_failures_and_refusals_are_grpc_statuses() {
    const GRPC: &str = "application/grpc+proto";

    // An upstream error: on_error sees it, the client gets DEADLINE_EXCEEDED.
    let h = Harness::new().device("a", &[]);
    let response = h
        .send_typed(GRPC, Body::empty(), Some(ErrorKind::UpstreamTimeout))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(grpc_status(&response), Some("4"));
    assert_eq!(
        response.headers()["grpc-message"],
        "the upstream did not respond in time"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let log = h.log();
    assert!(
        log.contains(&"a.error(upstream_timeout,a)".to_owned()),
        "{log:?}"
    );
    assert!(
        log.contains(&"a.response(200,error,a)".to_owned()),
        "{log:?}"
    );

    // A device's early refusal: on_response sees what the client gets.
    let h = Harness::new()
        .device("a", &[])
        .device("b", &[(Phase::Request, Act::Respond(401))]);
    let response = h.send_typed(GRPC, Body::from("hi"), None).await;
    assert_eq!(grpc_status(&response), Some("16"));
    assert_eq!(response.headers()["grpc-message"], "401 Unauthorized");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
    assert!(
        h.log().contains(&"a.response(200,device,b)".to_owned()),
        "on_response did not see the gRPC answer"
    );

    // A refusal before the upstream, and a failing on_response.
    let h = Harness::new().device("a", &[(Phase::BeforeProxy, Act::Respond(403))]);
    let response = h.send_typed(GRPC, Body::empty(), None).await;
    assert_eq!(grpc_status(&response), Some("7"));
    assert_eq!(h.upstream_calls(), 0);
    let h = Harness::new().device("a", &[(Phase::Response, Act::Fail)]);
    let response = h.send_typed(GRPC, Body::empty(), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(grpc_status(&response), Some("13"));

    // The upstream's own answer is never touched; gRPC-Web is not gRPC.
    let h = Harness::new().device("a", &[]);
    let response = h.send_typed(GRPC, Body::empty(), None).await;
    assert_eq!(grpc_status(&response), None);
    let h = Harness::new().device("a", &[(Phase::Request, Act::Respond(403))]);
    let response = h
        .send_typed("application/grpc-web", Body::empty(), None)
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(grpc_status(&response), None);
}

#[tokio::test]
async fn hook_outcomes_are_counted_by_device_and_phase() {
    use crate::metrics::DEVICE_HOOKS;
    let h = Harness::new()
        .device("counted-a", &[(Phase::BeforeProxy, Act::Panic)])
        .device("counted-b", &[(Phase::Request, Act::Respond(401))]);
    // Held like a snapshot holds them, so the scrape below sees them.
    let pipeline = Pipeline::new(h.devices.clone());
    assert_eq!(h.send(Body::from("hi"), None).await.status(), 401);
    let h2 = Harness::new()
        .device("counted-a", &[(Phase::BeforeProxy, Act::Panic)])
        .device("counted-b", &[]);
    assert_eq!(h2.send(Body::from("hi"), None).await.status(), 500);
    let mut counts = Vec::new();
    DEVICE_HOOKS.for_each(|labels, c| {
        if labels[0].starts_with("counted-") {
            counts.push(format!(
                "{}.{} {}/{}/{}/{}",
                labels[0],
                labels[1],
                c.get(0),
                c.get(1),
                c.get(2),
                c.get(3)
            ));
        }
    });
    counts.sort();
    drop(pipeline);
    let expected = [
        "counted-a.after_proxy 0/0/0/0",
        "counted-a.before_proxy 0/0/0/1",
        "counted-a.complete 2/0/0/0",
        "counted-a.error 1/0/0/0",
        "counted-a.request 2/0/0/0",
        "counted-a.request_body 0/0/0/0",
        "counted-a.response 2/0/0/0",
        "counted-b.after_proxy 0/0/0/0",
        "counted-b.before_proxy 0/0/0/0",
        "counted-b.complete 2/0/0/0",
        "counted-b.error 1/0/0/0",
        "counted-b.request 1/1/0/0",
        "counted-b.request_body 0/0/0/0",
        "counted-b.response 2/0/0/0",
    ];
    assert_eq!(counts, expected);
}

/// Records what `on_complete` saw, and panics there when told to.
struct Tally {
    seen: Arc<Mutex<Vec<Transfer>>>,
    panics: bool,
}

impl Device for Tally {
    fn name(&self) -> &str {
        "tally"
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Complete)
    }
    fn on_complete(&self, _: &RequestCtx, transfer: &Transfer) {
        self.seen.lock().unwrap().push(*transfer);
        assert!(!self.panics, "tally exploded");
    }
}

fn tally(panics: bool) -> (Arc<dyn Device>, Arc<Mutex<Vec<Transfer>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let device = Tally {
        seen: seen.clone(),
        panics,
    };
    (Arc::new(device), seen)
}

#[tokio::test]
async fn on_complete_sees_the_body_bytes_that_went_each_way_once() {
    let (device, seen) = tally(false);
    let mut h = Harness::new();
    h.devices.push(device);
    let chunks =
        ["ab", "cde", "f"].map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c))));
    let body = Body::new(StreamBody::new(futures_util::stream::iter(chunks)));
    let response = h.send(body, None).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "not before the body has gone"
    );
    let sent = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(sent, "upstream");
    let expected = Transfer {
        bytes_in: 6,
        bytes_out: 8,
        complete: true,
    };
    assert_eq!(*seen.lock().unwrap(), [expected]);
}

#[tokio::test]
async fn a_body_dropped_unfinished_completes_as_incomplete_and_a_panic_there_is_contained() {
    let (panicking, _) = tally(true);
    let (device, seen) = tally(false);
    let mut h = Harness::new();
    h.devices.extend([panicking, device]);
    let response = h.send(Body::from("hi"), None).await;
    drop(response);
    let expected = Transfer {
        bytes_in: 2,
        bytes_out: 0,
        complete: false,
    };
    assert_eq!(
        *seen.lock().unwrap(),
        [expected],
        "the next device still ran"
    );
}

#[tokio::test]
async fn a_bodiless_answer_is_complete_without_being_read() {
    let (device, seen) = tally(false);
    let pipeline = Pipeline::new(vec![device]);
    let app = service_fn(|_: Request<Body>| async {
        // A `HEAD` answer keeps the representation's body, which is never sent.
        Ok::<_, Infallible>(Response::new(Body::from("the representation")))
    });
    let stack = tower::ServiceBuilder::new()
        .layer(pipeline.layer())
        .service(app);
    let req = Request::head("/x").body(Body::empty()).unwrap();
    drop(stack.oneshot(req).await.unwrap());
    let expected = Transfer {
        bytes_in: 0,
        bytes_out: 0,
        complete: true,
    };
    assert_eq!(*seen.lock().unwrap(), [expected]);
}

/// What a [`Later`] device's deferred result does once its timer fires.
#[derive(Clone, Copy)]
enum Eventually {
    Continue,
    Respond(u16),
    Panic,
}

/// A device that defers its result in every request-side phase (and, if asked, in the body
/// hook): it waits on a timer, then notes in the context that it decided.
struct Later {
    then: Eventually,
    in_body: bool,
}

#[derive(Clone, Debug)]
struct Decided(Phase);

struct Waiting {
    sleep: Pin<Box<tokio::time::Sleep>>,
    then: Eventually,
    phase: Phase,
}

impl Pending for Waiting {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        ctx: &mut RequestCtx,
    ) -> Poll<DeviceResult> {
        std::task::ready!(self.sleep.as_mut().poll(cx));
        ctx.extensions.insert(Decided(self.phase));
        Poll::Ready(match self.then {
            Eventually::Continue => Ok(Flow::Continue),
            Eventually::Respond(status) => {
                let mut response = Response::new(Body::from("later"));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(Flow::respond(response))
            }
            Eventually::Panic => panic!("the store exploded"),
        })
    }
}

impl Later {
    fn defer(&self, phase: Phase) -> DeviceResult {
        Ok(Flow::Defer(Box::pin(Waiting {
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(5))),
            then: self.then,
            phase,
        })))
    }
}

impl Device for Later {
    fn name(&self) -> &str {
        "later"
    }
    fn phases(&self) -> Phases {
        Phases::ALL
    }
    fn on_request(&self, _: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        self.defer(Phase::Request)
    }
    fn on_request_body(&self, _: &BodyCtx, _: &Bytes, _: bool) -> DeviceResult {
        if self.in_body {
            self.defer(Phase::RequestBody)
        } else {
            Ok(Flow::Continue)
        }
    }
    fn before_proxy(&self, _: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        self.defer(Phase::BeforeProxy)
    }
    fn after_proxy(&self, _: &mut RequestCtx, _: &mut response::Parts) -> DeviceResult {
        self.defer(Phase::AfterProxy)
    }
    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        if let Some(Decided(phase)) = ctx.extensions.get::<Decided>() {
            res.head
                .headers
                .insert("x-decided-in", phase.as_str().parse().unwrap());
        }
        Ok(())
    }
}

impl Harness {
    fn later(mut self, then: Eventually, in_body: bool) -> Self {
        self.devices.push(Arc::new(Later { then, in_body }));
        self
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_deferred_result_is_waited_for_and_may_record_into_the_context() {
    // On a current-thread runtime: the wait must yield, not block, or the timer never fires.
    let h = Harness::new()
        .later(Eventually::Continue, false)
        .device("a", &[]);
    let response = h.send(Body::from("abc"), None).await;
    assert_eq!(response.status(), 200);
    // Every request-side phase deferred; the last one to decide was after_proxy.
    assert_eq!(response.headers()["x-decided-in"], "after_proxy");
    assert_eq!(h.upstream_calls(), 1);
    assert!(h.log().contains(&"a.before_proxy".to_owned()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_deferred_answer_skips_the_upstream_and_later_devices() {
    let h = Harness::new()
        .later(Eventually::Respond(429), false)
        .device("a", &[]);
    let response = h.send(Body::from("abc"), None).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-decided-in"], "request");
    assert_eq!(h.upstream_calls(), 0);
    let log = h.log();
    assert!(!log.contains(&"a.request".to_owned()), "{log:?}");
    assert!(
        log.contains(&"a.response(429,device,-)".to_owned()),
        "{log:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_deferred_result_that_panics_is_a_500_for_that_request_alone() {
    let h = Harness::new()
        .full_detail()
        .later(Eventually::Panic, false)
        .device("a", &[]);
    let response = h.send(Body::from("abc"), None).await;
    assert_eq!(response.status(), 500);
    assert_eq!(h.upstream_calls(), 0);
    let log = h.log();
    assert!(
        log.iter().any(|l| l.starts_with("a.error(device,")),
        "{log:?}"
    );
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("panicked: the store exploded"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_hook_cannot_defer_its_result() {
    let h = Harness::new().later(Eventually::Continue, true);
    let chunks = vec![Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(
        "ab",
    )))];
    let body = Body::new(StreamBody::new(futures_util::stream::iter(chunks)));
    let response = h.send(body, None).await;
    assert_eq!(response.status(), 500);
}

/// Adds `x-stamp: NAME` for the response in `on_request`; logs the `x-stamp` values the
/// response has when its own `on_response` runs.
struct Stamp {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Device for Stamp {
    fn name(&self) -> &str {
        self.name
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Request).with(Phase::Response)
    }
    fn on_request(&self, ctx: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        ctx.add_response_header(
            http::HeaderName::from_static("x-stamp"),
            http::HeaderValue::from_static(self.name),
        );
        Ok(Flow::Continue)
    }
    fn on_response(
        &self,
        _: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        let stamps: Vec<_> = res.head.headers.get_all("x-stamp").iter().collect();
        self.log
            .lock()
            .unwrap()
            .push(format!("{}.response{stamps:?}", self.name));
        Ok(())
    }
}

fn stamps(response: &Response<Body>) -> Vec<&str> {
    values(response, "x-stamp")
}

#[tokio::test]
async fn fields_added_on_the_request_side_reach_every_response_before_on_response() {
    let stamped = |h: Harness| {
        let mut h = h;
        for name in ["s1", "s2"] {
            let log = h.log.clone();
            h.devices.insert(0, Arc::new(Stamp { name, log }));
        }
        h
    };
    // The upstream's answer: both fields, in the order the devices added them, already there
    // for the first device's `on_response`.
    let h = stamped(Harness::new());
    let response = h.send(Body::from("hi"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(stamps(&response), ["s2", "s1"]);
    assert_eq!(
        h.log(),
        [
            "upstream",
            r#"s2.response["s2", "s1"]"#,
            r#"s1.response["s2", "s1"]"#
        ]
    );

    // A later device's early answer and an upstream failure carry them too.
    let h = stamped(Harness::new().device("b", &[(Phase::Request, Act::Respond(403))]));
    let response = h.send(Body::from("hi"), None).await;
    assert_eq!(response.status(), 403);
    assert_eq!(stamps(&response), ["s2", "s1"]);
    let h = stamped(Harness::new());
    let response = h
        .send(Body::from("hi"), Some(ErrorKind::UpstreamUnavailable))
        .await;
    assert_eq!(response.status(), 502);
    assert_eq!(stamps(&response), ["s2", "s1"]);
}
