//! Listeners: HTTP/1.1 + h2c, `http2 = false`, TLS with ALPN and SNI, header limits and
//! timeouts, `max_connections`.

use std::time::Duration;

use http::Version;
use tokio::io::AsyncWriteExt;

use crate::client::{
    self, T, connect, get_req, read_one_response, read_until_close, send_h1, send_h1_on, send_h2,
    send_h2_on,
};
use crate::harness::{Server, TestDir};
use crate::pki::{Ca, tls_connect};
use crate::upstream::{self, echo_header};

fn respond_config(extra_listener_keys: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
name = "public"
listen = "127.0.0.1:0"
{extra_listener_keys}

[[route]]
path = "/"
respond = {{ status = 200, body = "hello" }}
"#
    )
}

#[tokio::test]
async fn http1_and_prior_knowledge_h2c_share_a_listener() {
    let server = Server::start(&respond_config("")).await;
    let res = send_h1(server.addr(), get_req("t.test", "/x"))
        .await
        .unwrap();
    assert_eq!(
        (res.status, res.version, res.text().as_str()),
        (200, Version::HTTP_11, "hello")
    );

    let h2 = http::Request::get("http://t.test/x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send_h2(server.addr(), h2)
        .await
        .expect("h2c request on the default listener");
    assert_eq!(
        (res.status, res.version, res.text().as_str()),
        (200, Version::HTTP_2, "hello")
    );

    // And curl agrees.
    let url = format!("http://{}/x", server.addr());
    let out = client::curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "curl --http2-prior-knowledge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn http2_false_refuses_h2c_but_serves_http1() {
    let server = Server::start(&respond_config("http2 = false")).await;
    let res = send_h1(server.addr(), get_req("t.test", "/"))
        .await
        .unwrap();
    assert_eq!(res.status, 200);

    let h2 = http::Request::get("http://t.test/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let result = send_h2(server.addr(), h2).await;
    assert!(
        result.is_err(),
        "h2c was served on a listener with http2 = false: {result:?}"
    );

    // On the wire: the h2 preface gets no HTTP/2 SETTINGS frame back, and the connection ends.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let raw = client::raw(server.addr(), &preface, Duration::from_secs(5)).await;
    assert!(
        raw.closed,
        "connection left open after an h2 preface on an http1-only listener"
    );
    assert!(
        raw.bytes.is_empty()
            || raw.bytes.starts_with(b"HTTP/1.1 4")
            || raw.bytes.starts_with(b"HTTP/1.1 5"),
        "unexpected answer to an h2 preface: {:?}",
        raw.text()
    );
}

/// A TLS listener offers h2 and http/1.1 by ALPN; requests on it are forwarded with
/// `x-forwarded-proto: https`.
#[tokio::test]
async fn tls_listener_negotiates_alpn_h2_and_http11() {
    let up = upstream::http(upstream::echo("tls-front")).await;
    let ca = Ca::new();
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new("tls-alpn");
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    let toml = format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[service]]
name = "echo"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "echo"
"#,
        up.url()
    );
    let server = Server::start_in(dir, &toml).await;

    // h2 preferred.
    let tls = tls_connect(
        server.addr(),
        "proxy.test",
        ca.client_config(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN did not pick h2"
    );
    let req = http::Request::get("https://proxy.test/over-h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send_h2_on(tls, req).await.unwrap();
    assert_eq!((res.status, res.version), (200, Version::HTTP_2));
    let json = res.json();
    assert_eq!(json["uri"], "/over-h2");
    assert_eq!(
        echo_header(&json, "x-forwarded-proto").as_deref(),
        Some("https")
    );

    // http/1.1 only.
    let tls = tls_connect(
        server.addr(),
        "proxy.test",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let res = send_h1_on(tls, get_req("proxy.test", "/over-h1"))
        .await
        .unwrap();
    assert_eq!((res.status, res.version), (200, Version::HTTP_11));
    let json = res.json();
    assert_eq!(json["uri"], "/over-h1");
    assert_eq!(
        echo_header(&json, "x-forwarded-proto").as_deref(),
        Some("https")
    );

    // No ALPN at all: HTTP/1.1.
    let tls = tls_connect(server.addr(), "proxy.test", ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let res = send_h1_on(tls, get_req("proxy.test", "/no-alpn"))
        .await
        .unwrap();
    assert_eq!(res.status, 200);
}

/// `http2 = false` on a TLS listener: ALPN never picks h2, and an h2 preface sent anyway over
/// the http/1.1 connection is not served as HTTP/2.
#[tokio::test]
async fn tls_listener_with_http2_false_speaks_only_http11() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new("tls-h1only");
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    let toml = r#"
[[listener]]
listen = "127.0.0.1:0"
http2 = false
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[route]]
path = "/"
respond = { status = 200, body = "h1 only" }
"#;
    let server = Server::start_in(dir, toml).await;
    let tls = tls_connect(
        server.addr(),
        "proxy.test",
        ca.client_config(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN picked h2 with http2 = false"
    );
    let res = send_h1_on(tls, get_req("proxy.test", "/")).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "h1 only"));

    let tls = tls_connect(
        server.addr(),
        "proxy.test",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    let req = http::Request::get("https://proxy.test/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let result = send_h2_on(tls, req).await;
    assert!(
        result.is_err(),
        "HTTP/2 served over TLS on a listener with http2 = false: {result:?}"
    );
}

#[tokio::test]
async fn tls_sni_selects_the_configured_certificate() {
    let ca = Ca::new();
    let default = ca.leaf(&["default.test", "other.test"]);
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["*.b.test"]);
    let dir = TestDir::new("tls-sni");
    for (name, leaf) in [("default", &default), ("a", &a), ("b", &b)] {
        dir.write(&format!("certs/{name}.pem"), &leaf.cert_pem);
        dir.write(&format!("certs/{name}.key"), &leaf.key_pem);
    }
    let toml = r#"
[[listener]]
listen = "127.0.0.1:0"
[listener.tls]
cert = "certs/default.pem"
key = "certs/default.key"
[[listener.tls.sni]]
hosts = ["a.test"]
cert = "certs/a.pem"
key = "certs/a.key"
[[listener.tls.sni]]
hosts = ["*.b.test"]
cert = "certs/b.pem"
key = "certs/b.key"

[[route]]
path = "/"
respond = { status = 200, body = "sni" }
"#;
    let server = Server::start_in(dir, toml).await;
    for (sni, expected, which) in [
        ("a.test", &a, "a"),
        ("x.b.test", &b, "*.b"),
        ("other.test", &default, "default"),
        ("default.test", &default, "default"),
    ] {
        let tls = tls_connect(server.addr(), sni, ca.client_config(&[b"http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni}: {e}"));
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .expect("peer certificate")[0]
            .clone();
        assert!(
            presented == expected.cert_der,
            "SNI {sni} did not get the {which} certificate"
        );
        let res = send_h1_on(tls, get_req(sni, "/")).await.unwrap();
        assert_eq!((res.status, res.text().as_str()), (200, "sni"));
    }
}

#[tokio::test]
async fn max_header_bytes_answers_431() {
    let server = Server::start(&respond_config("max_header_bytes = 8192")).await;
    let big = "a".repeat(10 * 1024);
    let req =
        format!("GET / HTTP/1.1\r\nHost: t.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let raw = client::raw(server.addr(), req.as_bytes(), T).await;
    assert_eq!(
        raw.status(),
        Some(431),
        "10 KiB header with max_header_bytes = 8192: {:?}",
        raw.text().chars().take(300).collect::<String>()
    );

    // Under the limit is fine.
    let small = "a".repeat(4 * 1024);
    let req = http::Request::get("/")
        .header("host", "t.test")
        .header("x-small", small)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send_h1(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 200);

    // Also over HTTP/2 the request is refused (431, or the stream/connection is reset).
    let req = http::Request::get("http://t.test/")
        .header("x-big", big)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    if let Ok(res) = send_h2(server.addr(), req).await {
        assert_eq!(res.status, 431, "h2 request with a 10 KiB header");
    }
}

#[tokio::test]
async fn header_read_timeout_cuts_off_slow_clients() {
    let server = Server::start(&respond_config("header_read_timeout_ms = 300")).await;
    let mut stream = connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n")
        .await
        .unwrap();
    let raw = read_until_close(&mut stream, Duration::from_secs(3)).await;
    assert!(
        raw.closed,
        "a client that sent half a head was not cut off within 3 s"
    );
    assert!(
        raw.elapsed < Duration::from_millis(1300),
        "cut off only after {:?} (header_read_timeout_ms = 300)",
        raw.elapsed
    );
    assert!(
        raw.elapsed >= Duration::from_millis(200),
        "cut off after {:?}, before the timeout",
        raw.elapsed
    );
    assert!(
        raw.bytes.is_empty() || raw.text().starts_with("HTTP/1.1 408"),
        "unexpected answer: {:?}",
        raw.text()
    );

    // A client that sends its head in time is served.
    let res = client::get(server.addr(), "/").await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let server = Server::start(&respond_config("idle_timeout_ms = 300")).await;
    let mut stream = connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let res = read_one_response(&mut stream).await;
    assert_eq!(res.status, 200);
    assert_ne!(res.header("connection"), Some("close"));
    let raw = read_until_close(&mut stream, Duration::from_secs(3)).await;
    assert!(
        raw.closed,
        "idle keep-alive connection still open after 3 s (idle_timeout_ms = 300)"
    );
    assert!(
        raw.bytes.is_empty(),
        "unexpected bytes on an idle connection: {:?}",
        raw.text()
    );
    assert!(
        raw.elapsed < Duration::from_millis(1300),
        "idle connection closed only after {:?}",
        raw.elapsed
    );
    assert!(
        raw.elapsed >= Duration::from_millis(150),
        "idle connection closed after {:?}, before the timeout",
        raw.elapsed
    );
}

#[tokio::test]
async fn max_connections_holds_extra_connections_until_one_closes() {
    let server = Server::start(&respond_config("max_connections = 2")).await;
    let req = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";
    let mut a = connect(server.addr()).await.unwrap();
    a.write_all(req).await.unwrap();
    assert_eq!(read_one_response(&mut a).await.status, 200);
    let mut b = connect(server.addr()).await.unwrap();
    b.write_all(req).await.unwrap();
    assert_eq!(read_one_response(&mut b).await.status, 200);

    // The third connection is not served while the first two stay open.
    let mut c = connect(server.addr()).await.unwrap();
    c.write_all(req).await.unwrap();
    let early = read_until_close(&mut c, Duration::from_millis(800)).await;
    assert!(
        early.bytes.is_empty() && !early.closed,
        "third connection served beyond max_connections = 2: {:?}",
        early.text()
    );

    // Both held connections still work.
    b.write_all(req).await.unwrap();
    assert_eq!(read_one_response(&mut b).await.status, 200);

    drop(a);
    let res = read_one_response(&mut c).await;
    assert_eq!(
        res.status, 200,
        "third connection not served after one of the first two closed"
    );
}

/// Sends a request on a new connection; the connection if it was answered within `wait`, else
/// `Err` with the connection (still waiting in the accept queue, request sent).
async fn served_within(
    addr: std::net::SocketAddr,
    wait: Duration,
) -> Result<tokio::net::TcpStream, tokio::net::TcpStream> {
    let mut stream = connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    match tokio::time::timeout(wait, read_one_response(&mut stream)).await {
        Ok(res) => {
            assert_eq!(res.status, 200);
            Ok(stream)
        }
        Err(_) => Err(stream),
    }
}

/// Item 8: `max_connections` follows reloads down and back up while connections are open
/// (2 → 1 → 3), counted through real sockets.
#[tokio::test]
async fn max_connections_follows_reloads_down_and_up() {
    use crate::harness::Signal;
    let server = Server::start(&respond_config("max_connections = 2")).await;
    let addr = server.addr();
    let quiet = Duration::from_millis(500);
    let a = served_within(addr, T)
        .await
        .expect("first connection served");
    let b = served_within(addr, T)
        .await
        .expect("second connection served");
    let c = served_within(addr, quiet)
        .await
        .expect_err("a third connection served with max_connections = 2");

    let reload = |n: usize, max: usize| {
        server.rewrite_config(&respond_config(&format!("max_connections = {max}")));
        server.signal(Signal::SIGHUP);
        server.wait_for_log_count("configuration reloaded", n, T)
    };
    assert!(reload(1, 1).await, "reload to 1 not applied");
    // One of two open connections ends: with the limit at 1, the waiting one stays waiting.
    drop(a);
    let mut c = c;
    let early = read_until_close(&mut c, quiet).await;
    assert!(
        early.bytes.is_empty(),
        "served a second connection with max_connections = 1: {:?}",
        early.text()
    );

    assert!(reload(2, 3).await, "reload to 3 not applied");
    let res = read_one_response(&mut c).await;
    assert_eq!(
        res.status, 200,
        "the waiting connection was not served after 1 -> 3"
    );
    let d = served_within(addr, T)
        .await
        .expect("third connection not served with max_connections = 3");
    let e = served_within(addr, quiet)
        .await
        .expect_err("a fourth connection served with max_connections = 3");
    drop((b, c, d, e));
}
