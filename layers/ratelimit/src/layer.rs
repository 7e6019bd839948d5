//! [`RateLimitLayer`]: the throttling device as a standalone Tower layer.

use std::sync::Arc;

use snakeway_core::pipeline::{Pipeline, PipelineLayer, PipelineService};
use tower::Layer;

use crate::{RateLimit, RateLimitOptions, Store};

/// Layer that applies the [`RateLimit`] device on its own, as ordinary Tower middleware: a
/// [`PipelineLayer`] whose pipeline holds just this device.
///
/// The service it produces is [`PipelineService`]; its error type is `Infallible` (refusals
/// are responses) and it meets axum's `Router::layer` bounds. Clones share the store, so every
/// clone of the service counts against the same buckets.
///
/// See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    inner: PipelineLayer,
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// A layer limiting requests with `options`, counting in `store`.
    pub fn new(options: RateLimitOptions, store: Store) -> Self {
        Self::from(RateLimit::new(options, store))
    }
}

impl From<RateLimit> for RateLimitLayer {
    fn from(device: RateLimit) -> Self {
        Self {
            inner: PipelineLayer::new(Pipeline::new(vec![Arc::new(device)])),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
