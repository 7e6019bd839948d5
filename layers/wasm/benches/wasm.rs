//! WASM device costs, every request with 15 headers: a hook on a live instance (for guests that
//! read nothing, one header, or everything), and whole requests through one device (fresh
//! instance + `init` + hook + release), with and without the pooling allocator.

#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Method, Request, Uri};
use snakeway_core::{Device, Origin, RequestCtx, RequestInfo, ResponseCtx};
use snakeway_wasm::{EngineOptions, WasmDevice, WasmEngine, WasmLimits};

/// An example guest, freshly built (`build.sh` is incremental).
fn guest(name: &str) -> Vec<u8> {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/wasm");
    BUILT.call_once(|| {
        let ok = std::process::Command::new(root.join("build.sh"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "examples/wasm/build.sh failed");
    });
    std::fs::read(root.join("out").join(format!("{name}.wasm"))).unwrap()
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
        received: Default::default(),
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

/// A generous limit: on a shared machine a thread descheduled mid-call would otherwise hit the
/// wall-clock backstop during millions of iterations.
fn limits() -> WasmLimits {
    WasmLimits {
        timeout: std::time::Duration::from_secs(1),
        ..WasmLimits::default()
    }
}

/// One request kept alive: the first call instantiates, the measured ones reuse the instance.
fn bench_live_hook(c: &mut Criterion, name: &str, device: &WasmDevice) {
    let mut live = ctx();
    let mut h = head();
    device.on_request(&mut live, &mut h).unwrap();
    c.bench_function(name, |b| {
        b.iter(|| device.on_request(&mut live, &mut h).unwrap())
    });
}

/// Whole requests through the device: instance + `init` + `on-request` + release.
fn bench_fresh_request(c: &mut Criterion, name: &str, device: &WasmDevice) {
    let (mut res_head, _) = http::Response::new(()).into_parts();
    let mut h = head();
    c.bench_function(name, |b| {
        b.iter(|| {
            let mut ctx = ctx();
            device.on_request(&mut ctx, &mut h).unwrap();
            let mut res = ResponseCtx {
                head: &mut res_head,
                origin: Origin::Upstream,
            };
            device.on_response(&mut ctx, &mut res).unwrap();
        })
    });
}

fn bench(c: &mut Criterion) {
    let engine = WasmEngine::new(EngineOptions::default()).unwrap();
    let add = r#"{"name": "x-added", "value": "1"}"#;
    let device = |engine: &WasmEngine, guest_name: &str, config: &str| {
        WasmDevice::from_bytes(engine, guest_name, &guest(guest_name), config, limits()).unwrap()
    };

    // add-header: reads nothing, sets one header.
    let add_header = device(&engine, "add-header", add);
    bench_live_hook(c, "wasm/hook_live/add_header", &add_header);
    // deny by header: reads one header (absent) and the context (the path), continues.
    let deny = device(
        &engine,
        "deny",
        r#"{"header": "x-block", "path_prefix": "/admin"}"#,
    );
    bench_live_hook(c, "wasm/hook_live/deny_reads_one_header", &deny);
    // testkit, quiet: reads the context, all 15 headers and the attribute map.
    let reads_all = device(
        &engine,
        "testkit",
        r#"{"quiet": true, "phases": ["on-request"]}"#,
    );
    // (It keeps a trace of its hooks in memory, so each measured call is the second hook of
    // a fresh request rather than the millionth of one.)
    c.bench_function("wasm/hook_live/testkit_reads_all_headers", |b| {
        b.iter_batched(
            || {
                let (mut ctx, mut h) = (ctx(), head());
                reads_all.on_request(&mut ctx, &mut h).unwrap();
                (ctx, h)
            },
            |(mut ctx, mut h)| {
                reads_all.on_request(&mut ctx, &mut h).unwrap();
                (ctx, h)
            },
            BatchSize::PerIteration,
        )
    });

    bench_fresh_request(c, "wasm/request_fresh_instance/add_header", &add_header);
    bench_fresh_request(c, "wasm/request_fresh_instance/deny", &deny);
    assert_eq!(
        add_header.live_instances(),
        0,
        "every request released its instance"
    );

    // The same without the pooling allocator: every instance maps its memory anew.
    let on_demand = WasmEngine::new(EngineOptions {
        pooling: false,
        cache_dir: None,
        ..EngineOptions::default()
    })
    .unwrap();
    let add_on_demand = device(&on_demand, "add-header", add);
    bench_fresh_request(
        c,
        "wasm/request_fresh_instance/add_header_no_pooling",
        &add_on_demand,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
