//! Per-request cost of the structured-logging device: the hooks it takes part in for one
//! request (`on_request` when it captures headers, `on_response`, `on_complete`), with the
//! `response` line formatted and handed to the writer thread (which writes to `/dev/null`).
//!
//! `cargo bench -p snakeway-logging`

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use serde_json::{Map, Value, json};
use snakeway_core::{
    BodyBytes, Device, Origin, Phase, RequestCtx, RequestInfo, ResponseCtx, Transfer,
};
use snakeway_logging::{LogPhase, LogWriter, LoggingOptions, Output, StructuredLogging};

#[derive(Clone)]
struct Client;

/// A sink that never completes a write.
struct Stalled(std::sync::mpsc::Receiver<()>);

impl std::io::Write for Stalled {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.recv();
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.write(&[]).map(drop)
    }
}

fn device(options: LoggingOptions) -> StructuredLogging {
    let writer = LogWriter::open(&Output::File(PathBuf::from("/dev/null")), 16 << 20).unwrap();
    StructuredLogging::new(options, writer)
}

fn request() -> http::request::Parts {
    Request::post("/api/users/42")
        .header("host", "api.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
        )
        .header("accept", "application/json")
        .header("authorization", "Bearer abcdef")
        .header("content-length", "128")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn one(device: &StructuredLogging, head: &http::request::Parts) {
    let mut ctx = RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("0b5c1f7e9d2a4c3b8e6f0a1d2c3b4a59"),
        peer: SocketAddr::from(([10, 0, 0, 7], 51234)),
        method: Method::POST,
        uri: "/api/users/42".parse().unwrap(),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        // The pipeline counts body bytes when a device takes part in `on_complete`.
        received: BodyBytes::counted(),
    });
    ctx.route = Some("/api".into());
    ctx.service = Some("api".into());
    ctx.extensions.insert(Client);
    let mut req = head.clone();
    // As the pipeline does: only the phases the device takes part in.
    if device.phases().contains(Phase::Request) {
        device.on_request(&mut ctx, &mut req).unwrap();
    }
    let (mut res, ()) = Response::builder()
        .header("content-length", "512")
        .body(())
        .unwrap()
        .into_parts();
    let mut res = ResponseCtx {
        head: &mut res,
        origin: Origin::Upstream,
    };
    device.on_response(&mut ctx, &mut res).unwrap();
    device.on_complete(
        &ctx,
        &Transfer {
            bytes_in: 0,
            bytes_out: 512,
            complete: true,
        },
    );
    black_box(&ctx);
}

fn bench(c: &mut Criterion) {
    let head = request();
    let mut group = c.benchmark_group("structured_logging");

    let plain = device(LoggingOptions::default());
    group.bench_function("response_line", |b| b.iter(|| one(&plain, &head)));

    let full = device(LoggingOptions {
        phases: vec![LogPhase::Response],
        include_headers: true,
        allowed_headers: ["user-agent", "accept", "authorization"]
            .map(HeaderName::from_static)
            .to_vec(),
        redacted_headers: vec![HeaderName::from_static("authorization")],
        include_identity: true,
        identity: Some(Arc::new(|ctx: &RequestCtx| {
            ctx.extensions.get::<Client>()?;
            let mut fields = Map::new();
            fields.insert("ip".into(), json!("203.0.113.9"));
            fields.insert("country".into(), json!("NL"));
            fields.insert("bot".into(), Value::Bool(false));
            Some(fields)
        })),
        ..LoggingOptions::default()
    });
    group.bench_function("response_line_headers_identity", |b| {
        b.iter(|| one(&full, &head))
    });

    // Formatting alone: the queue holds no byte, so every line is formatted and then dropped
    // (no wake-up of the writer thread, no write).
    let (_keep_stalled, stalled) = std::sync::mpsc::channel::<()>();
    let sink = Stalled(stalled);
    let dropped = StructuredLogging::new(
        LoggingOptions::default(),
        LogWriter::with_sink(sink, 0).unwrap(),
    );
    group.bench_function("response_line_format_only", |b| {
        b.iter(|| one(&dropped, &head))
    });
    group.finish();

    // The benchmark formats lines faster than one thread may write them; report what the
    // queue dropped (the cost of a dropped line is the same formatting without the write).
    for (name, device) in [("response_line", &plain), ("headers_identity", &full)] {
        let _ = device.writer().flush(Duration::from_secs(10));
        eprintln!(
            "{name}: written {} dropped {}",
            device.writer().written(),
            device.writer().dropped()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
