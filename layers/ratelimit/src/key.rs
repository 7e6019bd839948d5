//! What a request is counted by, and how a key becomes a fixed-size hash.
//!
//! Every key is hashed before it is stored, so its size never matters: the local store keeps a
//! 64-bit hash (xxh3, seeded per store so clients cannot aim collisions), Redis a 128-bit one
//! (unseeded xxh3, the same on every instance of a fleet) as 32 hex digits.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, request};
use snakeway_core::{ClientAddr, RequestCtx};

/// A key another part of the application extracts from the request (the server reads the
/// request's attribute map with it for `attribute:NAME`). `None`: the request has no key.
pub type KeyFn = Arc<dyn Fn(&RequestCtx, &request::Parts) -> Option<String> + Send + Sync>;

/// What a request is counted by. A request without its key (no such header, cookie or
/// attribute, or a path under none of the device's routes for [`RateKey::Route`]) is not
/// limited.
#[derive(Clone)]
pub enum RateKey {
    /// The client's address: the identity device's [`ClientAddr`] when it ran earlier (past
    /// trusted proxies), else the peer's address.
    ClientIp,
    /// The first value of this request header.
    Header(HeaderName),
    /// The value of this cookie (the first one of that name).
    Cookie(String),
    /// The device's route prefix the path falls under: one budget per prefix, shared by every
    /// client (the device needs a non-empty route list).
    Route,
    /// A key computed by `KeyFn`.
    Custom(KeyFn),
}

// === impl RateKey ===

impl RateKey {
    /// Calls `f` with the request's key bytes (`route` is the matched route prefix, for
    /// [`RateKey::Route`]); `None` when the request has no key. Borrows from the request where
    /// it can: no allocation for a header or cookie key.
    pub(crate) fn with_bytes<R>(
        &self,
        ctx: &RequestCtx,
        req: &request::Parts,
        route: Option<&str>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        match self {
            Self::ClientIp => {
                let ip = req
                    .extensions
                    .get::<ClientAddr>()
                    .map_or_else(|| ctx.peer().ip(), |c| c.0);
                Some(match ip.to_canonical() {
                    IpAddr::V4(v4) => f(&v4.octets()),
                    IpAddr::V6(v6) => f(&v6.octets()),
                })
            }
            Self::Header(name) => req.headers.get(name).map(|v| f(v.as_bytes())),
            Self::Cookie(name) => cookie(req, name).map(f),
            Self::Route => route.map(|r| f(r.as_bytes())),
            Self::Custom(extract) => extract(ctx, req).map(|k| f(k.as_bytes())),
        }
    }
}

impl fmt::Debug for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("ClientIp"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Cookie(name) => f.debug_tuple("Cookie").field(name).finish(),
            Self::Route => f.write_str("Route"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The value of cookie `name` in the request's `cookie` headers (RFC 6265 `name=value` pairs
/// separated by `;`), the first one wins.
fn cookie<'a>(req: &'a request::Parts, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            (pair[..at].trim_ascii() == name.as_bytes()).then(|| pair[at + 1..].trim_ascii())
        })
}

/// The key's 64-bit hash for the local store.
#[inline]
pub(crate) fn local_hash(seed: u64, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

/// The key's name in Redis: `prefix` then the key's 128-bit hash in hex.
pub(crate) fn redis_key(prefix: &str, key: &[u8]) -> String {
    let hash = xxhash_rust::xxh3::xxh3_128(key);
    format!("{prefix}{hash:032x}")
}

/// Whether `path` is under the route prefix `prefix`, on a segment boundary (as routes match:
/// `/api` matches `/api` and `/api/x`, not `/apix`).
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri("/x");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn cookies_are_found_among_pairs_and_headers() {
        let req = parts(&[
            ("cookie", "a=1; session = s1 ;b=2"),
            ("cookie", "session=s2"),
        ]);
        assert_eq!(cookie(&req, "session"), Some(&b"s1"[..]));
        assert_eq!(cookie(&req, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&req, "sess"), None);
        assert_eq!(cookie(&parts(&[("cookie", "novalue;x")]), "x"), None);
    }

    #[test]
    fn route_prefixes_match_on_segment_boundaries() {
        assert!(under("/api", "/api"));
        assert!(under("/api/x", "/api"));
        assert!(!under("/apix", "/api"));
        assert!(under("/anything", "/"));
        assert!(under("/api/x", "/api/"));
    }

    #[test]
    fn keys_hash_to_fixed_sizes() {
        let long = vec![b'k'; 100_000];
        assert_eq!(redis_key("p:", &long).len(), 2 + 32);
        assert_eq!(
            redis_key("p:", b"a"),
            redis_key("p:", b"a"),
            "stable across calls"
        );
        assert_ne!(local_hash(1, b"a"), local_hash(2, b"a"), "seeded");
    }
}
