//! The admin API (`[admin]`) through the real binary: every endpoint, bearer-token auth, the
//! admin paths staying ordinary paths on public listeners, reload through the API, the
//! upstream table (open circuit, health), following reloads, `snakeway status`, and
//! `promtool check metrics` on a scrape.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;

use crate::client::{Resp, get, send_h1};
use crate::harness::{Server, Signal, TestDir, eventually, free_port, run_cli};
use crate::upstream::{self, refused_addr};

const WAIT: Duration = Duration::from_secs(20);

/// One request to the admin API at `addr`, with a bearer `token` if given.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin.local");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    send_h1(addr, req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the admin API: {e}"))
}

/// `[admin]` on `admin_port` (with `token`), one public listener, a service `app` over
/// `upstreams` with `service_extra` in its table, routes `/` → app and `/public` → a fixed
/// response.
pub fn config(
    admin_port: u16,
    token: Option<&str>,
    upstreams: &[String],
    service_extra: &str,
) -> String {
    let token = token
        .map(|t| format!("token = \"{t}\""))
        .unwrap_or_default();
    let ups: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{ url = \"{u}\" }}"))
        .collect();
    format!(
        r#"
[server]
threads = 2

[admin]
listen = "127.0.0.1:{admin_port}"
{token}

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "app"
upstreams = [{}]
{service_extra}

[[route]]
path = "/public"
respond = {{ status = 200, body = "public route" }}

[[route]]
path = "/"
service = "app"
"#,
        ups.join(", ")
    )
}

/// The admin address of a config written by [`config`].
fn admin_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The value of the sample `name{labels}` in a text-format scrape (labels given as written,
/// in the order the server writes them).
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn every_endpoint_answers_from_the_running_server() {
    let up = upstream::http(upstream::echo("a")).await;
    let port = free_port();
    let srv = Server::start(&config(port, None, &[up.url()], "")).await;
    let admin_at = admin_addr(port);
    for _ in 0..3 {
        assert_eq!(get(srv.addr(), "/x").await.status, 200);
    }

    let health = admin(admin_at, "GET", "/admin/health", None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    let health = health.json();
    assert_eq!(health["epoch"], 1);
    assert_eq!(health["draining"], false);
    assert_eq!(health["status"], "ok");
    assert!(health["uptime_seconds"].as_u64().is_some());

    let ups = admin(admin_at, "GET", "/admin/upstreams", None)
        .await
        .json();
    let svc = &ups["services"][0];
    assert_eq!(svc["name"], "app");
    assert_eq!(svc["strategy"], "round_robin");
    let u = &svc["upstreams"][0];
    assert_eq!(u["url"], up.url());
    assert_eq!(u["weight"], 1);
    assert_eq!(u["circuit"], "closed");
    assert_eq!(u["health"], "unchecked");
    assert_eq!(u["requests"], 3);
    assert_eq!(u["failures"], 0);
    // The keep-alive connection goes back to the pool, and the request stops counting as in
    // flight, once the response body has ended (the client may see the last byte a moment
    // before the proxy sees the end).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ups = admin(admin_at, "GET", "/admin/upstreams", None)
            .await
            .json();
        let u = &ups["services"][0]["upstreams"][0];
        if u["idle_connections"].as_u64().is_some_and(|n| n >= 1) && u["in_flight"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no idle connection: {ups}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stats = admin(admin_at, "GET", "/admin/stats", None).await.json();
    assert_eq!(stats["services"][0]["name"], "app");
    assert_eq!(stats["services"][0]["requests"], 3);
    // Routes most specific first, each with what it answered.
    assert_eq!(stats["routes"][0]["route"], "/public");
    assert_eq!(stats["routes"][0]["kind"], "respond");
    assert_eq!(stats["routes"][0]["requests"], 0);
    assert_eq!(stats["routes"][1]["route"], "/");
    assert_eq!(stats["routes"][1]["service"], "app");
    assert_eq!(stats["routes"][1]["requests"], 3);
    assert_eq!(stats["routes"][1]["by_status_class"]["2xx"], 3);
    assert!(
        stats["routes"][1]["mean_duration_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0)
    );

    let cfg = admin(admin_at, "GET", "/admin/config", None).await.json();
    assert_eq!(cfg["admin"]["listen"], format!("127.0.0.1:{port}"));
    assert_eq!(cfg["service"][0]["name"], "app");
    assert_eq!(cfg["service"][0]["circuit_breaker"]["failure_threshold"], 5);

    let metrics = admin(admin_at, "GET", "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    let series = format!(
        "snakeway_upstream_requests_total{{service=\"app\",upstream=\"{}\",outcome=\"success\"}}",
        up.url()
    );
    assert_eq!(sample(&text, &series), Some(3.0), "{text}");
    assert_eq!(sample(&text, "snakeway_config_epoch"), Some(1.0));
    assert!(text.contains("snakeway_build_info{version=\""), "{text}");

    assert_eq!(
        admin(admin_at, "GET", "/admin/nope", None).await.status,
        404
    );
    let wrong = admin(admin_at, "POST", "/admin/health", None).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        admin(admin_at, "GET", "/admin/reload", None).await.status,
        405
    );
}

#[tokio::test]
async fn prometheus_gets_openmetrics_when_it_asks() {
    let port = free_port();
    let _srv = Server::start(&config(
        port,
        None,
        &[format!("http://{}", refused_addr())],
        "",
    ))
    .await;
    let req = Request::get("/metrics")
        .header("host", "admin.local")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h1(admin_addr(port), req).await.unwrap();
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE snakeway_reloads counter\n"), "{text}");
}

#[tokio::test]
async fn with_a_token_every_endpoint_needs_it() {
    let port = free_port();
    let srv = Server::start(&config(
        port,
        Some("s3cret-token"),
        &[format!("http://{}", refused_addr())],
        "",
    ))
    .await;
    let admin_at = admin_addr(port);
    for path in [
        "/admin/health",
        "/admin/upstreams",
        "/admin/stats",
        "/admin/config",
        "/metrics",
        "/admin/nope",
    ] {
        for token in [
            None,
            Some("wrong"),
            Some("s3cret-toke"),
            Some("s3cret-token2"),
        ] {
            let res = admin(admin_at, "GET", path, token).await;
            assert_eq!(res.status, 401, "{path} with {token:?}");
            assert_eq!(
                res.header("www-authenticate"),
                Some("Bearer realm=\"snakeway\"")
            );
        }
    }
    // A refused reload changes nothing: the epoch stays.
    assert_eq!(
        admin(admin_at, "POST", "/admin/reload", None).await.status,
        401
    );
    for path in [
        "/admin/health",
        "/admin/upstreams",
        "/admin/stats",
        "/admin/config",
        "/metrics",
    ] {
        let res = admin(admin_at, "GET", path, Some("s3cret-token")).await;
        assert_eq!(res.status, 200, "{path}: {}", res.text());
    }
    let health = admin(admin_at, "GET", "/admin/health", Some("s3cret-token"))
        .await
        .json();
    assert_eq!(health["epoch"], 1);
    // The token never leaves the server.
    let cfg = admin(admin_at, "GET", "/admin/config", Some("s3cret-token")).await;
    assert_eq!(cfg.json()["admin"]["token"], "<redacted>");
    assert!(!cfg.text().contains("s3cret-token"));
    assert!(!srv.log_text().contains("s3cret-token"));
}

#[tokio::test]
async fn admin_paths_are_ordinary_paths_on_a_public_listener() {
    let up = upstream::http(upstream::echo("app")).await;
    let port = free_port();
    let srv = Server::start(&config(port, None, &[up.url()], "")).await;
    for path in [
        "/admin/health",
        "/admin/upstreams",
        "/metrics",
        "/admin/reload",
    ] {
        let res = get(srv.addr(), path).await;
        assert_eq!(res.status, 200, "{path}");
        // Routed to the upstream like any path.
        assert_eq!(res.json()["tag"], "app", "{path}");
        assert_eq!(res.json()["uri"], path);
    }
    assert_eq!(up.requests(), 4);
}

#[tokio::test]
async fn reload_through_the_api_answers_the_new_epoch_or_the_report() {
    let port = free_port();
    let dead = format!("http://{}", refused_addr());
    let srv = Server::start(&config(port, None, std::slice::from_ref(&dead), "")).await;
    let admin_at = admin_addr(port);

    let ok = admin(admin_at, "POST", "/admin/reload", None).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["epoch"], 2);

    // A broken file: 422 with every problem, and the running configuration stays.
    srv.rewrite_config(&config(port, None, &[dead], "bogus_key = 1"));
    let refused = admin(admin_at, "POST", "/admin/reload", None).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let problems = refused.json()["problems"].as_array().cloned().unwrap();
    assert!(!problems.is_empty(), "{problems:?}");
    for p in &problems {
        assert!(
            p["file"].as_str().unwrap().ends_with("snakeway.toml"),
            "{p}"
        );
        assert!(p["key"].as_str().unwrap().contains("service"), "{p}");
        assert!(!p["message"].as_str().unwrap().is_empty(), "{p}");
    }
    let health = admin(admin_at, "GET", "/admin/health", None).await.json();
    assert_eq!(health["epoch"], 2);
    assert_eq!(get(srv.addr(), "/public").await.text(), "public route");
    let cfg = admin(admin_at, "GET", "/admin/config", None).await.json();
    assert_eq!(cfg["service"][0]["connect_timeout_ms"], 2000);

    let text = admin(admin_at, "GET", "/metrics", None).await.text();
    assert_eq!(
        sample(&text, "snakeway_reloads_total{result=\"success\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "snakeway_reloads_total{result=\"failure\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "snakeway_config_epoch"), Some(2.0), "{text}");
}

#[tokio::test]
async fn the_upstream_table_shows_an_open_circuit_and_health() {
    let live = upstream::http(upstream::echo("live")).await;
    let dead = format!("http://{}", refused_addr());
    let port = free_port();
    // Round robin over a live and a dead upstream; one failure opens a circuit for long.
    let extra = "[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 600000\n\
                 [service.health_check]\nenabled = true\ninterval_ms = 100\n\
                 unhealthy_threshold = 1\nhealthy_threshold = 1";
    let srv = Server::start(&config(port, None, &[live.url(), dead.clone()], extra)).await;
    let admin_at = admin_addr(port);

    let upstream_of = |json: &serde_json::Value, url: &str| {
        json["services"][0]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["url"] == url)
            .cloned()
            .unwrap()
    };
    // The probes find the dead upstream.
    let mut table;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        table = admin(admin_at, "GET", "/admin/upstreams", None)
            .await
            .json();
        if upstream_of(&table, &dead)["health"] == "unhealthy" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unhealthy: {table}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream_of(&table, &live.url())["health"], "healthy");
    assert_eq!(upstream_of(&table, &dead)["circuit"], "closed");

    // The health checks keep traffic away from the dead upstream: turn them off (a reload
    // keeps the circuits and counters) and let requests reach it.
    srv.rewrite_config(&config(
        port,
        None,
        &[live.url(), dead.clone()],
        "[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 600000",
    ));
    assert_eq!(
        admin(admin_at, "POST", "/admin/reload", None).await.status,
        200
    );
    for _ in 0..4 {
        let _ = get(srv.addr(), "/x").await;
    }
    let table = admin(admin_at, "GET", "/admin/upstreams", None)
        .await
        .json();
    let d = upstream_of(&table, &dead);
    assert_eq!(d["circuit"], "open", "{table}");
    assert!(d["failures"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(d["health"], "unchecked");
    assert_eq!(upstream_of(&table, &live.url())["circuit"], "closed");

    let text = admin(admin_at, "GET", "/metrics", None).await.text();
    let circuit = |url: &str, state: &str| {
        sample(
            &text,
            &format!(
                "snakeway_upstream_circuit_state{{service=\"app\",upstream=\"{url}\",state=\"{state}\"}}"
            ),
        )
    };
    assert_eq!(circuit(&dead, "open"), Some(1.0), "{text}");
    assert_eq!(circuit(&dead, "closed"), Some(0.0), "{text}");
    assert_eq!(circuit(&live.url(), "closed"), Some(1.0), "{text}");
}

/// Waits until connections to `addr` are refused (the closing accept loop is dropped by the
/// runtime shortly after the reload answered).
async fn closes(addr: SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn the_admin_listener_follows_reloads() {
    let port = free_port();
    let dead = format!("http://{}", refused_addr());
    let srv = Server::start(&config(port, None, std::slice::from_ref(&dead), "")).await;

    // A new token takes effect at once.
    srv.rewrite_config(&config(
        port,
        Some("new-token"),
        std::slice::from_ref(&dead),
        "",
    ));
    assert_eq!(
        admin(admin_addr(port), "POST", "/admin/reload", None)
            .await
            .status,
        200
    );
    assert_eq!(
        admin(admin_addr(port), "GET", "/admin/health", None)
            .await
            .status,
        401
    );
    let health = admin(admin_addr(port), "GET", "/admin/health", Some("new-token")).await;
    assert_eq!(health.json()["epoch"], 2);

    // A new address: the reload is answered on the old listener, then only the new one serves.
    let moved = free_port();
    srv.rewrite_config(&config(
        moved,
        Some("new-token"),
        std::slice::from_ref(&dead),
        "",
    ));
    let res = admin(admin_addr(port), "POST", "/admin/reload", Some("new-token")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let health = admin(admin_addr(moved), "GET", "/admin/health", Some("new-token")).await;
    assert_eq!(health.json()["epoch"], 3);
    assert!(
        closes(admin_addr(port)).await,
        "the old admin address still accepts"
    );

    // An address that cannot be bound refuses the reload and names admin.listen.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    srv.rewrite_config(&config(taken_port, Some("new-token"), &[dead], ""));
    let res = admin(
        admin_addr(moved),
        "POST",
        "/admin/reload",
        Some("new-token"),
    )
    .await;
    assert_eq!(res.status, 422, "{}", res.text());
    assert_eq!(res.json()["problems"][0]["key"], "admin.listen");
    let health = admin(admin_addr(moved), "GET", "/admin/health", Some("new-token")).await;
    assert_eq!(health.json()["epoch"], 3);

    // Without [admin], the admin listener closes.
    let without = config(moved, None, &[format!("http://{}", refused_addr())], "")
        .replace(&format!("[admin]\nlisten = \"127.0.0.1:{moved}\""), "");
    assert!(!without.contains("[admin]"));
    srv.rewrite_config(&without);
    let res = admin(
        admin_addr(moved),
        "POST",
        "/admin/reload",
        Some("new-token"),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["epoch"], 4);
    assert!(
        closes(admin_addr(moved)).await,
        "the admin listener is still open"
    );
}

#[tokio::test]
async fn status_prints_health_and_the_upstream_table() {
    let live = upstream::http(upstream::echo("live")).await;
    let dead = format!("http://{}", refused_addr());
    let port = free_port();
    let extra = "[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 600000";
    let srv = Server::start(&config(
        port,
        Some("tok"),
        &[live.url(), dead.clone()],
        extra,
    ))
    .await;
    for _ in 0..4 {
        let _ = get(srv.addr(), "/x").await;
    }
    let (dir, cfg) = (srv.dir.path.clone(), srv.config.clone());
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["status", "-c", cfg.to_str().unwrap()], &dir)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("at 127.0.0.1:{port}: ok, epoch 1, up ")),
        "{stdout}"
    );
    let row = |url: &str| {
        stdout
            .lines()
            .find(|l| l.contains(url))
            .unwrap_or_else(|| panic!("no row for {url}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // SERVICE STRATEGY UPSTREAM WEIGHT CIRCUIT HEALTH IN-FLIGHT IDLE REQUESTS FAILURES
    let d = row(&dead);
    assert_eq!(d[0], "app");
    assert_eq!(d[1], "round_robin");
    assert_eq!(d[4], "open", "{stdout}");
    assert_eq!(d[9].parse::<u64>().unwrap(), 1, "{stdout}");
    let l = row(&live.url());
    assert_eq!(l[4], "closed");
    assert_eq!(
        l[8].parse::<u64>().unwrap(),
        live.requests() as u64,
        "{stdout}"
    );

    // A wrong token is reported, not printed as an empty table.
    srv.rewrite_config(&config(port, Some("other"), &[live.url(), dead], extra));
    let (dir, cfg) = (srv.dir.path.clone(), srv.config.clone());
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["status", "-c", cfg.to_str().unwrap()], &dir)
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the token"));
}

#[tokio::test]
async fn promtool_accepts_a_scrape() {
    let up = upstream::http(upstream::echo("a")).await;
    let port = free_port();
    let srv = Server::start(&config(port, Some("t"), &[up.url()], "")).await;
    let _ = get(srv.addr(), "/x").await;
    let scrape = admin(admin_addr(port), "GET", "/metrics", Some("t")).await;
    assert_eq!(scrape.status, 200);
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run promtool (apt-get install prometheus)");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &scrape.body)
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("promtool within 20 s")
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        scrape.text()
    );
}

#[tokio::test]
async fn health_reports_draining_during_shutdown() {
    let up = upstream::http(upstream::slow(Duration::from_secs(3), "late")).await;
    let port = free_port();
    let toml = config(port, None, &[up.url()], "")
        .replace("threads = 2", "threads = 2\nshutdown_grace_ms = 30000");
    let mut srv = Server::start(&toml).await;
    let addr = srv.addr();
    let slow = tokio::spawn(async move { get(addr, "/x").await });
    assert!(eventually(WAIT, || up.requests() == 1).await);
    let before = admin(admin_addr(port), "GET", "/admin/health", None)
        .await
        .json();
    assert_eq!(before["draining"], false);

    srv.signal(Signal::SIGTERM);
    // The admin listener stays open while connections drain.
    let deadline = tokio::time::Instant::now() + WAIT;
    let health = loop {
        let health = admin(admin_addr(port), "GET", "/admin/health", None)
            .await
            .json();
        if health["draining"] == true {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never draining: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["status"], "draining");
    // No reload once shutdown began.
    let reload = admin(admin_addr(port), "POST", "/admin/reload", None).await;
    assert_eq!(reload.status, 503, "{}", reload.text());
    assert_eq!(slow.await.unwrap().text(), "late");
    assert!(srv.wait_exit(WAIT).await.is_some_and(|s| s.success()));
}

#[tokio::test]
async fn an_admin_address_in_use_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TestDir::new("admin-taken");
    let cfg = dir.write(
        "snakeway.toml",
        config(port, None, &[format!("http://{}", refused_addr())], ""),
    );
    let path = dir.path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["serve", "-c", cfg.to_str().unwrap()], &path)
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.listen"), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_oversized_admin_request_head_is_refused() {
    let port = free_port();
    let _srv = Server::start(&config(
        port,
        None,
        &[format!("http://{}", refused_addr())],
        "",
    ))
    .await;
    let big = "a".repeat(32 * 1024);
    let request = format!("GET /admin/health HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n");
    let raw = crate::client::raw(admin_addr(port), request.as_bytes(), WAIT).await;
    assert_eq!(raw.status(), Some(431), "{}", raw.text());
    // The listener still serves.
    assert_eq!(
        admin(admin_addr(port), "GET", "/admin/health", None)
            .await
            .status,
        200
    );
}

/// Every `snakeway_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("snakeway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every string under an `expr` or `definition` key of the dashboard.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(s) if key == "expr" || key == "definition" => {
                        out.push(s.clone())
                    }
                    v => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/snakeway.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    assert_eq!(dashboard["title"], "Snakeway");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");

    // What a running server exports: sample names and family names (histograms add
    // `_bucket`, `_sum` and `_count` to theirs).
    let port = free_port();
    let _srv = Server::start(&config(
        port,
        None,
        &[format!("http://{}", refused_addr())],
        "",
    ))
    .await;
    let scrape = admin(admin_addr(port), "GET", "/metrics", None)
        .await
        .text();
    let exported: std::collections::HashSet<String> = scrape
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_owned)
        .collect();
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|f| exported.contains(f)))
    };
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "a query naming no Snakeway metric: {expr}"
        );
        for name in names {
            assert!(
                known(&name),
                "{name} (in {expr}) is not exported:\n{scrape}"
            );
        }
    }
}

/// The first upstream's row of `/admin/upstreams`.
async fn first_upstream(admin_at: SocketAddr) -> serde_json::Value {
    let ups = admin(admin_at, "GET", "/admin/upstreams", None)
        .await
        .json();
    ups["services"][0]["upstreams"][0].clone()
}

#[tokio::test]
async fn the_upstream_table_counts_active_and_idle_connections() {
    let up = upstream::http(upstream::slow(Duration::from_millis(600), "slow")).await;
    let port = free_port();
    let srv = Server::start(&config(port, None, &[up.url()], "")).await;
    let admin_at = admin_addr(port);
    assert_eq!(first_upstream(admin_at).await["active_connections"], 0);

    // Two requests held by the upstream: two busy connections, none idle.
    let addr = srv.addr();
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/x").await.status }))
        .collect();
    let mut seen = serde_json::Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen["active_connections"] != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never 2 busy: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = first_upstream(admin_at).await;
    }
    assert_eq!(seen["idle_connections"], 0, "{seen}");
    assert_eq!(seen["in_flight"], 2, "{seen}");

    // Answered: both connections go back to the pool, idle.
    for task in held {
        assert_eq!(task.await.unwrap(), 200);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let u = first_upstream(admin_at).await;
        if u["idle_connections"] == 2 && u["active_connections"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not idle: {u}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = admin(admin_at, "GET", "/metrics", None).await.text();
    let series = format!(
        "snakeway_upstream_active_connections{{service=\"app\",upstream=\"{}\"}} 0",
        up.url()
    );
    assert!(metrics.contains(&series), "{metrics}");
}
