//! Structured access logging for Snakeway: one JSON line per request event, written by a
//! dedicated thread so that a worker never blocks on a file or stdout.
//!
//! * [`StructuredLogging`] is the device (`type = "structured_logging"`). It emits one line for
//!   each configured [`LogPhase`] a request passes through (by default one line per request,
//!   at `response`).
//! * [`LogWriter`] owns the writer thread and the queue in front of it, bounded in bytes.
//!   Workers write a line's JSON straight into a buffer recycled through the queue (no
//!   intermediate `serde_json::Value`, no copy) and queue it without blocking; when the line
//!   does not fit in the queue's bytes it is dropped and counted ([`LogWriter::dropped`],
//!   plus a warning at most once a second), the request is never held up nor failed.
//! * [`StructuredLoggingLayer`] is the device alone as a Tower layer, for axum apps.
//!
//! # A line
//!
//! ```json
//! {"ts":"2026-11-23T10:00:00.123Z","event":"response","request_id":"0b5c…","method":"GET",
//!  "path":"/api/users","status":200,"duration_ms":1.234,"route":"/api","upstream":"api",
//!  "origin":"upstream","peer":"10.0.0.7:51234","bytes_in":0,"bytes_out":512,"complete":true}
//! ```
//!
//! | key | events | value |
//! |---|---|---|
//! | `ts` | all | when the line was formatted, RFC 3339 UTC with milliseconds |
//! | `event` | all | `request`, `before_proxy`, `after_proxy`, `response` or `error` |
//! | `request_id` | all | the `x-request-id` of the request |
//! | `method`, `path` | all | the request method and the normalized path (no query string: it may carry secrets) |
//! | `status` | `after_proxy`, `response`, `error` | the upstream's status, the final status, the status the error becomes |
//! | `duration_ms` | all | milliseconds since the request arrived (float, µs precision); on `response`, until the body has gone |
//! | `route`, `upstream` | all | the matched route and upstream service, `null` before routing or when there is none |
//! | `origin` | all | `upstream`, `static`, `synthetic`, `device` or `error`; `null` until the response is known |
//! | `peer` | all | the downstream peer's socket address (for the client IP behind proxies, use `identity`) |
//! | `bytes_in` | all | request body bytes read from the client so far; `null` when nothing counts them (see below) |
//! | `bytes_out` | `response` | response body bytes handed to the connection |
//! | `complete` | `response` | whether the response body was sent to its end (`false`: the client went away, or the upstream body failed) |
//! | `error` | `error` | `{"kind": …, "message": …}`; the message includes the cause chain |
//! | `headers` | all, with `include_headers` | the request headers captured at `on_request` (see below) |
//! | `identity` | all, with `include_identity` | what the [`IdentityExtractor`] returned, or `null` |
//!
//! **Byte counts are measured.** The `response` line is written at `on_complete`, once the
//! response body has gone (or stopped), with the body bytes that went each way: chunked,
//! HTTP/2 and compressed bodies are counted like any other, and a `HEAD` or `304` answer sends
//! 0 bytes. Heads and framing are not counted. The pipeline counts request body bytes only when
//! a device takes part in `on_complete` or the body hook, so `bytes_in` is `null` on the lines
//! of a device that logs no `response` lines, unless another device counts.
//!
//! **Headers.** With `include_headers`, the request headers are captured once, at
//! `on_request`, and logged as an object `name → value` (repeated headers joined with `", "`,
//! invalid UTF-8 replaced). A non-empty `allowed_headers` list limits them to those names (in
//! that order); an empty list logs every header, like the `allow_headers = []` convention of the
//! request filter. Names in `redacted_headers` are logged with the value `"[redacted]"`, so
//! their presence shows but not their content. Response headers are not logged.
//!
//! **Identity.** The crate does not depend on the identity device. With `include_identity`,
//! the [`IdentityExtractor`] in [`LoggingOptions::identity`] is called for each line; the server
//! implements it with `snakeway-identity`, keeping the configured `identity_fields`. It reads
//! the context when the line is written, so the identity device may come before or after the
//! logging device in the `[[device]]` list as long as it runs at `on_request`.
//!
//! # Phases
//!
//! The device takes part in the configured phases; in `on_request` also when `include_headers`
//! is on, to capture the request headers into the request context for its later lines (it
//! writes a `request` line only if `request` is configured); and, when `response` lines are
//! configured, in `on_complete`: `on_response` notes the response as this device sees it
//! (devices after it may still change it) and `on_complete` writes the line. An empty `phases`
//! list takes part in nothing. A phase the device does not take part in costs nothing: the
//! pipeline never calls it there. Where another device answers early or fails in `on_request`
//! before this device ran, the capture is missing: `headers` is `null` on that request's
//! lines.
//!
//! `before_proxy` and `after_proxy` lines need the proxy-hooks layer around the upstream client
//! (the server places it); the standalone [`StructuredLoggingLayer`] only sees `request`,
//! `response` and `error`.
//!
//! # Outputs, back-pressure and rotation
//!
//! [`Output::Stdout`], [`Output::Stderr`] or [`Output::File`] (created if missing, opened in
//! append mode). Each [`LogWriter`] has one thread with a `BufWriter` that is flushed whenever
//! the queue runs empty, so lines reach the output promptly under light load and in large
//! writes under heavy load.
//!
//! The queue is bounded in bytes ([`LoggingOptions::queue_bytes`], default
//! [`DEFAULT_QUEUE_BYTES`]): a sender reserves the size of a line's buffer before queueing it,
//! and the thread gives it back once the line is written, so a stalled output holds at most
//! that many bytes of lines (plus the thread's 64 KiB buffer, and at most 2 MiB of emptied
//! buffers kept for reuse) whatever their number or size. A line
//! that does not fit is dropped and counted ([`LogWriter::dropped`]; [`LogWriter::queued_bytes`]
//! shows the fill), and a `tracing` warning reports the drops at most once a second. [`LogWriter::flush`] waits until everything queued before it is
//! written (for shutdown and tests; never call it on the request path).
//!
//! Log rotation: the file is opened once, when the [`LogWriter`] is built. On reload the server
//! builds a new device with a new [`LogWriter`], which reopens the path (so a file moved away by
//! `logrotate` is recreated); the old writer's thread drains its queue into the old file and
//! exits when the last request of the old snapshot lets go of it.
//!
//! # Example
//!
//! ```
//! use snakeway_logging::{LogPhase, LogWriter, LoggingOptions, Output, StructuredLogging};
//!
//! let options = LoggingOptions {
//!     output: Output::Stderr,
//!     phases: vec![LogPhase::Response, LogPhase::Error],
//!     ..LoggingOptions::default()
//! };
//! let writer = LogWriter::open(&options.output, options.queue_bytes)?;
//! let layer = StructuredLogging::new(options, writer).into_layer();
//! # let _ = layer;
//! # Ok::<_, std::io::Error>(())
//! ```

mod device;
mod json;
mod layer;
mod record;
mod writer;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderName;
use snakeway_core::{Phase, RequestCtx};

pub use self::device::StructuredLogging;
pub use self::layer::StructuredLoggingLayer;
pub use self::writer::LogWriter;

/// The default bound of a [`LogWriter`]'s queue, in bytes of queued lines: 16 MiB.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// Reads the identity fields to log from a request context (the server implements it with the
/// identity device's `ClientIdentity`, keeping the configured `identity_fields`). Returning
/// `None` logs `"identity": null`.
pub type IdentityExtractor =
    Arc<dyn Fn(&RequestCtx) -> Option<serde_json::Map<String, serde_json::Value>> + Send + Sync>;

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// A file, created if missing and opened in append mode.
    File(PathBuf),
}

// === impl Output ===

impl FromStr for Output {
    type Err = std::convert::Infallible;

    /// `stdout`, `stderr`, or any other string as a file path (as in `snakeway.toml`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Stderr => f.write_str("stderr"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A request event that can be logged; each maps to one device phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogPhase {
    /// When the request arrives (`on_request`).
    Request,
    /// Right before the upstream call (`before_proxy`; service routes only).
    BeforeProxy,
    /// When the upstream's response head arrived (`after_proxy`; service routes only).
    AfterProxy,
    /// The final response, for every request (`on_response`).
    Response,
    /// A failure: device, route, upstream (`on_error`).
    Error,
}

// === impl LogPhase ===

impl LogPhase {
    /// Every event, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Request,
        Self::BeforeProxy,
        Self::AfterProxy,
        Self::Response,
        Self::Error,
    ];

    /// The name used in configuration and as the `event` of a line.
    pub const fn as_str(self) -> &'static str {
        self.phase().as_str()
    }

    /// The device phase the event is logged in.
    pub const fn phase(self) -> Phase {
        match self {
            Self::Request => Phase::Request,
            Self::BeforeProxy => Phase::BeforeProxy,
            Self::AfterProxy => Phase::AfterProxy,
            Self::Response => Phase::Response,
            Self::Error => Phase::Error,
        }
    }
}

impl fmt::Display for LogPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogPhase {
    type Err = UnknownPhase;

    /// `request`, `before_proxy`, `after_proxy`, `response` or `error`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

/// A phase name that is not one of [`LogPhase::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown logging phase {0:?} (expected request, before_proxy, after_proxy, response or error)"
)]
pub struct UnknownPhase(pub String);

/// How a [`StructuredLogging`] device logs.
#[derive(Clone)]
pub struct LoggingOptions {
    /// Where lines go (used by [`StructuredLogging::open`]; with [`StructuredLogging::new`]
    /// the given [`LogWriter`] decides).
    pub output: Output,
    /// The events logged, one line each. Default: `[Response]`.
    pub phases: Vec<LogPhase>,
    /// Whether lines carry the request's headers. Default: false.
    pub include_headers: bool,
    /// The headers logged with `include_headers`; empty logs every header. Default: empty.
    pub allowed_headers: Vec<HeaderName>,
    /// Headers logged as `"[redacted]"` instead of their value. Default: empty.
    pub redacted_headers: Vec<HeaderName>,
    /// Whether lines carry the identity fields from `identity`. Default: false.
    pub include_identity: bool,
    /// Reads the identity fields to log from the request context.
    pub identity: Option<IdentityExtractor>,
    /// The bound of the writer's queue, in bytes of queued lines (used by
    /// [`StructuredLogging::open`]). Default: [`DEFAULT_QUEUE_BYTES`].
    pub queue_bytes: usize,
}

// === impl LoggingOptions ===

impl Default for LoggingOptions {
    fn default() -> Self {
        Self {
            output: Output::Stdout,
            phases: vec![LogPhase::Response],
            include_headers: false,
            allowed_headers: Vec::new(),
            redacted_headers: Vec::new(),
            include_identity: false,
            identity: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
        }
    }
}

impl fmt::Debug for LoggingOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingOptions")
            .field("output", &self.output)
            .field("phases", &self.phases)
            .field("include_headers", &self.include_headers)
            .field("allowed_headers", &self.allowed_headers)
            .field("redacted_headers", &self.redacted_headers)
            .field("include_identity", &self.include_identity)
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "Fn(&RequestCtx)"),
            )
            .field("queue_bytes", &self.queue_bytes)
            .finish()
    }
}

#[cfg(test)]
mod line_props;
#[cfg(test)]
mod tests;
