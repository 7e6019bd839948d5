//! Resolving the client address from the peer and `x-forwarded-for`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;
use snakeway_core::TrustedProxies;

/// `x-forwarded-for`, as a static name (no lookup cost per request).
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Resolves the client address and the trusted proxies between it and us (nearest first).
///
/// The rules, in full (they are the crate docs' too):
///
/// * An untrusted peer *is* the client: `x-forwarded-for` is not looked at, so a client can
///   never spoof its address through an untrusted hop.
/// * A trusted peer's `x-forwarded-for` (every header line, in order, each a comma list) is
///   walked right to left. Each trusted address is passed over and recorded in the chain;
///   the first untrusted address is the client.
/// * When every address is trusted, the leftmost one is the client.
/// * An entry that does not parse as an IP address (empty, `unknown`, an obfuscated RFC 7239
///   identifier, non-ASCII bytes, ...) stops the walk: the client is the last address known
///   good, i.e. the trusted hop that reported the garbage. That address is not a member of
///   the chain.
///
/// Entries may carry a port (`192.0.2.1:1234`, `[2001:db8::1]:443`), which is ignored.
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are treated as the IPv4 address they map,
/// both for the peer and for the entries.
pub(crate) fn resolve(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> (IpAddr, Vec<IpAddr>) {
    let peer = peer.ip().to_canonical();
    let mut client = peer;
    let mut chain = Vec::new();
    if !reads_forwarded(peer, trusted) {
        return (client, chain);
    }
    'walk: for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|b| *b == b',') {
            let Some(hop) = parse_entry(entry) else {
                break 'walk;
            };
            // `client` was trusted (or we would have stopped): it is a proxy in the chain.
            chain.push(client);
            client = hop;
            if !trusted.contains(hop) {
                break 'walk;
            }
        }
    }
    (client, chain)
}

/// Whether `x-forwarded-for` is read for a request from `peer` (canonical): only from a
/// trusted peer.
#[inline]
pub(crate) fn reads_forwarded(peer: IpAddr, trusted: &TrustedProxies) -> bool {
    !trusted.is_empty() && trusted.contains(peer)
}

/// One `x-forwarded-for` entry: an IP address, optionally with a port, surrounding
/// whitespace ignored.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Some(rest) = entry.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
            return None;
        }
        IpAddr::V6(addr.parse().ok()?)
    } else {
        // `v4:port`
        let (addr, port) = entry.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(addr.parse().ok()?)
    };
    Some(ip.to_canonical())
}

fn is_port(s: &str) -> bool {
    s.parse::<u16>().is_ok() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new([
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ])
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// (case, peer, x-forwarded-for lines, expected client, expected chain nearest first)
    #[allow(clippy::type_complexity)]
    const TABLE: &[(&str, &str, &[&[u8]], &str, &[&str])] = &[
        (
            "untrusted peer, no header",
            "203.0.113.9:5000",
            &[],
            "203.0.113.9",
            &[],
        ),
        (
            "untrusted peer with spoofed header",
            "203.0.113.9:5000",
            &[b"1.1.1.1, 10.0.0.2"],
            "203.0.113.9",
            &[],
        ),
        (
            "trusted peer, no header",
            "10.0.0.1:5000",
            &[],
            "10.0.0.1",
            &[],
        ),
        (
            "trusted peer, one client",
            "10.0.0.1:5000",
            &[b"198.51.100.7"],
            "198.51.100.7",
            &["10.0.0.1"],
        ),
        (
            "trusted peer, last untrusted wins over spoofed left entries",
            "10.0.0.1:5000",
            &[b"6.6.6.6, 198.51.100.7, 10.0.0.3,192.168.1.1"],
            "198.51.100.7",
            &["10.0.0.1", "192.168.1.1", "10.0.0.3"],
        ),
        (
            "all trusted: the leftmost",
            "10.0.0.1:5000",
            &[b"10.9.9.9, 10.0.0.2"],
            "10.9.9.9",
            &["10.0.0.1", "10.0.0.2"],
        ),
        (
            "ipv6 peer and entries",
            "[fd00::1]:443",
            &[b"2001:db8::7, fd00::2"],
            "2001:db8::7",
            &["fd00::1", "fd00::2"],
        ),
        (
            "ipv4-mapped peer and entries are ipv4",
            "[::ffff:10.0.0.1]:443",
            &[b"::ffff:198.51.100.7"],
            "198.51.100.7",
            &["10.0.0.1"],
        ),
        (
            "untrusted ipv6 peer",
            "[2001:db8::1]:443",
            &[b"198.51.100.7"],
            "2001:db8::1",
            &[],
        ),
        (
            "multiple header lines are one list, in order",
            "10.0.0.1:5000",
            &[b"198.51.100.7, 10.0.0.4", b"10.0.0.3", b"10.0.0.2"],
            "198.51.100.7",
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
        ),
        (
            "multiple lines: stops at the first untrusted from the right",
            "10.0.0.1:5000",
            &[b"6.6.6.6", b"198.51.100.7"],
            "198.51.100.7",
            &["10.0.0.1"],
        ),
        (
            "ports are ignored",
            "10.0.0.1:5000",
            &[b"[2001:db8::9]:1234, 10.0.0.2:8080"],
            "2001:db8::9",
            &["10.0.0.1", "10.0.0.2"],
        ),
        (
            "garbage right away: the peer",
            "10.0.0.1:5000",
            &[b"not-an-ip"],
            "10.0.0.1",
            &[],
        ),
        (
            "garbage after trusted hops: the last trusted hop",
            "10.0.0.1:5000",
            &[b"198.51.100.7, unknown, 10.0.0.2"],
            "10.0.0.2",
            &["10.0.0.1"],
        ),
        (
            "empty entry stops the walk",
            "10.0.0.1:5000",
            &[b"198.51.100.7,, 10.0.0.2"],
            "10.0.0.2",
            &["10.0.0.1"],
        ),
        (
            "garbage left of the client is never reached",
            "10.0.0.1:5000",
            &[b"<script>, 198.51.100.7"],
            "198.51.100.7",
            &["10.0.0.1"],
        ),
        (
            "non-utf8 bytes stop the walk",
            "10.0.0.1:5000",
            &[b"198.51.100.7, \xff\xfe"],
            "10.0.0.1",
            &[],
        ),
        (
            "bad port stops the walk",
            "10.0.0.1:5000",
            &[b"198.51.100.7:99999"],
            "10.0.0.1",
            &[],
        ),
        (
            "rfc 7239 syntax is not x-forwarded-for",
            "10.0.0.1:5000",
            &[b"for=198.51.100.7"],
            "10.0.0.1",
            &[],
        ),
        (
            "an empty header line stops the walk",
            "10.0.0.1:5000",
            &[b"198.51.100.7", b""],
            "10.0.0.1",
            &[],
        ),
    ];

    #[test]
    fn xff_walk_table() {
        let trusted = trusted();
        for (case, peer, lines, client, chain) in TABLE {
            let mut headers = HeaderMap::new();
            for line in *lines {
                headers.append(&X_FORWARDED_FOR, HeaderValue::from_bytes(line).unwrap());
            }
            headers.append("x-other", HeaderValue::from_static("1.2.3.4"));
            let (got_client, got_chain) = resolve(peer.parse().unwrap(), &headers, &trusted);
            assert_eq!(
                got_client,
                client.parse::<IpAddr>().unwrap(),
                "{case}: client"
            );
            assert_eq!(got_chain, ips(chain), "{case}: chain");
        }
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        let (client, chain) = resolve(
            "10.0.0.1:1".parse().unwrap(),
            &headers,
            &TrustedProxies::default(),
        );
        assert_eq!(client, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(chain.is_empty());
    }

    #[test]
    fn trusted_nets_are_truncated_and_split_by_family() {
        // A host address with a prefix (10.1.2.3/8) means the network 10.0.0.0/8.
        let trusted = TrustedProxies::new(["10.1.2.3/8".parse().unwrap()]);
        assert!(trusted.contains("10.200.0.1".parse().unwrap()));
        assert!(!trusted.contains("11.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("::a00:1".parse().unwrap()));
    }

    #[test]
    fn entries() {
        let ok = |s: &str, ip: &str| assert_eq!(parse_entry(s.as_bytes()), ip.parse().ok(), "{s}");
        ok(" 1.2.3.4\t", "1.2.3.4");
        ok("1.2.3.4:80", "1.2.3.4");
        ok("::1", "::1");
        ok("[::1]", "::1");
        ok("[::1]:443", "::1");
        let bad = |s: &str| assert_eq!(parse_entry(s.as_bytes()), None, "{s}");
        bad("");
        bad("unknown");
        bad("1.2.3.4:");
        bad("1.2.3.4:+80");
        bad("[::1]x");
        bad("[::1]:");
        bad("[1.2.3.4]");
        bad("::1:80:x");
        bad("1.2.3");
        bad("_hidden");
    }
}
