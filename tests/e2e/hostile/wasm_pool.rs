//! Hostile peers: WASM instance pool exhaustion. Clients that start an upload and stall hold
//! a WASM instance each for as long as they stall (a device with a body hook keeps its
//! instance until the body ends). Filling the pool must not switch an `on_failure = "open"`
//! security device off for everyone, and a device stalled this way must not take the slots
//! the other devices need.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::client::{Resp, connect, send_h1};
use crate::harness::Server;
use crate::upstream::{self, Upstream};
use crate::wasm::{SERIAL, guest};

/// How long the pool may take to fill once the stalled uploads are sent.
const FILL: Duration = Duration::from_secs(5);

/// `[wasm] max_instances = pool`, one service (an echo upstream) on `/`, then `devices`.
fn config(pool: u32, upstream: &Upstream, devices: &str) -> String {
    format!(
        "[server]\nthreads = 2\nerror_detail = \"full\"\n\n[wasm]\nmax_instances = {pool}\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"up\"\nupstreams = [{{ url = \"{}\" }}]\n\n\
         [[route]]\npath = \"/\"\nservice = \"up\"\n\n{devices}",
        upstream.url()
    )
}

/// A testkit `[[device]]` named `name`, failing open, with `extra` keys and `config` lines.
fn testkit(name: &str, extra: &str, config: &str) -> String {
    format!(
        "[[device]]\ntype = \"wasm\"\nname = \"{name}\"\npath = \"{}\"\non_failure = \"open\"\n\
         timeout_ms = 1000\n{extra}\n[device.config]\nquiet = true\n{config}\n\n",
        guest("testkit")
    )
}

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> Resp {
    let mut req = Request::get("/").header("host", "pool.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send_h1(addr, req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("GET /")
}

/// `n` uploads that announce 100 bytes, send 3 and stall, each on its own connection (kept
/// open until the returned streams are dropped).
async fn stalled_uploads(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(addr).await.expect("connect");
        s.write_all(b"POST / HTTP/1.1\r\nHost: pool.test\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .expect("send the start of an upload");
        streams.push(s);
    }
    streams
}

/// Waits until the upstream has received `n` requests (the stalled uploads that passed the
/// devices, and now stream their bodies there).
async fn reached(up: &Upstream, n: usize) {
    let deadline = Instant::now() + FILL;
    while up.requests() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        up.requests(),
        n,
        "stalled uploads that reached the upstream"
    );
}

/// Sends `GET /` with `headers` until the answer has `status`, for up to [`FILL`].
async fn until_status(addr: SocketAddr, headers: &[(&str, &str)], status: u16) -> Resp {
    let deadline = Instant::now() + FILL;
    loop {
        let res = get(addr, headers).await;
        if res.status == status || Instant::now() > deadline {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pool holds 2 instances; 2 stalled uploads through a device with a body hook hold both.
/// A new request then gets 503 with its request id (logged with it), although the device is
/// `on_failure = "open"`: before, the device was skipped and the request went upstream
/// unchecked. Once the stalled clients leave, requests pass through the device again.
#[tokio::test]
async fn a_full_pool_answers_503_even_for_a_device_that_fails_open() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let server = Server::start(&config(2, &up, &testkit("gate", "", ""))).await;
    let addr = server.addr();

    let stalled = stalled_uploads(addr, 2).await;
    reached(&up, 2).await;
    let before = up.requests();
    let res = get(addr, &[]).await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(up.requests(), before, "the upstream never sees the request");
    assert!(
        res.text().contains("instance pool full"),
        "the client is told why: {}",
        res.text()
    );
    let id = res.request_id().to_owned();
    assert!(
        server.wait_for_log(&id, FILL).await
            && server.log_lines().iter().any(|l| l.contains(&id)
                && l.contains("gate")
                && l.contains("whatever on_failure says")),
        "the refusal is logged with the device and the request id:\n{}",
        server.log_text()
    );

    drop(stalled);
    let res = until_status(addr, &[], 200).await;
    assert_eq!(res.status, 200, "the slots came back: {}", res.text());
}

/// Two devices: `front` answers requests carrying `x-front` itself (418, from on-request
/// only, so it holds an instance for microseconds); `inspector` has a body hook and its own
/// `max_instances = 2`, in a pool of 4. Four stalled uploads: two hold the inspector's
/// instances, two are refused by its cap, so the pool keeps room: `front` still answers,
/// while requests that reach the exhausted inspector get 503 (not a bypass, although it fails
/// open). Without the per-device cap the stalled uploads would hold the whole pool and
/// `front` could not run.
#[tokio::test]
async fn a_device_at_its_own_max_instances_leaves_the_pool_to_the_others() {
    let _serial = SERIAL.lock().await;
    let up = upstream::http(upstream::echo("up")).await;
    let devices = format!(
        "{}{}",
        testkit(
            "front",
            "",
            "phases = [\"on-request\"]\nonly_if_header = \"x-front\"\nrespond_on = \"on-request\"",
        ),
        testkit(
            "inspector",
            "max_instances = 2",
            "phases = [\"on-request\", \"on-request-body\"]",
        ),
    );
    let server = Server::start(&config(4, &up, &devices)).await;
    let addr = server.addr();

    let stalled = stalled_uploads(addr, 4).await;
    reached(&up, 2).await;
    let res = get(addr, &[]).await;
    assert_eq!(
        res.status,
        503,
        "the inspector was bypassed: {}",
        res.text()
    );
    assert!(
        res.text().contains("max_instances"),
        "the client is told why: {}",
        res.text()
    );
    // The pool still has room for the other device, again and again.
    for _ in 0..5 {
        let res = get(addr, &[("x-front", "1")]).await;
        assert_eq!(res.status, 418, "front is starved: {}", res.text());
        assert_eq!(res.text(), "testkit answered in on-request\n");
        assert_eq!(
            get(addr, &[]).await.status,
            503,
            "the inspector is bypassed"
        );
    }
    assert!(
        server.log_count("device at max_instances") >= 3,
        "the stalled uploads beyond the cap and the probe are logged:\n{}",
        server.log_text()
    );
    assert_eq!(
        up.requests(),
        2,
        "only the two stalled uploads holding an instance went up"
    );

    drop(stalled);
    let res = until_status(addr, &[], 200).await;
    assert_eq!(res.status, 200, "the slots came back: {}", res.text());
}
