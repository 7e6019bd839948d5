//! WASM devices through the device pipeline (Tower stack, no sockets): every hook and action
//! of the example guests, attributes between devices, identity, instance lifetime, and every
//! failure mode under both policies.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::json;
use snakeway_core::{Body, Device, DeviceResult, Flow, Phase, Phases, RequestCtx};
use snakeway_identity::{Identity, IdentityOptions};
use snakeway_wasm::{Attributes, FailurePolicy, LoadErrorKind, WasmDevice, WasmLimits};
use support::*;

#[tokio::test]
async fn add_header_sets_request_and_response_headers() {
    let dev = device(
        "add",
        "add-header",
        json!({"name": "x-added", "value": "yes", "response_name": "x-served-by", "response_value": "wasm"}),
    );
    assert_eq!(
        dev.phases(),
        Phases::only(Phase::Request).with(Phase::Response)
    );
    let stack = Stack::new(vec![dev.clone()]);
    let res = stack.get("/a", &[("x-added", "client")]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-served-by"), "wasm");
    let seen = stack.last_seen();
    let added: Vec<_> = seen.headers.get_all("x-added").iter().collect();
    assert_eq!(added, ["yes"], "set-header replaces the client's value");
    assert_eq!(
        dev.live_instances(),
        0,
        "the instance is dropped with the request"
    );
}

#[tokio::test]
async fn deny_by_header_and_path_with_custom_response() {
    let dev = device(
        "deny",
        "deny",
        json!({"header": "x-block", "path_prefix": "/admin", "status": 451, "body": "nope\n"}),
    );
    let stack = Stack::new(vec![dev]);
    let res = stack.get("/admin/users", &[]).await;
    assert_eq!(res.status(), 451);
    assert_eq!(res.body(), "nope\n");
    assert_eq!(header(&res, "x-denied-by"), "wasm");
    let res = stack.get("/ok", &[("x-block", "1")]).await;
    assert_eq!(res.status(), 451);
    assert_eq!(stack.calls(), 0, "the upstream is never called");
    assert!(res.headers().contains_key("x-request-id"));
    let res = stack.get("/ok", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(stack.calls(), 1);
}

#[tokio::test]
async fn reroute_by_header_and_upstream_path_rewrite() {
    let dev = device(
        "reroute",
        "reroute",
        json!({"header": "x-version", "routes": {"v2": "/v2"}}),
    );
    let stack = Stack::new(vec![dev]);
    stack.get("/items?q=1", &[("x-version", "v2")]).await;
    assert_eq!(stack.last_seen().uri, "/v2/items?q=1");
    stack.get("/items", &[("x-version", "v9")]).await;
    assert_eq!(stack.last_seen().uri, "/items");

    let dev = device("prefix", "reroute", json!({"upstream_prefix": "/api"}));
    assert!(dev.guest_phases().contains(Phase::BeforeProxy));
    let stack = Stack::new(vec![dev]);
    stack.get("/items?q=1", &[]).await;
    assert_eq!(stack.last_seen().uri, "/api/items?q=1");
}

/// A builtin device reading what a WASM device left in the attribute map.
struct AttributeReader;

impl Device for AttributeReader {
    fn name(&self) -> &str {
        "reader"
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Request)
    }
    fn on_request(&self, ctx: &mut RequestCtx, head: &mut http::request::Parts) -> DeviceResult {
        let attributes = Attributes::of(ctx);
        let value = attributes.get("score").unwrap_or_else(|| "none".into());
        head.headers.insert("x-builtin-saw", value.parse().unwrap());
        attributes.set("builtin", "was-here");
        Ok(Flow::Continue)
    }
}

#[tokio::test]
async fn devices_pass_data_through_attributes() {
    let scorer = device(
        "scorer",
        "testkit",
        json!({"set_attribute": ["score", "7"]}),
    );
    let policy = device("policy", "testkit", json!({"read_attribute": "score"}));
    let after_builtin = device("late", "testkit", json!({"read_attribute": "builtin"}));
    let stack = Stack::new(vec![
        scorer,
        Arc::new(AttributeReader),
        policy,
        after_builtin,
    ]);
    let res = stack.get("/", &[]).await;
    assert_eq!(res.status(), 200);
    // Both testkit readers report through the same response header, in pipeline order.
    let read: Vec<_> = res
        .headers()
        .get_all("x-testkit-attribute")
        .iter()
        .collect();
    assert_eq!(read.len(), 1, "set-header: the last device's value wins");
    assert_eq!(read[0], "was-here");
    assert_eq!(stack.last_seen().headers["x-builtin-saw"], "7");

    // Without the scorer, the policy device reads nothing.
    let policy = device("policy", "testkit", json!({"read_attribute": "score"}));
    let stack = Stack::new(vec![policy]);
    let res = stack.get("/", &[]).await;
    assert_eq!(header(&res, "x-testkit-attribute"), "none");
}

#[tokio::test]
async fn every_hook_runs_on_one_instance_per_request() {
    let dev = device("kit", "testkit", json!({}));
    let stack = Stack::new(vec![dev.clone()]);
    for _ in 0..3 {
        let req = Request::post("/")
            .header("host", "h")
            .body(chunked(&["ab", "cd"]))
            .unwrap();
        let res = stack.send(req).await;
        assert_eq!(res.status(), 200);
        // A fresh instance per request: the trace holds this request's hooks only.
        assert_eq!(
            header(&res, "x-testkit-trace"),
            "on-request,before-proxy,on-request-body,on-request-body,on-request-body-end,after-proxy,on-response"
        );
        assert_eq!(header(&res, "x-testkit-body-bytes"), "4");
        assert_eq!(header(&res, "x-testkit-upstream-status"), "200");
        let seen = stack.last_seen();
        assert_eq!(seen.headers["x-testkit-request"], "seen");
        assert_eq!(seen.headers["x-testkit-before-proxy"], "1");
        assert_eq!(seen.body, "abcd");
    }
}

#[tokio::test]
async fn repeated_and_non_utf8_headers_reach_the_guest() {
    let dev = device("kit", "testkit", json!({"phases": ["on-request"]}));
    let stack = Stack::new(vec![dev]);
    let mut req = Request::get("/").header("host", "h");
    req = req.header("x-r", "1").header("x-r", "2");
    let mut req = req.body(Body::empty()).unwrap();
    req.headers_mut()
        .insert("x-bin", http::HeaderValue::from_bytes(b"\xff\xfe").unwrap());
    stack.send(req).await;
    let seen = stack.last_seen();
    // host, x-r, x-r, x-bin, x-request-id
    assert_eq!(seen.headers["x-testkit-headers-in"], "5");
    assert_eq!(seen.headers["x-bin"].as_bytes(), b"\xff\xfe");
}

#[tokio::test]
async fn identity_gate_uses_the_client_identity() {
    let identity = Arc::new(Identity::new(IdentityOptions {
        user_agent: true,
        ..IdentityOptions::default()
    }));
    let gate = device("gate", "identity-gate", json!({"deny_bots": true}));
    let kit = device(
        "kit",
        "testkit",
        json!({"phases": ["on-request", "on-response"]}),
    );
    let stack = Stack::new(vec![identity, gate.clone(), kit]);
    let res = stack
        .get(
            "/",
            &[(
                "user-agent",
                "Googlebot/2.1 (+http://www.google.com/bot.html)",
            )],
        )
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(header(&res, "x-gate"), "bot");
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let res = stack.get("/", &[("user-agent", firefox)]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-testkit-identity"), "0.0.0.0//desktop/false");

    // Without an identity device in front, the gate refuses (require_identity).
    let stack = Stack::new(vec![gate]);
    let res = stack.get("/", &[]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(header(&res, "x-gate"), "no-identity");

    let gate = device(
        "gate",
        "identity-gate",
        json!({"deny_bots": false, "allow_countries": ["NL"]}),
    );
    let stack = Stack::new(vec![
        Arc::new(Identity::new(IdentityOptions::default())) as Arc<dyn Device>,
        gate,
    ]);
    let res = stack.get("/", &[]).await;
    assert_eq!(header(&res, "x-gate"), "country", "no GeoIP: no country");
}

#[tokio::test]
async fn body_inspector_rejects_a_forbidden_word_across_chunks() {
    let dev = device(
        "inspect",
        "body-inspector",
        json!({"forbidden": "attack", "status": 422}),
    );
    let stack = Stack::new(vec![dev]);
    let req = Request::post("/").header("host", "h");
    let res = stack
        .send(req.body(chunked(&["an at", "tack here", "more"])).unwrap())
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(res.body(), "forbidden content\n");
    assert!(
        stack.seen.lock().unwrap().is_empty(),
        "the upstream never got the body"
    );

    let req = Request::post("/").header("host", "h");
    let res = stack
        .send(req.body(chunked(&["peace", " and quiet"])).unwrap())
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(stack.last_seen().body, "peace and quiet");
}

#[tokio::test]
async fn early_answers_from_every_request_side_hook() {
    for (hook, upstream_called) in [
        ("on-request", false),
        ("before-proxy", false),
        ("after-proxy", true),
    ] {
        let dev = device("kit", "testkit", json!({"respond_on": hook}));
        let stack = Stack::new(vec![dev]);
        let res = stack.get("/", &[]).await;
        assert_eq!(res.status(), 418, "{hook}");
        assert_eq!(header(&res, "x-testkit"), hook);
        assert_eq!(stack.calls() == 1, upstream_called, "{hook}");
    }
    let dev = device(
        "kit",
        "testkit",
        json!({"respond_on": "on-request-body-end"}),
    );
    let stack = Stack::new(vec![dev]);
    let res = stack
        .send(
            Request::post("/")
                .header("host", "h")
                .body(chunked(&["x"]))
                .unwrap(),
        )
        .await;
    assert_eq!(res.status(), 418);
}

const MODES: [&str; 7] = [
    "trap",
    "loop",
    "memory",
    "recursion",
    "big-output",
    "bad-header",
    "bad-status",
];

fn failing(mode: &str, hook: &str, policy: FailurePolicy) -> Arc<WasmDevice> {
    device_with(
        "bad",
        "testkit",
        json!({"fail": mode, "fail_hook": hook, "only_if_header": true}),
        WasmLimits {
            timeout: Duration::from_millis(100),
            memory_bytes: 8 << 20,
            on_failure: policy,
            ..WasmLimits::default()
        },
    )
}

#[tokio::test]
async fn failures_fail_closed_and_the_next_request_works() {
    for mode in MODES {
        let dev = failing(mode, "on-request", FailurePolicy::Closed);
        // By default the client is told the status and the request id, nothing of the device.
        let res = Stack::new(vec![dev.clone()])
            .get("/", &[("x-testkit-fail", "1"), ("x-request-id", "req-41")])
            .await;
        let body = String::from_utf8_lossy(res.body());
        assert!(
            body.ends_with(": the request could not be processed (request id req-41)\n")
                && !body.contains("on-request"),
            "{mode}: {body}"
        );
        let stack = Stack::new(vec![dev.clone()]).full_detail();
        let started = Instant::now();
        let res = stack
            .get("/", &[("x-testkit-fail", "1"), ("x-request-id", "req-42")])
            .await;
        let took = started.elapsed();
        let expected = if mode == "loop" { 503 } else { 500 };
        assert_eq!(res.status(), expected, "{mode}");
        assert_eq!(stack.calls(), 0, "{mode}");
        assert!(took < Duration::from_secs(2), "{mode} took {took:?}");
        let body = String::from_utf8_lossy(res.body());
        assert!(
            body.contains("in on-request") && body.contains("req-42"),
            "{mode}: {body}"
        );
        assert!(
            !body.contains("testkit") && !body.contains("header"),
            "no guest details leak: {body}"
        );
        // The next request through the same device works normally.
        let res = stack.get("/", &[]).await;
        assert_eq!(res.status(), 200, "{mode}: the next request");
        assert_eq!(
            header(&res, "x-testkit-trace"),
            "on-request,on-request-body-end,before-proxy,after-proxy,on-response"
        );
        assert_eq!(dev.live_instances(), 0, "{mode}");
    }
}

#[tokio::test]
async fn failures_fail_open_and_skip_the_device() {
    for mode in MODES {
        let dev = failing(mode, "on-request", FailurePolicy::Open);
        let stack = Stack::new(vec![dev]);
        let res = stack.get("/", &[("x-testkit-fail", "1")]).await;
        assert_eq!(res.status(), 200, "{mode}");
        assert_eq!(stack.calls(), 1, "{mode}");
        // Skipped for the rest of the request: no later hook ran.
        assert!(res.headers().get("x-testkit-trace").is_none(), "{mode}");
        assert!(
            stack
                .last_seen()
                .headers
                .get("x-testkit-before-proxy")
                .is_none()
        );
    }
}

#[tokio::test]
async fn failures_in_later_hooks_under_both_policies() {
    for hook in [
        "on-request-body",
        "before-proxy",
        "after-proxy",
        "on-response",
    ] {
        for mode in ["trap", "loop", "bad-header"] {
            let dev = failing(mode, hook, FailurePolicy::Closed);
            let stack = Stack::new(vec![dev]);
            let req = Request::post("/")
                .header("host", "h")
                .header("x-testkit-fail", "1")
                .body(chunked(&["abc"]))
                .unwrap();
            let res = stack.send(req).await;
            let expected = if mode == "loop" { 503 } else { 500 };
            if hook == "on-request-body" {
                // The body stopped under the upstream: the upstream fails the request.
                assert!(
                    res.status().is_server_error() || res.status() == 400,
                    "{hook}/{mode}: {}",
                    res.status()
                );
            } else {
                assert_eq!(res.status(), expected, "{hook}/{mode}");
            }

            let dev = failing(mode, hook, FailurePolicy::Open);
            let stack = Stack::new(vec![dev]);
            let req = Request::post("/")
                .header("host", "h")
                .header("x-testkit-fail", "1")
                .body(chunked(&["abc"]))
                .unwrap();
            let res = stack.send(req).await;
            assert_eq!(res.status(), 200, "{hook}/{mode} open");
            assert_eq!(stack.last_seen().body, "abc");
        }
    }
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_time_limit() {
    let dev = device_with(
        "loop",
        "testkit",
        json!({"fail": "loop", "fail_hook": "on-request"}),
        WasmLimits {
            timeout: Duration::from_millis(30),
            ..WasmLimits::default()
        },
    );
    let stack = Stack::new(vec![dev]);
    let started = Instant::now();
    let res = stack.get("/", &[]).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    assert!(took >= Duration::from_millis(25), "{took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_keep_their_state_apart() {
    let dev = device("kit", "testkit", json!({}));
    let stack = Arc::new(Stack::new(vec![dev.clone()]));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let stack = stack.clone();
        tasks.push(tokio::spawn(async move {
            let body: &'static str = if i % 2 == 0 { "even" } else { "odd!!" };
            let req = Request::post("/")
                .header("host", "h")
                .body(chunked(&[body]))
                .unwrap();
            let res = stack.send(req).await;
            assert_eq!(res.status(), 200);
            assert_eq!(header(&res, "x-testkit-body-bytes"), body.len().to_string());
            assert_eq!(
                header(&res, "x-testkit-trace"),
                "on-request,before-proxy,on-request-body,on-request-body-end,after-proxy,on-response"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(dev.live_instances(), 0);
}

#[test]
fn bad_modules_fail_to_load_with_a_clear_message() {
    let engine = engine();
    let err = WasmDevice::from_bytes(
        &engine,
        "x",
        &guest("forbidden-import"),
        "{}",
        WasmLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err.kind(), LoadErrorKind::Import(_)), "{err}");
    assert!(err.to_string().contains("wasi:filesystem"), "{err}");

    let err = WasmDevice::from_bytes(
        &engine,
        "x",
        &guest("testkit"),
        r#"{"init_error": "bad config"}"#,
        WasmLimits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the module failed in init: init: bad config"
    );

    let err = WasmDevice::from_bytes(
        &engine,
        "x",
        &guest("testkit"),
        "not json",
        WasmLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err.kind(), LoadErrorKind::Init(_)), "{err}");

    let err = WasmDevice::from_bytes(&engine, "x", b"\0asm garbage", "{}", WasmLimits::default())
        .unwrap_err();
    assert!(
        matches!(err.kind(), LoadErrorKind::UnknownVersion { .. }),
        "{err}"
    );
    // A component header, then a section that does not parse.
    let bad = b"\0asm\x0d\0\x01\0\x7f\x01\x00";
    let err = WasmDevice::from_bytes(&engine, "x", bad, "{}", WasmLimits::default()).unwrap_err();
    assert!(matches!(err.kind(), LoadErrorKind::Invalid(_)), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");

    // A core module is not a component.
    let core = wat::parse_str("(module)").unwrap();
    let err = WasmDevice::from_bytes(&engine, "x", &core, "{}", WasmLimits::default()).unwrap_err();
    assert!(matches!(err.kind(), LoadErrorKind::CoreModule), "{err}");

    // A component exporting something else.
    let other = wat::parse_str("(component)").unwrap();
    let err =
        WasmDevice::from_bytes(&engine, "x", &other, "{}", WasmLimits::default()).unwrap_err();
    assert!(
        matches!(err.kind(), LoadErrorKind::NoExport(v) if v.is_empty()),
        "{err}"
    );

    // A component exporting another version of the device interface.
    let older = wat::parse_str(
        r#"(component (instance $i) (export "snakeway:device/device@0.9.0" (instance $i)))"#,
    )
    .unwrap();
    let err =
        WasmDevice::from_bytes(&engine, "x", &older, "{}", WasmLimits::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the module exports `snakeway:device/device@0.9.0`, not the version"),
        "{err}"
    );

    // The device interface with other types.
    let wrong = wat::parse_str(
        r#"(component (instance $i) (export "snakeway:device/device@1.0.0" (instance $i)))"#,
    )
    .unwrap();
    let err =
        WasmDevice::from_bytes(&engine, "x", &wrong, "{}", WasmLimits::default()).unwrap_err();
    assert!(matches!(err.kind(), LoadErrorKind::Link(_)), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");

    // A component importing an unknown interface.
    let importer =
        wat::parse_str(r#"(component (import "acme:evil/net@1.0.0" (instance)))"#).unwrap();
    let err =
        WasmDevice::from_bytes(&engine, "x", &importer, "{}", WasmLimits::default()).unwrap_err();
    assert!(err.to_string().contains("acme:evil/net@1.0.0"), "{err}");

    let err = WasmDevice::from_bytes(
        &engine,
        "x",
        &guest("testkit"),
        "{}",
        WasmLimits {
            memory_bytes: 1 << 40,
            ..WasmLimits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err.kind(), LoadErrorKind::Limits(_)), "{err}");

    // Trapping in init fails the load too.
    let err = WasmDevice::from_bytes(
        &engine,
        "x",
        &guest("testkit"),
        r#"{"fail_hook": "init"}"#,
        WasmLimits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("trap"), "{err}");
}

#[test]
fn compiled_modules_are_cached_by_content() {
    let engine = snakeway_wasm::WasmEngine::new(snakeway_wasm::EngineOptions {
        max_instances: 8,
        ..Default::default()
    })
    .unwrap();
    let bytes = guest("add-header");
    let started = Instant::now();
    WasmDevice::from_bytes(&engine, "a", &bytes, "{}", WasmLimits::default()).unwrap();
    let first = started.elapsed();
    let started = Instant::now();
    WasmDevice::from_bytes(&engine, "b", &bytes, "{}", WasmLimits::default()).unwrap();
    let second = started.elapsed();
    assert_eq!(engine.cached_components(), 1);
    assert!(second < first, "reload {second:?} vs first load {first:?}");
}

/// A device's instance goes back to the pool right after its last subscribed hook: a device
/// that only acts in `on-request` holds none while the request waits for its upstream; one
/// subscribed to later hooks keeps its instance until then.
#[test]
fn an_instance_is_released_after_the_devices_last_hook() {
    let ctx = || {
        RequestCtx::new(snakeway_core::RequestInfo {
            request_id: http::HeaderValue::from_static("r-1"),
            peer: ([127, 0, 0, 1], 1).into(),
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            started: Instant::now(),
            slots: Default::default(),
            device_logs: Default::default(),
            received: Default::default(),
        })
    };
    let head = || Request::get("/").body(()).unwrap().into_parts().0;

    let on_request_only = device("add", "add-header", json!({"name": "x-a", "value": "1"}));
    let (mut c, mut h) = (ctx(), head());
    on_request_only.on_request(&mut c, &mut h).unwrap();
    assert_eq!(h.headers["x-a"], "1");
    assert_eq!(
        on_request_only.live_instances(),
        0,
        "released after on-request"
    );

    let later_hooks = device(
        "kit",
        "testkit",
        json!({"quiet": true, "phases": ["on-request", "after-proxy"]}),
    );
    let (mut c, mut h) = (ctx(), head());
    later_hooks.on_request(&mut c, &mut h).unwrap();
    assert_eq!(later_hooks.live_instances(), 1, "kept for after-proxy");
    let (mut res, ()) = http::Response::new(()).into_parts();
    later_hooks.after_proxy(&mut c, &mut res).unwrap();
    assert_eq!(
        later_hooks.live_instances(),
        0,
        "released after after-proxy"
    );
}

/// A device at its `max_instances` answers 503 even when it fails open (capacity is not a
/// guest fault: skipping it would let load switch it off), and takes requests again once an
/// instance is released.
#[test]
fn a_device_at_max_instances_answers_503_even_when_open() {
    let ctx = |id: &'static str| {
        RequestCtx::new(snakeway_core::RequestInfo {
            request_id: http::HeaderValue::from_static(id),
            peer: ([127, 0, 0, 1], 1).into(),
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            started: Instant::now(),
            slots: Default::default(),
            device_logs: Default::default(),
            received: Default::default(),
        })
    };
    let head = || Request::get("/").body(()).unwrap().into_parts().0;
    let dev = device_with(
        "capped",
        "testkit",
        json!({"quiet": true, "phases": ["on-request", "after-proxy"]}),
        WasmLimits {
            max_instances: Some(2),
            ..limits(FailurePolicy::Open)
        },
    );
    // Two requests hold an instance each (kept for after-proxy).
    let (mut a, mut b) = (ctx("r-a"), ctx("r-b"));
    dev.on_request(&mut a, &mut head()).unwrap();
    dev.on_request(&mut b, &mut head()).unwrap();
    assert_eq!(dev.live_instances(), 2);
    let mut c = ctx("r-c");
    let e = dev.on_request(&mut c, &mut head()).unwrap_err();
    assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.message(), "device at max_instances in on-request");
    assert_eq!(dev.live_instances(), 2, "the refused request holds none");
    // One request ends: the next one gets its slot.
    drop(a);
    assert_eq!(dev.live_instances(), 1);
    dev.on_request(&mut ctx("r-d"), &mut head()).unwrap();
}
