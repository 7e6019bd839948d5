//! Heap allocations of the identity device's `on_request`, counted on the request's thread by
//! a counting global allocator (`allocation-counter`). Run with `--nocapture` to see the
//! figures.

#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, request};
use snakeway_core::{ClientAddr, Device, PeerAddr, RequestCtx, RequestInfo};
use snakeway_identity::{ClientIdentity, GeoIp, Identity, IdentityOptions};
use support::mmdb::{Value, Writer};

/// Requests measured after the warm-up.
const REQUESTS: u64 = 100;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn geoip() -> GeoIp {
    let mut w = Writer::new("GeoIP2-City");
    let record = Value::map([
        (
            "city",
            Value::map([("names", Value::map([("en", Value::str("London"))]))]),
        ),
        ("country", Value::map([("iso_code", Value::str("GB"))])),
    ]);
    w.insert("81.2.69.0/24", &record);
    GeoIp::from_bytes(w.build()).unwrap()
}

fn identity(user_agent: bool, geoip: Option<GeoIp>) -> Identity {
    Identity::new(IdentityOptions {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        geoip,
        user_agent,
    })
}

/// A request as the server hands it to the pipeline: the peer in the head's extensions, and
/// header values shared (as hyper's are, so a clone copies nothing).
fn input(peer: &str, xff: Option<&'static str>) -> (RequestCtx, request::Parts) {
    let mut builder = Request::get("/api/items?id=7")
        .header("host", HeaderValue::from_static("example.com"))
        .header("user-agent", HeaderValue::from_static(CHROME));
    if let Some(xff) = xff {
        builder = builder.header("x-forwarded-for", HeaderValue::from_static(xff));
    }
    let (mut head, ()) = builder.body(()).unwrap().into_parts();
    head.extensions.insert(PeerAddr(peer.parse().unwrap()));
    let ctx = RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("id"),
        peer: peer.parse().unwrap(),
        method: head.method.clone(),
        uri: head.uri.clone(),
        started: Instant::now(),
        slots: Default::default(),
        device_logs: Default::default(),
        received: Default::default(),
    });
    (ctx, head)
}

/// Allocations of one `on_request` per request, averaged over [`REQUESTS`] after a warm-up;
/// also checks what the device left for later devices and the upstream.
fn per_request(device: &Identity, peer: &str, xff: Option<&'static str>) -> f64 {
    let mut total = 0;
    for i in 0..10 + REQUESTS {
        let (mut ctx, mut head) = input(peer, xff);
        let counted = allocation_counter::measure(|| {
            device.on_request(&mut ctx, &mut head).unwrap();
        });
        let identity = ClientIdentity::get(&ctx.extensions).expect("in the context");
        let in_head = head.extensions.get::<Arc<ClientIdentity>>().unwrap();
        assert_eq!(**in_head, *identity);
        assert_eq!(head.extensions.get::<ClientAddr>().unwrap().0, identity.ip);
        if i >= 10 {
            total += counted.count_total;
        }
    }
    total as f64 / REQUESTS as f64
}

/// Checks that `on_request` allocates no more than what it hands on: the client address and
/// the identity in the request head (whose extension map exists: the peer is there), and the
/// identity in the context (whose map this first insert makes: the map and its table). The
/// identity itself is shared between the requests of one client.
fn allocates_only_what_it_hands_on(
    name: &str,
    device: &Identity,
    peer: &str,
    xff: Option<&'static str>,
) {
    let allocations = per_request(device, peer, xff);
    eprintln!("identity, {name}: {allocations:.2} allocations per request");
    assert!(allocations <= 5.0, "{name}: {allocations}");
}

#[test]
fn peer_only() {
    allocates_only_what_it_hands_on(
        "peer only",
        &identity(false, None),
        "203.0.113.9:5000",
        None,
    );
}

#[test]
fn trusted_peer_with_xff() {
    let device = identity(false, None);
    let xff = Some("81.2.69.160, 10.0.0.2");
    allocates_only_what_it_hands_on("trusted peer, xff 2 hops", &device, "10.0.0.1:5000", xff);
}

#[test]
fn xff_and_user_agent() {
    let device = identity(true, None);
    let xff = Some("81.2.69.160, 10.0.0.2");
    allocates_only_what_it_hands_on("xff + user agent", &device, "10.0.0.1:5000", xff);
}

#[test]
fn xff_user_agent_and_geoip() {
    let device = identity(true, Some(geoip()));
    let xff = Some("81.2.69.160, 10.0.0.2");
    allocates_only_what_it_hands_on("xff + user agent + geoip", &device, "10.0.0.1:5000", xff);
}

/// A new client for every request (more peers than the per-thread cache keeps): the identity
/// is built, and kept with a copy of its inputs.
#[test]
fn a_new_client_costs_its_identity_and_its_entry() {
    let device = identity(true, Some(geoip()));
    // The user agent is classified once per thread, before the count (as in the cases above).
    let (mut ctx, mut head) = input("10.0.255.255:5000", Some("81.2.69.160, 10.0.0.2"));
    device.on_request(&mut ctx, &mut head).unwrap();
    let mut total = 0;
    for i in 0..REQUESTS {
        let peer = format!("10.0.{}.{}:5000", i / 256, i % 256);
        let (mut ctx, mut head) = input(&peer, Some("81.2.69.160, 10.0.0.2"));
        total += allocation_counter::measure(|| {
            device.on_request(&mut ctx, &mut head).unwrap();
        })
        .count_total;
        let identity = ClientIdentity::get(&ctx.extensions).unwrap();
        assert_eq!(identity.ip.to_string(), "81.2.69.160");
        assert_eq!(identity.city.as_deref(), Some("London"));
    }
    let allocations = total as f64 / REQUESTS as f64;
    eprintln!("identity, a new client each time: {allocations:.2} allocations per request");
    // The hand-on inserts (5), the identity (the `Arc`, the chain, the UA and GeoIP strings:
    // 6), the entry's copies of the forwarded lines and the user agent (2).
    assert!(allocations <= 13.0, "{allocations}");
}
