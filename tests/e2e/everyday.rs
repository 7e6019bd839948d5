//! Everyday jobs in config, through real sockets: `respond` with headers and placeholders
//! (redirects), per-route `response_headers`, `request_headers` and `remove_request_headers`,
//! and a plain listener's `redirect_http_to`; hostile requests against them.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;

use crate::client::{get_host, raw, raw_exchange, send_h1, send_h2};
use crate::harness::{Server, TestDir, eventually, free_port, run_cli};
use crate::upstream::{self, full_body};

const WAIT: Duration = Duration::from_secs(5);

fn redirect_config() -> String {
    r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/old"
respond = { status = 308, body = "moved to {path}", headers = { location = "https://{host}{path}{query}", cache-control = "no-store" } }

[[route]]
path = "/json"
respond = { status = 200, body = '{"ok": true, "scheme": "{scheme}"}', content_type = "application/json" }
"#
    .to_owned()
}

#[tokio::test]
async fn respond_builds_redirects_from_the_request() {
    let server = Server::start(&redirect_config()).await;
    let addr = server.addr();

    let res = get_host(addr, "www.example.test:8080", "/old/page?a=1&b=2").await;
    assert_eq!(res.status, 308, "{}", res.text());
    assert_eq!(
        res.header("location"),
        Some("https://www.example.test/old/page?a=1&b=2")
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.text(), "moved to /old/page");
    assert!(!res.request_id().is_empty());

    // No query: no `?`.
    let res = get_host(addr, "www.example.test", "/old").await;
    assert_eq!(res.header("location"), Some("https://www.example.test/old"));

    // HTTP/2: the host is the :authority.
    let req = Request::get("http://h2.example.test/old/x?q")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(addr, req).await.unwrap();
    assert_eq!(res.status, 308);
    assert_eq!(
        res.header("location"),
        Some("https://h2.example.test/old/x?q")
    );

    // Braces that are not placeholders are text; `{scheme}` is the client's.
    let res = get_host(addr, "a.test", "/json").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(
        res.json(),
        serde_json::json!({"ok": true, "scheme": "http"})
    );
}

#[tokio::test]
async fn hostile_requests_never_inject_into_a_redirect() {
    let server = Server::start(&redirect_config()).await;
    let addr = server.addr();

    // An absolute-form target: its authority wins over `host`, as for routing.
    let res = raw_exchange(
        addr,
        b"GET http://abs.example.test/old/p?x=1 HTTP/1.1\r\nhost: other.test\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 308);
    assert_eq!(
        res.header("location"),
        Some("https://abs.example.test/old/p?x=1")
    );

    // Encoded CR LF in the path stays encoded: no header is injected.
    let res = raw_exchange(
        addr,
        b"GET /old/%0d%0aset-cookie:%20evil=1 HTTP/1.1\r\nhost: a.test\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 308);
    assert!(res.header("set-cookie").is_none());
    assert_eq!(
        res.header("location"),
        Some("https://a.test/old/%0D%0Aset-cookie:%20evil=1")
    );

    // A host with a control byte is refused before it could reach a header.
    let answer = raw(
        addr,
        b"GET /old HTTP/1.1\r\nhost: a\x01b.test\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(answer.status(), Some(400), "{}", answer.text());
    assert!(!answer.text().to_ascii_lowercase().contains("location:"));

    // A bare CR inside the host line is refused too.
    let answer = raw(
        addr,
        b"GET /old HTTP/1.1\r\nhost: a.test\rset-cookie: x=1\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(answer.status(), Some(400), "{}", answer.text());
    assert!(!answer.text().to_ascii_lowercase().contains("set-cookie"));

    // A huge path (within the head limit) is redirected whole.
    let long = format!("/old/{}", "a".repeat(30_000));
    let res = get_host(addr, "a.test", &long).await;
    assert_eq!(res.status, 308);
    assert_eq!(
        res.header("location").map(str::len),
        Some("https://a.test".len() + long.len())
    );
    // One beyond it is a 431, not a crash.
    let longer = format!("/old/{}", "a".repeat(70_000));
    let answer = raw(
        addr,
        format!("GET {longer} HTTP/1.1\r\nhost: a.test\r\n\r\n").as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(answer.status(), Some(431), "{}", answer.text());

    // And the server still answers.
    let res = get_host(addr, "a.test", "/old").await;
    assert_eq!(res.status, 308);
}

#[tokio::test]
async fn route_headers_are_set_on_every_response_and_the_request() {
    // The upstream sends its own x-frame-options, which the route replaces.
    let up = upstream::http(upstream::handler(|req: Request<hyper::body::Incoming>| {
        let seen: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        async move {
            Response::builder()
                .header("x-frame-options", "ALLOWALL")
                .header("x-from-upstream", "1")
                .body(full_body(serde_json::Value::Object(seen).to_string()))
                .unwrap()
        }
    }))
    .await;
    let dead = upstream::refused_addr();
    let security = "response_headers = { strict-transport-security = \"max-age=63072000\", \
                    x-frame-options = \"DENY\" }";
    let server = Server::start(&format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "app"
upstreams = [{{ url = "{up}" }}]

[[service]]
name = "dead"
upstreams = [{{ url = "http://{dead}" }}]

[[route]]
path = "/"
service = "app"
{security}
request_headers = {{ x-env = "prod", x-added = "yes" }}
remove_request_headers = ["x-debug", "cookie"]

[[route]]
path = "/down"
service = "dead"
{security}

[[route]]
path = "/ok"
respond = {{ status = 200, body = "ok" }}
{security}

[[route]]
path = "/plain"
service = "app"
"#,
        up = up.url()
    ))
    .await;
    let addr = server.addr();

    let req = Request::get("/x")
        .header("host", "site.test")
        .header("x-env", "dev")
        .header("x-debug", "1")
        .header("cookie", "session=1")
        .header("x-kept", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h1(addr, req).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert_eq!(res.values("x-frame-options"), [&b"DENY"[..]]);
    assert_eq!(res.header("x-from-upstream"), Some("1"));
    let seen = res.json();
    assert_eq!(seen["x-env"], "prod");
    assert_eq!(seen["x-added"], "yes");
    assert_eq!(seen["x-kept"], "1");
    assert!(
        seen.get("x-debug").is_none() && seen.get("cookie").is_none(),
        "{seen}"
    );
    assert_eq!(seen["host"], "site.test");

    // Errors of the route carry them too, and so do synthetic answers.
    let res = get_host(addr, "site.test", "/down").await;
    assert_eq!(res.status, 502);
    assert_eq!(res.header("x-frame-options"), Some("DENY"));
    let res = get_host(addr, "site.test", "/ok").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("strict-transport-security"),
        Some("max-age=63072000")
    );

    // A route without them changes nothing.
    let req = Request::get("/plain")
        .header("host", "site.test")
        .header("x-debug", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h1(addr, req).await.unwrap();
    assert_eq!(res.header("x-frame-options"), Some("ALLOWALL"));
    assert!(res.header("strict-transport-security").is_none());
    assert_eq!(res.json()["x-debug"], "1");
}

#[tokio::test]
async fn a_plain_listener_redirects_everything_to_https() {
    // Distinct ports: listeners are keyed by their configured address.
    let (a, b) = (free_port(), free_port());
    let dir = TestDir::new("redirect-log");
    let log = dir.join("access.log");
    let server = Server::start_in(
        dir,
        &format!(
            r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:{a}"
redirect_http_to = "https"

[[listener]]
listen = "127.0.0.1:{b}"
redirect_http_to = "https:8443"

[[route]]
path = "/"
respond = {{ status = 200, body = "never over plain HTTP" }}

[[device]]
type = "structured_logging"
output = "{log}"
"#,
            log = log.display()
        ),
    )
    .await;
    let on = |port: u16| {
        *server
            .addrs
            .iter()
            .find(|addr| addr.port() == port)
            .unwrap()
    };
    let (plain, ported) = (on(a), on(b));

    let res = get_host(plain, "site.test:8080", "/a/b?c=d").await;
    assert_eq!(res.status, 308, "{}", res.text());
    assert_eq!(res.header("location"), Some("https://site.test/a/b?c=d"));
    assert!(!res.request_id().is_empty());
    assert!(!res.text().contains("never"));
    // The devices run around the redirect: the access log has it.
    let id = res.request_id().to_owned();
    let logged = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["request_id"] == id.as_str())
    };
    assert!(
        eventually(WAIT, || logged().is_some()).await,
        "no access log line"
    );
    let line = logged().unwrap();
    assert_eq!(line["status"], 308, "{line}");
    assert_eq!(line["origin"], "synthetic", "{line}");
    assert_eq!(line["route"], serde_json::Value::Null, "{line}");

    let res = get_host(ported, "site.test:8080", "/a").await;
    assert_eq!(res.header("location"), Some("https://site.test:8443/a"));

    // POST too (308 keeps the method), and h2c.
    let req = Request::post("http://h2.test/form")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(plain, req).await.unwrap();
    assert_eq!(res.status, 308);
    assert_eq!(res.header("location"), Some("https://h2.test/form"));

    // IPv6 literal hosts keep their brackets.
    let res = get_host(plain, "[::1]:8080", "/v6").await;
    assert_eq!(res.header("location"), Some("https://[::1]/v6"));

    // No host at all: nothing to redirect to.
    let answer = raw(plain, b"GET /x HTTP/1.0\r\n\r\n", WAIT).await;
    assert_eq!(answer.status(), Some(400), "{}", answer.text());
    assert!(!answer.text().to_ascii_lowercase().contains("location:"));
}

#[tokio::test]
async fn config_check_names_a_bad_placeholder_and_a_refused_header() {
    let dir = TestDir::new("everyday-check");
    dir.write(
        "snakeway.toml",
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/old"
respond = { status = 308, headers = { location = "https://{hots}{path}" } }

[[route]]
path = "/x"
respond = { status = 200 }
response_headers = { content-length = "5" }
"#,
    );
    let out = run_cli(&["config", "check", "-c", "snakeway.toml"], &dir.path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}{stderr}");
    let text = format!("{stdout}{stderr}");
    assert!(
        text.contains("route[1].response_headers.content-length"),
        "{text}"
    );
    // Placeholders are checked once the rest is valid.
    dir.write(
        "snakeway.toml",
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/old"
respond = { status = 308, headers = { location = "https://{hots}{path}" } }
"#,
    );
    let out = run_cli(&["config", "check", "-c", "snakeway.toml"], &dir.path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("route[0].respond.headers.location") && text.contains("{hots}"),
        "{text}"
    );
}
