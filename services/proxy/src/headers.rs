//! Hop-by-hop header removal, the `x-forwarded-*` headers and whose of them to trust.

use std::io::Write as _;
use std::net::IpAddr;

use bytes::{BufMut as _, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::Authority;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// Headers that only make sense on one connection, removed in both directions (besides
/// `connection` itself and whatever it names). `trailer` is not one of them: it declares the
/// trailer fields of the message and goes end to end with them (RFC 9110 §6.6.2).
static HOP_BY_HOP: [&HeaderName; 7] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &TE,
    &TRANSFER_ENCODING,
    &UPGRADE,
];

/// Which way a message is going; requests may keep `te: trailers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

/// Removes hop-by-hop headers: `connection` and every header it names, `keep-alive`,
/// `proxy-connection`, `proxy-authenticate`, `proxy-authorization`, `te`, `transfer-encoding`
/// and `upgrade`. `trailer` stays (it is end-to-end).
///
/// A message that had `transfer-encoding` also loses `content-length` (RFC 9112 §6.3: the
/// transfer coding wins, and hyper decoded the body by it). Passed on, the length would frame
/// a body it does not describe.
///
/// A request whose `te` lists `trailers` goes on with exactly `te: trailers`, even when
/// `connection` names `te` (as RFC 9110 §10.1.4 asks of HTTP/1.1 senders): the client accepts
/// trailers, gRPC needs that said end to end, and HTTP/2 allows no other value. Other transfer
/// codings it accepts are this hop's business. `connection` cannot remove `host` or
/// `x-request-id`.
#[inline]
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, direction: Direction) {
    // One pass over the names present (no hashing): which hop-by-hop headers are there?
    // Most requests carry none, and then nothing else is done.
    let mut present = 0u16;
    for name in headers.keys() {
        if name == CONNECTION {
            present |= 1 << HOP_BY_HOP.len();
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    const TE_BIT: u16 = 1 << 4;
    debug_assert!(*HOP_BY_HOP[4] == TE);
    let te_trailers =
        direction == Direction::Request && present & TE_BIT != 0 && accepts_trailers(headers);

    if present & (1 << HOP_BY_HOP.len()) != 0 {
        let mut values = headers.get_all(CONNECTION).iter();
        match (values.next(), values.next()) {
            (None, _) => {}
            // Nearly every `connection` header says just that: nothing more to remove.
            (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") => {}
            (Some(value), None) => {
                let value = value.clone();
                remove_listed(headers, &value);
            }
            (Some(_), Some(_)) => {
                let all: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
                for value in &all {
                    remove_listed(headers, value);
                }
            }
        }
        headers.remove(CONNECTION);
    }

    const TRANSFER_ENCODING_BIT: u16 = 1 << 5;
    debug_assert!(*HOP_BY_HOP[5] == TRANSFER_ENCODING);
    if present & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(CONTENT_LENGTH);
    }

    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if te_trailers {
        headers.insert(TE, TRAILERS.clone());
    }
}

fn remove_listed(headers: &mut HeaderMap, value: &HeaderValue) {
    let Ok(value) = value.to_str() else { return };
    for name in value.split(',') {
        let name = name.trim();
        if name.is_empty()
            || name.eq_ignore_ascii_case(HOST.as_str())
            || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
            // Removed with the other hop-by-hop headers anyway (its bit in `present`). The
            // option nearly every `connection` header carries: no name to parse and look up.
            || name.eq_ignore_ascii_case(KEEP_ALIVE.as_str())
        {
            continue;
        }
        // `close` is an option, not a header name; removing it is harmless.
        headers.remove(name);
    }
}

/// Whether a `te` value lists `trailers` (RFC 9110 §10.1.4: a comma-separated list).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(TE).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// Sets the forwarding headers of a request and gives a request without `host` (HTTP/2) one
/// from its URI authority. `host` itself is never changed.
///
/// From a `trusted` peer (a proxy in front of this one), `peer` is appended to
/// `x-forwarded-for`, and the proxy's own `x-forwarded-proto` and `x-forwarded-host` are kept
/// (set when missing). From any other peer, every incoming `x-forwarded-*`, `forwarded` and
/// `x-real-ip` (also spelt with `_`) is removed first, so `x-forwarded-for` is exactly `peer`,
/// and `x-forwarded-proto` and `x-forwarded-host` are this connection's.
#[inline]
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    peer: IpAddr,
    tls: bool,
    trusted: bool,
) {
    if !trusted {
        remove_spoofable(headers);
    }
    append_forwarded_for(headers, peer.to_canonical());
    let proto = if tls { &HTTPS } else { &HTTP };
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, proto.clone());
    }
    let host = match headers.get(HOST) {
        Some(host) => Some(host.clone()),
        None => {
            let host = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = &host {
                headers.insert(HOST, host.clone());
            }
            host
        }
    };
    if trusted && headers.contains_key(&X_FORWARDED_HOST) {
        return;
    }
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host),
        // Nothing to report: do not pass on what the client claimed.
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Names that say who the client is or how it connected, as a client must not claim them:
/// compared with `_` read as `-` (hyper has already lower-cased them).
const SPOOFABLE: [&[u8]; 7] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"forwarded",
    b"x-real-ip",
];

/// Whether `name` is one of [`SPOOFABLE`], in any `-`/`_` spelling.
#[inline]
fn is_spoofable(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    // Cheap first: every one starts with `x` or `f` and is 9 to 18 bytes long.
    if !(9..=18).contains(&name.len()) || !matches!(name[0], b'x' | b'f') {
        return false;
    }
    SPOOFABLE.iter().any(|s| {
        s.len() == name.len()
            && s.iter()
                .zip(name)
                .all(|(a, b)| a == b || (*a == b'-' && *b == b'_'))
    })
}

/// Removes every [`SPOOFABLE`] header. Nothing is allocated unless one is present.
fn remove_spoofable(headers: &mut HeaderMap) {
    if !headers.keys().any(is_spoofable) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// `x-forwarded-for: <existing values, comma separated>, <peer>`, as one header line.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    // The longest IPv6 text is 45 bytes.
    let mut ip = [0u8; 48];
    let ip_len = format_ip(peer, &mut ip);
    let ip = &ip[..ip_len];

    let existing = headers.get_all(&X_FORWARDED_FOR);
    let mut len = 0;
    for value in existing.iter() {
        len += value.len() + 2;
    }
    let value = if len == 0 {
        HeaderValue::from_bytes(ip)
    } else {
        let mut buf = BytesMut::with_capacity(len + ip.len());
        for value in existing.iter() {
            let value = value.as_bytes().trim_ascii();
            if !value.is_empty() {
                buf.put_slice(value);
                buf.put_slice(b", ");
            }
        }
        buf.put_slice(ip);
        HeaderValue::from_maybe_shared(buf.freeze())
    };
    if let Ok(value) = value {
        headers.insert(&X_FORWARDED_FOR, value);
    }
}

/// Writes `ip` into `out` and returns the length. IPv4 (nearly every peer) is formatted by
/// hand: `core::fmt` costs about a thousand instructions per address.
fn format_ip(ip: IpAddr, out: &mut [u8; 48]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            let mut cursor = &mut out[..];
            let _ = write!(cursor, "{ip}");
            48 - cursor.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ips_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = [0u8; 48];
            let len = format_ip(ip, &mut out);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), ip.to_string());
        }
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("proxy-authorization", "basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "example.com"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, Direction::Request);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "trailer", "x-kept"]);
        assert_eq!(h.get("trailer").unwrap(), "x-checksum");
    }

    #[test]
    fn keep_alive_named_by_connection_goes_with_the_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h, Direction::Response);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn te_trailers_passes_on_requests_only() {
        let mut h = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut h, Direction::Request);
        assert_eq!(h.get("te").unwrap(), "trailers");
        remove_hop_by_hop(&mut h, Direction::Response);
        assert!(h.get("te").is_none());

        // Other codings are this hop's; the promise to accept trailers goes on.
        let mut h = map(&[("te", "gzip"), ("te", "deflate, Trailers;q=1")]);
        remove_hop_by_hop(&mut h, Direction::Request);
        assert!(h.get("te").is_none(), "a parameter makes it another token");
        let mut h = map(&[("connection", "TE"), ("te", "gzip, Trailers")]);
        remove_hop_by_hop(&mut h, Direction::Request);
        assert_eq!(h.get_all("te").iter().collect::<Vec<_>>(), ["trailers"]);
        assert!(h.get("connection").is_none());

        let mut h = map(&[("te", "gzip")]);
        remove_hop_by_hop(&mut h, Direction::Request);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", " 2.2.2.2 "),
            ("x-forwarded-proto", "gopher"),
        ]);
        set_forwarded(&mut h, None, "10.0.0.9".parse().unwrap(), true, true);
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "1.1.1.1, 2.2.2.2, 10.0.0.9"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        // The trusted proxy in front said how its client connected.
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "gopher");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
        assert_eq!(h.get("host").unwrap(), "example.com");
    }

    #[test]
    fn untrusted_peers_forwarding_headers_are_replaced_in_every_spelling() {
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x_forwarded_for", "2.2.2.2"),
            ("x-forwarded_for", "3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("x_forwarded_host", "evil.example"),
            ("x-forwarded-port", "443"),
            ("x_forwarded_prefix", "/admin"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("x_real_ip", "1.1.1.1"),
            ("x-forwarded-for-not", "kept"),
            ("xforwarded", "kept"),
        ]);
        set_forwarded(&mut h, None, "10.0.0.9".parse().unwrap(), false, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "x-forwarded-for",
                "x-forwarded-for-not",
                "x-forwarded-host",
                "x-forwarded-proto",
                "xforwarded"
            ]
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
    }

    #[test]
    fn transfer_encoding_wins_over_content_length() {
        let mut h = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, Direction::Response);
        assert!(h.get("content-length").is_none());
        assert!(h.get("transfer-encoding").is_none());
        let mut h = map(&[("content-length", "5")]);
        remove_hop_by_hop(&mut h, Direction::Response);
        assert_eq!(h.get("content-length").unwrap(), "5");
    }

    #[test]
    fn forwarded_for_h2_without_host() {
        let mut h = map(&[("x-forwarded-host", "spoofed")]);
        let authority = Authority::from_static("api.example:8443");
        set_forwarded(
            &mut h,
            Some(&authority),
            "::ffff:10.0.0.1".parse().unwrap(),
            false,
            false,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("host").unwrap(), "api.example:8443");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example:8443");

        let mut h = map(&[("x-forwarded-host", "spoofed")]);
        set_forwarded(&mut h, None, "2001:db8::1".parse().unwrap(), false, false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert!(h.get("x-forwarded-host").is_none());
    }
}
