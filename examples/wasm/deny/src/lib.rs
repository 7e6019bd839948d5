//! Denies requests carrying a header (optionally with a given value) or under a path prefix,
//! with a custom response.
//!
//! Config: `{ "header": "x-block", "header_value": "yes", "path_prefix": "/admin",
//! "status": 403, "body": "denied\n" }` (each rule optional).

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::host::{Level, get_context, get_header_all, log};
use snakeway::device::types::{Action, Phases, Registration, Reply};

#[derive(Default)]
struct Config {
    header: Option<String>,
    header_value: Option<Vec<u8>>,
    path_prefix: Option<String>,
    status: u16,
    body: String,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Deny;

impl Guest for Deny {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let status = json.get("status").and_then(|v| v.as_u64()).unwrap_or(403);
        let status = u16::try_from(status).map_err(|_| format!("status {status} is out of range"))?;
        CONFIG.with(|c| {
            *c.borrow_mut() = Config {
                header: text("header").map(|h| h.to_ascii_lowercase()),
                header_value: text("header_value").map(String::into_bytes),
                path_prefix: text("path_prefix"),
                status,
                body: text("body").unwrap_or_else(|| "denied\n".into()),
            }
        });
        Ok(Registration { phases: Phases::ON_REQUEST })
    }

    fn on_request() -> Action {
        CONFIG.with(|c| {
            let c = c.borrow();
            let by_header = c.header.as_ref().is_some_and(|name| {
                get_header_all(name)
                    .iter()
                    .any(|v| c.header_value.as_ref().is_none_or(|want| want == v))
            });
            let ctx = get_context();
            let by_path = c.path_prefix.as_ref().is_some_and(|p| ctx.path.starts_with(p.as_str()));
            if !(by_header || by_path) {
                return Action::Continue;
            }
            log(Level::Info, &format!("denied {} {}", ctx.method, ctx.path));
            Action::Respond(Reply {
                status: c.status,
                headers: vec![
                    ("content-type".into(), b"text/plain".to_vec()),
                    ("x-denied-by".into(), b"wasm".to_vec()),
                ],
                body: c.body.clone().into_bytes(),
            })
        })
    }

    fn on_request_body(_: Vec<u8>, _: bool) -> Action {
        Action::Continue
    }

    fn before_proxy() -> Action {
        Action::Continue
    }

    fn after_proxy(_: u16) -> Action {
        Action::Continue
    }

    fn on_response(_: u16) -> Action {
        Action::Continue
    }
}

export!(Deny);
