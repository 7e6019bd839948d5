//! Differential test: the guard's reading of a request head against hyper's.
//!
//! Generated heads mutate what request smuggling feeds on (`content-length`,
//! `transfer-encoding`, `host`, whitespace, folding, obs-text, duplicates, case, bare LF, request
//! targets). For each, the guard's head parser decides; every head it accepts is then served by
//! hyper's HTTP/1 server on an in-memory stream, and must be read with the same method, target,
//! body framing and host (as the router reads it). Heads built with a known ambiguity must be
//! refused.
//!
//! Chunked bodies get the same treatment (sizes in any case, with leading zeros, whitespace,
//! extensions, overflow, bare LF, trailers): where the guard's chunk tracker says a body ends,
//! hyper's decoder must end it too and read the request after it; where the tracker refuses or
//! waits, hyper must not read a request after it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::sample::select;

use super::chunked::Chunked;
use super::head::{self, BodyFraming, Parsed};
use crate::router::request_host;

const MAX_HEAD: usize = 8192;

/// What hyper made of a head.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    method: String,
    target: String,
    /// `Some(n)`: a sized body (0 for none); `None`: chunked.
    length: Option<u64>,
    host: Option<String>,
}

/// One header line and what it makes ambiguous.
#[derive(Clone, Copy, Debug)]
struct Field {
    line: &'static str,
    kind: FieldKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldKind {
    Host,
    BadHost,
    ContentLength,
    BadContentLength,
    Chunked,
    BadTransferEncoding,
    /// Folding, whitespace before the colon, control characters: never valid.
    Malformed,
    Other,
}

const FIELDS: &[Field] = &[
    Field {
        line: "Host: a.example",
        kind: FieldKind::Host,
    },
    Field {
        line: "host: B.example:8080",
        kind: FieldKind::Host,
    },
    Field {
        line: "HOST: [::1]:80",
        kind: FieldKind::Host,
    },
    Field {
        line: "Host:  c.example  ",
        kind: FieldKind::Host,
    },
    Field {
        line: "Host: a b",
        kind: FieldKind::BadHost,
    },
    Field {
        line: "Host: a@b",
        kind: FieldKind::BadHost,
    },
    Field {
        line: "Host:",
        kind: FieldKind::BadHost,
    },
    Field {
        line: "Host: a,b",
        kind: FieldKind::Host,
    },
    Field {
        line: "Host: a:x",
        kind: FieldKind::BadHost,
    },
    Field {
        line: "Content-Length: 5",
        kind: FieldKind::ContentLength,
    },
    Field {
        line: "content-length: 0",
        kind: FieldKind::ContentLength,
    },
    Field {
        line: "Content-Length:  007 ",
        kind: FieldKind::ContentLength,
    },
    Field {
        line: "Content-Length: 5, 5",
        kind: FieldKind::BadContentLength,
    },
    Field {
        line: "Content-Length: +5",
        kind: FieldKind::BadContentLength,
    },
    Field {
        line: "Content-Length: 0x5",
        kind: FieldKind::BadContentLength,
    },
    Field {
        line: "Content-Length: 99999999999999999999",
        kind: FieldKind::BadContentLength,
    },
    Field {
        line: "Transfer-Encoding: chunked",
        kind: FieldKind::Chunked,
    },
    Field {
        line: "transfer-encoding: Chunked ",
        kind: FieldKind::Chunked,
    },
    Field {
        line: "Transfer-Encoding: gzip, chunked",
        kind: FieldKind::BadTransferEncoding,
    },
    Field {
        line: "Transfer-Encoding: chunked, identity",
        kind: FieldKind::BadTransferEncoding,
    },
    Field {
        line: "Transfer-Encoding: identity",
        kind: FieldKind::BadTransferEncoding,
    },
    Field {
        line: "Transfer-Encoding : chunked",
        kind: FieldKind::Malformed,
    },
    Field {
        line: "Content-Length : 5",
        kind: FieldKind::Malformed,
    },
    Field {
        line: "X-Folded: a\r\n b",
        kind: FieldKind::Malformed,
    },
    Field {
        line: "X-Folded: a\r\n\tContent-Length: 5",
        kind: FieldKind::Malformed,
    },
    Field {
        line: " Host: a.example",
        kind: FieldKind::Malformed,
    },
    Field {
        line: "X-Ctl: a\u{1}b",
        kind: FieldKind::Malformed,
    },
    Field {
        line: "X\u{7f}: b",
        kind: FieldKind::Malformed,
    },
    Field {
        line: "X-Obs-Text: caf\u{e9}",
        kind: FieldKind::Other,
    },
    Field {
        line: "X-Empty:",
        kind: FieldKind::Other,
    },
    Field {
        line: "Connection: keep-alive",
        kind: FieldKind::Other,
    },
    Field {
        line: "Accept: */*",
        kind: FieldKind::Other,
    },
];

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "get", "PATCH",
];

const TARGETS: &[&str] = &[
    "/",
    "/a/b?c=d",
    "/%41",
    "http://a.example/x",
    "http://d.example:81/",
    "https://[::1]/x?y",
    "HTTP://e.example",
    "http://u@a.example/",
    "http:///x",
    "a.example/x",
    "//x",
    "*",
];

/// A generated head and whether it was built to be ambiguous.
#[derive(Debug, Clone)]
struct Case {
    bytes: Vec<u8>,
    ambiguous: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        select(METHODS),
        select(TARGETS),
        prop::bool::weighted(0.85),
        prop::collection::vec(select(FIELDS), 0..6),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(method, target, http11, fields, bare_lf)| {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let version = if http11 { "HTTP/1.1" } else { "HTTP/1.0" };
            let mut text = format!("{method} {target} {version}{eol}");
            let count = |k: FieldKind| fields.iter().filter(|f| f.kind == k).count();
            for f in &fields {
                text.push_str(f.line);
                text.push_str(eol);
            }
            text.push_str(eol);
            let hosts = count(FieldKind::Host) + count(FieldKind::BadHost);
            let lengths = count(FieldKind::ContentLength) + count(FieldKind::BadContentLength);
            let encodings = count(FieldKind::Chunked) + count(FieldKind::BadTransferEncoding);
            let ambiguous = count(FieldKind::Malformed) > 0
                || count(FieldKind::BadHost) > 0
                || count(FieldKind::BadContentLength) > 0
                || count(FieldKind::BadTransferEncoding) > 0
                || hosts > 1
                || (hosts == 0 && http11)
                || lengths > 1
                || encodings > 1
                || (lengths > 0 && encodings > 0)
                || (encodings > 0 && !http11)
                || target.contains('@');
            Case {
                bytes: text.into_bytes(),
                ambiguous,
            }
        })
}

/// Serves `head` with hyper's HTTP/1 server on an in-memory stream; what its service saw, or
/// `None` when hyper refused the head.
async fn hyper_reads(head: &[u8]) -> Option<Read> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (seen, mut read) = tokio::sync::oneshot::channel();
    let seen = Mutex::new(Some(seen));
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let read = Read {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            length: req.body().size_hint().exact(),
            host: request_host(&req).map(str::to_owned),
        };
        if let Some(seen) = seen.lock().unwrap().take() {
            let _ = seen.send(read);
        }
        async { Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new())) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service);
    tokio::io::AsyncWriteExt::write_all(&mut client, head)
        .await
        .unwrap();
    // Done as soon as the service has seen the request, or hyper has given up on the head.
    tokio::select! {
        biased;
        seen = &mut read => seen.ok(),
        _ = conn => read.try_recv().ok(),
        () = tokio::time::sleep(Duration::from_secs(2)) => None,
    }
}

/// The host as the router reads it from a `host` field holding `value`.
fn routed(value: &str) -> Option<String> {
    let req = http::Request::builder()
        .header("host", value)
        .body(())
        .unwrap();
    request_host(&req).map(str::to_owned)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_guard_and_hyper_agree(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match head::parse(&case.bytes, MAX_HEAD) {
            Parsed::Complete(guard) => {
                prop_assert!(!case.ambiguous, "an ambiguous head was accepted: {:?}", String::from_utf8_lossy(&case.bytes));
                let read = runtime.block_on(hyper_reads(&case.bytes));
                let read = read.ok_or_else(|| TestCaseError::fail(format!(
                    "hyper refused a head the guard accepted: {:?}",
                    String::from_utf8_lossy(&case.bytes)
                )))?;
                let length = match guard.body {
                    BodyFraming::None => Some(0),
                    BodyFraming::Length(n) => Some(n),
                    BodyFraming::Chunked => None,
                };
                let expected = Read {
                    method: guard.method.to_owned(),
                    // Read through the same URI type: hyper lower-cases the scheme.
                    target: http::Uri::try_from(guard.target).map_or_else(|_| guard.target.to_owned(), |u| u.to_string()),
                    length,
                    host: guard.host.and_then(|h| routed(std::str::from_utf8(h).ok()?)),
                };
                prop_assert_eq!(read, expected, "{:?}", String::from_utf8_lossy(&case.bytes));
            }
            Parsed::Partial => prop_assert!(false, "a complete head read as partial"),
            Parsed::Invalid(..) => {}
        }
    }
}

/// One chunk: its size, how the size is written, and whether its size line and its data end
/// in a bare LF.
fn chunk() -> impl Strategy<Value = (usize, u8, bool, bool)> {
    (
        1usize..20,
        0u8..8,
        prop::bool::weighted(0.08),
        prop::bool::weighted(0.08),
    )
}

/// A chunked body: some chunks, the last chunk (with an extension or not), trailers or not,
/// and a final line ending that may be mangled.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(chunk(), 0..4),
        prop::bool::ANY,
        prop::bool::ANY,
        select(&["\r\n", "\n", "\r\r\n", "", "\r\n\r\n"][..]),
    )
        .prop_map(|(chunks, ext, trailer, end)| {
            let mut body = String::new();
            for (size, style, size_lf, data_lf) in chunks {
                let eol = |bare| if bare { "\n" } else { "\r\n" };
                let size_text = match style {
                    0 => format!("{size:x}"),
                    1 => format!("{size:X}"),
                    2 => format!("00{size:x}"),
                    3 => format!("{size:x};name=value"),
                    4 => format!("{size:x} "),
                    5 => format!("{size:x}\t;x"),
                    6 => format!("1{size:016x}"),
                    _ => format!("+{size:x}"),
                };
                body.push_str(&size_text);
                body.push_str(eol(size_lf));
                body.push_str(&"x".repeat(size));
                body.push_str(eol(data_lf));
            }
            body.push_str(if ext { "0;last\r\n" } else { "0\r\n" });
            if trailer {
                body.push_str("X-Trailer: 1\r\n");
            }
            body.push_str(end);
            body.into_bytes()
        })
}

/// What hyper made of a chunked request followed by `GET /next`: whether it read the body
/// whole, and whether it then read the next request, waiting at most `patience` for it.
async fn hyper_reads_chunked(body: &[u8], patience: Duration) -> (bool, bool) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let read_body = Arc::new(Mutex::new(false));
    let record = read_body.clone();
    let (next_tx, mut next) = tokio::sync::oneshot::channel();
    let next_tx = Arc::new(Mutex::new(Some(next_tx)));
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (record, next_tx) = (record.clone(), next_tx.clone());
        async move {
            if req.uri().path() == "/next" {
                if let Some(tx) = next_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            } else if http_body_util::BodyExt::collect(req.into_body())
                .await
                .is_ok()
            {
                *record.lock().unwrap() = true;
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service);
    let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(body);
    raw.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut client, &raw)
        .await
        .unwrap();
    // The client stays open: hyper would otherwise stop at the end of the stream.
    let read_next = tokio::select! {
        biased;
        _ = &mut next => true,
        _ = conn => next.try_recv().is_ok(),
        () = tokio::time::sleep(patience) => false,
    };
    drop(client);
    let read_body = *read_body.lock().unwrap();
    (read_body, read_next)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_chunk_tracker_and_hyper_agree(body in chunked_body()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let text = String::from_utf8_lossy(&body);
        let tracked = Chunked::default().advance(&body);
        // A body the tracker ends must be read by hyper, whatever the machine's load; where it
        // does not, hyper reading on would show within moments.
        let patience = match tracked {
            Ok((_, true)) => Duration::from_secs(2),
            _ => Duration::from_millis(50),
        };
        let (read_body, read_next) = runtime.block_on(hyper_reads_chunked(&body, patience));
        match tracked {
            Ok((n, true)) => {
                // The tracker ends the body where the next request starts (after empty lines).
                prop_assert!(body[n..].iter().all(|b| matches!(b, b'\r' | b'\n')), "{:?}", text);
                prop_assert!(read_body && read_next, "hyper disagrees: body {}, next {}: {:?}", read_body, read_next, text);
            }
            // Refused, or still waiting for the end: hyper must not have served what follows.
            _ => prop_assert!(!read_next, "hyper read a request the guard would not: {:?}", text),
        }
    }
}
