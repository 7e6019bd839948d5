//! Load-balancing strategies through real sockets: `least_requests` steers around a slow
//! upstream, `random` spreads evenly or by weight, and `sticky_hash` keeps each user on one
//! upstream, also across a reload that removes another.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::client::{get, raw_exchange, send_h1};
use crate::harness::Server;
use crate::upstream::{self, Upstream};

/// One listener and a service `lb` over `upstreams` (with their weights) using `strategy`.
fn config(strategy: &str, upstreams: &[(&Upstream, u32)]) -> String {
    config_with(strategy, upstreams, "")
}

/// [`config`] with `extra` TOML appended (keys of the service, then further tables).
fn config_with(strategy: &str, upstreams: &[(&Upstream, u32)], extra: &str) -> String {
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
{extra}

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

/// A GET of `/` whose request carries `header: value`; returns the `x-upstream` that answered.
async fn upstream_for(server: &Server, header: &str, value: &str) -> String {
    let req = http::Request::get("/")
        .header("host", "test.local")
        .header(header, value)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send_h1(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 200);
    res.header("x-upstream").unwrap().to_owned()
}

/// Sends every user of `users` three times; asserts each stayed on one upstream and returns
/// where each one went.
async fn placements(server: &Server, header: &str, users: &[String]) -> HashMap<String, String> {
    let mut placed = HashMap::new();
    for user in users {
        let first = upstream_for(server, header, user).await;
        for _ in 0..2 {
            let again = upstream_for(server, header, user).await;
            assert_eq!(again, first, "{header} {user} moved between requests");
        }
        placed.insert(user.clone(), first);
    }
    placed
}

#[tokio::test]
async fn sticky_hash_keeps_users_and_survives_removing_an_upstream() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let c = upstream::http(upstream::echo("c")).await;
    let key = r#"sticky_key = "header:x-user""#;
    let server = Server::start(&config_with(
        "sticky_hash",
        &[(&a, 1), (&b, 1), (&c, 1)],
        key,
    ))
    .await;
    let users: Vec<String> = (0..90).map(|i| format!("user-{i}")).collect();
    let before = placements(&server, "x-user", &users).await;
    for tag in ["a", "b", "c"] {
        let n = before.values().filter(|u| *u == tag).count();
        assert!(n >= 10, "only {n} of 90 users on {tag}: {before:?}");
    }

    // Remove b by reload: a's and c's users stay where they were.
    server.rewrite_config(&config_with("sticky_hash", &[(&a, 1), (&c, 1)], key));
    server.signal(Signal::SIGHUP);
    assert!(
        server
            .wait_for_log("configuration reloaded", Duration::from_secs(10))
            .await
    );
    let after = placements(&server, "x-user", &users).await;
    let kept: Vec<&String> = users.iter().filter(|u| before[*u] != "b").collect();
    let moved = kept.iter().filter(|u| after[**u] != before[**u]).count();
    assert!(
        moved * 10 <= kept.len(),
        "{moved} of {} users of the remaining upstreams moved",
        kept.len()
    );
    assert!(after.values().all(|u| u == "a" || u == "c"));
}

#[tokio::test]
async fn sticky_hash_on_a_cookie_and_without_the_key() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let server = Server::start(&config_with(
        "sticky_hash",
        &[(&a, 1), (&b, 1)],
        r#"sticky_key = "cookie:sid""#,
    ))
    .await;
    let sessions: Vec<String> = (0..40).map(|i| format!("theme=dark; sid=s{i}")).collect();
    let placed = placements(&server, "cookie", &sessions).await;
    let on_a = placed.values().filter(|u| *u == "a").count();
    assert!((5..=35).contains(&on_a), "{on_a} of 40 sessions on a");

    // Without the cookie: round robin, so both upstreams answer in turn.
    let to_a = count_sequential(&server, 20, "a").await;
    assert_eq!(to_a, 10, "requests without the key go round robin");
}

#[tokio::test]
async fn sticky_hash_on_the_client_ip_from_the_identity_device() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let c = upstream::http(upstream::echo("c")).await;
    // The identity device trusts the loopback peer, so the client is the x-forwarded-for
    // address; without the device every request would hash the same peer address.
    let extra = r#"sticky_key = "client_ip"

[[device]]
type = "identity"
trusted_proxies = ["127.0.0.0/8"]
"#;
    let toml = config_with("sticky_hash", &[(&a, 1), (&b, 1), (&c, 1)], extra).replace(
        "[[listener]]\nlisten = \"127.0.0.1:0\"",
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let server = Server::start(&toml).await;
    let clients: Vec<String> = (0..60).map(|i| format!("198.51.100.{i}")).collect();
    let placed = placements(&server, "x-forwarded-for", &clients).await;
    for tag in ["a", "b", "c"] {
        let n = placed.values().filter(|u| *u == tag).count();
        assert!(n >= 5, "only {n} of 60 clients on {tag}");
    }
}

/// A GET of `/` with `cookie` as raw bytes (any bytes a client may put there); returns the
/// answering upstream.
async fn upstream_for_raw_cookie(server: &Server, cookie: &[u8]) -> String {
    let mut request =
        b"GET / HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\ncookie: ".to_vec();
    request.extend_from_slice(cookie);
    request.extend_from_slice(b"\r\n\r\n");
    let res = raw_exchange(server.addr(), &request).await;
    assert_eq!(res.status, 200, "{:?}", String::from_utf8_lossy(cookie));
    res.header("x-upstream").unwrap().to_owned()
}

#[tokio::test]
async fn sticky_hash_takes_malformed_cookies_without_harm() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let server = Server::start(&config_with(
        "sticky_hash",
        &[(&a, 1), (&b, 1)],
        r#"sticky_key = "cookie:sid""#,
    ))
    .await;
    // Bytes no browser sends: obs-text, pairs without `=`, empty names and values, a flood
    // of separators, and a 30 KB value. Every one is answered; those that still carry a
    // `sid` value stick to one upstream, the others go round robin like any keyless request.
    let long = format!("sid={}", "x".repeat(30_000));
    let keyed: [&[u8]; 3] = [
        b"sid=\x80\xff\xfe; sid=again",
        b"=sid=1; sid==2",
        long.as_bytes(),
    ];
    for cookie in keyed {
        let first = upstream_for_raw_cookie(&server, cookie).await;
        for _ in 0..3 {
            let again = upstream_for_raw_cookie(&server, cookie).await;
            assert_eq!(first, again, "{:?}", String::from_utf8_lossy(cookie));
        }
    }
    let keyless: [&[u8]; 3] = [b"sid; =; ;;; sid", &[b';'; 8_000], b"SID=1; sid"];
    for cookie in keyless {
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(upstream_for_raw_cookie(&server, cookie).await);
        }
        assert_ne!(
            seen[0],
            seen[1],
            "{:?} has no key: round robin",
            String::from_utf8_lossy(cookie)
        );
    }
    // The server is still whole: an ordinary session still sticks.
    let session = upstream_for(&server, "cookie", "sid=s1").await;
    assert_eq!(upstream_for(&server, "cookie", "sid=s1").await, session);
}

#[tokio::test]
async fn sticky_hash_on_the_client_ip_ignores_a_forged_forwarded_for() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let c = upstream::http(upstream::echo("c")).await;
    // The identity device trusts no proxy: a client's x-forwarded-for is a lie it cannot use
    // to pick (or spread itself over) upstreams.
    let extra = r#"sticky_key = "client_ip"

[[device]]
type = "identity"
trusted_proxies = []
"#;
    let server = Server::start(&config_with(
        "sticky_hash",
        &[(&a, 1), (&b, 1), (&c, 1)],
        extra,
    ))
    .await;
    let forged: Vec<String> = (0..30).map(|i| format!("198.51.100.{i}")).collect();
    let placed = placements(&server, "x-forwarded-for", &forged).await;
    let first = &placed[&forged[0]];
    assert!(
        placed.values().all(|u| u == first),
        "a forged x-forwarded-for moved the client: {placed:?}"
    );
}
