//! Lets a request through only if the client identity (left by the identity device earlier
//! in the pipeline) passes: bots can be refused, and countries allow-listed.
//!
//! Config: `{ "deny_bots": true, "allow_countries": ["NL", "BE"], "require_identity": true,
//! "status": 403 }`. The decision is left in the `gate.decision` attribute for later devices.

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::host::{get_context, set_attribute};
use snakeway::device::types::{Action, Phases, Registration, Reply};

#[derive(Default)]
struct Config {
    deny_bots: bool,
    allow_countries: Option<Vec<String>>,
    require_identity: bool,
    status: u16,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Gate;

fn deny(c: &Config, why: &str) -> Action {
    set_attribute("gate.decision", Some(&format!("deny:{why}")));
    Action::Respond(Reply {
        status: c.status,
        headers: vec![("x-gate".into(), why.as_bytes().to_vec())],
        body: format!("denied: {why}\n").into_bytes(),
    })
}

impl Guest for Gate {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let allow_countries = json.get("allow_countries").and_then(|v| v.as_array()).map(|a| {
            a.iter().filter_map(|c| c.as_str()).map(str::to_ascii_uppercase).collect()
        });
        let status = json.get("status").and_then(|v| v.as_u64()).unwrap_or(403) as u16;
        CONFIG.with(|c| {
            *c.borrow_mut() = Config {
                deny_bots: json.get("deny_bots").and_then(|v| v.as_bool()).unwrap_or(true),
                allow_countries,
                require_identity: json.get("require_identity").and_then(|v| v.as_bool()).unwrap_or(true),
                status,
            }
        });
        Ok(Registration { phases: Phases::ON_REQUEST })
    }

    fn on_request() -> Action {
        let ctx = get_context();
        CONFIG.with(|c| {
            let c = c.borrow();
            let Some(identity) = ctx.identity else {
                return if c.require_identity { deny(&c, "no-identity") } else { Action::Continue };
            };
            if c.deny_bots && identity.bot {
                return deny(&c, "bot");
            }
            if let Some(allowed) = &c.allow_countries {
                let country = identity.country.unwrap_or_default();
                if !allowed.contains(&country) {
                    return deny(&c, "country");
                }
            }
            set_attribute("gate.decision", Some("allow"));
            Action::Continue
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

export!(Gate);
