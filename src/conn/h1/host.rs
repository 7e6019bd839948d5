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
        // One pass: a reg-name never holds `:`, so the first one starts the port.
        match value.iter().position(|&b| !REG_NAME[usize::from(b)]) {
            None => return !value.is_empty(),
            Some(0) if value[0] == b':' => return false,
            Some(at) if value[at] == b':' => &value[at + 1..],
            Some(at) => {
                let (host, port) = match value[at..].iter().position(|&b| b == b':') {
                    Some(colon) => value.split_at(at + colon),
                    None => (value, &b""[..]),
                };
                if !is_reg_name(host) {
                    return false;
                }
                port.strip_prefix(b":").unwrap_or(port)
            }
        }
    };
    port.len() <= MAX_PORT_DIGITS && port.iter().all(u8::is_ascii_digit)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &[u8]) -> bool {
    // The common case, without `%`: one table lookup per byte.
    if name.iter().all(|&b| REG_NAME[usize::from(b)]) {
        return true;
    }
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let hex = name.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else if REG_NAME[usize::from(name[i])] {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// The bytes of a reg-name other than `%`: unreserved and sub-delims.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(
            b as u8,
            b'a'..=b'z'
                | b'A'..=b'Z'
                | b'0'..=b'9'
                | b'-'
                | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests;
