//! Snakeway's throttling device: per-key rate limits computed with GCRA, counted in this
//! process or, for a fleet, in one Redis.
//!
//! * [`Quota`]: `limit` requests per `period`, sustained, and `limit + burst` at once after a
//!   quiet spell (a bucket of `limit + burst` refilled evenly at `limit` per period);
//! * [`RateKey`]: what requests are counted by (client address, a header, a cookie, the route,
//!   or a value the application extracts);
//! * [`Store`]: [`LocalStore`] (lock-free, shared by all workers, bounded by `max_keys`) or
//!   [`RedisStore`] (one atomic Lua step per request, one budget across every instance);
//! * [`RateLimit`]: the [`Device`](snakeway_core::Device), for a
//!   [`Pipeline`](snakeway_core::pipeline::Pipeline) of several devices;
//! * [`RateLimitLayer`]: the same device alone, as a Tower layer (e.g. in an axum app).
//!
//! A refused request gets `429` (or the configured status) with `Retry-After` and the
//! `RateLimit-Policy` / `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers (the
//! structured-field syntax of drafts 08 onwards: `"name";q=100;w=1` and `"name";r=0;t=1`);
//! an allowed one gets `RateLimit`. A request without its key is not limited.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use snakeway_ratelimit::{LocalStore, Quota, RateKey, RateLimitLayer, RateLimitOptions, Store};
//!
//! let quota = Quota::new(100, Duration::from_secs(1), 20).expect("a non-zero quota");
//! let store = Store::Local(Arc::new(LocalStore::new(quota, 1_000_000)));
//! let layer = RateLimitLayer::new(RateLimitOptions::new("per-client", RateKey::ClientIp), store);
//! // `tower::ServiceBuilder::new().layer(layer).service(app)`, or `axum::Router::layer(layer)`.
//! # let _ = layer;
//! ```

mod device;
mod gcra;
mod key;
mod layer;
mod local;
pub mod metrics;
mod redis;

pub use self::device::{
    OnStoreError, RATELIMIT, RATELIMIT_POLICY, RateLimit, RateLimitOptions, Store,
};
pub use self::gcra::{Decision, Quota};
pub use self::key::{KeyFn, RateKey};
pub use self::layer::RateLimitLayer;
pub use self::local::LocalStore;
pub use self::redis::{RedisStore, StoreError};

#[cfg(test)]
mod tests;
