//! [`PipelineLayer`]: `on_request`, the body hook, `on_error` and `on_response` around a
//! service (in the server: the router).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::{Pipeline, Session};
use crate::request_id;
use crate::{Body, BoxError, Error, PeerAddr, RequestCtx};

/// Layer that applies the [`PipelineService`] middleware, which runs a [`Pipeline`]'s
/// `on_request`, body, `on_error` and `on_response` hooks around a service.
///
/// [`PipelineLayer::new`] keeps the [`RequestCtx`] inside the layer: use it in any Tower or
/// axum app. [`PipelineLayer::with_proxy_hooks`] hands the context to a
/// [`ProxyHooksLayer`](super::ProxyHooksLayer) further in and expects it back in the response
/// or the error (the server's stack).
///
/// See the [module docs](crate::pipeline).
#[derive(Clone, Debug)]
pub struct PipelineLayer {
    pipeline: Pipeline,
    handoff: bool,
}

// === impl PipelineLayer ===

impl PipelineLayer {
    /// A layer running `pipeline`, keeping the request context to itself.
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            handoff: false,
        }
    }

    /// A layer running `pipeline` that hands the request context to a `ProxyHooksLayer` inside.
    pub fn with_proxy_hooks(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            handoff: true,
        }
    }
}

impl<S> Layer<S> for PipelineLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PipelineService {
            inner,
            pipeline: self.pipeline.clone(),
            handoff: self.handoff,
            not_ready: None,
        }
    }
}

/// Middleware that runs a [`Pipeline`]'s outer phases around `S`.
///
/// Every failure (a device's, or the inner service's error) becomes a response, so the
/// service's error type is [`Infallible`]; the inner service's error must convert into
/// [`Error`] (`Infallible` does).
#[derive(Debug)]
pub struct PipelineService<S> {
    inner: S,
    pipeline: Pipeline,
    /// Whether the request context travels to a `ProxyHooks` inside (see [`PipelineLayer`]).
    handoff: bool,
    /// The inner service's readiness failure, answered on the next `call`.
    not_ready: Option<Error>,
}

// === impl PipelineService ===

impl<S> PipelineService<S> {
    /// Wraps `inner`, keeping the request context to itself (see [`PipelineLayer::new`]).
    pub fn new(inner: S, pipeline: Pipeline) -> Self {
        PipelineLayer::new(pipeline).layer(inner)
    }

    /// Wraps `inner`, handing the request context to a `ProxyHooks` inside (see
    /// [`PipelineLayer::with_proxy_hooks`]).
    pub fn with_proxy_hooks(inner: S, pipeline: Pipeline) -> Self {
        PipelineLayer::with_proxy_hooks(pipeline).layer(inner)
    }
}

impl<S: Clone> Clone for PipelineService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            pipeline: self.pipeline.clone(),
            handoff: self.handoff,
            not_ready: None,
        }
    }
}

/// Response future of [`PipelineService`]: the request's [`Session`], boxed once.
pub type PipelineFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PipelineService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Error>,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = PipelineFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness failures of the inner service surface from `call`'s future instead: the
        // pipeline must still answer (and run `on_error`), so it reports itself ready.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(e.into());
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        let request_id = request_id::ensure(&mut head.headers);
        let peer = head
            .extensions
            .get::<PeerAddr>()
            .map_or(([0, 0, 0, 0], 0).into(), |p| p.0);
        let started = Instant::now();
        let pipeline = self.pipeline.clone();
        let not_ready = self.not_ready.take();
        // The service that was polled ready goes into the future; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let handoff = self.handoff;
        let body = Body::new(body);
        Box::pin(async move {
            let mut session = Session::new(&pipeline, &head, request_id, peer, started);
            let ended = http_body::Body::is_end_stream(&body);
            let early = session.on_request(&mut head, ended).outcome().await;
            if let Some(answer) = early.or_else(|| not_ready.map(Err)) {
                return Ok(session.finish(answer));
            }
            let body = session.hook_body(body);
            if handoff {
                // Lent to the `ProxyHooks` inside, which hands it back.
                let lent = RequestCtx::from_info(session.ctx().info().clone());
                head.extensions
                    .insert(std::mem::replace(session.ctx_mut(), lent));
            }
            let result = match inner.call(Request::from_parts(head, body)).await {
                Ok(response) => {
                    let (mut head, body) = response.into_parts();
                    if let Some(ctx) = head.extensions.remove::<RequestCtx>() {
                        *session.ctx_mut() = ctx;
                    }
                    Ok(Response::from_parts(head, Body::new(body)))
                }
                Err(e) => {
                    let mut error: Error = e.into();
                    if let Some(ctx) = error.take_ctx() {
                        *session.ctx_mut() = ctx;
                    }
                    Err(error)
                }
            };
            Ok(session.finish(result))
        })
    }
}
