//! [`RequestFilterLayer`]: the filter as a standalone Tower layer.

use std::sync::Arc;

use snakeway_core::pipeline::{Pipeline, PipelineLayer, PipelineService};
use tower::Layer;

use crate::{FilterOptions, RequestFilter};

/// Layer that applies the [`RequestFilter`] device on its own, as ordinary Tower middleware:
/// a [`PipelineLayer`] whose pipeline holds just this device.
///
/// The service it produces is [`PipelineService`]; its error type is `Infallible` (refusals
/// and failures are responses) and it meets axum's `Router::layer` bounds. When the inner
/// service fails because the filter stopped an oversized body, the answer is the filter's 413.
///
/// See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct RequestFilterLayer {
    inner: PipelineLayer,
}

// === impl RequestFilterLayer ===

impl RequestFilterLayer {
    /// A layer filtering requests with `options`.
    pub fn new(options: FilterOptions) -> Self {
        Self::from(RequestFilter::new(options))
    }
}

impl From<RequestFilter> for RequestFilterLayer {
    fn from(filter: RequestFilter) -> Self {
        Self {
            inner: PipelineLayer::new(Pipeline::new(vec![Arc::new(filter)])),
        }
    }
}

impl<S> Layer<S> for RequestFilterLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
