//! `WasmLayer`: one WASM device around a plain Tower service (as in an axum app).

mod support;

use std::convert::Infallible;

use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::json;
use snakeway_core::Body;
use snakeway_wasm::{FailurePolicy, WasmDevice, WasmLayer};
use support::{engine, guest, limits};
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn load(guest_name: &str, config: &serde_json::Value) -> WasmDevice {
    WasmDevice::from_bytes(
        &engine(),
        guest_name,
        &guest(guest_name),
        &config.to_string(),
        limits(FailurePolicy::Closed),
    )
    .unwrap()
}

/// The app echoes the request header the device sets.
async fn app(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let seen = req
        .headers()
        .get("x-added")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Ok(Response::new(Body::from(seen)))
}

#[tokio::test]
async fn the_layer_runs_the_device_around_a_plain_service() {
    let device = load(
        "add-header",
        &json!({"name": "x-added", "value": "by-wasm", "response_name": "x-served-by", "response_value": "wasm"}),
    );
    let svc = ServiceBuilder::new()
        .layer(WasmLayer::new(device))
        .service(service_fn(app));
    let res = svc
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-served-by"], "wasm");
    assert!(res.headers().contains_key("x-request-id"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "by-wasm");
}

#[tokio::test]
async fn an_early_answer_never_reaches_the_service() {
    let device = load("deny", &json!({"path_prefix": "/admin", "status": 403}));
    let svc = ServiceBuilder::new()
        .layer(WasmLayer::from(device))
        .service(service_fn(|_: Request<Body>| async {
            panic!("the service must not be called");
            #[allow(unreachable_code)]
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let res = svc
        .oneshot(Request::get("/admin/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["x-denied-by"], "wasm");
}
