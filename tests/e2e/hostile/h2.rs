//! Protocol detection and HTTP/2 limits against hostile clients: HTTP/1 bytes after ALPN h2, a
//! stalled preface, PING-only connections, rapid reset, CONTINUATION floods, and a peer that
//! grants no flow-control window. HTTP/2 frames are written by hand (RFC 9113 §4.1) so the
//! client can misbehave in ways no client library allows.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use crate::client::{self, connect, read_until_close};
use crate::harness::{Server, TestDir};
use crate::pki::{Ca, tls_connect};
use crate::upstream;

// === a tiny HTTP/2 frame encoder and reader ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// SETTINGS_INITIAL_WINDOW_SIZE.
const INITIAL_WINDOW_SIZE: u16 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// An HPACK block for `GET http://t.test{path}`: indexed `:method GET`, `:scheme http`, a literal
/// `:path` and `:authority` without indexing.
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(4u8, path), (1u8, "t.test")] {
        b.push(index); // literal without indexing, indexed name (4-bit prefix)
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// A frame the server sent.
#[derive(Clone, Debug)]
struct Seen {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What a raw HTTP/2 client has read so far: frames, and when the server closed.
#[derive(Default)]
struct Inbox {
    frames: Vec<Seen>,
    closed: Option<Instant>,
}

/// A prior-knowledge h2c connection written frame by frame; a task reads what the server sends.
struct RawH2 {
    tx: OwnedWriteHalf,
    inbox: Arc<Mutex<Inbox>>,
    reader: tokio::task::JoinHandle<()>,
}

impl RawH2 {
    /// Connects, sends the preface and `settings`, and acknowledges the server's SETTINGS.
    async fn open(addr: std::net::SocketAddr, values: &[(u16, u32)]) -> RawH2 {
        let stream = connect(addr).await.expect("connect");
        let (mut rx, mut tx) = stream.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(values));
        tx.write_all(&hello).await.unwrap();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let reader = {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    match rx.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            inbox.lock().unwrap().closed = Some(Instant::now());
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while buf.len() >= 9 {
                        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                        if buf.len() < 9 + len {
                            break;
                        }
                        let seen = Seen {
                            kind: buf[3],
                            flags: buf[4],
                            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]])
                                & 0x7fff_ffff,
                        };
                        inbox.lock().unwrap().frames.push(seen);
                        buf.drain(..9 + len);
                    }
                }
            })
        };
        let mut raw = RawH2 { tx, inbox, reader };
        assert!(
            raw.wait_for(Duration::from_secs(5), |s| s.kind == SETTINGS
                && s.flags & ACK == 0)
                .await,
            "no SETTINGS from the server"
        );
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        raw
    }

    /// Writes `bytes`; false once the server has closed (the write failed) or has stopped
    /// reading for 5 s (so no test can hang on a full socket).
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.tx.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    fn seen(&self, f: impl Fn(&Seen) -> bool) -> bool {
        self.inbox.lock().unwrap().frames.iter().any(f)
    }

    fn closed(&self) -> Option<Instant> {
        self.inbox.lock().unwrap().closed
    }

    async fn wait_for(&mut self, wait: Duration, f: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.seen(&f) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn wait_closed(&self, wait: Duration) -> Option<Instant> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(at) = self.closed() {
                return Some(at);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn respond_config(listener_keys: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
{listener_keys}

[[route]]
path = "/"
respond = {{ status = 200, body = "hello" }}
"#
    )
}

/// Another client is served while an attack runs (h2c and HTTP/1.1).
async fn others_are_served(addr: std::net::SocketAddr) {
    let res = client::send_h2(addr, client::get_req("t.test", "http://t.test/"))
        .await
        .expect("an h2c client is served during the attack");
    assert_eq!(res.status, 200);
    assert_eq!(client::get(addr, "/").await.status, 200);
}

// === tests ===

/// Item 2: after ALPN h2 only HTTP/2 is spoken; HTTP/1.1 bytes with both content-length and
/// transfer-encoding never reach the HTTP/1 parser nor the upstream.
#[tokio::test]
async fn alpn_h2_then_http1_bytes_never_reach_the_upstream() {
    let (handler, recorded) = upstream::recording(upstream::echo("up"), &[]);
    let up = upstream::http(handler).await;
    let ca = Ca::new();
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new("alpn-h2-h1");
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    let toml = format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
header_read_timeout_ms = 2000
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[service]]
name = "up"
upstreams = [{{ url = "{}" }}]

[[route]]
path = "/"
service = "up"
"#,
        up.url()
    );
    let server = Server::start_in(dir, &toml).await;

    let mut tls = tls_connect(server.addr(), "proxy.test", ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let smuggle = b"POST / HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 6\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n";
    let _ = tls.write_all(smuggle).await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let start = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "connection still open 3 s after HTTP/1.1 bytes on ALPN h2"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        !answer.windows(8).any(|w| w == b"HTTP/1.1"),
        "HTTP/1.1 answered on an ALPN-h2 connection: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(recorded.count(), 0, "a request reached the upstream");

    // The same listener serves real HTTP/2 after ALPN h2 (so the upstream is reachable).
    let tls = tls_connect(server.addr(), "proxy.test", ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    let res = client::send_h2_on(tls, client::get_req("proxy.test", "https://proxy.test/ok"))
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(recorded.count(), 1);
}

/// Item 5: a plain connection that sends the first 3 bytes of the h2c preface and stalls is
/// closed after `header_read_timeout_ms`.
#[tokio::test]
async fn a_stalled_h2c_preface_is_closed_after_header_read_timeout() {
    let server = Server::start(&respond_config("header_read_timeout_ms = 300")).await;
    let mut stream = connect(server.addr()).await.unwrap();
    stream.write_all(b"PRI").await.unwrap();
    let raw = read_until_close(&mut stream, Duration::from_secs(3)).await;
    assert!(raw.closed, "a stalled preface was not closed within 3 s");
    assert!(
        raw.elapsed >= Duration::from_millis(250) && raw.elapsed < Duration::from_millis(1500),
        "closed after {:?} (header_read_timeout_ms = 300)",
        raw.elapsed
    );
    assert!(raw.bytes.is_empty(), "answered: {:?}", raw.text());
}

/// Item 5: a connection that sends nothing at all is closed after `header_read_timeout_ms`.
#[tokio::test]
async fn a_silent_connection_is_closed_after_header_read_timeout() {
    let server = Server::start(&respond_config("header_read_timeout_ms = 300")).await;
    let mut stream = connect(server.addr()).await.unwrap();
    let raw = read_until_close(&mut stream, Duration::from_secs(3)).await;
    assert!(raw.closed, "a silent connection was not closed within 3 s");
    assert!(
        raw.elapsed >= Duration::from_millis(250) && raw.elapsed < Duration::from_millis(1500),
        "closed after {:?} (header_read_timeout_ms = 300)",
        raw.elapsed
    );
}

/// Item 5 / part C: an HTTP/2 connection with no streams is closed after `idle_timeout_ms`,
/// however many PINGs it sends.
#[tokio::test]
async fn an_h2_connection_sending_only_pings_is_closed_when_idle() {
    let server = Server::start(&respond_config("idle_timeout_ms = 400")).await;
    let start = Instant::now();
    let mut h2 = RawH2::open(server.addr(), &[]).await;
    let mut pings = 0u64;
    while h2.closed().is_none() && start.elapsed() < Duration::from_secs(4) {
        pings += 1;
        if !h2.send(&frame(PING, 0, 0, &pings.to_be_bytes())).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let closed = h2
        .wait_closed(Duration::from_millis(500))
        .await
        .expect("a PING-only connection was still open after 4 s (idle_timeout_ms = 400)");
    let after = closed - start;
    assert!(
        after >= Duration::from_millis(350),
        "closed after {after:?}, before idle_timeout_ms = 400"
    );
    assert!(
        h2.seen(|f| f.kind == PING && f.flags & ACK != 0),
        "the server never answered a PING: the test did not exercise PINGs"
    );
    assert!(h2.seen(|f| f.kind == GOAWAY), "closed without GOAWAY");
}

/// Part C: rapid reset (HEADERS + RST_STREAM, thousands of times). The server survives, stays
/// small, serves others meanwhile, and the attacker gets GOAWAY and is closed.
#[tokio::test]
async fn rapid_reset_gets_goaway_and_others_are_served() {
    let server = Server::start(&respond_config("")).await;
    let rss_before = server.peak_rss_kib();
    let mut h2 = RawH2::open(server.addr(), &[]).await;
    let block = get_block("/");
    let mut batch = Vec::new();
    let mut sent = 0u32;
    let mut stream_id = 1u32;
    'attack: for _ in 0..50 {
        for _ in 0..100 {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, &block));
            batch.extend(frame(RST_STREAM, 0, stream_id, &8u32.to_be_bytes())); // CANCEL
            stream_id += 2;
            sent += 1;
        }
        if !h2.send(&batch).await {
            break 'attack;
        }
        batch.clear();
        if h2.closed().is_some() {
            break;
        }
    }
    others_are_served(server.addr()).await;
    let closed = h2.wait_closed(Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the attacker's connection survived {sent} HEADERS+RST_STREAM pairs"
    );
    assert!(h2.seen(|f| f.kind == GOAWAY), "closed without GOAWAY");
    others_are_served(server.addr()).await;
    let grown = server.peak_rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "peak RSS grew by {grown} KiB during the attack"
    );
}

/// Part C: a HEADERS frame without END_HEADERS followed by endless CONTINUATION frames is cut
/// off (the header block is bounded by `max_header_bytes`), and others are served meanwhile.
#[tokio::test]
async fn continuation_flood_is_closed_and_others_are_served() {
    let server = Server::start(&respond_config("max_header_bytes = 16384")).await;
    let rss_before = server.peak_rss_kib();
    let mut h2 = RawH2::open(server.addr(), &[]).await;
    // `:method GET`, then a literal header whose value never ends: 'x-a' = 1 MiB+ of 'a'.
    let mut first = vec![0x82, 0x86, 0x84, 0x00, 0x03];
    first.extend_from_slice(b"x-a");
    first.extend_from_slice(&[0x7f, 0x80, 0x80, 0x80, 0x08]); // value length 2^24 + 127
    assert!(h2.send(&frame(HEADERS, END_STREAM, 1, &first)).await);
    let chunk = vec![b'a'; 16 * 1024];
    let mut frames = 0;
    let start = Instant::now();
    while frames < 4096 && start.elapsed() < Duration::from_secs(5) {
        if !h2.send(&frame(CONTINUATION, 0, 1, &chunk)).await || h2.closed().is_some() {
            break;
        }
        frames += 1;
    }
    assert!(
        frames < 4096,
        "the server read 64 MiB of CONTINUATION frames without closing"
    );
    let closed = h2.wait_closed(Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the flooding connection was not closed");
    others_are_served(server.addr()).await;
    let grown = server.peak_rss_kib().saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "peak RSS grew by {grown} KiB");
}

/// Part C / item 4: a client that grants no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE
/// = 0, and never a WINDOW_UPDATE) loses its connection after `send_timeout_ms`, and its
/// `max_connections` slot goes to the next client.
#[tokio::test]
async fn an_h2_client_that_grants_no_window_is_dropped_after_send_timeout() {
    let server = Server::start(&respond_config(
        "send_timeout_ms = 400\nmax_connections = 1",
    ))
    .await;
    let mut h2 = RawH2::open(server.addr(), &[(INITIAL_WINDOW_SIZE, 0)]).await;
    let start = Instant::now();
    assert!(
        h2.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &get_block("/")
        ))
        .await
    );
    assert!(
        h2.wait_for(Duration::from_secs(3), |f| f.kind == HEADERS
            && f.stream == 1)
            .await,
        "no response head"
    );
    let closed = h2
        .wait_closed(Duration::from_secs(4))
        .await
        .expect("a client granting no window was not dropped within 4 s (send_timeout_ms = 400)");
    let after = closed - start;
    assert!(
        after >= Duration::from_millis(350),
        "dropped after {after:?}, before send_timeout_ms = 400"
    );
    assert!(!h2.seen(|f| f.kind == DATA), "DATA sent without a window");
    // The slot is free again.
    let res = tokio::time::timeout(Duration::from_secs(3), client::get(server.addr(), "/")).await;
    assert_eq!(res.expect("next client served").status, 200);
    drop(h2);
}
