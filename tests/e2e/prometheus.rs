//! A real Prometheus (Debian's `prometheus`) scrapes the admin listener: known traffic through
//! Snakeway shows up with the right count in Prometheus's query API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::admin::config;
use crate::client::{get, get_req, send_h1};
use crate::harness::{Server, TestDir, free_port};
use crate::upstream;

/// A running `prometheus`, killed when dropped (also when the test panics).
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` every second with `token`.
    fn start(dir: &TestDir, target: &str, token: &str) -> Prometheus {
        let port = free_port();
        let config = dir.write(
            "prometheus.yml",
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: snakeway\n    authorization:\n      \
                 credentials: {token}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (apt-get install prometheus)");
        Prometheus { child, port }
    }

    /// Queries `query` until it shows `want` (up to 90 s: Prometheus must start and scrape);
    /// returns the last value seen.
    async fn wait_for(&self, query: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(query).await;
            if last == Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        last
    }

    /// The value of the instant query `query`, if it has exactly one series.
    async fn query(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let addr = ([127, 0, 0, 1], self.port).into();
        let res = send_h1(addr, get_req("127.0.0.1", &path)).await.ok()?;
        if res.status != 200 {
            return None;
        }
        let json = res.json();
        let result = json["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

/// Percent-encodes a query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_the_upstream_request_count() {
    let up = upstream::http(upstream::echo("app")).await;
    let admin_port = free_port();
    let srv = Server::start(&config(admin_port, Some("scrape-token"), &[up.url()], "")).await;
    for _ in 0..7 {
        assert_eq!(get(srv.addr(), "/x").await.status, 200);
    }
    let dir = TestDir::new("prometheus");
    let prometheus = Prometheus::start(&dir, &format!("127.0.0.1:{admin_port}"), "scrape-token");

    // Tries by outcome, recorded per request; summed over the outcomes (all but `success`
    // stay 0 here).
    let query = format!(
        "sum(snakeway_upstream_requests_total{{service=\"app\",upstream=\"{}\"}})",
        up.url()
    );
    assert_eq!(prometheus.wait_for(&query, 7.0).await, Some(7.0), "{query}");
    // The count moves with traffic.
    for _ in 0..3 {
        assert_eq!(get(srv.addr(), "/x").await.status, 200);
    }
    assert_eq!(
        prometheus.wait_for(&query, 10.0).await,
        Some(10.0),
        "{query}"
    );
    // The scrape itself was healthy, with the token.
    assert_eq!(prometheus.query("up{job=\"snakeway\"}").await, Some(1.0));
    assert_eq!(prometheus.query("snakeway_config_epoch").await, Some(1.0));
}
