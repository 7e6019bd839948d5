//! The throttling device (`type = "rate_limit"`, issue 12) through the real server: GCRA per
//! key with the IETF headers, the local store (refusals, recovery after the period, buckets kept
//! across a reload, a flood of 100,000 distinct keys bounded by `max_keys` in count and
//! memory), and the Redis store with a real `redis-server` (Debian's package): one budget
//! across two Snakeway processes, Redis stopped mid-test answered as `on_store_error` says, and
//! recovery when it comes back.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::admin::admin;
use crate::client::{Resp, connect, send_h1};
use crate::harness::{Server, Signal, free_port};
use crate::upstream;

const WAIT: Duration = Duration::from_secs(10);

/// A server with one listener, `[admin]` on `admin_port` when given, everything routed to the
/// upstream at `upstream`, and `device` (a `[[device]]` table) in the pipeline.
fn config(upstream: &str, admin_port: Option<u16>, device: &str) -> String {
    let admin = admin_port
        .map(|p| format!("[admin]\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[server]\nthreads = 2\n{admin}\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"app\"\nupstreams = [{{ url = \"{upstream}\" }}]\n\n\
         [[route]]\npath = \"/\"\nservice = \"app\"\n\n{device}\n"
    )
}

/// A `rate_limit` device named `name` keyed on the `x-client` header, with `extra` keys.
fn device(name: &str, extra: &str) -> String {
    format!(
        "[[device]]\ntype = \"rate_limit\"\nname = \"{name}\"\nkey = \"header:x-client\"\n{extra}\n"
    )
}

/// GET `/` as client `key` (no `x-client` header for `None`).
async fn get_as(addr: SocketAddr, key: Option<&str>) -> Resp {
    let mut req = Request::get("/").header("host", "test.local");
    if let Some(key) = key {
        req = req.header("x-client", key);
    }
    send_h1(addr, req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("GET /")
}

/// The value of the Prometheus sample `name{labels}` in the admin API's `/metrics`.
async fn metric(admin_port: u16, sample: &str) -> Option<f64> {
    let text = admin(([127, 0, 0, 1], admin_port).into(), "GET", "/metrics", None)
        .await
        .text();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn local_store_refuses_over_the_limit_with_retry_after_and_recovers_after_the_period() {
    let up = upstream::http(upstream::echo("up")).await;
    let srv = Server::start(&config(
        &up.url(),
        None,
        &device("per-client", "limit = 5\nburst = 0\nperiod_ms = 1000\n"),
    ))
    .await;

    let started = Instant::now();
    let mut allowed = 0;
    let mut refused = Vec::new();
    for _ in 0..20 {
        let res = get_as(srv.addr(), Some("a")).await;
        match res.status {
            200 => {
                allowed += 1;
                let ratelimit = res
                    .header("ratelimit")
                    .expect("RateLimit on an allowed answer");
                assert!(ratelimit.starts_with("\"per-client\";r="), "{ratelimit}");
            }
            429 => refused.push(res),
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    // 5 at once, plus at most one per 200 ms that passed while the 20 were sent.
    let refills = started.elapsed().as_millis() / 200 + 1;
    assert!(
        allowed >= 5 && allowed as u128 <= 5 + refills,
        "{allowed} allowed in {:?}",
        started.elapsed()
    );
    assert!(refused.len() >= 10, "mostly 429: {} refused", refused.len());
    for res in &refused {
        let retry: u64 = res
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert_eq!(retry, 1, "200 ms rounded up");
        assert_eq!(
            res.header("ratelimit-policy"),
            Some("\"per-client\";q=5;w=1")
        );
        assert_eq!(res.header("ratelimit"), Some("\"per-client\";r=0;t=1"));
        assert!(!res.request_id().is_empty());
    }
    assert_eq!(up.requests(), allowed, "refusals never reach the upstream");

    // Another key is untouched; a request without the key is not limited.
    let other = get_as(srv.addr(), Some("b")).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("ratelimit"), Some("\"per-client\";r=4;t=1"));
    for _ in 0..10 {
        let res = get_as(srv.addr(), None).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("ratelimit"), None);
    }

    // After the period, the first key has its full allowance again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = 0;
    for _ in 0..5 {
        again += usize::from(get_as(srv.addr(), Some("a")).await.status == 200);
    }
    assert_eq!(again, 5);
}

#[tokio::test]
async fn an_unchanged_device_keeps_its_buckets_across_a_reload_and_a_changed_one_starts_afresh() {
    let up = upstream::http(upstream::echo("up")).await;
    let limited = device("reload", "limit = 3\nperiod_ms = 600000\n");
    let srv = Server::start(&config(&up.url(), None, &limited)).await;
    let statuses = |n: usize| {
        let addr = srv.addr();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(get_as(addr, Some("k")).await.status);
            }
            out
        }
    };
    assert_eq!(statuses(4).await, [200, 200, 200, 429]);

    // Same device, another route added: the key is still spent.
    let mut toml = config(&up.url(), None, &limited);
    toml.push_str("\n[[route]]\npath = \"/other\"\nrespond = { status = 204 }\n");
    srv.rewrite_config(&toml);
    srv.signal(Signal::SIGHUP);
    assert!(srv.wait_for_log("configuration reloaded", WAIT).await);
    assert_eq!(statuses(1).await, [429], "the bucket survived the reload");

    // A new limit is a new device: fresh buckets.
    let raised = device("reload", "limit = 4\nperiod_ms = 600000\n");
    srv.rewrite_config(&config(&up.url(), None, &raised));
    srv.signal(Signal::SIGHUP);
    assert!(
        srv.wait_for_log_count("configuration reloaded", 2, WAIT)
            .await
    );
    assert_eq!(statuses(5).await, [200, 200, 200, 200, 429]);
}

/// Sends `keys` (one request each, `x-client: PREFIX-i` padded to [`KEY_BYTES`]) over one
/// kept-alive HTTP/1.1 connection; returns how many were answered 200.
async fn flood(addr: SocketAddr, prefix: String, keys: std::ops::Range<usize>) -> usize {
    let io = TokioIo::new(connect(addr).await.expect("connect"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut ok = 0;
    for i in keys {
        let mut key = format!("{prefix}-{i}-");
        key.extend(std::iter::repeat_n(
            'k',
            KEY_BYTES.saturating_sub(key.len()),
        ));
        let req = Request::get("/")
            .header("host", "test.local")
            .header("x-client", key)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.expect("connection kept alive");
        let res = sender.send_request(req).await.expect("answer");
        ok += usize::from(res.status() == 200);
        res.into_body().collect().await.expect("body");
    }
    ok
}

/// The size of each flooded key: a store that kept its keys would hold this many bytes per key.
const KEY_BYTES: usize = 512;

/// Floods `keys` new distinct keys (prefixed `phase`) over `connections` connections at once;
/// returns how many were answered 200.
async fn flood_on(addr: SocketAddr, phase: &str, keys: usize, connections: usize) -> usize {
    let per = keys / connections;
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(flood(addr, format!("{phase}{c}"), c * per..(c + 1) * per)))
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.expect("flood task");
    }
    ok
}

#[tokio::test]
async fn a_flood_of_100_000_distinct_keys_keeps_the_key_count_and_memory_bounded() {
    let up = upstream::http(upstream::echo("up")).await;
    let admin_port = free_port();
    const MAX_KEYS: usize = 1_000;
    let srv = Server::start(&config(
        &up.url(),
        Some(admin_port),
        &device(
            "flood",
            &format!("limit = 1\nperiod_ms = 600000\nmax_keys = {MAX_KEYS}\n"),
        ),
    ))
    .await;
    const CONNECTIONS: usize = 8;
    // Past `max_keys` ten times over: the store has swept, and every buffer and connection of
    // the flood is in use, before memory is first read.
    const WARM_UP: usize = 10_000;
    const KEYS: usize = 100_000;
    let mut ok = flood_on(srv.addr(), "w", WARM_UP, CONNECTIONS).await;
    let warmed = srv.peak_rss_kib();
    ok += flood_on(srv.addr(), "f", KEYS - WARM_UP, CONNECTIONS).await;
    let grown = srv.peak_rss_kib().saturating_sub(warmed);
    assert_eq!(ok, KEYS, "every new key gets its first request");
    // Bounded, it grows by well under 1 MiB here. Keeping the 90,000 later keys' bytes alone
    // would take 44 MiB; keeping only their hashes and buckets without a bound (`max_keys`
    // above the flood) grew it by 3.4 MiB when measured (5 MiB with glibc's allocator).
    assert!(
        grown < 2 * 1024,
        "peak RSS grew by {grown} KiB over 90,000 new keys of {KEY_BYTES} bytes"
    );
    eprintln!("peak RSS grew by {grown} KiB over the last 90,000 keys (from {warmed} KiB)");

    let keys = metric(admin_port, "snakeway_rate_limit_keys{device=\"flood\"}")
        .await
        .expect("the key count is exposed");
    assert!(
        keys > 0.0 && keys <= (MAX_KEYS + CONNECTIONS) as f64,
        "{keys} keys held"
    );
    let allowed = metric(
        admin_port,
        "snakeway_rate_limit_requests_total{device=\"flood\",outcome=\"allowed\"}",
    )
    .await;
    assert_eq!(allowed, Some(KEYS as f64));
    // The server still answers, and still limits: a new key gets its one request, then 429.
    assert_eq!(get_as(srv.addr(), Some("fresh")).await.status, 200);
    assert_eq!(get_as(srv.addr(), Some("fresh")).await.status, 429);
}

/// A `redis-server` on a loopback port of its own, without persistence, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    /// Starts Redis on a free port (Redis refuses `--port 0`: a port is picked by binding and
    /// releasing it, and another one tried if Redis cannot have it).
    async fn start() -> Redis {
        for _ in 0..5 {
            if let Some(redis) = Self::start_on(free_port()).await {
                return redis;
            }
        }
        panic!("redis-server did not start (apt-get install redis-server)");
    }

    /// Starts Redis on `port`; `None` if it exits (port taken) or does not answer within 10 s.
    async fn start_on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (apt-get install redis-server)");
        let mut redis = Redis { child, port };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if redis.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if redis.ping().await {
                return Some(redis);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Whether Redis answers `PING` (inline command) with `+PONG`.
    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        stream.write_all(b"PING\r\n").await.is_ok()
            && tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
            && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops Redis (the port is free again for [`Redis::start_on`]).
    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

fn redis_device(name: &str, url: &str, extra: &str) -> String {
    device(
        name,
        &format!("store = \"redis\"\nredis_url = \"{url}\"\nredis_timeout_ms = 50\n{extra}"),
    )
}

#[tokio::test]
async fn two_snakeways_share_one_budget_in_redis() {
    let redis = Redis::start().await;
    let up = upstream::http(upstream::echo("up")).await;
    let dev = redis_device("fleet", &redis.url(), "limit = 10\nperiod_ms = 600000\n");
    let one = Server::start(&config(&up.url(), None, &dev)).await;
    let two = Server::start(&config(&up.url(), None, &dev)).await;

    let mut allowed = [0usize; 2];
    for i in 0..30 {
        let (n, srv) = if i % 2 == 0 { (0, &one) } else { (1, &two) };
        let res = get_as(srv.addr(), Some("shared")).await;
        match res.status {
            200 => allowed[n] += 1,
            429 => {
                assert!(res.header("retry-after").is_some());
                assert_eq!(res.header("ratelimit-policy"), Some("\"fleet\";q=10;w=600"));
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    assert_eq!(
        allowed[0] + allowed[1],
        10,
        "one budget across both: {allowed:?}"
    );
    assert!(
        allowed[0] > 0 && allowed[1] > 0,
        "both served some: {allowed:?}"
    );
    assert_eq!(up.requests(), 10);
    // Another key has its own budget, on either instance.
    assert_eq!(get_as(two.addr(), Some("other")).await.status, 200);
    assert_eq!(
        get_as(one.addr(), Some("other")).await.header("ratelimit"),
        Some("\"fleet\";r=8;t=120")
    );
}

#[tokio::test]
async fn redis_down_is_answered_as_on_store_error_says_and_recovery_is_automatic() {
    let redis = Redis::start().await;
    let url = redis.url();
    let up = upstream::http(upstream::echo("up")).await;
    let admin_port = free_port();
    let limit = "limit = 2\nperiod_ms = 600000\n";
    let open = Server::start(&config(
        &up.url(),
        Some(admin_port),
        &redis_device("open", &url, &format!("{limit}on_store_error = \"open\"\n")),
    ))
    .await;
    let closed = Server::start(&config(
        &up.url(),
        None,
        &redis_device(
            "closed",
            &url,
            &format!("{limit}on_store_error = \"closed\"\n"),
        ),
    ))
    .await;

    // Up: counted.
    for (srv, key) in [(&open, "o1"), (&closed, "c1")] {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(get_as(srv.addr(), Some(key)).await.status);
        }
        assert_eq!(seen, [200, 200, 429], "{key}");
    }

    // Down: open lets everything through (even the spent key), closed answers 503.
    let port = redis.stop();
    let down = Instant::now();
    for _ in 0..5 {
        let res = get_as(open.addr(), Some("o1")).await;
        assert_eq!(res.status, 200, "open: {}", res.text());
        assert_eq!(res.header("ratelimit"), None, "nothing was counted");
        let res = get_as(closed.addr(), Some("c2")).await;
        assert_eq!(res.status, 503, "closed: {}", res.text());
        assert_eq!(res.header("retry-after"), Some("1"));
    }
    let errors = metric(
        admin_port,
        "snakeway_rate_limit_requests_total{device=\"open\",outcome=\"store_error\"}",
    )
    .await;
    assert_eq!(errors, Some(5.0), "every store error is counted");
    let logged = open.log_count("rate limit store failed");
    let seconds = down.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=seconds).contains(&logged),
        "{logged} log lines in about {seconds} s: at most one a second"
    );

    // Back: both reconnect by themselves and count again (the restarted Redis is empty).
    let _redis = Redis::start_on(port)
        .await
        .expect("redis restarts on its port");
    // Each instance waits for its first answer counted in Redis again (a fresh key per try,
    // since the tries that failed over were not counted), then spends that key.
    for (srv, name) in [(&open, "open"), (&closed, "closed")] {
        let deadline = Instant::now() + WAIT;
        let mut tries = 0;
        let key = loop {
            tries += 1;
            let key = format!("{name}-back-{tries}");
            let res = get_as(srv.addr(), Some(&key)).await;
            if res.status == 200 && res.header("ratelimit").is_some() {
                break key;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: Redis not used again: {}",
                res.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(get_as(srv.addr(), Some(&key)).await.status, 200, "{name}");
        assert_eq!(get_as(srv.addr(), Some(&key)).await.status, 429, "{name}");
    }
}

#[tokio::test]
async fn a_request_waiting_on_a_stalled_redis_does_not_hold_its_worker() {
    // A "Redis" that accepts and reads but never answers: every check waits out the timeout.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redis_addr = stalled.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = stalled.accept().await {
            open.push(conn); // held open, never read from or answered
        }
    });
    let up = upstream::http(upstream::echo("up")).await;
    let dev = redis_device(
        "stalled",
        &format!("redis://{redis_addr}/0"),
        "routes = [\"/limited\"]\nlimit = 5\n",
    )
    .replace("redis_timeout_ms = 50", "redis_timeout_ms = 3000");
    // One worker: a hook that blocked its thread would stall every other connection too.
    let srv =
        Server::start(&config(&up.url(), None, &dev).replace("threads = 2", "threads = 1")).await;

    let addr = srv.addr();
    let waiting = tokio::spawn(async move {
        let req = Request::get("/limited")
            .header("host", "test.local")
            .header("x-client", "k")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = send_h1(addr, req).await.expect("GET /limited");
        (res.status, Instant::now())
    });
    // Let the limited request reach the device and start waiting on the stalled store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the limited request waits on the store"
    );
    let other = get_as(addr, Some("k")).await;
    let other_done = Instant::now();
    assert_eq!(other.status, 200, "{}", other.text());
    assert!(
        !waiting.is_finished(),
        "the unlimited request was answered while the limited one still waited"
    );
    let (status, limited_done) = waiting.await.expect("limited request");
    // The timeout is a store error, and `on_store_error = "open"` lets the request through.
    assert_eq!(status, 200);
    assert!(limited_done > other_done);
    held.abort();
}
