//! Adds a header to every request (before routing) and, optionally, to every response.
//!
//! Config: `{ "name": "x-snakeway-wasm", "value": "1", "response_name": "x-served-by",
//! "response_value": "snakeway" }` (the response pair is optional).

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::types::{Action, Edit, Phases, Registration};

struct Config {
    name: String,
    value: Vec<u8>,
    response: Option<(String, Vec<u8>)>,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct AddHeader;

impl Guest for AddHeader {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let name = text("name").unwrap_or_else(|| "x-snakeway-wasm".into());
        let value = text("value").unwrap_or_else(|| "1".into()).into_bytes();
        let response = text("response_name").map(|n| (n, text("response_value").unwrap_or_default().into_bytes()));
        let mut phases = Phases::ON_REQUEST;
        if response.is_some() {
            phases |= Phases::ON_RESPONSE;
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(Config { name, value, response }));
        Ok(Registration { phases })
    }

    fn on_request() -> Action {
        CONFIG.with(|c| {
            let c = c.borrow();
            let c = c.as_ref().expect("init ran");
            Action::Modify(vec![Edit::SetHeader((c.name.clone(), c.value.clone()))])
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
        CONFIG.with(|c| match c.borrow().as_ref().and_then(|c| c.response.clone()) {
            Some(header) => Action::Modify(vec![Edit::AppendHeader(header)]),
            None => Action::Continue,
        })
    }
}

export!(AddHeader);
