//! The device API: a unit of logic hooked at the phases of a request.
//!
//! Devices run in a linear pipeline: in every phase, every device that takes part in it runs in
//! configured order (not onion order). A device may inspect and mutate what its phase hands it,
//! answer early with its own response, or fail. See `docs/phases.md` for the lifecycle chart.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, request, response};

use crate::ctx::{BodyCtx, RequestCtx, ResponseCtx, Transfer};
use crate::{Body, BoxError, Error};

/// What a request-side hook decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next device, then the next phase.
    Continue,
    /// Answer with this response now: the upstream is not called and the remaining
    /// request-side hooks are skipped; `on_response` still runs for every device. Boxed, so
    /// that a hook's result, moved through the phase loop on every request, stays small for
    /// the common [`Flow::Continue`] (make one with [`Flow::respond`]).
    Respond(Box<Response<Body>>),
    /// The decision is not ready yet (e.g. a rate limiter asking a store shared by a fleet):
    /// the pipeline polls it, with the request's context, until it gives the hook's result,
    /// and the request waits on it without holding a worker thread. Only `on_request`,
    /// `before_proxy` and `after_proxy` may defer; a body hook that defers fails the request.
    Defer(Deferred),
}

impl Flow {
    /// [`Flow::Respond`] with `response`.
    pub fn respond(response: Response<Body>) -> Self {
        Self::Respond(Box::new(response))
    }
}

/// The result of a hook that may answer early.
pub type DeviceResult = Result<Flow, DeviceError>;

/// A deferred hook result: see [`Flow::Defer`].
pub type Deferred = Pin<Box<dyn Pending>>;

/// A hook's result still being worked out, polled by the pipeline like a future, with the
/// request's context lent on every poll (so the result can be recorded in it).
///
/// A panic while polling is contained like a panic in the hook itself.
pub trait Pending: Send {
    /// Polls for the hook's result; on `Pending`, arranges for `cx` to be woken.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, ctx: &mut RequestCtx)
    -> Poll<DeviceResult>;
}

impl fmt::Debug for dyn Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pending")
    }
}

/// A device: a unit of request-handling logic with hooks at well-defined phases.
///
/// Every hook has a default that does nothing and continues. A device declares the phases it
/// implements with [`Device::phases`]; the pipeline never calls a device in a phase it did not
/// declare, so an unimplemented phase costs nothing.
///
/// Hooks are synchronous: a device that needs bounded CPU work (a WASM call with a deadline)
/// does it inline; one that must wait for I/O (a shared store) returns [`Flow::Defer`]. A hook that panics is contained: the request gets a 500 and `on_error`
/// observes a [`DeviceError`].
pub trait Device: Send + Sync + 'static {
    /// The device's name, used in logs and errors.
    fn name(&self) -> &str;

    /// The phases this device takes part in.
    fn phases(&self) -> Phases;

    /// Runs first, for every request, before routing (the path is already normalized).
    ///
    /// May change the request head (headers, URI, method), store data for later devices in
    /// [`RequestCtx::extensions`], or answer early with [`Flow::Respond`]. Default: continue.
    fn on_request(&self, ctx: &mut RequestCtx, req: &mut request::Parts) -> DeviceResult {
        let _ = (ctx, req);
        Ok(Flow::Continue)
    }

    /// Runs for each chunk of the request body as it streams towards the outcome, and once
    /// more with `end_of_stream = true` (and an empty chunk if the body ended without data).
    ///
    /// [`Flow::Respond`] stops the body (the upstream never receives the rest) and, if no
    /// response has started yet, becomes the response. Default: continue.
    fn on_request_body(&self, ctx: &BodyCtx, chunk: &Bytes, end_of_stream: bool) -> DeviceResult {
        let _ = (ctx, chunk, end_of_stream);
        Ok(Flow::Continue)
    }

    /// Runs on routes to an upstream service, right before the upstream call. May change the
    /// request head that is sent upstream or answer early. Default: continue.
    fn before_proxy(&self, ctx: &mut RequestCtx, req: &mut request::Parts) -> DeviceResult {
        let _ = (ctx, req);
        Ok(Flow::Continue)
    }

    /// Runs on routes to an upstream service, when the upstream's response head has arrived.
    /// May change status and headers, or replace the response with [`Flow::Respond`].
    /// Default: continue.
    fn after_proxy(&self, ctx: &mut RequestCtx, res: &mut response::Parts) -> DeviceResult {
        let _ = (ctx, res);
        Ok(Flow::Continue)
    }

    /// Runs for every response, in configured order: upstream responses, early answers of
    /// devices, and error responses alike. May change status and headers. An error here turns
    /// the response into a 500. Default: nothing.
    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        let _ = (ctx, res);
        Ok(())
    }

    /// Runs when anything failed (a device, the route, the upstream), before the error
    /// response goes through `on_response`. Observes only. Default: nothing.
    fn on_error(&self, ctx: &mut RequestCtx, error: &Error) {
        let _ = (ctx, error);
    }

    /// Runs once per request when its response has left: the body was sent in full, or the
    /// exchange ended early (the client went away, the upstream body failed). Sees the body
    /// bytes actually received and sent. Observes only; the last hook of a request.
    /// Default: nothing.
    fn on_complete(&self, ctx: &RequestCtx, transfer: &Transfer) {
        let _ = (ctx, transfer);
    }

    /// Runs when the server shuts down, after connections are drained, off the request path:
    /// a device that buffers output (a log writer) writes it out. Default: nothing.
    fn flush(&self) {}
}

/// A phase of the request lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// [`Device::on_request`].
    Request,
    /// [`Device::on_request_body`].
    RequestBody,
    /// [`Device::before_proxy`].
    BeforeProxy,
    /// [`Device::after_proxy`].
    AfterProxy,
    /// [`Device::on_response`].
    Response,
    /// [`Device::on_error`].
    Error,
    /// [`Device::on_complete`].
    Complete,
}

// === impl Phase ===

impl Phase {
    /// The phase's name as written in configuration and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::RequestBody => "request_body",
            Self::BeforeProxy => "before_proxy",
            Self::AfterProxy => "after_proxy",
            Self::Response => "response",
            Self::Error => "error",
            Self::Complete => "complete",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of phases.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Phases(u8);

// === impl Phases ===

impl Phases {
    /// No phase.
    pub const NONE: Self = Self(0);
    /// Every phase.
    pub const ALL: Self = Self(0x7f);

    /// The set holding exactly `phase`.
    pub const fn only(phase: Phase) -> Self {
        Self(phase.bit())
    }

    /// This set plus `phase`.
    #[must_use]
    pub const fn with(self, phase: Phase) -> Self {
        Self(self.0 | phase.bit())
    }

    /// Whether `phase` is in the set.
    pub const fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }
}

impl fmt::Debug for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EVERY: [Phase; 7] = [
            Phase::Request,
            Phase::RequestBody,
            Phase::BeforeProxy,
            Phase::AfterProxy,
            Phase::Response,
            Phase::Error,
            Phase::Complete,
        ];
        f.debug_set()
            .entries(EVERY.iter().filter(|p| self.contains(**p)))
            .finish()
    }
}

impl FromIterator<Phase> for Phases {
    fn from_iter<I: IntoIterator<Item = Phase>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

/// A device's failure: which device, in which phase, why, and the status the client gets.
/// (Boxed inside, so that a hook's [`DeviceResult`] stays small.)
pub struct DeviceError(Box<Failure>);

/// What a [`DeviceError`] holds.
struct Failure {
    device: Cow<'static, str>,
    phase: Option<Phase>,
    status: StatusCode,
    message: Cow<'static, str>,
    source: Option<BoxError>,
}

// === impl DeviceError ===

impl DeviceError {
    /// A failure answered with 500 Internal Server Error.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self(Box::new(Failure {
            device: Cow::Borrowed(""),
            phase: None,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            source: None,
        }))
    }

    /// Answers the client with `status` instead of 500.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Attaches the underlying cause (logged, never shown to clients).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Records where the failure happened (done by the pipeline).
    #[must_use]
    pub fn at(mut self, device: &str, phase: Phase) -> Self {
        if self.0.device.is_empty() {
            self.0.device = Cow::Owned(device.to_owned());
        }
        self.0.phase.get_or_insert(phase);
        self
    }

    /// The device that failed.
    pub fn device(&self) -> &str {
        &self.0.device
    }

    /// The phase it failed in.
    pub fn phase(&self) -> Option<Phase> {
        self.0.phase
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Turns the failure into a request [`Error`] of kind `Device`, keeping the status.
    pub fn into_error(self) -> Error {
        let message = match self.0.phase {
            Some(phase) => format!(
                "device {:?} failed in {phase}: {}",
                self.0.device, self.0.message
            ),
            None => format!("device {:?} failed: {}", self.0.device, self.0.message),
        };
        let error = Error::new(crate::ErrorKind::Device, message).with_status(self.0.status);
        match self.0.source {
            Some(source) => error.with_source(source),
            None => error,
        }
    }
}

impl fmt::Debug for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceError")
            .field("device", &self.0.device)
            .field("phase", &self.0.phase)
            .field("status", &self.0.status)
            .field("message", &self.0.message)
            .field("source", &self.0.source)
            .finish()
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {:?}", self.0.device)?;
        if let Some(phase) = self.0.phase {
            write!(f, " in {phase}")?;
        }
        write!(f, ": {}", self.0.message)
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_deref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_sets() {
        let set: Phases = [Phase::Request, Phase::Response].into_iter().collect();
        assert!(set.contains(Phase::Request));
        assert!(!set.contains(Phase::BeforeProxy));
        assert_eq!(format!("{set:?}"), "{Request, Response}");
        assert!(Phases::ALL.contains(Phase::Error));
    }

    #[test]
    fn a_hook_result_is_three_words_at_most() {
        // Moved through the phase loop on every request: kept small by the boxes in
        // `Flow::Respond` and `DeviceError`.
        assert!(
            size_of::<DeviceResult>() <= 3 * size_of::<usize>(),
            "{} bytes",
            size_of::<DeviceResult>()
        );
    }

    #[test]
    fn device_errors_keep_status_and_place() {
        let err = DeviceError::new("boom")
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .at("waf", Phase::Request);
        assert_eq!(err.to_string(), "device \"waf\" in request: boom");
        let err = err.into_error();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.kind(), crate::ErrorKind::Device);
    }
}
