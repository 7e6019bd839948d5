//! The `complete` hook as a response-body wrapper: it counts the body bytes handed to the
//! connection and, when the body ends (or is dropped unfinished), runs the devices'
//! `on_complete` with what actually went over the wire.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Method, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Pipeline;
use crate::{Body, BoxError, RequestCtx, Transfer};

pin_project! {
    /// A response body that runs the pipeline's `on_complete` hooks once, when it ends.
    ///
    /// "Ends" is the last frame read, an error from the inner body, or the body dropped before
    /// its end (the client went away). A body that carries nothing by its nature (the answer to
    /// a `HEAD`, a 1xx, 204 or 304, which the connection never reads) is complete when dropped.
    pub struct CompletingBody {
        #[pin]
        inner: Body,
        // Taken when the hooks have run.
        done: Option<Done>,
        sent: u64,
    }

    impl PinnedDrop for CompletingBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                let complete = this.inner.is_end_stream() || done.bodiless;
                done.run(*this.sent, complete);
            }
        }
    }
}

/// What the hooks need once the body is over.
struct Done {
    pipeline: Pipeline,
    ctx: RequestCtx,
    /// The response has no body on the wire whatever its body holds.
    bodiless: bool,
}

// === impl Done ===

impl Done {
    fn run(self, bytes_out: u64, complete: bool) {
        let transfer = Transfer {
            bytes_in: self.ctx.info().received.get().unwrap_or(0),
            bytes_out,
            complete,
        };
        self.pipeline.on_complete(&self.ctx, &transfer);
    }
}

// === impl CompletingBody ===

impl CompletingBody {
    /// Wraps the body of a response with `status` to the request of `ctx`.
    pub(crate) fn new(
        inner: Body,
        pipeline: Pipeline,
        ctx: RequestCtx,
        status: StatusCode,
    ) -> Self {
        let bodiless = ctx.info().method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        Self {
            inner,
            done: Some(Done {
                pipeline,
                ctx,
                bodiless,
            }),
            sent: 0,
        }
    }
}

impl http_body::Body for CompletingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    *this.sent += data.remaining() as u64;
                }
                this.inner.is_end_stream().then_some(true)
            }
            Some(Err(_)) => Some(false),
            None => Some(true),
        };
        if let Some(complete) = ended
            && let Some(done) = this.done.take()
        {
            done.run(*this.sent, complete);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
