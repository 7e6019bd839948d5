//! A Snakeway WASM device: it refuses requests under a private path prefix, tells the upstream
//! who greeted the request, and marks every response with the device's crate name.
//!
//! Its `[device.config]` table reaches `init` as JSON, e.g.
//! `{ "greeting": "hello", "private_prefix": "/private" }` (both keys optional).

// The bindings for the `snakeway-device` world of the WIT package in `wit/`.
wit_bindgen::generate!({ world: "snakeway-device", path: "wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::host::{Level, get_context, log};
use snakeway::device::types::{Action, Edit, Phases, Registration, Reply};

/// What `init` read from the config.
struct Config {
    greeting: Vec<u8>,
    private_prefix: Option<String>,
}

thread_local! {
    // `init` runs at the start of every per-request instance, so this is always set in hooks.
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

fn with_config<T>(f: impl FnOnce(&Config) -> T) -> T {
    CONFIG.with(|c| f(c.borrow().as_ref().expect("init ran")))
}

struct Device;

impl Guest for Device {
    /// Reads the config and says which hooks Snakeway should call: only these run.
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let config = Config {
            greeting: text("greeting").unwrap_or_else(|| "hello".into()).into_bytes(),
            private_prefix: text("private_prefix"),
        };
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(Registration {
            phases: Phases::ON_REQUEST | Phases::ON_RESPONSE,
        })
    }

    /// Before routing: answer early, edit the request, or go on.
    fn on_request() -> Action {
        let ctx = get_context();
        with_config(|config| match &config.private_prefix {
            Some(prefix) if ctx.path.starts_with(prefix.as_str()) => {
                log(Level::Info, &format!("refused {} {}", ctx.method, ctx.path));
                Action::Respond(Reply {
                    status: 403,
                    headers: vec![("content-type".into(), b"text/plain".to_vec())],
                    body: b"private\n".to_vec(),
                })
            }
            _ => Action::Modify(vec![Edit::SetHeader((
                "x-greeting".into(),
                config.greeting.clone(),
            ))]),
        })
    }

    /// Each request body chunk (not registered above, so never called).
    fn on_request_body(_chunk: Vec<u8>, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// Right before the upstream call (not registered above).
    fn before_proxy() -> Action {
        Action::Continue
    }

    /// When the upstream's response head arrived (not registered above).
    fn after_proxy(_status: u16) -> Action {
        Action::Continue
    }

    /// Every response, before it is sent: the upstream's, an early answer or an error.
    fn on_response(_status: u16) -> Action {
        Action::Modify(vec![Edit::AppendHeader((
            "x-device".into(),
            env!("CARGO_PKG_NAME").as_bytes().to_vec(),
        ))])
    }
}

export!(Device);
