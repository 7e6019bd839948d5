//! Request headers that select and condition a response (RFC 9110 §12.5.3, §13, §14):
//! `Accept-Encoding`, `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`,
//! `Range` and `If-Range`.

use std::time::UNIX_EPOCH;

use http::header::{
    ACCEPT_ENCODING, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    RANGE,
};
use http::{HeaderMap, HeaderValue};

/// The request headers this crate reads, found in one pass over the header map.
#[derive(Clone, Copy, Default)]
pub(crate) struct Conditions<'a> {
    pub(crate) accept_encoding: Option<&'a HeaderValue>,
    pub(crate) if_match: Option<&'a HeaderValue>,
    pub(crate) if_none_match: Option<&'a HeaderValue>,
    pub(crate) if_modified_since: Option<&'a HeaderValue>,
    pub(crate) if_unmodified_since: Option<&'a HeaderValue>,
    pub(crate) range: Option<&'a HeaderValue>,
    pub(crate) if_range: Option<&'a HeaderValue>,
    /// A list-valued header (`Accept-Encoding`, `If-Match`, `If-None-Match`) came on more
    /// than one line: read it through `headers` then.
    pub(crate) repeated: bool,
    headers: Option<&'a HeaderMap>,
}

impl<'a> Conditions<'a> {
    /// One pass over `headers`. Cheaper than seven hashed look-ups for the few headers a
    /// typical request carries.
    pub(crate) fn parse(headers: &'a HeaderMap) -> Self {
        let mut c = Conditions {
            headers: Some(headers),
            ..Conditions::default()
        };
        for (name, value) in headers {
            let slot = if name == ACCEPT_ENCODING {
                &mut c.accept_encoding
            } else if name == IF_NONE_MATCH {
                &mut c.if_none_match
            } else if name == IF_MODIFIED_SINCE {
                &mut c.if_modified_since
            } else if name == RANGE {
                &mut c.range
            } else if name == IF_RANGE {
                &mut c.if_range
            } else if name == IF_MATCH {
                &mut c.if_match
            } else if name == IF_UNMODIFIED_SINCE {
                &mut c.if_unmodified_since
            } else {
                continue;
            };
            if slot.is_some() {
                c.repeated = true;
            } else {
                *slot = Some(value);
            }
        }
        c
    }

    /// Every line of `name` (one, unless the request repeated it).
    pub(crate) fn all(
        &self,
        name: &http::HeaderName,
        first: &'a HeaderValue,
    ) -> impl Iterator<Item = &'a HeaderValue> {
        let many = match (self.repeated, self.headers) {
            (true, Some(h)) => Some(h.get_all(name).iter()),
            _ => None,
        };
        let one = if many.is_none() { Some(first) } else { None };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// `If-None-Match` (weak comparison, RFC 9110 §13.1.2): does any listed tag, or `*`, match?
pub(crate) fn none_match_hits<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    etag: &HeaderValue,
) -> bool {
    let own = strip_weak(etag.as_bytes());
    values
        .into_iter()
        .any(|v| entity_tags(v.as_bytes()).any(|tag| tag == b"*" || strip_weak(tag) == own))
}

/// `If-Match` (strong comparison, RFC 9110 §13.1.1): does any listed tag, or `*`, match?
pub(crate) fn match_hits<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    etag: &HeaderValue,
) -> bool {
    values
        .into_iter()
        .any(|v| entity_tags(v.as_bytes()).any(|tag| tag == b"*" || strong_eq(tag, etag)))
}

/// Strong comparison: neither tag is weak and both are identical.
pub(crate) fn strong_eq(tag: &[u8], etag: &HeaderValue) -> bool {
    !tag.starts_with(b"W/") && !etag.as_bytes().starts_with(b"W/") && tag == etag.as_bytes()
}

fn strip_weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// The comma-separated members of an entity-tag list, trimmed; commas inside quotes do not
/// split.
fn entity_tags(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = list;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                match b {
                    b'"' => quoted = !quoted,
                    b',' if !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let item = rest[..end].trim_ascii();
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                &[]
            };
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

/// An HTTP-date as seconds since the epoch; `None` if it is not one (the header is then
/// ignored, as RFC 9110 §13.1.3 requires).
pub(crate) fn http_date_secs(value: &HeaderValue) -> Option<u64> {
    let s = value.to_str().ok()?;
    let t = httpdate::parse_http_date(s).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// One `Range: bytes=...` range, before the length is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// `a-b`
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes
    Suffix(u64),
}

/// Parses a `Range` header. `None` means "ignore it and send the whole representation":
/// another unit, bad syntax, or several ranges (RFC 9110 §14.2 lets a server ignore `Range`;
/// multipart/byteranges is not implemented).
pub(crate) fn parse_range(value: &HeaderValue) -> Option<ByteRange> {
    let v = value.as_bytes().trim_ascii();
    let (unit, spec) = v.split_at(v.iter().position(|&b| b == b'=')?);
    if !unit.trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let spec = spec[1..].trim_ascii();
    if spec.contains(&b',') {
        return None;
    }
    let dash = spec.iter().position(|&b| b == b'-')?;
    let first = spec[..dash].trim_ascii();
    let last = spec[dash + 1..].trim_ascii();
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(ByteRange::Suffix(digits(last)?)),
        (false, true) => Some(ByteRange::From(digits(first)?)),
        (false, false) => {
            let (a, b) = (digits(first)?, digits(last)?);
            // last < first is invalid syntax: ignored (RFC 9110 §14.1.1).
            (b >= a).then_some(ByteRange::FromTo(a, b))
        }
    }
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Positions beyond u64 are clamped: they are unsatisfiable (or reach the end) anyway.
    Some(
        s.iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
}

impl ByteRange {
    /// The inclusive byte positions selected in a representation of `len` bytes; `None` if
    /// unsatisfiable (→ 416).
    pub(crate) fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            Self::FromTo(a, b) if a < len => Some((a, b.min(len - 1))),
            Self::From(a) if a < len => Some((a, len - 1)),
            Self::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len - 1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn entity_tag_lists() {
        let etag = hv("\"abc\"");
        let weak = hv("W/\"abc-gz\"");
        assert!(none_match_hits([hv("\"x\", \"abc\"")].iter(), &etag));
        assert!(none_match_hits([hv("W/\"abc\"")].iter(), &etag));
        assert!(none_match_hits([hv("*")].iter(), &etag));
        assert!(none_match_hits([hv("\"abc-gz\"")].iter(), &weak));
        assert!(!none_match_hits([hv("\"ab\"")].iter(), &etag));
        assert!(!none_match_hits([hv("\"a,bc\"")].iter(), &etag));
        assert!(match_hits([hv("\"abc\"")].iter(), &etag));
        assert!(!match_hits([hv("W/\"abc\"")].iter(), &etag));
        assert!(!match_hits([hv("W/\"abc-gz\"")].iter(), &weak));
        assert!(match_hits([hv("*")].iter(), &weak));
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range(&hv("bytes=0-9")), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(parse_range(&hv("bytes=5-")), Some(ByteRange::From(5)));
        assert_eq!(parse_range(&hv("bytes=-3")), Some(ByteRange::Suffix(3)));
        assert_eq!(
            parse_range(&hv("Bytes = 1 - 2")),
            Some(ByteRange::FromTo(1, 2))
        );
        assert_eq!(parse_range(&hv("bytes=9-5")), None);
        assert_eq!(parse_range(&hv("bytes=0-1,3-4")), None);
        assert_eq!(parse_range(&hv("items=0-1")), None);
        assert_eq!(parse_range(&hv("bytes=-")), None);
        assert_eq!(parse_range(&hv("bytes=a-b")), None);
        assert_eq!(
            parse_range(&hv("bytes=99999999999999999999999-")),
            Some(ByteRange::From(u64::MAX))
        );
    }

    #[test]
    fn ranges_resolve() {
        assert_eq!(ByteRange::FromTo(0, 9).resolve(5), Some((0, 4)));
        assert_eq!(ByteRange::FromTo(5, 9).resolve(5), None);
        assert_eq!(ByteRange::From(4).resolve(5), Some((4, 4)));
        assert_eq!(ByteRange::Suffix(2).resolve(5), Some((3, 4)));
        assert_eq!(ByteRange::Suffix(9).resolve(5), Some((0, 4)));
        assert_eq!(ByteRange::Suffix(0).resolve(5), None);
        assert_eq!(ByteRange::Suffix(1).resolve(0), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
    }

    #[test]
    fn dates() {
        assert_eq!(
            http_date_secs(&hv("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(784111777)
        );
        assert_eq!(http_date_secs(&hv("yesterday")), None);
    }
}
