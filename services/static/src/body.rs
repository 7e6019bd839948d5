//! A file streamed from disk in bounded memory, optionally compressed on the fly.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::encoding::StreamEncoder;

/// Bytes read from disk per step. One step is in flight at a time, so a response holds at
/// most this (plus the encoder's state and what hyper has queued for the socket).
pub(crate) const CHUNK: usize = 256 << 10;

/// What a blocking read step hands back.
type Step = io::Result<(Bytes, Option<StreamEncoder>)>;

/// The body of a file (or a byte range of it) read with `pread` on the blocking pool, chunk
/// by chunk, as the connection asks for data: backpressure holds, memory stays bounded.
pub(crate) struct FileBody {
    file: Arc<File>,
    offset: u64,
    /// Bytes of the file still to read.
    remaining: u64,
    /// The on-the-fly compressor, if any; `None` while a step owns it, and after the end.
    encoder: Option<StreamEncoder>,
    compressed: bool,
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
            encoder,
            pending: None,
            // An empty compressed body still carries the coding's header and trailer.
            done: len == 0 && !compressed,
        }
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
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A compressor may swallow a whole chunk; read on.
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            let file = Arc::clone(&this.file);
            let offset = this.offset;
            let want = usize::try_from(this.remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
            let encoder = this.encoder.take();
            let compressed = this.compressed;
            this.offset += want as u64;
            this.remaining -= want as u64;
            let last = this.remaining == 0;
            this.pending = Some(tokio::task::spawn_blocking(move || {
                read_step(&file, offset, want, encoder, compressed, last)
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

/// Reads `want` bytes at `offset` (all of them: a file that shrank under us is an error, the
/// response promised a length) and runs them through the encoder.
fn read_step(
    file: &File,
    offset: u64,
    want: usize,
    encoder: Option<StreamEncoder>,
    compressed: bool,
    last: bool,
) -> Step {
    let mut buf = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => {
                if compressed {
                    break;
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    match encoder {
        None => Ok((buf.freeze(), None)),
        Some(mut encoder) => {
            let mut out = encoder.write(&buf)?;
            if last || filled < want {
                out.extend(encoder.finish()?);
                Ok((Bytes::from(out), None))
            } else {
                Ok((Bytes::from(out), Some(encoder)))
            }
        }
    }
}
