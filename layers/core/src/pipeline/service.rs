//! [`PipelineLayer`]: `on_request`, the body hook, `on_error` and `on_response` around a
//! service (in the server: the router).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::Pipeline;
use super::body::{BodyVerdict, HookedBody};
use crate::request_id;
use crate::respond::ErrorFormat;
use crate::{
    Body, BodyBytes, BodyCtx, BoxError, DeviceResult, Error, Flow, Origin, PeerAddr, Phase,
    RequestCtx, RequestInfo,
};

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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PipelineService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<Error>,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = PipelineFuture<S::Future>;

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
        let info = RequestInfo {
            request_id,
            peer,
            method: head.method.clone(),
            uri: head.uri.clone(),
            started: Instant::now(),
            slots: Default::default(),
            device_logs: Default::default(),
            received: if self.pipeline.counts_body() {
                BodyBytes::counted()
            } else {
                BodyBytes::uncounted()
            },
        };
        let mut ctx = RequestCtx::new(info);
        let pipeline = self.pipeline.clone();
        // Decided on the headers as the client sent them, before any device changes them.
        let format = ErrorFormat::of(&head.headers);

        let outcome = pipeline.on_request(&mut ctx, &mut head);
        let mut early = answered(&mut ctx, outcome).or_else(|| self.not_ready.take().map(Err));
        // An empty body is never polled (nothing reads what is not there), so the body hooks
        // see its end now, right after `on_request`.
        if early.is_none() && pipeline.has(Phase::RequestBody) && body.is_end_stream() {
            let body_ctx = BodyCtx {
                info: ctx.info().clone(),
                bytes_before: 0,
            };
            let outcome = pipeline.on_request_body(&body_ctx, &Bytes::new(), true);
            early = answered(&mut ctx, outcome);
        }
        if let Some(result) = early {
            let response = pipeline.finish(ctx, result, format);
            return PipelineFuture {
                state: State::Done {
                    response: Some(response),
                },
            };
        }

        let (body, verdict) = if pipeline.counts_body() && !body.is_end_stream() {
            let verdict = Arc::new(Mutex::new(None));
            let hooked = HookedBody::new(
                Body::new(body),
                pipeline.clone(),
                ctx.info().clone(),
                verdict.clone(),
            );
            (Body::new(hooked), Some(verdict))
        } else {
            (Body::new(body), None)
        };
        let info = ctx.info().clone();
        let local = if self.handoff {
            head.extensions.insert(ctx);
            None
        } else {
            Some(ctx)
        };
        let future = self.inner.call(Request::from_parts(head, body));
        PipelineFuture {
            state: State::Inner {
                future,
                pipeline,
                info,
                local,
                verdict,
                format,
            },
        }
    }
}

pin_project! {
    /// Response future of [`PipelineService`].
    pub struct PipelineFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Done { response: Option<Response<Body>> },
        Inner {
            #[pin]
            future: F,
            pipeline: Pipeline,
            info: Arc<RequestInfo>,
            // The request context, when it did not travel inward.
            local: Option<RequestCtx>,
            verdict: Option<Arc<Mutex<Option<BodyVerdict>>>>,
            format: ErrorFormat,
        },
    }
}

impl<F, ResBody, E> Future for PipelineFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<Error>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Done { response } => Poll::Ready(Ok(response
                .take()
                .expect("PipelineFuture polled after completion"))),
            StateProj::Inner {
                future,
                pipeline,
                info,
                local,
                verdict,
                format,
            } => {
                let result = ready!(future.poll(cx));
                let (ctx, result) = match result {
                    Ok(response) => {
                        let (mut head, body) = response.into_parts();
                        let ctx = local
                            .take()
                            .or_else(|| head.extensions.remove::<RequestCtx>());
                        let ctx = ctx.unwrap_or_else(|| RequestCtx::from_info(info.clone()));
                        (ctx, Ok(Response::from_parts(head, Body::new(body))))
                    }
                    Err(e) => {
                        let mut error: Error = e.into();
                        let mut ctx = local
                            .take()
                            .or_else(|| error.take_ctx())
                            .unwrap_or_else(|| RequestCtx::from_info(info.clone()));
                        // A body hook that stopped the body decides the answer.
                        let decided = verdict.as_ref().and_then(|v| v.lock().ok()?.take());
                        let result = match decided {
                            Some(BodyVerdict::Respond(response)) => {
                                ctx.origin = Some(Origin::Device);
                                Ok(response)
                            }
                            Some(BodyVerdict::Fail(device_error)) => Err(device_error.into_error()),
                            None => Err(error),
                        };
                        (ctx, result)
                    }
                };
                Poll::Ready(Ok(pipeline.finish(ctx, result, *format)))
            }
        }
    }
}

/// A request-side hook's outcome as the request's result: `None` to go on, else the device's
/// early answer (origin `device`) or its failure.
fn answered(ctx: &mut RequestCtx, outcome: DeviceResult) -> Option<Result<Response<Body>, Error>> {
    match outcome {
        Ok(Flow::Continue) => None,
        Ok(Flow::Respond(response)) => {
            ctx.origin = Some(Origin::Device);
            Some(Ok(response))
        }
        Err(e) => Some(Err(e.into_error())),
    }
}
