//! [`WasmLayer`]: one WASM device alone as a Tower layer, for axum apps.

use std::sync::Arc;

use snakeway_core::pipeline::{Pipeline, PipelineLayer, PipelineService};
use tower::Layer;

use crate::WasmDevice;

/// Layer that runs one WASM device alone around a service: a [`PipelineLayer`] with this one
/// device, for use in any Tower or axum app. Its `on-request`, `on-request-body` and
/// `on-response` hooks run (`before-proxy` and `after-proxy` belong to a proxy's upstream
/// call, which a plain service does not have); early answers and failures become responses
/// (error type `Infallible`), as with [`PipelineService`].
#[derive(Clone, Debug)]
pub struct WasmLayer {
    inner: PipelineLayer,
}

// === impl WasmLayer ===

impl WasmLayer {
    /// A layer running `device`.
    pub fn new(device: WasmDevice) -> Self {
        Self {
            inner: PipelineLayer::new(Pipeline::new(vec![Arc::new(device)])),
        }
    }
}

impl From<WasmDevice> for WasmLayer {
    fn from(device: WasmDevice) -> Self {
        Self::new(device)
    }
}

impl<S> Layer<S> for WasmLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
