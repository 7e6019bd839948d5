//! Fuzzes the whole guard (`StrictH1`) over an in-memory stream read in arbitrary pieces: no
//! panics, and what hyper would be handed is the client's bytes in order, then, after a refusal,
//! only the synthetic request.

#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../src/conn/h1/mod.rs"]
mod h1;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client: `data` in reads of `step` bytes; writes are swallowed.
struct Client<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [step, read, limit, input @ ..] = data else {
        return;
    };
    let client = Client {
        data: input,
        step: usize::from(*step).max(1),
    };
    let rejections = h1::Rejections::default();
    let mut guard = h1::StrictH1::new(client, 64 + usize::from(*limit) * 32, rejections.clone());
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = vec![0u8; if *read == 0 { 8192 } else { usize::from(*read) }];
    // Reads until the end of the stream, or until the guard waits for hyper's responses.
    for _ in 0..input.len() * 2 + 16 {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => break,
        }
    }
    // `out` = a prefix of the client's bytes + (after a refusal only) a prefix of the synthetic
    // request.
    let refused = rejections.get().is_some();
    let synthetic = b"GET / HTTP/1.1\r\nhost: -\r\nconnection: close\r\n\r\n";
    let explained = (0..=out.len()).any(|i| {
        input.starts_with(&out[..i])
            && (i == out.len() || (refused && synthetic.starts_with(&out[i..])))
    });
    assert!(
        explained,
        "hyper would be handed {:?}",
        String::from_utf8_lossy(&out)
    );
});
