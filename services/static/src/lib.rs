//! The static-file outcome: `static_dir` routes serve the files below one directory.
//!
//! [`StaticFiles`] answers GET and HEAD with the file a request path names, safely (nothing
//! outside the root, even through symlinks swapped while requests run, no dotfiles unless
//! allowed), with validators and conditional requests
//! (RFC 9110 §13), single byte ranges (§14), content negotiation between gzip, brotli and
//! identity (§12.5.3, with precompressed `file.br` / `file.gz` siblings), index files,
//! trailing-slash redirects and optional directory listings.
//!
//! Small files live in a lock-free in-memory cache together with their compressed variants,
//! revalidated by device, inode, size and mtime; larger ones stream from disk in bounded
//! memory. The operator documentation is `docs/static-files.md`.
//!
//! The crate does not depend on the configuration crate: it takes a [`StaticOptions`].
//!
//! ```no_run
//! # async fn demo() {
//! use snakeway_static::{StaticFiles, StaticOptions};
//!
//! let files = StaticFiles::new(
//!     StaticOptions::new("public")
//!         .with_prefix("/assets")
//!         .with_cache_control(Some("public, max-age=3600")),
//! );
//! let req = http::Request::get("/assets/app.js").body(snakeway_core::Body::empty()).unwrap();
//! let response = files.serve(req).await;
//! # drop(response);
//! # }
//! ```

mod beneath;
mod body;
mod cache;
mod conditional;
mod encoding;
mod entry;
mod listing;
mod options;
mod path;
mod service;

pub use options::{CacheOptions, CompressionOptions, StaticOptions};
pub use service::StaticFiles;

#[cfg(test)]
mod tests;
