//! Fuzzes the guard's request-head parser: no panics, and what it accepts is consistent.
//!
//! The guard's sources are compiled here on their own (`#[path]`), so the fuzz build needs
//! neither the server nor its dependencies.

#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../src/conn/h1/mod.rs"]
mod h1;

use h1::head::{self, BodyFraming, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, buf)) = data.split_first() else {
        return;
    };
    // The guard parses from the first byte after any empty lines (`h1_stream` covers those).
    if buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
        return;
    }
    let max_head = 64 + usize::from(limit) * 32;
    match head::parse(buf, max_head) {
        Parsed::Complete(h) => {
            assert!(h.len <= buf.len() && h.len <= max_head);
            // The guard's own search finds the same end, from scratch and resumed anywhere.
            assert_eq!(
                head::find_end(buf, 0),
                Ok(h.len),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            for from in [1, h.len / 2, h.len.saturating_sub(3)] {
                if let Err(next) = head::find_end(&buf[..from.min(h.len)], 0) {
                    assert_eq!(head::find_end(buf, next), Ok(h.len));
                }
            }
            if let Some(host) = h.host {
                assert!(h1::host::is_valid(host), "{host:?}");
            } else {
                assert_eq!(h.minor, 0, "HTTP/1.1 without a host was accepted");
            }
            if h.body == BodyFraming::Chunked {
                assert_eq!(h.minor, 1);
            }
            assert!(h.target.starts_with('/') || h.target == "*" || h.host.is_some());
        }
        Parsed::Partial => assert!(buf.len() <= max_head),
        Parsed::Invalid(v, _) => assert!(v.status == 400 || v.status == 431),
    }
});
