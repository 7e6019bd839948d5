//! Hostile peers: framing. Clients that lie about where a request ends or whom it is for
//! (two `Host` headers, malformed ones, `Content-Length` with `Transfer-Encoding`, on plain TCP
//! and on TLS with ALPN `http/1.1`), the h2c preface sent to an HTTP/1-only listener, and
//! clients that trickle a head a byte at a time. Every refusal is a 400 (431 for size) with
//! `connection: close`, never reaches the upstream, and goes through the error path: `on_error`
//! devices and the access log see it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::client::{self, Parsed, parse_response};
use crate::harness::{Server, TestDir, eventually};
use crate::pki::{Ca, tls_connect};
use crate::upstream::{self, Upstream, echo_header};

const WAIT: Duration = Duration::from_secs(5);

/// One listener (`listener` holds extra keys), one echo service behind `/`.
async fn proxy(up: &Upstream, listener: &str) -> Server {
    Server::start(&config(up, listener, "")).await
}

fn config(up: &Upstream, listener: &str, devices: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
header_read_timeout_ms = 3000
{listener}

[[service]]
name = "victim"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "victim"

{devices}
"#,
        up.url()
    )
}

/// Sends `request` on a new connection; the single response, which must close the connection.
async fn refused(server: &Server, request: &str) -> Parsed {
    let raw = client::raw(server.addr(), request.as_bytes(), WAIT).await;
    let res = parse_response(&raw.bytes)
        .unwrap_or_else(|| panic!("no HTTP response to {request:?}: {:?}", raw.text()));
    assert!(raw.closed, "the connection stayed open after {request:?}");
    assert_eq!(
        raw.bytes.len(),
        res.len,
        "more than one response: {:?}",
        raw.text()
    );
    assert!(
        res.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "no `connection: close`: {:?}",
        res.headers
    );
    assert!(res.header("x-request-id").is_some(), "{:?}", res.headers);
    res
}

/// A request pipelined behind the bad one: it must never be served either.
const FOLLOW_UP: &str = "GET /smuggled HTTP/1.1\r\nHost: t.test\r\n\r\n";

async fn assert_refused_and_not_forwarded(request: &str, reason: &str) {
    assert_refused_on("", request, reason).await;
}

/// As [`assert_refused_and_not_forwarded`], on a listener with the extra keys `listener`.
async fn assert_refused_on(listener: &str, request: &str, reason: &str) {
    let up = upstream::http(upstream::echo("victim")).await;
    let server = proxy(&up, listener).await;
    let res = refused(&server, &format!("{request}{FOLLOW_UP}")).await;
    assert_eq!(res.status, 400, "{:?}", String::from_utf8_lossy(&res.body));
    let body = String::from_utf8_lossy(&res.body);
    assert!(body.contains(reason), "{body}");
    assert_eq!(up.connections(), 0, "the upstream was connected to");
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    assert_refused_and_not_forwarded(
        "GET /a HTTP/1.1\r\nHost: t.test\r\nHost: evil.test\r\n\r\n",
        "duplicate host",
    )
    .await;
}

#[tokio::test]
async fn host_with_whitespace_is_refused() {
    assert_refused_and_not_forwarded("GET /a HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid host").await;
}

#[tokio::test]
async fn host_with_userinfo_is_refused() {
    assert_refused_and_not_forwarded("GET /a HTTP/1.1\r\nHost: a@b\r\n\r\n", "invalid host").await;
}

#[tokio::test]
async fn empty_host_on_http11_is_refused() {
    assert_refused_and_not_forwarded("GET /a HTTP/1.1\r\nHost:\r\n\r\n", "empty host").await;
}

/// On a listener with `http2 = false` every connection is HTTP/1 from its first byte: the h2c
/// preface (here with an empty SETTINGS frame) is an invalid head like any other, refused with
/// 400, never passed through to hyper, never forwarded.
#[tokio::test]
async fn h2c_preface_on_an_http1_only_listener_is_refused() {
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    assert_refused_on("http2 = false", preface, "unsupported HTTP version").await;
}

/// Two services, `a` and `b`, behind routes for hosts `a.test` and `b.test`.
async fn two_hosts() -> (Upstream, Upstream, Server) {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let server = Server::start(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "a"
upstreams = [{{ url = "{}" }}]

[[service]]
name = "b"
upstreams = [{{ url = "{}" }}]

[[route]]
host = "a.test"
path = "/"
service = "a"

[[route]]
host = "b.test"
path = "/"
service = "b"
"#,
        a.url(),
        b.url()
    ))
    .await;
    (a, b, server)
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    // Routing and the upstream both see the target's authority, never the `Host` header.
    let (a, b, server) = two_hosts().await;
    let res = client::raw_exchange(
        server.addr(),
        b"GET http://a.test:8080/x?y HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200, "{:?}", String::from_utf8_lossy(&res.body));
    let json = res.json();
    assert_eq!(json["tag"], "a", "routed on the Host header: {json}");
    assert_eq!(json["uri"], "/x?y");
    assert_eq!(echo_header(&json, "host").as_deref(), Some("a.test:8080"));
    assert_eq!((a.requests(), b.requests()), (1, 0));
}

#[tokio::test]
async fn h2_authority_wins_over_host() {
    let (a, b, server) = two_hosts().await;
    let req = http::Request::get("http://a.test/x")
        .header("host", "b.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = client::send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    let json = res.json();
    assert_eq!(json["tag"], "a", "routed on the host header: {json}");
    assert_eq!(echo_header(&json, "host").as_deref(), Some("a.test"));
    // userinfo in :authority is refused.
    let req = http::Request::get("http://u@a.test/x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = client::send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!((a.requests(), b.requests()), (1, 0));
}

const CL_TE: &str = "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

#[tokio::test]
async fn content_length_with_transfer_encoding_on_plain_tcp_never_reaches_upstream() {
    assert_refused_and_not_forwarded(CL_TE, "both content-length and transfer-encoding").await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_on_tls_http11_never_reaches_upstream() {
    let up = upstream::http(upstream::echo("victim")).await;
    let ca = Ca::new();
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new("guard-tls");
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    let tls = "[listener.tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\n";
    let server = Server::start_in(dir, &config(&up, tls, "")).await;
    let mut stream = tls_connect(
        server.addr(),
        "proxy.test",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let _ = stream
        .write_all(format!("{CL_TE}{FOLLOW_UP}").as_bytes())
        .await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut out),
    )
    .await;
    assert!(read.is_ok(), "the connection stayed open");
    let res = parse_response(&out).expect("an HTTP response");
    assert_eq!(res.status, 400);
    assert_eq!(out.len(), res.len, "more than one response");
    assert_eq!(up.connections(), 0, "the upstream was connected to");
}

/// Writes `bytes` one per write, pausing so each arrives in its own segment.
async fn trickle(stream: &mut tokio::net::TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    for b in bytes {
        stream.write_all(std::slice::from_ref(b)).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

#[tokio::test]
async fn head_trickled_one_byte_per_write_is_served() {
    let up = upstream::http(upstream::echo("victim")).await;
    let server = proxy(&up, "").await;
    let mut stream = client::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /slow HTTP/1.1\r\nHost: t.test\r\nX-Pad: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        "p".repeat(200)
    );
    trickle(&mut stream, head.as_bytes()).await.unwrap();
    let raw = client::read_until_close(&mut stream, WAIT).await;
    let res = parse_response(&raw.bytes).expect("a response");
    assert_eq!(res.status, 200, "{:?}", raw.text());
    assert_eq!(res.json()["body_len"], 2);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn large_head_trickled_one_byte_per_write_gets_431() {
    let up = upstream::http(upstream::echo("victim")).await;
    // About 1,000 writes a millisecond apart: on a loaded machine that can outlast the usual
    // 3 s header timeout, which would close the connection before the limit is reached.
    let server = Server::start(&config(&up, "max_header_bytes = 1024", "").replace(
        "header_read_timeout_ms = 3000",
        "header_read_timeout_ms = 60000",
    ))
    .await;
    let mut stream = client::connect(server.addr()).await.unwrap();
    let mut head = String::from("GET / HTTP/1.1\r\nHost: t.test\r\n");
    while head.len() < 1400 {
        head.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    // The server answers and closes once the limit is passed; later writes may fail.
    let _ = trickle(&mut stream, head.as_bytes()).await;
    let raw = client::read_until_close(&mut stream, WAIT).await;
    let res = parse_response(&raw.bytes).expect("a response");
    assert_eq!(res.status, 431, "{:?}", raw.text());
    assert!(raw.closed);
    assert_eq!(up.connections(), 0);
}

/// Every JSON line of `path` about request `id`.
fn lines_for(path: &Path, id: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["request_id"] == id)
        .collect()
}

#[tokio::test]
async fn framing_rejection_reaches_on_error_and_the_access_log() {
    let up = upstream::http(upstream::echo("victim")).await;
    let dir = TestDir::new("guard-log");
    let log = dir.join("access.log");
    let device = format!(
        "[[device]]\ntype = \"structured_logging\"\noutput = \"{}\"\nphases = [\"request\", \"error\", \"response\"]\n",
        log.display()
    );
    let server = Server::start_in(dir, &config(&up, "", &device)).await;
    let res = refused(&server, CL_TE).await;
    assert_eq!(res.status, 400);
    let id = res.header("x-request-id").unwrap().to_owned();
    assert!(
        eventually(WAIT, || lines_for(&log, &id).len() >= 2).await,
        "no log lines for {id}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let lines = lines_for(&log, &id);
    let events: Vec<_> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    // No request-side hook ran: there is no request to show them.
    assert_eq!(events, ["error", "response"], "{lines:?}");
    let error = &lines[0];
    assert_eq!(error["status"], 400, "{error}");
    assert_eq!(error["error"]["kind"], "bad_request", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("both content-length and transfer-encoding")),
        "{error}"
    );
    assert_eq!(
        (&error["method"], &error["path"]),
        (&Value::from("POST"), &Value::from("/up")),
        "{error}"
    );
    assert_eq!(lines[1]["status"], 400, "{}", lines[1]);
    assert_eq!(lines[1]["origin"], "error", "{}", lines[1]);
    assert_eq!(up.connections(), 0);
}
