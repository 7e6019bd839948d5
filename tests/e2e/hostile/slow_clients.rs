//! Clients that are slow on purpose: one that asks for a large response and never reads it
//! must lose its connection (and its `max_connections` slot) after `send_timeout_ms`.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::client::{self, connect, read_until_close};
use crate::harness::Server;
use crate::upstream;

/// Item 4: a client that requests 64 MiB and reads nothing is dropped after `send_timeout_ms`;
/// with `max_connections = 1`, the next client is served only then.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_and_slot() {
    let up = upstream::http(upstream::download(64 * 1024 * 1024)).await;
    let toml = format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
send_timeout_ms = 500
max_connections = 1

[[service]]
name = "big"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/big"
service = "big"

[[route]]
path = "/"
respond = {{ status = 200, body = "small" }}
"#,
        up.url()
    );
    let server = Server::start(&toml).await;
    let mut stalled = connect(server.addr()).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();

    // The next client waits for the only slot, which the stalled client frees by timing out.
    let res = tokio::time::timeout(Duration::from_secs(6), client::get(server.addr(), "/"))
        .await
        .expect("the next client was not served within 6 s: the stalled client kept its slot");
    let waited = start.elapsed();
    assert_eq!((res.status, res.text().as_str()), (200, "small"));
    assert!(
        waited >= Duration::from_millis(450),
        "served after {waited:?}: the stalled client's slot was free before send_timeout_ms"
    );
    assert!(
        server
            .wait_for_log("send timeout", Duration::from_secs(2))
            .await,
        "no send timeout logged"
    );

    // The stalled client gets what was already in flight, then the end: not 64 MiB.
    let raw = read_until_close(&mut stalled, Duration::from_secs(5)).await;
    assert!(raw.closed, "the stalled connection is still open");
    assert!(
        raw.bytes.len() < 64 * 1024 * 1024,
        "the whole body arrived ({} bytes): nothing stalled",
        raw.bytes.len()
    );
}
