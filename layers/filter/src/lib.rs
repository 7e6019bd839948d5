//! Snakeway's request-filter device: refuses requests by method, headers and size at the edge,
//! before routing and before the upstream sees them.
//!
//! * [`FilterOptions`]: the rules, as typed values (the server maps its `[[device]]`
//!   `type = "request_filter"` entry to them; this crate does not know the config schema);
//! * [`RequestFilter`]: the [`Device`](snakeway_core::Device), for a
//!   [`Pipeline`](snakeway_core::pipeline::Pipeline) of several devices;
//! * [`RequestFilterLayer`]: the same filter alone, as a Tower layer (e.g. in an axum app).
//!
//! | rule | refused with |
//! | --- | --- |
//! | `deny_methods`, `allow_methods` | 405, with `Allow` |
//! | `max_header_bytes` | 431 |
//! | `deny_headers`, `allow_headers` | 403 |
//! | `required_headers` | 400 |
//! | `max_body_bytes` (announced, or while streaming) | 413 |
//! | `deny_status` | replaces each of the above |
//!
//! Deny rules win over allow rules. See [`RequestFilter`] for the order of the checks, the
//! responses and the `Allow` header, and [`IMPLICITLY_ALLOWED`] for the headers an allow list
//! lets through without naming them.
//!
//! # Example
//!
//! ```
//! use http::{Method, StatusCode};
//! use snakeway_filter::{FilterOptions, RequestFilter};
//!
//! let layer = RequestFilter::layer(FilterOptions {
//!     allow_methods: vec![Method::GET, Method::HEAD, Method::POST],
//!     deny_methods: vec![Method::TRACE],
//!     required_headers: vec![http::header::HOST],
//!     max_body_bytes: Some(1024 * 1024),
//!     deny_status: Some(StatusCode::FORBIDDEN),
//!     ..FilterOptions::default()
//! });
//! // `tower::ServiceBuilder::new().layer(layer).service(app)`, or `axum::Router::layer(layer)`.
//! # let _ = layer;
//! ```

mod filter;
mod layer;
mod options;
mod sets;

pub use self::filter::{HEADER_LINE_OVERHEAD, IMPLICITLY_ALLOWED, RequestFilter};
pub use self::layer::RequestFilterLayer;
pub use self::options::FilterOptions;

#[cfg(test)]
mod tests;
