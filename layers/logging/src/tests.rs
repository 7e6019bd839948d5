//! The line shape per event, headers and identity, the bounded queue, and file output.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, request};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use snakeway_core::pipeline::Pipeline;
use snakeway_core::{
    Body, Device, DeviceResult, Error, ErrorKind, Flow, Origin, PeerAddr, Phase, Phases,
    RequestCtx, RequestInfo, ResponseCtx, Transfer,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;

const WAIT: Duration = Duration::from_secs(10);

// --- test doubles ---

/// An in-memory output.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Memory {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "unterminated: {text:?}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output whose first write blocks until released (a stalled disk or pipe).
struct Stalled {
    entered: mpsc::SyncSender<()>,
    release: mpsc::Receiver<()>,
    stalled: bool,
    out: Memory,
}

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.stalled {
            self.stalled = true;
            let _ = self.entered.send(());
            let _ = self.release.recv();
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stands in for the router: sets the route and service at `on_request`.
struct Router;

impl Device for Router {
    fn name(&self) -> &str {
        "router"
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Request)
    }
    fn on_request(&self, ctx: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        ctx.route = Some("/api".into());
        ctx.service = Some("api".into());
        Ok(Flow::Continue)
    }
}

/// Stands in for the identity device: stores a client in the context's extensions.
#[derive(Clone)]
struct Client(&'static str);

struct Identify;

impl Device for Identify {
    fn name(&self) -> &str {
        "identity"
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Request)
    }
    fn on_request(&self, ctx: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        ctx.extensions.insert(Client("203.0.113.9"));
        Ok(Flow::Continue)
    }
}

/// Answers every request early with 401.
struct Deny;

impl Device for Deny {
    fn name(&self) -> &str {
        "deny"
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Request)
    }
    fn on_request(&self, _: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        let mut response = Response::new(Body::from("no"));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Ok(Flow::respond(response))
    }
}

fn identity_extractor() -> IdentityExtractor {
    Arc::new(|ctx: &RequestCtx| {
        let client = ctx.extensions.get::<Client>()?;
        let mut fields = Map::new();
        fields.insert("ip".into(), json!(client.0));
        fields.insert("bot".into(), json!(false));
        Some(fields)
    })
}

fn options(phases: &[LogPhase]) -> LoggingOptions {
    LoggingOptions {
        phases: phases.to_vec(),
        ..LoggingOptions::default()
    }
}

fn memory_device(options: LoggingOptions) -> (Arc<StructuredLogging>, Memory) {
    let memory = Memory::default();
    let writer = LogWriter::with_sink(memory.clone(), DEFAULT_QUEUE_BYTES).unwrap();
    (Arc::new(StructuredLogging::new(options, writer)), memory)
}

enum Upstream {
    Ok { content_length: Option<u64> },
    Fail(ErrorKind),
}

/// Sends `req` through the pipeline (outer layer, proxy hooks, upstream) and returns the
/// response status and the lines logged by `logger`.
async fn send(
    devices: Vec<Arc<dyn Device>>,
    logger: &StructuredLogging,
    memory: &Memory,
    req: Request<Body>,
    upstream: Upstream,
) -> (StatusCode, Vec<Value>) {
    let pipeline = Pipeline::new(devices);
    let upstream = Arc::new(upstream);
    let service = service_fn(move |req: Request<Body>| {
        let upstream = upstream.clone();
        async move {
            let _ = req.into_body().collect().await;
            match &*upstream {
                Upstream::Ok { content_length } => {
                    let mut response = Response::new(Body::from("hello"));
                    if let Some(n) = content_length {
                        response
                            .headers_mut()
                            .insert("content-length", HeaderValue::from(*n));
                    }
                    Ok(response)
                }
                Upstream::Fail(kind) => Err(Error::new(*kind, "upstream refused")
                    .with_source(io::Error::other("connection reset"))),
            }
        }
    });
    let stack = ServiceBuilder::new()
        .layer(pipeline.layer())
        .layer(pipeline.proxy_hooks())
        .service(service);
    let response = stack.oneshot(req).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    logger.writer().flush(WAIT).unwrap();
    (status, memory.lines())
}

fn post(path: &str, body: &'static str) -> Request<Body> {
    let mut req = Request::post(path)
        .header("content-length", body.len())
        .header("x-request-id", "req-1")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.1:4567".parse().unwrap()));
    req
}

/// The keys of a line, sorted.
fn keys(line: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn sorted(mut keys: Vec<&str>) -> Vec<&str> {
    keys.sort_unstable();
    keys
}

/// The keys of every line.
const COMMON: [&str; 11] = [
    "ts",
    "event",
    "request_id",
    "method",
    "path",
    "duration_ms",
    "route",
    "upstream",
    "origin",
    "peer",
    "bytes_in",
];

fn common_and(extra: &[&'static str]) -> Vec<&'static str> {
    sorted(COMMON.iter().chain(extra).copied().collect())
}

// --- line shape per event ---

#[tokio::test]
async fn default_is_one_response_line_per_request() {
    let (logger, memory) = memory_device(LoggingOptions::default());
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(Router), logger.clone()];
    let upstream = Upstream::Ok {
        content_length: Some(5),
    };
    let (status, lines) = send(devices, &logger, &memory, post("/api/x", "ping"), upstream).await;
    assert_eq!(status, 200);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(keys(line), common_and(&["status", "bytes_out", "complete"]));
    assert_eq!(line["event"], "response");
    assert_eq!(line["request_id"], "req-1");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/api/x");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "/api");
    assert_eq!(line["upstream"], "api");
    assert_eq!(line["origin"], "upstream");
    assert_eq!(line["peer"], "192.0.2.1:4567");
    assert_eq!(line["bytes_in"], 4);
    assert_eq!(line["bytes_out"], 5);
    assert_eq!(line["complete"], true);
    let duration = line["duration_ms"].as_f64().unwrap();
    assert!((0.0..10_000.0).contains(&duration), "{duration}");
    let ts = line["ts"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(
        ts.starts_with("20") && ts.ends_with('Z') && &ts[10..11] == "T",
        "{ts}"
    );
    assert_eq!(logger.writer().written(), 1);
    assert_eq!(logger.writer().dropped(), 0);
}

#[tokio::test]
async fn every_configured_phase_logs_one_line_in_lifecycle_order() {
    let (logger, memory) = memory_device(options(&LogPhase::ALL));
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(Router), logger.clone()];
    let upstream = Upstream::Ok {
        content_length: Some(5),
    };
    let (_, lines) = send(devices, &logger, &memory, post("/api/x", "ping"), upstream).await;
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["request", "before_proxy", "after_proxy", "response"]
    );

    let [request, before, after, response] = &lines[..] else {
        unreachable!()
    };
    // At `on_request`, routing has not happened yet (the router device runs first here), and
    // no body byte has been read: the counts are what went over the wire so far.
    assert_eq!(keys(request), common_and(&[]));
    assert_eq!(request["bytes_in"], 0);
    assert_eq!(request["origin"], Value::Null);
    assert_eq!(keys(before), common_and(&[]));
    assert_eq!(before["upstream"], "api");
    assert_eq!(before["bytes_in"], 0);
    // Nothing has been sent yet at `after_proxy`, so there is no `bytes_out`.
    assert_eq!(keys(after), common_and(&["status"]));
    assert_eq!(after["status"], 200);
    assert_eq!(after["bytes_in"], 4, "the upstream read the body");
    assert_eq!(after["origin"], "upstream");
    assert_eq!(
        keys(response),
        common_and(&["status", "bytes_out", "complete"])
    );
    assert_eq!(response["bytes_in"], 4);
    assert_eq!(response["bytes_out"], 5);
    for line in &lines {
        assert_eq!(line["request_id"], "req-1");
    }
}

#[tokio::test]
async fn errors_log_kind_message_and_status_then_the_error_response() {
    let (logger, memory) = memory_device(options(&[LogPhase::Response, LogPhase::Error]));
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(Router), logger.clone()];
    let upstream = Upstream::Fail(ErrorKind::UpstreamUnavailable);
    let (status, lines) = send(devices, &logger, &memory, post("/api/x", "ping"), upstream).await;
    assert_eq!(status, 502);
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["error", "response"]);
    let error = &lines[0];
    assert_eq!(keys(error), common_and(&["status", "error"]));
    assert_eq!(error["status"], 502);
    assert_eq!(error["origin"], "error");
    assert_eq!(
        error["bytes_in"], 4,
        "the upstream read the body before it failed"
    );
    assert_eq!(
        error["error"],
        json!({"kind": "upstream_unavailable", "message": "upstream refused: connection reset"})
    );
    let response = &lines[1];
    assert_eq!(response["status"], 502);
    assert_eq!(response["origin"], "error");
}

#[tokio::test]
async fn early_answers_are_logged_with_origin_device() {
    let (logger, memory) = memory_device(LoggingOptions::default());
    // The logging device comes first, so it captured the request before the early answer.
    let devices: Vec<Arc<dyn Device>> = vec![logger.clone(), Arc::new(Deny)];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let (status, lines) = send(devices, &logger, &memory, post("/x", "ping"), upstream).await;
    assert_eq!(status, 401);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 401);
    assert_eq!(lines[0]["origin"], "device");
    assert_eq!(lines[0]["bytes_in"], 0, "nobody read the body");
    assert_eq!(lines[0]["bytes_out"], "no".len());
    assert_eq!(lines[0]["route"], Value::Null);
}

#[tokio::test]
async fn byte_counts_are_measured_without_a_content_length() {
    let (logger, memory) = memory_device(LoggingOptions::default());
    let devices: Vec<Arc<dyn Device>> = vec![logger.clone()];
    // No content-length on either side (chunked request, streamed response).
    let mut req = Request::get("/stream").body(Body::from("abc")).unwrap();
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.1:4567".parse().unwrap()));
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let (_, lines) = send(devices, &logger, &memory, req, upstream).await;
    assert_eq!(lines[0]["bytes_in"], 3);
    assert_eq!(lines[0]["bytes_out"], 5);
    assert_eq!(lines[0]["complete"], true);
    assert!(
        lines[0]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}

#[test]
fn device_phases_are_the_configured_ones_plus_the_capture() {
    let phases = |configured: &[LogPhase]| memory_device(options(configured)).0.phases();
    let with_headers = |configured: &[LogPhase]| {
        let options = LoggingOptions {
            include_headers: true,
            ..options(configured)
        };
        memory_device(options).0.phases()
    };
    assert_eq!(phases(&[]), Phases::NONE);
    assert_eq!(with_headers(&[]), Phases::NONE);
    assert_eq!(phases(&[LogPhase::Request]), Phases::only(Phase::Request));
    // `response` lines are written at `on_complete`, once the body has gone; without headers
    // to capture, nothing needs `on_request`.
    assert_eq!(
        phases(&[LogPhase::Response]),
        Phases::only(Phase::Response).with(Phase::Complete)
    );
    assert_eq!(phases(&[LogPhase::Error]), Phases::only(Phase::Error));
    // Headers are captured at `on_request` for the later lines.
    assert_eq!(
        with_headers(&[LogPhase::Response]),
        Phases::only(Phase::Request)
            .with(Phase::Response)
            .with(Phase::Complete)
    );
    assert_eq!(
        with_headers(&[LogPhase::Error]),
        Phases::only(Phase::Request).with(Phase::Error)
    );
    let all = phases(&LogPhase::ALL);
    for phase in [
        Phase::Request,
        Phase::BeforeProxy,
        Phase::AfterProxy,
        Phase::Response,
        Phase::Error,
    ] {
        assert!(all.contains(phase));
    }
    assert!(!all.contains(Phase::RequestBody));
    assert_eq!(memory_device(options(&[])).0.name(), "structured_logging");
}

#[tokio::test]
async fn no_phases_logs_nothing() {
    let (logger, memory) = memory_device(options(&[]));
    let devices: Vec<Arc<dyn Device>> = vec![logger.clone()];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let (_, lines) = send(devices, &logger, &memory, post("/x", "ping"), upstream).await;
    assert!(lines.is_empty());
}

// --- headers and identity ---

fn with_headers(req: Request<Body>) -> Request<Body> {
    let (mut head, body) = req.into_parts();
    for (name, value) in [
        ("user-agent", "curl/8"),
        ("authorization", "Bearer secret"),
        ("cookie", "session=secret"),
        ("x-multi", "one"),
        ("x-multi", "two"),
    ] {
        head.headers.append(name, HeaderValue::from_static(value));
    }
    Request::from_parts(head, body)
}

fn names(list: &[&'static str]) -> Vec<http::HeaderName> {
    list.iter()
        .map(|n| http::HeaderName::from_static(n))
        .collect()
}

#[tokio::test]
async fn allowed_headers_are_logged_and_redacted_ones_masked() {
    let (logger, memory) = memory_device(LoggingOptions {
        include_headers: true,
        allowed_headers: names(&["user-agent", "authorization", "x-multi", "x-absent"]),
        redacted_headers: names(&["authorization", "cookie"]),
        ..options(&[LogPhase::Request, LogPhase::Response])
    });
    let devices: Vec<Arc<dyn Device>> = vec![logger.clone()];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let req = with_headers(post("/x", "ping"));
    let (_, lines) = send(devices, &logger, &memory, req, upstream).await;
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(
            line["headers"],
            json!({"user-agent": "curl/8", "authorization": "[redacted]", "x-multi": "one, two"}),
            "{line}"
        );
    }
    let raw = String::from_utf8(memory.0.lock().unwrap().clone()).unwrap();
    assert!(!raw.contains("secret"), "{raw}");
}

#[tokio::test]
async fn an_empty_allow_list_logs_every_header_with_redaction() {
    let (logger, memory) = memory_device(LoggingOptions {
        include_headers: true,
        redacted_headers: names(&["authorization", "cookie"]),
        ..LoggingOptions::default()
    });
    let devices: Vec<Arc<dyn Device>> = vec![logger.clone()];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let req = with_headers(post("/x", "ping"));
    let (_, lines) = send(devices, &logger, &memory, req, upstream).await;
    let headers = &lines[0]["headers"];
    assert_eq!(headers["authorization"], "[redacted]");
    assert_eq!(headers["cookie"], "[redacted]");
    assert_eq!(headers["user-agent"], "curl/8");
    assert_eq!(headers["x-multi"], "one, two");
    assert_eq!(headers["content-length"], "4");
    assert!(!lines[0].to_string().contains("secret"));
}

#[tokio::test]
async fn headers_and_identity_are_left_out_unless_enabled() {
    let (logger, memory) = memory_device(LoggingOptions {
        identity: Some(identity_extractor()),
        allowed_headers: names(&["user-agent"]),
        ..LoggingOptions::default()
    });
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(Identify), logger.clone()];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let req = with_headers(post("/x", "ping"));
    let (_, lines) = send(devices, &logger, &memory, req, upstream).await;
    assert!(lines[0].get("headers").is_none());
    assert!(lines[0].get("identity").is_none());
}

#[tokio::test]
async fn identity_fields_come_from_the_extractor() {
    let (logger, memory) = memory_device(LoggingOptions {
        include_identity: true,
        identity: Some(identity_extractor()),
        ..options(&[LogPhase::Request, LogPhase::Response])
    });
    // The logging device runs before the identity device: its `request` line cannot see the
    // identity yet, its `response` line does.
    let devices: Vec<Arc<dyn Device>> = vec![logger.clone(), Arc::new(Identify)];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let (_, lines) = send(devices, &logger, &memory, post("/x", "ping"), upstream).await;
    assert_eq!(lines[0]["event"], "request");
    assert_eq!(lines[0]["identity"], Value::Null);
    assert_eq!(lines[1]["event"], "response");
    assert_eq!(
        lines[1]["identity"],
        json!({"ip": "203.0.113.9", "bot": false})
    );
}

#[tokio::test]
async fn identity_without_an_extractor_is_null() {
    let (logger, memory) = memory_device(LoggingOptions {
        include_identity: true,
        ..LoggingOptions::default()
    });
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(Identify), logger.clone()];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let (_, lines) = send(devices, &logger, &memory, post("/x", "ping"), upstream).await;
    assert_eq!(lines[0]["identity"], Value::Null);
}

#[tokio::test]
async fn two_logging_devices_keep_their_own_captures() {
    let (plain, plain_memory) = memory_device(LoggingOptions::default());
    let (with_ua, ua_memory) = memory_device(LoggingOptions {
        include_headers: true,
        allowed_headers: names(&["user-agent"]),
        ..LoggingOptions::default()
    });
    let devices: Vec<Arc<dyn Device>> = vec![plain.clone(), with_ua.clone()];
    let upstream = Upstream::Ok {
        content_length: None,
    };
    let req = with_headers(post("/x", "ping"));
    let (_, lines) = send(devices, &with_ua, &ua_memory, req, upstream).await;
    assert_eq!(lines[0]["headers"], json!({"user-agent": "curl/8"}));
    plain.writer().flush(WAIT).unwrap();
    let lines = plain_memory.lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].get("headers").is_none());
    assert_eq!(lines[0]["bytes_in"], 4);
}

// --- the bounded queue ---

fn ctx(id: &'static str) -> RequestCtx {
    RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static(id),
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        method: Method::GET,
        uri: "/q".parse().unwrap(),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        received: Default::default(),
    })
}

/// What `on_complete` sees of a whole exchange with no body either way.
const NOTHING_SENT: Transfer = Transfer {
    bytes_in: 0,
    bytes_out: 0,
    complete: true,
};

/// Runs `on_request`, `on_response` and `on_complete` directly, as the pipeline does, and
/// returns how long the last two (which write the line) took.
fn one_request(device: &StructuredLogging, id: &'static str) -> Duration {
    let mut ctx = ctx(id);
    let (mut req, ()) = Request::get("/q").body(()).unwrap().into_parts();
    device.on_request(&mut ctx, &mut req).unwrap();
    let (mut head, ()) = Response::new(()).into_parts();
    let mut res = ResponseCtx {
        head: &mut head,
        origin: Origin::Synthetic,
    };
    let start = Instant::now();
    device.on_response(&mut ctx, &mut res).unwrap();
    device.on_complete(&ctx, &NOTHING_SENT);
    start.elapsed()
}

#[test]
fn device_logs_are_written_before_the_next_line_with_the_request_id() {
    let (device, memory) = memory_device(options(&[LogPhase::Response]));
    let mut ctx = ctx("req-7");
    let (mut req, ()) = Request::get("/q").body(()).unwrap().into_parts();
    device.on_request(&mut ctx, &mut req).unwrap();
    for (level, message) in [("info", "scored 0.2"), ("warn", "bot-like")] {
        ctx.info().device_logs.push(snakeway_core::DeviceLog {
            device: "scorer".into(),
            level,
            message: message.into(),
        });
    }
    let (mut head, ()) = Response::new(()).into_parts();
    let mut res = ResponseCtx {
        head: &mut head,
        origin: Origin::Upstream,
    };
    device.on_response(&mut ctx, &mut res).unwrap();
    device.on_complete(&ctx, &NOTHING_SENT);
    device.writer().flush(WAIT).unwrap();
    let lines = memory.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, (level, message)) in lines
        .iter()
        .zip([("info", "scored 0.2"), ("warn", "bot-like")])
    {
        assert_eq!(line["event"], "device_log");
        assert_eq!(line["request_id"], "req-7");
        assert_eq!(line["device"], "scorer");
        assert_eq!(line["level"], level);
        assert_eq!(line["message"], message);
    }
    assert_eq!(lines[2]["event"], "response");
    assert!(ctx.info().device_logs.take().is_empty(), "written once");
}

/// A writer on a sink that stalls at its first write, once the first line reached it.
fn stalled_writer(queue_bytes: usize) -> (LogWriter, mpsc::SyncSender<()>, Memory) {
    let (entered_tx, entered) = mpsc::sync_channel(1);
    let (release, release_rx) = mpsc::sync_channel(1);
    let out = Memory::default();
    let sink = Stalled {
        entered: entered_tx,
        release: release_rx,
        stalled: false,
        out: out.clone(),
    };
    let writer = LogWriter::with_sink(sink, queue_bytes).unwrap();
    assert!(writer.send(line("first", 100)));
    entered
        .recv_timeout(WAIT)
        .expect("the writer thread reached the sink");
    (writer, release, out)
}

/// A JSON line of exactly `len` bytes, newline included.
/// (In a buffer of exactly that capacity: the queue counts buffers' capacities.)
fn line(id: &str, len: usize) -> Vec<u8> {
    let head = format!("{{\"request_id\":\"{id}\",\"pad\":\"");
    let pad = len - head.len() - "\"}\n".len();
    let mut line = Vec::with_capacity(len);
    line.extend_from_slice(head.as_bytes());
    line.resize(head.len() + pad, b'x');
    line.extend_from_slice(b"\"}\n");
    assert_eq!((line.len(), line.capacity()), (len, len));
    line
}

#[test]
fn the_queue_stops_at_its_byte_bound_and_counts_what_it_drops() {
    const BOUND: usize = 4096;
    let (writer, release, out) = stalled_writer(BOUND);
    // The first line is out of the queue (in the thread's buffer, which the stalled sink is
    // flushing); the queue is empty and takes 40 lines of 100 bytes.
    assert_eq!(writer.queued_bytes(), 0);
    let mut accepted = 0;
    for _ in 0..1000 {
        accepted += usize::from(writer.send(line("more", 100)));
    }
    assert_eq!(accepted, BOUND / 100);
    assert_eq!(writer.queued_bytes(), accepted * 100);
    assert_eq!(writer.dropped(), (1000 - accepted) as u64);
    // What is left (96 bytes) takes a line that fits exactly, and nothing more.
    assert!(writer.send(line("exact", BOUND - writer.queued_bytes())));
    assert_eq!(writer.queued_bytes(), BOUND);
    assert!(!writer.send(line("one-more", 40)));
    // A line larger than the whole queue is dropped too, not written in pieces.
    assert!(!writer.send(line("huge", BOUND + 1)));
    let dropped = 1000 - accepted as u64 + 2;
    assert_eq!(writer.dropped(), dropped);
    assert_eq!(writer.queue_bytes(), BOUND);

    release.send(()).unwrap();
    writer.flush(WAIT).unwrap();
    assert_eq!(writer.queued_bytes(), 0);
    assert_eq!(writer.written(), 1 + accepted as u64 + 1);
    assert_eq!(writer.dropped(), dropped);
    let lines = out.lines();
    assert_eq!(lines.len(), 1 + accepted + 1);
    assert_eq!(lines[0]["request_id"], "first");
    assert_eq!(lines[accepted + 1]["request_id"], "exact");
    // Once drained, the queue takes lines again.
    assert!(writer.send(line("later", 100)));
    writer.flush(WAIT).unwrap();
    assert_eq!(out.lines().len(), accepted + 3);
}

#[test]
fn a_full_queue_drops_and_counts_lines_without_blocking_requests() {
    const BOUND: usize = 4096;
    const REQUESTS: usize = 200;
    let (writer, release, out) = stalled_writer(BOUND);
    let device = StructuredLogging::new(LoggingOptions::default(), writer.clone());

    // The queue fills up, and every further line is dropped at once.
    let started = Instant::now();
    let slowest = (0..REQUESTS)
        .map(|_| one_request(&device, "more"))
        .max()
        .unwrap();
    let total = started.elapsed();
    assert!(slowest < Duration::from_millis(100), "slowest {slowest:?}");
    assert!(total < Duration::from_secs(2), "total {total:?}");
    let queued = writer.queued_bytes();
    assert!(queued <= BOUND, "{queued} bytes queued");
    let dropped = writer.dropped();
    assert!(dropped > 0 && dropped < REQUESTS as u64, "{dropped}");
    assert_eq!(writer.written(), 1, "only the first line left the queue");
    // Flushing cannot get through while the sink is stalled.
    assert_eq!(
        writer.flush(Duration::from_millis(20)).unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );

    release.send(()).unwrap();
    writer.flush(WAIT).unwrap();
    // Every line is either written or counted as dropped: none vanishes.
    let kept = REQUESTS as u64 - dropped;
    assert_eq!(writer.written(), 1 + kept);
    assert_eq!(writer.dropped(), dropped);
    let lines = out.lines();
    assert_eq!(lines.len() as u64, 1 + kept);
    assert_eq!(lines[0]["request_id"], "first");
    assert!(lines[1..].iter().all(|l| l["request_id"] == "more"));
}

#[test]
fn lines_are_dropped_and_counted_when_the_writer_thread_died() {
    struct Exploding;
    impl Write for Exploding {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            panic!("sink exploded")
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let writer = LogWriter::with_sink(Exploding, DEFAULT_QUEUE_BYTES).unwrap();
    let device = StructuredLogging::new(LoggingOptions::default(), writer.clone());
    one_request(&device, "a");
    // The thread panics at its first flush; from then on lines are dropped, not blocked on.
    let deadline = Instant::now() + WAIT;
    while writer.flush(Duration::from_millis(50)).is_ok() || writer.dropped() == 0 {
        one_request(&device, "b");
        assert!(Instant::now() < deadline, "the thread never died");
    }
    let dropped = writer.dropped();
    one_request(&device, "c");
    assert_eq!(writer.dropped(), dropped + 1);
}

// --- file output ---

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "snakeway-logging-{}-{name}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn file_output_appends_and_is_flushed() {
    let file = TempFile::new("append");
    std::fs::write(&file.0, "an older line\n").unwrap();
    let output = Output::File(file.0.clone());

    let device = StructuredLogging::open(LoggingOptions {
        output: output.clone(),
        ..LoggingOptions::default()
    })
    .unwrap();
    one_request(&device, "one");
    one_request(&device, "two");
    device.writer().flush(WAIT).unwrap();
    let lines = file.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], "an older line");
    let second: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(second["request_id"], "two");
    assert_eq!(second["origin"], "synthetic");
    assert_eq!(second["status"], 200);

    // A reload builds a new writer, which reopens the path and appends. If the file was moved
    // away (rotation), it is created anew.
    let rotated = TempFile::new("append-rotated");
    std::fs::rename(&file.0, &rotated.0).unwrap();
    let reopened = StructuredLogging::new(
        LoggingOptions::default(),
        LogWriter::open(&output, DEFAULT_QUEUE_BYTES).unwrap(),
    );
    one_request(&reopened, "three");
    reopened.writer().flush(WAIT).unwrap();
    assert_eq!(file.lines().len(), 1);
    // The old writer still writes to the file it opened.
    one_request(&device, "four");
    device.writer().flush(WAIT).unwrap();
    assert_eq!(rotated.lines().len(), 4);
}

#[test]
fn the_writer_drains_and_flushes_when_the_last_clone_is_dropped() {
    let file = TempFile::new("drain");
    let writer = LogWriter::open(&Output::File(file.0.clone()), DEFAULT_QUEUE_BYTES).unwrap();
    let device = StructuredLogging::new(LoggingOptions::default(), writer);
    for _ in 0..100 {
        one_request(&device, "drained");
    }
    drop(device);
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&file.0).unwrap().lines().count() < 100 {
        assert!(Instant::now() < deadline, "not drained");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(file.lines().len(), 100);
}

#[test]
fn opening_an_unwritable_file_fails() {
    let output = Output::File(PathBuf::from("/nonexistent-dir/snakeway/access.log"));
    assert!(LogWriter::open(&output, DEFAULT_QUEUE_BYTES).is_err());
}

// --- the standalone layer ---

#[tokio::test]
async fn the_standalone_layer_logs_around_a_plain_service() {
    let (logger, memory) = memory_device(LoggingOptions {
        include_headers: true,
        allowed_headers: names(&["user-agent"]),
        ..options(&[LogPhase::Response, LogPhase::Error])
    });
    let writer = logger.writer().clone();
    let device = Arc::into_inner(logger).unwrap();
    let layer = device.into_layer();
    // Like an axum handler: it knows nothing of the pipeline's context.
    let app = service_fn(|req: Request<Body>| async move {
        assert!(req.extensions().get::<RequestCtx>().is_none());
        if req.uri().path() == "/fail" {
            return Err(Error::new(ErrorKind::Internal, "handler failed"));
        }
        Ok::<_, Error>(Response::new(Body::from("ok")))
    });
    let service = ServiceBuilder::new().layer(layer).service(app);

    let response = service
        .clone()
        .oneshot(with_headers(post("/ok", "ping")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The `response` line is written once the body has gone.
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    let response = service.oneshot(post("/fail", "ping")).await.unwrap();
    assert_eq!(response.status(), 500);
    drop(response);

    writer.flush(WAIT).unwrap();
    let lines = memory.lines();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["response", "error", "response"]);
    // The capture made at `on_request` came back around the plain service.
    assert_eq!(lines[0]["headers"], json!({"user-agent": "curl/8"}));
    assert_eq!(lines[0]["bytes_in"], 0, "the handler did not read the body");
    assert_eq!(lines[0]["bytes_out"], 2);
    assert_eq!(lines[0]["complete"], true);
    assert_eq!(lines[1]["error"]["kind"], "internal");
    assert_eq!(lines[2]["status"], 500);
    assert_eq!(lines[2]["complete"], false, "dropped unread");
}

#[test]
fn the_layer_meets_axums_bounds() {
    fn assert_layer<L: Clone + Send + Sync + 'static>(_: &L) {}
    fn assert_service<S: Clone + Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    type App = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Error>;
    type Svc = <StructuredLoggingLayer as tower::Layer<App>>::Service;
    type Fut = <Svc as tower::Service<Request<Body>>>::Future;

    let (logger, _) = memory_device(LoggingOptions::default());
    let layer = Arc::into_inner(logger).unwrap().into_layer();
    assert_layer(&layer);
    assert_service::<Svc>();
    assert_send::<Fut>();
    assert_service::<LogWriter>();
    let _: fn(Svc) -> Result<(), std::convert::Infallible> = |_| Ok(());
}

// --- names ---

#[test]
fn phase_and_output_names() {
    for phase in LogPhase::ALL {
        assert_eq!(phase.as_str().parse::<LogPhase>().unwrap(), phase);
        assert_eq!(phase.as_str(), phase.phase().as_str());
    }
    let err = "respones".parse::<LogPhase>().unwrap_err();
    assert!(err.to_string().contains("\"respones\""), "{err}");
    assert_eq!("stdout".parse::<Output>().unwrap(), Output::Stdout);
    assert_eq!("stderr".parse::<Output>().unwrap(), Output::Stderr);
    assert_eq!(
        "logs/access.log".parse::<Output>().unwrap(),
        Output::File("logs/access.log".into())
    );
    let options = LoggingOptions::default();
    assert_eq!(options.phases, [LogPhase::Response]);
    assert_eq!(options.queue_bytes, 16 * 1024 * 1024);
    assert!(format!("{options:?}").contains("queue_bytes"));
}

/// Counts the warnings logged on the thread it is the default subscriber of.
#[derive(Clone, Default)]
struct Warnings(Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn drops_are_warned_about_at_most_once_a_second() {
    let (writer, release, _out) = stalled_writer(4096);
    let warnings = Warnings::default();
    let count = || warnings.0.load(std::sync::atomic::Ordering::Relaxed);
    tracing::subscriber::with_default(warnings.clone(), || {
        for _ in 0..1000 {
            writer.send(line("x", 100));
        }
        assert_eq!(writer.dropped(), 1000 - 40);
        assert_eq!(
            count(),
            1,
            "the first drop warns, the next ones within a second do not"
        );
        // A second later, the next drop warns again.
        std::thread::sleep(Duration::from_millis(1050));
        assert!(!writer.send(line("x", 100)));
        assert_eq!(count(), 2);
        assert!(!writer.send(line("x", 100)));
        assert_eq!(count(), 2);
    });
    release.send(()).unwrap();
}
