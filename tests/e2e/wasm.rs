//! WASM devices through the real server (issue 4): the example guests (built by
//! `examples/wasm/build.sh`) as `[[device]] type = "wasm"` entries next to builtin devices,
//! failures under both policies, and hot reload swapping a module (a module that fails to
//! load or fails `init` keeps the old pipeline).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};

use crate::client::{Resp, send_h1};
use crate::harness::{Server, Signal};
use crate::upstream::{self, echo_header};

const WAIT: Duration = Duration::from_secs(10);

/// Compiling a component takes ~1.5 s of CPU in a debug build and the harness gives a server
/// 10 s to start: these tests run one at a time so their servers do not compile at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The freshly built example guests (built once per test run).
fn guest(name: &str) -> String {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/wasm");
        let status = std::process::Command::new(root.join("build.sh"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run examples/wasm/build.sh");
        assert!(status.success(), "examples/wasm/build.sh failed");
        root.join("out")
    });
    dir.join(format!("{name}.wasm")).display().to_string()
}

/// A `[[device]]` table for a WASM guest with `extra` keys and a `[device.config]` body.
fn wasm(name: &str, guest_name: &str, extra: &str, config: &str) -> String {
    format!(
        "[[device]]\ntype = \"wasm\"\nname = \"{name}\"\npath = \"{}\"\n{extra}\n[device.config]\n{config}\n\n",
        guest(guest_name)
    )
}

fn config(upstream: &str, v2: &str, devices: &str) -> String {
    format!(
        "[server]\nthreads = 2\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"up\"\nupstreams = [{{ url = \"{upstream}\" }}]\n\n\
         [[service]]\nname = \"v2\"\nupstreams = [{{ url = \"{v2}\" }}]\n\n\
         [[route]]\npath = \"/\"\nservice = \"up\"\n\n\
         [[route]]\npath = \"/v2\"\nservice = \"v2\"\n\n{devices}"
    )
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(path).header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_h1(addr, b.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test]
async fn wasm_devices_add_headers_reroute_and_gate_on_identity() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let v2 = upstream::http(upstream::echo("v2")).await;
    let devices = [
        "[[device]]\ntype = \"identity\"\nuser_agent = true\n\n".to_owned(),
        wasm("gate", "identity-gate", "", "deny_bots = true"),
        wasm("reroute", "reroute", "", "header = \"x-version\"\nroutes = { v2 = \"/v2\" }"),
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

    let res = get(
        addr,
        "/",
        &[(
            "user-agent",
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
        )],
    )
    .await;
    assert_eq!(res.status, 403);
    assert_eq!(res.header("x-gate"), Some("bot"));
    assert_eq!(
        up.requests() + v2.requests(),
        2,
        "denied requests never reach an upstream"
    );
}

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

    let post = |body: &'static str| {
        Request::post("/upload")
            .header("host", "test.local")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let res = send_h1(addr, post("an attack on the body")).await.unwrap();
    assert_eq!(res.status, 422);
    let res = send_h1(addr, post("a peaceful body")).await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["body_len"], 15);
}

#[tokio::test]
async fn wasm_failures_are_contained_under_both_policies() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    for (policy, expected) in [("closed", 503), ("open", 200)] {
        let devices = wasm(
            "looper",
            "testkit",
            &format!("timeout_ms = 200\non_failure = \"{policy}\""),
            "fail = \"loop\"\nfail_hook = \"on-request\"\nonly_if_header = true",
        ) + &wasm(
            "trapper",
            "testkit",
            &format!("timeout_ms = 1000\non_failure = \"{policy}\""),
            "fail = \"trap\"\nfail_hook = \"after-proxy\"\nonly_if_header = true",
        );
        let server = Server::start(&config(&up.url(), &up.url(), &devices)).await;
        let started = Instant::now();
        let res = get(server.addr(), "/", &[("x-testkit-fail", "1")]).await;
        assert_eq!(res.status, expected, "{policy}: {}", res.text());
        assert!(started.elapsed() < Duration::from_secs(2));
        if policy == "closed" {
            assert!(
                res.text().contains("timeout in on-request"),
                "{}",
                res.text()
            );
            assert!(
                server.wait_for_log("looper", WAIT).await,
                "the failure is logged with the device name"
            );
        }
        // The next requests through the same devices work normally.
        for _ in 0..3 {
            let res = get(server.addr(), "/", &[]).await;
            assert_eq!(res.status, 200, "{policy}");
        }
    }
}

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

    // A module that fails to load (imports the filesystem), then one whose init fails.
    server.rewrite_config(&with("forbidden-import", ""));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("reload refused", WAIT).await);
    assert!(
        server.log_text().contains("wasi:filesystem"),
        "{}",
        server.log_text()
    );
    server.rewrite_config(&with("testkit", "init_error = \"no good\""));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log_count("reload refused", 2, WAIT).await);
    assert!(
        server.log_text().contains("no good"),
        "{}",
        server.log_text()
    );
    assert_eq!(
        added(&get(server.addr(), "/", &[]).await).as_deref(),
        Some("two")
    );
}
