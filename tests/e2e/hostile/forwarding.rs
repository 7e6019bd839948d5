//! Hostile peers: forwarding headers. A client cannot tell the upstream who it is: from a peer
//! outside the listener's `trusted_proxies`, every `x-forwarded-*`, `forwarded` and
//! `x-real-ip` (in any `-`/`_` spelling) is replaced; from a trusted proxy, `x-forwarded-for`
//! is appended to and the rest kept.

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;

use crate::client::{raw_exchange, send_from};
use crate::harness::Server;
use crate::upstream::{self, Recorded, Upstream};

/// Trusts 127.0.0.2 only; the tests connect from 127.0.0.1 (untrusted) or 127.0.0.2.
async fn start() -> (Upstream, Recorded, Server) {
    let (handler, seen) = upstream::recording(upstream::echo("app"), &[]);
    let up = upstream::http(handler).await;
    let server = Server::start(&format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.2/32", "10.0.0.0/8"]

[[service]]
name = "app"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "app"
"#,
        up.url()
    ))
    .await;
    (up, seen, server)
}

#[tokio::test]
async fn untrusted_peer_cannot_spoof_forwarding_headers() {
    let (_up, seen, server) = start().await;
    let req = "GET /who HTTP/1.1\r\n\
        Host: front.test\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X_Forwarded_For: 203.0.113.8\r\n\
        X-Forwarded_For: 203.0.113.9\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: bank.example\r\n\
        X_Forwarded_Host: bank.example\r\n\
        X-Forwarded-Port: 443\r\n\
        X-Forwarded-Prefix: /admin\r\n\
        Forwarded: for=203.0.113.7;proto=https\r\n\
        X-Real-IP: 203.0.113.7\r\n\
        X_Real_IP: 203.0.113.7\r\n\
        X-Forwarded-Foo: kept\r\n\
        Connection: close\r\n\
        \r\n";
    let res = raw_exchange(server.addr(), req.as_bytes()).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let head = seen.last();
    assert_eq!(head.values("x-forwarded-for"), [b"127.0.0.1"]);
    assert_eq!(head.values("x-forwarded-proto"), [b"http"]);
    assert_eq!(head.values("x-forwarded-host"), [b"front.test"]);
    for name in [
        "x_forwarded_for",
        "x-forwarded_for",
        "x_forwarded_host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x_real_ip",
    ] {
        assert!(
            head.values(name).is_empty(),
            "{name} from an untrusted peer reached the upstream: {:?}",
            head.headers
        );
    }
    // Other headers pass.
    assert_eq!(head.header("x-forwarded-foo"), Some("kept"));
}

#[tokio::test]
async fn trusted_proxy_forwarding_headers_are_appended_to() {
    let (_up, seen, server) = start().await;
    let req = Request::get("/who")
        .header("host", "front.test")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example")
        .header("x-real-ip", "203.0.113.7")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_from("127.0.0.2", server.addr(), req).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let head = seen.last();
    assert_eq!(head.values("x-forwarded-for"), [b"203.0.113.7, 127.0.0.2"]);
    assert_eq!(head.values("x-forwarded-proto"), [b"https"]);
    assert_eq!(head.values("x-forwarded-host"), [b"www.example"]);
    assert_eq!(head.values("x-real-ip"), [b"203.0.113.7"]);
}
