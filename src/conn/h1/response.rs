//! Following the responses hyper writes, to know when it owes none (and whether it upgraded).
//!
//! hyper's output is well-formed, and the framing of each response follows from its request
//! (HEAD, CONNECT) and its head: no body for 1xx/204/304 or a HEAD request, else chunked,
//! `content-length`, or until the connection closes.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::chunked::Chunked;
use super::head::{MAX_HEADERS, parse_content_length, trim_ows};

/// What hyper will make of a request, as far as its response's framing is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OwedResponse {
    /// `HEAD`: the response has no body.
    pub(crate) head: bool,
    /// `CONNECT`: a 2xx response turns the connection into a tunnel.
    pub(crate) connect: bool,
    /// HTTP/1.1 with an `upgrade` header: a 101 response switches protocols.
    pub(crate) upgrade: bool,
}

/// The write side's tracker.
pub(crate) struct Tx {
    pub(crate) state: TxState,
    /// A response head split across writes.
    pub(crate) head: Vec<u8>,
}

/// Where in hyper's output the tracker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxState {
    /// Expecting a response head.
    Head,
    /// In a sized body: bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunked),
    /// A body delimited by the end of the connection.
    UntilClose,
    /// Not tracking: the connection was upgraded, or inspection stopped.
    Off,
    /// hyper's output did not parse (not expected).
    Broken,
}

/// What a write revealed.
#[derive(Default)]
pub(crate) struct TxEvents {
    /// A 101, or a 2xx to CONNECT, was written: the connection is no longer HTTP/1.
    pub(crate) upgraded: bool,
    /// The response to a request hyper could have upgraded did not upgrade.
    pub(crate) declined: bool,
}

struct ResponseHead {
    code: u16,
    /// `Some(true)` for a chunked `transfer-encoding`, `Some(false)` for another.
    chunked: Option<bool>,
    content_length: Option<u64>,
}

// === impl Tx ===

impl Tx {
    /// A tracker expecting the first response.
    pub(crate) const fn new() -> Self {
        Self {
            state: TxState::Head,
            head: Vec::new(),
        }
    }

    /// Follows `data`, the next bytes hyper wrote; `pending` are the requests whose responses
    /// have not started yet.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        pending: &mut VecDeque<OwedResponse>,
        events: &mut TxEvents,
    ) {
        while !data.is_empty() {
            match &mut self.state {
                TxState::Off | TxState::Broken | TxState::UntilClose => return,
                TxState::Length(left) => {
                    let take = (*left).min(data.len() as u64);
                    data = &data[take as usize..];
                    *left -= take;
                    if *left == 0 {
                        self.state = TxState::Head;
                    }
                }
                TxState::Chunked(chunked) => match chunked.advance(data) {
                    Ok((n, done)) => {
                        data = &data[n..];
                        if done {
                            self.state = TxState::Head;
                        }
                    }
                    Err(_) => self.state = TxState::Broken,
                },
                TxState::Head => {
                    let parsed = if self.head.is_empty() {
                        parse_response(data).map(|r| r.map(|(len, head)| (len, head, len)))
                    } else {
                        let old = self.head.len();
                        self.head.extend_from_slice(data);
                        parse_response(&self.head)
                            .map(|r| r.map(|(len, head)| (len, head, len - old)))
                    };
                    match parsed {
                        Ok(Some((_, head, used))) => {
                            self.head.clear();
                            data = &data[used..];
                            self.on_response(&head, pending, events);
                        }
                        Ok(None) => {
                            if self.head.is_empty() {
                                self.head.extend_from_slice(data);
                            }
                            return;
                        }
                        Err(()) => self.state = TxState::Broken,
                    }
                }
            }
        }
    }

    fn on_response(
        &mut self,
        head: &ResponseHead,
        pending: &mut VecDeque<OwedResponse>,
        events: &mut TxEvents,
    ) {
        if head.code == 101 {
            self.state = TxState::Off;
            events.upgraded = true;
            return;
        }
        if (100..200).contains(&head.code) {
            return; // interim (100 Continue)
        }
        let owed = pending.pop_front().unwrap_or_default();
        if owed.connect && (200..300).contains(&head.code) {
            self.state = TxState::Off;
            events.upgraded = true;
            return;
        }
        events.declined |= owed.connect || owed.upgrade;
        self.state = if owed.head || head.code == 204 || head.code == 304 {
            TxState::Head
        } else {
            match (head.chunked, head.content_length) {
                (Some(true), _) => TxState::Chunked(Chunked::default()),
                (Some(false), _) | (None, None) => TxState::UntilClose,
                (None, Some(0)) => TxState::Head,
                (None, Some(n)) => TxState::Length(n),
            }
        };
    }
}

/// Reads a response head written by hyper: `Ok(None)` while incomplete.
///
/// hyper's output is well-formed, its field names are lowercase (this server keeps no
/// original case and does not title-case), and no name or value holds CR or LF. So the head
/// is not parsed field by field: its end, and the two framing fields at line starts, are found
/// by substring search (`memmem`, vectorized), whatever the number of other fields. A head
/// with neither framing field is parsed in full ([`parse_response_fully`]), which reads names
/// in any case.
fn parse_response(buf: &[u8]) -> Result<Option<(usize, ResponseHead)>, ()> {
    static END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
    static CONTENT_LENGTH: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b"\r\ncontent-length:"));
    static TRANSFER_ENCODING: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b"\r\ntransfer-encoding:"));
    let Some(end) = END.find(buf) else {
        return Ok(None);
    };
    // The head, with its last line's CRLF (the blank line's is not needed).
    let head = &buf[..end + 2];
    let status = memchr::memchr(b'\n', head).map_or(head, |eol| &head[..=eol]);
    let code = status_code(status).ok_or(())?;
    let value = |finder: &Finder<'_>| {
        let at = finder.find_iter(head).last()? + finder.needle().len();
        let rest = &head[at..];
        Some(memchr::memchr(b'\r', rest).map_or(rest, |eol| &rest[..eol]))
    };
    let (chunked, content_length) = match (value(&TRANSFER_ENCODING), value(&CONTENT_LENGTH)) {
        (None, None) => return parse_response_fully(buf),
        (te, cl) => (
            te.map(|te| {
                let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
                trim_ows(last).eq_ignore_ascii_case(b"chunked")
            }),
            cl.map(|cl| parse_content_length(cl).ok_or(()))
                .transpose()?,
        ),
    };
    let head = ResponseHead {
        code,
        chunked,
        content_length,
    };
    Ok(Some((end + 4, head)))
}

/// The status code of a status line as hyper writes it (`HTTP/1.x NNN reason`, CRLF).
fn status_code(line: &[u8]) -> Option<u16> {
    match line.strip_suffix(b"\r\n")? {
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            b'0' | b'1',
            b' ',
            code @ ..,
        ] if code.len() >= 3 => {
            let (digits, rest) = code.split_at(3);
            if !digits.iter().all(u8::is_ascii_digit) || !matches!(rest, [] | [b' ', ..]) {
                return None;
            }
            Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
        }
        _ => None,
    }
}

/// Parses a response head in full (`httparse`): `Ok(None)` while incomplete.
fn parse_response_fully(buf: &[u8]) -> Result<Option<(usize, ResponseHead)>, ()> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    match parse_response_with(buf, &mut headers) {
        Err(Some(httparse::Error::TooManyHeaders)) => {
            // A proxied response may carry many fields: size the array to the head.
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            let mut headers = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); lines];
            parse_response_with(buf, &mut headers).map_err(drop)
        }
        other => other.map_err(drop),
    }
}

fn parse_response_with<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, ResponseHead)>, Option<httparse::Error>> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Some(e)),
    };
    let mut head = ResponseHead {
        code: resp.code.unwrap_or_default(),
        chunked: None,
        content_length: None,
    };
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            head.chunked = Some(trim_ows(last).eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(parse_content_length(h.value).ok_or(None)?);
        }
    }
    Ok(Some((len, head)))
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    /// `(length, code, chunked, content_length)` of a parsed head.
    fn parsed(head: &[u8]) -> Option<(usize, u16, Option<bool>, Option<u64>)> {
        parse_response(head)
            .expect("a response head")
            .map(|(len, h)| (len, h.code, h.chunked, h.content_length))
    }

    #[test]
    fn the_framing_fields_are_found_among_any_others() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-content-length: 7\r\n\
            content-length: 12\r\nratelimit: \"a\";r=1;t=1\r\n\r\nbody";
        assert_eq!(parsed(head), Some((head.len() - 4, 200, None, Some(12))));
        let head = b"HTTP/1.1 201 Created\r\ntransfer-encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parsed(head), Some((head.len(), 201, Some(true), None)));
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n";
        assert_eq!(parsed(head), Some((head.len(), 200, Some(false), None)));
        // A value that names a field is not that field.
        let head = b"HTTP/1.1 200 OK\r\nx-note: content-length: 5\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parsed(head), Some((head.len(), 200, None, Some(0))));
    }

    #[test]
    fn a_head_without_lowercase_framing_fields_is_parsed_in_full() {
        let head = b"HTTP/1.0 304 \r\n\r\n";
        assert_eq!(parsed(head), Some((head.len(), 304, None, None)));
        let head = b"HTTP/1.1 101\r\nupgrade: websocket\r\nx-content-length: 5\r\n\r\n";
        assert_eq!(parsed(head), Some((head.len(), 101, None, None)));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(parsed(head), Some((head.len() - 3, 200, None, Some(3))));
    }

    #[test]
    fn an_unfinished_head_waits_for_the_rest() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(parsed(&head[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_a_response_head_is_refused() {
        for bad in [
            &b"HTTP/2 200\r\ncontent-length: 1\r\n\r\n"[..],
            b"HTTP/1.1 20x OK\r\ncontent-length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
