//! `ProxyService::forward` against real upstream servers on loopback sockets.

#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use snakeway_core::{Body, ErrorKind};
use snakeway_proxy::{
    CircuitBreakerOptions, CircuitState, Downstream, ProxyService, ServiceOptions, Strategy,
    Target, UpstreamSpec,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// === request and response rewriting ===

#[tokio::test]
async fn strips_hop_by_hop_and_sets_forwarded_headers() {
    let up = http(handler(|_req| async {
        Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-resp-kept", "yes")
            .body(Body::from("hello"))
            .unwrap()
    }))
    .await;
    let svc = service(vec![up.spec(1)], options());

    let req = Request::post("/p/a?x=1&y=%20")
        .header("host", "example.com")
        .header("connection", "keep-alive, X-Hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("trailer", "x-sum")
        .header("upgrade", "websocket")
        .header("x-forwarded-for", "203.0.113.1")
        .header("x-forwarded-proto", "spoofed")
        .header("x-request-id", "req-1")
        .header("x-end", "kept")
        .body(Body::from("payload"))
        .unwrap();
    let downstream = Downstream {
        peer: "198.51.100.7:40000".parse().unwrap(),
        tls: true,
        trusted: false,
    };
    let response = svc.forward(req, &downstream).await.unwrap();

    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/p/a?x=1&y=%20");
    assert_eq!(seen.version, Version::HTTP_11);
    let h = &seen.headers;
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(h.get(hop).is_none(), "{hop} must not reach the upstream");
    }
    // `trailer` names end-to-end fields: it is forwarded.
    assert_eq!(h["trailer"], "x-sum");
    assert_eq!(h["host"], "example.com");
    // An untrusted peer's own forwarding headers are replaced.
    assert_eq!(h["x-forwarded-for"], "198.51.100.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "example.com");
    assert_eq!(h["x-request-id"], "req-1");
    assert_eq!(h["x-end"], "kept");
    assert_eq!(h["content-length"], "7");

    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    for hop in [
        "connection",
        "x-resp-hop",
        "keep-alive",
        "proxy-authenticate",
    ] {
        assert!(h.get(hop).is_none(), "{hop} must not reach the client");
    }
    assert_eq!(h["x-resp-kept"], "yes");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
}

#[tokio::test]
async fn h2_style_request_gets_host_from_its_authority() {
    let up = http(named("a")).await;
    let svc = service(vec![up.spec(1)], options());
    let req = Request::get("https://api.example.com:8443/v1/items?q=1")
        .version(Version::HTTP_2)
        .header("te", "trailers")
        .body(Body::empty())
        .unwrap();
    let response = svc.forward(req, &downstream()).await.unwrap();
    assert_eq!(response.status(), 200);

    let seen = up.last();
    assert_eq!(seen.uri, "/v1/items?q=1");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], "api.example.com:8443");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com:8443");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.7");
    assert_eq!(seen.headers["te"], "trailers", "te: trailers passes (gRPC)");
}

/// An HTTP/1 response to an HTTP/1 request keeps room in its header map for the fields added
/// on its way to the client (hyper recycles HTTP/1 maps, so each grows once); an HTTP/2 map,
/// new for every message, is left as it came on either side.
#[tokio::test]
async fn only_http1_to_http1_responses_keep_room_for_added_fields() {
    let up = http(named("a")).await;
    let room = |headers: &http::HeaderMap| headers.capacity() - headers.len();

    let h1 = service(vec![up.spec(1)], options());
    let (status, headers, _) = fetch(&h1, "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        room(&headers) >= 12,
        "h1 to h1: room for 12, got {}",
        room(&headers)
    );

    let mut h2_down = get("/");
    *h2_down.version_mut() = Version::HTTP_2;
    let response = h1.forward(h2_down, &downstream()).await.unwrap();
    assert!(
        room(response.headers()) < 12,
        "an HTTP/2 client's response is not grown"
    );

    let mut opts = options();
    opts.http2 = true;
    let (status, headers, _) = fetch(&service(vec![up.spec(1)], opts), "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        room(&headers) < 12,
        "an HTTP/2 upstream's response is not grown"
    );
}

/// A hostile upstream floods response fields on a kept-alive connection whose header maps
/// are recycled (with room for added fields): a flood within hyper's limit (100 fields) passes
/// whole, one past it is refused, and the small answers after either carry exactly their own
/// fields, with a map no larger than the limit plus its room needs (256 slots).
#[tokio::test]
async fn a_field_flood_leaves_recycled_maps_bounded_and_clean() {
    let flood = |n: usize| {
        let mut response = Response::builder();
        for i in 0..n {
            response = response.header(format!("x-flood-{i}"), "v");
        }
        response.body(Body::from("flood")).unwrap()
    };
    let up = http(handler(move |req: Request<hyper::body::Incoming>| {
        let n = match req.uri().path() {
            "/flood" => 90,
            "/over" => 150,
            _ => 0,
        };
        async move {
            if n == 0 {
                Response::new(Body::from("small"))
            } else {
                flood(n)
            }
        }
    }))
    .await;
    let svc = service(vec![up.spec(1)], options());
    let small = |headers: &http::HeaderMap| {
        assert!(
            !headers.keys().any(|k| k.as_str().starts_with("x-flood")),
            "no field of the flood stays behind: {headers:?}"
        );
        assert!(headers.capacity() - headers.len() >= 12, "room kept");
        assert!(headers.capacity() <= 192, "bounded: {}", headers.capacity());
    };

    let (_, headers, body) = fetch(&svc, "/").await.unwrap();
    assert_eq!(body, "small");
    small(&headers);
    let (status, headers, _) = fetch(&svc, "/flood").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-flood"))
            .count(),
        90,
        "the flood within the limit arrives whole"
    );
    for _ in 0..3 {
        let (_, headers, body) = fetch(&svc, "/").await.unwrap();
        assert_eq!(body, "small");
        small(&headers);
    }
    assert!(
        fetch(&svc, "/over").await.is_err(),
        "past hyper's 100 fields: refused"
    );
    let (_, headers, body) = fetch(&svc, "/").await.unwrap();
    assert_eq!(body, "small");
    small(&headers);
}

// === pooling ===

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let up = http(named("a")).await;
    let svc = service(vec![up.spec(1)], options());
    for _ in 0..10 {
        let (status, _, body) = fetch(&svc, "/").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"a"[..]));
    }
    assert_eq!(up.requests(), 10);
    assert_eq!(up.connections(), 1);
}

/// Under per-worker pools each worker thread (a single-threaded runtime, as the server runs
/// them) opens and reuses its own upstream connection; no worker takes another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_keeps_its_own_pool() {
    let up = http(named("a")).await;
    let svc = service(
        vec![up.spec(1)],
        ServiceOptions {
            worker_pools: 2,
            ..options()
        },
    );
    let worker = |index: usize, svc: ProxyService| {
        std::thread::spawn(move || {
            snakeway_proxy::worker::enter(Some(index));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                for _ in 0..5 {
                    assert_eq!(fetch(&svc, "/").await.unwrap().2, "a");
                }
            });
            // The idle connection stays in the worker's pool; the runtime that drives it
            // stays until the counts are read.
            runtime
        })
    };
    let (a, b) = (worker(0, svc.clone()), worker(1, svc.clone()));
    let runtimes = tokio::task::spawn_blocking(move || (a.join().unwrap(), b.join().unwrap()))
        .await
        .unwrap();
    assert_eq!(up.requests(), 10);
    assert_eq!(
        up.connections(),
        2,
        "one connection per worker, each reused"
    );
    let status = svc.upstreams().next().unwrap();
    assert_eq!(
        (status.idle_connections, status.active_connections),
        (Some(2), Some(0)),
        "the admin view sums the workers' pools"
    );

    // A thread that is no worker uses the shared pool: a third connection.
    assert_eq!(fetch(&svc, "/").await.unwrap().2, "a");
    assert_eq!(up.connections(), 3);
    // Runtimes are dropped where blocking is allowed.
    tokio::task::spawn_blocking(move || drop(runtimes))
        .await
        .unwrap();
}

#[tokio::test]
async fn previous_service_keeps_pool_and_circuit() {
    let up = http(named("a")).await;
    let dead = closed_port().await;
    let dead = UpstreamSpec {
        target: Target::parse(&format!("http://{dead}")).unwrap(),
        weight: 1,
    };
    let mut opts = options();
    opts.strategy = Strategy::Failover;
    opts.circuit_breaker = CircuitBreakerOptions {
        enabled: true,
        failure_threshold: 1,
        open: Duration::from_secs(60),
        ..Default::default()
    };

    let old = ProxyService::new("api", vec![dead.clone(), up.spec(1)], opts.clone(), None).unwrap();
    let err = fetch(&old, "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamUnavailable);
    assert_eq!(
        fetch(&old, "/").await.unwrap().2,
        "a",
        "failover past the open circuit"
    );

    // Reload with the same upstreams: same idle connection, same open circuit.
    let new = ProxyService::new(
        "api",
        vec![dead.clone(), up.spec(1)],
        opts.clone(),
        Some(&old),
    )
    .unwrap();
    drop(old);
    assert_eq!(new.upstreams().next().unwrap().state, CircuitState::Open);
    for _ in 0..3 {
        assert_eq!(fetch(&new, "/").await.unwrap().2, "a");
    }
    assert_eq!(up.connections(), 1, "the pool survived the reload");

    // Changed connection options: a new pool (and a new connection), the circuit stays.
    opts.connect_timeout = Duration::from_secs(3);
    let changed = ProxyService::new("api", vec![dead, up.spec(1)], opts, Some(&new)).unwrap();
    assert_eq!(fetch(&changed, "/").await.unwrap().2, "a");
    assert_eq!(up.connections(), 2);
    let statuses: Vec<_> = changed.upstreams().collect();
    assert_eq!(statuses[0].state, CircuitState::Open);
    assert_eq!((statuses[0].requests, statuses[0].failures), (1, 1));
    assert_eq!((statuses[1].requests, statuses[1].failures), (5, 0));
}

// === balancing ===

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let a = http(named("a")).await;
    let b = http(named("b")).await;
    let svc = service(vec![a.spec(2), b.spec(1)], options());
    let mut order = String::new();
    for _ in 0..30 {
        let (_, _, body) = fetch(&svc, "/").await.unwrap();
        order.push_str(std::str::from_utf8(&body).unwrap());
    }
    assert_eq!((a.requests(), b.requests()), (20, 10));
    assert!(
        order.starts_with("abaaba"),
        "smooth interleaving, got {order}"
    );
}

#[tokio::test]
async fn failover_uses_the_first_usable_upstream() {
    let a = http(named("a")).await;
    let b = http(named("b")).await;
    let mut opts = options();
    opts.strategy = Strategy::Failover;
    let svc = service(vec![a.spec(1), b.spec(5)], opts.clone());
    for _ in 0..5 {
        assert_eq!(fetch(&svc, "/").await.unwrap().2, "a");
    }
    assert_eq!((a.requests(), b.requests()), (5, 0));

    // The first is down: one request fails (no retries), then its circuit is open and the
    // second takes over.
    let dead = closed_port().await;
    opts.circuit_breaker = CircuitBreakerOptions {
        enabled: true,
        failure_threshold: 1,
        ..Default::default()
    };
    let dead = UpstreamSpec {
        target: Target::parse(&format!("http://{dead}")).unwrap(),
        weight: 1,
    };
    let svc = service(vec![dead, b.spec(1)], opts);
    assert_eq!(
        fetch(&svc, "/").await.unwrap_err().kind(),
        ErrorKind::UpstreamUnavailable
    );
    assert_eq!(b.requests(), 0, "no retry on the next upstream");
    for _ in 0..3 {
        assert_eq!(fetch(&svc, "/").await.unwrap().2, "b");
    }
}

// === failures ===

#[tokio::test]
async fn refused_connection_is_upstream_unavailable() {
    let dead = closed_port().await;
    let svc = service(
        vec![UpstreamSpec {
            target: Target::parse(&format!("http://{dead}")).unwrap(),
            weight: 1,
        }],
        options(),
    );
    let err = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamUnavailable);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        err.message(),
        format!("service \"api\": upstream {dead} refused the connection")
    );
}

#[tokio::test]
async fn slow_upstream_is_a_timeout() {
    let up = http(handler(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(Body::from("late"))
    }))
    .await;
    let mut opts = options();
    opts.response_timeout = Duration::from_millis(300);
    let svc = service(vec![up.spec(1)], opts);
    let start = Instant::now();
    let err = fetch(&svc, "/").await.unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err.kind(), ErrorKind::UpstreamTimeout);
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        err.message().contains("did not respond within 300 ms"),
        "{}",
        err.message()
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn stalled_tls_handshake_hits_the_connect_timeout() {
    // Accepts TCP connections and never speaks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cert = TestCert::new("stalled");
    let mut opts = options();
    opts.ca_file = Some(cert.ca_file.clone());
    opts.connect_timeout = Duration::from_millis(200);
    let target = Target::parse(&format!("https://localhost:{}", addr.port())).unwrap();
    let svc = service(vec![UpstreamSpec { target, weight: 1 }], opts);
    let start = Instant::now();
    let err = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamTimeout);
    assert!(
        err.message().contains("timed out connecting"),
        "{}",
        err.message()
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    holder.abort();
}

#[tokio::test]
async fn upstream_dying_mid_body_is_a_body_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
            .await
            .unwrap();
        // Closing here leaves 90 bytes missing.
    });
    let target = Target::parse(&format!("http://{addr}")).unwrap();
    let svc = service(vec![UpstreamSpec { target, weight: 1 }], options());
    let response = svc.forward(get("/"), &downstream()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.into_body().collect().await.is_err());
    server.await.unwrap();
}

#[tokio::test]
async fn upstream_closing_before_responding_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 4096];
        let _ = s.read(&mut buf).await.unwrap();
    });
    let target = Target::parse(&format!("http://{addr}")).unwrap();
    let svc = service(vec![UpstreamSpec { target, weight: 1 }], options());
    let err = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamUnavailable);
    assert!(
        err.message()
            .contains("closed the connection before responding"),
        "{}",
        err.message()
    );
}

// === circuit breaker ===

fn breaker_options() -> ServiceOptions {
    let mut opts = options();
    opts.circuit_breaker = CircuitBreakerOptions {
        enabled: true,
        failure_threshold: 2,
        open: Duration::from_millis(200),
        half_open_max_requests: 1,
        success_threshold: 2,
        count_5xx: true,
    };
    opts
}

#[tokio::test]
async fn circuit_opens_on_failures_and_recovers_through_half_open() {
    let failing = Arc::new(AtomicBool::new(true));
    let up = http(handler({
        let failing = failing.clone();
        move |_req| {
            let status = if failing.load(Ordering::SeqCst) {
                500
            } else {
                200
            };
            async move {
                Response::builder()
                    .status(status)
                    .body(Body::from("x"))
                    .unwrap()
            }
        }
    }))
    .await;
    let svc = service(vec![up.spec(1)], breaker_options());
    let state = |svc: &ProxyService| svc.upstreams().next().unwrap().state;

    // Two 5xx responses reach the client as they are, and open the circuit.
    for _ in 0..2 {
        assert_eq!(fetch(&svc, "/").await.unwrap().0, 500);
    }
    assert_eq!(state(&svc), CircuitState::Open);
    let err = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoHealthyUpstream);
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.requests(), 2, "an open circuit sends nothing");

    // A failed trial opens it again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(state(&svc), CircuitState::HalfOpen);
    assert_eq!(fetch(&svc, "/").await.unwrap().0, 500);
    assert_eq!(state(&svc), CircuitState::Open);
    assert_eq!(
        fetch(&svc, "/").await.unwrap_err().kind(),
        ErrorKind::NoHealthyUpstream
    );

    // Two good trials close it.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(fetch(&svc, "/").await.unwrap().0, 200);
    assert_eq!(state(&svc), CircuitState::HalfOpen);
    assert_eq!(fetch(&svc, "/").await.unwrap().0, 200);
    assert_eq!(state(&svc), CircuitState::Closed);
    for _ in 0..5 {
        assert_eq!(fetch(&svc, "/").await.unwrap().0, 200);
    }

    let status = svc.upstreams().next().unwrap();
    assert_eq!(status.target, up.url);
    assert_eq!((status.requests, status.failures), (10, 3));
}

#[tokio::test]
async fn half_open_limits_concurrent_trials() {
    let slow = Arc::new(AtomicBool::new(false));
    let up = http(handler({
        let slow = slow.clone();
        move |_req| {
            let slow = slow.load(Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Response::builder()
                    .status(if slow { 200 } else { 503 })
                    .body(Body::empty())
                    .unwrap()
            }
        }
    }))
    .await;
    let svc = service(vec![up.spec(1)], breaker_options());
    for _ in 0..2 {
        assert_eq!(fetch(&svc, "/").await.unwrap().0, 503);
    }
    slow.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;

    let trial = tokio::spawn({
        let svc = svc.clone();
        async move { fetch(&svc, "/").await.unwrap().0 }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NoHealthyUpstream,
        "one trial at a time"
    );
    assert_eq!(trial.await.unwrap(), 200);
}

#[tokio::test]
async fn round_robin_skips_open_circuits() {
    let a = http(named("a")).await;
    let dead = closed_port().await;
    let dead = UpstreamSpec {
        target: Target::parse(&format!("http://{dead}")).unwrap(),
        weight: 1,
    };
    let mut opts = breaker_options();
    opts.circuit_breaker.open = Duration::from_secs(60);
    let svc = service(vec![a.spec(1), dead], opts);
    let mut failures = 0;
    for _ in 0..20 {
        if fetch(&svc, "/").await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "the dead upstream fails failure_threshold times, then is skipped"
    );
    assert_eq!(a.requests(), 18);
}

// === protocols and transports ===

#[tokio::test]
async fn prior_knowledge_h2c() {
    let up = http(named("a")).await;
    let mut opts = options();
    opts.http2 = true;
    let svc = service(vec![up.spec(1)], opts);
    for _ in 0..5 {
        assert_eq!(fetch(&svc, "/h2?x=1").await.unwrap().2, "a");
    }
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.path_and_query().unwrap(), "/h2?x=1");
    assert_eq!(seen.headers["host"], "example.com");
    assert_eq!(up.connections(), 1, "one multiplexed connection");
}

#[tokio::test]
async fn https_with_ca_file() {
    let cert = TestCert::new("https");
    let up = https(named("tls"), &cert, &[b"h2", b"http/1.1"]).await;
    let mut opts = options();
    opts.ca_file = Some(cert.ca_file.clone());
    let svc = service(vec![up.spec(1)], opts);
    for _ in 0..3 {
        assert_eq!(fetch(&svc, "/secure").await.unwrap().2, "tls");
    }
    assert_eq!(
        up.last().version,
        Version::HTTP_11,
        "http2 = false offers http/1.1 only"
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn https_negotiates_h2_by_alpn() {
    let cert = TestCert::new("alpn");
    let up = https(named("tls"), &cert, &[b"h2", b"http/1.1"]).await;
    let mut opts = options();
    opts.ca_file = Some(cert.ca_file.clone());
    opts.http2 = true;
    let svc = service(vec![up.spec(1)], opts.clone());
    assert_eq!(fetch(&svc, "/").await.unwrap().2, "tls");
    assert_eq!(up.last().version, Version::HTTP_2);

    // An upstream without h2 gets HTTP/1.1 from the same options.
    let h1_only = https(named("h1"), &cert, &[b"http/1.1"]).await;
    let svc = service(vec![h1_only.spec(1)], opts);
    assert_eq!(fetch(&svc, "/").await.unwrap().2, "h1");
    assert_eq!(h1_only.last().version, Version::HTTP_11);
}

#[tokio::test]
async fn https_with_an_untrusted_certificate_fails() {
    let cert = TestCert::new("served");
    let other = TestCert::new("other");
    let up = https(named("tls"), &cert, &[b"http/1.1"]).await;
    let mut opts = options();
    opts.ca_file = Some(other.ca_file.clone());
    let svc = service(vec![up.spec(1)], opts);
    let err = fetch(&svc, "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamUnavailable);
    assert!(
        err.message()
            .contains("TLS handshake with upstream localhost:"),
        "{}",
        err.message()
    );
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn unix_socket_upstream() {
    let path = socket_path("unix");
    let up = unix(named("unix"), &path);
    let svc = service(vec![up.spec(1)], options());
    for _ in 0..3 {
        assert_eq!(fetch(&svc, "/sock?q").await.unwrap().2, "unix");
    }
    let seen = up.last();
    assert_eq!(seen.uri, "/sock?q");
    assert_eq!(seen.headers["host"], "example.com");
    assert_eq!(up.connections(), 1);

    let missing = socket_path("missing");
    let svc = service(
        vec![UpstreamSpec {
            target: Target::Unix(missing),
            weight: 1,
        }],
        options(),
    );
    assert_eq!(
        fetch(&svc, "/").await.unwrap_err().kind(),
        ErrorKind::UpstreamUnavailable
    );
    let _ = std::fs::remove_file(&path);
}

// === streaming ===

#[tokio::test]
async fn large_response_streams_without_buffering() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let up = http(handler(move |_req| {
        let mut go = go_rx.clone();
        async move {
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; CHUNK]);
                tx.send(chunk.clone()).await.unwrap();
                // The rest only once the client has seen the start.
                go.wait_for(|go| *go).await.unwrap();
                for _ in 1..CHUNKS {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(body)
        }
    }))
    .await;
    let svc = service(vec![up.spec(1)], options());

    let response = svc.forward(get("/big"), &downstream()).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0;
    while received < CHUNK {
        // A proxy that buffered the whole body would never get here: fail instead of hanging.
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the start of the body streams before its end exists")
            .unwrap()
            .unwrap();
        received += frame.into_data().unwrap().len();
    }
    assert_eq!(
        received, CHUNK,
        "the first MiB arrived before the upstream sent more"
    );
    go_tx.send(true).unwrap();
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(received, CHUNK * CHUNKS);
}

#[tokio::test]
async fn request_and_response_stream_together() {
    // The upstream echoes the request body as it arrives.
    let up = http(handler(|req: Request<hyper::body::Incoming>| async move {
        Response::new(Body::from(req.into_body()))
    }))
    .await;
    for http2 in [false, true] {
        let mut opts = options();
        opts.http2 = http2;
        let svc = service(vec![up.spec(1)], opts);
        let (tx, body) = channel_body(1);
        let req = Request::post("/echo")
            .header("host", "example.com")
            .body(body)
            .unwrap();
        let response =
            tokio::time::timeout(Duration::from_secs(10), svc.forward(req, &downstream()))
                .await
                .expect("response headers arrive while the request body is still open")
                .unwrap();
        let mut echo = response.into_body();
        for word in ["one", "two", "three"] {
            tx.send(Bytes::from_static(word.as_bytes())).await.unwrap();
            let frame = tokio::time::timeout(Duration::from_secs(10), echo.frame())
                .await
                .expect("each chunk comes back before the request body ends")
                .unwrap()
                .unwrap();
            assert_eq!(frame.into_data().unwrap(), word, "http2 = {http2}");
        }
        drop(tx);
        assert!(echo.frame().await.is_none_or(|f| f.is_ok()));
    }
}

// === tower ===

#[tokio::test]
async fn tower_service_reads_downstream_from_extensions() {
    use tower::ServiceExt;
    let up = http(named("a")).await;
    let svc = service(vec![up.spec(1)], options());

    let mut req = get("/");
    req.extensions_mut().insert(downstream());
    let response = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.last().headers["x-forwarded-for"], "198.51.100.7");

    let err = svc.oneshot(get("/")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
}

#[tokio::test]
async fn bad_options_are_build_errors() {
    let opts = ServiceOptions {
        ca_file: Some("/nonexistent.pem".into()),
        ..options()
    };
    let target = Target::parse("https://localhost:1").unwrap();
    let err =
        ProxyService::new("api", vec![UpstreamSpec { target, weight: 1 }], opts, None).unwrap_err();
    assert!(err.to_string().contains("service \"api\""), "{err}");
}
