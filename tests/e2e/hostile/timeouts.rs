//! Hostile peers: timeouts. Time is blamed on the side that stalled: a client whose upload
//! stalls gets 408 and never opens an upstream's circuit; an upstream that stalls after the
//! whole request was sent gets 504 and is counted; an upstream body that stalls mid-way aborts
//! the client's response and is counted; a slow but steady upload is nobody's fault.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, connect, get, read_until_close};
use crate::harness::Server;
use crate::upstream::{self, Upstream};

/// One listener with `listener_keys`, one service over `up` with `service_keys`, routed at `/`.
fn config(up: &Upstream, listener_keys: &str, service_keys: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
{listener_keys}

[[service]]
name = "app"
upstreams = [{{ url = "{}" }}]
{service_keys}

[[route]]
path = "/"
service = "app"
"#,
        up.url()
    )
}

/// A raw upstream that reads a request head and `body_len` body bytes, then calls `then`.
async fn raw_upstream<F, Fut>(body_len: usize, then: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    upstream::raw(move |mut s| {
        Box::pin(async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n")
                    && seen.len() >= end + 4 + body_len
                {
                    break;
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            then(s).await;
        })
    })
    .await
}

/// Starts `n` uploads that stall after 3 of 100 bytes, at once, and checks that each is
/// answered 408 with `connection: close` (or just closed) and closed within 3 s.
async fn stall_uploads(addr: std::net::SocketAddr, n: usize) {
    let stalls = (0..n).map(|_| {
        tokio::spawn(async move {
            let mut s = connect(addr).await.unwrap();
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: t.test\r\nContent-Length: 100\r\n\r\nabc")
                .await
                .unwrap();
            read_until_close(&mut s, Duration::from_secs(5)).await
        })
    });
    for stall in stalls {
        let raw = stall.await.unwrap();
        assert!(
            raw.closed,
            "the stalled connection stayed open: {:?}",
            raw.text()
        );
        assert!(
            raw.elapsed < Duration::from_secs(3),
            "closed only after {:?}",
            raw.elapsed
        );
        if !raw.bytes.is_empty() {
            let res = client::parse_response(&raw.bytes).expect("a complete response");
            assert_eq!(res.status, 408, "{}", raw.text());
            assert!(res.header("x-request-id").is_some());
            assert_eq!(res.header("connection"), Some("close"));
        }
    }
}

/// Normal clients still get 200: the stalled uploads did not open the circuit.
async fn assert_circuit_closed(addr: std::net::SocketAddr) {
    for _ in 0..3 {
        let res = get(addr, "/after").await;
        assert_eq!(
            res.status,
            200,
            "circuit opened by stalled clients: {}",
            res.text()
        );
    }
}

/// The attack of issue 9 item 1: uploads that stall mid-body (`Content-Length: 100`, 3 bytes
/// sent), more of them than the circuit's failure threshold, against an upstream whose
/// `response_timeout_ms` is shorter than the listener's `body_read_timeout_ms`. Each gets 408
/// (or is closed) and the circuit stays closed: normal clients still get 200.
#[tokio::test]
async fn stalled_uploads_get_408_and_do_not_open_the_circuit() {
    let up = upstream::http(upstream::echo("app")).await;
    let server = Server::start(&config(
        &up,
        "body_read_timeout_ms = 300",
        // Default breaker (5 failures open it); a response timeout that would fire first if it
        // still ran while the client was stalling.
        "response_timeout_ms = 150",
    ))
    .await;
    let addr = server.addr();

    stall_uploads(addr, 8).await;
    assert_circuit_closed(addr).await;
    assert!(
        server
            .wait_for_log_count("cause=\"body_read_timeout\"", 8, Duration::from_secs(2))
            .await,
        "each expiry is logged with its cause:\n{}",
        server.log_text()
    );
}

/// The same attack against an HTTP/2 upstream (h2c), where the stalled body reaches the
/// upstream as a reset stream, not as a body error: still 408, still not counted.
#[tokio::test]
async fn stalled_uploads_to_an_h2_upstream_do_not_open_its_circuit() {
    let up = upstream::h2c_only(upstream::echo("app")).await;
    let server = Server::start(&config(
        &up,
        "body_read_timeout_ms = 300",
        "http2 = true\nresponse_timeout_ms = 150",
    ))
    .await;
    stall_uploads(server.addr(), 8).await;
    assert_circuit_closed(server.addr()).await;
}

/// An upstream that takes the whole request (body included) and then never answers: 504 after
/// `response_timeout_ms`, counted against its circuit (two failures open it: then 503).
#[tokio::test]
async fn upstream_that_stalls_after_the_request_is_504_and_counted() {
    let up = raw_upstream(5, |s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let server = Server::start(&config(
        &up,
        "",
        "response_timeout_ms = 300\n[service.circuit_breaker]\nfailure_threshold = 2\nopen_ms = 60000",
    ))
    .await;
    let post = || {
        http::Request::post("/p")
            .header("host", "t.test")
            .body(client::full("hello"))
            .unwrap()
    };
    for _ in 0..2 {
        let start = Instant::now();
        let res = client::send_h1(server.addr(), post()).await.unwrap();
        assert_eq!(res.status, 504, "{}", res.text());
        assert!(res.header("x-request-id").is_some());
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
            "504 after {elapsed:?}"
        );
    }
    let res = client::send_h1(server.addr(), post()).await.unwrap();
    assert_eq!(
        res.status,
        503,
        "two upstream timeouts open the circuit: {}",
        res.text()
    );
    assert!(
        server
            .wait_for_log_count("cause=\"response_timeout\"", 2, Duration::from_secs(2))
            .await,
        "{}",
        server.log_text()
    );
}

/// An upstream that sends its head and part of its body, then stalls: the client's response is
/// aborted after `read_timeout_ms` (not left hanging), and the upstream is blamed (its circuit,
/// with a threshold of one failure, opens: the next request gets 503).
#[tokio::test]
async fn upstream_body_that_stalls_aborts_the_client_response() {
    let up = raw_upstream(0, |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let server = Server::start(&config(
        &up,
        "",
        "read_timeout_ms = 300\n[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 60000",
    ))
    .await;
    let mut s = connect(server.addr()).await.unwrap();
    s.write_all(b"GET /dl HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let raw = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(raw.closed, "client response left hanging: {:?}", raw.text());
    assert!(
        raw.elapsed >= Duration::from_millis(250) && raw.elapsed < Duration::from_secs(2),
        "aborted after {:?}",
        raw.elapsed
    );
    let text = raw.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "{text}");
    assert!(
        client::parse_response(&raw.bytes).is_none(),
        "the client must not see a complete response: {text}"
    );
    let res = get(server.addr(), "/next").await;
    assert_eq!(
        res.status,
        503,
        "the stalled upstream was not blamed: {}",
        res.text()
    );
    assert!(
        server
            .wait_for_log("cause=\"read_timeout\"", Duration::from_secs(2))
            .await,
        "{}",
        server.log_text()
    );
}

/// A client that uploads slowly but steadily, for longer in total than `response_timeout_ms`
/// and with every gap under `body_read_timeout_ms`: 200 with the whole body delivered.
#[tokio::test]
async fn slow_steady_upload_longer_than_response_timeout_succeeds() {
    let up = upstream::http(upstream::echo("app")).await;
    let server = Server::start(&config(
        &up,
        "body_read_timeout_ms = 1000",
        "response_timeout_ms = 300",
    ))
    .await;
    let mut s = connect(server.addr()).await.unwrap();
    s.write_all(
        b"POST /slow HTTP/1.1\r\nHost: t.test\r\nContent-Length: 80\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let start = Instant::now();
    for i in 0..8u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&[b'a' + i; 10]).await.unwrap();
    }
    let raw = read_until_close(&mut s, client::T).await;
    assert!(start.elapsed() >= Duration::from_millis(800));
    let res = client::parse_response(&raw.bytes)
        .unwrap_or_else(|| panic!("no complete response: {:?}", raw.text()));
    assert_eq!(res.status, 200, "{}", raw.text());
    assert_eq!(res.json()["body_len"], 80);
    assert!(res.json()["body_error"].is_null());
}
