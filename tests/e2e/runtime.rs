//! `server.runtime`: what the `per_core` worker model changes that a client or an upstream can
//! see (per-worker upstream pools, one limit shared by the workers' sockets), and the reloads
//! it refuses. Each test names its runtime itself, so both test binaries run them alike.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::client::{self, connect, read_one_response, read_until_close};
use crate::harness::{Server, Signal};
use crate::upstream;

const WAIT: Duration = Duration::from_secs(10);

fn proxy_config(runtime: &str, threads: usize, up: &upstream::Upstream) -> String {
    format!(
        r#"
[server]
threads = {threads}
runtime = "{runtime}"

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "up"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "up"
"#,
        up.url()
    )
}

/// Sequential requests, each on a new client connection: under `work_stealing` they share one
/// keep-alive upstream connection; under `per_core` each worker keeps its own pool, so the
/// upstream sees one connection per worker (the kernel spreads 40 connections over both
/// sockets; all on one would be a 1 in 2^39 chance), each reused by its worker.
#[tokio::test]
async fn per_core_workers_keep_their_own_upstream_pools() {
    for (runtime, expected) in [("work_stealing", 1), ("per_core", 2)] {
        let up = upstream::http(upstream::echo("pool")).await;
        let server = Server::start(&proxy_config(runtime, 2, &up)).await;
        for i in 0..40 {
            let res = client::get(server.addr(), &format!("/r{i}")).await;
            assert_eq!(res.status, 200, "{runtime}: {}", res.text());
        }
        assert_eq!(up.requests(), 40);
        assert_eq!(
            up.connections(),
            expected,
            "{runtime}: 40 sequential requests opened {} upstream connections",
            up.connections()
        );
    }
}

/// With `max_connections` below the number of workers, no worker keeps the only slot from
/// another: every connection is served once the one before it has closed, whichever worker's
/// socket the kernel gives it to, and never two at once.
#[tokio::test]
async fn one_slot_serves_connections_on_every_worker_in_turn() {
    let server = Server::start(
        r#"
[server]
threads = 2
runtime = "per_core"

[[listener]]
listen = "127.0.0.1:0"
max_connections = 1

[[route]]
path = "/"
respond = { status = 200, body = "ok" }
"#,
    )
    .await;
    let req = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";
    for i in 0..16 {
        let mut held = connect(server.addr()).await.unwrap();
        held.write_all(req).await.unwrap();
        let res = tokio::time::timeout(WAIT, read_one_response(&mut held))
            .await
            .unwrap_or_else(|_| panic!("connection {i} not served with the slot free"));
        assert_eq!(res.status, 200);
        // A second connection waits while the first holds the slot.
        let mut waiting = connect(server.addr()).await.unwrap();
        waiting.write_all(req).await.unwrap();
        let early = read_until_close(&mut waiting, Duration::from_millis(200)).await;
        assert!(
            early.bytes.is_empty() && !early.closed,
            "connection {i}: a second connection served beyond max_connections = 1: {:?}",
            early.text()
        );
        drop(held);
        let res = tokio::time::timeout(WAIT, read_one_response(&mut waiting))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: the waiting one not served"));
        assert_eq!(res.status, 200);
    }
}

/// `runtime` and `threads` shape the running workers: a reload that changes either is
/// refused with a report naming the key, and the server keeps serving as it was.
#[tokio::test]
async fn a_reload_cannot_change_the_runtime_or_the_threads() {
    let up = upstream::http(upstream::echo("up")).await;
    let server = Server::start(&proxy_config("per_core", 2, &up)).await;
    let attempts = [
        (proxy_config("work_stealing", 2, &up), "server.runtime"),
        (proxy_config("per_core", 1, &up), "server.threads"),
    ];
    for (n, (toml, key)) in attempts.iter().enumerate() {
        server.rewrite_config(toml);
        server.signal(Signal::SIGHUP);
        assert!(
            server
                .wait_for_log_count("reload refused", n + 1, WAIT)
                .await,
            "a reload changing {key} was not refused"
        );
        let text = server.log_text();
        assert!(
            text.contains(key) && text.contains("restart the server to apply it"),
            "the report does not name {key}:\n{text}"
        );
        assert_eq!(client::get(server.addr(), "/").await.status, 200);
    }
    // The same runtime and threads reload fine.
    server.rewrite_config(&proxy_config("per_core", 2, &up));
    server.signal(Signal::SIGHUP);
    assert!(
        server.wait_for_log("configuration reloaded", WAIT).await,
        "{}",
        server.log_text()
    );
}
