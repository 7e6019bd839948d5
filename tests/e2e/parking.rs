//! Idle HTTP/1 connections parked between requests (src/conn/park.rs): hyper's connection is
//! dropped while a keep-alive connection waits and a new one serves its next request. Through
//! real sockets: requests with idle gaps (bodies included, plain and TLS), a pipelined burst,
//! the idle timeout and shutdown on a parked connection, a WebSocket upgrade after a park; a
//! fresh connection parks as soon as its first request is answered, and from then on only once
//! it has been quiet for a tick of its watch (back-to-back requests never park), and an idle
//! one parks within 1 s whatever its timeouts.
//! The server logs each park and resume at trace level; the tests count those lines to prove the
//! connection did park.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{T, connect, read_one_response, read_until_close};
use crate::harness::{Server, Signal, TestDir};
use crate::pki::{Ca, tls_connect};
use crate::upstream::{self, Upstream};

/// The log filter that shows parks and resumes.
const LOG: &str = "info,snakeway::conn::park=trace";
const PARKED: &str = "connection parked";
const RESUMED: &str = "connection resumed";
/// A pause long enough for the server to have answered, written and parked.
const GAP: Duration = Duration::from_millis(150);
/// A short idle timeout (its reduced one, for pressure, is 200 ms): the watch ticks every 50 ms
/// between requests, so a connection parks within 100 ms of its last byte.
const QUICK: &str = "idle_timeout_ms = 2000";

/// A listener with `listener_keys`, `/echo` to `upstream`, `/ws` (WebSocket) to `ws` when
/// given, and a synthetic `/`.
fn config(upstream: SocketAddr, ws: Option<SocketAddr>, listener_keys: &str) -> String {
    let ws = ws.map_or(String::new(), |ws| {
        format!(
            r#"
[[service]]
name = "ws"
upstreams = [{{ url = "http://{ws}" }}]

[[route]]
path = "/ws"
service = "ws"
websocket = true
"#
        )
    });
    format!(
        r#"
[server]
threads = 2
shutdown_grace_ms = 20000

[[listener]]
listen = "127.0.0.1:0"
{listener_keys}

[[service]]
name = "echo"
upstreams = [{{ url = "http://{upstream}" }}]

[[route]]
path = "/echo"
service = "echo"

[[route]]
path = "/"
respond = {{ status = 200, body = "hello" }}
{ws}
"#
    )
}

async fn start(listener_keys: &str) -> (Server, Upstream) {
    let up = upstream::http(upstream::echo("up")).await;
    let server = Server::start_logging(&config(up.addr, None, listener_keys), LOG).await;
    (server, up)
}

/// Sends `GET /` on `stream` and reads its response.
async fn get(stream: &mut TcpStream) -> crate::client::Parsed {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    read_one_response(stream).await
}

/// Waits until the server has logged `n` parks.
async fn parked(server: &Server, n: usize) {
    assert!(
        server.wait_for_log_count(PARKED, n, T).await,
        "expected {n} parks; log:\n{}",
        server.log_text()
    );
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn chunked(path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// The echo upstream's `(uri, body_len)` for a response.
fn echoed(res: &crate::client::Parsed) -> (String, u64) {
    let json = res.json();
    (
        json["uri"].as_str().unwrap_or_default().to_owned(),
        json["body_len"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test]
async fn requests_with_idle_gaps_are_answered_on_one_parking_connection() {
    let (server, up) = start(QUICK).await;
    let mut stream = connect(server.addr()).await.unwrap();
    let big = vec![b'x'; 100_000];
    let requests: Vec<(Vec<u8>, &str, u64)> = vec![
        (post("/echo/1", b"abc"), "/echo/1", 3),
        (chunked("/echo/2", &[b"hello, ", b"world"]), "/echo/2", 12),
        (post("/echo/3", &big), "/echo/3", 100_000),
        (
            b"GET /echo/4 HTTP/1.1\r\nHost: t.test\r\n\r\n".to_vec(),
            "/echo/4",
            0,
        ),
        (post("/echo/5", b""), "/echo/5", 0),
    ];
    for (i, (req, uri, len)) in requests.iter().enumerate() {
        stream.write_all(req).await.unwrap();
        let res = read_one_response(&mut stream).await;
        assert_eq!(res.status, 200, "request {i}");
        assert_eq!(echoed(&res), (uri.to_string(), *len), "request {i}");
        // The connection parks after each answer before the next request comes.
        parked(&server, i + 1).await;
        tokio::time::sleep(GAP).await;
    }
    // Each request after the first came to a parked connection.
    assert!(server.log_count(RESUMED) >= requests.len() - 1);
    assert_eq!(up.requests(), requests.len());
    // And it is still open and serving.
    let res = get(&mut stream).await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"hello"[..]));
}

#[tokio::test]
async fn a_pipelined_burst_is_answered_in_order_then_the_connection_parks() {
    let (server, _up) = start(QUICK).await;
    let mut stream = connect(server.addr()).await.unwrap();
    // Park once first, so the burst wakes a parked connection.
    assert_eq!(get(&mut stream).await.status, 200);
    parked(&server, 1).await;

    let mut burst = Vec::new();
    burst.extend(post("/echo/a", b"first"));
    burst.extend(chunked("/echo/b", &[b"sec", b"ond"]));
    burst.extend(b"GET /echo/c HTTP/1.1\r\nHost: t.test\r\n\r\n");
    burst.extend(post("/echo/d", b"fourth!"));
    stream.write_all(&burst).await.unwrap();
    let mut got = Vec::new();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + T;
    while got.len() < 4 {
        if let Some(res) = crate::client::parse_response(&bytes) {
            assert_eq!(res.status, 200);
            got.push(echoed(&res));
            bytes.drain(..res.len);
            continue;
        }
        let n = tokio::time::timeout_at(
            deadline.into(),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        .expect("four responses within 10 s")
        .unwrap();
        assert!(n > 0, "closed after {} responses", got.len());
        bytes.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        got,
        [
            ("/echo/a".to_owned(), 5),
            ("/echo/b".to_owned(), 6),
            ("/echo/c".to_owned(), 0),
            ("/echo/d".to_owned(), 7),
        ]
    );
    assert!(
        bytes.is_empty(),
        "extra bytes: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Once the burst is answered, the connection parks again.
    parked(&server, 2).await;
}

#[tokio::test]
async fn idle_timeout_closes_a_parked_connection() {
    let (server, _up) = start("idle_timeout_ms = 400\nheader_read_timeout_ms = 10000").await;
    let mut stream = connect(server.addr()).await.unwrap();
    assert_eq!(get(&mut stream).await.status, 200);
    parked(&server, 1).await;
    let raw = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        raw.closed,
        "a parked connection outlived idle_timeout_ms = 400 by 5 s"
    );
    assert!(raw.bytes.is_empty(), "unexpected bytes: {:?}", raw.text());
    assert!(
        raw.elapsed >= Duration::from_millis(250),
        "closed after {:?}, before the idle timeout",
        raw.elapsed
    );
}

#[tokio::test]
async fn shutdown_closes_a_parked_connection_at_once() {
    let (mut server, _up) = start(QUICK).await;
    let mut stream = connect(server.addr()).await.unwrap();
    assert_eq!(get(&mut stream).await.status, 200);
    parked(&server, 1).await;

    let term = Instant::now();
    server.signal(Signal::SIGTERM);
    // shutdown_grace_ms is 20 s: a parked connection must not hold the server that long.
    let raw = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        raw.closed,
        "the parked connection was not closed on shutdown"
    );
    assert!(raw.bytes.is_empty(), "unexpected bytes: {:?}", raw.text());
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "not exited cleanly {:?} after SIGTERM: {status:?}",
        term.elapsed()
    );
}

#[tokio::test]
async fn tls_keep_alive_with_idle_gaps_parks_and_serves() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new("park-tls");
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    let up = upstream::http(upstream::echo("up")).await;
    let toml = config(
        up.addr,
        None,
        "idle_timeout_ms = 2000\n[listener.tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"",
    );
    let config_path = dir.write("snakeway.toml", &toml);
    let server = Server::start_file_logging(dir, config_path, 1, LOG).await;

    let tls = tls_connect(
        server.addr(),
        "proxy.test",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..4usize {
        let body = vec![b'a' + i as u8; 1000 * (i + 1)];
        let req = http::Request::post(format!("https://proxy.test/echo/{i}"))
            .header("host", "proxy.test")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = tokio::time::timeout(T, sender.send_request(req))
            .await
            .expect("answer within 10 s")
            .unwrap();
        assert_eq!(res.status(), 200, "request {i}");
        let json: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(json["body_len"], 1000 * (i + 1) as u64, "request {i}");
        parked(&server, i + 1).await;
        tokio::time::sleep(GAP).await;
    }
    assert!(server.log_count(RESUMED) >= 3);
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";

#[tokio::test]
async fn after_its_first_request_a_busy_connection_never_parks_until_the_client_pauses() {
    // Default timeouts: the watch ticks every 500 ms between requests.
    let (server, _up) = start("").await;
    let mut stream = connect(server.addr()).await.unwrap();
    // A fresh connection parks as soon as its first request is answered.
    let res = get(&mut stream).await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"hello"[..]));
    parked(&server, 1).await;
    for i in 0..300 {
        stream.write_all(GET).await.unwrap();
        let res = read_one_response(&mut stream).await;
        assert_eq!(
            (res.status, res.body.as_slice()),
            (200, &b"hello"[..]),
            "{i}"
        );
    }
    // The client pauses: the connection parks a second time, and only now (the log is in
    // order, so no earlier park line can still be on its way).
    parked(&server, 2).await;
    assert_eq!(
        (server.log_count(PARKED), server.log_count(RESUMED)),
        (2, 1),
        "log:\n{}",
        server.log_text()
    );
    stream.write_all(GET).await.unwrap();
    assert_eq!(read_one_response(&mut stream).await.status, 200);
    assert!(server.wait_for_log_count(RESUMED, 2, T).await);
}

#[tokio::test]
async fn an_idle_connection_parks_within_a_second_whatever_its_timeouts() {
    // With these timeouts the watch would otherwise tick every 15 s.
    let (server, _up) = start(
        "idle_timeout_ms = 600000\nsend_timeout_ms = 600000\nheader_read_timeout_ms = 600000",
    )
    .await;
    let mut stream = connect(server.addr()).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert_eq!(read_one_response(&mut stream).await.status, 200);
    let answered = Instant::now();
    // The bound is 1 s (two ticks of 500 ms); the rest is slack for a loaded machine.
    assert!(
        server
            .wait_for_log_count(PARKED, 1, Duration::from_secs(4))
            .await,
        "not parked {:?} after the answer; log:\n{}",
        answered.elapsed(),
        server.log_text()
    );
    stream.write_all(GET).await.unwrap();
    assert_eq!(read_one_response(&mut stream).await.status, 200);
}

/// A WebSocket echo upstream.
async fn ws_echo() -> Upstream {
    upstream::raw(|stream| {
        Box::pin(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        })
    })
    .await
}

#[tokio::test]
async fn a_websocket_upgrade_after_a_park_works() {
    let up = upstream::http(upstream::echo("up")).await;
    let ws_up = ws_echo().await;
    let server = Server::start_logging(&config(up.addr, Some(ws_up.addr), QUICK), LOG).await;
    let mut stream: TcpStream = connect(server.addr()).await.unwrap();
    assert_eq!(get(&mut stream).await.status, 200);
    parked(&server, 1).await;
    tokio::time::sleep(GAP).await;

    // The same connection, resumed, upgrades.
    let url = format!("ws://{}/ws", server.addr());
    let (mut ws, res) = tokio::time::timeout(T, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake within 10 s")
        .expect("handshake");
    assert_eq!(res.status(), 101);
    for text in ["after a park", "and again"] {
        ws.send(Message::text(text)).await.unwrap();
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text(text));
        tokio::time::sleep(GAP).await;
    }
    // An upgraded connection never parks again.
    assert_eq!(server.log_count(PARKED), 1);
}
