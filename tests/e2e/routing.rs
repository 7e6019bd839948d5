//! Routing (host + longest prefix), path normalization, and synthetic responses.

use crate::client::{self, T, get, get_host, raw_exchange};
use crate::harness::Server;
use crate::upstream;

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn host_and_longest_prefix_routing() {
    let server = Server::start(
        r#"
[server]
threads = 1

[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/api"
respond = { status = 200, body = "api" }

[[route]]
path = "/api/v2"
respond = { status = 200, body = "api-v2" }

[[route]]
path = "/"
host = "exact.test"
respond = { status = 200, body = "exact-root" }

[[route]]
path = "/api"
host = "*.wild.test"
respond = { status = 200, body = "wild-api" }
"#,
    )
    .await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("plain.test", "/api", Some("api")),
        ("plain.test", "/api/", Some("api")),
        ("plain.test", "/api/x", Some("api")),
        ("plain.test", "/api/x?q=1", Some("api")),
        ("plain.test", "/api/v2", Some("api-v2")),
        ("plain.test", "/api/v2/y", Some("api-v2")),
        ("plain.test", "/api/v2x", Some("api")), // segment boundary: not /api/v2
        ("plain.test", "/apix", None),           // segment boundary: not /api
        ("plain.test", "/", None),
        // A host route wins over a hostless one, even over a longer prefix.
        ("exact.test", "/api/v2/y", Some("exact-root")),
        ("exact.test", "/anything", Some("exact-root")),
        // Host matching ignores the port and case.
        ("EXACT.test:8080", "/x", Some("exact-root")),
        ("a.wild.test", "/api/q", Some("wild-api")),
        ("a.wild.test:99", "/api/v2", Some("wild-api")),
        ("deep.a.wild.test", "/api", Some("wild-api")),
        ("a.wild.test", "/other", None), // host matches but no path does: no hostless route either
        ("notwild.test", "/api", Some("api")), // suffix is dot-bounded
        ("wild.test", "/api/v2", Some("api-v2")),
    ];
    for &(host, path, expected) in cases {
        let res = get_host(server.addr(), host, path).await;
        match expected {
            Some(body) => assert_eq!(
                (res.status, res.text().as_str()),
                (200, body),
                "Host: {host}, path {path}"
            ),
            None => {
                assert_eq!(
                    res.status,
                    404,
                    "Host: {host}, path {path} should match no route, got {:?}",
                    res.text()
                );
                assert!(
                    is_generated_id(res.request_id()),
                    "404 request id: {:?}",
                    res.request_id()
                );
            }
        }
    }
}

#[tokio::test]
async fn no_route_is_404_with_request_id_on_h1_and_h2() {
    let server = Server::start(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/only\"\nrespond = { status = 200 }\n",
    )
    .await;
    let res = get(server.addr(), "/elsewhere").await;
    assert_eq!(res.status, 404);
    assert!(is_generated_id(res.request_id()));
    assert!(
        res.text().contains(res.request_id()),
        "404 body does not name the request id: {:?}",
        res.text()
    );
    let req = http::Request::get("http://t.test/elsewhere")
        .header("x-request-id", "h2-404")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = client::send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 404);
    assert_eq!(res.request_id(), "h2-404");
}

/// The normalized path is what is routed and what the upstream receives.
#[tokio::test]
async fn paths_are_normalized_before_routing_and_forwarding() {
    let up = upstream::http(upstream::echo("norm")).await;
    let server = Server::start(&api_and_root(&up.url(), "")).await;
    let cases = [
        ("/api/a/../b", "/api/b"),
        ("/api/./a/./b", "/api/a/b"),
        ("//api///x", "/api/x"),
        ("/api/%7euser", "/api/~user"),
        ("/api/%41%2D%5F%2E", "/api/A-_."),
        ("/x/../api/y", "/api/y"),
        ("/api/q?a=1&b=../c", "/api/q?a=1&b=../c"),
        ("/api/a/b/..", "/api/a/"),
        ("/api/sp%20ace", "/api/sp%20ace"),
    ];
    for (sent, forwarded) in cases {
        let res = get_target(server.addr(), sent).await;
        assert_eq!(
            res.status,
            200,
            "{sent}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert_eq!(res.json()["uri"], forwarded, "{sent} forwarded as");
    }
    // `/apix/../api` is `/api` again; `/api/../x` leaves the service route.
    let res = get_target(server.addr(), "/api/../x").await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"root"[..]));
}

/// A service `echo` at `url` under `/api`, a synthetic `root` for every other path, and
/// `extra` (more configuration) after them.
fn api_and_root(url: &str, extra: &str) -> String {
    format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "echo"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/api"
service = "echo"

[[route]]
path = "/"
respond = {{ status = 200, body = "root" }}
{}"#,
        url, extra
    )
}

/// `GET target` (any request-target form, sent as it is) on a connection of its own.
async fn get_target(addr: std::net::SocketAddr, target: &str) -> client::Parsed {
    let req = format!("GET {target} HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n");
    raw_exchange(addr, req.as_bytes()).await
}

#[tokio::test]
async fn paths_climbing_above_root_or_with_encoded_separators_are_400() {
    let up = upstream::http(upstream::echo("never")).await;
    let server = Server::start(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "echo"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "echo"
"#,
        up.url()
    ))
    .await;
    for path in [
        "/../x",
        "/a/../../x",
        "/a/%2e%2e/%2e%2e/x",
        "/a/%2E%2E/%2E%2E/etc/passwd",
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a%5Cb",
        "/a%00",
        "/a%00b/c",
    ] {
        let res = get_target(server.addr(), path).await;
        assert_eq!(
            res.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert!(
            res.header("x-request-id").is_some(),
            "{path}: 400 without x-request-id"
        );
    }
    assert_eq!(up.requests(), 0, "a rejected path reached the upstream");
    // The route does work.
    let res = get(server.addr(), "/ok").await;
    assert_eq!(res.status, 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn synthetic_responses_have_status_body_and_content_type() {
    let server = Server::start(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/teapot"
respond = { status = 418, body = "short and stout", content_type = "text/x-teapot" }

[[route]]
path = "/plain"
respond = { status = 200, body = "ok" }

[[route]]
path = "/empty"
respond = { status = 204 }

[[route]]
path = "/moved"
respond = { status = 503, body = "{\"down\":true}", content_type = "application/json" }
"#,
    )
    .await;
    let res = get(server.addr(), "/teapot").await;
    assert_eq!((res.status, res.text().as_str()), (418, "short and stout"));
    assert_eq!(res.header("content-type"), Some("text/x-teapot"));
    assert_eq!(res.header("content-length"), Some("15"));
    assert!(res.header("x-request-id").is_some());

    let res = get(server.addr(), "/plain/sub").await;
    assert_eq!((res.status, res.text().as_str()), (200, "ok"));
    assert!(
        res.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "default content type: {:?}",
        res.header("content-type")
    );

    let res = get(server.addr(), "/empty").await;
    assert_eq!((res.status, res.body.len()), (204, 0));

    let res = get(server.addr(), "/moved").await;
    assert_eq!(res.status, 503);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.json()["down"], true);

    // HEAD gets the headers without the body.
    let req = b"HEAD /teapot HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n";
    let raw = client::raw(server.addr(), req, T).await;
    let text = raw.text();
    assert!(text.starts_with("HTTP/1.1 418"), "{text:?}");
    assert!(
        !text.contains("short and stout"),
        "HEAD response carried a body: {text:?}"
    );
}

/// With a request-side device in the pipeline (the session path, where the devices see a
/// snapshot of the URI and routing checks whether they changed the path), a client's dot
/// segments, encoded separators and absolute-form targets are treated exactly as without one:
/// normalized and routed, or refused with 400 before any upstream sees them. Every answer,
/// the refusals included, carries the device's `RateLimit` field.
#[tokio::test]
async fn with_a_device_hostile_paths_are_normalized_or_refused_as_without() {
    let up = upstream::http(upstream::echo("norm")).await;
    let device = r#"
[[device]]
type = "rate_limit"
name = "paths"
key = "client_ip"
limit = 1000000
period_ms = 1000
"#;
    let server = Server::start(&api_and_root(&up.url(), device)).await;
    let exchange = |target| get_target(server.addr(), target);
    for (sent, forwarded) in [
        ("/api/a/../b", "/api/b"),
        ("//api///x", "/api/x"),
        ("/x/../api/y", "/api/y"),
        ("/api/%41%2D%5F%2E", "/api/A-_."),
        ("http://t.test/api/a/./b/../c?q=1", "/api/a/c?q=1"),
    ] {
        let res = exchange(sent).await;
        assert_eq!(
            res.status,
            200,
            "{sent}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert_eq!(res.json()["uri"], forwarded, "{sent} forwarded as");
        assert!(
            res.header("ratelimit").is_some(),
            "{sent}: no RateLimit field"
        );
    }
    let res = exchange("/api/../x").await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"root"[..]));
    let served = up.requests();
    for path in [
        "/../x",
        "/a/../../x",
        "/api/%2e%2e/%2e%2e/etc/passwd",
        "/api/a%2fb",
        "/api/a%5cb",
        "/api/a%00",
        "http://t.test/api/../../x",
    ] {
        let res = exchange(path).await;
        assert_eq!(
            res.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert!(
            res.header("x-request-id").is_some(),
            "{path}: no x-request-id"
        );
        assert!(
            res.header("ratelimit").is_some(),
            "{path}: no RateLimit field"
        );
    }
    assert_eq!(up.requests(), served, "a refused path reached the upstream");
}
