//! [`StructuredLoggingLayer`]: the device alone as a Tower layer, for axum apps.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use snakeway_core::pipeline::{Pipeline, PipelineLayer, PipelineService};
use snakeway_core::{Error, RequestCtx};
use tower::{Layer, Service};

use crate::StructuredLogging;

/// Layer that applies the structured-logging device alone around a service: a
/// [`PipelineLayer`] with this one device (`request`, `response` and `error` lines), for use
/// in any Tower or axum app.
///
/// The pipeline's request context (where the device keeps what it captured at `on_request`)
/// does not come back from an ordinary inner service, so the layer wraps the inner service in
/// [`ReturnCtx`], which takes the context out of the request before the inner service sees it
/// and puts it back on the response. Every failure becomes a response (error type
/// `Infallible`), as with [`PipelineService`].
///
/// See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct StructuredLoggingLayer {
    inner: PipelineLayer,
}

// === impl StructuredLoggingLayer ===

impl StructuredLoggingLayer {
    /// A layer running `device`.
    pub fn new(device: StructuredLogging) -> Self {
        Self {
            inner: Pipeline::new(vec![Arc::new(device)]).layer(),
        }
    }
}

impl From<StructuredLogging> for StructuredLoggingLayer {
    fn from(device: StructuredLogging) -> Self {
        Self::new(device)
    }
}

impl<S> Layer<S> for StructuredLoggingLayer {
    type Service = PipelineService<ReturnCtx<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(ReturnCtx::new(inner))
    }
}

/// Middleware that hands the pipeline's [`RequestCtx`] back around a service that does not
/// know about it: it removes the context from the request's extensions (so the service never
/// sees it), and puts it in the response's extensions, or in the [`Error`].
#[derive(Clone, Debug)]
pub struct ReturnCtx<S> {
    inner: S,
}

// === impl ReturnCtx ===

impl<S> ReturnCtx<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ReturnCtx<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<Error>,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ReturnCtxFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let ctx = req.extensions_mut().remove::<RequestCtx>();
        ReturnCtxFuture {
            future: self.inner.call(req),
            ctx,
        }
    }
}

pin_project! {
    /// Response future of [`ReturnCtx`].
    pub struct ReturnCtxFuture<F> {
        #[pin]
        future: F,
        ctx: Option<RequestCtx>,
    }
}

impl<F, ResBody, E> Future for ReturnCtxFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<Error>,
{
    type Output = Result<Response<ResBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let ctx = this.ctx.take();
        Poll::Ready(match (result, ctx) {
            (Ok(mut response), Some(ctx)) => {
                response.extensions_mut().insert(ctx);
                Ok(response)
            }
            (Ok(response), None) => Ok(response),
            (Err(error), Some(ctx)) => Err(error.into().with_ctx(ctx)),
            (Err(error), None) => Err(error.into()),
        })
    }
}
