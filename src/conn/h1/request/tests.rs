use super::{Rx, RxState, Scan};

/// Feeds `raw` to a tracker `step` bytes at a time, holding what it holds as `StrictH1` does;
/// returns the released bytes.
fn trickle(rx: &mut Rx, raw: &[u8], step: usize) -> Vec<u8> {
    let mut held = Vec::new();
    let mut released = Vec::new();
    for piece in raw.chunks(step) {
        held.extend_from_slice(piece);
        let (n, scan) = rx.scan(&held);
        assert!(!matches!(scan, Scan::Refused(_)), "{scan:?}");
        released.extend_from_slice(&held[..n]);
        held.drain(..n);
    }
    assert!(held.is_empty());
    released
}

#[test]
fn a_trickled_head_is_parsed_at_most_twice() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..90 {
        raw.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut rx = Rx::new(64 * 1024);
    assert_eq!(trickle(&mut rx, &raw, 1), raw);
    // Once on arrival (a head read whole is parsed right away), once complete.
    assert_eq!(
        rx.parses, 2,
        "a head is parsed at most twice, however it arrives"
    );
    assert_eq!(rx.state, RxState::Head);
    assert_eq!(rx.pending.len(), 1);
}

#[test]
fn heads_and_bodies_in_any_pieces() {
    let mut raw = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
    raw.extend_from_slice(
        b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    raw.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n");
    for step in [1, 2, 3, 7, 64, raw.len()] {
        let mut rx = Rx::new(4096);
        assert_eq!(trickle(&mut rx, &raw, step), raw, "step {step}");
        assert!(
            (3..=6).contains(&rx.parses),
            "step {step}: {} parses",
            rx.parses
        );
        assert_eq!(rx.pending.len(), 3);
    }
}

#[test]
fn a_head_that_never_ends_is_refused_at_the_limit() {
    let mut rx = Rx::new(100);
    let mut held = b"GET / HTTP/1.1\r\n".to_vec();
    let mut refused = None;
    for _ in 0..20 {
        held.extend_from_slice(b"X-A: b\r\n");
        match rx.scan(&held) {
            (0, Scan::Hold) => {}
            (0, Scan::Refused(r)) => {
                refused = Some(r);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let refused = refused.expect("refused at the limit");
    assert_eq!(refused.violation.status, 431);
    assert!(held.len() <= 100 + 8);
}

#[test]
fn the_h2c_preface_is_a_refused_head() {
    // HTTP/2 is told apart before the guard: here the preface is a head with version 2.0.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for step in [1, 5, 12, preface.len()] {
        let mut rx = Rx::new(4096);
        let mut held = Vec::new();
        let mut refused = None;
        for piece in preface.chunks(step) {
            held.extend_from_slice(piece);
            match rx.scan(&held) {
                (0, Scan::Hold) => {}
                (0, Scan::Refused(r)) => {
                    refused = Some(r);
                    break;
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
        let refused = refused.unwrap_or_else(|| panic!("step {step}: not refused"));
        assert_eq!(refused.violation.status, 400);
        assert_eq!(refused.violation.reason, "unsupported HTTP version");
        assert_eq!(rx.state, RxState::Head, "step {step}");
        assert!(rx.pending.is_empty());
    }
}
