//! Choosing the protocol of a plain TCP connection once, from its first bytes; and telling a
//! plain HTTP request that it reached a TLS listener.
//!
//! A connection whose first 24 bytes are the HTTP/2 prior-knowledge preface (RFC 9113 §3.4) is
//! HTTP/2; one whose bytes part from the preface is HTTP/1. The decision is bounded by the
//! listener's `header_read_timeout_ms`: a client that sends nothing, or stops inside the
//! preface, is closed. The bytes read to decide are handed back to the chosen parser through
//! [`Rewind`], so neither hyper nor the HTTP/1 framing guard knows that anything was read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer to plain HTTP on a TLS listener, as nginx gives it: the client (often a URL
/// typed with `http://` and a TLS port) learns what went wrong instead of reading TLS bytes as
/// "HTTP/0.9".
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 63\r\n\
connection: close\r\n\
\r\n\
400 Bad Request: The plain HTTP request was sent to HTTPS port\n";

/// At most this much of the plain request is read (and dropped) after the answer, so that
/// closing with unread bytes does not reset the connection before the client reads it.
const PLAIN_HTTP_DRAIN: usize = 16 * 1024;

/// Whether a connection to a TLS listener starts with a plain HTTP request rather than a TLS
/// record: its first byte is an upper-case ASCII letter (a method: `GET`, `POST`, …) where a
/// TLS ClientHello starts with 0x16. Peeks; nothing is consumed. Waits for the first byte (the
/// caller bounds the wait by the handshake timeout).
pub(crate) async fn is_plain_http(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0].is_ascii_uppercase())
}

/// Answers a plain HTTP request on a TLS listener with [`PLAIN_HTTP_ANSWER`], then reads at
/// most [`PLAIN_HTTP_DRAIN`] bytes of the request until the client closes (bounded in time
/// by the caller), and shuts the connection down. Errors end it early; the connection is
/// closed either way.
pub(crate) async fn answer_plain_http<S>(stream: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if stream.write_all(PLAIN_HTTP_ANSWER).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < PLAIN_HTTP_DRAIN {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// The protocol a connection speaks, decided once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.x, served through the framing guard.
    Http1,
    /// HTTP/2 (ALPN `h2`, or the h2c preface).
    Http2,
}

/// Why a connection was closed before its protocol was known. (Silence, or a preface that
/// stops, is closed by the connection's watch once `header_read_timeout_ms` has passed.)
#[derive(Debug, thiserror::Error)]
pub(crate) enum SniffError {
    /// The client closed the connection first.
    #[error("connection closed before a request")]
    Closed,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads the start of a connection until it is known whether it is the h2c preface; resolves
/// to the protocol and the stream with the bytes read put back in front ([`Rewind`]).
///
/// It reads up to [`SNIFF_READ`] bytes at once, into a buffer that [`Rewind`] hands to the
/// chosen parser and then frees: a request head that came in one segment is read once, by the
/// sniff, not once for the sniff and again for the parser. It sets no timer: the connection's
/// watch bounds it (see [`Watched::opening`](super::watch::Watched::opening)).
#[derive(Debug)]
pub(crate) struct Sniff<S> {
    /// `None` once resolved.
    io: Option<S>,
    buf: Vec<u8>,
}

/// The most a sniff reads at once: most request heads, in the allocator's smallest-bin sizes.
const SNIFF_READ: usize = 1024;

// === impl Sniff ===

impl<S> Sniff<S> {
    /// Starts sniffing `io`.
    pub(crate) fn new(io: S) -> Self {
        Self {
            io: Some(io),
            buf: Vec::with_capacity(SNIFF_READ),
        }
    }
}

impl<S: AsyncRead + Unpin> Future for Sniff<S> {
    type Output = Result<(Protocol, Rewind<S>), SniffError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            // Polled again after it resolved: the stream is gone.
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(Err(SniffError::Closed));
            };
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(io),
                cx,
                &mut this.buf
            ))?;
            if n == 0 {
                return Poll::Ready(Err(SniffError::Closed));
            }
            let len = this.buf.len().min(PREFACE.len());
            let protocol = if this.buf[..len] != PREFACE[..len] {
                Protocol::Http1
            } else if len == PREFACE.len() {
                Protocol::Http2
            } else {
                continue;
            };
            let Some(inner) = this.io.take() else {
                return Poll::Ready(Err(SniffError::Closed));
            };
            // A read that filled the buffer may have left more in the socket.
            let more = this.buf.len() == this.buf.capacity();
            return Poll::Ready(Ok((
                protocol,
                Rewind {
                    replay: std::mem::take(&mut this.buf),
                    pos: 0,
                    more,
                    inner,
                },
            )));
        }
    }
}

/// A stream that first replays the bytes [`Sniff`] read, then reads from the inner stream.
/// Writes go straight through.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    /// The sniffed bytes; freed once replayed.
    replay: Vec<u8>,
    pos: usize,
    /// The sniff's last read filled its buffer: the socket may hold more right behind it.
    more: bool,
    inner: S,
}

impl<S> Rewind<S> {
    /// Whether sniffed bytes are still to be replayed.
    pub(crate) fn has_replay(&self) -> bool {
        self.pos < self.replay.len()
    }

    /// The inner stream.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.has_replay() {
            let n = (self.replay.len() - self.pos).min(buf.remaining());
            buf.put_slice(&self.replay[self.pos..self.pos + n]);
            self.pos += n;
            if !self.has_replay() {
                self.replay = Vec::new();
                self.pos = 0;
                if self.more && buf.remaining() > 0 {
                    // Add what the socket already has, so that a request head usually reaches
                    // the parser whole rather than split after the sniffed bytes. A read error
                    // here comes back on the next read.
                    let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
                }
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn sniffed(sent: &[u8], close: bool) -> Result<(Protocol, Vec<u8>), SniffError> {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        if close {
            drop(client);
            let (p, mut io) = Sniff::new(server).await?;
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            return Ok((p, all));
        }
        let (p, mut io) = Sniff::new(server).await?;
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        Ok((p, all))
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_is_replayed() {
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let (p, replayed) = sniffed(&sent, false).await.unwrap();
        assert_eq!(p, Protocol::Http2);
        assert_eq!(replayed, sent);
    }

    #[tokio::test]
    async fn the_first_differing_byte_decides_http1() {
        let sent = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let (p, replayed) = sniffed(sent, false).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        assert_eq!(replayed, sent);
        // A request that starts like the preface but is not it.
        let (p, replayed) = sniffed(b"PRI * HTTP/1.1\r\n\r\n", true).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        assert_eq!(replayed, b"PRI * HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_partial_preface_waits_and_silence_too() {
        use std::time::Duration;
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PRI").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), Sniff::new(server)).await;
        assert!(r.is_err(), "{r:?}");
        let (_client, server) = tokio::io::duplex(1024);
        let r = tokio::time::timeout(Duration::from_millis(20), Sniff::new(server)).await;
        assert!(r.is_err(), "{r:?}");
    }

    #[tokio::test]
    async fn the_first_read_after_the_sniff_gets_the_whole_head() {
        let (mut client, server) = tokio::io::duplex(1024);
        let head = b"GET /a/longer/path HTTP/1.1\r\nhost: a\r\n\r\n";
        client.write_all(head).await.unwrap();
        let (p, mut io) = Sniff::new(server).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut buf = [0u8; 1024];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], head);
    }

    /// A head longer than one sniff read: the rest is read behind the replayed bytes, in the
    /// same read; a shorter one is not followed by a read of the (drained) socket.
    #[tokio::test]
    async fn a_head_longer_than_the_sniff_read_still_comes_whole() {
        let (mut client, server) = tokio::io::duplex(8192);
        let mut head = b"GET / HTTP/1.1\r\nhost: a\r\nx-long: ".to_vec();
        head.resize(3 * SNIFF_READ, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        client.write_all(&head).await.unwrap();
        let (p, mut io) = Sniff::new(server).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        assert!(io.more, "the sniff filled its buffer");
        let mut buf = vec![0u8; 8192];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &head[..]);
        assert!(io.replay.capacity() == 0, "the replayed bytes are freed");
    }

    #[tokio::test]
    async fn plain_http_on_a_tls_port_is_told_so_and_a_client_hello_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, plain) in [
            (&b"GET / HTTP/1.1\r\n"[..], true),
            (&[0x16, 3, 1][..], false),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(sent).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            assert_eq!(is_plain_http(&server).await.unwrap(), plain);
            if plain {
                client.shutdown().await.unwrap();
                answer_plain_http(&mut server).await;
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.unwrap();
                assert_eq!(answer, PLAIN_HTTP_ANSWER);
                let text = String::from_utf8(answer).unwrap();
                let (_, body) = text.split_once("\r\n\r\n").unwrap();
                assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
            }
        }
    }

    #[tokio::test]
    async fn eof_before_a_decision_is_closed() {
        let r = sniffed(b"PRI *", true).await;
        assert!(matches!(r, Err(SniffError::Closed)), "{r:?}");
    }
}
