//! Following the responses hyper writes, to know when it owes none (and whether it upgraded).
//!
//! hyper's output is well-formed, and the framing of each response follows from its request
//! (HEAD, CONNECT) and its head: no body for 1xx/204/304 or a HEAD request, else chunked,
//! `content-length`, or until the connection closes.

use std::collections::VecDeque;
use std::mem::MaybeUninit;

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

/// Parses a response head written by hyper: `Ok(None)` while incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<(usize, ResponseHead)>, ()> {
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
