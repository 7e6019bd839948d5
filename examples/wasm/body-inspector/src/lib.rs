//! Rejects a request whose body contains a forbidden word (also when the word is split across
//! chunks), before the upstream sees the rest of the body.
//!
//! Config: `{ "forbidden": "attack", "status": 422 }`.

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::types::{Action, Phases, Registration, Reply};

#[derive(Default)]
struct State {
    forbidden: Vec<u8>,
    status: u16,
    /// The end of the previous chunk, for words split across chunks.
    tail: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Inspector;

impl Guest for Inspector {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let forbidden = json.get("forbidden").and_then(|v| v.as_str()).unwrap_or("attack");
        if forbidden.is_empty() {
            return Err("forbidden must not be empty".into());
        }
        let status = json.get("status").and_then(|v| v.as_u64()).unwrap_or(422) as u16;
        STATE.with(|s| {
            *s.borrow_mut() = State { forbidden: forbidden.as_bytes().to_vec(), status, tail: Vec::new() }
        });
        Ok(Registration { phases: Phases::ON_REQUEST_BODY })
    }

    fn on_request() -> Action {
        Action::Continue
    }

    fn on_request_body(chunk: Vec<u8>, _end: bool) -> Action {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let mut window = std::mem::take(&mut s.tail);
            window.extend_from_slice(&chunk);
            let n = s.forbidden.len();
            if window.windows(n).any(|w| w.eq_ignore_ascii_case(&s.forbidden)) {
                return Action::Respond(Reply {
                    status: s.status,
                    headers: vec![("content-type".into(), b"text/plain".to_vec())],
                    body: b"forbidden content\n".to_vec(),
                });
            }
            let keep = window.len().min(n - 1);
            s.tail = window[window.len() - keep..].to_vec();
            Action::Continue
        })
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

export!(Inspector);
