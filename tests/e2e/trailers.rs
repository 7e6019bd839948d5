//! Trailers end to end and HTTP versions: chunked request trailers reach HTTP/1.1 and h2
//! upstreams; response trailers reach a client that sent `te: trailers` and no other; an
//! HTTP/1.0 upstream's answer goes on as HTTP/1.1.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{T, connect, raw, raw_exchange, read_one_response, read_until_close};
use crate::harness::Server;
use crate::upstream::{self, BoxFut, Upstream, full_body};

/// One listener routing `/` to service `name` with one upstream `url`, plus `service_keys`.
fn config(url: &str, service_keys: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "trailers"
upstreams = [{{ url = "{url}" }}]
{service_keys}

[[route]]
path = "/"
service = "trailers"
"#
    )
}

/// A chunked request declaring and carrying one trailer, `x-checksum: abc123`.
const CHUNKED_WITH_TRAILER: &[u8] = b"POST /upload HTTP/1.1\r\n\
    Host: t.test\r\n\
    Transfer-Encoding: chunked\r\n\
    Trailer: x-checksum\r\n\
    Connection: close\r\n\
    \r\n\
    5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n";

/// What an upstream saw of a request: its body, its `trailer` header and its trailers.
#[derive(Default)]
struct Received {
    body: Vec<u8>,
    declared: Option<HeaderValue>,
    trailers: Option<HeaderMap>,
}

/// An upstream handler that reads the whole request, body and trailers, into `seen`.
fn reading_trailers(seen: Arc<Mutex<Received>>) -> upstream::Handler {
    upstream::handler(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let declared = req.headers().get("trailer").cloned();
            let Ok(collected) = req.into_body().collect().await else {
                let mut res = Response::new(full_body("broken request body"));
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                return res;
            };
            let trailers = collected.trailers().cloned();
            *seen.lock().unwrap() = Received {
                body: collected.to_bytes().to_vec(),
                declared,
                trailers,
            };
            Response::new(full_body("got it"))
        }
    })
}

async fn assert_request_trailers_reach(up: &Upstream, service_keys: &str, seen: &Mutex<Received>) {
    let server = Server::start(&config(&up.url(), service_keys)).await;
    let res = raw_exchange(server.addr(), CHUNKED_WITH_TRAILER).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.body, b"hello world");
    assert_eq!(
        seen.trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.as_bytes()),
        Some(&b"abc123"[..]),
        "the upstream did not receive the request's trailer"
    );
    assert_eq!(
        seen.declared.as_ref().map(|v| v.as_bytes()),
        Some(&b"x-checksum"[..]),
        "`trailer` is end-to-end"
    );
}

#[tokio::test]
async fn chunked_request_trailers_reach_an_http1_upstream() {
    let seen = Arc::new(Mutex::new(Received::default()));
    let up = upstream::http(reading_trailers(seen.clone())).await;
    assert_request_trailers_reach(&up, "", &seen).await;
}

#[tokio::test]
async fn chunked_request_trailers_reach_an_h2_upstream_as_a_trailers_frame() {
    let seen = Arc::new(Mutex::new(Received::default()));
    let up = upstream::h2c_only(reading_trailers(seen.clone())).await;
    assert_request_trailers_reach(&up, "http2 = true", &seen).await;
}

/// A raw HTTP/1.1 upstream that answers every request with a chunked body `hello` and the
/// trailer `x-checksum: abc123` (declared in `Trailer`), whether or not it was asked for
/// trailers, and records each request head.
async fn always_sends_trailers(heads: Arc<Mutex<Vec<String>>>) -> Upstream {
    upstream::raw(move |mut stream: TcpStream| {
        let heads = heads.clone();
        Box::pin(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\n\
                    Transfer-Encoding: chunked\r\n\
                    Trailer: x-checksum\r\n\
                    Connection: close\r\n\
                    \r\n\
                    5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
                )
                .await;
            let _ = stream.shutdown().await;
        }) as BoxFut<()>
    })
    .await
}

/// The trailer section of a raw chunked response (after the last chunk), lowercased.
fn trailer_section(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response).to_ascii_lowercase();
    let (_, tail) = text
        .split_once("\r\n0\r\n")
        .unwrap_or_else(|| panic!("no complete chunked body in {text:?}"));
    tail.to_owned()
}

#[tokio::test]
async fn response_trailers_reach_a_client_that_accepts_them_and_no_other() {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let up = always_sends_trailers(heads.clone()).await;
    let server = Server::start(&config(&up.url(), "")).await;

    let accepting =
        b"GET /t HTTP/1.1\r\nHost: t.test\r\nTE: trailers\r\nConnection: close, TE\r\n\r\n";
    let res = raw(server.addr(), accepting, T).await;
    let text = res.text().to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\ntrailer: x-checksum\r\n"), "{text}");
    assert!(text.contains("\r\n5\r\nhello\r\n"), "{text}");
    assert_eq!(
        trailer_section(&res.bytes),
        "x-checksum: abc123\r\n\r\n",
        "the trailer did not reach a client that sent `te: trailers`"
    );
    assert!(
        heads.lock().unwrap()[0].contains("\r\nte: trailers\r\n"),
        "`te: trailers` was not passed on to the upstream: {:?}",
        heads.lock().unwrap()[0]
    );

    let declining = b"GET /t HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n";
    let res = raw(server.addr(), declining, T).await;
    let text = res.text().to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\n5\r\nhello\r\n"), "{text}");
    assert_eq!(
        trailer_section(&res.bytes),
        "\r\n",
        "trailers were sent to a client that did not accept them"
    );
    assert!(
        !heads.lock().unwrap()[1].contains("\r\nte:"),
        "{:?}",
        heads.lock().unwrap()[1]
    );
}

#[tokio::test]
async fn h2_upstream_trailers_reach_an_http1_client_when_declared() {
    let up = upstream::h2c_only(upstream::handler(|_req: Request<Incoming>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        let frames = stream::iter([
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut res = Response::new(StreamBody::new(frames).boxed());
        res.headers_mut()
            .insert("trailer", HeaderValue::from_static("x-checksum"));
        res
    }))
    .await;
    let server = Server::start(&config(&up.url(), "http2 = true")).await;
    let req = b"GET /t HTTP/1.1\r\nHost: t.test\r\nTE: trailers\r\nConnection: close\r\n\r\n";
    let res = raw(server.addr(), req, T).await;
    let text = res.text().to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert_eq!(trailer_section(&res.bytes), "x-checksum: abc123\r\n\r\n");
}

#[tokio::test]
async fn an_http10_upstreams_answer_goes_on_as_http11() {
    let up = upstream::raw(|mut stream: TcpStream| {
        Box::pin(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            // HTTP/1.0: no length, the body ends when the connection closes.
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfrom 1.0")
                .await;
            let _ = stream.shutdown().await;
        }) as BoxFut<()>
    })
    .await;
    let server = Server::start(&config(&up.url(), "")).await;
    let mut stream = connect(server.addr()).await.unwrap();
    // The body the upstream ended by closing goes on chunked: the client's connection stays
    // usable for a second request.
    stream
        .write_all(b"GET /1 HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let first = read_one_response(&mut stream).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("transfer-encoding"), Some("chunked"));
    assert_eq!(first.body, b"from 1.0");
    stream
        .write_all(b"GET /2 HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let res = read_until_close(&mut stream, T).await;
    let text = res.text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let parsed = crate::client::parse_response(&res.bytes).expect("a complete response");
    assert_eq!(parsed.body, b"from 1.0");
}

#[tokio::test]
async fn an_oversized_request_trailer_section_is_refused_not_forwarded() {
    let seen = Arc::new(Mutex::new(Received::default()));
    let up = upstream::http(reading_trailers(seen.clone())).await;
    let server = Server::start(&config(&up.url(), "")).await;
    // 20 KiB of trailer fields: over hyper's 16 KiB limit for a trailer section.
    let mut request = b"POST /upload HTTP/1.1\r\n\
        Host: t.test\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: x-big\r\n\
        Connection: close\r\n\
        \r\n\
        5\r\nhello\r\n0\r\n"
        .to_vec();
    for i in 0..20 {
        request.extend_from_slice(format!("x-big-{i}: {}\r\n", "b".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let res = raw(server.addr(), &request, T).await;
    // The body broke off where hyper refused the trailers: the client's fault, 400.
    assert_eq!(res.status(), Some(400), "{}", res.text());
    assert!(
        seen.lock().unwrap().trailers.is_none(),
        "the upstream received an oversized trailer section"
    );
}
