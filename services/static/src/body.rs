//! A file streamed from disk in bounded memory, optionally compressed on the fly.
//!
//! **Reads.** An identity body first tries to read its next chunk right on the worker with
//! `preadv2(RWF_NOWAIT)`, which copies what is in the page cache and never waits for the disk
//! (`EAGAIN` when the first page is not cached; a short read when only the first pages are).
//! A hot file then costs one syscall per chunk and no thread hop. Only what would block goes
//! to the blocking pool. Compressed bodies always run their step on the blocking pool:
//! compressing a chunk is CPU work.
//!
//! **Buffers.** A body keeps a handle on the last chunk it sent. When hyper has written and
//! dropped that chunk, the next read reuses its memory (`Bytes::try_into_mut`): a streamed
//! file is then read into one buffer, with no new buffer and no zeroing per chunk (only the
//! small reference-count block `Bytes` makes for a shared chunk). The first chunk, and one
//! that hyper still holds, take a new zeroed buffer (the safe `preadv2` needs initialized
//! memory); the blocking pool reads fresh chunks into unzeroed capacity.
//!
//! hyper writes a response body from memory (there is no `sendfile` path), so the kernel
//! copies each chunk from the page cache into the buffer and from the buffer into the socket;
//! the chunk size sets how many syscalls and frames a file takes. See `docs/benchmarks.md`,
//! "Static files at nginx's cost (issue 13)", for what the sizes cost.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use rustix::io::{Errno, IoSliceMut, ReadWriteFlags};
use tokio::task::JoinHandle;

use crate::encoding::StreamEncoder;

/// Bytes read from disk per step, and so the largest frame. One step is in flight at a time,
/// so a response holds at most the chunk being read plus what hyper has queued for the socket
/// (the handle kept on the last chunk sent points at memory hyper holds, or reuses it), plus
/// the encoder's state.
pub(crate) const CHUNK: usize = 1 << 20;

/// What a blocking read step hands back.
type Step = io::Result<(Bytes, Option<StreamEncoder>)>;

/// The body of a file (or a byte range of it) read with `pread` as the connection asks for
/// data, one chunk at a time: backpressure holds, memory stays bounded.
pub(crate) struct FileBody {
    file: Arc<File>,
    offset: u64,
    /// Bytes of the file still to read.
    remaining: u64,
    /// The on-the-fly compressor, if any; `None` while a step owns it, and after the end.
    encoder: Option<StreamEncoder>,
    compressed: bool,
    /// Try `preadv2(RWF_NOWAIT)` on the worker first; cleared when the file system refuses it.
    nowait: bool,
    /// The last chunk sent (identity bodies): its memory is reused once hyper dropped it.
    sent: Option<Bytes>,
    pending: Option<JoinHandle<Step>>,
    done: bool,
}

impl FileBody {
    /// `len` bytes of `file` from `offset`, compressed by `encoder` if given.
    pub(crate) fn new(file: File, offset: u64, len: u64, encoder: Option<StreamEncoder>) -> Self {
        let compressed = encoder.is_some();
        Self {
            file: Arc::new(file),
            offset,
            remaining: len,
            compressed,
            nowait: !compressed,
            sent: None,
            encoder,
            pending: None,
            // An empty compressed body still carries the coding's header and trailer.
            done: len == 0 && !compressed,
        }
    }

    /// Whether to try reads that may not wait (tests force the blocking pool with `false`).
    #[cfg(test)]
    pub(crate) fn with_nowait(mut self, nowait: bool) -> Self {
        self.nowait = nowait && !self.compressed;
        self
    }

    /// The memory of the last chunk sent, as `want` initialized bytes, if hyper is done
    /// with it.
    fn reusable(&mut self, want: usize) -> Option<BytesMut> {
        let mut buf = self.sent.take()?.try_into_mut().ok()?;
        if buf.len() >= want {
            buf.truncate(want);
        } else {
            buf.resize(want, 0);
        }
        Some(buf)
    }

    /// Counts `n` bytes as read.
    fn advance(&mut self, n: usize) {
        self.offset += n as u64;
        self.remaining -= n as u64;
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(pending) = this.pending.as_mut() {
                let step = ready!(Pin::new(pending).poll(cx));
                this.pending = None;
                let (data, encoder) = match step {
                    Ok(Ok(step)) => step,
                    Ok(Err(e)) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Err(join) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(io::Error::other(join))));
                    }
                };
                this.encoder = encoder;
                // A compressed stream ends when its encoder is finished (which a short read
                // does early); an identity one when every byte was read.
                if this.encoder.is_none() && (this.compressed || this.remaining == 0) {
                    this.done = true;
                }
                if !this.compressed && !this.done {
                    this.sent = Some(data.clone());
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A compressor may swallow a whole chunk; read on.
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            let want = usize::try_from(this.remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = this.reusable(want);
            if this.nowait {
                let zeroed = buf.take().unwrap_or_else(|| BytesMut::zeroed(want));
                match read_cached(&this.file, this.offset, zeroed) {
                    Cached::Read(data) => {
                        this.advance(data.len());
                        this.done = this.remaining == 0;
                        if !this.done {
                            this.sent = Some(data.clone());
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Cached::Failed(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Cached::WouldBlock(zeroed) => buf = Some(zeroed),
                    Cached::Unsupported(zeroed) => {
                        this.nowait = false;
                        buf = Some(zeroed);
                    }
                }
            }
            let file = Arc::clone(&this.file);
            let offset = this.offset;
            let encoder = this.encoder.take();
            let compressed = this.compressed;
            this.advance(want);
            let last = this.remaining == 0;
            this.pending = Some(tokio::task::spawn_blocking(move || {
                read_step(&file, offset, want, buf, encoder, compressed, last)
            }));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.compressed {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.remaining)
        }
    }
}

/// What a read that may not wait found.
enum Cached {
    /// The first bytes wanted (at least one), from the page cache.
    Read(Bytes),
    /// Reading would wait for the disk; the buffer is handed on to the blocking read.
    WouldBlock(BytesMut),
    /// The file system does not support `RWF_NOWAIT` reads; the buffer is handed on.
    Unsupported(BytesMut),
    Failed(io::Error),
}

/// Up to `buf.len()` bytes at `offset` from the page cache, without waiting for the disk.
fn read_cached(file: &File, offset: u64, mut buf: BytesMut) -> Cached {
    loop {
        let mut slices = [IoSliceMut::new(&mut buf)];
        match rustix::io::preadv2(file, &mut slices, offset, ReadWriteFlags::NOWAIT) {
            Ok(0) => return Cached::Failed(shrank()),
            Ok(n) => {
                buf.truncate(n);
                return Cached::Read(buf.freeze());
            }
            Err(Errno::AGAIN) => return Cached::WouldBlock(buf),
            Err(Errno::INTR) => {}
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => return Cached::Unsupported(buf),
            Err(e) => return Cached::Failed(e.into()),
        }
    }
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank while it was being sent",
    )
}

/// Reads `want` bytes at `offset` (all of them: a file that shrank under us is an error, the
/// response promised a length; a compressed stream just ends) and runs them through the
/// encoder. Reads into `buf` when given (`want` initialized bytes), else into fresh
/// uninitialized capacity.
fn read_step(
    file: &File,
    offset: u64,
    want: usize,
    buf: Option<BytesMut>,
    encoder: Option<StreamEncoder>,
    compressed: bool,
    last: bool,
) -> Step {
    let data = match buf {
        Some(buf) => read_into(file, offset, buf, compressed)?,
        None => read_fresh(file, offset, want, compressed)?,
    };
    match encoder {
        None => Ok((data, None)),
        Some(mut encoder) => {
            let mut out = encoder.write(&data)?;
            if last || data.len() < want {
                out.extend(encoder.finish()?);
                Ok((Bytes::from(out), None))
            } else {
                Ok((Bytes::from(out), Some(encoder)))
            }
        }
    }
}

/// Fills the (initialized) `buf` from `offset`; short only at the end of a compressed file.
fn read_into(file: &File, offset: u64, mut buf: BytesMut, compressed: bool) -> io::Result<Bytes> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(file, &mut buf[filled..], offset + filled as u64) {
            Ok(0) if compressed => break,
            Ok(0) => return Err(shrank()),
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

/// Reads `want` bytes from `offset` into new, never-zeroed memory; short only at the end of a
/// compressed file.
fn read_fresh(file: &File, offset: u64, want: usize, compressed: bool) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        let at = offset + buf.len() as u64;
        let spare = rustix::buffer::spare_capacity(&mut buf);
        match rustix::io::pread(file, spare, at) {
            Ok(0) if compressed => break,
            Ok(0) => return Err(shrank()),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Bytes::from(buf))
}
