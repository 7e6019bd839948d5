//! Active health checks (`[service.health_check]`) through the real binary: a dead upstream is
//! skipped and comes back when it revives, panic mode, verdicts kept across a reload, and
//! probes that stop with their service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::client::get;
use crate::harness::{Server, Signal};
use crate::upstream::{self, Handler, Recorded, Upstream, full_body};

const WAIT: Duration = Duration::from_secs(10);

/// One listener, a service `api` over `upstreams` (circuit breaker off, so only the health
/// checks steer traffic) with `health_check` as its `[service.health_check]` body, a route to
/// it, and `extra` appended.
fn config(upstreams: &[String], health_check: &str, extra: &str) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{ url = \"{u}\" }}"))
        .collect();
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "api"
upstreams = [{}]
[service.circuit_breaker]
enabled = false
[service.health_check]
enabled = true
{health_check}

[[route]]
path = "/"
service = "api"
{extra}
"#,
        ups.join(", ")
    )
}

/// Requests on the probe path (`/healthz`) with the probes' user agent.
fn probes(recorded: &Recorded) -> usize {
    recorded.count_where(|s| {
        s.uri == "/healthz" && s.header("user-agent") == Some("snakeway-health-check")
    })
}

/// Answers `/healthz` with 500 while `failing` is set (else 200), and `/` like `echo(tag)`.
fn probe_switch(tag: &'static str, failing: Arc<AtomicBool>) -> Handler {
    let echo = upstream::echo(tag);
    upstream::handler(move |req: Request<Incoming>| {
        let fail = req.uri().path() == "/healthz" && failing.load(Ordering::SeqCst);
        let answer = echo(req);
        async move {
            if fail {
                Response::builder()
                    .status(500)
                    .body(full_body("down"))
                    .unwrap()
            } else {
                answer.await
            }
        }
    })
}

/// Sends `n` GETs one after another; asserts each is a 200 and returns their `x-upstream`s.
async fn upstreams_of(server: &Server, n: usize) -> Vec<String> {
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        let res = get(server.addr(), "/").await;
        assert_eq!(res.status, 200, "{}", res.text());
        tags.push(res.header("x-upstream").unwrap_or_default().to_owned());
    }
    tags
}

/// A plain HTTP/1.1 server on `addr` (a port the test chose) answering 200 with
/// `x-upstream: revived`; counts the requests on `/` (not the probes).
async fn serve_on(addr: SocketAddr, hits: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    // The port was free when the test took it; an outgoing connection may hold it briefly.
    let started = Instant::now();
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) if started.elapsed() > WAIT => panic!("cannot rebind the dead port {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    if req.uri().path() != "/healthz" {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-upstream", "revived")
                                .body(full_body("revived"))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

#[tokio::test]
async fn a_dead_upstream_is_skipped_and_gets_traffic_again_once_it_revives() {
    let (handler, recorded) = upstream::recording(upstream::echo("live"), &[]);
    let live = upstream::http(handler).await;
    let dead = upstream::refused_addr();
    let server = Server::start(&config(
        &[live.url(), format!("http://{dead}")],
        "interval_ms = 200\ntimeout_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 2",
        "",
    ))
    .await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tags = upstreams_of(&server, 40).await;
    assert!(tags.iter().all(|t| t == "live"), "{tags:?}");
    assert!(
        probes(&recorded) >= 2,
        "the live upstream saw {} probes",
        probes(&recorded)
    );
    assert_eq!(
        server.log_count("upstream unhealthy"),
        1,
        "the flip is logged once"
    );
    let flip = server
        .log_lines()
        .into_iter()
        .find(|l| l.contains("upstream unhealthy"))
        .unwrap_or_default();
    assert!(
        flip.contains(&dead.to_string()) && flip.contains("Connection refused"),
        "the flip names the upstream and the last probe's error: {flip}"
    );

    let hits = Arc::new(AtomicUsize::new(0));
    let revived = serve_on(dead, hits.clone()).await;
    let started = Instant::now();
    while hits.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < WAIT,
            "the revived upstream got no traffic within {WAIT:?}"
        );
        let res = get(server.addr(), "/").await;
        assert_eq!(res.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.log_count("upstream healthy again") >= 1);
    // Back in the rotation: round robin shares requests with it again.
    let tags = upstreams_of(&server, 10).await;
    assert!(tags.iter().any(|t| t == "revived"), "{tags:?}");
    assert!(tags.iter().any(|t| t == "live"), "{tags:?}");
    revived.abort();
}

#[tokio::test]
async fn when_every_upstream_fails_its_probes_traffic_still_flows_to_all() {
    let failing = Arc::new(AtomicBool::new(true));
    let a = upstream::http(probe_switch("a", failing.clone())).await;
    let b = upstream::http(probe_switch("b", failing.clone())).await;
    let server = Server::start(&config(
        &[a.url(), b.url()],
        "interval_ms = 100\nunhealthy_threshold = 1\nhealthy_threshold = 1",
        "",
    ))
    .await;
    assert!(
        server.wait_for_log("panic mode", WAIT).await,
        "panic mode not logged"
    );
    assert_eq!(server.log_count("upstream unhealthy"), 2);
    let tags = upstreams_of(&server, 20).await;
    assert!(
        tags.iter().any(|t| t == "a") && tags.iter().any(|t| t == "b"),
        "{tags:?}"
    );
    assert_eq!(
        server.log_count("panic mode"),
        1,
        "logged once, not per request"
    );

    failing.store(false, Ordering::SeqCst);
    assert!(
        server.wait_for_log("panic mode over", WAIT).await,
        "leaving panic mode not logged"
    );
}

#[tokio::test]
async fn an_unhealthy_upstream_stays_unhealthy_across_a_reload() {
    let failing = Arc::new(AtomicBool::new(true));
    let a = upstream::http(probe_switch("a", Arc::new(AtomicBool::new(false)))).await;
    let b = upstream::http(probe_switch("b", failing.clone())).await;
    let urls = [a.url(), b.url()];
    // `b` fails its first probe and is out at once; five passes in a row (≥ 4 s apart from
    // the first) bring it back.
    let checks = "interval_ms = 1000\nunhealthy_threshold = 1\nhealthy_threshold = 5";
    let server = Server::start(&config(&urls, checks, "")).await;
    assert!(server.wait_for_log("upstream unhealthy", WAIT).await);

    // `b` answers its probes again, and an unrelated route is added.
    failing.store(false, Ordering::SeqCst);
    server.rewrite_config(&config(
        &urls,
        checks,
        "\n[[route]]\npath = \"/extra\"\nrespond = { status = 200, body = \"extra\" }\n",
    ));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("configuration reloaded", WAIT).await);
    assert_eq!(get(server.addr(), "/extra").await.text(), "extra");
    // A fresh verdict would be healthy and get half of these.
    let tags = upstreams_of(&server, 20).await;
    assert!(tags.iter().all(|t| t == "a"), "{tags:?}");
}

#[tokio::test]
async fn probes_stop_when_a_reload_removes_their_service() {
    let (handler, recorded) = upstream::recording(upstream::echo("a"), &[]);
    let a: Upstream = upstream::http(handler).await;
    let server = Server::start(&config(&[a.url()], "interval_ms = 50", "")).await;
    let started = Instant::now();
    while probes(&recorded) < 2 {
        assert!(started.elapsed() < WAIT, "no probes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    server.rewrite_config(
        "[server]\nthreads = 2\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nrespond = { status = 200, body = \"static\" }\n",
    );
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("configuration reloaded", WAIT).await);
    assert_eq!(get(server.addr(), "/").await.text(), "static");
    // A probe under way when the checker stopped may still land; after that, none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = probes(&recorded);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        probes(&recorded),
        settled,
        "probes continued after the service was removed"
    );
}
