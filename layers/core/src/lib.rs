//! Core types shared by Snakeway's layers and services.
//!
//! Everything here is independent of the server and of the `snakeway.toml` schema, so the same
//! pieces work inside any Tower or axum application:
//!
//! * [`Body`]: the one body type that flows through the stack (no boxing for the common cases);
//! * [`Error`] and [`ErrorKind`]: an opaque error that knows which HTTP status it becomes;
//! * [`request_id`]: accepting or generating `x-request-id`;
//! * [`path`]: RFC 3986 path normalization with the safety rules of the design contract;
//! * [`respond`]: small synthetic responses (error pages, configured bodies).

mod body;
mod error;
pub mod path;
pub mod request_id;
pub mod respond;

pub use body::Body;
pub use error::{BoxError, Error, ErrorKind, cause_ref, is_caused_by};
