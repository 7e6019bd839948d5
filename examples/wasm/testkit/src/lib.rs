//! A test device: records the hooks it ran in this instance, passes attributes, edits and
//! reflects headers, and misbehaves on demand. (A fixture for Snakeway's tests and benchmarks.)
//!
//! Config (all optional):
//! `{ "phases": ["on-request", ...], "fail_hook": "on-request", "fail": "trap" | "loop" |
//!    "memory" | "recursion" | "big-output" | "bad-header" | "bad-header-value" | "bad-status" |
//!    "bad-set-status" | "respond",
//!    "bad_status": 101, "only_if_header": false, "init_error": "why",
//!    "init_error_if_attribute": "name", "set_attribute": ["name", "value"],
//!    "copy_header_to_attribute": ["x-header", "name"], "read_attribute": "name",
//!    "respond_on": "on-request", "quiet": false, "tag": "name", "reflect_header": "x-header",
//!    "edits": { "on-request": [["set-header", "x-a", "v"], ...], ... } }`
//!
//! * `only_if_header`: `true` (the header `x-testkit-fail`) or a header name. Until `on-request`
//!   sees that request header, the device is not *armed*: `fail`, `respond_on` and `edits` do
//!   nothing. Without it the device is always armed.
//! * `bad_status`: the status of `bad-status` (a reply, default 101) and `bad-set-status`
//!   (a `set-status` edit, default 600).
//! * `init_error_if_attribute`: `init` fails when the attribute is set (never at load, where
//!   the map is empty: only in a request where an earlier device set it).
//! * `copy_header_to_attribute`: in `on-request`, the header's value (if present) becomes the
//!   attribute's.
//! * `edits`: per hook (`on-request`, `before-proxy`, `after-proxy`, `on-response`), edits added
//!   after the device's own: `["set-header" | "append-header", name, value]`,
//!   `["remove-header", name]`, `["reroute" | "upstream-path", path]`, `["set-status", n]`; a
//!   value is a string or an array of bytes (for values that are not UTF-8).
//! * `quiet`: the device adds none of its own `x-testkit-*` headers (a hook with nothing to do
//!   answers `continue`).
//! * `tag`: `on-response` appends `x-testkit-ran: TAG:TRACE` (one line per tagged device).
//! * `reflect_header`: every value of that request header (in order, raw bytes) is appended
//!   as `x-testkit-reflect` to the request in `on-request` and to the response in
//!   `on-response`; every value of it in the upstream response is appended as
//!   `x-testkit-reflect-upstream` in `after-proxy`.
//!
//! Unless `quiet`, `on-response` reports in response headers: `x-testkit-trace` (the hooks this
//! instance ran, so a fresh instance per request shows only this request's hooks),
//! `x-testkit-body-bytes`, `x-testkit-attribute` (the value of `read_attribute` as read in
//! `on-request`), `x-testkit-identity` (ip/country/device/bot).

wit_bindgen::generate!({ world: "snakeway-device", path: "../../../wit" });

use std::cell::RefCell;

use exports::snakeway::device::device::Guest;
use snakeway::device::host::{Level, get_attribute, get_context, get_headers, log, set_attribute};
use snakeway::device::types::{Action, Edit, Phases, Registration, Reply};

type Headers = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct State {
    fail_hook: Option<String>,
    fail: String,
    bad_status: Option<u16>,
    set_attribute: Option<(String, String)>,
    copy_header_to_attribute: Option<(String, String)>,
    read_attribute: Option<String>,
    respond_on: Option<String>,
    /// The request header that arms the device (`None`: always armed).
    arm_header: Option<String>,
    /// Whether the failure, the early answer and the edits are armed: always, or (with
    /// `only_if_header`) once `on-request` saw the header.
    armed: bool,
    quiet: bool,
    tag: Option<String>,
    reflect_header: Option<String>,
    /// The `edits` table, checked at `init`.
    edits: serde_json::Value,
    trace: Vec<&'static str>,
    body_bytes: u64,
    attribute: Option<String>,
    identity: Option<String>,
    reflected: Vec<Vec<u8>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + recurse(std::hint::black_box(n - 1)) + std::hint::black_box(1) }
}

/// Records the hook; misbehaves or answers if configured for it. `None`: go on.
fn enter(hook: &'static str) -> Option<Action> {
    let (fail, respond, bad_status) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.trace.push(hook);
        let fail = (s.armed && s.fail_hook.as_deref() == Some(hook)).then(|| s.fail.clone());
        (fail, s.armed && s.respond_on.as_deref() == Some(hook), s.bad_status)
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
        "bad-header-value" => {
            Action::Modify(vec![Edit::SetHeader(("x-testkit-bad".into(), b"split\r\nx-injected: 1".to_vec()))])
        }
        "bad-status" => Action::Respond(Reply {
            status: bad_status.unwrap_or(101),
            headers: Vec::new(),
            body: Vec::new(),
        }),
        "bad-set-status" => Action::Modify(vec![Edit::SetStatus(bad_status.unwrap_or(600))]),
        "respond" => Action::Respond(Reply { status: 200, headers: Vec::new(), body: Vec::new() }),
        other => panic!("unknown failure mode {other}"),
    })
}

/// A header value from config: a string, or an array of bytes.
fn value_of(v: &serde_json::Value) -> Option<Vec<u8>> {
    match v {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Array(a) => {
            a.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect()
        }
        _ => None,
    }
}

/// One edit from config (see the module docs).
fn edit_of(spec: &serde_json::Value) -> Result<Edit, String> {
    let bad = || format!("bad edit {spec}");
    let a = spec.as_array().ok_or_else(bad)?;
    let text = |i: usize| a.get(i).and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(bad);
    let header = || Ok::<_, String>((text(1)?, a.get(2).and_then(value_of).ok_or_else(bad)?));
    Ok(match text(0)?.as_str() {
        "set-header" => Edit::SetHeader(header()?),
        "append-header" => Edit::AppendHeader(header()?),
        "remove-header" => Edit::RemoveHeader(text(1)?),
        "reroute" => Edit::Reroute(text(1)?),
        "upstream-path" => Edit::UpstreamPath(text(1)?),
        "set-status" => {
            let n = a.get(1).and_then(|v| v.as_u64()).ok_or_else(bad)?;
            Edit::SetStatus(u16::try_from(n).map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    })
}

/// The configured edits of `hook`, if the device is armed.
fn edits_of(edits: &serde_json::Value, hook: &str) -> Result<Vec<Edit>, String> {
    match edits.get(hook) {
        None => Ok(Vec::new()),
        Some(list) => {
            let list = list.as_array().ok_or_else(|| format!("edits.{hook}: not a list"))?;
            list.iter().map(edit_of).collect()
        }
    }
}

/// The device's own edits followed by the configured ones for `hook`: `continue` if none.
fn finish(hook: &str, mut own: Vec<Edit>) -> Action {
    STATE.with(|s| {
        let s = s.borrow();
        if s.armed {
            own.extend(edits_of(&s.edits, hook).expect("checked at init"));
        }
    });
    if own.is_empty() { Action::Continue } else { Action::Modify(own) }
}

fn quiet() -> bool {
    STATE.with(|s| s.borrow().quiet)
}

/// Every value of `name` in `headers`, in order.
fn values(headers: &Headers, name: Option<&str>) -> Vec<Vec<u8>> {
    headers.iter().filter(|(n, _)| Some(n.as_str()) == name).map(|(_, v)| v.clone()).collect()
}

struct Testkit;

impl Guest for Testkit {
    fn init(config: String) -> Result<Registration, String> {
        let json: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        if let Some(why) = json.get("init_error").and_then(|v| v.as_str()) {
            return Err(why.to_owned());
        }
        let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        if let Some(name) = text("init_error_if_attribute")
            && get_attribute(&name).is_some()
        {
            return Err(format!("init refused: attribute {name} is set"));
        }
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
        let pair = |key: &str| {
            json.get(key).and_then(|v| v.as_array()).and_then(|a| {
                Some((a.first()?.as_str()?.to_owned(), a.get(1)?.as_str()?.to_owned()))
            })
        };
        let arm_header = match json.get("only_if_header") {
            Some(serde_json::Value::Bool(true)) => Some("x-testkit-fail".to_owned()),
            Some(serde_json::Value::String(name)) => Some(name.to_ascii_lowercase()),
            _ => None,
        };
        let edits = json.get("edits").cloned().unwrap_or(serde_json::Value::Null);
        for hook in ["on-request", "before-proxy", "after-proxy", "on-response"] {
            edits_of(&edits, hook)?;
        }
        let bad_status = json.get("bad_status").and_then(|v| v.as_u64()).map(|n| n as u16);
        STATE.with(|s| {
            *s.borrow_mut() = State {
                fail_hook: text("fail_hook"),
                fail: text("fail").unwrap_or_else(|| "trap".into()),
                bad_status,
                set_attribute: pair("set_attribute"),
                copy_header_to_attribute: pair("copy_header_to_attribute"),
                read_attribute: text("read_attribute"),
                respond_on: text("respond_on"),
                armed: arm_header.is_none(),
                arm_header,
                quiet: json.get("quiet").and_then(|v| v.as_bool()).unwrap_or(false),
                tag: text("tag"),
                reflect_header: text("reflect_header").map(|h| h.to_ascii_lowercase()),
                edits,
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
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(name) = &s.arm_header
                && headers.iter().any(|(n, _)| n == name)
            {
                s.armed = true;
            }
        });
        if let Some(action) = enter("on-request") {
            return action;
        }
        let reflected = STATE.with(|s| {
            let mut s = s.borrow_mut();
            if let Some((k, v)) = &s.set_attribute {
                set_attribute(k, Some(v));
            }
            if let Some((header, name)) = &s.copy_header_to_attribute
                && let Some((_, value)) = headers.iter().find(|(n, _)| n == header)
            {
                set_attribute(name, Some(&String::from_utf8_lossy(value)));
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
            s.reflected = values(&headers, s.reflect_header.as_deref());
            s.reflected.clone()
        });
        let mut own = Vec::new();
        if !quiet() {
            own.push(Edit::SetHeader(("x-testkit-request".into(), b"seen".to_vec())));
            own.push(Edit::SetHeader(("x-testkit-headers-in".into(), headers.len().to_string().into_bytes())));
        }
        own.extend(reflected.into_iter().map(|v| Edit::AppendHeader(("x-testkit-reflect".into(), v))));
        finish("on-request", own)
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
        let mut own = Vec::new();
        if !quiet() {
            own.push(Edit::AppendHeader(("x-testkit-before-proxy".into(), b"1".to_vec())));
        }
        finish("before-proxy", own)
    }

    fn after_proxy(status: u16) -> Action {
        let headers = get_headers();
        if let Some(action) = enter("after-proxy") {
            return action;
        }
        let mut own = Vec::new();
        if !quiet() {
            own.push(Edit::SetHeader(("x-testkit-upstream-status".into(), status.to_string().into_bytes())));
        }
        let reflect = STATE.with(|s| s.borrow().reflect_header.clone());
        own.extend(
            values(&headers, reflect.as_deref())
                .into_iter()
                .map(|v| Edit::AppendHeader(("x-testkit-reflect-upstream".into(), v))),
        );
        finish("after-proxy", own)
    }

    fn on_response(_: u16) -> Action {
        if let Some(action) = enter("on-response") {
            return action;
        }
        let own = STATE.with(|s| {
            let s = s.borrow();
            let mut edits = Vec::new();
            if !s.quiet {
                edits.push(Edit::SetHeader(("x-testkit-trace".into(), s.trace.join(",").into_bytes())));
                edits.push(Edit::SetHeader(("x-testkit-body-bytes".into(), s.body_bytes.to_string().into_bytes())));
                if let Some(a) = &s.attribute {
                    edits.push(Edit::SetHeader(("x-testkit-attribute".into(), a.clone().into_bytes())));
                }
                if let Some(i) = &s.identity {
                    edits.push(Edit::SetHeader(("x-testkit-identity".into(), i.clone().into_bytes())));
                }
            }
            if let Some(tag) = &s.tag {
                let line = format!("{tag}:{}", s.trace.join(","));
                edits.push(Edit::AppendHeader(("x-testkit-ran".into(), line.into_bytes())));
            }
            let reflected = s.reflected.iter().map(|v| Edit::AppendHeader(("x-testkit-reflect".into(), v.clone())));
            edits.extend(reflected);
            edits
        });
        finish("on-response", own)
    }
}

export!(Testkit);
