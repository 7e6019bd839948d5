//! Following the client's byte stream: request heads, their bodies, and where the next head
//! starts.

use std::collections::VecDeque;

use super::chunked::Chunked;
use super::head::{self, BodyFraming, Parsed};
use super::reply::Rejection;
use super::response::OwedResponse;

/// The read side's tracker.
pub(crate) struct Rx {
    pub(crate) state: RxState,
    max_head: usize,
    /// How far the head being held has been searched for its end (relative to its start), so
    /// that a head arriving in pieces is parsed at most twice (on arrival, once complete): linear
    /// in its size, not quadratic.
    searched: usize,
    /// Requests handed to hyper whose response head hyper has not written yet.
    pub(crate) pending: VecDeque<OwedResponse>,
    /// A request hyper may upgrade was handed over and its response is not known yet.
    pub(crate) await_upgrade: bool,
    /// Request heads handed over so far (saturating).
    pub(crate) heads: u32,
    /// Head parses so far (for the tests that prove the linear cost).
    #[cfg(test)]
    pub(crate) parses: usize,
}

/// Where in the client's stream the tracker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxState {
    /// Expecting a request head.
    Head,
    /// In a sized body: bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunked),
    /// After a request hyper may upgrade: hold everything until its response is known.
    AwaitUpgrade,
    /// No longer inspecting.
    Passthrough,
}

/// What to do with the bytes after those a scan released.
#[derive(Debug)]
pub(crate) enum Scan {
    /// Every byte is released.
    Done,
    /// The bytes after those released are held (an incomplete head, or an upgrade is pending).
    Hold,
    /// The bytes after those released are a refused head.
    Refused(Box<Rejection>),
}

// === impl Rx ===

impl Rx {
    /// A tracker at the start of a connection; heads longer than `max_head` are refused.
    pub(crate) fn new(max_head: usize) -> Self {
        Self {
            state: RxState::Head,
            max_head,
            searched: 0,
            pending: VecDeque::new(),
            await_upgrade: false,
            heads: 0,
            #[cfg(test)]
            parses: 0,
        }
    }

    /// Inspects `data`, the next bytes from the client (held bytes first, as returned by the
    /// previous scan): returns how many of them hyper may have, and what to do with the rest.
    pub(crate) fn scan(&mut self, data: &[u8]) -> (usize, Scan) {
        let mut pos = 0;
        loop {
            if matches!(self.state, RxState::Passthrough) {
                return (data.len(), Scan::Done);
            }
            if pos == data.len() {
                return (pos, Scan::Done);
            }
            match &mut self.state {
                RxState::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 §2.2): `\n` or
                    // `\r\n`, as hyper skips them; a lone `\r` is left to the head's parse.
                    if self.searched == 0 {
                        loop {
                            match data.get(pos..pos + 2) {
                                _ if data.get(pos) == Some(&b'\n') => pos += 1,
                                Some(b"\r\n") => pos += 2,
                                None if data.get(pos) == Some(&b'\r') => return (pos, Scan::Hold),
                                _ => break,
                            }
                        }
                        if pos == data.len() {
                            return (pos, Scan::Done);
                        }
                    }
                    match self.head(&data[pos..]) {
                        Ok(Some(len)) => pos += len,
                        Ok(None) => return (pos, Scan::Hold),
                        Err(rejection) => return (pos, Scan::Refused(rejection)),
                    }
                }
                RxState::Length(left) => {
                    let take = (*left).min((data.len() - pos) as u64);
                    pos += take as usize;
                    *left -= take;
                    if *left == 0 {
                        self.end_of_message();
                    }
                }
                RxState::Chunked(chunked) => match chunked.advance(&data[pos..]) {
                    Ok((n, done)) => {
                        pos += n;
                        if done {
                            self.end_of_message();
                        }
                    }
                    // hyper rejects the body and closes the connection.
                    Err(_) => self.state = RxState::Passthrough,
                },
                RxState::AwaitUpgrade => return (pos, Scan::Hold),
                RxState::Passthrough => return (data.len(), Scan::Done),
            }
        }
    }

    /// Leaves the upgrade wait: the held bytes are a fresh start, never searched.
    pub(crate) fn resume_after_declined_upgrade(&mut self) {
        self.await_upgrade = false;
        if matches!(self.state, RxState::AwaitUpgrade) {
            self.state = RxState::Head;
            self.searched = 0;
        }
    }

    fn end_of_message(&mut self) {
        self.state = if self.await_upgrade {
            RxState::AwaitUpgrade
        } else {
            RxState::Head
        };
    }

    /// The head at the start of `buf`: its length once complete and valid (its body is then
    /// set up), `None` while incomplete. A head read whole (the common case) is parsed right
    /// away, in one pass; one that is not is then searched for its end only in the bytes that
    /// are new, and parsed again only once it has ended (or passed the size limit).
    fn head(&mut self, buf: &[u8]) -> Result<Option<usize>, Box<Rejection>> {
        if self.searched > 0 {
            match head::find_end(buf, self.searched) {
                Err(next) if buf.len() <= self.max_head => {
                    self.searched = next;
                    return Ok(None);
                }
                _ => {}
            }
        }
        #[cfg(test)]
        {
            self.parses += 1;
        }
        let head = match head::parse(buf, self.max_head) {
            Parsed::Complete(head) => head,
            Parsed::Partial => {
                // Search on from the end found so far (httparse may end a head later than
                // the first blank line it is offered only if that line is not one).
                let from = self.searched;
                self.searched = head::find_end(buf, from).unwrap_or_else(|n| n).max(1);
                return Ok(None);
            }
            Parsed::Invalid(violation, line) => {
                return Err(Box::new(Rejection::new(violation, line)));
            }
        };
        self.searched = 0;
        let owed = OwedResponse {
            head: head.method == "HEAD",
            connect: head.method == "CONNECT",
            upgrade: head.minor == 1 && head.upgrade,
        };
        self.pending.push_back(owed);
        self.heads = self.heads.saturating_add(1);
        self.await_upgrade = owed.connect || owed.upgrade;
        match head.body {
            BodyFraming::Length(n) if n > 0 => self.state = RxState::Length(n),
            BodyFraming::Chunked => self.state = RxState::Chunked(Chunked::default()),
            BodyFraming::Length(_) | BodyFraming::None => self.end_of_message(),
        }
        Ok(Some(head.len))
    }
}

#[cfg(test)]
mod tests;
