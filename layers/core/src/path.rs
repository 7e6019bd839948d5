//! Request-path normalization (RFC 3986 §6.2.2 plus the safety rules of the design contract).
//!
//! The normalized path is what Snakeway routes on and what it forwards, so the proxy and the
//! upstream never disagree about which resource was asked for:
//!
//! * percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!   percent-encodings get upper-case hex digits;
//! * runs of `/` are merged and `.` / `..` segments are removed (after decoding, so `%2e%2e`
//!   is `..`);
//! * a path that would climb above `/`, or that contains an encoded `/`, `\` or NUL, a literal
//!   `\`, or a broken percent-encoding, is rejected.

use std::borrow::Cow;

/// Why a path was rejected. Every variant means 400 Bad Request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// `..` segments would climb above the root.
    #[error("the request path climbs above '/'")]
    AboveRoot,
    /// An encoded `/` or `\`, or a literal `\`.
    #[error("the request path contains an encoded '/' or a backslash")]
    Separator,
    /// An encoded NUL byte.
    #[error("the request path contains an encoded NUL byte")]
    Nul,
    /// A `%` not followed by two hex digits.
    #[error("the request path has a malformed percent-encoding")]
    BadEncoding,
}

/// Normalizes `path` (the path part of a request target, without the query).
///
/// Paths that are already normal are returned borrowed, without allocating.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut segment = String::new();
    let mut raw = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(raw_segment) = raw.next() {
        let last = raw.peek().is_none();
        decode_segment(raw_segment, &mut segment)?;
        match segment.as_str() {
            "" | "." => trailing_slash = last,
            ".." => {
                let cut = out.rfind('/').ok_or(PathError::AboveRoot)?;
                out.truncate(cut);
                trailing_slash = last;
            }
            s => {
                out.push('/');
                out.push_str(s);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether `prefix` matches `path` on a segment boundary: `/api` matches `/api` and `/api/x`,
/// never `/apix`; `/` matches every path. A trailing `/` on the prefix is ignored.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The cheap check that lets normal paths through without copying.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b == b'%' || b == b'\\') {
        return false;
    }
    // Every segment but the last must be non-empty; no segment may be "." or "..".
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

fn decode_segment(raw: &str, out: &mut String) -> Result<(), PathError> {
    out.clear();
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Separator),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEncoding);
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => return Err(PathError::Separator),
                    0 => return Err(PathError::Nul),
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(b));
                    }
                    b => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(b >> 4)]));
                        out.push(char::from(HEX[usize::from(b & 0xf)]));
                    }
                }
                i += 3;
            }
            _ => {
                // Request targets are ASCII (hyper rejects anything else); copy runs verbatim.
                let end = raw[i..].find(['%', '\\']).map_or(raw.len(), |n| i + n);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(norm("//a///b//").unwrap(), "/a/b/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/%2e%2E/").unwrap_err(), PathError::AboveRoot);
        assert_eq!(norm("/a/%2e%2e/b").unwrap(), "/b");
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(norm("/%7euser/%41%2d").unwrap(), "/~user/A-");
        assert_eq!(norm("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn rejections() {
        assert_eq!(norm("a").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(norm("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(norm("/a/../..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(norm("/a%2fb").unwrap_err(), PathError::Separator);
        assert_eq!(norm("/a%5Cb").unwrap_err(), PathError::Separator);
        assert_eq!(norm("/a\\b").unwrap_err(), PathError::Separator);
        assert_eq!(norm("/a%00").unwrap_err(), PathError::Nul);
        assert_eq!(norm("/a%zz").unwrap_err(), PathError::BadEncoding);
        assert_eq!(norm("/a%4").unwrap_err(), PathError::BadEncoding);
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(has_prefix("/api", "/api"));
        assert!(has_prefix("/api/x", "/api"));
        assert!(has_prefix("/api/x", "/api/"));
        assert!(!has_prefix("/apix", "/api"));
        assert!(has_prefix("/anything", "/"));
        assert!(has_prefix("/", "/"));
    }
}
