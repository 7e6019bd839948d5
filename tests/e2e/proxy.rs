//! Upstream proxying: forwarded headers, request ids, strip_prefix, pooling, load balancing,
//! failover, unix/https/h2c upstreams, error statuses, truncation, and streaming memory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::client::{self, T, connect, get, get_host, raw_exchange, send_h1, send_h2};
use crate::harness::{Server, TestDir};
use crate::pki::Ca;
use crate::upstream::{self, Upstream, echo_header, echo_headers};

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One listener, one service `name` with `upstreams` (TOML inline array items) and
/// `service_keys`, routed at `/`.
fn service_config(name: &str, upstreams: &str, service_keys: &str, route_keys: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "{name}"
upstreams = [{upstreams}]
{service_keys}

[[route]]
path = "/"
service = "{name}"
{route_keys}
"#
    )
}

/// The error page tells the client the status and the request id, not the service; the
/// server log names the service with that request id.
async fn assert_names_service_in_log_only(
    server: &Server,
    res: &crate::client::Resp,
    service: &str,
) {
    let id = res.request_id();
    assert!(
        res.text().contains(id) && !res.text().contains(service),
        "{} body names the service, or not the request id: {:?}",
        res.status,
        res.text()
    );
    assert!(
        server
            .wait_for_log(id, std::time::Duration::from_secs(5))
            .await
            && server
                .log_lines()
                .iter()
                .any(|l| l.contains(id) && l.contains(service)),
        "the log names the service with the request id {id}:\n{}",
        server.log_text()
    );
}

fn one(up: &Upstream) -> String {
    format!("{{ url = \"{}\" }}", up.url())
}

#[tokio::test]
async fn forwarded_and_hop_by_hop_headers() {
    let up = upstream::http(upstream::echo("hdr")).await;
    let server = Server::start(&service_config("echo", &one(&up), "", "")).await;
    let req = "GET /h?x=1 HTTP/1.1\r\n\
        Host: front.test:8080\r\n\
        Connection: x-foo, close\r\n\
        X-Foo: secret\r\n\
        X-Bar: kept\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: gzip\r\n\
        Upgrade: websocket\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        User-Agent: e2e\r\n\
        \r\n";
    let res = raw_exchange(server.addr(), req.as_bytes()).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let json = res.json();
    let has = |n: &str| !echo_headers(&json, n).is_empty();
    for hop in [
        "x-foo",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "transfer-encoding",
    ] {
        assert!(
            !has(hop),
            "hop-by-hop header {hop} reached the upstream: {:?}",
            echo_headers(&json, hop)
        );
    }
    for v in echo_headers(&json, "connection") {
        assert!(
            !v.contains("x-foo") && !v.contains("close"),
            "client's connection header forwarded: {v}"
        );
    }
    assert_eq!(echo_header(&json, "x-bar").as_deref(), Some("kept"));
    assert_eq!(echo_header(&json, "user-agent").as_deref(), Some("e2e"));
    assert_eq!(
        echo_headers(&json, "host"),
        ["front.test:8080"],
        "host must pass unchanged"
    );
    // The peer is not a trusted proxy: its own x-forwarded-for is replaced (hostile::forwarding).
    assert_eq!(echo_headers(&json, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo_headers(&json, "x-forwarded-proto"), ["http"]);
    let xfh = echo_headers(&json, "x-forwarded-host");
    assert!(
        xfh.len() == 1 && xfh[0].starts_with("front.test"),
        "x-forwarded-host: {xfh:?}"
    );
    assert_eq!(json["uri"], "/h?x=1");
    assert_eq!(json["method"], "GET");

    // Without a client X-Forwarded-For the proxy starts one; a spoofed x-forwarded-proto is replaced.
    let req = Request::get("/p")
        .header("host", "front.test")
        .header("x-forwarded-proto", "https")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let json = send_h1(server.addr(), req).await.unwrap().json();
    assert_eq!(echo_headers(&json, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo_headers(&json, "x-forwarded-proto"), ["http"]);
    assert_eq!(echo_headers(&json, "x-forwarded-host"), ["front.test"]);

    // The one exception to dropping `te`: `te: trailers` (gRPC needs it end to end, RFC 9113
    // §8.2.2 allows it). Any other value is dropped, as above.
    let req = Request::get("/t")
        .header("host", "front.test")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let json = send_h1(server.addr(), req).await.unwrap().json();
    assert_eq!(echo_headers(&json, "te"), ["trailers"]);
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_returned() {
    let up = upstream::http(upstream::echo("rid")).await;
    let server = Server::start(&service_config("echo", &one(&up), "", "")).await;

    let req = Request::get("/")
        .header("host", "t.test")
        .header("x-request-id", "abc-123")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h1(server.addr(), req).await.unwrap();
    assert_eq!(res.request_id(), "abc-123");
    assert_eq!(echo_headers(&res.json(), "x-request-id"), ["abc-123"]);

    let res = get(server.addr(), "/").await;
    let id = res.request_id().to_owned();
    assert!(is_generated_id(&id), "generated request id: {id:?}");
    assert_eq!(
        echo_headers(&res.json(), "x-request-id"),
        std::slice::from_ref(&id)
    );
    let other = get(server.addr(), "/").await;
    assert_ne!(
        other.request_id(),
        id,
        "two requests got the same generated id"
    );

    // Too long (129 characters) is replaced.
    let long = "a".repeat(129);
    let req = Request::get("/")
        .header("host", "t.test")
        .header("x-request-id", &long)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h1(server.addr(), req).await.unwrap();
    let id = res.request_id().to_owned();
    assert!(
        is_generated_id(&id),
        "malformed request id not replaced: {id:?}"
    );
    assert_eq!(echo_headers(&res.json(), "x-request-id"), [id]);

    // Over h2c too.
    let req = Request::get("http://t.test/")
        .header("x-request-id", "h2-id")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.request_id(), "h2-id");
    assert_eq!(echo_headers(&res.json(), "x-request-id"), ["h2-id"]);
}

#[tokio::test]
async fn strip_prefix_removes_the_route_prefix() {
    let up = upstream::http(upstream::echo("strip")).await;
    let toml = format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "echo"
upstreams = [{}]

[[route]]
path = "/svc"
service = "echo"
strip_prefix = true

[[route]]
path = "/keep"
service = "echo"
"#,
        one(&up)
    );
    let server = Server::start(&toml).await;
    for (sent, forwarded) in [
        ("/svc/x/y", "/x/y"),
        ("/svc", "/"),
        ("/svc/", "/"),
        ("/svc/q?a=b", "/q?a=b"),
        ("/keep/x", "/keep/x"),
    ] {
        let res = get(server.addr(), sent).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.json()["uri"], forwarded, "{sent}");
    }
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = upstream::http(upstream::echo("pool")).await;
    let server = Server::start(&service_config("echo", &one(&up), "", "")).await;
    for i in 0..10 {
        let res = get(server.addr(), &format!("/r{i}")).await;
        assert_eq!(res.status, 200);
    }
    assert_eq!(up.requests(), 10);
    // One pool, or under per_core one per worker (`threads = 2`): each worker that served a
    // request opened one connection and reused it.
    assert!(
        (1..=pools()).contains(&up.connections()),
        "10 sequential requests opened {} upstream connections",
        up.connections()
    );
}

/// How many pools each upstream has: one, or one per worker (2) under per_core.
fn pools() -> usize {
    if crate::harness::RUNTIME == Some("per_core") {
        2
    } else {
        1
    }
}

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let a = upstream::http(upstream::echo("a")).await;
    let b = upstream::http(upstream::echo("b")).await;
    let ups = format!(
        "{{ url = \"{}\", weight = 2 }}, {{ url = \"{}\", weight = 1 }}",
        a.url(),
        b.url()
    );
    let server = Server::start(&service_config(
        "rr",
        &ups,
        "strategy = \"round_robin\"",
        "",
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..30 {
        let res = get(server.addr(), "/").await;
        assert_eq!(res.status, 200);
        seen.push(res.header("x-upstream").unwrap().to_owned());
    }
    let count_a = seen.iter().filter(|t| *t == "a").count();
    assert_eq!((count_a, 30 - count_a), (20, 10), "sequence: {seen:?}");
    assert_eq!((a.requests(), b.requests()), (20, 10));
    // Interleaved, not 20 then 10: every window of 3 holds both.
    assert!(
        seen.windows(3)
            .all(|w| w.iter().any(|t| t == "b") && w.iter().any(|t| t == "a")),
        "not interleaved: {seen:?}"
    );
}

/// Failover with a refused first upstream. There are no implicit retries (DESIGN §5), so the
/// request that finds the first upstream refused fails with 502; with `failure_threshold = 1`
/// that failure opens its circuit and every later request goes to the second upstream.
#[tokio::test]
async fn failover_moves_to_the_second_upstream_once_the_circuit_opens() {
    let dead = upstream::refused_addr();
    let b = upstream::http(upstream::echo("backup")).await;
    let ups = format!("{{ url = \"http://{dead}\" }}, {}", one(&b));
    let keys = "strategy = \"failover\"\n[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 60000";
    let server = Server::start(&service_config("fo", &ups, keys, "")).await;
    let first = get(server.addr(), "/").await;
    assert_eq!(
        first.status,
        502,
        "first request (primary refused, no retries): {}",
        first.text()
    );
    assert_names_service_in_log_only(&server, &first, "service \"fo\"").await;
    for i in 0..5 {
        let res = get(server.addr(), "/").await;
        assert_eq!(
            res.status,
            200,
            "request {} after the circuit opened: {}",
            i + 2,
            res.text()
        );
        assert_eq!(res.header("x-upstream"), Some("backup"));
    }
    assert_eq!(b.requests(), 5);
}

/// Failover without the breaker tripping: the primary is used while it is healthy.
#[tokio::test]
async fn failover_prefers_the_first_healthy_upstream() {
    let a = upstream::http(upstream::echo("primary")).await;
    let b = upstream::http(upstream::echo("backup")).await;
    let ups = format!("{}, {}", one(&a), one(&b));
    let server = Server::start(&service_config("fo", &ups, "strategy = \"failover\"", "")).await;
    for _ in 0..6 {
        assert_eq!(
            get(server.addr(), "/").await.header("x-upstream"),
            Some("primary")
        );
    }
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn unix_socket_upstream() {
    let dir = TestDir::new("unix-up");
    let sock = dir.join("app.sock");
    let (requests, _task) = upstream::unix(&sock, upstream::echo("unix")).await;
    let ups = format!("{{ url = \"unix:{}\" }}", sock.display());
    let server = Server::start_in(dir, &service_config("sock", &ups, "", "")).await;
    let res = get_host(server.addr(), "u.test", "/over/unix?a=1").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let json = res.json();
    assert_eq!(json["tag"], "unix");
    assert_eq!(json["uri"], "/over/unix?a=1");
    assert_eq!(echo_headers(&json, "host"), ["u.test"]);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn https_upstream_trusts_ca_file_only() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
    let up = upstream::tls(
        upstream::echo("tls-up"),
        leaf.server_config(&[b"h2", b"http/1.1"]),
    )
    .await;
    let dir = TestDir::new("https-up");
    dir.write("certs/ca.pem", &ca.cert_pem);
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let toml = format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "trusted"
upstreams = [{{ url = "{url}" }}]
ca_file = "certs/ca.pem"

[[service]]
name = "untrusted"
upstreams = [{{ url = "{url}" }}]

[[route]]
path = "/trusted"
service = "trusted"

[[route]]
path = "/untrusted"
service = "untrusted"
"#
    );
    let server = Server::start_in(dir, &toml).await;
    let res = get(server.addr(), "/trusted/x").await;
    assert_eq!(
        res.status,
        200,
        "https upstream with ca_file: {}",
        res.text()
    );
    assert_eq!(res.json()["tag"], "tls-up");
    assert_eq!(res.json()["uri"], "/trusted/x");
    let before = up.requests();
    let res = get(server.addr(), "/untrusted/x").await;
    assert_eq!(
        res.status,
        502,
        "an https upstream with an unknown CA was trusted: {}",
        res.text()
    );
    assert!(res.header("x-request-id").is_some());
    assert_eq!(
        up.requests(),
        before,
        "a request reached an upstream whose certificate failed verification"
    );
}

#[tokio::test]
async fn http2_service_speaks_prior_knowledge_h2_to_h2c_upstreams() {
    let up = upstream::h2c_only(upstream::echo("h2c")).await;
    let server = Server::start(&service_config("grpcish", &one(&up), "http2 = true", "")).await;
    for i in 0..3 {
        let req = Request::post(format!("/h2/{i}"))
            .header("host", "t.test")
            .body(client::full("payload"))
            .unwrap();
        let res = send_h1(server.addr(), req).await.unwrap();
        assert_eq!(res.status, 200, "{}", res.text());
        let json = res.json();
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(
            json["uri"]
                .as_str()
                .map(|u| u.ends_with(&format!("/h2/{i}"))),
            Some(true),
            "{json}"
        );
        assert_eq!(json["body_len"], 7);
        assert_eq!(json["method"], "POST");
    }
    assert!(
        (1..=pools()).contains(&up.connections()),
        "h2 upstream connection not reused: {} connections",
        up.connections()
    );
}

#[tokio::test]
async fn refused_upstream_is_502_naming_the_service() {
    let dead = upstream::refused_addr();
    let server = Server::start(&service_config(
        "deadsvc",
        &format!("{{ url = \"http://{dead}\" }}"),
        "",
        "",
    ))
    .await;
    let res = get(server.addr(), "/x").await;
    assert_eq!(res.status, 502);
    let id = res.request_id().to_owned();
    assert!(is_generated_id(&id));
    assert_names_service_in_log_only(&server, &res, "deadsvc").await;
    let req = Request::get("http://t.test/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 502);
    assert!(res.header("x-request-id").is_some());
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_after_response_timeout() {
    let up = upstream::http(upstream::slow(Duration::from_secs(3600), "never")).await;
    let server = Server::start(&service_config(
        "sleepy",
        &one(&up),
        "response_timeout_ms = 300",
        "",
    ))
    .await;
    let start = Instant::now();
    let res = get(server.addr(), "/").await;
    let elapsed = start.elapsed();
    assert_eq!(res.status, 504, "{}", res.text());
    assert!(res.header("x-request-id").is_some());
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
        "504 after {elapsed:?}"
    );
}

/// The response timer of a pooled upstream connection is set again for each request: after
/// two answers on one connection, spaced by more than `response_timeout_ms`, a stall on that
/// same connection is a 504 with the request id once the limit has run from its own start.
#[tokio::test]
async fn a_stall_on_a_pooled_upstream_connection_is_504_after_response_timeout() {
    let up = upstream::http(upstream::handler(|req| async move {
        if req.uri().path() == "/never" {
            std::future::pending::<()>().await;
        }
        hyper::Response::builder()
            .body(upstream::full_body("ok"))
            .unwrap()
    }))
    .await;
    let server = Server::start(&service_config(
        "pooled",
        &one(&up),
        "response_timeout_ms = 300",
        "",
    ))
    .await;
    // One client connection, so that under `per_core` every request is served by one worker
    // and its pool.
    let mut stream = connect(server.addr()).await.unwrap();
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t.test\r\n\r\n");
    for _ in 0..2 {
        stream.write_all(request("/").as_bytes()).await.unwrap();
        assert_eq!(client::read_one_response(&mut stream).await.status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let start = Instant::now();
    stream
        .write_all(request("/never").as_bytes())
        .await
        .unwrap();
    let res = client::read_one_response(&mut stream).await;
    let elapsed = start.elapsed();
    assert_eq!(res.status, 504, "{}", String::from_utf8_lossy(&res.body));
    assert!(res.header("x-request-id").is_some());
    assert!(
        elapsed >= Duration::from_millis(250),
        "504 after {elapsed:?}"
    );
    assert_eq!(
        up.connections(),
        1,
        "all three went over one pooled connection"
    );
}

/// The upstream promises 1 MiB, sends 100 KiB and closes: the client must not see a complete
/// response.
#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_client_response() {
    let up = upstream::raw(|mut s| {
        Box::pin(async move {
            let mut buf = vec![0u8; 8192];
            // Read the request head.
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\ncontent-type: application/octet-stream\r\n\r\n").await;
            let _ = s.write_all(&vec![b'x'; 100 * 1024]).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        })
    })
    .await;
    let server = Server::start(&service_config("dying", &one(&up), "", "")).await;

    // hyper HTTP/1.1 client: the head arrives, the body errors.
    let stream = connect(server.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = tokio::time::timeout(T, sender.send_request(client::get_req("t.test", "/big")))
        .await
        .expect("head in time");
    match res {
        Err(e) => eprintln!("(response failed before the head: {e})"),
        Ok(res) => {
            assert_eq!(res.status(), 200);
            let body = tokio::time::timeout(T, res.into_body().collect())
                .await
                .expect("body ends in time");
            assert!(
                body.is_err(),
                "truncated upstream body looked complete ({} bytes)",
                body.unwrap().to_bytes().len()
            );
        }
    }

    // HTTP/2: the stream is reset, not ended cleanly.
    let req = Request::get("http://t.test/big")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(server.addr(), req).await;
    assert!(
        res.is_err(),
        "truncated upstream body looked complete over h2: {} bytes",
        res.unwrap().body.len()
    );

    // curl: exit 18 (partial file) or another transfer error, never success.
    let url = format!("http://{}/big", server.addr());
    let out = client::curl(&["-o", "/dev/null", &url]).await;
    assert_eq!(
        out.status.code(),
        Some(18),
        "curl should fail with 18 (partial file): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "curl exit status on truncation: {:?} ({})",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

const BIG: u64 = 256 * 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_256_mib_streams_with_bounded_memory() {
    let up = upstream::http(upstream::echo("sink")).await;
    let server = Server::start(&service_config("sink", &one(&up), "", "")).await;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let n = BIG / chunk.len() as u64;
    let body = StreamBody::new(stream::iter(
        (0..n).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    ));
    let req = Request::post("/upload")
        .header("host", "t.test")
        .header("content-length", BIG.to_string())
        .body(body)
        .unwrap();
    let stream = connect(server.addr()).await.unwrap();
    let fut = async move {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(180), fut)
        .await
        .expect("upload finished within 180 s");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["body_len"], BIG,
        "upstream received {} of {BIG} bytes",
        json["body_len"]
    );
    let rss = server.peak_rss_kib();
    assert!(
        rss < RSS_LIMIT_KIB,
        "peak RSS {rss} KiB while proxying a 256 MiB upload (limit {RSS_LIMIT_KIB} KiB)"
    );
    eprintln!("upload: proxy peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_256_mib_streams_with_bounded_memory() {
    let up = upstream::http(upstream::download(BIG)).await;
    let server = Server::start(&service_config("source", &one(&up), "", "")).await;
    let stream = connect(server.addr()).await.unwrap();
    let fut = async move {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let res = sender
            .send_request(client::get_req("t.test", "/download"))
            .await
            .unwrap();
        let status = res.status();
        let mut body = res.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.unwrap().data_ref() {
                total += d.len() as u64;
            }
        }
        (status, total)
    };
    let (status, total) = tokio::time::timeout(Duration::from_secs(180), fut)
        .await
        .expect("download finished within 180 s");
    assert_eq!(status, 200);
    assert_eq!(total, BIG);
    let rss = server.peak_rss_kib();
    assert!(
        rss < RSS_LIMIT_KIB,
        "peak RSS {rss} KiB while proxying a 256 MiB download (limit {RSS_LIMIT_KIB} KiB)"
    );
    eprintln!("download: proxy peak RSS {rss} KiB");
}

/// A single upstream whose circuit is open: 503 (not 502), with a request id, and the upstream
/// is not tried.
#[tokio::test]
async fn open_circuit_is_503_with_request_id() {
    let dead = upstream::refused_addr();
    let keys = "[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 60000";
    let server = Server::start(&service_config(
        "fragile",
        &format!("{{ url = \"http://{dead}\" }}"),
        keys,
        "",
    ))
    .await;
    let first = get(server.addr(), "/").await;
    assert_eq!(first.status, 502, "{}", first.text());
    for _ in 0..3 {
        let res = get(server.addr(), "/").await;
        assert_eq!(
            res.status,
            503,
            "request with the circuit open: {}",
            res.text()
        );
        assert!(is_generated_id(res.request_id()));
        assert_names_service_in_log_only(&server, &res, "fragile").await;
    }
}

/// `response_timeout_ms` bounds the wait for the response head, not the whole body: a body that
/// trickles in for longer still arrives complete.
#[tokio::test]
async fn response_timeout_does_not_cut_a_slow_body() {
    let up = upstream::http(upstream::handler(|_req| async {
        let chunks = stream::unfold(0u8, |i| async move {
            if i == 6 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'a' + i; 10]))),
                i + 1,
            ))
        });
        http::Response::builder()
            .header("content-length", "60")
            .body(BodyExt::boxed(StreamBody::new(chunks)))
            .unwrap()
    }))
    .await;
    let server = Server::start(&service_config(
        "trickle",
        &one(&up),
        "response_timeout_ms = 300",
        "",
    ))
    .await;
    let start = Instant::now();
    let res = get(server.addr(), "/").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.text(),
        "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffff"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(550),
        "body arrived too fast to prove anything"
    );
}

/// Hop-by-hop headers are dropped on the way back too.
#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let up = upstream::http(upstream::handler(|_req| async {
        http::Response::builder()
            .header("connection", "x-secret")
            .header("x-secret", "upstream-only")
            .header("keep-alive", "timeout=1")
            .header("x-normal", "yes")
            .body(upstream::full_body("body"))
            .unwrap()
    }))
    .await;
    let server = Server::start(&service_config("hop", &one(&up), "", "")).await;
    let res = get(server.addr(), "/").await;
    assert_eq!((res.status, res.text().as_str()), (200, "body"));
    assert_eq!(res.header("x-normal"), Some("yes"));
    assert_eq!(
        res.header("x-secret"),
        None,
        "header named by the upstream's connection header forwarded"
    );
    assert_eq!(res.header("keep-alive"), None);
    assert!(
        res.header("connection")
            .is_none_or(|v| !v.contains("x-secret"))
    );
}

/// The proxy passes the upstream's status, headers and body through, whatever the status.
#[tokio::test]
async fn upstream_status_headers_and_body_pass_through() {
    let up = upstream::http(upstream::handler(|req| async move {
        let status = req
            .uri()
            .path()
            .trim_start_matches('/')
            .parse::<u16>()
            .unwrap_or(200);
        http::Response::builder()
            .status(status)
            .header("x-custom", "from-upstream")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(upstream::full_body(format!("status {status}")))
            .unwrap()
    }))
    .await;
    let server = Server::start(&service_config("pass", &one(&up), "", "")).await;
    for status in [200u16, 201, 404, 418, 500, 503] {
        let res = get(server.addr(), &format!("/{status}")).await;
        assert_eq!(res.status, status);
        assert_eq!(res.text(), format!("status {status}"));
        assert_eq!(res.header("x-custom"), Some("from-upstream"));
        let cookies: Vec<_> = res
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(res.header("x-request-id").is_some());
    }
}

/// An upstream that accepts and then closes without answering: 502.
#[tokio::test]
async fn upstream_reset_before_answering_is_502() {
    let up = upstream::raw(|mut s| {
        Box::pin(async move {
            let mut buf = vec![0u8; 8192];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            drop(s);
        })
    })
    .await;
    let server = Server::start(&service_config("hangup", &one(&up), "", "")).await;
    let res = get(server.addr(), "/").await;
    assert_eq!(res.status, 502, "{}", res.text());
    assert!(is_generated_id(res.request_id()));
    assert_names_service_in_log_only(&server, &res, "hangup").await;
    assert!(up.connections() >= 1);
}

/// HTTP/2 clients get real multiplexing: 20 concurrent streams on one connection to a 300 ms
/// upstream finish together, not one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_are_proxied_concurrently() {
    let up = upstream::http(upstream::slow(Duration::from_millis(300), "slow")).await;
    let server = Server::start(&service_config("slow", &one(&up), "", "")).await;
    let stream = connect(server.addr()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://t.test/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = tokio::time::timeout(T, t)
            .await
            .expect("stream finished")
            .unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"slow"[..]));
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(2500),
        "20 concurrent h2 streams took {elapsed:?} (each upstream call 300 ms)"
    );
    assert_eq!(up.requests(), 20);
}
