//! Clients that are slow on purpose: one that asks for a large response and never reads it
//! must lose its connection (and its `max_connections` slot) after `send_timeout_ms`; while a
//! listener is full, connections without a request open (a head trickling in, silence, idle
//! keep-alive) are closed after a tenth of their timeout, so a new client gets a slot.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

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
    // The first bytes of its answer: it holds the slot. (Under per_core each worker has its
    // own accept queue, so the order of two connections' arrival is not the order in which
    // they get a slot; without this the next client may take the slot first.)
    let mut first = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut stalled, &mut first)
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

/// A listener with `max_connections = 4`, and header and idle timeouts of 20 s (so 2 s each
/// under pressure).
const FULL_AT_4: &str = r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
max_connections = 4
header_read_timeout_ms = 20000
idle_timeout_ms = 20000

[[route]]
path = "/"
respond = { status = 200, body = "ok" }
"#;

/// Opens a connection that sends an endless request head, one byte per 200 ms, until the
/// server closes it. Returns the read half (to see the close) and the writer task.
async fn trickle(addr: std::net::SocketAddr) -> (tokio::net::tcp::OwnedReadHalf, JoinHandle<()>) {
    let (read, mut write) = connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        if write
            .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        while write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (read, writer)
}

/// Reads until `read` is closed, within `wait`; true if it was.
async fn closed_within(read: &mut tokio::net::tcp::OwnedReadHalf, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Gets `/` on a new keep-alive connection; returns how long it took and the connection, still
/// open. Fails after 10 s.
async fn timed_get(addr: std::net::SocketAddr) -> (Duration, TcpStream) {
    let start = Instant::now();
    let mut s = connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client::read_one_response(&mut s))
        .await
        .expect("the new client was not served within 10 s");
    assert_eq!(res.status, 200);
    (start.elapsed(), s)
}

/// Four new clients at once, each keeping its connection: all four slots are needed, so every
/// hostile connection must go. Each is served within 5 s.
async fn new_clients_are_served_quickly(
    addr: std::net::SocketAddr,
    why: &'static str,
) -> Vec<TcpStream> {
    let clients: Vec<_> = (0..4).map(|_| tokio::spawn(timed_get(addr))).collect();
    let mut held = Vec::new();
    for client in clients {
        let (waited, s) = client.await.unwrap();
        assert!(
            waited < Duration::from_secs(5),
            "a new client waited {waited:?}: {why}"
        );
        held.push(s);
    }
    held
}

/// Slowloris against a full listener: 2 connections trickle a head and 2 send nothing, filling
/// `max_connections = 4` with 20 s timeouts. New clients are served within 5 s (the hostile
/// ones are closed at the reduced 2 s), not after 20 s, and every hostile connection is closed.
#[tokio::test]
async fn a_full_listener_closes_slow_and_silent_heads_for_a_new_client() {
    let server = Server::start(FULL_AT_4).await;
    let addr = server.addr();
    let mut hostile = Vec::new();
    for _ in 0..2 {
        hostile.push(trickle(addr).await);
    }
    for _ in 0..2 {
        let (read, _write) = connect(addr).await.unwrap().into_split();
        // Keep the write half open: the connection stays silent, not half-closed.
        hostile.push((
            read,
            tokio::spawn(async move {
                let _write = _write;
                std::future::pending::<()>().await;
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _new =
        new_clients_are_served_quickly(addr, "the hostile connections kept their slots").await;
    for (i, (read, writer)) in hostile.iter_mut().enumerate() {
        assert!(
            closed_within(read, Duration::from_secs(5)).await,
            "hostile connection {i} is still open"
        );
        writer.abort();
    }
}

/// 4 keep-alive connections, idle after one request each, fill `max_connections = 4` with a
/// 20 s idle timeout: new clients are served within 5 s and the idle ones are closed.
#[tokio::test]
async fn a_full_listener_closes_idle_keep_alive_connections_for_a_new_client() {
    let server = Server::start(FULL_AT_4).await;
    let addr = server.addr();
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..4 {
        let mut s = connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
            .await
            .unwrap();
        let res = client::read_one_response(&mut s).await;
        assert_eq!(res.status, 200);
        idle.push(s);
    }

    let _new =
        new_clients_are_served_quickly(addr, "the idle keep-alive connections kept their slots")
            .await;
    for (i, s) in idle.iter_mut().enumerate() {
        let raw = read_until_close(s, Duration::from_secs(5)).await;
        assert!(raw.closed, "idle connection {i} is still open");
    }
}

/// With free slots there is no pressure: a head that takes 1.3 to 2.1 s, far beyond the reduced
/// limit (300 ms of `header_read_timeout_ms = 3000`) but within the full one, is answered.
#[tokio::test]
async fn a_listener_with_free_slots_gives_a_slow_head_its_full_header_read_timeout() {
    let server = Server::start(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
max_connections = 4
header_read_timeout_ms = 3000

[[route]]
path = "/"
respond = { status = 200, body = "ok" }
"#,
    )
    .await;
    let addr = server.addr();
    // One connection silent for 0.8 s first (the protocol sniff), one trickling from the start.
    let slow = |silent: bool| async move {
        let mut s = connect(addr).await.unwrap();
        if silent {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        for b in b"Host: t.test\r\n\r\n" {
            tokio::time::sleep(Duration::from_millis(80)).await;
            s.write_all(&[*b]).await.unwrap();
        }
        client::read_one_response(&mut s).await
    };
    let (a, b) = tokio::join!(slow(true), slow(false));
    assert_eq!((a.status, b.status), (200, 200));
}
