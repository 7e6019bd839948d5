//! `x-request-id`: keep a well-formed one sent by the client, otherwise generate one.
//!
//! A generated id is 32 lowercase hex digits: 64 random bits chosen once per process followed
//! by a 64-bit counter scrambled through a bijection, so ids are unique within a process,
//! unpredictable across processes, and cost one atomic increment and no syscall.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `x-request-id` header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied request id that is kept.
pub const MAX_LEN: usize = 128;

/// Whether `value` is acceptable as a client-supplied request id: 1 to 128 visible ASCII
/// characters.
pub fn is_well_formed(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Returns the request's id, generating one (and storing it in `headers`) when the client sent
/// none or a malformed one. Repeated headers are collapsed to the one kept.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(first), None) = (values.next(), values.next())
        && is_well_formed(first)
    {
        return first.clone();
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// A fresh request id.
pub fn generate() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (prefix, key) = *process_seed();
    let mut buf = [0u8; 32];
    write_hex(&mut buf[..16], prefix);
    write_hex(&mut buf[16..], scramble(n ^ key));
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

fn process_seed() -> &'static (u64, u64) {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // `RandomState` is seeded from the OS's random source once per process.
        let state = std::collections::hash_map::RandomState::new();
        let mut a = state.build_hasher();
        a.write_u64(u64::from(std::process::id()));
        let mut b = state.build_hasher();
        b.write_u64(a.finish());
        (a.finish(), b.finish())
    })
}

/// splitmix64's finalizer: a bijection on u64, so distinct counters give distinct ids.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn write_hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_well_formed_id() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure(&mut headers), "abc-123");
    }

    #[test]
    fn replaces_malformed_or_repeated_ids() {
        for bad in ["", "has space", &"x".repeat(129)] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = ensure(&mut headers);
            assert_eq!(id.len(), 32, "{bad:?} should be replaced");
            assert_eq!(headers.get(&X_REQUEST_ID), Some(&id));
        }
        let mut headers = HeaderMap::new();
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = ensure(&mut headers);
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);
        assert_eq!(id.len(), 32);
    }

    #[test]
    fn generated_ids_are_unique_hex() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.as_bytes().iter().all(u8::is_ascii_hexdigit))
        );
    }
}
