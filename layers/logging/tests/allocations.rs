//! Heap allocations per logged request, counted on the request's thread by a counting global
//! allocator (`allocation-counter`; the writer thread's work is not counted). Run with
//! `--nocapture` to see the figures.

#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, Request, Response};
use serde_json::{Map, Value};
use snakeway_core::{
    BodyBytes, Device, Origin, Phase, RequestCtx, RequestInfo, ResponseCtx, Transfer,
};
use snakeway_logging::{LogPhase, LogWriter, LoggingOptions, Output, StructuredLogging};

/// Requests measured after the warm-up.
const REQUESTS: u64 = 200;

/// What another device (identity) left in the request context.
#[derive(Clone)]
struct Client;

fn device(options: LoggingOptions) -> StructuredLogging {
    let writer = LogWriter::open(&Output::File(PathBuf::from("/dev/null")), 1 << 20).unwrap();
    StructuredLogging::new(options, writer)
}

/// A request head whose header values are shared, as hyper's are (slices of the connection's
/// read buffer): a clone counts a reference and copies nothing.
fn head() -> http::request::Parts {
    let value = HeaderValue::from_static;
    Request::post("/api/users/42")
        .header("host", value("api.example.com"))
        .header(
            "user-agent",
            value("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
        )
        .header("accept", value("application/json"))
        .header("authorization", value("Bearer abcdef"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn ctx(with_other_extension: bool) -> RequestCtx {
    let mut ctx = RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("0b5c1f7e9d2a4c3b8e6f0a1d2c3b4a59"),
        peer: SocketAddr::from(([10, 0, 0, 7], 51234)),
        method: Method::POST,
        uri: "/api/users/42".parse().unwrap(),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        received: BodyBytes::counted(),
    });
    ctx.route = Some("/api".into());
    ctx.service = Some("api".into());
    if with_other_extension {
        ctx.extensions.insert(Client);
    }
    ctx
}

/// The hooks of one request as the pipeline calls them (only the device's phases), counting
/// what they allocate; the context and heads are built outside the count.
fn one(device: &StructuredLogging, with_other_extension: bool) -> u64 {
    let mut ctx = ctx(with_other_extension);
    let mut req = head();
    let (mut res, ()) = Response::builder().body(()).unwrap().into_parts();
    let transfer = Transfer {
        bytes_in: 0,
        bytes_out: 512,
        complete: true,
    };
    let counted = allocation_counter::measure(|| {
        if device.phases().contains(Phase::Request) {
            device.on_request(&mut ctx, &mut req).unwrap();
        }
        let mut res = ResponseCtx {
            head: &mut res,
            origin: Origin::Upstream,
        };
        device.on_response(&mut ctx, &mut res).unwrap();
        device.on_complete(&ctx, &transfer);
    });
    counted.count_total
}

/// Allocations per request, averaged over [`REQUESTS`] after a warm-up; the writer is flushed
/// after each request, so each line's buffer is back in the pool before the next.
fn per_request(device: &StructuredLogging, with_other_extension: bool) -> f64 {
    let flush = || device.writer().flush(Duration::from_secs(10)).unwrap();
    for _ in 0..10 {
        one(device, with_other_extension);
        flush();
    }
    let written = device.writer().written();
    let mut total = 0;
    for _ in 0..REQUESTS {
        total += one(device, with_other_extension);
        flush();
    }
    assert_eq!(
        device.writer().written() - written,
        REQUESTS,
        "one line each"
    );
    total as f64 / REQUESTS as f64
}

#[test]
fn a_response_line_allocates_only_the_note_of_the_response() {
    let plain = device(LoggingOptions::default());
    assert!(
        !plain.phases().contains(Phase::Request),
        "no `on_request` without headers or `request` lines"
    );
    // The note of the response in the context's extensions: a boxed value, plus the map itself
    // when no other device put anything there. The line's buffer comes from the pool, and the
    // writer's channel allocates a block every 31 lines.
    let alone = per_request(&plain, false);
    let beside_identity = per_request(&plain, true);
    eprintln!("response line: {alone:.2} allocations per request (empty extensions)");
    eprintln!("response line: {beside_identity:.2} allocations per request (beside identity)");
    assert!(alone <= 3.1, "{alone}");
    assert!(beside_identity <= 1.1, "{beside_identity}");
}

#[test]
fn headers_add_only_their_capture() {
    let full = device(LoggingOptions {
        phases: vec![LogPhase::Response],
        include_headers: true,
        allowed_headers: ["user-agent", "accept", "authorization"]
            .map(HeaderName::from_static)
            .to_vec(),
        redacted_headers: vec![HeaderName::from_static("authorization")],
        ..LoggingOptions::default()
    });
    // + the captured list (names and values are shared, not copied).
    let with_headers = per_request(&full, true);
    eprintln!("response line with 3 headers: {with_headers:.2} allocations per request");
    assert!(with_headers <= 2.1, "{with_headers}");
}

#[test]
fn identity_fields_cost_what_the_extractor_allocates() {
    let with_identity = device(LoggingOptions {
        include_identity: true,
        identity: Some(Arc::new(|ctx: &RequestCtx| {
            ctx.extensions.get::<Client>()?;
            let mut fields = Map::new();
            fields.insert("country".into(), Value::from("NL"));
            Some(fields)
        })),
        ..LoggingOptions::default()
    });
    let extracted = per_request(&with_identity, true);
    eprintln!("response line with identity: {extracted:.2} allocations per request");
    // The extractor's map: its node, its key and its value (the server's extractor allocates
    // per field likewise; see docs/benchmarks.md).
    assert!(extracted <= 4.1, "{extracted}");
}
