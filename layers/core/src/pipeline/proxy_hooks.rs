//! [`ProxyHooksLayer`]: `before_proxy` and `after_proxy`, directly around the upstream client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
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

/// Response future of [`ProxyHooks`], boxed once.
pub type ProxyHooksFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

impl<S> Service<Request<Body>> for ProxyHooks<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ProxyHooksFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            let (mut head, body) = req.into_parts();
            let Some(mut ctx) = head.extensions.remove::<RequestCtx>() else {
                return inner.call(Request::from_parts(head, body)).await;
            };
            let answer = match pipeline.before_proxy(&mut ctx, &mut head).await {
                Ok(Flow::Respond(response)) => {
                    ctx.origin = Some(Origin::Device);
                    Ok(*response)
                }
                Ok(_) => match inner.call(Request::from_parts(head, body)).await {
                    Ok(response) => pipeline.proxied(&mut ctx, response).await,
                    Err(error) => Err(error),
                },
                Err(e) => Err(e.into_error()),
            };
            match answer {
                Ok(mut response) => {
                    response.extensions_mut().insert(ctx);
                    Ok(response)
                }
                Err(error) => Err(error.with_ctx(ctx)),
            }
        })
    }
}
