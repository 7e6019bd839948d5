//! Choosing the protocol of a plain TCP connection once, from its first bytes; and telling a
//! plain HTTP request that it reached a TLS listener.
//!
//! A connection whose first 24 bytes are the HTTP/2 prior-knowledge preface (RFC 9113 §3.4) is
//! HTTP/2; one whose bytes part from the preface is HTTP/1. The decision is bounded by the
//! listener's `header_read_timeout_ms`: a client that sends nothing, or stops inside the
//! preface, is closed. The bytes read to decide are handed back to the chosen parser through
//! [`Rewind`], so neither hyper nor the HTTP/1 framing guard knows that anything was read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// Why a connection was closed before its protocol was known.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SniffError {
    /// Nothing (or only part of the preface) arrived within `header_read_timeout_ms`.
    #[error("no protocol decided within the header read timeout")]
    TimedOut,
    /// The client closed the connection first.
    #[error("connection closed before a request")]
    Closed,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads the start of `io` until it is known whether it is the h2c preface, within `limit`.
/// Returns the protocol and `io` with the bytes read put back in front.
pub(crate) async fn sniff<S>(
    mut io: S,
    limit: Duration,
) -> Result<(Protocol, Rewind<S>), SniffError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; PREFACE.len()];
    let mut len = 0;
    let read = async {
        loop {
            let n = io.read(&mut buf[len..]).await?;
            if n == 0 {
                return Err(SniffError::Closed);
            }
            len += n;
            if buf[..len] != PREFACE[..len] {
                return Ok(Protocol::Http1);
            }
            if len == PREFACE.len() {
                return Ok(Protocol::Http2);
            }
        }
    };
    let protocol = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| SniffError::TimedOut)??;
    Ok((
        protocol,
        Rewind {
            prefix: buf,
            pos: 0,
            len,
            inner: io,
        },
    ))
}

/// A stream that first replays the bytes [`sniff`] read, then reads from the inner stream.
/// Writes go straight through.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: [u8; PREFACE.len()],
    pos: usize,
    len: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Whether sniffed bytes are still to be replayed.
    pub(crate) fn has_replay(&self) -> bool {
        self.pos < self.len
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
        if self.pos < self.len {
            let n = (self.len - self.pos).min(buf.remaining());
            buf.put_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.len && buf.remaining() > 0 {
                // Add what the socket already has, so that a request head usually reaches the
                // parser whole rather than split after the sniffed bytes. A read error here
                // comes back on the next read.
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
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
            let (p, mut io) = sniff(server, Duration::from_millis(50)).await?;
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            return Ok((p, all));
        }
        let (p, mut io) = sniff(server, Duration::from_millis(50)).await?;
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
    async fn a_partial_preface_times_out_and_silence_too() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PRI").await.unwrap();
        let r = sniff(server, Duration::from_millis(20)).await;
        assert!(matches!(r, Err(SniffError::TimedOut)), "{r:?}");
        let (_client, server) = tokio::io::duplex(1024);
        let r = sniff(server, Duration::from_millis(20)).await;
        assert!(matches!(r, Err(SniffError::TimedOut)), "{r:?}");
    }

    #[tokio::test]
    async fn the_first_read_after_the_sniff_gets_the_whole_head() {
        let (mut client, server) = tokio::io::duplex(1024);
        let head = b"GET /a/longer/path HTTP/1.1\r\nhost: a\r\n\r\n";
        client.write_all(head).await.unwrap();
        let (p, mut io) = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut buf = [0u8; 1024];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], head);
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
