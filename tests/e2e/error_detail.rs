//! What failures tell clients and what they tell the logs: error pages and gRPC statuses carry
//! the status, a short reason and the request id (`[server] error_detail = "full"` adds the
//! whole message); upstreams, services and causes go to the server log and the access log.
//! Circuit and health transitions are logged at info; at debug, the route, upstream and attempt
//! of every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;

use crate::client::{get, send_h2};
use crate::harness::Server;
use crate::upstream::{self, full_body};

const WAIT: Duration = Duration::from_secs(10);

fn config(server_keys: &str, upstream: &str, service_keys: &str, extra: &str) -> String {
    format!(
        r#"
[server]
threads = 2
{server_keys}

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "backend-svc"
upstreams = [{{ url = "{upstream}" }}]
{service_keys}

[[route]]
path = "/"
service = "backend-svc"
{extra}
"#
    )
}

/// The access log (a logging device on stdout) logs errors and responses.
const ACCESS_LOG: &str = "[[device]]\ntype = \"structured_logging\"\n\
                          phases = [\"error\", \"response\"]\n";

#[tokio::test]
async fn by_default_clients_get_status_reason_and_request_id_and_the_logs_get_the_rest() {
    let dead = upstream::refused_addr();
    let server = Server::start(&config("", &format!("http://{dead}"), "", ACCESS_LOG)).await;
    let res = get(server.addr(), "/x").await;
    assert_eq!(res.status, 502);
    let id = res.request_id().to_owned();
    assert_eq!(
        res.text(),
        format!("502 Bad Gateway: the upstream failed (request id {id})\n")
    );
    let dead_addr = dead.to_string();
    assert!(!res.text().contains(&dead_addr) && !res.text().contains("backend-svc"));

    // The server log and the access log's error line name the service, the upstream and the
    // cause, with the request id.
    assert!(
        server.wait_for_log(&id, WAIT).await,
        "{}",
        server.log_text()
    );
    assert!(
        server.wait_for_log_count(&id, 3, WAIT).await,
        "the request id in the server log and two access-log lines:\n{}",
        server.log_text()
    );
    let lines = server.log_lines();
    let server_line = lines
        .iter()
        .find(|l| l.contains(&id) && l.contains("request failed"))
        .unwrap_or_else(|| panic!("no server log line for {id}:\n{}", server.log_text()));
    assert!(
        server_line.contains("backend-svc") && server_line.contains(&dead_addr),
        "{server_line}"
    );
    let access_error = lines
        .iter()
        .filter(|l| l.starts_with('{') && l.contains(&id))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|json| json["error"].is_object())
        .unwrap_or_else(|| panic!("no access-log error line for {id}:\n{}", server.log_text()));
    let message = access_error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("backend-svc") && message.contains(&dead_addr),
        "{access_error}"
    );
    assert_eq!(access_error["error"]["kind"], "upstream_unavailable");

    // Errors before routing are short too, and still carry the request id.
    let res = get(server.addr(), "/a/../../etc").await;
    assert_eq!(res.status, 400, "{}", res.text());
    let id = res.request_id();
    assert_eq!(
        res.text(),
        format!("400 Bad Request: the request is malformed (request id {id})\n")
    );
}

#[tokio::test]
async fn error_detail_full_shows_the_whole_message() {
    let dead = upstream::refused_addr();
    let server = Server::start(&config(
        "error_detail = \"full\"",
        &format!("http://{dead}"),
        "",
        "",
    ))
    .await;
    let res = get(server.addr(), "/x").await;
    assert_eq!(res.status, 502);
    let id = res.request_id();
    let text = res.text();
    assert!(
        text.starts_with("502 Bad Gateway: service \"backend-svc\": upstream ")
            && text.contains(&dead.to_string())
            && text.ends_with(&format!("(request id {id})\n")),
        "{text}"
    );
}

#[tokio::test]
async fn grpc_messages_follow_the_same_rule() {
    let dead = upstream::refused_addr();
    let grpc = |uri: &str| {
        Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    for (detail, told) in [
        ("", "the upstream failed".to_owned()),
        ("error_detail = \"full\"", dead.to_string()),
    ] {
        let server = Server::start(&config(detail, &format!("http://{dead}"), "", "")).await;
        let res = send_h2(server.addr(), grpc("http://t.test/pkg.Svc/Call"))
            .await
            .unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.header("grpc-status"), Some("14"));
        let message = res.header("grpc-message").unwrap_or_default();
        assert!(message.contains(&told), "{detail:?}: {message:?}");
        if detail.is_empty() {
            assert!(!message.contains("backend-svc"), "{message:?}");
        }
        assert!(res.header("x-request-id").is_some());
    }
}

/// One failure opens the circuit, `open_ms` later a trial is admitted (half-open), and its
/// success closes it: three info lines naming the service and the upstream URL.
#[tokio::test]
async fn circuit_transitions_are_logged_at_info() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let up = upstream::http(upstream::handler(move |_req| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = if n == 0 { 500 } else { 200 };
            Response::builder()
                .status(status)
                .body(full_body("x"))
                .unwrap()
        }
    }))
    .await;
    let breaker = "[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 1000\n\
                   success_threshold = 1";
    let server = Server::start(&config("", &up.url(), breaker, "")).await;
    let url = up.url();
    let logged = |what: &str| {
        server
            .log_lines()
            .iter()
            .any(|l| l.contains(what) && l.contains("backend-svc") && l.contains(&url))
    };

    assert_eq!(get(server.addr(), "/").await.status, 500);
    assert!(
        server.wait_for_log("circuit opened", WAIT).await && logged("circuit opened"),
        "{}",
        server.log_text()
    );
    assert!(!logged("circuit half-open"), "{}", server.log_text());
    // While open, requests are refused without reaching the upstream.
    assert_eq!(get(server.addr(), "/").await.status, 503);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Requests drive the half-open trial; poll until one is admitted and succeeds.
    let mut status = 503;
    for _ in 0..200 {
        status = get(server.addr(), "/").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    assert!(
        server.wait_for_log("circuit closed", WAIT).await && logged("circuit closed"),
        "{}",
        server.log_text()
    );
    assert!(logged("circuit half-open"), "{}", server.log_text());
}

/// Probes failing then passing: the upstream turns unhealthy, then healthy, each logged with
/// the service and the upstream URL.
#[tokio::test]
async fn health_verdicts_are_logged_with_the_upstream_url() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let up = upstream::http(upstream::handler(move |_req| {
        let fail = flag.load(Ordering::SeqCst);
        async move {
            let status = if fail {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Response::builder()
                .status(status)
                .body(full_body("probe"))
                .unwrap()
        }
    }))
    .await;
    let checks = "[service.health_check]\nenabled = true\ninterval_ms = 50\ntimeout_ms = 1000\n\
                  unhealthy_threshold = 1\nhealthy_threshold = 1";
    let server = Server::start(&config("", &up.url(), checks, "")).await;
    let url = up.url();
    let logged = |what: &str| {
        server
            .log_lines()
            .iter()
            .any(|l| l.contains(what) && l.contains("backend-svc") && l.contains(&url))
    };
    assert!(
        server.wait_for_log("upstream unhealthy", WAIT).await && logged("upstream unhealthy"),
        "{}",
        server.log_text()
    );
    failing.store(false, Ordering::SeqCst);
    assert!(
        server.wait_for_log("upstream healthy again", WAIT).await
            && logged("upstream healthy again"),
        "{}",
        server.log_text()
    );
}

/// At debug, each request's route and each try's upstream and attempt are logged with the
/// request id; at info (the harness default) neither line appears.
#[tokio::test]
async fn route_upstream_and_attempt_are_logged_at_debug_only() {
    let up = upstream::http(upstream::echo("dbg")).await;
    let toml = config("", &up.url(), "", "");
    let server = Server::start_logging(&toml, "info,snakeway=debug,snakeway_proxy=debug").await;
    let res = get(server.addr(), "/hello").await;
    assert_eq!(res.status, 200);
    let id = res.request_id().to_owned();
    assert!(
        server.wait_for_log_count(&id, 2, WAIT).await,
        "{}",
        server.log_text()
    );
    let lines = server.log_lines();
    let routed = lines
        .iter()
        .find(|l| l.contains(&id) && l.contains("request routed"))
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(routed.contains("route=/"), "{routed}");
    let tried = lines
        .iter()
        .find(|l| l.contains(&id) && l.contains("upstream answered"))
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(
        tried.contains(&up.url()) && tried.contains("attempt=1") && tried.contains("status=200"),
        "{tried}"
    );

    let quiet = Server::start(&toml).await;
    let res = get(quiet.addr(), "/hello").await;
    assert_eq!(res.status, 200);
    let id = res.request_id();
    assert!(
        !quiet.log_lines().iter().any(|l| l.contains(id)),
        "{}",
        quiet.log_text()
    );
}
