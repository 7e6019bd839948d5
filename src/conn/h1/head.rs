//! Request heads: where they end, and the checks a head passes before hyper may read it
//! (DESIGN §5: RFC 9112 without its leniencies).
//!
//! The order of checks: the head must end within the size limit and parse (httparse, with
//! hyper's defaults) with at most [`MAX_HEADERS`] fields; then its request target must be
//! origin-form, absolute-form with a valid authority, `*`, or authority-form for `CONNECT`;
//! then its body framing must be unambiguous; then it must carry exactly one valid `Host`
//! (HTTP/1.0 may omit it). The first failed check names the violation.

use std::mem::MaybeUninit;

use super::host;

/// Header fields parsed per head; more is a 431 (hyper's own default limit is the same).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest accepted `content-length` value: 19 digits always fit in a `u64`.
const MAX_CONTENT_LENGTH_DIGITS: usize = 19;

/// Why a request head is refused: the status it is answered with and a reason for the client
/// and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    /// 400, or 431 for a head over the limits.
    pub(crate) status: u16,
    /// What is wrong, in a few words.
    pub(crate) reason: &'static str,
}

// === impl Violation ===

impl Violation {
    const fn bad_request(reason: &'static str) -> Self {
        Self {
            status: 400,
            reason,
        }
    }

    const fn too_large(reason: &'static str) -> Self {
        Self {
            status: 431,
            reason,
        }
    }
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body.
    None,
    /// `content-length` bytes.
    Length(u64),
    /// The chunked encoding.
    Chunked,
}

/// A complete head that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head<'b> {
    /// Bytes from the request line to the blank line, inclusive.
    pub(crate) len: usize,
    /// The method, as sent.
    pub(crate) method: &'b str,
    /// The request target, as sent.
    pub(crate) target: &'b str,
    /// The minor version: `HTTP/1.0` or `HTTP/1.1`.
    pub(crate) minor: u8,
    /// How the body is delimited.
    pub(crate) body: BodyFraming,
    /// The host the request is for, validated (so ASCII): an absolute-form (or `CONNECT`)
    /// target's authority, else the `Host` field; `None` only for HTTP/1.0 without either.
    pub(crate) host: Option<&'b [u8]>,
    /// An `upgrade` field is present.
    pub(crate) upgrade: bool,
}

/// The request line of a refused head, when it parsed: for the log of the rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestLine<'b> {
    /// The method, as sent.
    pub(crate) method: &'b str,
    /// The request target, as sent.
    pub(crate) target: &'b str,
}

/// What [`parse`] made of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'b> {
    /// A valid head at the start of the buffer.
    Complete(Head<'b>),
    /// The head has not ended yet (and is within the size limit).
    Partial,
    /// The head is refused.
    Invalid(Violation, Option<RequestLine<'b>>),
}

/// Parses and checks the head at the start of `buf` (no leading empty lines), whose complete
/// head may be at most `max_head` bytes long. Allocation-free.
pub(crate) fn parse(buf: &[u8], max_head: usize) -> Parsed<'_> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut headers,
    );
    let line = match (req.method, req.path) {
        (Some(method), Some(target)) => Some(RequestLine { method, target }),
        _ => None,
    };
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Parsed::Invalid(Violation::too_large("request head too large"), line);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(Violation::too_large("too many header fields"), line);
        }
        Err(e) => return Parsed::Invalid(Violation::bad_request(parse_error(e, buf)), line),
    };
    if len > max_head {
        return Parsed::Invalid(Violation::too_large("request head too large"), line);
    }
    let (method, target, minor) = match (req.method, req.path, req.version) {
        (Some(method), Some(target), Some(minor)) => (method, target, minor),
        _ => return Parsed::Invalid(Violation::bad_request("invalid request line"), line),
    };
    match check(method, target, minor, req.headers) {
        Ok((body, host, upgrade)) => Parsed::Complete(Head {
            len,
            method,
            target,
            minor,
            body,
            host,
            upgrade,
        }),
        Err(reason) => Parsed::Invalid(Violation::bad_request(reason), line),
    }
}

/// Where the head at the start of `buf` ends, looking for its blank line from `from` on (the
/// bytes before were searched already): `Ok(len)` of the head including the blank line, or
/// `Err(next)`, where to resume once more bytes have arrived. Linear in the new bytes.
pub(crate) fn find_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from.min(buf.len());
    while let Some(at) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + at;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (None, _) | (Some(b'\r'), None) => return Err(nl),
            (Some(b'\n'), _) => return Ok(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(nl + 3),
            _ => i = nl + 1,
        }
    }
    Err(buf.len())
}

/// The request target, body framing and `Host` checks: the body framing, the validated host
/// and whether an `upgrade` field is present.
fn check<'b>(
    method: &'b str,
    target: &'b str,
    minor: u8,
    headers: &[httparse::Header<'b>],
) -> Result<(BodyFraming, Option<&'b [u8]>, bool), &'static str> {
    let authority = target_authority(method, target)?;
    let mut content_length = None;
    let mut chunked = false;
    let mut upgrade = false;
    let mut host = None;
    for h in headers {
        // Dispatch on the name's length: most fields are none of these and cost one compare.
        match h.name.len() {
            14 if h.name.eq_ignore_ascii_case("content-length") => {
                if content_length.is_some() {
                    return Err("duplicate content-length");
                }
                content_length =
                    Some(parse_content_length(h.value).ok_or("malformed content-length")?);
            }
            17 if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                if chunked {
                    return Err("duplicate transfer-encoding");
                }
                if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Err("unsupported transfer-encoding (only \"chunked\" is accepted)");
                }
                chunked = true;
            }
            4 if h.name.eq_ignore_ascii_case("host") => {
                if host.is_some() {
                    return Err("duplicate host");
                }
                let value = trim_ows(h.value);
                if value.is_empty() {
                    return Err("empty host");
                }
                if !host::is_valid(value) {
                    return Err("invalid host");
                }
                host = Some(value);
            }
            7 if h.name.eq_ignore_ascii_case("upgrade") => upgrade = true,
            _ => {}
        }
    }
    let body = match (content_length, chunked) {
        (Some(_), true) => return Err("both content-length and transfer-encoding"),
        (None, true) if minor != 1 => return Err("transfer-encoding in an HTTP/1.0 request"),
        (None, true) => BodyFraming::Chunked,
        (Some(n), false) => BodyFraming::Length(n),
        (None, false) => BodyFraming::None,
    };
    if host.is_none() && minor == 1 {
        return Err("HTTP/1.1 requests need a Host header");
    }
    Ok((body, authority.map(str::as_bytes).or(host), upgrade))
}

/// The authority of an absolute-form (or, for `CONNECT`, authority-form) request target,
/// validated; `None` for origin-form and `*`. Any other form is refused.
fn target_authority<'b>(method: &str, target: &'b str) -> Result<Option<&'b str>, &'static str> {
    if target.starts_with('/') || target == "*" {
        return Ok(None);
    }
    if method == "CONNECT" {
        return match host::is_valid(target.as_bytes()) {
            true => Ok(Some(target)),
            false => Err("invalid request target"),
        };
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err("invalid request target");
    };
    let scheme_ok = scheme
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err("invalid request target");
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match host::is_valid(authority.as_bytes()) {
        true => Ok(Some(authority)),
        false => Err("invalid request target authority"),
    }
}

fn parse_error(e: httparse::Error, buf: &[u8]) -> &'static str {
    match e {
        httparse::Error::HeaderName => {
            // The most common reasons, named for the log and the client.
            let end = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(buf.len());
            let head = &buf[..end];
            if head.windows(2).any(|w| w == b"\n " || w == b"\n\t") {
                "obsolete line folding"
            } else if head
                .windows(2)
                .any(|w| (w[0] == b' ' || w[0] == b'\t') && w[1] == b':')
            {
                "whitespace before a header field colon"
            } else {
                "invalid header field name"
            }
        }
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::Status | httparse::Error::TooManyHeaders => "invalid request head",
    }
}

/// `1*DIGIT`, surrounding whitespace aside.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty()
        || digits.len() > MAX_CONTENT_LENGTH_DIGITS
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `value` without leading and trailing spaces and tabs.
pub(crate) fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

#[cfg(test)]
mod tests;
