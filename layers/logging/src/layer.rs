//! [`StructuredLoggingLayer`]: the device alone as a Tower layer, for axum apps.

use std::sync::Arc;

use snakeway_core::pipeline::{Pipeline, PipelineLayer, PipelineService};
use tower::Layer;

use crate::StructuredLogging;

/// Layer that applies the structured-logging device alone around a service: a
/// [`PipelineLayer`] with this one device (`request`, `response` and `error` lines), for use
/// in any Tower or axum app.
///
/// The layer keeps its request context (where the device keeps what it captured at
/// `on_request`) to itself, so the inner service needs to know nothing about it. Every failure
/// becomes a response (error type `Infallible`), as with [`PipelineService`].
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
            inner: PipelineLayer::new(Pipeline::new(vec![Arc::new(device)])),
        }
    }
}

impl From<StructuredLogging> for StructuredLoggingLayer {
    fn from(device: StructuredLogging) -> Self {
        Self::new(device)
    }
}

impl<S> Layer<S> for StructuredLoggingLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
