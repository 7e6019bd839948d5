//! The pooled connection's response timer, through a real upstream socket: reset for each
//! request on a reused connection, strict on a stall, harmless after firing while idle.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use snakeway_core::{Body, ErrorKind};

use crate::{Downstream, ProxyService, ServiceOptions, Target, UpstreamSpec};

fn service(up: SocketAddr, response_timeout: Duration) -> ProxyService {
    let upstream = UpstreamSpec {
        target: Target::parse(&format!("http://{up}")).unwrap(),
        weight: 1,
    };
    let options = ServiceOptions {
        response_timeout,
        ..ServiceOptions::default()
    };
    ProxyService::new("timed", vec![upstream], options, None).unwrap()
}

/// Forwards `GET path` and reads the whole answer: its status, or the error's kind.
async fn get(svc: &ProxyService, path: &str) -> Result<u16, ErrorKind> {
    let downstream = Downstream {
        peer: "127.0.0.1:9".parse().unwrap(),
        tls: false,
        trusted: false,
    };
    let req = Request::get(path).body(Body::empty()).unwrap();
    let res = svc.forward(req, &downstream).await.map_err(|e| e.kind())?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    Ok(status)
}

/// Three answers of 250 ms each over one connection, under a 600 ms limit: the timer starts
/// again with each request (a timer set once for the connection would fire in the third).
#[tokio::test]
async fn each_request_on_a_reused_connection_gets_the_full_limit() {
    let (up, accepted) = crate::test_upstream::scripted().await;
    let svc = service(up, Duration::from_millis(600));
    for _ in 0..3 {
        assert_eq!(get(&svc, "/wait/250").await, Ok(200));
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "one pooled connection");
}

/// A reused connection whose upstream stalls: `UpstreamTimeout` (504) once the limit has run
/// from that request's start, and the connection is not used again.
#[tokio::test]
async fn a_stall_on_a_reused_connection_times_out() {
    let (up, accepted) = crate::test_upstream::scripted().await;
    let limit = Duration::from_millis(300);
    let svc = service(up, limit);
    assert_eq!(get(&svc, "/wait/0").await, Ok(200));
    // Longer than the limit since the connection's first exchange: only this request's own
    // time counts.
    tokio::time::sleep(limit).await;
    let start = Instant::now();
    assert_eq!(get(&svc, "/never").await, Err(ErrorKind::UpstreamTimeout));
    let waited = start.elapsed();
    assert!(waited >= limit, "timed out after {waited:?}");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the stall was on the pooled connection"
    );

    assert_eq!(get(&svc, "/wait/0").await, Ok(200));
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        2,
        "the stalled connection was dropped"
    );
}

/// A connection left idle until its timer fired serves the next request in full.
#[tokio::test]
async fn a_timer_that_fired_while_idle_is_set_again() {
    let (up, accepted) = crate::test_upstream::scripted().await;
    let limit = Duration::from_millis(200);
    let svc = service(up, limit);
    assert_eq!(get(&svc, "/wait/0").await, Ok(200));
    tokio::time::sleep(limit * 3).await;
    assert_eq!(get(&svc, "/wait/100").await, Ok(200));
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the idle connection was reused"
    );
    // And it still times out a stall.
    assert_eq!(get(&svc, "/never").await, Err(ErrorKind::UpstreamTimeout));
}

/// A new connection's first request stalls: timed out by the timer made with the connection.
#[tokio::test]
async fn a_stall_on_a_new_connection_times_out() {
    let (up, accepted) = crate::test_upstream::scripted().await;
    let svc = service(up, Duration::from_millis(200));
    assert_eq!(get(&svc, "/never").await, Err(ErrorKind::UpstreamTimeout));
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}
