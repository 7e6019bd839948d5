//! [`ProxyHooksLayer`]: `before_proxy` and `after_proxy`, directly around the upstream client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::Pipeline;
use crate::{Body, Error, Flow, Origin, RequestCtx};

/// Layer that applies the [`ProxyHooks`] middleware, which runs a [`Pipeline`]'s
/// `before_proxy` and `after_proxy` hooks around an upstream client.
///
/// See the [module docs](crate::pipeline).
#[derive(Clone, Debug)]
pub struct ProxyHooksLayer {
    pipeline: Pipeline,
}

// === impl ProxyHooksLayer ===

impl ProxyHooksLayer {
    /// A layer running `pipeline`'s proxy hooks.
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }
}

impl<S> Layer<S> for ProxyHooksLayer {
    type Service = ProxyHooks<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProxyHooks::new(inner, self.pipeline.clone())
    }
}

/// Middleware running `before_proxy` and `after_proxy` around the upstream service `S`.
///
/// It takes the [`RequestCtx`] that [`PipelineService`](super::PipelineService) put in the
/// request's extensions (so the context is never forwarded upstream) and hands it back in the
/// response's extensions, or in the [`Error`]. Without a context (used outside a pipeline) it
/// only calls `S`.
#[derive(Clone, Debug)]
pub struct ProxyHooks<S> {
    inner: S,
    pipeline: Pipeline,
}

// === impl ProxyHooks ===

impl<S> ProxyHooks<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, pipeline: Pipeline) -> Self {
        Self { inner, pipeline }
    }
}

impl<S> Service<Request<Body>> for ProxyHooks<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Error>,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ProxyHooksFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        let Some(mut ctx) = head.extensions.remove::<RequestCtx>() else {
            let future = self.inner.call(Request::from_parts(head, body));
            return ProxyHooksFuture {
                state: State::Upstream {
                    future,
                    ctx: None,
                    pipeline: self.pipeline.clone(),
                },
            };
        };
        match self.pipeline.before_proxy(&mut ctx, &mut head) {
            Ok(Flow::Continue) => {
                let future = self.inner.call(Request::from_parts(head, body));
                ProxyHooksFuture {
                    state: State::Upstream {
                        future,
                        ctx: Some(ctx),
                        pipeline: self.pipeline.clone(),
                    },
                }
            }
            Ok(Flow::Respond(mut response)) => {
                ctx.origin = Some(Origin::Device);
                response.extensions_mut().insert(ctx);
                ProxyHooksFuture {
                    state: State::Done {
                        result: Some(Ok(response)),
                    },
                }
            }
            Err(e) => ProxyHooksFuture {
                state: State::Done {
                    result: Some(Err(e.into_error().with_ctx(ctx))),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`ProxyHooks`].
    pub struct ProxyHooksFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Done { result: Option<Result<Response<Body>, Error>> },
        Upstream {
            #[pin]
            future: F,
            ctx: Option<RequestCtx>,
            pipeline: Pipeline,
        },
    }
}

impl<F> Future for ProxyHooksFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Done { result } => Poll::Ready(
                result
                    .take()
                    .expect("ProxyHooksFuture polled after completion"),
            ),
            StateProj::Upstream {
                future,
                ctx,
                pipeline,
            } => {
                let result = ready!(future.poll(cx));
                let Some(mut ctx) = ctx.take() else {
                    return Poll::Ready(result);
                };
                let response = match result {
                    Ok(response) => response,
                    Err(error) => return Poll::Ready(Err(error.with_ctx(ctx))),
                };
                let (mut head, body) = response.into_parts();
                let response = match pipeline.after_proxy(&mut ctx, &mut head) {
                    Ok(Flow::Continue) => {
                        ctx.origin = Some(Origin::Upstream);
                        Response::from_parts(head, body)
                    }
                    Ok(Flow::Respond(replacement)) => {
                        ctx.origin = Some(Origin::Device);
                        replacement
                    }
                    Err(e) => return Poll::Ready(Err(e.into_error().with_ctx(ctx))),
                };
                let mut response = response;
                response.extensions_mut().insert(ctx);
                Poll::Ready(Ok(response))
            }
        }
    }
}
