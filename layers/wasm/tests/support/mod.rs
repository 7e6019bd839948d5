//! Test support: the example guests (built once per test binary by `examples/wasm/build.sh`)
//! and a pipeline stack around a recording upstream.

#![allow(dead_code, unreachable_pub, clippy::needless_pass_by_value)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use snakeway_core::pipeline::Pipeline;
use snakeway_core::{Body, Device, Error, ErrorKind};
use snakeway_wasm::{FailurePolicy, WasmDevice, WasmEngine, WasmLimits};
use tower::{ServiceExt, service_fn};

/// The directory holding the freshly built example guests.
pub fn guests_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/wasm");
            let status = std::process::Command::new(root.join("build.sh"))
                .status()
                .expect("run examples/wasm/build.sh");
            assert!(
                status.success(),
                "examples/wasm/build.sh failed (is the wasm32-wasip2 target installed?)"
            );
            root.join("out")
        })
        .clone()
}

/// The bytes of an example guest.
pub fn guest(name: &str) -> Vec<u8> {
    let path = guests_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn engine() -> WasmEngine {
    WasmEngine::shared().expect("engine")
}

pub fn limits(policy: FailurePolicy) -> WasmLimits {
    WasmLimits {
        timeout: Duration::from_millis(50),
        on_failure: policy,
        ..WasmLimits::default()
    }
}

/// Loads `guest` as a device named `name` with `config`.
pub fn device(name: &str, guest_name: &str, config: serde_json::Value) -> Arc<WasmDevice> {
    device_with(name, guest_name, config, limits(FailurePolicy::Closed))
}

pub fn device_with(
    name: &str,
    guest_name: &str,
    config: serde_json::Value,
    limits: WasmLimits,
) -> Arc<WasmDevice> {
    load(name, guest_name, &config, limits)
}

fn load(
    name: &str,
    guest_name: &str,
    config: &serde_json::Value,
    limits: WasmLimits,
) -> Arc<WasmDevice> {
    Arc::new(
        WasmDevice::from_bytes(
            &engine(),
            name,
            &guest(guest_name),
            &config.to_string(),
            limits,
        )
        .unwrap_or_else(|e| panic!("load {guest_name}: {e}")),
    )
}

/// What the upstream saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A pipeline of `devices` around proxy hooks around an upstream that records the request
/// and answers 200 "upstream" with `x-upstream: 1`.
pub struct Stack {
    pub pipeline: Pipeline,
    pub calls: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stack {
    pub fn new(devices: Vec<Arc<dyn Device>>) -> Self {
        Self {
            pipeline: Pipeline::new(devices),
            calls: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// Error pages tell the whole message (`error_detail = "full"`), as a developer sees them.
    pub fn full_detail(mut self) -> Self {
        self.pipeline = self
            .pipeline
            .with_error_detail(snakeway_core::respond::ErrorDetail::Full);
        self
    }

    pub async fn send(&self, req: Request<Body>) -> Response<Bytes> {
        let calls = self.calls.clone();
        let seen = self.seen.clone();
        let upstream = service_fn(move |req: Request<Body>| {
            let calls = calls.clone();
            let seen = seen.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let (head, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|_| Error::new(ErrorKind::BadRequest, "body stopped"))?
                    .to_bytes();
                seen.lock().unwrap().push(Seen {
                    uri: head.uri.to_string(),
                    headers: head.headers,
                    body,
                });
                let mut res = Response::new(Body::from("upstream"));
                res.headers_mut().insert("x-upstream", "1".parse().unwrap());
                Ok::<_, Error>(res)
            }
        });
        let stack = tower::ServiceBuilder::new()
            .layer(self.pipeline.layer())
            .layer(self.pipeline.proxy_hooks())
            .service(upstream);
        let res = stack.oneshot(req).await.unwrap();
        let (head, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Response::from_parts(head, body)
    }

    pub async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
        let mut req = Request::get(uri).header("host", "h");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream was called")
    }
}

/// A body streamed in `chunks`.
pub fn chunked(chunks: &[&'static str]) -> Body {
    let frames = chunks
        .iter()
        .map(|c| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                c.as_bytes(),
            )))
        })
        .collect::<Vec<_>>();
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

pub fn header<'a>(res: &'a Response<Bytes>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", res.headers()))
}
