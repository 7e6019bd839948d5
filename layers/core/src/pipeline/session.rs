//! [`Session`]: one request's way through a [`Pipeline`], phase by phase, with its context a
//! local of whoever drives it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Response, Uri, request};

use super::body::{BodyVerdict, HookedBody};
use super::{ON_REQUEST, Pipeline, Step};
use crate::respond::ErrorFormat;
use crate::{Body, BodyCtx, DeviceResult, Error, Flow, Origin, Phase, RequestCtx, RequestInfo};

/// One request going through a pipeline. Its driver calls the phases in order:
///
/// ```text
/// Session::new → on_request ─┬─ (answered) ──────────────────────────────┐
///                            └─ hook_body → route → before_proxy ─┬──────┤
///                                         forward → after_proxy ──┴─ finish (on_error, on_response)
/// ```
///
/// A device may defer its result ([`Flow::Defer`]): `before_proxy` and `after_proxy` are
/// `async`, and `on_request` gives a [`Ran`], a future only when a device deferred. A phase
/// that answers gives `Some(result)`: the driver skips to [`Session::finish`] with it. The
/// server's request path drives a session directly; [`PipelineLayer`](super::PipelineLayer)
/// and [`ProxyHooksLayer`](super::ProxyHooksLayer) drive the same phases as Tower middleware.
#[derive(Debug)]
pub struct Session<'p> {
    pipeline: &'p Pipeline,
    ctx: RequestCtx,
    /// The error format, decided on the headers as the client sent them.
    format: ErrorFormat,
    /// Where a body hook that stopped the body leaves its verdict.
    verdict: Option<Arc<Mutex<Option<BodyVerdict>>>>,
}

/// What a phase that answered gives: the response or the failure to finish with.
pub type Answer = Result<Response<Body>, Error>;

/// `on_request` as far as it ran without waiting.
pub enum Ran<'a> {
    /// The phase ended: `Some` answer to finish with, or `None` to go on.
    Ended(Option<Answer>),
    /// A device deferred its result: the rest of the phase, to await.
    Waiting(Pin<Box<dyn Future<Output = Option<Answer>> + Send + 'a>>),
}

// === impl Ran ===

impl Ran<'_> {
    /// The phase's outcome, waited for when a device deferred.
    pub async fn outcome(self) -> Option<Answer> {
        match self {
            Self::Ended(answer) => answer,
            Self::Waiting(rest) => rest.await,
        }
    }
}

// === impl Session ===

impl<'p> Session<'p> {
    /// A session for the request whose head is `head`, with id `request_id` (already in its
    /// headers), from `peer`, arrived at `started`.
    pub fn new(
        pipeline: &'p Pipeline,
        head: &request::Parts,
        request_id: HeaderValue,
        peer: SocketAddr,
        started: Instant,
    ) -> Self {
        // An origin-form target (HTTP/1's usual) is only a path and query: the snapshot is made
        // of that, without a clone of the empty authority.
        let uri = match head.uri.path_and_query() {
            Some(target) if head.uri.scheme().is_none() && head.uri.authority().is_none() => {
                Uri::from(target.clone())
            }
            _ => head.uri.clone(),
        };
        let info = RequestInfo::new(
            request_id,
            peer,
            head.method.clone(),
            uri,
            started,
            pipeline.counts_body(),
        );
        Self {
            pipeline,
            ctx: RequestCtx::new(info),
            format: ErrorFormat::of(&head.headers),
            verdict: None,
        }
    }

    /// The request context.
    #[inline]
    pub fn ctx(&self) -> &RequestCtx {
        &self.ctx
    }

    /// The request context, to note the route, the service or the origin.
    #[inline]
    pub fn ctx_mut(&mut self) -> &mut RequestCtx {
        &mut self.ctx
    }

    /// Runs `on_request` as far as it goes without waiting; for a request without a body
    /// (`body_ended`), the body hooks see its end right after (nothing polls a body that is
    /// not there). No future is made unless a device defers its result: the driver awaits
    /// only [`Ran::Waiting`] (or [`Ran::outcome`] for either).
    pub fn on_request<'a>(&'a mut self, head: &'a mut request::Parts, body_ended: bool) -> Ran<'a> {
        match self
            .pipeline
            .run_from(Phase::Request, 0, &mut self.ctx, head, ON_REQUEST)
        {
            Step::Passed => Ran::Ended(self.passed(body_ended)),
            Step::Done(outcome) => Ran::Ended(self.answered(outcome)),
            Step::Wait(at, pending) => Ran::Waiting(Box::pin(async move {
                let outcome = self
                    .pipeline
                    .resume(Phase::Request, at, pending, &mut self.ctx, head, ON_REQUEST)
                    .await;
                self.requested(outcome, body_ended)
            })),
        }
    }

    /// A deferred `on_request`'s outcome as the request's answer (see [`Session::passed`] for
    /// one every device let on).
    fn requested(&mut self, outcome: DeviceResult, body_ended: bool) -> Option<Answer> {
        match outcome {
            Ok(Flow::Continue) => self.passed(body_ended),
            outcome => self.answered(outcome),
        }
    }

    /// The answer for a request every `on_request` hook let on: none, unless the body hooks,
    /// shown the end of a body that is not there (`body_ended`), stop it.
    #[inline]
    fn passed(&mut self, body_ended: bool) -> Option<Answer> {
        if !(body_ended && self.pipeline.has(Phase::RequestBody)) {
            return None;
        }
        let body_ctx = BodyCtx {
            info: self.ctx.info().clone(),
            bytes_before: 0,
        };
        let outcome = self
            .pipeline
            .on_request_body(&body_ctx, &Bytes::new(), true);
        self.answered(outcome)
    }

    /// The request body as the rest of the request should read it: run through the body hooks
    /// and counted when some device needs that, else as it is.
    pub fn hook_body(&mut self, body: Body) -> Body {
        if !self.pipeline.counts_body() || http_body::Body::is_end_stream(&body) {
            return body;
        }
        let verdict = Arc::new(Mutex::new(None));
        let hooked = HookedBody::new(
            body,
            self.pipeline.clone(),
            self.ctx.info().clone(),
            verdict.clone(),
        );
        self.verdict = Some(verdict);
        Body::new(hooked)
    }

    /// Notes the route the request took, and the service it leads to (`None` for another
    /// outcome), in the context, for the devices that run after routing (nothing is noted
    /// when none does: no device could read it).
    #[inline]
    pub fn routed(&mut self, route: &Arc<str>, service: Option<&Arc<str>>) {
        if self.pipeline.runs_after_routing() {
            self.ctx.route = Some(route.clone());
            self.ctx.service = service.cloned();
        }
    }

    /// Whether any device takes part in `phase` (a driver need not split a request or a
    /// response for a phase no device takes part in).
    #[inline]
    pub fn has(&self, phase: Phase) -> bool {
        self.pipeline.has(phase)
    }

    /// Runs `before_proxy` (the request is about to be forwarded to `service`).
    pub async fn before_proxy(&mut self, head: &mut request::Parts) -> Option<Answer> {
        let outcome = self.pipeline.before_proxy(&mut self.ctx, head).await;
        self.answered(outcome)
    }

    /// Runs `after_proxy` on the upstream's response; the result is what the client should
    /// get (the response, a device's replacement, or a device's failure).
    pub async fn after_proxy(&mut self, response: Response<Body>) -> Answer {
        self.pipeline.proxied(&mut self.ctx, response).await
    }

    /// Ends the request with `result`: `on_error` for a failure (a body hook's verdict takes
    /// its place when one stopped the body), then `on_response`, and the `complete` hooks when
    /// the body has gone. The response carries the request id.
    #[inline]
    pub fn finish(mut self, result: Answer) -> Response<Body> {
        let result = match result {
            Err(error) => match self.verdict.as_ref().and_then(|v| v.lock().ok()?.take()) {
                Some(BodyVerdict::Respond(response)) => {
                    self.ctx.origin = Some(Origin::Device);
                    Ok(response)
                }
                Some(BodyVerdict::Fail(device_error)) => Err(device_error.into_error()),
                None => Err(error),
            },
            ok => ok,
        };
        self.pipeline.finish(&mut self.ctx, result, self.format)
    }

    /// A request-side phase's outcome as the request's answer: `None` to go on, else the
    /// device's early answer (origin `device`) or its failure.
    fn answered(&mut self, outcome: DeviceResult) -> Option<Answer> {
        match outcome {
            Ok(Flow::Respond(response)) => {
                self.ctx.origin = Some(Origin::Device);
                Some(Ok(*response))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e.into_error())),
        }
    }
}
