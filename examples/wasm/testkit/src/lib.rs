//! A test device: records the hooks it ran in this instance, passes attributes, and
//! misbehaves on demand. (A fixture for Snakeway's tests and benchmarks.)
//!
//! Config (all optional):
//! `{ "phases": ["on-request", ...], "fail_hook": "on-request", "fail": "trap" | "loop" |
//!    "memory" | "recursion" | "big-output" | "bad-header" | "bad-status" | "respond",
//!    "only_if_header": false, "init_error": "why", "set_attribute": ["name", "value"], "read_attribute": "name",
//!    "respond_on": "on-request" }`
//!
//! `on-response` reports in response headers: `x-testkit-trace` (the hooks this instance ran,
//! so a fresh instance per request shows only this request's hooks), `x-testkit-body-bytes`,
//! `x-testkit-attribute` (the value of `read_attribute` as read in `on-request`),
//! `x-testkit-identity` (ip/country/device/bot).

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::host::{Level, get_attribute, get_context, get_headers, log, set_attribute};
use snakeway::device::types::{Action, Edit, Phases, Registration, Reply};

#[derive(Default)]
struct State {
    fail_hook: Option<String>,
    fail: String,
    set_attribute: Option<(String, String)>,
    read_attribute: Option<String>,
    respond_on: Option<String>,
    /// Whether the failure is armed: always, or (with `only_if_header`) once `on-request` saw
    /// an `x-testkit-fail` header.
    armed: bool,
    trace: Vec<&'static str>,
    body_bytes: u64,
    attribute: Option<String>,
    identity: Option<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + recurse(std::hint::black_box(n - 1)) + std::hint::black_box(1) }
}

/// Records the hook; misbehaves or answers if configured for it. `None`: go on.
fn enter(hook: &'static str) -> Option<Action> {
    let (fail, respond) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.trace.push(hook);
        let fail = (s.armed && s.fail_hook.as_deref() == Some(hook)).then(|| s.fail.clone());
        (fail, s.respond_on.as_deref() == Some(hook))
    });
    if respond {
        return Some(Action::Respond(Reply {
            status: 418,
            headers: vec![("x-testkit".into(), hook.as_bytes().to_vec())],
            body: format!("testkit answered in {hook}\n").into_bytes(),
        }));
    }
    let fail = fail?;
    log(Level::Warn, &format!("misbehaving in {hook}: {fail}"));
    Some(match fail.as_str() {
        "trap" => panic!("testkit trap"),
        "loop" => {
            let mut i = 0u64;
            loop {
                i = std::hint::black_box(i.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recursion" => {
            let depth = recurse(std::hint::black_box(u64::MAX));
            Action::Modify(vec![Edit::SetHeader(("x-depth".into(), depth.to_string().into_bytes()))])
        }
        "big-output" => Action::Respond(Reply {
            status: 200,
            headers: Vec::new(),
            body: vec![b'x'; 8 << 20],
        }),
        "bad-header" => Action::Modify(vec![Edit::SetHeader(("bad header".into(), b"v".to_vec()))]),
        "bad-status" => Action::Respond(Reply { status: 101, headers: Vec::new(), body: Vec::new() }),
        "respond" => Action::Respond(Reply { status: 200, headers: Vec::new(), body: Vec::new() }),
        other => panic!("unknown failure mode {other}"),
    })
}

struct Testkit;

impl Guest for Testkit {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        if let Some(why) = json.get("init_error").and_then(|v| v.as_str()) {
            return Err(why.to_owned());
        }
        let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let phases = match json.get("phases").and_then(|v| v.as_array()) {
            None => Phases::all(),
            Some(list) => list.iter().filter_map(|p| p.as_str()).fold(Phases::empty(), |acc, p| {
                acc | match p {
                    "on-request" => Phases::ON_REQUEST,
                    "on-request-body" => Phases::ON_REQUEST_BODY,
                    "before-proxy" => Phases::BEFORE_PROXY,
                    "after-proxy" => Phases::AFTER_PROXY,
                    "on-response" => Phases::ON_RESPONSE,
                    _ => Phases::empty(),
                }
            }),
        };
        let set_attribute = json.get("set_attribute").and_then(|v| v.as_array()).and_then(|a| {
            Some((a.first()?.as_str()?.to_owned(), a.get(1)?.as_str()?.to_owned()))
        });
        STATE.with(|s| {
            *s.borrow_mut() = State {
                fail_hook: text("fail_hook"),
                fail: text("fail").unwrap_or_else(|| "trap".into()),
                set_attribute,
                read_attribute: text("read_attribute"),
                respond_on: text("respond_on"),
                armed: !json.get("only_if_header").and_then(|v| v.as_bool()).unwrap_or(false),
                ..State::default()
            }
        });
        if text("fail_hook").as_deref() == Some("init") {
            enter("init");
        }
        Ok(Registration { phases })
    }

    fn on_request() -> Action {
        let ctx = get_context();
        let headers = get_headers();
        if headers.iter().any(|(n, _)| n == "x-testkit-fail") {
            STATE.with(|s| s.borrow_mut().armed = true);
        }
        if let Some(action) = enter("on-request") {
            return action;
        }
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if let Some((k, v)) = &s.set_attribute {
                set_attribute(k, Some(v));
            }
            if let Some(name) = s.read_attribute.clone() {
                s.attribute = Some(get_attribute(&name).unwrap_or_else(|| "none".into()));
            }
            s.identity = ctx.identity.map(|i| {
                format!(
                    "{}/{}/{}/{}",
                    i.ip,
                    i.country.unwrap_or_default(),
                    i.device.unwrap_or_default(),
                    i.bot
                )
            });
        });
        let count = headers.len().to_string();
        Action::Modify(vec![
            Edit::SetHeader(("x-testkit-request".into(), b"seen".to_vec())),
            Edit::SetHeader(("x-testkit-headers-in".into(), count.into_bytes())),
        ])
    }

    fn on_request_body(chunk: Vec<u8>, end: bool) -> Action {
        let hook = if end { "on-request-body-end" } else { "on-request-body" };
        if let Some(action) = enter(hook) {
            return action;
        }
        STATE.with(|s| s.borrow_mut().body_bytes += chunk.len() as u64);
        Action::Continue
    }

    fn before_proxy() -> Action {
        if let Some(action) = enter("before-proxy") {
            return action;
        }
        Action::Modify(vec![Edit::AppendHeader(("x-testkit-before-proxy".into(), b"1".to_vec()))])
    }

    fn after_proxy(status: u16) -> Action {
        if let Some(action) = enter("after-proxy") {
            return action;
        }
        Action::Modify(vec![Edit::SetHeader((
            "x-testkit-upstream-status".into(),
            status.to_string().into_bytes(),
        ))])
    }

    fn on_response(_: u16) -> Action {
        if let Some(action) = enter("on-response") {
            return action;
        }
        STATE.with(|s| {
            let s = s.borrow();
            let mut edits = vec![
                Edit::SetHeader(("x-testkit-trace".into(), s.trace.join(",").into_bytes())),
                Edit::SetHeader(("x-testkit-body-bytes".into(), s.body_bytes.to_string().into_bytes())),
            ];
            if let Some(a) = &s.attribute {
                edits.push(Edit::SetHeader(("x-testkit-attribute".into(), a.clone().into_bytes())));
            }
            if let Some(i) = &s.identity {
                edits.push(Edit::SetHeader(("x-testkit-identity".into(), i.clone().into_bytes())));
            }
            Action::Modify(edits)
        })
    }
}

export!(Testkit);
