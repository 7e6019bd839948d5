//! Re-routes requests by header, and/or rewrites the upstream path only.
//!
//! Config: `{ "header": "x-version", "routes": { "v2": "/v2" }, "upstream_prefix": "/api" }`.
//! With `x-version: v2`, `/items` is routed as `/v2/items` (routing happens anew). With
//! `upstream_prefix`, the path sent upstream gets that prefix (routing is unchanged), and the
//! device records the original path in the `reroute.from` attribute.

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::host::{get_context, get_header, set_attribute};
use snakeway::device::types::{Action, Edit, Phases, Registration};

#[derive(Default)]
struct Config {
    header: String,
    routes: Vec<(Vec<u8>, String)>,
    upstream_prefix: Option<String>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Reroute;

impl Guest for Reroute {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let header = json.get("header").and_then(|v| v.as_str()).unwrap_or("x-route").to_owned();
        let routes = match json.get("routes") {
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .filter_map(|(k, v)| Some((k.clone().into_bytes(), v.as_str()?.to_owned())))
                .collect(),
            _ => Vec::new(),
        };
        let upstream_prefix = json.get("upstream_prefix").and_then(|v| v.as_str()).map(str::to_owned);
        let mut phases = Phases::ON_REQUEST;
        if upstream_prefix.is_some() {
            phases |= Phases::BEFORE_PROXY;
        }
        CONFIG.with(|c| *c.borrow_mut() = Config { header, routes, upstream_prefix });
        Ok(Registration { phases })
    }

    fn on_request() -> Action {
        CONFIG.with(|c| {
            let c = c.borrow();
            let Some(value) = get_header(&c.header) else {
                return Action::Continue;
            };
            match c.routes.iter().find(|(k, _)| *k == value) {
                Some((_, prefix)) => {
                    let ctx = get_context();
                    set_attribute("reroute.from", Some(&ctx.path));
                    Action::Modify(vec![Edit::Reroute(format!("{prefix}{}", ctx.path))])
                }
                None => Action::Continue,
            }
        })
    }

    fn on_request_body(_: Vec<u8>, _: bool) -> Action {
        Action::Continue
    }

    fn before_proxy() -> Action {
        let ctx = get_context();
        CONFIG.with(|c| match &c.borrow().upstream_prefix {
            Some(prefix) => Action::Modify(vec![Edit::UpstreamPath(format!("{prefix}{}", ctx.path))]),
            None => Action::Continue,
        })
    }

    fn after_proxy(_: u16) -> Action {
        Action::Continue
    }

    fn on_response(_: u16) -> Action {
        Action::Continue
    }
}

export!(Reroute);
