//! The device through a real Tower stack: [`RateLimitLayer`] around a service that counts its
//! calls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use snakeway_core::{Body, ClientAddr, PeerAddr};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use crate::{
    LocalStore, OnStoreError, Quota, RATELIMIT, RATELIMIT_POLICY, RateKey, RateLimitLayer,
    RateLimitOptions, RedisStore, Store,
};

fn local(limit: u32, period: Duration, burst: u32) -> Store {
    let quota = Quota::new(limit, period, burst).expect("quota");
    Store::Local(Arc::new(LocalStore::new(quota, 1000)))
}

/// A stack around an upstream counting its calls.
fn stack(
    options: RateLimitOptions,
    store: Store,
) -> (
    impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(options, store))
        .service(service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Body::from("upstream"))) }
        }));
    (svc, calls)
}

fn request(peer: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().uri("http://example.com/api/x");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::empty()).expect("request");
    let peer: SocketAddr = peer.parse().expect("peer");
    req.extensions_mut().insert(PeerAddr(peer));
    req
}

fn header<'a>(res: &'a Response<Body>, name: &http::HeaderName) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn over_the_limit_is_refused_with_the_ietf_headers_and_never_reaches_the_service() {
    let options = RateLimitOptions::new("per-client", RateKey::ClientIp);
    let (svc, calls) = stack(options, local(5, Duration::from_secs(60), 0));
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let res = svc
            .clone()
            .oneshot(request("10.0.0.1:5000", &[]))
            .await
            .unwrap();
        statuses.push(res.status());
        last = Some(res);
    }
    assert_eq!(statuses[..5], [StatusCode::OK; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 3]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "refusals never reach the service"
    );
    let refused = last.expect("a response");
    assert_eq!(
        header(&refused, &RETRY_AFTER),
        Some("12"),
        "60 s / 5 = 12 s"
    );
    assert_eq!(
        header(&refused, &RATELIMIT_POLICY),
        Some("\"per-client\";q=5;w=60")
    );
    assert_eq!(
        header(&refused, &RATELIMIT),
        Some("\"per-client\";r=0;t=12")
    );

    // Another client is untouched, and its answers count down in `RateLimit`.
    let res = svc
        .clone()
        .oneshot(request("10.0.0.2:5000", &[]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, &RATELIMIT), Some("\"per-client\";r=4;t=12"));
}

#[tokio::test]
async fn the_identity_devices_client_address_wins_over_the_peer() {
    let options = RateLimitOptions::new("ip", RateKey::ClientIp);
    let (svc, _) = stack(options, local(1, Duration::from_secs(60), 0));
    let from = |client: [u8; 4]| {
        let mut req = request("192.0.2.1:1", &[]);
        req.extensions_mut().insert(ClientAddr(client.into()));
        req
    };
    let status = |res: Response<Body>| res.status();
    assert_eq!(
        status(svc.clone().oneshot(from([1, 1, 1, 1])).await.unwrap()),
        StatusCode::OK
    );
    // Same proxy peer, another client behind it: its own budget.
    assert_eq!(
        status(svc.clone().oneshot(from([2, 2, 2, 2])).await.unwrap()),
        StatusCode::OK
    );
    assert_eq!(
        status(svc.clone().oneshot(from([1, 1, 1, 1])).await.unwrap()),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn header_and_cookie_keys_and_requests_without_a_key() {
    let by_header = RateLimitOptions::new("h", RateKey::Header("x-api-key".parse().unwrap()));
    let (svc, calls) = stack(by_header, local(1, Duration::from_secs(60), 1));
    let key = |k: &str| request("10.0.0.1:1", &[("x-api-key", k)]);
    let mut codes = Vec::new();
    for req in [key("a"), key("a"), key("a"), key("b")] {
        codes.push(svc.clone().oneshot(req).await.unwrap().status().as_u16());
    }
    assert_eq!(
        codes,
        [200, 200, 429, 200],
        "limit + burst = 2 for a, b apart"
    );
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(request("10.0.0.1:1", &[]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "no key: not limited");
        assert_eq!(header(&res, &RATELIMIT), None, "and not counted");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 8);

    let by_cookie = RateLimitOptions::new("c", RateKey::Cookie("session".into()));
    let (svc, _) = stack(by_cookie, local(1, Duration::from_secs(60), 0));
    let with = |c: &str| request("10.0.0.1:1", &[("cookie", c)]);
    let mut codes = Vec::new();
    for req in [
        with("session=s1"),
        with("x=1; session=s1"),
        with("session=s2"),
    ] {
        codes.push(svc.clone().oneshot(req).await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [200, 429, 200]);
}

#[tokio::test]
async fn only_listed_routes_count_and_route_keys_share_a_budget_per_prefix() {
    let mut options = RateLimitOptions::new("r", RateKey::Route);
    options.routes = vec!["/api".into(), "/api/admin".into()];
    options.status = StatusCode::SERVICE_UNAVAILABLE;
    let (svc, _) = stack(options, local(1, Duration::from_secs(60), 0));
    let path = |p: &str, peer: &str| {
        let mut req = request(peer, &[]);
        *req.uri_mut() = p.parse().unwrap();
        req
    };
    let mut codes = Vec::new();
    for (p, peer) in [
        ("/api/a", "10.0.0.1:1"),
        ("/api/b", "10.0.0.2:1"),
        ("/api/admin/x", "10.0.0.3:1"),
        ("/apix", "10.0.0.1:1"),
        ("/apix", "10.0.0.1:1"),
    ] {
        codes.push(
            svc.clone()
                .oneshot(path(p, peer))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        codes,
        [200, 503, 200, 200, 200],
        "one budget per prefix; /apix not counted"
    );
}

#[tokio::test]
async fn two_devices_list_both_policies_in_ratelimit() {
    let quota = Quota::new(10, Duration::from_secs(1), 0).expect("quota");
    let first = crate::RateLimit::new(
        RateLimitOptions::new("a", RateKey::ClientIp),
        Store::Local(Arc::new(LocalStore::new(quota, 10))),
    );
    let second = crate::RateLimit::new(
        RateLimitOptions::new("b", RateKey::ClientIp),
        Store::Local(Arc::new(LocalStore::new(quota, 10))),
    );
    let pipeline = snakeway_core::pipeline::Pipeline::new(vec![Arc::new(first), Arc::new(second)]);
    let svc = ServiceBuilder::new()
        .layer(snakeway_core::pipeline::PipelineLayer::new(pipeline))
        .service(service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let res = svc.oneshot(request("10.0.0.1:1", &[])).await.unwrap();
    // One field line per device, in configured order: together one list (RFC 9110 §5.3).
    let items: Vec<&str> = res
        .headers()
        .get_all(&RATELIMIT)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(items, ["\"a\";r=9;t=1", "\"b\";r=9;t=1"]);
}

#[tokio::test]
async fn a_store_that_fails_lets_through_or_refuses_as_configured() {
    let quota = Quota::new(1, Duration::from_secs(1), 0).expect("quota");
    let redis = || {
        // Nothing listens on port 1: every call fails within the timeout.
        let store = RedisStore::open(
            quota,
            "redis://127.0.0.1:1/0",
            "t:".into(),
            Duration::from_millis(20),
        );
        Store::Redis(Arc::new(store.expect("lazy")))
    };
    let mut open = RateLimitOptions::new("open", RateKey::ClientIp);
    open.on_store_error = OnStoreError::Open;
    let (svc, calls) = stack(open, redis());
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(request("10.0.0.1:1", &[]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let mut closed = RateLimitOptions::new("closed", RateKey::ClientIp);
    closed.on_store_error = OnStoreError::Closed;
    let (svc, calls) = stack(closed, redis());
    let res = svc.oneshot(request("10.0.0.1:1", &[])).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, &RETRY_AFTER), Some("1"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn the_layer_meets_axums_bounds() {
    fn assert_bounds<T: Clone + Send + Sync + 'static>(_: &T) {}
    let layer = RateLimitLayer::new(
        RateLimitOptions::new("x", RateKey::ClientIp),
        local(1, Duration::from_secs(1), 0),
    );
    assert_bounds(&layer);
}
