//! WASM devices through the real server (issue 4): the example guests (built by
//! `examples/wasm/build.sh`) as `[[device]] type = "wasm"` entries next to builtin devices,
//! driven by real HTTP clients against in-process upstreams that record what they received.
//!
//! * every hook and every action: `continue`, header edits on the request (`on-request`,
//!   `before-proxy`) and on the response (`after-proxy`, `on-response`), `reroute`,
//!   `upstream-path`, `set-status`, early answers from every request-side hook and from
//!   `after-proxy`, repeated and non-UTF-8 header values both ways;
//! * every failure mode under both policies, with the next request working normally;
//! * the attribute map between two WASM devices, and state kept apart between concurrent
//!   requests (one fresh instance per request);
//! * ordering against builtin devices (identity before a WASM gate, a WASM device before the
//!   structured-logging device);
//! * hot reload swapping a module, and modules that fail to load or fail `init` reported like
//!   config errors (at startup and on reload, where the old pipeline stays).
//!
//! Most tests use the `testkit` guest (see `examples/wasm/testkit/src/lib.rs`): its behaviours
//! are chosen by config, and `only_if_header` arms one device by a request header, so one
//! server holds many cases.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{Empty, Full, StreamBody};
use hyper::body::{Body, Frame};
use serde_json::{Value, json};

use crate::client::{Resp, send_from, send_h1};
use crate::harness::{Server, Signal, TestDir, eventually, run_cli};
use crate::upstream::{self, Recorded, Upstream, echo_header};

const WAIT: Duration = Duration::from_secs(10);

/// Compiling a component takes ~1.5 s of CPU in a debug build and the harness gives a server
/// 10 s to start: these tests run one at a time so their servers do not compile at once.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The hooks a testkit instance runs for a request without a body: the body hook sees the end
/// of the empty body right after `on-request` (see `the_body_hook_sees_the_end_of_an_empty_body`).
const GET_TRACE: &str = "on-request,on-request-body-end,before-proxy,after-proxy,on-response";

/// The hooks a testkit instance runs for a request with a body, without the body chunks (see
/// [`chunks_removed`]).
const BODY_TRACE: &str = "on-request,before-proxy,on-request-body-end,after-proxy,on-response";

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const GOOGLEBOT: &str = "Googlebot/2.1 (+http://www.google.com/bot.html)";

// === helpers ===

/// The freshly built example guests (built once per test run).
pub(crate) fn guest(name: &str) -> String {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/wasm");
        let status = std::process::Command::new(root.join("build.sh"))
            .status()
            .expect("run examples/wasm/build.sh");
        assert!(status.success(), "examples/wasm/build.sh failed");
        root.join("out")
    });
    dir.join(format!("{name}.wasm")).display().to_string()
}

/// A `[[device]]` table for a WASM guest with `extra` keys and a `[device.config]` body.
fn wasm(name: &str, guest_name: &str, extra: &str, config: &str) -> String {
    wasm_at(name, &guest(guest_name), extra, config)
}

/// A `[[device]]` table for the WASM module at `path`.
fn wasm_at(name: &str, path: &str, extra: &str, config: &str) -> String {
    format!(
        "[[device]]\ntype = \"wasm\"\nname = \"{name}\"\npath = \"{path}\"\n{extra}\n\
         [device.config]\n{config}\n\n"
    )
}

/// A testkit device (see the guest's docs for its config keys).
fn testkit(name: &str, extra: &str, config: &str) -> String {
    wasm(name, "testkit", extra, config)
}

/// A structured-logging device writing every response to `path`, with `extra` keys.
fn logging(path: &Path, extra: &str) -> String {
    format!(
        "[[device]]\ntype = \"structured_logging\"\noutput = \"{}\"\n{extra}\n\n",
        path.display()
    )
}

/// Two services, `up` (routes `/`) and `v2` (routes `/v2`), then `devices`.
fn config(upstream: &str, v2: &str, devices: &str) -> String {
    format!(
        "[server]\nthreads = 2\nerror_detail = \"full\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"up\"\nupstreams = [{{ url = \"{upstream}\" }}]\n\n\
         [[service]]\nname = \"v2\"\nupstreams = [{{ url = \"{v2}\" }}]\n\n\
         [[route]]\npath = \"/\"\nservice = \"up\"\n\n\
         [[route]]\npath = \"/v2\"\nservice = \"v2\"\n\n{devices}"
    )
}

/// An echo upstream tagged `tag` that records every request head and adds `reply_headers`.
async fn recording(
    tag: &'static str,
    reply_headers: &'static [(&'static str, &'static [u8])],
) -> (Upstream, Recorded) {
    let (handler, recorded) = upstream::recording(upstream::echo(tag), reply_headers);
    (upstream::http(handler).await, recorded)
}

async fn send<B>(addr: SocketAddr, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {}", req.method(), req.uri());
    send_h1(addr, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(path).header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Empty::<Bytes>::new()).unwrap()).await
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut b = Request::post(path).header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        addr,
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

/// A streamed (chunked) POST sending each of `chunks` as one frame.
async fn post_chunks(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&'static str],
) -> Resp {
    let mut b = Request::post(path).header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    send(addr, b.body(StreamBody::new(stream::iter(frames))).unwrap()).await
}

/// `trace` without its `on-request-body` entries (how a body is cut into chunks is up to the
/// network; the end of the body, `on-request-body-end`, stays).
fn chunks_removed(trace: &str) -> String {
    trace.replace("on-request-body,", "")
}

/// Every value of `name` in the response, as UTF-8.
fn texts(res: &Resp, name: &str) -> Vec<String> {
    res.values(name)
        .into_iter()
        .map(|v| String::from_utf8(v.to_vec()).expect("UTF-8 header value"))
        .collect()
}

/// The `x-testkit-ran` lines (`TAG:TRACE`, one per tagged testkit device), sorted.
fn ran(res: &Resp) -> Vec<String> {
    let mut lines = texts(res, "x-testkit-ran");
    lines.sort();
    lines
}

/// `TAG:TRACE` for each tag, sorted like [`ran`].
fn ran_lines<'a>(tags: impl IntoIterator<Item = &'a str>, trace: &str) -> Vec<String> {
    let mut lines: Vec<String> = tags.into_iter().map(|t| format!("{t}:{trace}")).collect();
    lines.sort();
    lines
}

/// Every JSON line of the log file at `path` (none if it does not exist yet).
fn log_lines(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// The one log line about request `id` (waits for it, ≤ 10 s).
async fn log_line(path: &Path, id: &str) -> Value {
    let of = |id: &str| -> Vec<Value> {
        log_lines(path)
            .into_iter()
            .filter(|l| l["request_id"] == id && l["event"] != "device_log")
            .collect()
    };
    assert!(
        eventually(WAIT, || !of(id).is_empty()).await,
        "no log line for request {id}; the file holds:\n{}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
    let lines = of(id);
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    lines.into_iter().next().unwrap()
}

/// What a guest logs lands in the structured-logging output as `device_log` lines with the
/// device, the level and the request id, right before the request's own line.
#[tokio::test]
async fn guest_logs_land_in_the_structured_log_with_the_request_id() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let dir = TestDir::new("wasm-guest-logs");
    let log = dir.join("access.log");
    let devices = [
        wasm("deny", "deny", "", "path_prefix = \"/admin\"\nstatus = 403"),
        logging(&log, ""),
    ]
    .concat();
    let server = Server::start_in(dir, &config(&up.url(), &up.url(), &devices)).await;
    let res = get(server.addr(), "/admin/users", &[]).await;
    assert_eq!(res.status, 403, "{}", res.text());
    let id = res.request_id().to_owned();
    let line = log_line(&log, &id).await;
    assert_eq!(line["event"], "response", "{line}");
    let lines: Vec<Value> = log_lines(&log)
        .into_iter()
        .filter(|l| l["request_id"] == id.as_str())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["event"], "device_log", "{lines:?}");
    assert_eq!(lines[0]["device"], "deny");
    assert_eq!(lines[0]["level"], "info");
    assert_eq!(lines[0]["message"], "denied GET /admin/users");
    assert_eq!(lines[1]["event"], "response");

    // A request the guest lets through logs nothing of its own.
    let res = get(server.addr(), "/public", &[]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let id = res.request_id().to_owned();
    log_line(&log, &id).await;
    let device_lines = log_lines(&log)
        .into_iter()
        .filter(|l| l["request_id"] == id.as_str() && l["event"] == "device_log")
        .count();
    assert_eq!(device_lines, 0);
}

// === the example guests ===

/// The example guests as devices next to the identity device: add-header edits the request
/// and the response, reroute sends a request to another route (routed on the new path, normalized again), the
/// identity gate refuses a bot before any upstream is called.
#[tokio::test]
async fn wasm_devices_add_headers_reroute_and_gate_on_identity() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let v2 = upstream::http(upstream::echo("v2")).await;
    let devices = [
        "[[device]]\ntype = \"identity\"\nuser_agent = true\n\n".to_owned(),
        wasm("gate", "identity-gate", "", "deny_bots = true"),
        wasm(
            "reroute",
            "reroute",
            "",
            "header = \"x-version\"\nroutes = { v2 = \"/v2\", odd = \"/x/../v2\" }",
        ),
        wasm(
            "add",
            "add-header",
            "",
            "name = \"x-added\"\nvalue = \"yes\"\nresponse_name = \"x-served-by\"\nresponse_value = \"wasm\"",
        ),
    ]
    .concat();
    let server = Server::start(&config(&up.url(), &v2.url(), &devices)).await;
    let addr = server.addr();

    let res = get(addr, "/items", &[("x-added", "client")]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-served-by"), Some("wasm"));
    assert_eq!(echo_header(&res.json(), "x-added").as_deref(), Some("yes"));
    assert_eq!(res.json()["tag"], "up");

    let res = get(addr, "/items", &[("x-version", "v2")]).await;
    assert_eq!(res.json()["tag"], "v2", "re-routed to the /v2 route");
    assert_eq!(res.json()["uri"], "/v2/items", "the new path went upstream");
    // A path a device rewrote is normalized again before routing.
    let res = get(addr, "/items", &[("x-version", "odd")]).await;
    assert_eq!(res.json()["tag"], "v2", "routed on /v2/items");

    let res = get(addr, "/", &[("user-agent", GOOGLEBOT)]).await;
    assert_eq!(res.status, 403);
    assert_eq!(res.header("x-gate"), Some("bot"));
    assert_eq!(
        up.requests() + v2.requests(),
        3,
        "denied requests never reach an upstream"
    );
}

/// The deny guest answers early by path prefix with its own status, headers and body; the
/// body inspector refuses a body containing a word and lets a clean one through.
#[tokio::test]
async fn wasm_devices_deny_by_path_and_inspect_bodies() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let devices = [
        wasm(
            "deny",
            "deny",
            "",
            "path_prefix = \"/admin\"\nstatus = 451\nbody = \"nope\\n\"",
        ),
        wasm("inspect", "body-inspector", "", "forbidden = \"attack\""),
    ]
    .concat();
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;
    let addr = server.addr();

    let res = get(addr, "/admin/x", &[]).await;
    assert_eq!((res.status, res.text().as_str()), (451, "nope\n"));
    assert_eq!(res.header("x-denied-by"), Some("wasm"));

    let res = post(addr, "/upload", &[], "an attack on the body").await;
    assert_eq!(res.status, 422);
    let res = post(addr, "/upload", &[], "a peaceful body").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["body_len"], 15);
}

// === hooks and actions ===

/// `continue` in every hook leaves request and response untouched; header edits (set, append,
/// remove) apply to the request in `on-request` and `before-proxy` and to the response in
/// `after-proxy` and `on-response`; `upstream-path` changes only the path sent upstream (the
/// route stays), `reroute` routes anew (to the `/v2` service), `set-status` works in both
/// response hooks; a guest's non-UTF-8 value reaches the upstream.
#[tokio::test]
async fn continue_and_every_edit_in_every_hook() {
    let _serial = SERIAL.lock().await;
    const UPSTREAM_HEADERS: &[(&str, &[u8])] = &[
        ("x-up-set", b"upstream"),
        ("x-up-append", b"upstream"),
        ("x-up-remove", b"upstream"),
    ];
    let (up, seen) = recording("up", UPSTREAM_HEADERS).await;
    let (v2, seen_v2) = recording("v2", &[]).await;
    let devices = [
        // Answers `continue` in every hook; its tag line shows the hooks ran.
        testkit("idle", "", "quiet = true\ntag = \"idle\""),
        testkit(
            "edit",
            "",
            "quiet = true\nonly_if_header = \"x-edit\"\n[device.config.edits]\n\
             on-request = [[\"set-header\", \"x-set\", \"on-request\"], \
                           [\"append-header\", \"x-append\", \"on-request\"], \
                           [\"remove-header\", \"x-remove\"], \
                           [\"set-header\", \"x-bytes\", [255, 254, 65]]]\n\
             before-proxy = [[\"set-header\", \"x-set\", \"before-proxy\"], \
                             [\"append-header\", \"x-append\", \"before-proxy\"], \
                             [\"remove-header\", \"x-remove-late\"], \
                             [\"upstream-path\", \"/v2/shadow?via=wasm\"]]\n\
             after-proxy = [[\"set-header\", \"x-up-set\", \"after-proxy\"], \
                            [\"append-header\", \"x-up-append\", \"after-proxy\"], \
                            [\"remove-header\", \"x-up-remove\"], \
                            [\"set-status\", 203]]\n\
             on-response = [[\"set-header\", \"x-resp\", \"on-response\"], \
                            [\"append-header\", \"x-up-append\", \"on-response\"], \
                            [\"remove-header\", \"x-upstream\"]]",
        ),
        testkit(
            "restatus",
            "",
            "quiet = true\nonly_if_header = \"x-restatus\"\n\
             edits = { on-response = [[\"set-status\", 299]] }",
        ),
        testkit(
            "reroute",
            "",
            "quiet = true\nonly_if_header = \"x-reroute\"\n\
             edits = { on-request = [[\"reroute\", \"/v2/moved?from=wasm\"]] }",
        ),
    ]
    .concat();
    let server = Server::start(&config(&up.url(), &v2.url(), &devices)).await;
    let addr = server.addr();
    let client_headers = [
        ("x-set", "client"),
        ("x-append", "client"),
        ("x-remove", "client"),
        ("x-remove-late", "client"),
    ];

    // Nothing armed: every hook answers `continue`, nothing changes.
    let res = get(addr, "/items?x=1", &client_headers).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(ran(&res), ran_lines(["idle"], GET_TRACE));
    let req = seen.last();
    assert_eq!(req.uri, "/items?x=1");
    for (name, value) in client_headers {
        assert_eq!(req.values(name), [value.as_bytes()], "{name}");
    }
    assert!(
        req.headers.iter().all(|(n, _)| !n.starts_with("x-testkit")),
        "{:?}",
        req.headers
    );
    for (name, value) in UPSTREAM_HEADERS {
        assert_eq!(res.values(name), [*value], "{name}");
    }
    assert_eq!(res.header("x-upstream"), Some("up"));
    assert!(res.headers.get("x-resp").is_none());

    // Every header edit in every hook, upstream-path and set-status in after-proxy.
    let mut headers = client_headers.to_vec();
    headers.push(("x-edit", "1"));
    let res = get(addr, "/items?x=1", &headers).await;
    assert_eq!(res.status, 203, "set-status in after-proxy: {}", res.text());
    res.request_id();
    let req = seen.last();
    assert_eq!(
        req.uri, "/v2/shadow?via=wasm",
        "upstream-path: only the path sent upstream changes"
    );
    assert_eq!(res.json()["tag"], "up", "upstream-path does not route anew");
    assert_eq!(seen_v2.count(), 0);
    assert_eq!(req.values("x-set"), [b"before-proxy"], "set replaces");
    assert_eq!(
        req.values("x-append"),
        [&b"client"[..], b"on-request", b"before-proxy"],
        "append keeps the earlier values in order"
    );
    assert!(req.values("x-remove").is_empty(), "removed in on-request");
    assert!(
        req.values("x-remove-late").is_empty(),
        "removed in before-proxy"
    );
    assert_eq!(
        req.values("x-bytes"),
        [b"\xff\xfeA"],
        "a non-UTF-8 value from the guest"
    );
    assert_eq!(res.values("x-up-set"), [b"after-proxy"]);
    assert_eq!(
        res.values("x-up-append"),
        [&b"upstream"[..], b"after-proxy", b"on-response"]
    );
    assert!(
        res.values("x-up-remove").is_empty(),
        "removed in after-proxy"
    );
    assert_eq!(res.header("x-resp"), Some("on-response"));
    assert!(
        res.headers.get("x-upstream").is_none(),
        "removed in on-response"
    );
    assert_eq!(ran(&res), ran_lines(["idle"], GET_TRACE));

    // set-status in on-response.
    let res = get(addr, "/items", &[("x-restatus", "1")]).await;
    assert_eq!(res.status, 299, "{}", res.text());
    assert_eq!(res.json()["tag"], "up", "the upstream's body");

    // reroute in on-request: routed anew, to the /v2 service, with the new query.
    let before = seen.count();
    let res = get(addr, "/items?x=1", &[("x-reroute", "1")]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["tag"], "v2");
    assert_eq!(seen_v2.last().uri, "/v2/moved?from=wasm");
    assert_eq!(
        seen.count(),
        before,
        "the first route's upstream was not called"
    );
}

/// Repeated header lines and values that are not UTF-8 survive both ways: the guest sees the
/// client's values in order and as raw bytes (and copies them to the upstream and the
/// response), and sees the upstream's response values the same way.
#[tokio::test]
async fn repeated_and_non_utf8_header_values_survive_both_ways() {
    let _serial = SERIAL.lock().await;
    const UPSTREAM_VALUES: &[(&str, &[u8])] = &[("x-bin", b"up\x80"), ("x-bin", b"up-plain")];
    let (up, seen) = recording("up", UPSTREAM_VALUES).await;
    let devices = testkit("mirror", "", "quiet = true\nreflect_header = \"x-bin\"");
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;

    let client_values: [&[u8]; 3] = [b"plain", b"\xff\xfe raw", b"plain"];
    let mut req = Request::get("/bin").header("host", "test.local");
    for v in client_values {
        req = req.header("x-bin", http::HeaderValue::from_bytes(v).unwrap());
    }
    let res = send(server.addr(), req.body(Empty::<Bytes>::new()).unwrap()).await;
    assert_eq!(res.status, 200, "{}", res.text());

    let req = seen.last();
    assert_eq!(req.values("x-bin"), client_values, "the client's own lines");
    assert_eq!(
        req.values("x-testkit-reflect"),
        client_values,
        "what the guest saw in on-request, appended to the request"
    );
    assert_eq!(
        res.values("x-testkit-reflect"),
        client_values,
        "the same values, appended to the response in on-response"
    );
    let upstream_values: Vec<&[u8]> = UPSTREAM_VALUES.iter().map(|(_, v)| *v).collect();
    assert_eq!(res.values("x-bin"), upstream_values, "the upstream's lines");
    assert_eq!(
        res.values("x-testkit-reflect-upstream"),
        upstream_values,
        "what the guest saw of the upstream response in after-proxy"
    );
}

/// The body hook runs "once with end-of-stream (possibly empty chunk)" (`wit/device.wit`,
/// docs/wasm.md), so a device learns that a request had no body: for a GET or an empty POST
/// it runs right after `on-request` (nothing ever polls an empty body, so its end is known
/// at once).
#[tokio::test]
async fn the_body_hook_sees_the_end_of_an_empty_body() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let devices = testkit("kit", "", "quiet = true\ntag = \"kit\"");
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;

    let res = get(server.addr(), "/", &[]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(ran(&res), ran_lines(["kit"], GET_TRACE), "GET");
    let res = post(server.addr(), "/", &[], "").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(ran(&res), ran_lines(["kit"], GET_TRACE), "empty POST");
}

/// `respond` answers early from `on-request`, `on-request-body` (at a chunk and at the end of
/// the stream), `before-proxy` and `after-proxy` with the guest's status, headers and body; an
/// answer before the upstream call never reaches the upstream (one from a body hook stops the
/// body under it, so the upstream never answers), and `on-response` still runs for every
/// device: the observer's trace shows which of its hooks were skipped.
#[tokio::test]
async fn respond_answers_early_from_every_request_side_hook_and_after_proxy() {
    let _serial = SERIAL.lock().await;
    let (up, seen) = recording("up", &[]).await;
    const HOOKS: [&str; 5] = [
        "on-request",
        "on-request-body",
        "on-request-body-end",
        "before-proxy",
        "after-proxy",
    ];
    let mut devices: String = HOOKS
        .iter()
        .map(|hook| {
            testkit(
                &format!("respond-{hook}"),
                "",
                &format!(
                    "quiet = true\nonly_if_header = \"x-respond-{hook}\"\nrespond_on = \"{hook}\""
                ),
            )
        })
        .collect();
    devices.push_str(&testkit("observer", "", "quiet = true\ntag = \"observer\""));
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;
    let addr = server.addr();
    const CHUNKS: &[&str] = &["some ", "body"];

    // (hook, the observer's trace without its body chunks)
    let cases = [
        ("on-request", "on-response"),
        // The first chunk is answered before the observer sees it.
        ("on-request-body", "on-request,before-proxy,on-response"),
        ("on-request-body-end", "on-request,before-proxy,on-response"),
        ("before-proxy", "on-request,on-response"),
        (
            "after-proxy",
            "on-request,before-proxy,on-request-body-end,on-response",
        ),
    ];
    for (hook, observer) in cases {
        let before = up.requests();
        let arm = format!("x-respond-{hook}");
        let res = post_chunks(addr, "/form", &[(&arm, "1")], CHUNKS).await;
        assert_eq!(res.status, 418, "{hook}: {}", res.text());
        assert_eq!(res.header("x-testkit"), Some(hook));
        assert_eq!(res.text(), format!("testkit answered in {hook}\n"));
        res.request_id();
        let observed = texts(&res, "x-testkit-ran");
        assert_eq!(
            observed.len(),
            1,
            "{hook}: on-response still ran: {observed:?}"
        );
        assert_eq!(
            chunks_removed(&observed[0]),
            format!("observer:{observer}"),
            "{hook}"
        );
        let called = up.requests() - before;
        match hook {
            "on-request" | "before-proxy" => assert_eq!(called, 0, "{hook}"),
            "on-request-body" => {
                assert_eq!(observed[0], format!("observer:{observer}"), "no chunk");
                // The upstream may have got the head; it never answered this client.
                assert!(called <= 1, "{hook}");
            }
            "on-request-body-end" => {
                assert!(observed[0].contains("on-request-body,"), "{observed:?}");
                assert!(called <= 1, "{hook}");
            }
            _ => {
                assert_eq!(called, 1, "{hook}");
                let last = seen.last();
                assert_eq!((last.method.as_str(), last.uri.as_str()), ("POST", "/form"));
            }
        }
    }

    // Unarmed, nobody answers early.
    let res = post_chunks(addr, "/form", &[], CHUNKS).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["body_len"], 9);
    let observed = texts(&res, "x-testkit-ran");
    assert_eq!(observed.len(), 1, "{observed:?}");
    assert_eq!(
        chunks_removed(&observed[0]),
        format!("observer:{BODY_TRACE}")
    );
}

// === failures ===

/// One way for a guest to fail.
struct FailureCase {
    /// Device name and tag (with the policy appended) and the arming header `x-fail-NAME-POLICY`.
    name: &'static str,
    /// testkit config; `{policy}` is replaced.
    config: &'static str,
    /// Extra `[[device]]` keys.
    limits: &'static str,
    /// The status under `on_failure = "closed"`.
    closed: u16,
    /// What the client is told under "closed": `KIND in HOOK`.
    told: &'static str,
    /// Whether the upstream is called before the failure.
    upstream_called: bool,
}

const FAILURES: [FailureCase; 10] = [
    FailureCase {
        name: "trap",
        config: "fail = \"trap\"\nfail_hook = \"on-request\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "trap in on-request",
        upstream_called: false,
    },
    FailureCase {
        name: "loop",
        config: "fail = \"loop\"\nfail_hook = \"before-proxy\"",
        limits: "timeout_ms = 200",
        closed: 503,
        told: "timeout in before-proxy",
        upstream_called: false,
    },
    FailureCase {
        name: "memory",
        config: "fail = \"memory\"\nfail_hook = \"after-proxy\"",
        limits: "timeout_ms = 1000\nmemory_limit_bytes = 8388608",
        closed: 500,
        told: "memory limit in after-proxy",
        upstream_called: true,
    },
    FailureCase {
        name: "recursion",
        config: "fail = \"recursion\"\nfail_hook = \"on-response\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "trap in on-response",
        upstream_called: true,
    },
    FailureCase {
        name: "big-output",
        config: "fail = \"big-output\"\nfail_hook = \"on-request\"",
        limits: "timeout_ms = 1000\nmemory_limit_bytes = 33554432",
        closed: 500,
        told: "invalid output in on-request",
        upstream_called: false,
    },
    FailureCase {
        name: "bad-header-name",
        config: "fail = \"bad-header\"\nfail_hook = \"before-proxy\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "invalid output in before-proxy",
        upstream_called: false,
    },
    FailureCase {
        name: "bad-header-value",
        config: "fail = \"bad-header-value\"\nfail_hook = \"after-proxy\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "invalid output in after-proxy",
        upstream_called: true,
    },
    FailureCase {
        name: "status-101",
        config: "fail = \"bad-status\"\nbad_status = 101\nfail_hook = \"on-request\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "invalid output in on-request",
        upstream_called: false,
    },
    FailureCase {
        name: "status-600",
        config: "fail = \"bad-set-status\"\nbad_status = 600\nfail_hook = \"on-response\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "invalid output in on-response",
        upstream_called: true,
    },
    FailureCase {
        // `init` fails in the request's fresh instance (an earlier device set the attribute).
        name: "init",
        config: "init_error_if_attribute = \"fail-init-{policy}\"",
        limits: "timeout_ms = 1000",
        closed: 500,
        told: "init in on-request",
        upstream_called: false,
    },
];

/// Every failure mode (trap, infinite loop, memory bomb, deep recursion, oversized output,
/// invalid header name and value, status 101 and 600, `init` failing in the request's
/// instance) under both policies: "closed" answers 500 (503 for the timeout) telling only the
/// kind and the hook, "open" skips the device and the upstream answers; every answer carries
/// `x-request-id`, the failure is logged with device and request id, and the next request
/// through the same device runs all its hooks normally.
#[tokio::test]
async fn every_failure_mode_is_contained_under_both_policies() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let mut devices = String::new();
    let mut tags = Vec::new();
    for policy in ["closed", "open"] {
        devices.push_str(&testkit(
            &format!("init-trigger-{policy}"),
            "",
            &format!(
                "quiet = true\n\
                 copy_header_to_attribute = [\"x-fail-init-{policy}\", \"fail-init-{policy}\"]"
            ),
        ));
        for case in &FAILURES {
            let name = format!("{}-{policy}", case.name);
            devices.push_str(&testkit(
                &name,
                &format!("on_failure = \"{policy}\"\n{}", case.limits),
                &format!(
                    "quiet = true\ntag = \"{name}\"\nonly_if_header = \"x-fail-{name}\"\n{}",
                    case.config.replace("{policy}", policy)
                ),
            ));
            tags.push(name);
        }
    }
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;
    let addr = server.addr();
    let all_ran = ran_lines(tags.iter().map(String::as_str), GET_TRACE);

    let res = get(addr, "/", &[]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(ran(&res), all_ran, "every device runs every hook");

    for policy in ["closed", "open"] {
        for case in &FAILURES {
            let name = format!("{}-{policy}", case.name);
            let arm = format!("x-fail-{name}");
            let before = up.requests();
            let started = Instant::now();
            let res = get(addr, "/", &[(&arm, "1")]).await;
            let took = started.elapsed();
            let id = res.request_id().to_owned();
            assert!(took < Duration::from_secs(3), "{name} took {took:?}");
            if policy == "closed" {
                assert_eq!(res.status, case.closed, "{name}: {}", res.text());
                assert!(
                    res.text().contains(case.told),
                    "{name}: the client is told {:?}: {}",
                    case.told,
                    res.text()
                );
                assert!(
                    !res.text().contains("testkit") && !res.text().contains("misbehaving"),
                    "{name}: no guest output reaches the client: {}",
                    res.text()
                );
            } else {
                assert_eq!(res.status, 200, "{name}: {}", res.text());
                assert_eq!(res.json()["tag"], "up", "{name}: the upstream answered");
                // The device was skipped for the rest of the request, the others were not.
                let others = tags.iter().filter(|t| **t != name).map(String::as_str);
                assert_eq!(ran(&res), ran_lines(others, GET_TRACE), "{name}");
            }
            assert_eq!(
                up.requests() - before,
                usize::from(case.upstream_called || policy == "open"),
                "{name}: upstream calls"
            );
            assert!(
                server.wait_for_log(&id, WAIT).await
                    && server
                        .log_lines()
                        .iter()
                        .any(|l| l.contains(&id) && l.contains(&name)),
                "{name}: the failure is logged with the device name and the request id"
            );

            // The next request through the same device works normally.
            let res = get(addr, "/", &[]).await;
            assert_eq!(res.status, 200, "{name}: the next request: {}", res.text());
            assert_eq!(ran(&res), all_ran, "{name}: the next request");
        }
    }
}

// === attributes, concurrency ===

/// A WASM device leaves an attribute (here: the value of a request header) and a later WASM
/// device reads it; the map belongs to the request (a request without the header reads none).
#[tokio::test]
async fn attributes_pass_from_one_wasm_device_to_the_next() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let devices = [
        testkit(
            "scorer",
            "",
            "quiet = true\ncopy_header_to_attribute = [\"x-score\", \"score\"]",
        ),
        testkit(
            "policy",
            "",
            "read_attribute = \"score\"\nphases = [\"on-request\", \"on-response\"]",
        ),
    ]
    .concat();
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;

    let res = get(server.addr(), "/", &[("x-score", "42")]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-testkit-attribute"), Some("42"));
    let res = get(server.addr(), "/", &[]).await;
    assert_eq!(res.header("x-testkit-attribute"), Some("none"));
    let res = get(server.addr(), "/", &[("x-score", "7")]).await;
    assert_eq!(res.header("x-testkit-attribute"), Some("7"));
}

/// 32 concurrent requests, each with its own header value and body size, keep their state
/// apart: the attribute, the reflected header, the body byte count and the hook trace each
/// device reports are those of its own request only (a fresh instance per request).
#[tokio::test]
async fn concurrent_requests_keep_their_state_apart() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let devices = [
        testkit(
            "copier",
            "",
            "quiet = true\ncopy_header_to_attribute = [\"x-n\", \"n\"]",
        ),
        testkit(
            "kit",
            "",
            "read_attribute = \"n\"\nreflect_header = \"x-n\"\ntag = \"kit\"",
        ),
    ]
    .concat();
    let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;
    let addr = server.addr();

    let tasks: Vec<_> = (1..=32usize)
        .map(|n| {
            tokio::spawn(async move {
                let body = "b".repeat(n);
                let res = post(addr, "/", &[("x-n", &n.to_string())], &body).await;
                (n, res)
            })
        })
        .collect();
    for task in tasks {
        let (n, res) = task.await.unwrap();
        let n_text = n.to_string();
        assert_eq!(res.status, 200, "{n}: {}", res.text());
        assert_eq!(res.header("x-testkit-attribute"), Some(n_text.as_str()));
        assert_eq!(res.values("x-testkit-reflect"), [n_text.as_bytes()]);
        assert_eq!(res.header("x-testkit-body-bytes"), Some(n_text.as_str()));
        // Only this request's hooks, each once (one chunk or more, depending on the network).
        let trace = res.header("x-testkit-trace").unwrap();
        assert_eq!(chunks_removed(trace), BODY_TRACE, "{n}");
        assert!(
            trace.matches("on-request-body").count() <= n + 1,
            "{n}: {trace}"
        );
        assert_eq!(ran(&res), [format!("kit:{trace}")], "{n}");
        let json = res.json();
        assert_eq!(
            echo_header(&json, "x-testkit-reflect").as_deref(),
            Some(n_text.as_str()),
            "{n}: what the upstream got"
        );
        assert_eq!(json["body_len"], n, "{n}");
    }
}

// === ordering against builtin devices ===

/// Pipeline order against builtin devices: the identity device (fed `x-forwarded-for` by a
/// trusted proxy) before a WASM identity gate gives the guest the client identity; a WASM
/// device before the structured-logging device has its request header and its `set-status`
/// in the log line, one after it does not; with the gate moved before the identity device
/// (reload), the gate sees no identity and refuses.
#[tokio::test]
async fn wasm_devices_run_in_configured_order_with_builtin_devices() {
    let _serial = SERIAL.lock().await;
    let (up, seen) = recording("up", &[]).await;
    let dir = TestDir::new("wasm-order");
    let log = dir.join("access.log");
    let identity = "[[device]]\ntype = \"identity\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                    user_agent = true\n\n";
    let gate = wasm("gate", "identity-gate", "", "deny_bots = true");
    let rest = [
        testkit(
            "who",
            "",
            "quiet = true\ntag = \"who\"\nphases = [\"on-request\", \"on-response\"]",
        ),
        testkit(
            "early",
            "",
            "quiet = true\n\
             edits = { on-request = [[\"set-header\", \"x-wasm-early\", \"before-logging\"]] }",
        ),
        testkit(
            "restatus",
            "",
            "quiet = true\nonly_if_header = \"x-restatus\"\n\
             edits = { on-response = [[\"set-status\", 299]] }",
        ),
        logging(
            &log,
            "include_headers = true\n\
             allowed_headers = [\"x-wasm-early\", \"x-wasm-late\", \"x-restatus\"]\n\
             include_identity = true\nidentity_fields = [\"ip\", \"device\", \"bot\"]",
        ),
        testkit(
            "late",
            "",
            "quiet = true\n\
             edits = { on-request = [[\"set-header\", \"x-wasm-late\", \"after-logging\"]] }",
        ),
    ]
    .concat();
    let server = Server::start_in(
        dir,
        &config(&up.url(), &up.url(), &format!("{identity}{gate}{rest}")),
    )
    .await;
    let addr = server.addr();
    let request = |ua: &str, extra: Option<(&str, &str)>| {
        let mut b = Request::get("/page")
            .header("host", "test.local")
            .header("user-agent", ua)
            .header("x-forwarded-for", "203.0.113.7");
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(Empty::<Bytes>::new()).unwrap()
    };

    // A browser behind the trusted proxy 127.0.0.1: the gate lets it through, the guest sees
    // the forwarded client address.
    let res = send_from("127.0.0.1", addr, request(CHROME, None)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        ran(&res),
        ["who:on-request,on-response"],
        "the testkit device ran"
    );
    let req = seen.last();
    assert_eq!(req.header("x-wasm-early"), Some("before-logging"));
    assert_eq!(req.header("x-wasm-late"), Some("after-logging"));
    let line = log_line(&log, res.request_id()).await;
    assert_eq!(
        line["headers"],
        json!({ "x-wasm-early": "before-logging" }),
        "only the device before the logger: {line}"
    );
    assert_eq!(
        line["identity"],
        json!({ "ip": "203.0.113.7", "device": "desktop", "bot": false }),
        "{line}"
    );

    // The identity reached the guest: a bot is refused by the WASM gate.
    let before = seen.count();
    let res = send_from("127.0.0.1", addr, request(GOOGLEBOT, None)).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert_eq!(res.header("x-gate"), Some("bot"));
    assert_eq!(seen.count(), before, "refused before the upstream");
    let line = log_line(&log, res.request_id()).await;
    assert_eq!(line["status"], 403, "{line}");

    // set-status in on-response before the logger: the logger sees the final status.
    let res = send_from(
        "127.0.0.1",
        addr,
        request(CHROME, Some(("x-restatus", "1"))),
    )
    .await;
    assert_eq!(res.status, 299, "{}", res.text());
    let line = log_line(&log, res.request_id()).await;
    assert_eq!(line["status"], 299, "{line}");

    // The gate before the identity device: no identity yet, so it refuses everyone.
    server.rewrite_config(&config(
        &up.url(),
        &up.url(),
        &format!("{gate}{identity}{rest}"),
    ));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("configuration reloaded", WAIT).await);
    let res = send_from("127.0.0.1", addr, request(CHROME, None)).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert_eq!(res.header("x-gate"), Some("no-identity"));
}

// === loading and reload ===

/// Hot reload swaps a module's config; a module that fails to load (imports the filesystem,
/// or is not WebAssembly at all) or whose `init` fails is refused like a config error, under
/// the device's `path` or `config` key, and the old pipeline keeps serving.
#[tokio::test]
async fn reload_swaps_a_module_and_a_bad_module_keeps_the_old_pipeline() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let with = |guest_name: &str, config_body: &str| {
        config(
            &up.url(),
            &up.url(),
            &wasm("dev", guest_name, "", config_body),
        )
    };
    let server = Server::start(&with("add-header", "name = \"x-added\"\nvalue = \"one\"")).await;
    let added = |res: &Resp| echo_header(&res.json(), "x-added");
    assert_eq!(
        added(&get(server.addr(), "/", &[]).await).as_deref(),
        Some("one")
    );

    server.rewrite_config(&with("add-header", "name = \"x-added\"\nvalue = \"two\""));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("configuration reloaded", WAIT).await);
    assert_eq!(
        added(&get(server.addr(), "/", &[]).await).as_deref(),
        Some("two")
    );

    // A module that fails to load (imports the filesystem), then one whose init fails, then
    // bytes that are not a module.
    server.rewrite_config(&with("forbidden-import", ""));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("reload refused", WAIT).await);
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("device[0].path") && l.contains("wasi:filesystem")),
        "{}",
        server.log_text()
    );
    server.rewrite_config(&with("testkit", "init_error = \"no good\""));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log_count("reload refused", 2, WAIT).await);
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("device[0].config") && l.contains("no good")),
        "{}",
        server.log_text()
    );
    let garbage = server
        .dir
        .write("garbage.wasm", b"\0asm but not really".repeat(10));
    server.rewrite_config(&config(
        &up.url(),
        &up.url(),
        &wasm_at("dev", &garbage.display().to_string(), "", ""),
    ));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log_count("reload refused", 3, WAIT).await);
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("device[0].path") && l.contains("garbage.wasm")),
        "{}",
        server.log_text()
    );
    assert_eq!(
        added(&get(server.addr(), "/", &[]).await).as_deref(),
        Some("two"),
        "the old pipeline still serves"
    );
    assert_eq!(server.log_count("configuration reloaded"), 1);
}

/// At startup a bad module is a config error: `config check` names the device's `path` (or
/// `config`, for an `init` error) and fails, and `serve` refuses to start.
#[tokio::test]
async fn bad_modules_are_config_errors_at_startup() {
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("wasm-check");
    let garbage = dir.write("garbage.wasm", b"not a module at all\n");
    let cases = [
        (
            "forbidden.toml",
            wasm("dev", "forbidden-import", "", ""),
            "device[0].path",
            "wasi:filesystem",
        ),
        (
            "init.toml",
            wasm("dev", "testkit", "", "init_error = \"no good\""),
            "device[0].config",
            "no good",
        ),
        (
            "garbage.toml",
            wasm_at("dev", &garbage.display().to_string(), "", ""),
            "device[0].path",
            "garbage.wasm",
        ),
    ];
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\n\
                respond = { status = 200, body = \"ok\" }\n\n";
    for (file, device, key, needle) in &cases {
        let path = dir.write(file, format!("{base}{device}"));
        let path = path.to_str().unwrap();
        let out = run_cli(&["config", "check", "-c", path], &dir.path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "config check accepted {file}");
        let prefix = format!("{path}: {key}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "no `{prefix}…{needle}…` problem for {file}:\n{err}"
        );
    }
    // `serve` runs the same checks before it binds anything.
    let path = dir.join("init.toml");
    let out = run_cli(&["serve", "-c", path.to_str().unwrap()], &dir.path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started with a failing init");
    assert!(
        err.contains("device[0].config") && err.contains("no good"),
        "{err}"
    );
}

/// A module that is not a loadable device is one line in `config check`'s report, naming the
/// file and what it is: a text file, a cut-off copy, a core module, a component without the
/// device interface (issue 15: these were multi-line parser dumps).
#[tokio::test]
async fn load_errors_are_one_line_naming_the_file_and_the_cause() {
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("wasm-load-errors");
    let full = std::fs::read(guest("add-header")).unwrap();
    let cases = [
        (
            "text.wasm",
            b"<html>404 Not Found</html>\n".to_vec(),
            "is not a WebAssembly component (bad magic number; it is a text file)",
        ),
        (
            "truncated.wasm",
            full[..full.len() / 2].to_vec(),
            "is truncated",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "is a core WebAssembly module, not a component (build it for wasm32-wasip2",
        ),
        (
            "empty-component.wasm",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not export the snakeway device interface (`snakeway:device/device@1.0.0`)",
        ),
        (
            "forbidden.wasm",
            std::fs::read(guest("forbidden-import")).unwrap(),
            "imports `wasi:filesystem/",
        ),
    ];
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\n\
                respond = { status = 200, body = \"ok\" }\n\n";
    for (file, bytes, cause) in cases {
        let module = dir.write(file, bytes);
        let config = dir.write(
            "snakeway.toml",
            format!("{base}{}", wasm_at("dev", file, "", "")),
        );
        let out = run_cli(
            &["config", "check", "-c", config.to_str().unwrap()],
            &dir.path,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "config check accepted {file}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "{file}: not one problem line after the count:\n{err}"
        );
        let expected = format!(
            "{}: device[0].path: {} {cause}",
            config.display(),
            module.display()
        );
        assert!(
            lines[1].starts_with(&expected),
            "{file}:\n  got:  {}\n  want: {expected}…",
            lines[1]
        );
    }
}
