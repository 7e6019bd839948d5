//! Strict HTTP/1.1 framing, with raw bytes: ambiguous or malformed requests are answered 400
//! with `connection: close`, the connection is closed, and nothing reaches the upstream —
//! including a request pipelined behind the bad one.

use std::time::Duration;

use crate::client::{self, parse_response};
use crate::harness::Server;
use crate::upstream;

const CASES: &[(&str, &str)] = &[
    (
        "content-length then transfer-encoding",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding then content-length",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "duplicate content-length",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "duplicate, differing content-length",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "content-length list",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    (
        "non-numeric content-length",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: abc\r\n\r\nhello",
    ),
    (
        "signed content-length",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "transfer-encoding gzip, chunked",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding identity",
        "POST /up HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: identity\r\n\r\n",
    ),
    (
        "obsolete line folding",
        "GET /up HTTP/1.1\r\nHost: t.test\r\nX-Folded: a\r\n  b\r\n\r\n",
    ),
    (
        "whitespace before colon",
        "GET /up HTTP/1.1\r\nHost: t.test\r\nX-Space : v\r\n\r\n",
    ),
    (
        "control character in a header name",
        "GET /up HTTP/1.1\r\nHost: t.test\r\nX-Ctl\x01: v\r\n\r\n",
    ),
];

/// A complete, valid request pipelined after each bad one: it must never be served either.
const FOLLOW_UP: &str = "GET /smuggled HTTP/1.1\r\nHost: t.test\r\n\r\n";

#[tokio::test]
async fn ambiguous_or_malformed_requests_are_400_and_close() {
    let up = upstream::http(upstream::echo("victim")).await;
    let server = Server::start(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "victim"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "victim"
"#,
        up.url()
    ))
    .await;

    let mut failures = Vec::new();
    for (name, request) in CASES {
        let bytes = format!("{request}{FOLLOW_UP}");
        let raw = client::raw(server.addr(), bytes.as_bytes(), Duration::from_secs(5)).await;
        let text = raw.text();
        let Some(res) = parse_response(&raw.bytes) else {
            failures.push(format!(
                "{name}: no HTTP response: {text:?} (closed: {})",
                raw.closed
            ));
            continue;
        };
        if res.status != 400 {
            failures.push(format!("{name}: status {} instead of 400", res.status));
        }
        if !res
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            failures.push(format!(
                "{name}: 400 without `connection: close` (headers {:?})",
                res.headers
            ));
        }
        if !raw.closed {
            failures.push(format!("{name}: connection left open after the 400"));
        }
        if raw.bytes.len() > res.len {
            failures.push(format!(
                "{name}: a second response followed the 400: {:?}",
                String::from_utf8_lossy(&raw.bytes[res.len..])
            ));
        }
        if up.requests() != 0 {
            failures.push(format!(
                "{name}: the upstream received {} request(s)",
                up.requests()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "strict framing failures:\n{}",
        failures.join("\n")
    );
    assert_eq!(up.connections(), 0, "the upstream was even connected to");

    // Control: the same route forwards a well-formed request with a body.
    let ok = client::raw_exchange(
        server.addr(),
        b"POST /up HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_len"], 5);
    let chunked = client::raw_exchange(
        server.addr(),
        b"POST /up HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.json()["body_len"], 5);
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn http11_request_without_host_is_400() {
    let server = Server::start("[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nrespond = { status = 200 }\n").await;
    let raw = client::raw(
        server.addr(),
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw.status(), Some(400), "{:?}", raw.text());
    assert!(raw.closed);
}
