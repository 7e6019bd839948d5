//! The `[[device]]` pipeline through the real server (issue 3): the identity device (client IP
//! through trusted proxies, not spoofable through an untrusted peer), the request filter (405,
//! 400, 403, 431, 413 announced and streamed, `deny_status`), structured logging (one line per
//! request, redaction, phases, upstream failures, configured order, reopening the file on
//! reload), `config check` on bad device config, and `enabled = false`.
//!
//! Logging devices write to a file in the test's directory; the writer thread flushes whenever
//! its queue runs empty, so every read of the file waits (bounded) for the expected lines.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::client::{self, Parsed, Resp, T, raw_exchange, read_one_response, send_from, send_h1};
use crate::harness::{Server, Signal, TestDir, eventually, run_cli};
use crate::upstream::{self, Upstream, full_body};

const WAIT: Duration = Duration::from_secs(10);

/// A server config: one listener, `services` as `(name, upstream url)`, `routes` as
/// `(path, service)`, then `devices` (TOML text of `[[device]]` tables) verbatim.
fn config(services: &[(&str, String)], routes: &[(&str, &str)], devices: &str) -> String {
    let mut s = String::from("[server]\nthreads = 2\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n");
    for (name, url) in services {
        s.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nupstreams = [{{ url = \"{url}\" }}]\n"
        ));
    }
    for (path, service) in routes {
        s.push_str(&format!(
            "\n[[route]]\npath = \"{path}\"\nservice = \"{service}\"\n"
        ));
    }
    s.push('\n');
    s.push_str(devices);
    s
}

/// A structured-logging device writing to `path`, with `extra` keys.
fn logging_device(path: &Path, extra: &str) -> String {
    format!(
        "[[device]]\ntype = \"structured_logging\"\noutput = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// Every line of the log file at `path` parsed as JSON (a missing file has none). A line that
/// is not JSON fails the test: the device writes only whole lines.
fn log_lines(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?} in {path:?}"))
        })
        .collect()
}

/// The lines of `path` about request `id`, in file order.
fn lines_for(path: &Path, id: &str) -> Vec<Value> {
    log_lines(path)
        .into_iter()
        .filter(|l| l["request_id"] == id)
        .collect()
}

/// Waits (≤ 10 s) until `path` holds at least `n` lines about request `id`, then waits a little
/// longer for any extra line that should not be there, and returns them all.
async fn wait_lines(path: &Path, id: &str, n: usize) -> Vec<Value> {
    let found = eventually(WAIT, || lines_for(path, id).len() >= n).await;
    assert!(
        found,
        "expected {n} log line(s) for request {id} in {}; the file holds:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
    );
    // Lines of one request are queued before its response is written; a short settle catches
    // a duplicate that would come after them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    lines_for(path, id)
}

fn events(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["event"].as_str().unwrap()).collect()
}

/// An upstream answering `200 "ok"` to everything.
async fn ok_upstream() -> Upstream {
    upstream::http(upstream::handler(|_req| async {
        Response::builder().body(full_body("ok")).unwrap()
    }))
    .await
}

/// A request to `path` with `host: test.local` and the given headers.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Empty<bytes::Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).unwrap()
}

async fn send(addr: SocketAddr, req: Request<Empty<bytes::Bytes>>) -> Resp {
    let what = format!("{} {}", req.method(), req.uri());
    send_h1(addr, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

// === identity ===

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// One request of the identity test.
struct Case {
    peer: &'static str,
    xff: Option<&'static str>,
    ua: &'static str,
    identity: Value,
}

#[tokio::test]
async fn identity_resolves_the_client_through_trusted_proxies_only() {
    let up = ok_upstream().await;
    let dir = TestDir::new("identity");
    let log = dir.join("access.log");
    let devices = format!(
        "[[device]]\ntype = \"identity\"\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n\
         user_agent = true\n\n{}",
        logging_device(
            &log,
            "include_identity = true\nidentity_fields = [\"ip\", \"device\", \"bot\"]"
        )
    );
    let server = Server::start_in(
        dir,
        &config(&[("app", up.url())], &[("/", "app")], &devices),
    )
    .await;
    let addr = server.addr();

    // (peer, x-forwarded-for, user-agent) → (ip, device, bot)
    // peer, x-forwarded-for, user-agent → the identity logged.
    let cases = [
        // Trusted peer: walk right to left past the trusted 10.0.0.5.
        Case {
            peer: "127.0.0.1",
            xff: Some("203.0.113.7, 10.0.0.5"),
            ua: CHROME,
            identity: json!({ "ip": "203.0.113.7", "device": "desktop", "bot": false }),
        },
        // A spoofed leftmost entry is never reached: the first untrusted hop is the client.
        Case {
            peer: "127.0.0.1",
            xff: Some("198.51.100.1, 203.0.113.7, 10.0.0.5"),
            ua: "curl/8.5.0",
            identity: json!({ "ip": "203.0.113.7", "device": "bot", "bot": true }),
        },
        // Trusted peer without x-forwarded-for: the peer is the client.
        Case {
            peer: "127.0.0.1",
            xff: None,
            ua: CHROME,
            identity: json!({ "ip": "127.0.0.1", "device": "desktop", "bot": false }),
        },
        // Untrusted peer: x-forwarded-for is ignored, whatever it claims.
        Case {
            peer: "127.0.0.2",
            xff: Some("203.0.113.7"),
            ua: CHROME,
            identity: json!({ "ip": "127.0.0.2", "device": "desktop", "bot": false }),
        },
        // Untrusted peer claiming a chain of trusted proxies.
        Case {
            peer: "127.0.0.3",
            xff: Some("198.51.100.1, 10.0.0.5, 127.0.0.1"),
            ua: "Googlebot/2.1 (+http://www.google.com/bot.html)",
            identity: json!({ "ip": "127.0.0.3", "device": "bot", "bot": true }),
        },
    ];
    for Case {
        peer,
        xff,
        ua,
        identity,
    } in cases
    {
        let mut headers = vec![("user-agent", ua)];
        if let Some(xff) = xff {
            headers.push(("x-forwarded-for", xff));
        }
        let res = send_from(peer, addr, request("GET", "/who", &headers)).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let lines = wait_lines(&log, res.request_id(), 1).await;
        assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
        let line = &lines[0];
        assert_eq!(
            line["identity"], identity,
            "peer {peer}, x-forwarded-for {xff:?}, user-agent {ua:?}: {line}"
        );
        // `peer` is the socket address, whatever the identity says.
        let logged_peer: SocketAddr = line["peer"].as_str().unwrap().parse().unwrap();
        assert_eq!(logged_peer.ip().to_string(), peer, "{line}");
    }
}

// === request filter ===

/// What an upstream saw of one request body.
#[derive(Clone, Debug)]
struct BodySeen {
    bytes: u64,
    error: Option<String>,
}

/// An upstream that reads each request body to its end (or error), records what it got, and
/// answers 200 `"got N"`.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<BodySeen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let up = upstream::http(upstream::handler(move |req: Request<Incoming>| {
        let s = s.clone();
        async move {
            let mut body = req.into_body();
            let mut bytes = 0u64;
            let mut error = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            s.lock().unwrap().push(BodySeen { bytes, error });
            Response::builder()
                .body(full_body(format!("got {bytes}")))
                .unwrap()
        }
    }))
    .await;
    (up, seen)
}

const FILTER: &str = r#"
[[device]]
type = "request_filter"
allow_methods = ["GET", "HEAD", "POST"]
deny_methods = ["DELETE"]
required_headers = ["x-api-key"]
deny_headers = ["x-debug"]
max_header_bytes = 2048
max_body_bytes = 1000
"#;

fn allow_set(res: &Resp) -> BTreeSet<String> {
    res.header("allow")
        .unwrap_or_else(|| panic!("no Allow on the {} response", res.status))
        .split(',')
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

#[tokio::test]
async fn request_filter_refuses_by_method_and_headers_before_the_upstream() {
    let (up, seen) = recording_upstream().await;
    let server = Server::start(&config(&[("app", up.url())], &[("/", "app")], FILTER)).await;
    let addr = server.addr();
    let key = ("x-api-key", "k");

    // A request breaking no rule passes.
    let res = send(addr, request("GET", "/ok", &[key])).await;
    assert_eq!((res.status, res.text().as_str()), (200, "got 0"));
    assert_eq!(up.requests(), 1);

    // Denied method, and a method outside the allow list: 405 with Allow naming what passes.
    let expected: BTreeSet<String> = ["GET", "HEAD", "POST"].map(String::from).into();
    for method in ["DELETE", "PUT"] {
        let res = send(addr, request(method, "/x", &[key])).await;
        assert_eq!(res.status, 405, "{method}: {}", res.text());
        assert_eq!(allow_set(&res), expected, "{method}");
        assert!(res.text().contains(method), "{method}: {}", res.text());
        assert!(!res.request_id().is_empty());
    }

    // Missing required header: 400.
    let res = send(addr, request("GET", "/x", &[])).await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains("x-api-key"), "{}", res.text());
    assert!(res.header("allow").is_none());

    // Denied header: 403 (even with the required header present).
    let res = send(addr, request("GET", "/x", &[key, ("x-debug", "1")])).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert!(res.text().contains("x-debug"), "{}", res.text());

    // Header bytes over max_header_bytes (2048): 431.
    let big = "a".repeat(3000);
    let res = send(addr, request("GET", "/x", &[key, ("x-big", &big)])).await;
    assert_eq!(res.status, 431, "{}", res.text());
    // Just under the limit passes.
    let fits = "a".repeat(1500);
    let res = send(addr, request("GET", "/x", &[key, ("x-big", &fits)])).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.requests(), 2);

    // Content-Length over max_body_bytes: 413 at once, from the head alone (no body sent).
    let mut stream = client::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: test.local\r\nx-api-key: k\r\n\
              content-length: 5000\r\n\r\n",
        )
        .await
        .unwrap();
    let res = read_one_response(&mut stream).await;
    assert_eq!(res.status, 413, "{}", String::from_utf8_lossy(&res.body));
    assert!(res.header("x-request-id").is_some());
    // A body within the limit passes whole.
    let res = raw_exchange(
        addr,
        format!(
            "POST /upload HTTP/1.1\r\nhost: test.local\r\nx-api-key: k\r\ncontent-length: 1000\r\n\
             connection: close\r\n\r\n{}",
            "b".repeat(1000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(String::from_utf8_lossy(&res.body), "got 1000");

    // None of the refused requests reached the upstream.
    assert_eq!(up.requests(), 3, "{:?}", seen.lock().unwrap());
}

/// Streams a chunked body of `chunks` × `chunk` bytes, one chunk every 30 ms, while reading the
/// response. Returns the response and how many body bytes were written before it arrived.
async fn chunked_upload(addr: SocketAddr, up: &Upstream, chunks: usize, chunk: usize) -> Parsed {
    let stream = client::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(
        b"POST /upload HTTP/1.1\r\nhost: test.local\r\nx-api-key: k\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let piece = format!("{chunk:x}\r\n{}\r\n", "c".repeat(chunk));
    // The first chunk is within the limit: the request goes upstream and starts streaming.
    wr.write_all(piece.as_bytes()).await.unwrap();
    assert!(
        eventually(WAIT, || up.requests() == 1).await,
        "the upstream never got the streamed request"
    );
    let writer = tokio::spawn(async move {
        for _ in 1..chunks {
            tokio::time::sleep(Duration::from_millis(30)).await;
            // The proxy may close once it has answered: stop writing then.
            if wr.write_all(piece.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
        // Keep the write half open until the reader is done.
        tokio::time::sleep(WAIT).await;
    });
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let parsed = tokio::time::timeout(T, async {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(p) = client::parse_response(&bytes) {
                return Some(p);
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return client::parse_response(&bytes),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("a response to the streamed upload within 10 s");
    writer.abort();
    parsed.unwrap_or_else(|| {
        panic!(
            "no complete response to the streamed upload: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

#[tokio::test]
async fn request_filter_stops_a_streamed_body_over_the_limit() {
    let (up, seen) = recording_upstream().await;
    let server = Server::start(&config(&[("app", up.url())], &[("/", "app")], FILTER)).await;

    // 10 × 400 bytes = 4000 bytes against max_body_bytes = 1000, no content-length.
    let res = chunked_upload(server.addr(), &up, 10, 400).await;
    assert_eq!(res.status, 413, "{}", String::from_utf8_lossy(&res.body));
    assert!(
        String::from_utf8_lossy(&res.body).contains("too large"),
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    assert!(
        eventually(WAIT, || !seen.lock().unwrap().is_empty()).await,
        "the upstream's read of the body never ended"
    );
    let got = seen.lock().unwrap()[0].clone();
    assert!(
        got.bytes <= 1000,
        "the upstream received {} body bytes, more than max_body_bytes = 1000 ({got:?})",
        got.bytes
    );
    assert!(
        got.error.is_some(),
        "the upstream saw a complete body of {} bytes, not a cut one ({got:?})",
        got.bytes
    );
    assert_eq!(up.requests(), 1);

    // A streamed body within the limit reaches the upstream whole.
    let res = chunked_upload(server.addr(), &up, 1, 400).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(String::from_utf8_lossy(&res.body), "got 400");
}

#[tokio::test]
async fn deny_status_replaces_every_refusal_status() {
    let (up, _seen) = recording_upstream().await;
    let devices = format!("{FILTER}deny_status = 404\n");
    let server = Server::start(&config(&[("app", up.url())], &[("/", "app")], &devices)).await;
    let addr = server.addr();
    let key = ("x-api-key", "k");

    let res = send(addr, request("DELETE", "/x", &[key])).await;
    assert_eq!(res.status, 404, "{}", res.text());
    // Allow goes only with a 405.
    assert!(res.header("allow").is_none(), "{:?}", res.headers);
    assert!(res.text().contains("DELETE"), "{}", res.text());
    let res = send(addr, request("GET", "/x", &[])).await;
    assert_eq!(res.status, 404, "{}", res.text());
    let res = send(addr, request("GET", "/x", &[key, ("x-debug", "1")])).await;
    assert_eq!(res.status, 404, "{}", res.text());
    let big = "a".repeat(3000);
    let res = send(addr, request("GET", "/x", &[key, ("x-big", &big)])).await;
    assert_eq!(res.status, 404, "{}", res.text());
    let res = raw_exchange(
        addr,
        b"POST /x HTTP/1.1\r\nhost: test.local\r\nx-api-key: k\r\ncontent-length: 5000\r\n\
          connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 404, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(up.requests(), 0);

    let res = send(addr, request("GET", "/x", &[key])).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

// === structured logging ===

#[tokio::test]
async fn logging_writes_one_line_per_request_with_redacted_headers() {
    let up = ok_upstream().await;
    let dir = TestDir::new("log-basic");
    let log = dir.join("access.log");
    let devices = logging_device(
        &log,
        "include_headers = true\n\
         allowed_headers = [\"authorization\", \"x-trace\", \"user-agent\"]\n\
         redacted_headers = [\"authorization\"]",
    );
    let server = Server::start_in(
        dir,
        &config(&[("app-svc", up.url())], &[("/app", "app-svc")], &devices),
    )
    .await;
    let addr = server.addr();

    let res = send(
        addr,
        request(
            "GET",
            "/app/items?token=querysecret",
            &[
                ("authorization", "Bearer topsecret"),
                ("x-trace", "abc"),
                ("x-other", "not logged"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let id = res.request_id().to_owned();
    let lines = wait_lines(&log, &id, 1).await;
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["event"], "response", "{line}");
    assert_eq!(line["request_id"], id.as_str(), "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/app/items", "no query string: {line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["route"], "/app", "{line}");
    assert_eq!(line["upstream"], "app-svc", "{line}");
    assert_eq!(line["origin"], "upstream", "{line}");
    assert_eq!(line["bytes_out"], 2, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(
        line["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    assert_eq!(
        line["headers"],
        json!({ "authorization": "[redacted]", "x-trace": "abc" }),
        "{line}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("topsecret"),
        "a redacted value reached the log: {text}"
    );
    assert!(
        !text.contains("querysecret"),
        "the query string reached the log: {text}"
    );

    // A second request: its own line, its own id; a POST's bytes_in is its content-length.
    let res = send_h1(
        addr,
        Request::post("/app/upload")
            .header("host", "test.local")
            .header("content-type", "text/plain")
            .body(client::full("12345"))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200);
    let id2 = res.request_id().to_owned();
    assert_ne!(id, id2);
    let lines = wait_lines(&log, &id2, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["bytes_in"], 5, "{}", lines[0]);
    assert_eq!(
        log_lines(&log).len(),
        2,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

#[tokio::test]
async fn logging_phases_and_upstream_failures() {
    let up = ok_upstream().await;
    let dead = upstream::refused_addr();
    let dir = TestDir::new("log-phases");
    let log = dir.join("events.log");
    let devices = logging_device(&log, "phases = [\"request\", \"response\", \"error\"]");
    let server = Server::start_in(
        dir,
        &config(
            &[("live", up.url()), ("dead", format!("http://{dead}"))],
            &[("/", "live"), ("/dead", "dead")],
            &devices,
        ),
    )
    .await;
    let addr = server.addr();

    // A request that succeeds: request, then response.
    let res = send(addr, request("GET", "/fine", &[])).await;
    assert_eq!(res.status, 200);
    let lines = wait_lines(&log, res.request_id(), 2).await;
    assert_eq!(events(&lines), ["request", "response"], "{lines:?}");
    assert!(lines[0].get("status").is_none(), "{}", lines[0]);
    assert_eq!(
        lines[0]["route"],
        Value::Null,
        "not routed yet: {}",
        lines[0]
    );
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[1]["upstream"], "live");

    // An upstream that refuses connections: request, error (502), response (502).
    let res = send(addr, request("GET", "/dead/x", &[])).await;
    assert_eq!(res.status, 502, "{}", res.text());
    let lines = wait_lines(&log, res.request_id(), 3).await;
    assert_eq!(
        events(&lines),
        ["request", "error", "response"],
        "{lines:?}"
    );
    let error = &lines[1];
    assert_eq!(error["status"], 502, "{error}");
    assert_eq!(error["origin"], "error", "{error}");
    assert_eq!(error["error"]["kind"], "upstream_unavailable", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert_eq!(error["route"], "/dead", "{error}");
    assert_eq!(error["upstream"], "dead", "{error}");
    let response = &lines[2];
    assert_eq!(response["status"], 502, "{response}");
    assert_eq!(response["origin"], "error", "{response}");

    // The upstream recovers nothing for the next good request: no stray error lines.
    let res = send(addr, request("GET", "/again", &[])).await;
    assert_eq!(res.status, 200);
    wait_lines(&log, res.request_id(), 2).await;
    assert_eq!(
        log_lines(&log)
            .iter()
            .filter(|l| l["event"] == "error")
            .count(),
        1
    );
}

#[tokio::test]
async fn logging_after_a_filter_logs_its_denial_in_configured_order() {
    let up = ok_upstream().await;
    let dir = TestDir::new("log-order");
    let before = dir.join("before.log");
    let after = dir.join("after.log");
    let devices = format!(
        "{}\n[[device]]\ntype = \"request_filter\"\ndeny_methods = [\"DELETE\"]\n\n{}",
        logging_device(&before, ""),
        logging_device(&after, "")
    );
    let server = Server::start_in(
        dir,
        &config(&[("app", up.url())], &[("/", "app")], &devices),
    )
    .await;

    let res = raw_exchange(
        server.addr(),
        b"DELETE /thing HTTP/1.1\r\nhost: test.local\r\ncontent-length: 5\r\n\
          connection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(res.status, 405, "{}", String::from_utf8_lossy(&res.body));
    let id = res.header("x-request-id").unwrap().to_owned();
    assert_eq!(up.requests(), 0);

    for (log, name) in [(&before, "before"), (&after, "after")] {
        let lines = wait_lines(log, &id, 1).await;
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        let line = &lines[0];
        assert_eq!(line["event"], "response", "{name}: {line}");
        assert_eq!(line["status"], 405, "{name}: {line}");
        assert_eq!(line["origin"], "device", "{name}: {line}");
        assert_eq!(line["method"], "DELETE", "{name}: {line}");
        assert_eq!(line["route"], Value::Null, "{name}: never routed: {line}");
        assert_eq!(line["upstream"], Value::Null, "{name}: {line}");
    }
    // The body was announced but never read: the early answer came first.
    assert_eq!(lines_for(&before, &id)[0]["bytes_in"], 0);
    assert_eq!(lines_for(&after, &id)[0]["bytes_in"], 0);
}

/// The `response` line carries the body bytes that went over the wire, not what the heads
/// declared: a chunked upload and a chunked download are counted, a `HEAD` answer sends
/// nothing, and a client that goes away mid-body leaves `complete: false` with what was sent.
#[tokio::test]
async fn logging_counts_the_body_bytes_that_went_over_the_wire() {
    const STREAMED: u64 = 300_000;
    const ENDLESS: u64 = 1 << 30;
    let up = upstream::http(upstream::handler(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_owned();
        let _ = req.into_body().collect().await;
        // Neither body declares a length: both go out chunked.
        let total = if path == "/app/endless" {
            ENDLESS
        } else {
            STREAMED
        };
        Response::builder()
            .body(upstream::zeros_body(total))
            .unwrap()
    }))
    .await;
    let dir = TestDir::new("log-bytes");
    let log = dir.join("access.log");
    let devices = logging_device(&log, "");
    let server = Server::start_in(
        dir,
        &config(&[("app", up.url())], &[("/app", "app")], &devices),
    )
    .await;
    let addr = server.addr();

    let res = raw_exchange(
        addr,
        b"POST /app/upload HTTP/1.1\r\nhost: test.local\r\nx-request-id: bytes-upload\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len() as u64, STREAMED);
    let line = &wait_lines(&log, "bytes-upload", 1).await[0];
    assert_eq!(line["bytes_in"], 8, "{line}");
    assert_eq!(line["bytes_out"], STREAMED, "{line}");
    assert_eq!(line["complete"], true, "{line}");

    let res = raw_exchange(
        addr,
        b"HEAD /app/upload HTTP/1.1\r\nhost: test.local\r\nx-request-id: bytes-head\r\n\
          connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    let line = &wait_lines(&log, "bytes-head", 1).await[0];
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["bytes_out"], 0, "{line}");
    assert_eq!(line["complete"], true, "{line}");

    // A client that reads a little of an endless body and hangs up.
    let mut stream = client::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /app/endless HTTP/1.1\r\nhost: test.local\r\nx-request-id: bytes-gone\r\n\r\n",
        )
        .await
        .unwrap();
    let mut read = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    while read < 256 * 1024 {
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the endless body flows")
            .unwrap();
        assert!(n > 0, "the proxy closed an endless body");
        read += n;
    }
    drop(stream);
    let line = &wait_lines(&log, "bytes-gone", 1).await[0];
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["complete"], false, "{line}");
    let out = line["bytes_out"].as_u64().unwrap();
    assert!(
        out as usize >= read - 1024 && out < ENDLESS,
        "bytes_out {out} for {read} bytes read: {line}"
    );
}

#[tokio::test]
async fn reload_reopens_the_log_file_after_rotation() {
    let up = ok_upstream().await;
    let dir = TestDir::new("log-rotate");
    let log = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let server = Server::start_in(
        dir,
        &config(
            &[("app", up.url())],
            &[("/", "app")],
            &logging_device(&log, ""),
        ),
    )
    .await;
    let addr = server.addr();

    let first = send(addr, request("GET", "/one", &[])).await;
    let first = first.request_id().to_owned();
    wait_lines(&log, &first, 1).await;

    // logrotate: move the file away; until the reload, lines still go to the moved file.
    std::fs::rename(&log, &rotated).unwrap();
    let second = send(addr, request("GET", "/two", &[])).await;
    let second = second.request_id().to_owned();
    wait_lines(&rotated, &second, 1).await;
    assert!(!log.exists(), "the log file came back before the reload");

    server.signal(Signal::SIGHUP);
    assert!(
        server.wait_for_log("configuration reloaded", WAIT).await,
        "no reload after SIGHUP"
    );
    let third = send(addr, request("GET", "/three", &[])).await;
    let third = third.request_id().to_owned();
    let lines = wait_lines(&log, &third, 1).await;
    assert_eq!(lines[0]["path"], "/three");
    assert_eq!(
        log_lines(&log).len(),
        1,
        "the new file holds only lines written after the reload: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let old: Vec<Value> = log_lines(&rotated);
    assert_eq!(
        old.iter()
            .map(|l| l["request_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [first.as_str(), second.as_str()],
        "the rotated file"
    );
}

// === enabled = false ===

#[tokio::test]
async fn disabled_devices_are_left_out() {
    let up = ok_upstream().await;
    let dir = TestDir::new("disabled");
    let on = dir.join("on.log");
    let off = dir.join("off.log");
    let devices = format!(
        "[[device]]\ntype = \"request_filter\"\nenabled = false\ndeny_methods = [\"GET\"]\n\
         required_headers = [\"x-api-key\"]\n\n{}\n{}",
        logging_device(&off, "enabled = false"),
        logging_device(&on, "")
    );
    let server = Server::start_in(
        dir,
        &config(&[("app", up.url())], &[("/", "app")], &devices),
    )
    .await;

    let res = send(server.addr(), request("GET", "/x", &[])).await;
    assert_eq!(res.status, 200, "a disabled filter refused: {}", res.text());
    assert_eq!(up.requests(), 1);
    // The enabled logging device runs; the disabled one never even opened its file.
    let lines = wait_lines(&on, res.request_id(), 1).await;
    assert_eq!(lines[0]["status"], 200);
    assert!(
        !off.exists(),
        "a disabled logging device created {}",
        off.display()
    );
}

// === config check ===

fn check(dir: &TestDir, name: &str, devices: &str) -> (bool, String, PathBuf) {
    let toml = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\n\
         respond = {{ status = 200, body = \"ok\" }}\n\n{devices}"
    );
    let file = dir.write(name, toml);
    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        file,
    )
}

/// Asserts `config check` fails with a `FILE: KEY: …` line whose key is `key` and whose message
/// contains `needle`.
fn assert_problem(dir: &TestDir, name: &str, devices: &str, key: &str, needle: &str) {
    let (ok, err, file) = check(dir, name, devices);
    assert!(!ok, "config check accepted {name}:\n{devices}");
    let prefix = format!("{}: {key}: ", file.display());
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "no `{prefix}…{needle}…` problem for {name}; config check said:\n{err}"
    );
}

#[test]
fn config_check_reports_bad_device_config_with_its_key() {
    let dir = TestDir::new("check-devices");
    dir.write(
        "garbage.mmdb",
        b"this is not a MaxMind database\n".repeat(100),
    );
    std::fs::create_dir_all(dir.join("a-directory.mmdb")).unwrap();

    // A valid pipeline passes.
    let (ok, err, _) = check(
        &dir,
        "valid.toml",
        "[[device]]\ntype = \"identity\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\n\
         [[device]]\ntype = \"request_filter\"\ndeny_methods = [\"TRACE\"]\n\
         [[device]]\ntype = \"structured_logging\"\noutput = \"stderr\"\n\
         phases = [\"request\", \"response\", \"error\"]\n",
    );
    assert!(ok, "a valid device config was rejected:\n{err}");

    assert_problem(
        &dir,
        "cidr.toml",
        "[[device]]\ntype = \"identity\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
        "device[0].trusted_proxies[1]",
        "10.0.0.0/33",
    );
    assert_problem(
        &dir,
        "cidr-word.toml",
        "[[device]]\ntype = \"request_filter\"\n\
         [[device]]\ntype = \"identity\"\ntrusted_proxies = [\"localhost\"]\n",
        "device[1].trusted_proxies[0]",
        "localhost",
    );
    assert_problem(
        &dir,
        "geoip-missing.toml",
        "[[device]]\ntype = \"identity\"\ngeoip_db = \"missing.mmdb\"\n",
        "device[0].geoip_db",
        "missing.mmdb",
    );
    assert_problem(
        &dir,
        "geoip-dir.toml",
        "[[device]]\ntype = \"identity\"\ngeoip_db = \"a-directory.mmdb\"\n",
        "device[0].geoip_db",
        "a-directory.mmdb",
    );
    assert_problem(
        &dir,
        "phase.toml",
        "[[device]]\ntype = \"structured_logging\"\noutput = \"stderr\"\n\
         phases = [\"response\", \"on_finish\"]\n",
        "device[0].phases[1]",
        "on_finish",
    );
    assert_problem(
        &dir,
        "type.toml",
        "[[device]]\ntype = \"identity\"\n[[device]]\ntype = \"firewall\"\n",
        "device[1].type",
        "firewall",
    );
}

/// A file that exists but is not a MaxMind database passes validation and fails when the
/// device is built; `config check` must still report it under the device's `geoip_db` key.
#[test]
fn config_check_reports_a_garbage_geoip_db_under_its_key() {
    let dir = TestDir::new("check-geoip");
    dir.write(
        "garbage.mmdb",
        b"this is not a MaxMind database\n".repeat(100),
    );
    assert_problem(
        &dir,
        "geoip-garbage.toml",
        "[[device]]\ntype = \"request_filter\"\n\
         [[device]]\ntype = \"identity\"\ngeoip_db = \"garbage.mmdb\"\n",
        "device[1].geoip_db",
        "garbage.mmdb",
    );
}
