//! Explicit retries (`[service.retry]`) through real sockets: each `on` condition, only
//! idempotent requests with small bodies, `attempts`, and the retry budget. Every count is taken
//! at the upstreams, which see each try.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{full, get, send_h1};
use crate::harness::Server;
use crate::upstream::{self, Handler, Upstream, full_body};

/// A listener and a service `s` over `upstreams` (URLs, in order) with `strategy`, no circuit
/// breaker (so a failing upstream keeps being picked), and `retry` as the body of
/// `[service.retry]` (`None`: no table).
fn config(strategy: &str, upstreams: &[String], retry: Option<&str>) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{ url = \"{u}\" }}"))
        .collect();
    let retry = retry.map_or(String::new(), |r| format!("[service.retry]\n{r}\n"));
    format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "s"
strategy = "{strategy}"
upstreams = [{}]
[service.circuit_breaker]
enabled = false
{retry}
[[route]]
path = "/"
service = "s"
"#,
        ups.join(", ")
    )
}

/// Reads the whole request body, then answers `status` with the body `bad`.
fn status(code: u16) -> Handler {
    upstream::handler(move |req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::builder()
            .status(code)
            .body(full_body("bad"))
            .unwrap()
    })
}

/// Answers 200 with the request body it received (`ok` when empty), after `delay`.
fn mirror(delay: Duration) -> Handler {
    upstream::handler(move |req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        tokio::time::sleep(delay).await;
        let body = if body.is_empty() {
            Bytes::from_static(b"ok")
        } else {
            body
        };
        Response::builder().body(full_body(body)).unwrap()
    })
}

/// A raw upstream that reads a request head and closes the connection without answering.
async fn resetter() -> Upstream {
    upstream::raw(|mut conn| {
        Box::pin(async move {
            let mut buf = Vec::new();
            let mut chunk = [0; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut chunk).await {
                    Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let _ = conn.shutdown().await;
        })
    })
    .await
}

/// Asserts that exactly `n` retries were logged with `needle` (log lines arrive through a
/// pipe: waited for).
async fn assert_logged(server: &Server, needle: &str, n: usize) {
    assert_eq!(logged_retries(server, needle, n).await, n);
}

/// The number of retries logged, once at least `min` are; each must contain `needle`.
async fn logged_retries(server: &Server, needle: &str, min: usize) -> usize {
    server
        .wait_for_log_count(needle, min, crate::client::T)
        .await;
    let retries: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("retrying the request"))
        .collect();
    assert!(retries.iter().all(|l| l.contains(needle)), "{retries:#?}");
    retries.len()
}

async fn send(server: &Server, method: &str, body: Vec<u8>) -> crate::client::Resp {
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "test.local")
        .body(full(body))
        .unwrap();
    send_h1(server.addr(), req)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

#[tokio::test]
async fn connect_failure_is_retried_on_the_other_upstream() {
    let dead = format!("http://{}", upstream::refused_addr());
    let good = upstream::http(mirror(Duration::ZERO)).await;
    let ups = [dead, good.url()];

    let retry = r#"on = ["connect_failure"]"#;
    let server = Server::start(&config("round_robin", &ups, Some(retry))).await;
    for i in 0..20 {
        let res = get(server.addr(), "/").await;
        assert_eq!((res.status, res.text().as_str()), (200, "ok"), "GET {i}");
    }
    assert_eq!(good.requests(), 20);
    // Round robin sends at least every other request to the dead port first (more: a retry
    // takes the next slot of the schedule too), each retried once.
    let retried = logged_retries(&server, "cause=\"connect_failure\"", 10).await;
    assert!((10..=20).contains(&retried), "{retried}");
    drop(server);

    // Without [service.retry], those requests fail.
    let server = Server::start(&config("round_robin", &ups, None)).await;
    let mut failed = 0;
    for _ in 0..20 {
        match get(server.addr(), "/").await.status {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(failed, 10, "every other request goes to the dead port");
    assert_eq!(server.log_count("retrying"), 0);
}

#[tokio::test]
async fn reset_before_response_is_retried_only_when_listed() {
    let reset = resetter().await;
    let good = upstream::http(mirror(Duration::ZERO)).await;
    let ups = [reset.url(), good.url()];

    let server = Server::start(&config(
        "failover",
        &ups,
        Some(r#"on = ["reset_before_response"]"#),
    ))
    .await;
    for i in 0..5 {
        let res = get(server.addr(), "/").await;
        assert_eq!((res.status, res.text().as_str()), (200, "ok"), "GET {i}");
    }
    assert_eq!(good.requests(), 5);
    assert_eq!(
        reset.connections(),
        5,
        "one try each on the resetting upstream"
    );
    drop(server);

    // Listed conditions only: a reset is not a connect failure.
    let server = Server::start(&config(
        "failover",
        &ups,
        Some(r#"on = ["connect_failure", "503"]"#),
    ))
    .await;
    let res = get(server.addr(), "/").await;
    assert_eq!(res.status, 502, "{}", res.text());
    assert_eq!(good.requests(), 5, "not retried");
    assert_eq!(reset.connections(), 6);
}

#[tokio::test]
async fn a_single_upstream_is_retried_itself() {
    // Closes its first connection without answering, then answers every request.
    let seen = Arc::new(AtomicUsize::new(0));
    let flaky = upstream::raw(move |mut conn| {
        let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            let mut buf = Vec::new();
            let mut chunk = [0; 4096];
            loop {
                match conn.read(&mut chunk).await {
                    Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if first {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        })
    })
    .await;
    let server = Server::start(&config("round_robin", &[flaky.url()], Some(""))).await;
    let res = get(server.addr(), "/").await;
    assert_eq!((res.status, res.text().as_str()), (200, "ok"));
    assert_eq!(flaky.connections(), 2, "the reset try, then the retry");
    assert_logged(&server, "cause=\"reset_before_response\"", 1).await;
}

/// An upstream answering `code` first (failover), a good one second: with `code` listed every
/// request is answered by the good one after exactly one try on the failing one; with the
/// defaults (`connect_failure`, `reset_before_response`) the client gets `code`.
async fn status_is_retried(code: u16) {
    let bad = upstream::http(status(code)).await;
    let good = upstream::http(mirror(Duration::ZERO)).await;
    let ups = [bad.url(), good.url()];

    let on = format!("on = [\"{code}\"]");
    let server = Server::start(&config("failover", &ups, Some(&on))).await;
    for i in 0..10 {
        let res = get(server.addr(), "/").await;
        assert_eq!((res.status, res.text().as_str()), (200, "ok"), "GET {i}");
    }
    assert_eq!((bad.requests(), good.requests()), (10, 10));
    assert_logged(&server, &format!("cause=\"{code}\""), 10).await;
    drop(server);

    let server = Server::start(&config("failover", &ups, Some(""))).await;
    let res = get(server.addr(), "/").await;
    assert_eq!((res.status, res.text().as_str()), (code, "bad"));
    assert_eq!((bad.requests(), good.requests()), (11, 10));
}

#[tokio::test]
async fn status_502_is_retried_when_listed() {
    status_is_retried(502).await;
}

#[tokio::test]
async fn status_503_is_retried_when_listed() {
    status_is_retried(503).await;
}

#[tokio::test]
async fn status_504_is_retried_when_listed() {
    status_is_retried(504).await;
}

#[tokio::test]
async fn only_idempotent_requests_with_small_bodies_are_retried() {
    let bad = upstream::http(status(503)).await;
    let good = upstream::http(mirror(Duration::ZERO)).await;
    let ups = [bad.url(), good.url()];
    let server = Server::start(&config("failover", &ups, Some(r#"on = ["503"]"#))).await;

    // POST and PATCH are not idempotent: the client gets the 503.
    for method in ["POST", "PATCH"] {
        let res = send(&server, method, b"x".to_vec()).await;
        assert_eq!(res.status, 503, "{method}");
    }
    assert_eq!((bad.requests(), good.requests()), (2, 0));

    // An empty PUT and DELETE, and a PUT with a small body: the second try carries the body
    // intact.
    for method in ["PUT", "DELETE"] {
        let res = send(&server, method, Vec::new()).await;
        assert_eq!((res.status, res.text().as_str()), (200, "ok"), "{method}");
    }
    let small: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let res = send(&server, "PUT", small.clone()).await;
    assert_eq!(res.status, 200);
    assert!(
        res.body[..] == small[..],
        "the retried body arrived changed"
    );
    assert_eq!((bad.requests(), good.requests()), (5, 3));

    // Over 64 KiB: never buffered, never retried (the failing upstream still gets it all).
    let res = send(&server, "PUT", vec![7; 64 * 1024 + 1]).await;
    assert_eq!((res.status, res.text().as_str()), (503, "bad"));
    assert_eq!((bad.requests(), good.requests()), (6, 3));
}

#[tokio::test]
async fn a_client_stalling_while_its_body_is_read_for_retries_gets_408() {
    let good = upstream::http(mirror(Duration::ZERO)).await;
    let toml = config("round_robin", &[good.url()], Some("")).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nbody_read_timeout_ms = 300",
    );
    let server = Server::start(&toml).await;
    // 100 bytes declared (small enough to be read for retries), 10 sent, then silence.
    let raw = crate::client::raw(
        server.addr(),
        b"PUT / HTTP/1.1\r\nhost: test.local\r\ncontent-length: 100\r\n\r\n0123456789",
        crate::client::T,
    )
    .await;
    assert_eq!(raw.status(), Some(408), "{}", raw.text());
    assert_eq!(good.requests(), 0, "nothing was sent upstream");
}

#[tokio::test]
async fn one_attempt_never_retries() {
    let bad = upstream::http(status(503)).await;
    let good = upstream::http(mirror(Duration::ZERO)).await;
    let ups = [bad.url(), good.url()];
    let retry = r#"attempts = 1
on = ["503", "connect_failure", "reset_before_response"]"#;
    let server = Server::start(&config("failover", &ups, Some(retry))).await;
    for _ in 0..3 {
        assert_eq!(get(server.addr(), "/").await.status, 503);
    }
    assert_eq!((bad.requests(), good.requests()), (3, 0));
}

/// Sends `n` GETs at once; returns how many got 200 (the others must get 503).
async fn burst(server: &Server, n: usize) -> usize {
    let addr = server.addr();
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { get(addr, "/").await }))
        .collect();
    let mut ok = 0;
    for task in tasks {
        let res = task.await.unwrap();
        match res.status {
            200 => ok += 1,
            503 => {}
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    ok
}

#[tokio::test]
async fn the_budget_bounds_retries_in_flight() {
    // Every first try fails at once; every retry holds its upstream for 2 s, so retries pile
    // up in flight while the burst arrives.
    let bad = upstream::http(status(503)).await;
    let slow = upstream::http(mirror(Duration::from_secs(2))).await;
    let ups = [bad.url(), slow.url()];

    // 10 % of at most 40 requests in flight: 4 retries at a time (and always at least 3).
    let retry = r#"on = ["503"]
budget_percent = 10"#;
    let server = Server::start(&config("failover", &ups, Some(retry))).await;
    let ok = burst(&server, 40).await;
    assert_eq!(bad.requests(), 40);
    assert_eq!(slow.requests(), ok, "each retry is one 200");
    assert!(
        (3..=8).contains(&ok),
        "{ok} of 40 retried with a 10 % budget"
    );
    drop(server);

    // The same burst with the whole budget: every request is retried.
    let retry = r#"on = ["503"]
budget_percent = 100"#;
    let server = Server::start(&config("failover", &ups, Some(retry))).await;
    assert_eq!(burst(&server, 40).await, 40);
    assert_eq!((bad.requests(), slow.requests()), (80, ok + 40));
}
