//! Hostile peers: upstreams that lie about framing. Raw-TCP upstreams send exactly the bytes
//! under test: both `Content-Length` and `Transfer-Encoding: chunked` (the transfer coding wins,
//! RFC 9112 §6.3, and the client gets the whole body), a head larger than
//! `max_response_header_bytes` (502), and an HTTP/1.0 status line (sent on as HTTP/1.1).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{T, connect, raw, raw_exchange, read_one_response};
use crate::harness::Server;
use crate::upstream::{self, Upstream};

/// A raw upstream that reads one request head, writes `answer` and closes.
async fn answering(answer: Vec<u8>) -> Upstream {
    let answer: &'static [u8] = answer.leak();
    upstream::raw(move |mut s| {
        Box::pin(async move {
            let mut head = Vec::new();
            let mut buf = vec![0u8; 8192];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer).await;
            let _ = s.flush().await;
            let _ = s.shutdown().await;
            // Let the proxy read everything before the socket goes away.
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
    })
    .await
}

/// A keep-alive raw upstream that answers every request head on a connection with `answer`.
async fn answering_each(answer: Vec<u8>) -> Upstream {
    let answer: &'static [u8] = answer.leak();
    upstream::raw(move |mut s| {
        Box::pin(async move {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
        })
    })
    .await
}

async fn serve(up: &Upstream, service_keys: &str) -> Server {
    Server::start(&config(up, service_keys)).await
}

fn config(up: &Upstream, service_keys: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

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

const GET: &[u8] = b"GET /f HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n";

/// `Content-Length: 5` with a chunked body of 26 bytes: the client gets all 26 bytes, framed
/// consistently, never a body cut at 5.
#[tokio::test]
async fn content_length_and_chunked_from_upstream_delivers_the_chunked_body() {
    let up = answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    let server = serve(&up, "").await;
    let res = raw_exchange(server.addr(), GET).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        "abcdefghijklmnopqrstuvwxyz"
    );
    assert_ne!(res.header("content-length"), Some("5"), "{:?}", res.headers);
}

/// A response head of about 120 KiB against the default limit (64 KiB): 502 with a request id.
/// Below hyper's own 8 KiB floor the limit holds too: a 3 KiB head against
/// `max_response_header_bytes = 2048` is a 502, a 1 KiB one passes.
#[tokio::test]
async fn upstream_head_larger_than_the_limit_is_502() {
    let header = |len: usize| format!("x-big: {}\r\n", "a".repeat(len));
    let huge = format!(
        "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
        header(30_000).repeat(4)
    );
    let up = answering(huge.into_bytes()).await;
    let server = serve(&up, "").await;
    let res = raw_exchange(server.addr(), GET).await;
    assert_eq!(res.status, 502, "{}", String::from_utf8_lossy(&res.body));
    assert!(res.header("x-request-id").is_some());
    assert!(res.header("x-big").is_none());

    let small = |len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
            header(len)
        )
        .into_bytes()
    };
    let up = answering(small(3000)).await;
    let server = serve(&up, "max_response_header_bytes = 2048").await;
    let res = raw_exchange(server.addr(), GET).await;
    assert_eq!(res.status, 502, "{}", String::from_utf8_lossy(&res.body));
    assert!(res.header("x-request-id").is_some());

    let up = answering(small(1000)).await;
    let server = serve(&up, "max_response_header_bytes = 2048").await;
    let res = raw_exchange(server.addr(), GET).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.body, b"ok");
}

/// An upstream answering `HTTP/1.0 200 OK`: the HTTP/1.1 client sees an HTTP/1.1 status line
/// and the whole body.
#[tokio::test]
async fn http10_upstream_answer_goes_out_as_http11() {
    let up = answering(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let server = serve(&up, "").await;
    let r = raw(server.addr(), GET, Duration::from_secs(5)).await;
    let text = r.text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

/// An upstream that lies in every answer on its keep-alive connection: `Content-Length: 5`
/// beside a chunked body of 26 bytes, 40 more fields, and values that name the framing fields
/// (`x-note: content-length: 999`). The framing guard follows the responses Snakeway writes to
/// the client from their heads alone (a search for the framing fields at line starts). Over
/// one kept-alive client connection, three such answers each arrive whole, and the connection
/// parks after each one: the guard saw where each response ended.
#[tokio::test]
async fn lying_heads_with_many_fields_are_followed_to_their_end_on_one_client_connection() {
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\
        x-note: content-length: 999\r\nx-other: transfer-encoding: chunked\r\n"
        .to_vec();
    for i in 0..40 {
        answer.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(i)).as_bytes());
    }
    answer.extend_from_slice(b"\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n");
    let up = answering_each(answer).await;
    let server = Server::start_logging(&config(&up, ""), "info,snakeway::conn::park=trace").await;
    let mut stream = connect(server.addr()).await.unwrap();
    for i in 1..=3 {
        stream
            .write_all(b"GET /f HTTP/1.1\r\nHost: t.test\r\n\r\n")
            .await
            .unwrap();
        let res = read_one_response(&mut stream).await;
        assert_eq!(res.status, 200, "answer {i}");
        assert_eq!(
            String::from_utf8_lossy(&res.body),
            "abcdefghijklmnopqrstuvwxyz",
            "answer {i}"
        );
        assert!(
            server.wait_for_log_count("connection parked", i, T).await,
            "no park after answer {i}; log:\n{}",
            server.log_text()
        );
    }
}
