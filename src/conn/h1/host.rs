//! The `Host` syntax of RFC 9112 §3.2: `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3).

/// Longest accepted port: five digits (65535).
const MAX_PORT_DIGITS: usize = 5;

/// Whether `value` (without surrounding whitespace) is `uri-host [ ":" port ]`, with a
/// non-empty host: a reg-name (which covers IPv4 addresses) or an IPv6 literal in brackets.
///
/// Userinfo (`a@b`), whitespace, and anything outside the reg-name alphabet are refused; so are
/// IPvFuture literals (`[v1.x]`), which nothing routes on. Allocation-free.
pub(crate) fn is_valid(value: &[u8]) -> bool {
    let port = if let [b'[', rest @ ..] = value {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..close]);
        if !literal.is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()) {
            return false;
        }
        match &rest[close + 1..] {
            [] => return true,
            [b':', port @ ..] => port,
            _ => return false,
        }
    } else {
        let (host, port) = match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &[][..]),
        };
        if host.is_empty() || !is_reg_name(host) {
            return false;
        }
        port
    };
    port.len() <= MAX_PORT_DIGITS && port.iter().all(u8::is_ascii_digit)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 2;
            }
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests;
