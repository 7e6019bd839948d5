//! [`Lent`]: the request context on its way between the two layers, in a request's or a
//! response's extensions.

use std::sync::{Arc, Mutex, PoisonError};

use crate::RequestCtx;

/// The request context lent by [`PipelineService`](super::PipelineService) to
/// [`ProxyHooks`](super::ProxyHooks) in the request's extensions, and handed back in the
/// response's. Extensions hold only `Clone` values and a context is not one (it may hold its
/// request's info itself); a clone of a `Lent` shares the one context, which the first `take`
/// gets.
#[derive(Clone)]
pub(crate) struct Lent(Arc<Mutex<Option<RequestCtx>>>);

// === impl Lent ===

impl Lent {
    /// Lends `ctx`.
    pub(crate) fn new(ctx: RequestCtx) -> Self {
        Self(Arc::new(Mutex::new(Some(ctx))))
    }

    /// The context, if no one took it yet.
    pub(crate) fn take(&self) -> Option<RequestCtx> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}
