//! The guard under hyper, as the listener runs it, and the stream alone with scripted reads.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use snakeway_core::{ErrorKind, request_id, respond};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::head::MAX_HEADERS;
use super::reply::SYNTHETIC_HEAD;
use super::request::RxState;
use super::{Rejections, StrictH1};

const MAX_HEAD: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

type Body = BoxBody<Bytes, hyper::Error>;

fn full(s: String) -> Body {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed()
}

/// Answers a refused request as `ConnService` does without devices.
fn refused(rejections: &Rejections) -> Option<Response<snakeway_core::Body>> {
    let violation = rejections.get()?.violation;
    let status = StatusCode::from_u16(violation.status).unwrap();
    let error = snakeway_core::Error::new(ErrorKind::BadRequest, violation.reason)
        .with_status(status)
        .with_reason(violation.reason);
    let mut response = respond::error(
        &error,
        &request_id::generate(),
        respond::ErrorDetail::default(),
    );
    response
        .headers_mut()
        .insert("connection", "close".parse().unwrap());
    Some(response)
}

async fn handle(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    rejections: Rejections,
) -> Result<Response<snakeway_core::Body>, hyper::Error> {
    if let Some(response) = refused(&rejections) {
        return Ok(response);
    }
    serve(req, hits)
        .await
        .map(|r| r.map(snakeway_core::Body::new))
}

async fn serve(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
) -> Result<Response<Body>, hyper::Error> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == hyper::Method::CONNECT {
        let mut resp = Response::new(full(String::new()));
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return Ok(resp);
    }
    match path.as_str() {
        "/ws" if req.headers().contains_key("upgrade") => {
            let on_upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let mut resp = Response::new(full(String::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            resp.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            return Ok(resp);
        }
        "/slow" => tokio::time::sleep(Duration::from_millis(200)).await,
        "/stream" => {
            let frames = ["one", "two", "three"].map(|s| Ok(Frame::data(Bytes::from(s))));
            return Ok(Response::new(
                StreamBody::new(futures_util::stream::iter(frames)).boxed(),
            ));
        }
        "/empty" => {
            let mut resp = Response::new(full(String::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return Ok(resp);
        }
        _ => {}
    }
    let body = req.into_body().collect().await?;
    let trailers = body.trailers().map_or(0, |t| t.len());
    let len = body.to_bytes().len();
    Ok(Response::new(full(format!(
        "{method} {path} {len} {trailers}\n"
    ))))
}

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Connections hyper called `poll_shutdown` on.
    shutdowns: Arc<AtomicUsize>,
}

/// Counts `poll_shutdown` calls on the transport under `StrictH1`.
struct Probe {
    inner: TcpStream,
    shutdowns: Arc<AtomicUsize>,
}

impl AsyncRead for Probe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Probe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shutdowns.fetch_add(1, Ordering::SeqCst);
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

async fn server(max_head: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let shutdowns = Arc::new(AtomicUsize::new(0));
    let shutdown_counter = shutdowns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let hits = counter.clone();
            let stream = Probe {
                inner: stream,
                shutdowns: shutdown_counter.clone(),
            };
            tokio::spawn(serve_connection(stream, max_head, hits));
        }
    });
    Server {
        addr,
        hits,
        shutdowns,
    }
}

/// Serves one connection as the listener does an HTTP/1 one: hyper's `http1` builder over
/// `StrictH1`.
async fn serve_connection<IO>(io: IO, max_head: usize, hits: Arc<AtomicUsize>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let rejections = Rejections::default();
    let slot = rejections.clone();
    let service = hyper::service::service_fn(move |req| handle(req, hits.clone(), slot.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_head.max(8192))
        .keep_alive(true);
    let io = TokioIo::new(StrictH1::new(io, max_head, rejections));
    let _ = http.serve_connection(io, service).with_upgrades().await;
}

impl Server {
    async fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Writes `raw` at once and reads everything until the server closes.
    async fn exchange(&self, raw: &[u8]) -> String {
        let mut stream = self.connect().await;
        stream.write_all(raw).await.unwrap();
        read_all(&mut stream).await
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("the server should close the connection")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Status codes of the responses in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .map(|(i, _)| raw[i + 9..i + 12].parse().unwrap())
        .collect()
}

/// The response is a single 400 for the refused request, and the request never reached the
/// service.
async fn assert_rejected(raw: &[u8], reason: &str) {
    let server = server(MAX_HEAD).await;
    let resp = server.exchange(raw).await;
    assert_rejection(&resp, 400, reason);
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert_eq!(server.hits(), 0, "the request must not reach the service");
}

fn assert_rejection(resp: &str, status: u16, reason: &str) {
    let tail = &resp[resp.rfind("HTTP/1.1 ").expect(resp)..];
    assert!(tail.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
    assert!(tail.contains("\r\nconnection: close\r\n"), "{resp}");
    assert!(
        tail.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
        "{resp}"
    );
    let id_at = tail.find("\r\nx-request-id: ").expect(resp) + 16;
    let id = &tail[id_at..id_at + tail[id_at..].find('\r').unwrap()];
    assert!(!id.is_empty());
    let (head, body) = tail.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{resp}"
    );
    assert!(body.contains(reason), "{body}");
    assert!(body.ends_with(&format!("(request id {id})\n")), "{body}");
}

// === rejections ===

#[tokio::test]
async fn content_length_with_transfer_encoding() {
    let reason = "both content-length and transfer-encoding";
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        reason,
    )
    .await;
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        reason,
    )
    .await;
}

#[tokio::test]
async fn duplicate_content_length() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello";
    assert_rejected(raw, "duplicate content-length").await;
}

#[tokio::test]
async fn malformed_content_length() {
    for value in [
        "5, 5",
        "5,5",
        "+5",
        "-5",
        "0x5",
        "5 5",
        "",
        "12345678901234567890",
        "5;",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\nhello");
        assert_rejected(raw.as_bytes(), "malformed content-length").await;
    }
}

#[tokio::test]
async fn content_length_with_surrounding_whitespace_is_accepted() {
    let server = server(MAX_HEAD).await;
    let raw =
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\nConnection: close\r\n\r\nhello";
    let resp = server.exchange(raw).await;
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert!(resp.ends_with("POST /a 5 0\n"), "{resp}");
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked() {
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "gzip",
        "chunked;q=1",
        "",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
        assert_rejected(raw.as_bytes(), "unsupported transfer-encoding").await;
    }
}

#[tokio::test]
async fn two_transfer_encoding_headers() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_rejected(raw, "duplicate transfer-encoding").await;
}

#[tokio::test]
async fn transfer_encoding_in_http10() {
    let raw = b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_rejected(raw, "transfer-encoding in an HTTP/1.0 request").await;
}

#[tokio::test]
async fn obsolete_line_folding() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n";
    assert_rejected(raw, "obsolete line folding").await;
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\t5\r\n\r\nhello";
    assert_rejected(raw, "obsolete line folding").await;
}

#[tokio::test]
async fn whitespace_before_colon() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello";
    assert_rejected(raw, "whitespace before a header field colon").await;
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n";
    assert_rejected(raw, "whitespace before a header field colon").await;
}

#[tokio::test]
async fn control_character_in_header_name() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad\x01Name: 1\r\n\r\n";
    assert_rejected(raw, "invalid header field name").await;
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad\x7f: 1\r\n\r\n";
    assert_rejected(raw, "invalid header field name").await;
}

#[tokio::test]
async fn control_character_in_header_value() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n";
    assert_rejected(raw, "invalid header field value").await;
}

#[tokio::test]
async fn violation_in_a_head_split_across_writes() {
    let server = server(MAX_HEAD).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"Transfer-Encoding: chunked\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"\r\n0\r\n\r\n").await.unwrap();
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [400], "{resp}");
    assert_rejection(&resp, 400, "both content-length and transfer-encoding");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let server = server(1024).await;
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let resp = server.exchange(raw.as_bytes()).await;
    assert_eq!(statuses(&resp), [431], "{resp}");
    assert_rejection(&resp, 431, "request head too large");
    // Also when the head arrives in pieces and never ends.
    let mut stream = server.connect().await;
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    for _ in 0..20 {
        if stream
            .write_all(format!("X-Filler: {}\r\n", "b".repeat(100)).as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [431], "{resp}");
    assert_eq!(server.hits(), 0);
    // A head just within the limit is served.
    let head = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pad: \r\n\r\n";
    let raw = head.replace(
        "X-Pad: ",
        &format!("X-Pad: {}", "p".repeat(1024 - head.len())),
    );
    assert_eq!(raw.len(), 1024);
    let resp = server.exchange(raw.as_bytes()).await;
    assert_eq!(statuses(&resp), [200], "{resp}");
}

#[tokio::test]
async fn too_many_header_fields_get_431() {
    let server = server(64 * 1024).await;
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..MAX_HEADERS {
        raw.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    raw.push_str("\r\n");
    let resp = server.exchange(raw.as_bytes()).await;
    assert_eq!(statuses(&resp), [431], "{resp}");
    assert_eq!(server.hits(), 0);
}

// === accepted traffic ===

const CHUNKED_POST: &[u8] = b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
    5;name=value;other=\"x\"\r\nhello\r\nA \r\n0123456789\r\n0;last\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n";

#[tokio::test]
async fn keep_alive_sequence_with_bodies() {
    let server = server(MAX_HEAD).await;
    let mut stream = server.connect().await;
    let requests: [&[u8]; 5] = [
        b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        CHUNKED_POST,
        b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nPUT /three HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n",
        b"POST /four HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nwxyz",
    ];
    for request in requests {
        stream.write_all(request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [200; 5], "{resp}");
    for body in [
        "POST /one 3 0\n",
        "POST /chunked 15 2\n",
        "GET /two 0 0\n",
        "PUT /three 0 0\n",
        "POST /four 4 0\n",
    ] {
        assert!(resp.contains(body), "{body} missing from {resp}");
    }
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn pipelined_requests_in_one_write() {
    let server = server(MAX_HEAD).await;
    let mut raw = b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    raw.extend_from_slice(CHUNKED_POST);
    raw.extend_from_slice(b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let resp = server.exchange(&raw).await;
    assert_eq!(statuses(&resp), [200; 3], "{resp}");
    let one = resp.find("POST /one 3 0\n").unwrap();
    let chunked = resp.find("POST /chunked 15 2\n").unwrap();
    let two = resp.find("GET /two 0 0\n").unwrap();
    assert!(one < chunked && chunked < two, "{resp}");
}

#[tokio::test]
async fn byte_by_byte_writes() {
    let server = server(MAX_HEAD).await;
    let mut stream = server.connect().await;
    let mut raw = CHUNKED_POST.to_vec();
    raw.extend_from_slice(
        b"POST /last HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
    for b in raw {
        stream.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [200, 200], "{resp}");
    assert!(
        resp.contains("POST /chunked 15 2\n") && resp.contains("POST /last 2 0\n"),
        "{resp}"
    );
}

#[tokio::test]
async fn valid_request_then_invalid_one() {
    let server = server(MAX_HEAD).await;
    let bad = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
    // Sequential: the first response is out before the bad request arrives.
    let mut stream = server.connect().await;
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(bad).await.unwrap();
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [200, 400], "{resp}");
    assert!(resp.contains("GET /first 0 0\n"));
    assert_rejection(&resp, 400, "duplicate content-length");
    assert_eq!(server.hits(), 1);
    // hyper saw a clean end of stream on an idle connection and shut it down.
    assert_eq!(server.shutdowns.load(Ordering::SeqCst), 1);
    // Pipelined, while hyper is still busy with the (slow) earlier requests.
    let mut raw = b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    raw.extend_from_slice(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    raw.extend_from_slice(bad);
    let resp = server.exchange(&raw).await;
    assert_eq!(statuses(&resp), [200, 200, 400], "{resp}");
    assert!(
        resp.contains("GET /slow 0 0\n") && resp.contains("POST /slow 3 0\n"),
        "{resp}"
    );
    assert_rejection(&resp, 400, "duplicate content-length");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn response_framing_is_followed_before_rejecting() {
    // HEAD (a content-length but no body), 204, a chunked response, 100-continue: the 400
    // comes after all of them, intact.
    let server = server(MAX_HEAD).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST /expect HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let mut raw = b"ok".to_vec();
    raw.extend_from_slice(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n");
    raw.extend_from_slice(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n");
    raw.extend_from_slice(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n");
    raw.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n");
    stream.write_all(&raw).await.unwrap();
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [200, 200, 204, 200, 400], "{resp}");
    assert!(resp.contains("POST /expect 2 0\n"), "{resp}");
    assert!(
        resp.contains("\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\nHTTP/1.1 400 "),
        "{resp}"
    );
    assert_rejection(&resp, 400, "unsupported transfer-encoding");
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn accepted_upgrade_becomes_opaque() {
    let server = server(MAX_HEAD).await;
    let mut stream = server.connect().await;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Anything goes now, even what looks like a forbidden request.
    let opaque = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(opaque).await.unwrap();
    let mut echo = vec![0u8; opaque.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, opaque);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn declined_upgrade_keeps_inspecting() {
    let server = server(MAX_HEAD).await;
    let mut raw =
        b"GET /no-ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            .to_vec();
    raw.extend_from_slice(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
    raw.extend_from_slice(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let resp = server.exchange(&raw).await;
    assert_eq!(statuses(&resp), [200, 405, 400], "{resp}");
    assert!(resp.contains("GET /no-ws 0 0\n"), "{resp}");
    assert_rejection(&resp, 400, "both content-length and transfer-encoding");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn malformed_chunked_body_is_left_to_hyper() {
    let server = server(MAX_HEAD).await;
    let raw =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let resp = server.exchange(raw).await;
    assert!(!resp.starts_with("HTTP/1.1 200 "), "{resp}");
}

#[tokio::test]
async fn over_tls() {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, hits) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_connection(tls, MAX_HEAD, hits).await;
                }
            });
        }
    });

    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut raw = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok".to_vec();
    raw.extend_from_slice(CHUNKED_POST);
    raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n");
    tls.write_all(&raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8(out).unwrap();
    assert_eq!(statuses(&resp), [200, 200, 400], "{resp}");
    assert!(resp.contains("POST /a 2 0\n") && resp.contains("POST /chunked 15 2\n"));
    assert_rejection(&resp, 400, "obsolete line folding");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn h2c_preface_is_an_invalid_head() {
    // The protocol is decided before the guard: on an HTTP/1 connection the h2c preface is an
    // ordinary head, refused (its version), never passed through.
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    assert_rejected(&raw, "unsupported HTTP version").await;
}

#[tokio::test]
async fn client_gone_mid_head() {
    let server = server(MAX_HEAD).await;
    let mut stream = server.connect().await;
    stream.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    stream.shutdown().await.unwrap();
    let resp = read_all(&mut stream).await;
    assert!(resp.is_empty(), "{resp}");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn incomplete_head_is_subject_to_the_header_read_timeout() {
    // Holding an incomplete head must not keep hyper from running its header read timer.
    let server = server(MAX_HEAD).await;
    for partial in [&b"G"[..], b"GET / HTTP/1.1\r\nHost: a\r\n"] {
        let mut stream = server.connect().await;
        stream.write_all(partial).await.unwrap();
        let started = std::time::Instant::now();
        let resp = read_all(&mut stream).await;
        assert!(resp.is_empty(), "{resp}");
        assert!(started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_millis(100));
    }
    // Also on later requests of a keep-alive connection.
    let mut stream = server.connect().await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n")
        .await
        .unwrap();
    let resp = read_all(&mut stream).await;
    assert_eq!(statuses(&resp), [200], "{resp}");
    assert_eq!(server.hits(), 1);
}

// === the stream itself, without hyper ===

/// A transport that yields scripted reads and records writes.
struct Script {
    reads: VecDeque<Vec<u8>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Script {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(mut chunk) = this.reads.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                this.reads.push_front(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn script(reads: Vec<Vec<u8>>) -> (StrictH1<Script>, Arc<Mutex<Vec<u8>>>) {
    let written = Arc::new(Mutex::new(Vec::new()));
    let reads = reads.into_iter().filter(|r| !r.is_empty()).collect();
    let io = Script {
        reads,
        written: written.clone(),
    };
    (StrictH1::new(io, MAX_HEAD, Rejections::default()), written)
}

/// Reads everything through `StrictH1`, `step` bytes at a time at most.
async fn drain(strict: &mut StrictH1<Script>, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(1), strict.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn valid_stream() -> Vec<u8> {
    let mut raw = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    raw.extend_from_slice(CHUNKED_POST);
    raw.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n\r\n");
    raw.extend_from_slice(
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
    raw
}

#[tokio::test]
async fn every_split_point_is_handled() {
    let raw = valid_stream();
    for at in 0..=raw.len() {
        for step in [1, 7, 24, 8192] {
            let (mut strict, _) = script(vec![raw[..at].to_vec(), raw[at..].to_vec()]);
            let out = drain(&mut strict, step).await;
            assert_eq!(out, raw, "split at {at}, reads of {step}");
            assert_eq!(strict.rx.pending.len(), 4);
            assert_eq!(strict.rx.state, RxState::Head);
        }
    }
    let (mut strict, _) = script(raw.iter().map(|&b| vec![b]).collect());
    assert_eq!(drain(&mut strict, 8192).await, raw);
    assert_eq!(strict.rx.pending.len(), 4);
}

#[tokio::test]
async fn violation_waits_for_owed_responses() {
    let mut raw = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    let valid = raw.len();
    raw.extend_from_slice(
        b"GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    );
    let rejections = Rejections::default();
    let (mut strict, written) = script(vec![raw.clone()]);
    strict.rejections = rejections.clone();
    let mut buf = [0u8; 4096];
    let n = strict.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], &raw[..valid]);
    // A response is owed: nothing yet, and the service is not told.
    let pending = tokio::time::timeout(Duration::from_millis(50), strict.read(&mut buf)).await;
    assert!(pending.is_err(), "must wait for the owed response");
    assert!(rejections.get().is_none());
    // The response, in pieces, with a chunked body.
    for part in [
        &b"HTTP/1.1 200 OK\r\ntransfer-en"[..],
        b"coding: chunked\r\n\r\n2\r\nok\r",
        b"\n0\r\n\r",
    ] {
        strict.write_all(part).await.unwrap();
        assert!(!strict.hyper_idle());
    }
    strict.write_all(b"\n").await.unwrap();
    assert!(strict.hyper_idle());
    // Then the synthetic request, with the rejection in the slot.
    let mut synthetic = Vec::new();
    while synthetic.len() < SYNTHETIC_HEAD.len() {
        let n = tokio::time::timeout(Duration::from_secs(1), strict.read(&mut buf[..7]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        synthetic.extend_from_slice(&buf[..n]);
    }
    assert_eq!(synthetic, SYNTHETIC_HEAD);
    let rejection = rejections.get().expect("the rejection is handed over");
    assert_eq!(rejection.violation.status, 400);
    assert_eq!(rejection.violation.reason, "duplicate content-length");
    assert_eq!(rejection.method, Some(http::Method::GET));
    assert_eq!(rejection.target.as_ref().map(|u| u.path()), Some("/b"));
    // Its response is owed: no end of stream until it is written.
    let pending = tokio::time::timeout(Duration::from_millis(50), strict.read(&mut buf)).await;
    assert!(
        pending.is_err(),
        "must wait for the response to the synthetic request"
    );
    strict
        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(1), strict.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    strict.shutdown().await.unwrap();
    let written = String::from_utf8(written.lock().unwrap().clone()).unwrap();
    assert!(written.starts_with("HTTP/1.1 200 OK\r\n"), "{written}");
}

#[tokio::test]
async fn head_trickled_byte_by_byte_is_not_reparsed() {
    // Item 12: a head split into 1-byte reads is searched for its end as it grows and parsed
    // on arrival and once complete, not re-parsed from its start on every read.
    let mut raw = b"POST /a HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..40 {
        raw.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(40)).as_bytes());
    }
    raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    let (mut strict, _) = script(raw.iter().map(|&b| vec![b]).collect());
    assert_eq!(drain(&mut strict, 8192).await, raw);
    assert_eq!(strict.rx.parses, 2);
    assert_eq!(strict.rx.pending.len(), 1);
}
