//! The request filter's per-request cost: `on_request` for a typical browser-like request under
//! a typical rule set (the `[[device]]` example of the design), with and without a header allow
//! list, the cost of a refusal, and the body hook per chunk.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, request};
use snakeway_core::{BodyCtx, Device, RequestCtx, RequestInfo};
use snakeway_filter::{FilterOptions, RequestFilter};

fn typical_rules() -> FilterOptions {
    FilterOptions {
        allow_methods: vec![Method::GET, Method::POST, Method::HEAD],
        deny_methods: vec![Method::TRACE],
        required_headers: vec![http::header::HOST],
        deny_headers: vec![HeaderName::from_static("x-original-url")],
        allow_headers: Vec::new(),
        max_header_bytes: Some(16384),
        max_body_bytes: Some(1_048_576),
        deny_status: Some(StatusCode::FORBIDDEN),
    }
}

fn with_allow_list() -> FilterOptions {
    let allowed = [
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "cookie",
        "origin",
        "referer",
        "user-agent",
        "authorization",
        "content-type",
        "if-none-match",
        "if-modified-since",
    ];
    FilterOptions {
        allow_headers: allowed.map(HeaderName::from_static).to_vec(),
        ..typical_rules()
    }
}

/// A browser-like GET: ten headers.
fn typical_request(method: Method) -> request::Parts {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri("https://example.com/api/items?page=2")
        .header("host", "example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json, text/plain, */*")
        .header("accept-language", "en-US,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("referer", "https://example.com/items")
        .header(
            "cookie",
            "session=0123456789abcdef0123456789abcdef; theme=dark",
        )
        .header("cache-control", "no-cache")
        .header("x-request-id", "0123456789abcdef0123456789abcdef")
        .header("connection", "keep-alive")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

fn ctx() -> RequestCtx {
    RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
        peer: ([127, 0, 0, 1], 40000).into(),
        method: Method::GET,
        uri: "/api/items".parse().unwrap(),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        received: Default::default(),
    })
}

fn bench(c: &mut Criterion) {
    let mut ctx = ctx();
    let mut group = c.benchmark_group("request_filter");

    let filter = RequestFilter::new(typical_rules());
    let mut req = typical_request(Method::GET);
    group.bench_function("on_request/pass/typical_rules", |b| {
        b.iter(|| black_box(filter.on_request(&mut ctx, black_box(&mut req))).is_ok())
    });

    let allow_listed = RequestFilter::new(with_allow_list());
    group.bench_function("on_request/pass/with_allow_headers", |b| {
        b.iter(|| black_box(allow_listed.on_request(&mut ctx, black_box(&mut req))).is_ok())
    });

    let open = RequestFilter::new(FilterOptions::default());
    group.bench_function("on_request/pass/no_rules", |b| {
        b.iter(|| black_box(open.on_request(&mut ctx, black_box(&mut req))).is_ok())
    });

    let mut trace = typical_request(Method::TRACE);
    group.bench_function("on_request/refuse/method", |b| {
        b.iter(|| black_box(filter.on_request(&mut ctx, black_box(&mut trace))).is_ok())
    });

    let body_ctx = BodyCtx {
        info: ctx.info().clone(),
        bytes_before: 65536,
    };
    let chunk = Bytes::from(vec![0u8; 16384]);
    group.bench_function("on_request_body/pass", |b| {
        b.iter(|| black_box(filter.on_request_body(&body_ctx, black_box(&chunk), false)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
