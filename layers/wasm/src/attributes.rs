//! The per-request attribute map shared by devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use snakeway_core::RequestCtx;

/// A per-request map of string attributes that devices read and write, in pipeline order: a
/// scoring device leaves a result, a later policy device reads it. WASM devices reach it
/// through the `get-attribute` / `set-attribute` host imports; builtin devices through
/// [`Attributes::of`].
///
/// It lives in the [`RequestCtx`] extensions; clones share the same map (the extensions
/// require `Clone + Send + Sync`, hence the `Arc<Mutex<..>>`: the hooks of one request run
/// one after another, so the lock is never contended).
#[derive(Clone, Debug, Default)]
pub struct Attributes(Arc<Mutex<BTreeMap<String, String>>>);

// === impl Attributes ===

impl Attributes {
    /// The request's attribute map, created empty on first use.
    pub fn of(ctx: &mut RequestCtx) -> Attributes {
        if let Some(attributes) = ctx.extensions.get::<Attributes>() {
            return attributes.clone();
        }
        let attributes = Attributes::default();
        ctx.extensions.insert(attributes.clone());
        attributes
    }

    /// The request's attribute map, if any device created it.
    pub fn get_from(ctx: &RequestCtx) -> Option<&Attributes> {
        ctx.extensions.get::<Attributes>()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.lock().get(name).cloned()
    }

    /// Sets `name` to `value`.
    pub fn set(&self, name: impl Into<String>, value: impl Into<String>) {
        self.lock().insert(name.into(), value.into());
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> Option<String> {
        self.lock().remove(name)
    }

    /// How many attributes there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A copy of every attribute, sorted by name.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
