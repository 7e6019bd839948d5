//! Per-request cost of the identity device's `on_request`.
//!
//! `cargo bench -p snakeway-identity`. Each case measures one `on_request` call on a fresh
//! request context and head (their construction is not timed).

#![allow(missing_docs)]

#[path = "../tests/support/mmdb.rs"]
mod mmdb;

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, request};
use mmdb::{Value, Writer};
use snakeway_core::{Device, PeerAddr, RequestCtx, RequestInfo};
use snakeway_identity::{GeoIp, Identity, IdentityOptions, UserAgent};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn geoip() -> GeoIp {
    let mut w = Writer::new("GeoIP2-City");
    for i in 0..=255u32 {
        let record = Value::map([
            (
                "city",
                Value::map([(
                    "names",
                    Value::map([("en", Value::Str(format!("City {i}")))]),
                )]),
            ),
            ("country", Value::map([("iso_code", Value::str("GB"))])),
        ]);
        w.insert(&format!("81.2.{i}.0/24"), &record);
    }
    GeoIp::from_bytes(w.build()).unwrap()
}

fn options(user_agent: bool, geoip: Option<GeoIp>) -> IdentityOptions {
    IdentityOptions {
        trusted_proxies: vec![
            "10.0.0.0/8".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
        ],
        geoip,
        user_agent,
    }
}

fn input(peer: &str, xff: Option<&'static str>) -> (RequestCtx, request::Parts) {
    let mut builder = Request::get("/api/items?id=7")
        .header("host", "example.com")
        .header("user-agent", CHROME)
        .header("accept", "*/*");
    if let Some(xff) = xff {
        builder = builder.header("x-forwarded-for", HeaderValue::from_static(xff));
    }
    let (mut head, ()) = builder.body(()).unwrap().into_parts();
    // As the server does: the peer rides in the request's extensions.
    head.extensions.insert(PeerAddr(peer.parse().unwrap()));
    let ctx = RequestCtx::new(RequestInfo {
        request_id: HeaderValue::from_static("bench"),
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

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("identity/on_request");
    let cases: [(&str, Identity, &str, Option<&'static str>); 5] = [
        (
            "peer only",
            Identity::new(options(false, None)),
            "203.0.113.9:5000",
            None,
        ),
        (
            "untrusted peer, spoofed xff",
            Identity::new(options(false, None)),
            "203.0.113.9:5000",
            Some("1.1.1.1, 10.0.0.2"),
        ),
        (
            "trusted peer, xff 3 hops",
            Identity::new(options(false, None)),
            "10.0.0.1:5000",
            Some("6.6.6.6, 81.2.69.160, 172.16.0.4, 10.0.0.2"),
        ),
        (
            "xff + user agent (cached)",
            Identity::new(options(true, None)),
            "10.0.0.1:5000",
            Some("81.2.69.160, 10.0.0.2"),
        ),
        (
            "xff + user agent (cached) + geoip",
            Identity::new(options(true, Some(geoip()))),
            "10.0.0.1:5000",
            Some("81.2.69.160, 10.0.0.2"),
        ),
    ];
    for (name, device, peer, xff) in &cases {
        group.bench_function(*name, |b| {
            b.iter_batched(
                || input(peer, *xff),
                |(mut ctx, mut head)| {
                    let flow = device.on_request(&mut ctx, &mut head);
                    black_box(flow.is_ok());
                    (ctx, head)
                },
                BatchSize::SmallInput,
            );
        });
    }

    // A new client for every request: the per-thread cache of recent identities misses (the
    // peers cycle through 4,096 trusted addresses, far more than its 64 entries), so this is
    // the full walk, UA cache hit and GeoIP lookup, plus keeping the new entry.
    let device = Identity::new(options(true, Some(geoip())));
    let mut next = 0u32;
    group.bench_function(
        "new client each time: xff + user agent (cached) + geoip",
        |b| {
            b.iter_batched(
                || {
                    next = next.wrapping_add(1) % 4096;
                    let peer = format!("10.0.{}.{}:5000", next / 256, next % 256);
                    input(&peer, Some("81.2.69.160, 10.0.0.2"))
                },
                |(mut ctx, mut head)| {
                    let flow = device.on_request(&mut ctx, &mut head);
                    black_box(flow.is_ok());
                    (ctx, head)
                },
                BatchSize::SmallInput,
            );
        },
    );
    group.finish();

    // What a user-agent cache miss costs: woothee on a typical desktop agent.
    c.bench_function("identity/user_agent_parse_uncached", |b| {
        b.iter(|| UserAgent::parse(black_box(CHROME.as_bytes())));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
