//! WASM device costs: a hook on a live instance (15 request headers), a whole request through
//! one header-adding device (fresh instance + `init` + hook + release), and the bare
//! instantiation.

#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Method, Request, Uri};
use snakeway_core::{Device, Origin, RequestCtx, RequestInfo, ResponseCtx};
use snakeway_wasm::{WasmDevice, WasmEngine, WasmLimits};

fn guest(name: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/wasm");
    let path = root.join("out").join(format!("{name}.wasm"));
    if !path.exists() {
        let ok = std::process::Command::new(root.join("build.sh"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "examples/wasm/build.sh failed");
    }
    std::fs::read(path).unwrap()
}

fn ctx() -> RequestCtx {
    RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("bench-1"),
        peer: ([127, 0, 0, 1], 1).into(),
        method: Method::GET,
        uri: Uri::from_static("/api/items?page=2"),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
    })
}

fn head() -> http::request::Parts {
    let mut req = Request::get("/api/items?page=2");
    for (n, v) in [
        ("host", "example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://example.com/"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-request-id", "bench-1"),
        ("x-forwarded-for", "192.0.2.1"),
        ("x-forwarded-proto", "https"),
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("dnt", "1"),
    ] {
        req = req.header(n, v);
    }
    req.body(()).unwrap().into_parts().0
}

fn bench(c: &mut Criterion) {
    let engine = WasmEngine::shared().unwrap();
    let config = r#"{"name": "x-added", "value": "1"}"#;
    // A generous limit: on a shared machine a thread descheduled mid-call would otherwise
    // hit the wall-clock deadline during millions of iterations.
    let limits = WasmLimits {
        timeout: std::time::Duration::from_secs(1),
        ..WasmLimits::default()
    };
    let device =
        WasmDevice::from_bytes(&engine, "add", &guest("add-header"), config, limits).unwrap();

    // One request kept alive: the first call instantiates, the measured ones reuse it.
    let mut live = ctx();
    let mut h = head();
    device.on_request(&mut live, &mut h).unwrap();
    assert_eq!(h.headers.len(), 16);
    c.bench_function("wasm/hook_live_instance_15_headers", |b| {
        b.iter(|| device.on_request(&mut live, &mut h).unwrap())
    });

    // A whole request through the device: instance + init + on-request + release.
    let (mut res_head, _) = http::Response::new(()).into_parts();
    c.bench_function("wasm/request_fresh_instance_15_headers", |b| {
        b.iter(|| {
            let mut ctx = ctx();
            let mut h = head();
            device.on_request(&mut ctx, &mut h).unwrap();
            let mut res = ResponseCtx {
                head: &mut res_head,
                origin: Origin::Upstream,
            };
            device.on_response(&mut ctx, &mut res).unwrap();
        })
    });
    assert_eq!(
        device.live_instances(),
        1,
        "only the long-lived request holds one"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
