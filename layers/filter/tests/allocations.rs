//! Heap allocations of the request filter, counted on the request's thread by a counting
//! global allocator (`allocation-counter`): a request that passes costs none.

#![allow(missing_docs)]

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, request};
use snakeway_core::{BodyCtx, Device, Flow, Phase, RequestCtx, RequestInfo};
use snakeway_filter::{FilterOptions, RequestFilter};

/// The rules of the design's `[[device]]` example, with a header allow list.
fn rules() -> FilterOptions {
    FilterOptions {
        allow_methods: vec![Method::GET, Method::POST, Method::HEAD],
        deny_methods: vec![Method::TRACE],
        required_headers: vec![http::header::HOST],
        deny_headers: vec![HeaderName::from_static("x-original-url")],
        allow_headers: ["accept", "user-agent", "cookie", "content-type"]
            .map(HeaderName::from_static)
            .to_vec(),
        max_header_bytes: Some(16384),
        max_body_bytes: Some(1_048_576),
        deny_status: Some(StatusCode::FORBIDDEN),
    }
}

fn head(method: Method) -> request::Parts {
    let value = HeaderValue::from_static;
    Request::builder()
        .method(method)
        .uri("/api/items?page=2")
        .header("host", value("example.com"))
        .header("user-agent", value("Mozilla/5.0 (X11; Linux x86_64)"))
        .header("accept", value("application/json"))
        .header("cookie", value("session=0123456789abcdef"))
        .header("content-length", value("512"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn ctx() -> RequestCtx {
    RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("0123456789abcdef"),
        peer: ([127, 0, 0, 1], 40000).into(),
        method: Method::GET,
        uri: "/api/items".parse().unwrap(),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        received: Default::default(),
    })
}

#[test]
fn a_request_that_passes_allocates_nothing() {
    let filter = RequestFilter::new(rules());
    assert!(filter.phases().contains(Phase::Request));
    assert!(filter.phases().contains(Phase::RequestBody));
    let mut ctx = ctx();
    let mut req = head(Method::POST);
    let body = BodyCtx {
        info: ctx.info().clone(),
        bytes_before: 65_536,
    };
    let chunk = Bytes::from(vec![0u8; 16_384]);
    let counted = allocation_counter::measure(|| {
        for _ in 0..100 {
            let flow = filter.on_request(&mut ctx, &mut req).unwrap();
            assert!(matches!(flow, Flow::Continue));
            let flow = filter.on_request_body(&body, &chunk, false).unwrap();
            assert!(matches!(flow, Flow::Continue));
        }
    });
    eprintln!(
        "request_filter pass: {} allocations in 100 requests",
        counted.count_total
    );
    assert_eq!(counted.count_total, 0);

    // A refusal builds its answer (so the count above is not vacuous).
    let mut trace = head(Method::TRACE);
    let counted = allocation_counter::measure(|| {
        let flow = filter.on_request(&mut ctx, &mut trace).unwrap();
        assert!(matches!(flow, Flow::Respond(_)));
    });
    assert!(counted.count_total > 0);
}
