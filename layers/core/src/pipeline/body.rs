//! The body hook as a body wrapper: devices see each chunk as it streams, never the whole body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Pipeline;
use crate::{Body, BodyCtx, BoxError, DeviceError, Flow, RequestInfo};

/// What a body hook decided when it stopped the body.
#[derive(Debug)]
pub(crate) enum BodyVerdict {
    /// A device answered (e.g. 413).
    Respond(Response<Body>),
    /// A device failed.
    Fail(DeviceError),
}

/// The error a [`HookedBody`] ends with when a device stopped it.
#[derive(Debug, thiserror::Error)]
#[error("a device stopped the request body")]
pub struct BodyStopped;

pin_project! {
    /// A request body that runs the pipeline's `on_request_body` hooks on every data frame and
    /// counts the bytes into the request's [`RequestInfo::received`].
    ///
    /// When a device stops the body, the body ends with [`BodyStopped`] (so whatever reads it,
    /// e.g. the upstream client, never receives the rest) and the device's verdict is left for
    /// the pipeline to answer with.
    pub struct HookedBody {
        #[pin]
        inner: Body,
        pipeline: Pipeline,
        ctx: BodyCtx,
        verdict: Arc<Mutex<Option<BodyVerdict>>>,
        // The hooks have seen `end_of_stream`.
        ended: bool,
        // A device stopped the body.
        stopped: bool,
    }
}

// === impl HookedBody ===

impl HookedBody {
    pub(crate) fn new(
        inner: Body,
        pipeline: Pipeline,
        info: Arc<RequestInfo>,
        verdict: Arc<Mutex<Option<BodyVerdict>>>,
    ) -> Self {
        Self {
            inner,
            pipeline,
            ctx: BodyCtx {
                info,
                bytes_before: 0,
            },
            verdict,
            ended: false,
            stopped: false,
        }
    }
}

impl http_body::Body for HookedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.stopped {
            return Poll::Ready(None);
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let (chunk, end) = match &frame {
            Some(Ok(f)) => match f.data_ref() {
                Some(data) => (data.clone(), this.inner.is_end_stream()),
                None => return Poll::Ready(frame), // trailers
            },
            Some(Err(_)) => return Poll::Ready(frame),
            None if *this.ended => return Poll::Ready(None),
            None => (Bytes::new(), true),
        };
        *this.ended |= end;
        let stop = match this.pipeline.on_request_body(this.ctx, &chunk, end) {
            // `on_request_body` never gives a deferred result (it fails instead).
            Ok(Flow::Continue | Flow::Defer(_)) => None,
            Ok(Flow::Respond(response)) => Some(BodyVerdict::Respond(*response)),
            Err(error) => Some(BodyVerdict::Fail(error)),
        };
        this.ctx.bytes_before += chunk.len() as u64;
        this.ctx.info.received.add(chunk.len() as u64);
        if let Some(verdict) = stop {
            *this.stopped = true;
            if let Ok(mut slot) = this.verdict.lock() {
                slot.get_or_insert(verdict);
            }
            return Poll::Ready(Some(Err(BodyStopped.into())));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.stopped || (self.ended && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
