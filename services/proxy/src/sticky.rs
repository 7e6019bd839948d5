//! `sticky_hash`: the request key that is hashed, and the consistent hash ring that maps a hash
//! to an upstream.
//!
//! The ring is Envoy's ring hash (Karger et al.'s consistent hashing with virtual nodes): each
//! upstream owns points on a 64-bit circle, as many as its share of the weight, placed by
//! hashing its URL and the point's number; a key goes to the owner of the first point at or
//! after its hash. Points depend only on the upstream's own URL, so removing an upstream (by a
//! reload) hands its arcs to its neighbours and leaves every other key where it was; an upstream
//! whose circuit is open or which fails its health checks is walked past the same way, for as
//! long as it is out. Both hashes are xxHash64 with seed 0, as in Envoy: every Snakeway of a
//! fleet, and every version, sends a key to the same upstream given the same upstream list.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use xxhash_rust::xxh64::xxh64;

use crate::balance::Refused;

/// What `sticky_hash` hashes to pick an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StickyKey {
    /// The client's address: the [`ClientAddr`](snakeway_core::ClientAddr) a device resolved
    /// (the identity device, past trusted proxies), else the connection's peer address.
    ClientIp,
    /// The first value of a request header.
    Header(HeaderName),
    /// The value of a request cookie (the first cookie of that name).
    Cookie(Box<str>),
}

// === impl StickyKey ===

impl StickyKey {
    /// The hash of this key in a request with `headers` from the client at `client`, or `None`
    /// when the request does not carry the key (absent or empty header or cookie).
    pub(crate) fn hash(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self {
            Self::ClientIp => Some(match client.to_canonical() {
                IpAddr::V4(ip) => xxh64(&ip.octets(), 0),
                IpAddr::V6(ip) => xxh64(&ip.octets(), 0),
            }),
            Self::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map(|v| xxh64(v, 0)),
            Self::Cookie(name) => cookie(headers, name).map(|v| xxh64(v, 0)),
        }
    }
}

/// The value of the first non-empty cookie `name` in the request's `cookie` fields (HTTP/2
/// clients may send several), without parsing more than it has to.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|field| field.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (key, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            (key == name.as_bytes() && !value.is_empty()).then_some(value)
        })
}

/// Points per unit of weight (ketama's 160): an upstream's points depend on its own weight
/// only, so adding or removing another upstream leaves them where they are. With 160 points
/// each, upstreams of equal weight get shares within a few percent of each other.
const POINTS_PER_WEIGHT: u64 = 160;
/// The ceiling of the ring (2 MiB of points). Only weights summing over 819 reach it; then
/// every upstream's points are scaled down alike, at least one each.
const MAX_POINTS: u64 = 1 << 17;

/// The consistent hash ring of a service: points sorted by hash, each naming its upstream.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[Point]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    upstream: u32,
}

// === impl Ring ===

impl Ring {
    /// The ring of upstreams named `ids` (their URLs, stable across reloads), with `weights`
    /// (at least 1 each): [`POINTS_PER_WEIGHT`] points per unit of weight, scaled down alike
    /// when that would pass [`MAX_POINTS`]; every upstream gets at least one point.
    pub(crate) fn new<'a>(ids: impl ExactSizeIterator<Item = &'a str>, weights: &[u32]) -> Self {
        let n = ids.len();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let wanted = total.saturating_mul(POINTS_PER_WEIGHT);
        let points_of = |weight: u32| {
            if wanted <= MAX_POINTS {
                u64::from(weight) * POINTS_PER_WEIGHT
            } else {
                (u64::from(weight) * MAX_POINTS / total).max(1)
            }
        };
        let mut points = Vec::with_capacity(wanted.min(MAX_POINTS) as usize + n);
        let mut seen: Vec<&str> = Vec::with_capacity(n);
        for (upstream, (id, &weight)) in ids.zip(weights).enumerate() {
            // The same URL listed twice gets points of its own for each listing.
            let repeat = seen.iter().filter(|&&s| s == id).count();
            seen.push(id);
            let count = points_of(weight);
            for replica in 0..count {
                let name = if repeat == 0 {
                    format!("{id}_{replica}")
                } else {
                    format!("{id}#{repeat}_{replica}")
                };
                points.push(Point {
                    hash: xxh64(name.as_bytes(), 0),
                    upstream: upstream as u32,
                });
            }
        }
        points.sort_unstable();
        Self {
            points: points.into_boxed_slice(),
        }
    }

    /// The owner of the first point at or after `hash` for which `admit` returns `Some`,
    /// walking clockwise past refusing upstreams; `None` when all of the `upstreams` refuse.
    /// `admit` is asked at most once per upstream.
    pub(crate) fn pick<T>(
        &self,
        hash: u64,
        upstreams: usize,
        mut admit: impl FnMut(usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        let len = self.points.len();
        let start = self.points.partition_point(|p| p.hash < hash);
        let mut refused = Refused::new(upstreams);
        for k in 0..len {
            let i = self.points[(start + k) % len].upstream as usize;
            if refused.contains(i) {
                continue;
            }
            if let Some(t) = admit(i) {
                return Some((i, t));
            }
            if refused.insert(i) == upstreams {
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http::HeaderValue;

    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8080")).collect()
    }

    fn ring(ids: &[String], weights: &[u32]) -> Ring {
        Ring::new(ids.iter().map(String::as_str), weights)
    }

    /// Where each of `keys` users goes, with every upstream admitted.
    fn owners(ring: &Ring, upstreams: usize, keys: u64) -> Vec<usize> {
        (0..keys)
            .map(|k| {
                ring.pick(xxh64(&k.to_le_bytes(), 0), upstreams, Some)
                    .unwrap()
                    .0
            })
            .collect()
    }

    #[test]
    fn spreads_keys_by_weight() {
        let ids = urls(3);
        let seen = owners(&ring(&ids, &[1, 1, 1]), 3, 30_000);
        for u in 0..3 {
            let n = seen.iter().filter(|&&o| o == u).count();
            assert!((8_000..12_000).contains(&n), "upstream {u}: {n} of 30000");
        }
        let seen = owners(&ring(&ids[..2], &[3, 1]), 2, 20_000);
        let heavy = seen.iter().filter(|&&o| o == 0).count();
        assert!(
            (13_500..16_500).contains(&heavy),
            "{heavy} of 20000 at weight 3:1"
        );
    }

    #[test]
    fn removing_an_upstream_moves_only_its_keys() {
        let ids = urls(3);
        let before = owners(&ring(&ids, &[1, 1, 1]), 3, 10_000);
        // Upstream 1 removed: 0 stays 0, 2 becomes index 1.
        let rest = [ids[0].clone(), ids[2].clone()];
        let after = owners(&ring(&rest, &[1, 1]), 2, 10_000);
        for (b, a) in before.iter().zip(&after) {
            match b {
                0 => assert_eq!(*a, 0),
                2 => assert_eq!(*a, 1),
                _ => {}
            }
        }
    }

    #[test]
    fn a_refusing_upstream_moves_only_its_keys() {
        let ids = urls(4);
        let r = ring(&ids, &[1, 1, 1, 1]);
        let before = owners(&r, 4, 10_000);
        let mut moved = [0; 4];
        for (k, &b) in before.iter().enumerate() {
            let hash = xxh64(&(k as u64).to_le_bytes(), 0);
            let (a, ()) = r.pick(hash, 4, |i| (i != 3).then_some(())).unwrap();
            if b == 3 {
                moved[a] += 1;
            } else {
                assert_eq!(a, b, "key {k} moved though its upstream is up");
            }
        }
        // The lost upstream's keys spread over the others (not all onto one neighbour).
        assert!(moved[..3].iter().all(|&m| m > 300), "{moved:?}");
        assert!(r.pick(1, 4, |_| None::<()>).is_none());
    }

    #[test]
    fn every_upstream_gets_a_point() {
        let ids = urls(2);
        let r = ring(&ids, &[u32::MAX, 1]);
        assert!(r.points.iter().any(|p| p.upstream == 1));
        let many = urls(100);
        let r = ring(&many, &vec![1; 100]);
        assert_eq!(r.pick(7, 100, |i| (i == 99).then_some(i)), Some((99, 99)));
    }

    #[test]
    fn keys_come_from_the_request() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mut headers = HeaderMap::new();
        assert!(StickyKey::ClientIp.hash(&headers, ip).is_some());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            StickyKey::ClientIp.hash(&headers, mapped),
            StickyKey::ClientIp.hash(&headers, ip),
            "an IPv4-mapped address is the IPv4 client"
        );

        let header = StickyKey::Header(HeaderName::from_static("x-user"));
        assert_eq!(header.hash(&headers, ip), None);
        headers.insert("x-user", HeaderValue::from_static(""));
        assert_eq!(header.hash(&headers, ip), None, "empty is absent");
        headers.insert("x-user", HeaderValue::from_static("alice"));
        assert_eq!(header.hash(&headers, ip), Some(xxh64(b"alice", 0)));

        let sid = StickyKey::Cookie("sid".into());
        assert_eq!(sid.hash(&headers, ip), None);
        headers.append(COOKIE, HeaderValue::from_static("theme=dark; xsid=1; sid="));
        assert_eq!(sid.hash(&headers, ip), None, "empty and look-alike names");
        headers.append(COOKIE, HeaderValue::from_static("a=b;sid = s42 ;c=d"));
        assert_eq!(sid.hash(&headers, ip), Some(xxh64(b"s42", 0)));
    }
}
