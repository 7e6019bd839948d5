//! JSON written straight into a byte buffer: strings escaped as `serde_json` escapes them,
//! numbers through `itoa` and `zmij` (as `serde_json` formats them), no intermediate values.

use std::fmt;
use std::net::SocketAddr;

/// What a byte becomes inside a JSON string: 0 (itself), a one-letter escape, or `u` (`\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` escaped for the inside of a JSON string (no quotes).
pub(crate) fn escape(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let kind = ESCAPE[b as usize];
        if kind == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if kind == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(kind);
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends `s` as a JSON string.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape(out, s);
    out.push(b'"');
}

/// Appends `bytes` escaped for the inside of a JSON string, each invalid UTF-8 sequence replaced
/// by U+FFFD as `String::from_utf8_lossy` replaces it (without its copy).
pub(crate) fn escape_lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    // Valid UTF-8 (almost every request id and header value) skips the chunking.
    if let Ok(s) = std::str::from_utf8(bytes) {
        return escape(out, s);
    }
    for chunk in bytes.utf8_chunks() {
        escape(out, chunk.valid());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(
                char::REPLACEMENT_CHARACTER
                    .encode_utf8(&mut [0; 4])
                    .as_bytes(),
            );
        }
    }
}

/// Appends `bytes` as a JSON string, invalid UTF-8 replaced (see [`escape_lossy`]).
pub(crate) fn string_lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    escape_lossy(out, bytes);
    out.push(b'"');
}

/// Appends what `value` displays as a JSON string, escaped as it is formatted.
pub(crate) fn display(out: &mut Vec<u8>, value: &impl fmt::Display) {
    out.push(b'"');
    // Writing into a `Vec` cannot fail; a `Display` impl that fails leaves what it wrote.
    let _ = fmt::write(&mut Escaping(out), format_args!("{value}"));
    out.push(b'"');
}

/// Appends a socket address as a JSON string, as it displays: `a.b.c.d:port` written digit by
/// digit (the formatting machinery costs more than the rest of a line), IPv6 through `Display`.
pub(crate) fn socket_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push(b'"');
            let [a, b, c, d] = v4.ip().octets();
            let mut digits = itoa::Buffer::new();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(digits.format(v4.port()).as_bytes());
            out.push(b'"');
        }
        SocketAddr::V6(_) => display(out, addr),
    }
}

/// Appends an unsigned integer.
pub(crate) fn u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a finite float as `serde_json` does (`zmij`'s shortest form, `1.0` not `1`); a
/// non-finite one as `null`, as `serde_json` does.
pub(crate) fn f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `true` or `false`.
pub(crate) fn bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A `fmt::Write` that appends what it is given escaped for a JSON string.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        for s in [
            "",
            "plain",
            "q\"b\\s/",
            "\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}",
            "héllo ✓ 😀",
            all_ascii.as_str(),
        ] {
            assert_eq!(escaped(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_like_from_utf8_lossy() {
        for bytes in [
            &b"caf\xe9"[..],
            b"\xff\xfe",
            b"ok\xe2\x82",
            b"\xf0\x9f\x98\x80 \xc3(",
            b"\"\x01\xc0\xaf",
        ] {
            let mut out = Vec::new();
            string_lossy(&mut out, bytes);
            let expected = serde_json::to_string(&String::from_utf8_lossy(bytes)).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{bytes:?}");
        }
    }

    #[test]
    fn numbers_are_formatted_as_serde_json_formats_them() {
        for x in [0.0, 0.001, 1.0, 1.234, 12_345.678, 1e-7, 1e21, 0.1 + 0.2] {
            let mut out = Vec::new();
            f64(&mut out, x);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&x).unwrap()
            );
        }
        for n in [0, 7, 512, u64::MAX] {
            let mut out = Vec::new();
            u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        let mut out = Vec::new();
        f64(&mut out, f64::NAN);
        assert_eq!(out, b"null");
    }

    #[test]
    fn socket_addresses_are_written_as_they_display() {
        for addr in [
            "0.0.0.0:0",
            "10.0.0.7:51234",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::7%3]:8080",
            "[::ffff:10.0.0.1]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            socket_addr(&mut out, &addr);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{addr}\""));
        }
    }

    #[test]
    fn displayed_values_are_escaped_as_written() {
        let mut out = Vec::new();
        display(&mut out, &format_args!("a \"{}\"\n{}", "b\\", 3));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string("a \"b\\\"\n3").unwrap()
        );
    }
}
