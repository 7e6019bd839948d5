//! The device pipeline as Tower layers.
//!
//! A [`Pipeline`] is an ordered list of devices, compiled once into per-phase lists so that a
//! phase no device implements costs nothing. Two layers run it at the right places of a stack:
//!
//! * [`PipelineLayer`] goes around the router (or any service): `on_request`, the body hook
//!   (as a body wrapper), `on_error` and `on_response`;
//! * [`ProxyHooksLayer`] goes directly around the upstream client: `before_proxy` and
//!   `after_proxy`.
//!
//! The [`RequestCtx`] travels between them in the request's extensions, comes back in the
//! response's extensions (or in the [`Error`]), and is never forwarded upstream.
//!
//! In every phase, devices run in configured order: this is a linear pipeline, not an onion.
//! An early answer skips the upstream and the remaining request-side hooks, and `on_response`
//! still runs for every device. A failing or panicking device fails that request alone.

mod body;
mod complete;
mod proxy_hooks;
mod service;
mod session;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Response, request, response};

pub use self::body::{BodyStopped, HookedBody};
pub use self::complete::CompletingBody;
pub use self::proxy_hooks::{ProxyHooks, ProxyHooksFuture, ProxyHooksLayer};
pub use self::service::{PipelineFuture, PipelineLayer, PipelineService};
pub use self::session::{Answer, Ran, Session};
use crate::metrics::{Counters, DEVICE_HOOKS};
use crate::respond::{ErrorDetail, ErrorFormat};
use crate::{
    Body, BodyCtx, Deferred, Device, DeviceError, DeviceResult, Error, Flow, Origin, Phase,
    RequestCtx, ResponseCtx, Transfer, grpc, respond,
};

const PHASES: [Phase; 7] = [
    Phase::Request,
    Phase::RequestBody,
    Phase::BeforeProxy,
    Phase::AfterProxy,
    Phase::Response,
    Phase::Error,
    Phase::Complete,
];

/// An ordered list of devices, compiled per phase. Cheap to clone.
#[derive(Clone, Default)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    devices: Vec<Arc<dyn Device>>,
    /// For each phase (indexed like `PHASES`), the devices taking part, in configured order.
    by_phase: [Box<[Entry]>; 7],
    /// How much clients are told about failures.
    error_detail: ErrorDetail,
    /// Whether a device takes part in a phase after routing ([`Pipeline::runs_after_routing`]).
    after_routing: bool,
    /// Whether request body bytes are counted ([`Pipeline::counts_body`]).
    counts_body: bool,
}

/// A device hook of a phase that may answer, over the phase's head type.
type Hook<H> = fn(&dyn Device, &mut RequestCtx, &mut H) -> DeviceResult;

/// The `on_request` hook.
const ON_REQUEST: Hook<request::Parts> = |d, c, h| d.on_request(c, h);

/// Where a phase stopped: passed (every device let the request on), done with a device's
/// answer or failure, or waiting on the deferred result of its device at an index.
enum Step {
    Passed,
    Done(DeviceResult),
    Wait(usize, Deferred),
}

/// A device taking part in one phase, with its outcome counts there.
#[derive(Clone)]
struct Entry {
    device: Arc<dyn Device>,
    /// Indexed by [`HookOutcome`].
    outcomes: Arc<Counters<4>>,
}

/// How one device hook ended (the index of its label in
/// [`DEVICE_OUTCOMES`](crate::metrics::DEVICE_OUTCOMES)).
#[derive(Clone, Copy)]
enum HookOutcome {
    Continue = 0,
    Respond = 1,
    Error = 2,
    Panic = 3,
}

// === impl Entry ===

impl Entry {
    /// Counts how a hook ended (a deferred result is counted when it settles).
    #[inline]
    fn counted(&self, flow: &Flow) {
        let outcome = match flow {
            Flow::Continue => HookOutcome::Continue,
            Flow::Respond(_) => HookOutcome::Respond,
            Flow::Defer(_) => return,
        };
        self.outcomes.add(outcome as usize, 1);
    }
}

// === impl Pipeline ===

impl Pipeline {
    /// A pipeline running `devices` in this order.
    pub fn new(devices: Vec<Arc<dyn Device>>) -> Self {
        let by_phase = PHASES.map(|phase| {
            devices
                .iter()
                .filter(|d| d.phases().contains(phase))
                .map(|device| Entry {
                    device: device.clone(),
                    outcomes: DEVICE_HOOKS.get(&[device.name(), phase.as_str()]),
                })
                .collect::<Box<[_]>>()
        });
        let has = |phase: Phase| !by_phase[phase as usize].is_empty();
        let after_routing = [
            Phase::BeforeProxy,
            Phase::AfterProxy,
            Phase::Response,
            Phase::Error,
            Phase::Complete,
        ]
        .into_iter()
        .any(has);
        let counts_body = has(Phase::RequestBody) || has(Phase::Complete);
        Self {
            inner: Arc::new(Inner {
                devices,
                by_phase,
                error_detail: ErrorDetail::default(),
                after_routing,
                counts_body,
            }),
        }
    }

    /// Tells clients `detail` about failures (default [`ErrorDetail::Minimal`]).
    #[must_use]
    pub fn with_error_detail(mut self, detail: ErrorDetail) -> Self {
        Arc::make_mut(&mut self.inner).error_detail = detail;
        self
    }

    /// How much clients are told about failures.
    #[inline]
    pub fn error_detail(&self) -> ErrorDetail {
        self.inner.error_detail
    }

    /// The devices, in configured order.
    pub fn devices(&self) -> &[Arc<dyn Device>] {
        &self.inner.devices
    }

    /// Calls [`Device::flush`] on every device (at shutdown).
    pub fn flush(&self) {
        for device in &self.inner.devices {
            device.flush();
        }
    }

    /// Whether no device takes part in any phase.
    pub fn is_empty(&self) -> bool {
        self.inner.by_phase.iter().all(|d| d.is_empty())
    }

    /// Whether any device takes part in `phase`.
    #[inline]
    pub fn has(&self, phase: Phase) -> bool {
        !self.in_phase(phase).is_empty()
    }

    /// Whether any device takes part in a phase after routing (`before_proxy`, `after_proxy`,
    /// `on_response`, `on_error`, `on_complete`): only those can read the route and service
    /// noted in the request context.
    #[inline]
    pub fn runs_after_routing(&self) -> bool {
        self.inner.after_routing
    }

    /// Whether request body bytes are counted (into [`RequestInfo::received`](crate::RequestInfo::received)): some device
    /// sees the body or the completed transfer.
    #[inline]
    pub fn counts_body(&self) -> bool {
        self.inner.counts_body
    }

    /// The outer layer for a stack with [`Pipeline::proxy_hooks`] inside: `on_request`, body
    /// hook, `on_error`, `on_response`. (For a stack without proxy hooks, e.g. an axum app,
    /// use [`PipelineLayer::new`].)
    pub fn layer(&self) -> PipelineLayer {
        PipelineLayer::with_proxy_hooks(self.clone())
    }

    /// The inner layer, for directly around the upstream client: `before_proxy`, `after_proxy`.
    pub fn proxy_hooks(&self) -> ProxyHooksLayer {
        ProxyHooksLayer::new(self.clone())
    }

    /// Answers a request that was refused before it could be read (an HTTP/1 framing
    /// violation): `on_error` with `error`, then `on_response`, as for any failure. No
    /// request-side hook runs: there is no request to show them.
    ///
    /// The answer is always an error page: such a request was never read far enough to know
    /// whether it is gRPC (and gRPC runs over HTTP/2, which the framing guard never sees).
    pub fn refuse(&self, mut ctx: RequestCtx, error: Error) -> Response<Body> {
        self.finish(&mut ctx, Err(error), ErrorFormat::Page)
    }

    #[inline]
    fn in_phase(&self, phase: Phase) -> &[Entry] {
        &self.inner.by_phase[phase as usize]
    }

    /// Runs a phase that may answer (`on_request`, `before_proxy`, `after_proxy`): every
    /// device in order until one answers or fails. Synchronous until a device defers; only
    /// then does the rest of the phase become a (boxed) future, so a request whose devices
    /// never defer carries no waiting state.
    async fn run_phase<H>(
        &self,
        phase: Phase,
        ctx: &mut RequestCtx,
        head: &mut H,
        hook: Hook<H>,
    ) -> DeviceResult {
        match self.run_from(phase, 0, ctx, head, hook) {
            Step::Passed => Ok(Flow::Continue),
            Step::Done(result) => result,
            Step::Wait(at, pending) => {
                Box::pin(self.resume(phase, at, pending, ctx, head, hook)).await
            }
        }
    }

    /// Runs `phase` from its device at `from` on, until one answers, fails or defers.
    fn run_from<H>(
        &self,
        phase: Phase,
        from: usize,
        ctx: &mut RequestCtx,
        head: &mut H,
        hook: Hook<H>,
    ) -> Step {
        for (at, entry) in self.in_phase(phase).iter().enumerate().skip(from) {
            let device = entry.device.as_ref();
            let result = guarded(entry, phase, || hook(device, ctx, head));
            match result {
                // A `Continue` holds nothing: forgotten rather than left to the result's drop
                // glue, a call on every device's every request.
                Ok(Flow::Continue) => std::mem::forget(result),
                Ok(Flow::Defer(pending)) => return Step::Wait(at, pending),
                done => return Step::Done(done),
            }
        }
        Step::Passed
    }

    /// The rest of a phase whose device at `at` deferred its result.
    async fn resume<H>(
        &self,
        phase: Phase,
        mut at: usize,
        mut pending: Deferred,
        ctx: &mut RequestCtx,
        head: &mut H,
        hook: Hook<H>,
    ) -> DeviceResult {
        loop {
            match settle(&self.in_phase(phase)[at], phase, pending, ctx).await? {
                Flow::Continue => {}
                answer => return Ok(answer),
            }
            match self.run_from(phase, at + 1, ctx, head, hook) {
                Step::Passed => return Ok(Flow::Continue),
                Step::Done(result) => return result,
                Step::Wait(next, deferred) => (at, pending) = (next, deferred),
            }
        }
    }

    /// The `before_proxy` phase.
    pub(crate) fn before_proxy<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        head: &'a mut request::Parts,
    ) -> impl Future<Output = DeviceResult> + Send + 'a {
        self.run_phase(Phase::BeforeProxy, ctx, head, |d, c, h| {
            d.before_proxy(c, h)
        })
    }

    /// The `after_proxy` phase.
    pub(crate) fn after_proxy<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        head: &'a mut response::Parts,
    ) -> impl Future<Output = DeviceResult> + Send + 'a {
        self.run_phase(Phase::AfterProxy, ctx, head, |d, c, h| d.after_proxy(c, h))
    }

    /// Runs `after_proxy` on the upstream's `response`, noting where the answer comes from:
    /// the response, a device's replacement, or a device's failure.
    pub(crate) async fn proxied(&self, ctx: &mut RequestCtx, response: Response<Body>) -> Answer {
        if !self.has(Phase::AfterProxy) {
            ctx.origin = Some(Origin::Upstream);
            return Ok(response);
        }
        let (mut head, body) = response.into_parts();
        match self.after_proxy(ctx, &mut head).await {
            Ok(Flow::Respond(replacement)) => {
                ctx.origin = Some(Origin::Device);
                Ok(*replacement)
            }
            Ok(_) => {
                ctx.origin = Some(Origin::Upstream);
                Ok(Response::from_parts(head, body))
            }
            Err(e) => Err(e.into_error()),
        }
    }

    /// The body hooks, for one chunk. They run where the body is polled and cannot wait: a
    /// deferred result fails the request.
    fn on_request_body(&self, ctx: &BodyCtx, chunk: &Bytes, end_of_stream: bool) -> DeviceResult {
        for entry in self.in_phase(Phase::RequestBody) {
            let flow = guarded(entry, Phase::RequestBody, || {
                entry.device.on_request_body(ctx, chunk, end_of_stream)
            })?;
            match flow {
                Flow::Continue => {}
                Flow::Respond(_) => return Ok(flow),
                Flow::Defer(_) => {
                    entry.outcomes.add(HookOutcome::Error as usize, 1);
                    return Err(DeviceError::new("a body hook cannot defer its result")
                        .at(entry.device.name(), Phase::RequestBody));
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Ends a request: `on_error` for a failure (which becomes its error response in
    /// `format`), the fields devices added for the response, then `on_response` for every
    /// device, in order. For a gRPC request, a device's refusal becomes a gRPC status too
    /// ([`grpc::refusal`]).
    ///
    /// The context stays with the caller (it is not moved on every request) unless a
    /// `complete` hook needs it with the response body.
    fn finish(
        &self,
        ctx: &mut RequestCtx,
        result: Result<Response<Body>, Error>,
        format: ErrorFormat,
    ) -> Response<Body> {
        let mut response = match result {
            Ok(response) if format == ErrorFormat::Grpc && ctx.origin == Some(Origin::Device) => {
                grpc::refusal(response)
            }
            Ok(response) => response,
            Err(error) => self.fail(ctx, &error, format),
        };
        let headers = response.headers_mut();
        headers.insert(
            crate::request_id::X_REQUEST_ID.clone(),
            ctx.request_id().clone(),
        );
        ctx.apply_response_headers(headers);
        let mut origin = ctx.origin.unwrap_or(Origin::Upstream);
        let devices = self.in_phase(Phase::Response);
        if !devices.is_empty() {
            let (mut head, body) = response.into_parts();
            let mut body = Some(body);
            for entry in devices {
                let mut res = ResponseCtx {
                    head: &mut head,
                    origin,
                };
                if let Err(e) = guarded(entry, Phase::Response, || {
                    entry
                        .device
                        .on_response(ctx, &mut res)
                        .map(|()| Flow::Continue)
                }) {
                    // The response is replaced by the error's; later devices see that one.
                    let replaced = self.fail(ctx, &e.into_error(), format);
                    let (h, b) = replaced.into_parts();
                    head = h;
                    body = Some(b);
                    origin = Origin::Error;
                }
            }
            response = Response::from_parts(head, body.take().unwrap_or_default());
        }
        if self.has(Phase::Complete) {
            let status = response.status();
            let pipeline = self.clone();
            let ctx = std::mem::replace(ctx, RequestCtx::from_info(ctx.info().clone()));
            response =
                response.map(|body| Body::new(CompletingBody::new(body, pipeline, ctx, status)));
        }
        response
    }

    /// Runs the `on_complete` hooks: the request's body bytes went over the wire.
    fn on_complete(&self, ctx: &RequestCtx, transfer: &Transfer) {
        for entry in self.in_phase(Phase::Complete) {
            observed(entry, Phase::Complete, || {
                entry.device.on_complete(ctx, transfer);
            });
        }
    }

    /// Runs `on_error` and builds the error response in `format`.
    fn fail(&self, ctx: &mut RequestCtx, error: &Error, format: ErrorFormat) -> Response<Body> {
        for entry in self.in_phase(Phase::Error) {
            observed(entry, Phase::Error, || entry.device.on_error(ctx, error));
        }
        ctx.origin = Some(Origin::Error);
        respond::error_as(error, ctx.request_id(), format, self.inner.error_detail)
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.inner.devices.iter().map(|d| d.name()))
            .finish()
    }
}

/// Runs an observing hook (`on_error`, `on_complete`): a panic there is counted, logged and
/// otherwise ignored.
fn observed(entry: &Entry, phase: Phase, hook: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(hook)).is_err() {
        entry.outcomes.add(HookOutcome::Panic as usize, 1);
        tracing::error!(
            device = entry.device.name(),
            "device panicked in on_{phase}"
        );
    } else {
        entry.outcomes.add(HookOutcome::Continue as usize, 1);
    }
}

/// Runs one hook, turning a panic into a [`DeviceError`] and stamping errors with the device
/// and phase; counts how it ended.
#[inline]
fn guarded(entry: &Entry, phase: Phase, hook: impl FnOnce() -> DeviceResult) -> DeviceResult {
    judged(entry, phase, catch_unwind(AssertUnwindSafe(hook)))
}

/// Waits for a deferred hook result (polling it with `ctx`, panics contained as in the hook),
/// and for the next one if that defers again.
async fn settle(
    entry: &Entry,
    phase: Phase,
    mut pending: Deferred,
    ctx: &mut RequestCtx,
) -> DeviceResult {
    loop {
        let polled = std::future::poll_fn(|cx| {
            match catch_unwind(AssertUnwindSafe(|| pending.as_mut().poll(cx, ctx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await;
        match judged(entry, phase, polled)? {
            Flow::Defer(next) => pending = next,
            flow => return Ok(flow),
        }
    }
}

/// A hook's outcome, counted, with errors stamped and a panic turned into an error.
#[inline]
fn judged(entry: &Entry, phase: Phase, outcome: std::thread::Result<DeviceResult>) -> DeviceResult {
    match outcome {
        Ok(Ok(flow)) => {
            entry.counted(&flow);
            Ok(flow)
        }
        Ok(Err(error)) => Err(failed(entry, phase, error)),
        Err(panic) => Err(panicked(entry, phase, &*panic)),
    }
}

/// A hook's error, counted and stamped with the device and phase.
#[cold]
fn failed(entry: &Entry, phase: Phase, error: DeviceError) -> DeviceError {
    entry.outcomes.add(HookOutcome::Error as usize, 1);
    error.at(entry.device.name(), phase)
}

/// A hook's panic, counted, as an error stamped with the device and phase.
#[cold]
fn panicked(entry: &Entry, phase: Phase, panic: &(dyn std::any::Any + Send)) -> DeviceError {
    entry.outcomes.add(HookOutcome::Panic as usize, 1);
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    DeviceError::new(format!("panicked: {what}")).at(entry.device.name(), phase)
}

#[cfg(test)]
mod tests;
