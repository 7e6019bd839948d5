//! Load-balancing strategies through real sockets: `least_requests` steers around a slow
//! upstream, and `random` spreads evenly or by weight.

use std::time::Duration;

use crate::client::get;
use crate::harness::Server;
use crate::upstream::{self, Upstream};

/// One listener and a service `lb` over `upstreams` (with their weights) using `strategy`.
fn config(strategy: &str, upstreams: &[(&Upstream, u32)]) -> String {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|(u, w)| format!("{{ url = \"{}\", weight = {w} }}", u.url()))
        .collect();
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "lb"
upstreams = [{}]
strategy = "{strategy}"

[[route]]
path = "/"
service = "lb"
"#,
        ups.join(", ")
    )
}

/// Sends `n` GETs one after another and counts the answers whose `x-upstream` is `tag`.
async fn count_sequential(server: &Server, n: usize, tag: &str) -> usize {
    let mut hits = 0;
    for _ in 0..n {
        let res = get(server.addr(), "/").await;
        assert_eq!(res.status, 200);
        if res.header("x-upstream") == Some(tag) {
            hits += 1;
        }
    }
    hits
}

#[tokio::test]
async fn least_requests_avoids_the_slow_upstream() {
    let fast = upstream::http(upstream::slow(Duration::ZERO, "fast")).await;
    let slow = upstream::http(upstream::slow(Duration::from_millis(250), "slow")).await;
    let server = Server::start(&config("least_requests", &[(&fast, 1), (&slow, 1)])).await;
    let addr = server.addr();
    // 64 requests in flight together: started 2 ms apart, they all overlap the slow
    // upstream's 250 ms. (A burst that lands within the fast upstream's own latency cannot be
    // steered by in-flight counts: both sides look equally busy, so P2C splits it evenly, as
    // Envoy would.)
    let mut tasks = Vec::with_capacity(64);
    for _ in 0..64 {
        tasks.push(tokio::spawn(async move { get(addr, "/").await }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut to_fast = 0;
    for task in tasks {
        let res = task.await.unwrap();
        assert_eq!(res.status, 200);
        match res.text().as_str() {
            "fast" => to_fast += 1,
            "slow" => {}
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert!(
        to_fast * 100 >= 64 * 75,
        "only {to_fast} of 64 went to the fast upstream"
    );
    assert_eq!(fast.requests() + slow.requests(), 64);
}

#[tokio::test]
async fn random_spreads_over_equal_upstreams() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let server = Server::start(&config("random", &[(&a, 1), (&b, 1)])).await;
    let to_a = count_sequential(&server, 200, "a").await;
    assert!((60..=140).contains(&to_a), "{to_a} of 200 went to a");
    assert_eq!((a.requests(), b.requests()), (to_a, 200 - to_a));
}

#[tokio::test]
async fn random_follows_weights() {
    let heavy = upstream::http(upstream::echo("heavy")).await;
    let light = upstream::http(upstream::echo("light")).await;
    let server = Server::start(&config("random", &[(&heavy, 3), (&light, 1)])).await;
    let to_heavy = count_sequential(&server, 200, "heavy").await;
    assert!(
        (120..=180).contains(&to_heavy),
        "{to_heavy} of 200 went to the weight-3 upstream"
    );
}
