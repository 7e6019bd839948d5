//! Active health checks of a `ProxyService` against real upstreams on loopback sockets.

#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use http::{Response, StatusCode, Version};
use snakeway_core::Body;
use snakeway_proxy::{
    CircuitBreakerOptions, HealthCheckOptions, ProxyService, ServiceOptions, Target, UpstreamSpec,
};
use support::*;

/// Generous for a loaded machine; the checks below wait for events, not for this.
const WAIT: Duration = Duration::from_secs(10);

fn checks(interval_ms: u64, unhealthy: u32, healthy: u32) -> ServiceOptions {
    ServiceOptions {
        health_check: Some(HealthCheckOptions {
            path: "/healthz".parse().unwrap(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(500),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        }),
        ..options()
    }
}

/// Waits until `f` holds, polling every 10 ms; false after [`WAIT`].
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

fn healthy(svc: &ProxyService) -> Vec<bool> {
    svc.upstreams().map(|u| u.healthy).collect()
}

/// Answers `/healthz` with the status in `status`, anything else 200 `body`.
fn with_probe_status(body: &'static str, status: Arc<AtomicU16>) -> support::Handler {
    handler(move |req| {
        let status = status.load(Ordering::SeqCst);
        async move {
            if req.uri().path() == "/healthz" {
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap()
            } else {
                Response::builder()
                    .header("x-upstream", body)
                    .body(Body::from(body))
                    .unwrap()
            }
        }
    })
}

fn probes(up: &Upstream) -> Vec<Seen> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri.path() == "/healthz")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_dead_upstream_is_skipped_once_its_probes_fail() {
    let live = http(named("live")).await;
    let dead = closed_port().await;
    let svc = service(
        vec![
            live.spec(1),
            UpstreamSpec {
                target: Target::parse(&format!("http://{dead}")).unwrap(),
                weight: 1,
            },
        ],
        checks(20, 2, 1),
    );
    assert_eq!(healthy(&svc), [true, true], "new upstreams start healthy");
    let _checker = svc.start_health_checks().expect("health checks configured");
    assert!(
        eventually(|| healthy(&svc) == [true, false]).await,
        "{:?}",
        healthy(&svc)
    );
    for _ in 0..20 {
        let (status, headers, _) = fetch(&svc, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "live");
    }

    let seen = probes(&live);
    assert!(seen.len() >= 2, "the live upstream was probed repeatedly");
    let probe = &seen[0];
    assert_eq!(probe.method, http::Method::GET);
    assert_eq!(probe.version, Version::HTTP_11);
    assert_eq!(probe.headers["host"], live.addr.unwrap().to_string());
    assert_eq!(probe.headers["user-agent"], "snakeway-health-check");
    assert_eq!(probe.headers["connection"], "close");
    // One connection per probe, closed after it.
    assert!(live.connections() >= seen.len());
}

#[tokio::test]
async fn a_2xx_or_3xx_answer_passes_anything_else_fails() {
    let status = Arc::new(AtomicU16::new(500));
    let up = http(with_probe_status("a", status.clone())).await;
    let svc = service(vec![up.spec(1)], checks(20, 2, 2));
    let _checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| healthy(&svc) == [false]).await, "500 fails");

    status.store(302, Ordering::SeqCst);
    assert!(eventually(|| healthy(&svc) == [true]).await, "302 passes");
    status.store(404, Ordering::SeqCst);
    assert!(eventually(|| healthy(&svc) == [false]).await, "404 fails");
    status.store(204, Ordering::SeqCst);
    assert!(eventually(|| healthy(&svc) == [true]).await, "204 passes");
}

#[tokio::test]
async fn a_probe_slower_than_the_timeout_fails() {
    let up = http(handler(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(Body::empty())
    }))
    .await;
    let mut opts = checks(20, 1, 1);
    if let Some(hc) = &mut opts.health_check {
        hc.timeout = Duration::from_millis(100);
    }
    let svc = service(vec![up.spec(1)], opts);
    let _checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| healthy(&svc) == [false]).await);
}

#[tokio::test]
async fn when_every_upstream_is_unhealthy_traffic_goes_to_all_of_them() {
    let failing = Arc::new(AtomicU16::new(500));
    let a = http(with_probe_status("a", failing.clone())).await;
    let b = http(with_probe_status("b", failing.clone())).await;
    let svc = service(vec![a.spec(1), b.spec(1)], checks(20, 1, 1));
    let _checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| healthy(&svc) == [false, false]).await);
    let mut tags = Vec::new();
    for _ in 0..10 {
        let (status, headers, _) = fetch(&svc, "/").await.expect("panic mode forwards");
        assert_eq!(status, StatusCode::OK);
        tags.push(headers["x-upstream"].to_str().unwrap().to_owned());
    }
    assert!(
        tags.iter().any(|t| t == "a") && tags.iter().any(|t| t == "b"),
        "{tags:?}"
    );
}

#[tokio::test]
async fn panic_mode_still_respects_open_circuits() {
    let failing = Arc::new(AtomicU16::new(500));
    let up = http(with_probe_status("a", failing)).await;
    let opts = ServiceOptions {
        circuit_breaker: CircuitBreakerOptions {
            enabled: true,
            failure_threshold: 1,
            open: Duration::from_secs(60),
            ..CircuitBreakerOptions::default()
        },
        ..checks(20, 1, 1)
    };
    let svc = service(vec![up.spec(1)], opts);
    let _checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| healthy(&svc) == [false]).await);
    // The probe path answers 500 to a request too: the circuit opens.
    let (status, _, _) = fetch(&svc, "/healthz").await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(error.kind(), snakeway_core::ErrorKind::NoHealthyUpstream);
}

#[tokio::test]
async fn dropping_the_checker_stops_the_probes() {
    let up = http(named("a")).await;
    let svc = service(vec![up.spec(1)], checks(20, 1, 1));
    let checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| probes(&up).len() >= 2).await);
    drop(checker);
    // A probe already under way may still land; after that, nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settled = probes(&up).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        probes(&up).len(),
        settled,
        "probes after the checker was dropped"
    );
}

#[tokio::test]
async fn verdicts_survive_a_rebuild_while_checks_stay_on() {
    let failing = Arc::new(AtomicU16::new(500));
    let a = http(with_probe_status("a", failing)).await;
    let b = http(named("b")).await;
    let old = service(vec![a.spec(1), b.spec(1)], checks(20, 1, 1));
    let checker = old.start_health_checks().unwrap();
    assert!(eventually(|| healthy(&old) == [false, true]).await);
    drop(checker);

    // Same targets, other options: `a` stays unhealthy without a new probe.
    let new = ProxyService::new(
        "api",
        vec![b.spec(1), a.spec(2)],
        checks(60_000, 1, 1),
        Some(&old),
    )
    .unwrap();
    assert_eq!(healthy(&new), [true, false]);
    for _ in 0..5 {
        let (_, headers, _) = fetch(&new, "/").await.unwrap();
        assert_eq!(headers["x-upstream"], "b");
    }

    // Without health checks every upstream counts as healthy (a stale verdict is not kept).
    let off = ProxyService::new("api", vec![a.spec(1), b.spec(1)], options(), Some(&new)).unwrap();
    assert_eq!(healthy(&off), [true, true]);
    assert!(off.start_health_checks().is_none());
    let on = ProxyService::new(
        "api",
        vec![a.spec(1), b.spec(1)],
        checks(20, 1, 1),
        Some(&off),
    )
    .unwrap();
    assert_eq!(healthy(&on), [true, true], "re-enabled checks start afresh");
}

#[tokio::test]
async fn h2c_unix_and_https_upstreams_are_probed_their_own_way() {
    let h2c = http(named("h2c")).await;
    let svc = service(
        vec![h2c.spec(1)],
        ServiceOptions {
            http2: true,
            ..checks(20, 1, 1)
        },
    );
    let checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| !probes(&h2c).is_empty()).await);
    drop(checker);
    let probe = &probes(&h2c)[0];
    assert_eq!(probe.version, Version::HTTP_2);
    assert_eq!(
        probe.uri.authority().map(|a| a.as_str().to_owned()),
        Some(h2c.addr.unwrap().to_string())
    );

    let path = socket_path("health");
    let unix_up = unix(named("unix"), &path);
    let svc = service(vec![unix_up.spec(1)], checks(20, 1, 1));
    let checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| !probes(&unix_up).is_empty()).await);
    drop(checker);
    assert_eq!(probes(&unix_up)[0].headers["host"], "localhost");
    let _ = std::fs::remove_file(&path);

    let cert = TestCert::new("health");
    let tls = https(named("tls"), &cert, &[b"h2", b"http/1.1"]).await;
    let svc = service(
        vec![tls.spec(1)],
        ServiceOptions {
            http2: true,
            ca_file: Some(cert.ca_file.clone()),
            ..checks(20, 1, 1)
        },
    );
    let checker = svc.start_health_checks().unwrap();
    assert!(eventually(|| !probes(&tls).is_empty()).await);
    drop(checker);
    assert_eq!(probes(&tls)[0].version, Version::HTTP_2, "ALPN chose h2");
    assert_eq!(healthy(&svc), [true]);
}
