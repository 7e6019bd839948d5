//! The HTTP/1 framing guard: strict request framing, enforced below hyper (DESIGN §5).
//!
//! hyper's HTTP/1 parser is lenient in ways that cannot be detected once it has parsed a request:
//! a `content-length` that follows `transfer-encoding` is dropped, and so is a duplicate identical
//! `content-length`. [`StrictH1`] therefore sits between the socket (plain TCP or TLS) and hyper
//! and follows the message boundaries of the client's byte stream itself:
//!
//! * A request head is handed to hyper only once it is complete and valid ([`head`] lists the
//!   checks: framing, request target, `Host`). A head arriving in pieces is searched for its end
//!   only in its new bytes, and parsed again only once it has ended ([`request`]). Invalid
//!   framing is a *violation*: no byte of that head ever reaches hyper, so the request never
//!   reaches a route nor an upstream. A head over the configured limit, or with more than
//!   [`head::MAX_HEADERS`] fields, is a violation too (431), which enforces the limit exactly
//!   even below hyper's 8 KiB floor.
//! * Bodies are followed (`content-length` bytes, or the chunked encoding up to its last chunk
//!   and trailers, mirroring hyper's chunked decoder, [`chunked`]) and released as they arrive.
//! * A violation is answered through the normal error path ([`reply`]): once hyper has finished
//!   every response it owes for the requests before it, the guard records the rejection in the
//!   connection's [`Rejections`] slot, hands hyper a synthetic request and then the end of the
//!   stream; the connection's service answers that request with the rejection's status, through
//!   `on_error`, `on_response` and the access log, with `connection: close`. Waiting matters:
//!   an end of stream seen while a response is pending makes hyper abort the connection without
//!   answering, so the write side follows the response boundaries hyper produces ([`response`]).
//! * Upgrades: after a request that hyper may upgrade (`CONNECT`, or HTTP/1.1 with an `upgrade`
//!   header) the following client bytes are held until hyper's response to it has been written:
//!   `101` (or `2xx` to `CONNECT`) makes the stream opaque (pass-through from then on), any
//!   other status resumes strict inspection. A declined upgrade is thus no way around the rules.
//! * Cases left to hyper, which rejects them and closes the connection itself: a malformed chunked
//!   body (inspection stops, everything is passed through).
//!
//! The guard only ever sees HTTP/1: the protocol is decided once per connection before it
//! (`conn::detect`: ALPN, or the h2c preface on plain TCP when HTTP/2 is served), and it is
//! served by hyper's `http1` builder. Bytes that start like the HTTP/2 preface are therefore an
//! ordinary, invalid request head here, refused like any other.
//!
//! The common case (a head read whole, then a sized body or none) neither copies nor allocates:
//! heads are parsed in place in hyper's own read buffer. Only a head split across reads goes
//! through an internal buffer. While a head is held, hyper's header read timeout runs as usual
//! (hyper waits for a head it has not seen).
//!
//! * Parking (with a [`Park`] slot): between requests, once the connection's watch has asked
//!   (the connection was quiet for a whole tick, `conn::watch`), or at once after a fresh
//!   connection's first request, hyper owes no response and holds
//!   no client byte, the guard holds none either and the transport has nothing to read, the guard
//!   flushes the transport, puts it in the slot and tells hyper the stream has ended, which ends
//!   an idle keep-alive connection cleanly (see `conn::park`). Never before the first request
//!   of a connection (the first head is bounded from accept), never once a violation was seen,
//!   never while an upgrade is pending nor after one.

mod chunked;
pub(crate) mod head;
pub(crate) mod host;
mod park;
mod reply;
mod request;
mod response;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use self::park::{Park, Slot};
use self::reply::SYNTHETIC_HEAD;
pub(crate) use self::reply::{Rejection, Rejections};
use self::request::{RxState, Scan};
use self::response::{OwedResponse, TxEvents, TxState};

/// Bytes read at a time into the internal buffer while a head is incomplete.
const STASH_CHUNK: usize = 8192;

/// An HTTP/1 connection whose request framing is checked before hyper sees it.
///
/// Wraps a server-side transport `IO` and is itself the transport handed to hyper
/// (`TokioIo::new(StrictH1::new(io, max_head_bytes, rejections))`). See the module docs.
pub(crate) struct StrictH1<IO> {
    /// The transport; `None` once parked.
    io: Option<IO>,
    rx: request::Rx,
    tx: response::Tx,
    /// Client bytes read but not yet handed to hyper: `[pos, ready)` are validated and ready to be
    /// delivered, `[ready, end)` are held (an incomplete head, or bytes waiting for an upgrade
    /// decision); `[end, len)` is spare room, already initialized. Unallocated in the common case.
    stash: Vec<u8>,
    pos: usize,
    ready: usize,
    end: usize,
    /// The held bytes must be inspected again (an upgrade was declined) before reading more.
    unscanned: bool,
    /// The first framing violation; nothing after it is read.
    refused: Refused,
    /// Where the rejection is handed to the connection's service.
    rejections: Rejections,
    /// Waiting in `poll_read` for hyper to finish its responses or for an upgrade decision.
    read_waker: Option<Waker>,
    /// Where the transport goes when the connection parks; `None`: never park.
    park: Option<Park<IO>>,
}

/// The course of a violation.
enum Refused {
    /// None so far.
    No,
    /// Waiting for hyper to owe no response.
    Waiting(Box<Rejection>),
    /// Handing hyper the synthetic request: bytes of it delivered.
    HandingOver(usize),
    /// Handed over: the end of the stream follows once its response is written.
    HandedOver,
}

impl<IO> StrictH1<IO> {
    /// Wraps `io`; request heads longer than `max_head_bytes` are answered with 431. A refused
    /// request is handed over in `rejections`, which the connection's service reads.
    pub(crate) fn new(io: IO, max_head_bytes: usize, rejections: Rejections) -> Self {
        Self {
            io: Some(io),
            rx: request::Rx::new(max_head_bytes),
            tx: response::Tx::new(),
            stash: Vec::new(),
            pos: 0,
            ready: 0,
            end: 0,
            unscanned: false,
            refused: Refused::No,
            rejections,
            read_waker: None,
            park: None,
        }
    }

    /// Parks into `park` when idle between requests (see the module docs).
    pub(crate) fn parking(mut self, park: Park<IO>) -> Self {
        self.park = Some(park);
        self
    }

    /// Whether the connection may park now: hyper owes no response and was handed no byte of
    /// a next request, the guard holds none, and nothing made the stream other than HTTP/1.
    fn may_park(&self) -> bool {
        self.park.as_ref().is_some_and(Park::armed)
            && matches!(self.refused, Refused::No)
            && matches!(self.rx.state, RxState::Head)
            && matches!(self.tx.state, TxState::Head)
            && !self.rx.await_upgrade
            && !self.unscanned
            && self.rx.pending.is_empty()
            && self.tx.head.is_empty()
            && self.pos == self.end
    }

    /// Whether the connection's watch asked it to park (it has been quiet for a tick); until
    /// then, a ring wakes `cx`.
    fn park_asked(&self, cx: &Context<'_>) -> bool {
        self.park.as_ref().is_some_and(|park| park.poll_asked(cx))
    }

    /// Whether hyper has written complete responses for every request it was given.
    fn hyper_idle(&self) -> bool {
        match self.tx.state {
            TxState::Head => self.tx.head.is_empty() && self.rx.pending.is_empty(),
            // Out of step with hyper's output (never expected): do not wait for it.
            TxState::Off | TxState::Broken => true,
            TxState::Length(_) | TxState::Chunked(_) | TxState::UntilClose => false,
        }
    }

    fn refuse(&mut self, rejection: Box<Rejection>) {
        tracing::debug!(
            status = rejection.violation.status,
            reason = rejection.violation.reason,
            "refusing an HTTP/1 request with invalid framing; closing the connection"
        );
        self.refused = Refused::Waiting(rejection);
    }

    /// Follows up on a scan: inspection that has stopped needs no response tracking either.
    fn after_scan(&mut self) {
        if matches!(self.rx.state, RxState::Passthrough) {
            self.tx.state = TxState::Off;
        }
        if !self.rx.pending.is_empty()
            && let Some(park) = &mut self.park
        {
            park.arm(self.rx.heads);
        }
    }

    /// Inspects the held bytes of the stash.
    fn scan_stash(&mut self) {
        let (released, scan) = self.rx.scan(&self.stash[self.ready..self.end]);
        self.ready += released;
        if let Scan::Refused(rejection) = scan {
            self.end = self.ready;
            self.refuse(rejection);
        }
        self.after_scan();
    }

    /// Appends `bytes` to the held ones.
    fn hold(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.stash[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Makes room for `n` more bytes after `end`, moving the undelivered ones to the front.
    fn reserve(&mut self, n: usize) {
        if self.pos > 0 {
            self.stash.copy_within(self.pos..self.end, 0);
            self.ready -= self.pos;
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.stash.len() < self.end + n {
            // Only the new room is initialized: a head trickling in costs linear time.
            self.stash.resize(self.end + n, 0);
        }
    }

    /// Frees the stash once everything in it is delivered.
    fn release_stash(&mut self) {
        self.stash = Vec::new();
        self.pos = 0;
        self.ready = 0;
        self.end = 0;
    }

    /// Follows the bytes hyper has written (`data` was accepted by the transport).
    fn on_written(&mut self, data: &[u8]) {
        if matches!(self.tx.state, TxState::Off) || data.is_empty() {
            return;
        }
        let mut events = TxEvents::default();
        self.tx.feed(data, &mut self.rx.pending, &mut events);
        let mut wake = false;
        if events.upgraded || (self.rx.await_upgrade && matches!(self.tx.state, TxState::Broken)) {
            // The stream is no longer HTTP/1 (or we can no longer tell): stop inspecting.
            self.rx.state = RxState::Passthrough;
            self.rx.await_upgrade = false;
            self.tx.state = TxState::Off;
            self.ready = self.end;
            self.unscanned = false;
            wake = true;
        } else if events.declined {
            let waiting = matches!(self.rx.state, RxState::AwaitUpgrade);
            self.rx.resume_after_declined_upgrade();
            if waiting {
                self.unscanned = self.ready < self.end;
                wake = true;
            }
        }
        if !matches!(self.refused, Refused::No) && self.hyper_idle() {
            wake = true;
        }
        if wake && let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }

    /// The transport, unless parked (hyper writes nothing after the end of the stream).
    fn transport(&mut self) -> io::Result<&mut IO> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// `poll_read` between requests with nothing to read: flushes what the transport holds
    /// (a TLS stream's records), then parks and ends hyper's stream.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncWrite + Unpin,
    {
        if let Some(io) = self.io.as_mut() {
            ready!(Pin::new(io).poll_flush(cx))?;
        }
        if let (Some(io), Some(park)) = (self.io.take(), &self.park) {
            park.put(io);
        }
        Poll::Ready(Ok(()))
    }

    /// `poll_read` after a violation: the synthetic request once hyper owes nothing, then the
    /// end of the stream once its response is written.
    fn poll_refused(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let idle = self.hyper_idle();
            match &mut self.refused {
                Refused::No => return Poll::Ready(Ok(())),
                Refused::Waiting(_) | Refused::HandedOver if !idle => {
                    self.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Refused::Waiting(_) => {
                    let Refused::Waiting(rejection) =
                        std::mem::replace(&mut self.refused, Refused::HandingOver(0))
                    else {
                        unreachable!("matched above")
                    };
                    self.rejections.set(*rejection);
                    self.rx.pending.push_back(OwedResponse::default());
                }
                Refused::HandingOver(sent) => {
                    let n = (SYNTHETIC_HEAD.len() - *sent).min(buf.remaining());
                    buf.put_slice(&SYNTHETIC_HEAD[*sent..*sent + n]);
                    *sent += n;
                    if *sent == SYNTHETIC_HEAD.len() {
                        self.refused = Refused::HandedOver;
                    }
                    return Poll::Ready(Ok(()));
                }
                // hyper shuts the connection down after the response.
                Refused::HandedOver => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for StrictH1<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Validated bytes first.
            if this.pos < this.ready {
                let n = (this.ready - this.pos).min(buf.remaining());
                buf.put_slice(&this.stash[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.end {
                    this.release_stash();
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !matches!(this.refused, Refused::No) {
                return this.poll_refused(cx, buf);
            }
            let Some(io) = this.io.as_mut() else {
                // Parked: hyper sees the end of the stream.
                return Poll::Ready(Ok(()));
            };
            match this.rx.state {
                RxState::Passthrough => return Pin::new(io).poll_read(cx, buf),
                RxState::AwaitUpgrade => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                _ => {}
            }
            if this.unscanned {
                this.unscanned = false;
                this.scan_stash();
                continue;
            }

            if this.end == this.ready {
                // The common case: inspect in place what the transport put in hyper's buffer.
                let start = buf.filled().len();
                let polled = Pin::new(io).poll_read(cx, buf);
                if polled.is_pending() && this.may_park() && this.park_asked(cx) {
                    return this.poll_park(cx);
                }
                ready!(polled)?;
                let end = buf.filled().len();
                if end == start {
                    return Poll::Ready(Ok(()));
                }
                let (released, scan) = this.rx.scan(&buf.filled()[start..end]);
                match scan {
                    Scan::Done => {}
                    Scan::Hold => {
                        this.hold(&buf.filled()[start + released..end]);
                        buf.set_filled(start + released);
                    }
                    Scan::Refused(rejection) => {
                        buf.set_filled(start + released);
                        this.refuse(rejection);
                    }
                }
                this.after_scan();
                if released > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }

            // A head is incomplete: read more into the stash, behind the held bytes.
            this.reserve(STASH_CHUNK);
            let old = this.end;
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut chunk = ReadBuf::new(&mut this.stash[old..]);
            let polled = Pin::new(io).poll_read(cx, &mut chunk);
            let n = chunk.filled().len();
            this.end = old + n;
            ready!(polled)?;
            if n == 0 {
                // The client is gone in the middle of a head: hyper sees a clean end of stream.
                this.release_stash();
                return Poll::Ready(Ok(()));
            }
            this.scan_stash();
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for StrictH1<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(this.transport()?).poll_write(cx, buf))?;
        this.on_written(&buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(this.transport()?).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.on_written(&b[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(IO::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Parked: the transport is the connection task's, and stays open.
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if let Refused::Waiting(rejection) = &this.refused {
            // hyper closes without reading on (keep-alive off): it ignores whatever followed.
            tracing::debug!(
                reason = rejection.violation.reason,
                "connection closed before a refused request could be answered"
            );
        }
        Pin::new(io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;
