//! Strict HTTP/1.1 request framing, enforced below hyper (DESIGN §5).
//!
//! hyper's HTTP/1 parser is lenient in ways that cannot be detected once it has parsed a request:
//! a `content-length` that follows `transfer-encoding` is dropped, and so is a duplicate identical
//! `content-length`. [`StrictH1`] therefore sits between the socket (plain TCP or TLS) and hyper
//! and follows the message boundaries of the client's byte stream itself:
//!
//! * A request head is handed to hyper only once it is complete and valid. Invalid framing
//!   (`content-length` together with `transfer-encoding`, a duplicate or malformed
//!   `content-length`, a `transfer-encoding` other than exactly `chunked`, `transfer-encoding`
//!   on HTTP/1.0, obsolete line folding, whitespace before a colon, control characters, …) is a
//!   *violation*: no byte of that head ever reaches hyper, so the request never reaches a service
//!   nor an upstream. A head larger than the configured limit, or with more than
//!   [`MAX_HEADERS`] fields, is a violation too (431), which enforces the limit exactly even
//!   below hyper's 8 KiB floor.
//! * Bodies are followed (`content-length` bytes, or the chunked encoding up to its last chunk
//!   and trailers, mirroring hyper's chunked decoder) and released as they arrive.
//! * After a violation, once hyper has finished every response it owes for the requests before
//!   it, the wrapper writes its own `400 Bad Request` (`431` for size), with `connection: close`
//!   and an `x-request-id`, then reports end of stream to hyper, which sees a clean end of stream
//!   on an idle connection and closes. Waiting matters: an end of stream seen while a response is
//!   pending makes hyper abort the connection without answering, so the write side follows the
//!   response boundaries hyper produces (see `Tx`). The response is written from `poll_read`
//!   rather than left to `poll_shutdown` because hyper skips `poll_shutdown` when an earlier
//!   request on the connection asked for an upgrade that was declined; `poll_shutdown` still
//!   sends it if hyper closes between responses without reading again (keep-alive off).
//! * Upgrades: after a request that hyper may upgrade (`CONNECT`, or HTTP/1.1 with an `upgrade`
//!   header) the following client bytes are held until hyper's response to it has been written:
//!   `101` (or `2xx` to `CONNECT`) makes the stream opaque (pass-through from then on), any
//!   other status resumes strict inspection. A declined upgrade is thus no way around the rules.
//! * The HTTP/2 prior-knowledge preface at the start of the connection switches to pass-through
//!   (hyper-util's auto builder serves h2c).
//! * Cases left to hyper, which rejects them and closes the connection itself: a malformed chunked
//!   body (inspection stops, everything is passed through).
//!
//! The common case (a head read whole, then a sized body or none) neither copies nor allocates:
//! heads are parsed in place in hyper's own read buffer. Only a head split across reads (and the
//! first request of a connection, which hyper-util's protocol sniffing reads 24 bytes at a time)
//! goes through an internal buffer. While a head is held, hyper's header read timeout runs as
//! usual (hyper waits for a head it has not seen); at the start of a connection, hyper-util's
//! sniffing (which has no timeout) is given an empty line so that it hands over to hyper.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface ("prior knowledge", RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Header fields parsed per head; more is a 431 (hyper's own default limit is the same).
const MAX_HEADERS: usize = 100;
/// Bytes read at a time into the internal buffer while a head is incomplete.
const STASH_CHUNK: usize = 8192;
/// Reads into a smaller buffer than this at the start of a connection (hyper-util reads 24 bytes
/// to sniff for the HTTP/2 preface) go through the internal buffer, so that the head is read in
/// one go rather than re-parsed 24 bytes at a time.
const SMALL_READ: usize = 1024;
/// Longest accepted `content-length` value: 19 digits always fit in a `u64`.
const MAX_CONTENT_LENGTH_DIGITS: usize = 19;

/// An HTTP/1 connection whose request framing is checked before hyper sees it.
///
/// Wraps a server-side transport `IO` and is itself the transport handed to hyper
/// (`TokioIo::new(StrictH1::new(io, max_head_bytes))`). See the module documentation.
pub(crate) struct StrictH1<IO> {
    io: IO,
    rx: Rx,
    tx: Tx,
    /// Client bytes read but not yet handed to hyper: `[pos, ready)` are validated and ready to be
    /// delivered, `[ready, len)` are held (an incomplete head, or bytes waiting for an upgrade
    /// decision). Empty (unallocated) in the common case.
    stash: Vec<u8>,
    pos: usize,
    ready: usize,
    /// The held bytes must be inspected again (an upgrade was declined) before reading more.
    unscanned: bool,
    /// The first framing violation; nothing after it is read.
    violation: Option<Violation>,
    /// Waiting in `poll_read` for hyper to finish its responses or for an upgrade decision.
    read_waker: Option<Waker>,
    reply: Reply,
}

impl<IO> StrictH1<IO> {
    /// Wraps `io`; request heads longer than `max_head_bytes` are answered with 431.
    pub(crate) fn new(io: IO, max_head_bytes: usize) -> Self {
        Self {
            io,
            rx: Rx {
                state: RxState::Start,
                max_head: max_head_bytes,
                pending: VecDeque::new(),
                await_upgrade: false,
            },
            tx: Tx {
                state: TxState::Head,
                head: Vec::new(),
            },
            stash: Vec::new(),
            pos: 0,
            ready: 0,
            unscanned: false,
            violation: None,
            read_waker: None,
            reply: Reply::None,
        }
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

    fn reject(&mut self, violation: Violation) {
        tracing::debug!(
            status = violation.status,
            reason = violation.reason,
            "rejecting an HTTP/1 request with invalid framing; closing the connection"
        );
        self.violation = Some(violation);
    }

    /// Writes and flushes the error response, if one is being sent.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncWrite + Unpin,
    {
        if let Reply::Writing(bytes, written) = &mut self.reply {
            while *written < bytes.len() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..])) {
                    Ok(0) => {
                        self.reply = Reply::Done;
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Ok(n) => *written += n,
                    Err(e) => {
                        self.reply = Reply::Done;
                        return Poll::Ready(Err(e));
                    }
                }
            }
            let flushed = ready!(Pin::new(&mut self.io).poll_flush(cx));
            self.reply = Reply::Done;
            return Poll::Ready(flushed);
        }
        Poll::Ready(Ok(()))
    }

    /// Follows up on a scan: inspection that has stopped needs no response tracking either.
    fn after_scan(&mut self) {
        if matches!(self.rx.state, RxState::Passthrough) {
            self.tx.state = TxState::Off;
        }
    }

    /// Inspects the held bytes of the stash.
    fn scan_stash(&mut self) {
        let (released, outcome) = self.rx.scan(&self.stash[self.ready..]);
        self.ready += released;
        if let Outcome::Violation(v) = outcome {
            self.stash.truncate(self.ready);
            self.reject(v);
        }
        self.after_scan();
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
            self.ready = self.stash.len();
            self.unscanned = false;
            wake = true;
        } else if events.declined {
            self.rx.await_upgrade = false;
            if matches!(self.rx.state, RxState::AwaitUpgrade) {
                self.rx.state = RxState::Head;
                self.unscanned = self.ready < self.stash.len();
                wake = true;
            }
        }
        if self.violation.is_some() && self.hyper_idle() {
            wake = true;
        }
        if wake && let Some(waker) = self.read_waker.take() {
            waker.wake();
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
        // hyper-util's auto builder reads a few bytes to tell HTTP/2 from HTTP/1.
        let sniffing = matches!(this.rx.state, RxState::Start) && buf.remaining() < SMALL_READ;
        loop {
            // Validated bytes first.
            if this.pos < this.ready {
                let n = (this.ready - this.pos).min(buf.remaining());
                buf.put_slice(&this.stash[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.stash.len() {
                    this.stash = Vec::new();
                    this.pos = 0;
                    this.ready = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(violation) = this.violation {
                // Once hyper owes no response any more: the error response, then end of stream
                // (hyper then shuts the connection down).
                if this.hyper_idle() {
                    if let Reply::None = this.reply {
                        this.reply = Reply::Writing(error_response(violation), 0);
                    }
                    if let Err(e) = ready!(this.poll_reply(cx)) {
                        tracing::debug!(error = %e, "failed to send the framing error response");
                    }
                    return Poll::Ready(Ok(()));
                }
                this.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match this.rx.state {
                RxState::Passthrough => return Pin::new(&mut this.io).poll_read(cx, buf),
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

            let held = this.stash.len() - this.ready;
            if held == 0 && !sniffing {
                // The common case: inspect in place what the transport put in hyper's buffer.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let end = buf.filled().len();
                if end == start {
                    return Poll::Ready(Ok(()));
                }
                let (released, outcome) = this.rx.scan(&buf.filled()[start..end]);
                match outcome {
                    Outcome::Done => {}
                    Outcome::Hold => {
                        this.stash
                            .extend_from_slice(&buf.filled()[start + released..end]);
                        buf.set_filled(start + released);
                    }
                    Outcome::Violation(v) => {
                        buf.set_filled(start + released);
                        this.reject(v);
                    }
                }
                this.after_scan();
                if released > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }

            // A head is incomplete: read more into the stash, behind the held bytes.
            if this.pos > 0 {
                this.stash.drain(..this.pos);
                this.ready -= this.pos;
                this.pos = 0;
            }
            let old = this.stash.len();
            this.stash.resize(old + STASH_CHUNK, 0);
            let mut chunk = ReadBuf::new(&mut this.stash[old..]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut chunk);
            let n = chunk.filled().len();
            this.stash.truncate(old + n);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if n == 0 {
                // The client is gone in the middle of a head: hyper sees a clean end of stream.
                this.stash = Vec::new();
                this.pos = 0;
                this.ready = 0;
                return Poll::Ready(Ok(()));
            }
            this.scan_stash();
            if sniffing
                && this.pos == this.ready
                && this.violation.is_none()
                && !matches!(this.rx.state, RxState::Start)
            {
                // Not HTTP/2, but the head is incomplete. hyper-util's sniffing has no timeout:
                // give it an empty line (hyper ignores those before a request line) so that it
                // hands the connection to hyper's HTTP/1 server, whose header read timeout then
                // runs while the rest of the head is awaited.
                buf.put_slice(if buf.remaining() >= 2 { b"\r\n" } else { b"\n" });
                return Poll::Ready(Ok(()));
            }
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
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.on_written(&buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
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
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let (Reply::None, Some(v)) = (&this.reply, this.violation) {
            // Only between responses: anything else would corrupt the one hyper left unfinished.
            this.reply = if this.hyper_idle() {
                Reply::Writing(error_response(v), 0)
            } else {
                Reply::Done
            };
        }
        ready!(this.poll_reply(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The wrapper's own error response after a violation.
enum Reply {
    None,
    Writing(Vec<u8>, usize),
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Violation {
    status: u16,
    reason: &'static str,
}

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

fn error_response(v: Violation) -> Vec<u8> {
    let id = snakeway_core::request_id::generate();
    let id = id.to_str().unwrap_or("-");
    let text = if v.status == 431 {
        "Request Header Fields Too Large"
    } else {
        "Bad Request"
    };
    let status = v.status;
    let body = format!("{status} {text}: {} (request id {id})\n", v.reason);
    format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\nx-request-id: {id}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// === read side ===

/// What hyper will make of a request, as far as its response's framing is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Kind {
    /// `HEAD`: the response has no body.
    head: bool,
    /// `CONNECT`: a 2xx response turns the connection into a tunnel.
    connect: bool,
    /// HTTP/1.1 with an `upgrade` header: a 101 response switches protocols.
    upgrade: bool,
}

struct Rx {
    state: RxState,
    max_head: usize,
    /// Requests handed to hyper whose response head hyper has not written yet.
    pending: VecDeque<Kind>,
    /// A request hyper may upgrade was handed over and its response is not known yet.
    await_upgrade: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    /// Start of the connection: is it the HTTP/2 preface?
    Start,
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

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every byte is released.
    Done,
    /// The bytes after those released are held (an incomplete head, or an upgrade is pending).
    Hold,
    /// The bytes after those released are an invalid head.
    Violation(Violation),
}

enum HeadOutcome {
    Complete(usize),
    Partial,
    Invalid(Violation),
}

impl Rx {
    /// Inspects `data`, the next bytes from the client: returns how many of them hyper may have,
    /// and what to do with the rest.
    fn scan(&mut self, data: &[u8]) -> (usize, Outcome) {
        let mut pos = 0;
        loop {
            if matches!(self.state, RxState::Passthrough) {
                return (data.len(), Outcome::Done);
            }
            if pos == data.len() {
                return (pos, Outcome::Done);
            }
            match &mut self.state {
                RxState::Start => {
                    let n = data.len().min(H2_PREFACE.len());
                    if data[..n] == H2_PREFACE[..n] {
                        if n < H2_PREFACE.len() {
                            return (0, Outcome::Hold);
                        }
                        self.state = RxState::Passthrough;
                    } else {
                        self.state = RxState::Head;
                    }
                }
                RxState::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 §2.2).
                    while pos < data.len() && matches!(data[pos], b'\r' | b'\n') {
                        pos += 1;
                    }
                    if pos == data.len() {
                        return (pos, Outcome::Done);
                    }
                    match self.head(&data[pos..]) {
                        HeadOutcome::Complete(len) => pos += len,
                        HeadOutcome::Partial => return (pos, Outcome::Hold),
                        HeadOutcome::Invalid(v) => return (pos, Outcome::Violation(v)),
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
                    Err(()) => self.state = RxState::Passthrough,
                },
                RxState::AwaitUpgrade => return (pos, Outcome::Hold),
                RxState::Passthrough => unreachable!("handled above"),
            }
        }
    }

    fn end_of_message(&mut self) {
        self.state = if self.await_upgrade {
            RxState::AwaitUpgrade
        } else {
            RxState::Head
        };
    }

    /// Parses and checks the head at the start of `buf`; on success, sets up its body.
    fn head(&mut self, buf: &[u8]) -> HeadOutcome {
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > self.max_head => {
                return HeadOutcome::Invalid(Violation::too_large("request head too large"));
            }
            Ok(httparse::Status::Partial) => return HeadOutcome::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return HeadOutcome::Invalid(Violation::too_large("too many header fields"));
            }
            Err(e) => return HeadOutcome::Invalid(Violation::bad_request(parse_error(e, buf))),
        };
        if len > self.max_head {
            return HeadOutcome::Invalid(Violation::too_large("request head too large"));
        }
        let framing = match check_framing(&req) {
            Ok(framing) => framing,
            Err(reason) => return HeadOutcome::Invalid(Violation::bad_request(reason)),
        };
        let method = req.method.unwrap_or_default();
        let kind = Kind {
            head: method == "HEAD",
            connect: method == "CONNECT",
            upgrade: req.version == Some(1) && framing.upgrade,
        };
        self.pending.push_back(kind);
        self.await_upgrade = kind.connect || kind.upgrade;
        match framing.body {
            Body::Length(n) if n > 0 => self.state = RxState::Length(n),
            Body::Chunked => self.state = RxState::Chunked(Chunked::default()),
            Body::Length(_) | Body::None => self.end_of_message(),
        }
        HeadOutcome::Complete(len)
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

#[derive(Debug, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
struct Framing {
    body: Body,
    /// An `upgrade` header is present.
    upgrade: bool,
}

/// The framing rules of DESIGN §5 (RFC 9112 §6, without its leniencies).
fn check_framing(req: &httparse::Request<'_, '_>) -> Result<Framing, &'static str> {
    let mut content_length = None;
    let mut chunked = false;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err("duplicate content-length");
            }
            content_length = Some(parse_content_length(h.value).ok_or("malformed content-length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err("duplicate transfer-encoding");
            }
            if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported transfer-encoding (only \"chunked\" is accepted)");
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let body = match (content_length, chunked) {
        (Some(_), true) => return Err("both content-length and transfer-encoding"),
        (None, true) if req.version != Some(1) => {
            return Err("transfer-encoding in an HTTP/1.0 request");
        }
        (None, true) => Body::Chunked,
        (Some(n), false) => Body::Length(n),
        (None, false) => Body::None,
    };
    Ok(Framing { body, upgrade })
}

/// `1*DIGIT`, surrounding whitespace aside.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty()
        || digits.len() > MAX_CONTENT_LENGTH_DIGITS
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Follows a chunked body (RFC 9112 §7.1) the way hyper's decoder reads it, so that both agree on
/// where the message ends; whatever hyper's decoder rejects is an error here too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then the chunk data left.
    size: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// First digit of a chunk size.
    #[default]
    Start,
    Size,
    /// Whitespace after the size.
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk's size line: a trailer field or the final CRLF.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunked {
    /// Consumes the encoding in `data`: how many bytes, and whether the body ended there.
    fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if self.state == Data {
                let take = self.size.min((data.len() - i) as u64);
                i += take as usize;
                self.size -= take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Start, b) => {
                    self.size = u64::from(hex(b).ok_or(())?);
                    Size
                }
                (Size, b) if hex(b).is_some() => {
                    let d = u64::from(hex(b).ok_or(())?);
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .ok_or(())?;
                    Size
                }
                (Size | SizeLws, b' ' | b'\t') => SizeLws,
                (Size | SizeLws, b';') => Extension,
                (Size | SizeLws, b'\r') => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(()),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                (EndCr, b'\r') => EndLf,
                (EndCr, _) => Trailer,
                (Trailer, b'\r') => TrailerLf,
                (Trailer, _) => Trailer,
                (TrailerLf, b'\n') => EndCr,
                (EndLf, b'\n') => {
                    *self = Self::default();
                    return Ok((i, true));
                }
                _ => return Err(()),
            };
        }
        Ok((i, false))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// === write side ===

/// Follows the responses hyper writes, to know when it owes none (and whether it upgraded).
///
/// hyper's output is well-formed, and the framing of each response follows from its request
/// (HEAD, CONNECT) and its head: no body for 1xx/204/304 or a HEAD request, else chunked,
/// `content-length`, or until the connection closes.
struct Tx {
    state: TxState,
    /// A response head split across writes.
    head: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxState {
    Head,
    Length(u64),
    Chunked(Chunked),
    /// A body delimited by the end of the connection.
    UntilClose,
    /// Not tracking: the connection was upgraded, or inspection stopped.
    Off,
    /// hyper's output did not parse (not expected).
    Broken,
}

#[derive(Default)]
struct TxEvents {
    /// A 101, or a 2xx to CONNECT, was written: the connection is no longer HTTP/1.
    upgraded: bool,
    /// The response to a request hyper could have upgraded did not upgrade.
    declined: bool,
}

struct ResponseHead {
    code: u16,
    /// `Some(true)` for a chunked `transfer-encoding`, `Some(false)` for another.
    chunked: Option<bool>,
    content_length: Option<u64>,
}

impl Tx {
    fn feed(&mut self, mut data: &[u8], pending: &mut VecDeque<Kind>, events: &mut TxEvents) {
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
                    Err(()) => self.state = TxState::Broken,
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
        pending: &mut VecDeque<Kind>,
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
        let kind = pending.pop_front().unwrap_or_default();
        if kind.connect && (200..300).contains(&head.code) {
            self.state = TxState::Off;
            events.upgraded = true;
            return;
        }
        events.declined |= kind.connect || kind.upgrade;
        self.state = if kind.head || head.code == 204 || head.code == 304 {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const MAX_HEAD: usize = 4096;
    const TIMEOUT: Duration = Duration::from_secs(5);
    const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

    type Body = BoxBody<Bytes, hyper::Error>;

    fn full(s: String) -> Body {
        Full::new(Bytes::from(s))
            .map_err(|never| match never {})
            .boxed()
    }

    async fn handle(
        req: Request<Incoming>,
        hits: Arc<AtomicUsize>,
    ) -> Result<Response<Body>, hyper::Error> {
        hits.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if method == hyper::Method::CONNECT {
            let mut resp = Response::new(full(String::new()));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            return Ok(resp);
        }
        match path.as_str() {
            "/ws" if req.headers().contains_key("upgrade") => {
                let on_upgrade = hyper::upgrade::on(req);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut resp = Response::new(full(String::new()));
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut()
                    .insert("connection", "upgrade".parse().unwrap());
                resp.headers_mut()
                    .insert("upgrade", "websocket".parse().unwrap());
                return Ok(resp);
            }
            "/slow" => tokio::time::sleep(Duration::from_millis(200)).await,
            "/stream" => {
                let frames = ["one", "two", "three"].map(|s| Ok(Frame::data(Bytes::from(s))));
                return Ok(Response::new(
                    StreamBody::new(futures_util::stream::iter(frames)).boxed(),
                ));
            }
            "/empty" => {
                let mut resp = Response::new(full(String::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                return Ok(resp);
            }
            _ => {}
        }
        let body = req.into_body().collect().await?;
        let trailers = body.trailers().map_or(0, |t| t.len());
        let len = body.to_bytes().len();
        Ok(Response::new(full(format!(
            "{method} {path} {len} {trailers}\n"
        ))))
    }

    struct Server {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
        /// Connections hyper called `poll_shutdown` on.
        shutdowns: Arc<AtomicUsize>,
    }

    /// Counts `poll_shutdown` calls on the transport under `StrictH1`.
    struct Probe {
        inner: TcpStream,
        shutdowns: Arc<AtomicUsize>,
    }

    impl AsyncRead for Probe {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Probe {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.shutdowns.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut this.inner).poll_shutdown(cx)
        }
    }

    async fn server(max_head: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let shutdowns = Arc::new(AtomicUsize::new(0));
        let shutdown_counter = shutdowns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let hits = counter.clone();
                let stream = Probe {
                    inner: stream,
                    shutdowns: shutdown_counter.clone(),
                };
                tokio::spawn(serve_connection(stream, max_head, hits));
            }
        });
        Server {
            addr,
            hits,
            shutdowns,
        }
    }

    /// Serves one connection as the listener does: hyper-util's auto builder over `StrictH1`.
    async fn serve_connection<IO>(io: IO, max_head: usize, hits: Arc<AtomicUsize>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| handle(req, hits.clone()));
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(max_head.max(8192))
            .keep_alive(true);
        let io = TokioIo::new(StrictH1::new(io, max_head));
        let _ = http.serve_connection_with_upgrades(io, service).await;
    }

    impl Server {
        async fn connect(&self) -> TcpStream {
            let stream = TcpStream::connect(self.addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            stream
        }

        /// Writes `raw` at once and reads everything until the server closes.
        async fn exchange(&self, raw: &[u8]) -> String {
            let mut stream = self.connect().await;
            stream.write_all(raw).await.unwrap();
            read_all(&mut stream).await
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    async fn read_all(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out))
            .await
            .expect("the server should close the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Status codes of the responses in `raw`, in order.
    fn statuses(raw: &str) -> Vec<u16> {
        raw.match_indices("HTTP/1.1 ")
            .map(|(i, _)| raw[i + 9..i + 12].parse().unwrap())
            .collect()
    }

    /// The response is a single 400 from `StrictH1`, and the request never reached the service.
    async fn assert_rejected(raw: &[u8], reason: &str) {
        let server = server(MAX_HEAD).await;
        let resp = server.exchange(raw).await;
        assert_rejection(&resp, 400, reason);
        assert_eq!(statuses(&resp), [400], "{resp}");
        assert_eq!(server.hits(), 0, "the request must not reach the service");
    }

    fn assert_rejection(resp: &str, status: u16, reason: &str) {
        let tail = &resp[resp.rfind("HTTP/1.1 ").expect(resp)..];
        assert!(tail.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
        assert!(tail.contains("\r\nconnection: close\r\n"), "{resp}");
        assert!(
            tail.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
            "{resp}"
        );
        let id_at = tail.find("\r\nx-request-id: ").expect(resp) + 16;
        let id = &tail[id_at..id_at + tail[id_at..].find('\r').unwrap()];
        assert!(!id.is_empty());
        let (head, body) = tail.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{resp}"
        );
        assert!(body.contains(reason), "{body}");
        assert!(body.ends_with(&format!("(request id {id})\n")), "{body}");
    }

    // === rejections ===

    #[tokio::test]
    async fn content_length_with_transfer_encoding() {
        let reason = "both content-length and transfer-encoding";
        assert_rejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            reason,
        )
        .await;
        assert_rejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            reason,
        )
        .await;
    }

    #[tokio::test]
    async fn duplicate_content_length() {
        let raw =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello";
        assert_rejected(raw, "duplicate content-length").await;
    }

    #[tokio::test]
    async fn malformed_content_length() {
        for value in [
            "5, 5",
            "5,5",
            "+5",
            "-5",
            "0x5",
            "5 5",
            "",
            "12345678901234567890",
            "5;",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\nhello");
            assert_rejected(raw.as_bytes(), "malformed content-length").await;
        }
    }

    #[tokio::test]
    async fn content_length_with_surrounding_whitespace_is_accepted() {
        let server = server(MAX_HEAD).await;
        let raw =
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\nConnection: close\r\n\r\nhello";
        let resp = server.exchange(raw).await;
        assert_eq!(statuses(&resp), [200], "{resp}");
        assert!(resp.ends_with("POST /a 5 0\n"), "{resp}");
    }

    #[tokio::test]
    async fn transfer_encoding_other_than_chunked() {
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "gzip",
            "chunked;q=1",
            "",
        ] {
            let raw =
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            assert_rejected(raw.as_bytes(), "unsupported transfer-encoding").await;
        }
    }

    #[tokio::test]
    async fn two_transfer_encoding_headers() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_rejected(raw, "duplicate transfer-encoding").await;
    }

    #[tokio::test]
    async fn transfer_encoding_in_http10() {
        let raw = b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_rejected(raw, "transfer-encoding in an HTTP/1.0 request").await;
    }

    #[tokio::test]
    async fn obsolete_line_folding() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n";
        assert_rejected(raw, "obsolete line folding").await;
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\t5\r\n\r\nhello";
        assert_rejected(raw, "obsolete line folding").await;
    }

    #[tokio::test]
    async fn whitespace_before_colon() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello";
        assert_rejected(raw, "whitespace before a header field colon").await;
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n";
        assert_rejected(raw, "whitespace before a header field colon").await;
    }

    #[tokio::test]
    async fn control_character_in_header_name() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad\x01Name: 1\r\n\r\n";
        assert_rejected(raw, "invalid header field name").await;
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad\x7f: 1\r\n\r\n";
        assert_rejected(raw, "invalid header field name").await;
    }

    #[tokio::test]
    async fn control_character_in_header_value() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n";
        assert_rejected(raw, "invalid header field value").await;
    }

    #[tokio::test]
    async fn violation_in_a_head_split_across_writes() {
        let server = server(MAX_HEAD).await;
        let mut stream = server.connect().await;
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream
            .write_all(b"Transfer-Encoding: chunked\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(b"\r\n0\r\n\r\n").await.unwrap();
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [400], "{resp}");
        assert_rejection(&resp, 400, "both content-length and transfer-encoding");
        assert_eq!(server.hits(), 0);
    }

    #[tokio::test]
    async fn oversized_head_gets_431() {
        let server = server(1024).await;
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2000)
        );
        let resp = server.exchange(raw.as_bytes()).await;
        assert_eq!(statuses(&resp), [431], "{resp}");
        assert_rejection(&resp, 431, "request head too large");
        // Also when the head arrives in pieces and never ends.
        let mut stream = server.connect().await;
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        for _ in 0..20 {
            if stream
                .write_all(format!("X-Filler: {}\r\n", "b".repeat(100)).as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [431], "{resp}");
        assert_eq!(server.hits(), 0);
        // A head just within the limit is served.
        let head = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pad: \r\n\r\n";
        let raw = head.replace(
            "X-Pad: ",
            &format!("X-Pad: {}", "p".repeat(1024 - head.len())),
        );
        assert_eq!(raw.len(), 1024);
        let resp = server.exchange(raw.as_bytes()).await;
        assert_eq!(statuses(&resp), [200], "{resp}");
    }

    #[tokio::test]
    async fn too_many_header_fields_get_431() {
        let server = server(64 * 1024).await;
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            raw.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        raw.push_str("\r\n");
        let resp = server.exchange(raw.as_bytes()).await;
        assert_eq!(statuses(&resp), [431], "{resp}");
        assert_eq!(server.hits(), 0);
    }

    // === accepted traffic ===

    const CHUNKED_POST: &[u8] = b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
        5;name=value;other=\"x\"\r\nhello\r\nA \r\n0123456789\r\n0;last\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n";

    #[tokio::test]
    async fn keep_alive_sequence_with_bodies() {
        let server = server(MAX_HEAD).await;
        let mut stream = server.connect().await;
        let requests: [&[u8]; 5] = [
            b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            CHUNKED_POST,
            b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nPUT /three HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n",
            b"POST /four HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nwxyz",
        ];
        for request in requests {
            stream.write_all(request).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [200; 5], "{resp}");
        for body in [
            "POST /one 3 0\n",
            "POST /chunked 15 2\n",
            "GET /two 0 0\n",
            "PUT /three 0 0\n",
            "POST /four 4 0\n",
        ] {
            assert!(resp.contains(body), "{body} missing from {resp}");
        }
        assert_eq!(server.hits(), 5);
    }

    #[tokio::test]
    async fn pipelined_requests_in_one_write() {
        let server = server(MAX_HEAD).await;
        let mut raw = b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        raw.extend_from_slice(CHUNKED_POST);
        raw.extend_from_slice(b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let resp = server.exchange(&raw).await;
        assert_eq!(statuses(&resp), [200; 3], "{resp}");
        let one = resp.find("POST /one 3 0\n").unwrap();
        let chunked = resp.find("POST /chunked 15 2\n").unwrap();
        let two = resp.find("GET /two 0 0\n").unwrap();
        assert!(one < chunked && chunked < two, "{resp}");
    }

    #[tokio::test]
    async fn byte_by_byte_writes() {
        let server = server(MAX_HEAD).await;
        let mut stream = server.connect().await;
        let mut raw = CHUNKED_POST.to_vec();
        raw.extend_from_slice(
            b"POST /last HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
        for b in raw {
            stream.write_all(&[b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [200, 200], "{resp}");
        assert!(
            resp.contains("POST /chunked 15 2\n") && resp.contains("POST /last 2 0\n"),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn valid_request_then_invalid_one() {
        let server = server(MAX_HEAD).await;
        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        // Sequential: the first response is out before the bad request arrives.
        let mut stream = server.connect().await;
        stream
            .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(bad).await.unwrap();
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [200, 400], "{resp}");
        assert!(resp.contains("GET /first 0 0\n"));
        assert_rejection(&resp, 400, "duplicate content-length");
        assert_eq!(server.hits(), 1);
        // hyper saw a clean end of stream on an idle connection and shut it down.
        assert_eq!(server.shutdowns.load(Ordering::SeqCst), 1);
        // Pipelined, while hyper is still busy with the (slow) earlier requests.
        let mut raw = b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        raw.extend_from_slice(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
        raw.extend_from_slice(bad);
        let resp = server.exchange(&raw).await;
        assert_eq!(statuses(&resp), [200, 200, 400], "{resp}");
        assert!(
            resp.contains("GET /slow 0 0\n") && resp.contains("POST /slow 3 0\n"),
            "{resp}"
        );
        assert_rejection(&resp, 400, "duplicate content-length");
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn response_framing_is_followed_before_rejecting() {
        // HEAD (a content-length but no body), 204, a chunked response, 100-continue: the 400
        // comes after all of them, intact.
        let server = server(MAX_HEAD).await;
        let mut stream = server.connect().await;
        stream
            .write_all(b"POST /expect HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut interim))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        let mut raw = b"ok".to_vec();
        raw.extend_from_slice(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n");
        raw.extend_from_slice(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n");
        raw.extend_from_slice(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n");
        raw.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n");
        stream.write_all(&raw).await.unwrap();
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [200, 200, 204, 200, 400], "{resp}");
        assert!(resp.contains("POST /expect 2 0\n"), "{resp}");
        assert!(
            resp.contains("\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\nHTTP/1.1 400 "),
            "{resp}"
        );
        assert_rejection(&resp, 400, "unsupported transfer-encoding");
        assert_eq!(server.hits(), 4);
    }

    #[tokio::test]
    async fn accepted_upgrade_becomes_opaque() {
        let server = server(MAX_HEAD).await;
        let mut stream = server.connect().await;
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tokio::time::timeout(TIMEOUT, stream.read_exact(&mut b))
                .await
                .unwrap()
                .unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // Anything goes now, even what looks like a forbidden request.
        let opaque = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(opaque).await.unwrap();
        let mut echo = vec![0u8; opaque.len()];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, opaque);
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn declined_upgrade_keeps_inspecting() {
        let server = server(MAX_HEAD).await;
        let mut raw =
            b"GET /no-ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec();
        raw.extend_from_slice(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        raw.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        let resp = server.exchange(&raw).await;
        assert_eq!(statuses(&resp), [200, 405, 400], "{resp}");
        assert!(resp.contains("GET /no-ws 0 0\n"), "{resp}");
        assert_rejection(&resp, 400, "both content-length and transfer-encoding");
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn malformed_chunked_body_is_left_to_hyper() {
        let server = server(MAX_HEAD).await;
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
        let resp = server.exchange(raw).await;
        assert!(!resp.starts_with("HTTP/1.1 200 "), "{resp}");
    }

    #[tokio::test]
    async fn over_tls() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_der = cert.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, hits) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_connection(tls, MAX_HEAD, hits).await;
                    }
                });
            }
        });

        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut raw = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok".to_vec();
        raw.extend_from_slice(CHUNKED_POST);
        raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n");
        tls.write_all(&raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let resp = String::from_utf8(out).unwrap();
        assert_eq!(statuses(&resp), [200, 200, 400], "{resp}");
        assert!(resp.contains("POST /a 2 0\n") && resp.contains("POST /chunked 15 2\n"));
        assert_rejection(&resp, 400, "obsolete line folding");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn h2c_prior_knowledge_passes_through() {
        let server = server(MAX_HEAD).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let req = Request::post(format!("http://{}/h2", server.addr))
            .body(Full::new(Bytes::from("abc")))
            .unwrap();
        let resp = tokio::time::timeout(TIMEOUT, client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"POST /h2 3 0\n");
    }

    #[tokio::test]
    async fn client_gone_mid_head() {
        let server = server(MAX_HEAD).await;
        let mut stream = server.connect().await;
        stream.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        stream.shutdown().await.unwrap();
        let resp = read_all(&mut stream).await;
        assert!(resp.is_empty(), "{resp}");
        assert_eq!(server.hits(), 0);
    }

    #[tokio::test]
    async fn incomplete_head_is_subject_to_the_header_read_timeout() {
        // hyper-util's protocol sniffing has no timeout of its own: holding the first head must
        // not keep hyper from starting its header read timer.
        let server = server(MAX_HEAD).await;
        for partial in [&b"G"[..], b"GET / HTTP/1.1\r\nHost: a\r\n"] {
            let mut stream = server.connect().await;
            stream.write_all(partial).await.unwrap();
            let started = std::time::Instant::now();
            let resp = read_all(&mut stream).await;
            assert!(resp.is_empty(), "{resp}");
            assert!(started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_millis(100));
        }
        // Also on later requests of a keep-alive connection.
        let mut stream = server.connect().await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let resp = read_all(&mut stream).await;
        assert_eq!(statuses(&resp), [200], "{resp}");
        assert_eq!(server.hits(), 1);
    }

    // === the stream itself, without hyper ===

    /// A transport that yields scripted reads and records writes.
    struct Script {
        reads: VecDeque<Vec<u8>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Script {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(mut chunk) = this.reads.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    this.reads.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn script(reads: Vec<Vec<u8>>) -> (StrictH1<Script>, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let reads = reads.into_iter().filter(|r| !r.is_empty()).collect();
        let io = Script {
            reads,
            written: written.clone(),
        };
        (StrictH1::new(io, MAX_HEAD), written)
    }

    /// Reads everything through `StrictH1`, `step` bytes at a time at most.
    async fn drain(strict: &mut StrictH1<Script>, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(1), strict.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn valid_stream() -> Vec<u8> {
        let mut raw = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        raw.extend_from_slice(CHUNKED_POST);
        raw.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n\r\n");
        raw.extend_from_slice(
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        );
        raw
    }

    #[tokio::test]
    async fn every_split_point_is_handled() {
        let raw = valid_stream()[2..].to_vec();
        assert!(raw.starts_with(b"POST"));
        let head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for at in 0..=raw.len() {
            for step in [1, 7, 24, 8192] {
                let (mut strict, _) = script(vec![raw[..at].to_vec(), raw[at..].to_vec()]);
                let out = drain(&mut strict, step).await;
                // Sniffing reads of an incomplete first head are given an empty line (once the
                // bytes are known not to be the HTTP/2 preface: "P" still could be).
                let injected = step < SMALL_READ && (2..head_len).contains(&at);
                let expected = match (injected, step) {
                    (false, _) => raw.clone(),
                    (true, 1) => [&b"\n"[..], &raw].concat(),
                    (true, _) => [&b"\r\n"[..], &raw].concat(),
                };
                assert_eq!(out, expected, "split at {at}, reads of {step}");
                assert_eq!(strict.rx.pending.len(), 4);
                assert_eq!(strict.rx.state, RxState::Head);
            }
        }
        let (mut strict, _) = script(raw.iter().map(|&b| vec![b]).collect());
        assert_eq!(drain(&mut strict, 8192).await, raw);
        assert_eq!(strict.rx.pending.len(), 4);
    }

    #[tokio::test]
    async fn violation_waits_for_owed_responses() {
        let mut raw = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let valid = raw.len();
        raw.extend_from_slice(
            b"GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        );
        let (mut strict, written) = script(vec![raw.clone()]);
        let mut buf = [0u8; 4096];
        let n = strict.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &raw[..valid]);
        assert_eq!(
            strict.violation.map(|v| v.reason),
            Some("duplicate content-length")
        );
        // A response is owed: no end of stream yet.
        let pending = tokio::time::timeout(Duration::from_millis(50), strict.read(&mut buf)).await;
        assert!(pending.is_err(), "must wait for the owed response");
        // The response, in pieces, with a chunked body.
        for part in [
            &b"HTTP/1.1 200 OK\r\ntransfer-en"[..],
            b"coding: chunked\r\n\r\n2\r\nok\r",
            b"\n0\r\n\r",
        ] {
            strict.write_all(part).await.unwrap();
            assert!(!strict.hyper_idle());
        }
        strict.write_all(b"\n").await.unwrap();
        assert!(strict.hyper_idle());
        let n = tokio::time::timeout(Duration::from_secs(1), strict.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        strict.shutdown().await.unwrap();
        let written = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let (ours, reply) = written.split_at(written.find("HTTP/1.1 400").unwrap());
        assert_eq!(
            ours,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        );
        assert_rejection(reply, 400, "duplicate content-length");
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 0042\t"), Some(42));
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b" ",
            b"+1",
            b"-1",
            b"1,1",
            b"1 1",
            b"1e3",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_decoder_matches_hyper() {
        let mut c = Chunked::default();
        assert_eq!(
            c.advance(b"3 ;ext\r\nabc\r\n0\r\nT: 1\r\n\r\nnext"),
            Ok((24, true))
        );
        for bad in [
            &b"g\r\n"[..],
            b"3\n",
            b"3;a\nb",
            b"3\r\nabcX",
            b"3\r\nabc\rX",
            b"1 2\r\n",
            b"0\r\n\r\r",
        ] {
            assert_eq!(
                Chunked::default().advance(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut c = Chunked::default();
        assert_eq!(c.advance(b"ffffffffffffffff\r\n"), Ok((18, false)));
        assert_eq!(
            Chunked::default().advance(b"10000000000000000\r\n"),
            Err(())
        );
    }
}
