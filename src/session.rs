//! One request's way through the snapshot, top to bottom: the connection's hyper service
//! ([`ConnService`], one boxed future per request), then [`handle`]: request id, host and path
//! made canonical, `on_request`, routing, the outcome (`before_proxy`, the upstream,
//! `after_proxy`), `on_error` and `on_response`, and the request recorded. The request context
//! is a local of the [`Session`] this drives; errors become responses carrying the request id.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONNECTION, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, request};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use snakeway_core::metrics::{Counter, CounterHandle};
use snakeway_core::pipeline::{Answer, Ran, Session};
use snakeway_core::request_id::{self, X_REQUEST_ID};
use snakeway_core::respond::ErrorFormat;
use snakeway_core::{
    Body, Error, ErrorKind, Origin, Phase, RequestCtx, RequestInfo, path, respond,
};
use snakeway_proxy::{Downstream, ProxyService, is_websocket_upgrade};
use snakeway_synthetic::Synthetic;

use crate::conn::h1::{Rejection, Rejections, host};
use crate::conn::tunnel::{TunnelHost, WebSockets};
use crate::router::request_host;
use crate::snapshot::{ListenerRuntime, Outcome, Routed, Snapshot};
use crate::state::State;

/// The hyper service for one downstream connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    state: Arc<State>,
    downstream: Downstream,
    /// Where the HTTP/1 framing guard hands over a refused request (see [`crate::conn::h1`]).
    rejections: Rejections,
    /// The listener's `body_read_timeout`.
    body_read_timeout: Duration,
    /// Where the connection's tunnel runs if a request upgrades it.
    tunnels: TunnelHost,
    /// Which listener accepted the connection, for recording.
    listener: ListenerTag,
    /// The connection's handle on its listener's received-bytes counter.
    received: Arc<CounterHandle>,
    /// `redirect_http_to`: the answer to every request on this connection.
    redirect: Option<Arc<Synthetic>>,
}

/// The listener a connection was accepted on, as the snapshot of its accept knew it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerTag {
    /// Its configured address (the key of [`Snapshot::listeners`]).
    pub(crate) addr: std::net::SocketAddr,
    /// The epoch of the snapshot `index` belongs to.
    pub(crate) epoch: u64,
    /// [`ListenerRuntime::index`](crate::snapshot::ListenerRuntime::index).
    pub(crate) index: usize,
}

// === impl ListenerTag ===

impl ListenerTag {
    /// The listener's index in `snapshot`: one comparison, unless the connection outlived the
    /// snapshot it was accepted under (then a lookup; `usize::MAX` once the listener is gone,
    /// which records no request count).
    #[inline]
    fn index_in(&self, snapshot: &Snapshot) -> usize {
        if snapshot.epoch == self.epoch {
            return self.index;
        }
        snapshot
            .listeners
            .get(&self.addr)
            .map_or(usize::MAX, |l| l.index)
    }
}

// === impl ConnService ===

impl ConnService {
    /// The service for one connection accepted on the listener `runtime`; `rejections` is
    /// shared with the connection's framing guard (HTTP/1), or never filled (HTTP/2).
    pub(crate) fn new(
        state: Arc<State>,
        downstream: Downstream,
        rejections: Rejections,
        runtime: &ListenerRuntime,
        tunnels: TunnelHost,
        listener: ListenerTag,
        received: Arc<Counter>,
    ) -> Self {
        Self {
            state,
            downstream,
            rejections,
            body_read_timeout: runtime.body_read_timeout,
            tunnels,
            listener,
            received: Arc::new(CounterHandle::new(received)),
            redirect: runtime.redirect.clone(),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let snapshot = self.state.current();
        let downstream = self.downstream;
        let listener = self.listener.index_in(&snapshot);
        if let Some(rejection) = self.rejections.get() {
            // The guard's synthetic request, in place of the refused one.
            let response = refuse(&snapshot, downstream, rejection);
            snapshot.unrouted.count(listener, response.status());
            return Box::pin(std::future::ready(Ok(response)));
        }
        let gap = self.body_read_timeout;
        if req.extensions().get::<OnUpgrade>().is_some() {
            // hyper could upgrade this one: a websocket route will need the tunnel host.
            req.extensions_mut().insert(self.tunnels.clone());
        }
        let received = &self.received;
        let req = req.map(|body| Body::incoming_counted(body, gap, received));
        let redirect = self.redirect.clone();
        Box::pin(async move {
            let response = handle(snapshot, downstream, listener, redirect, req).await;
            Ok(response)
        })
    }
}

/// Answers a request the HTTP/1 framing guard refused, through the error path: `on_error` and
/// `on_response` run (no request-side hook: there is no request to show them), and the
/// connection closes.
fn refuse(snapshot: &Snapshot, downstream: Downstream, rejection: &Rejection) -> Response<Body> {
    let request_id = request_id::generate();
    let violation = rejection.violation;
    let status = StatusCode::from_u16(violation.status).unwrap_or(StatusCode::BAD_REQUEST);
    let error = Error::new(ErrorKind::BadRequest, violation.reason).with_status(status);
    tracing::debug!(
        request_id = request_id.to_str().unwrap_or("-"),
        status = violation.status,
        %error,
        "request refused: invalid HTTP/1 framing"
    );
    let error = error.with_reason(violation.reason);
    let mut response = if snapshot.pipeline.is_empty() {
        respond::error(&error, &request_id, snapshot.pipeline.error_detail())
    } else {
        // Refused before any body was read: a count of 0.
        let info = RequestInfo::new(
            request_id,
            downstream.peer,
            rejection.method.clone().unwrap_or(Method::GET),
            rejection
                .target
                .clone()
                .unwrap_or_else(|| Uri::from_static("/")),
            Instant::now(),
            true,
        );
        snapshot.pipeline.refuse(RequestCtx::new(info), error)
    };
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers a request on a listener with `redirect_http_to`: a 308 to the same host, path and
/// query on HTTPS, in place of routing (nothing is served over plain HTTP); the devices run
/// around it as around any synthetic answer. A request without a host cannot be redirected:
/// 400.
fn redirect_to_https(redirect: &Synthetic, req: &Request<Body>) -> Result<Response<Body>, Error> {
    let vars = snakeway_synthetic::vars(req, "http");
    if vars.host.is_empty() {
        return Err(Error::new(ErrorKind::BadRequest, "no host to redirect to")
            .with_reason("the request names no host"));
    }
    redirect.respond(&vars).map_err(synthetic_failed)
}

/// The request error for a configured response whose header cannot hold what the request
/// brought (a byte of its host or path that is not valid in a header).
fn synthetic_failed(e: snakeway_synthetic::InvalidExpansion) -> Error {
    Error::new(
        ErrorKind::BadRequest,
        "a configured response cannot be made",
    )
    .with_source(e)
    .with_reason("the request's host or path cannot be used in this response")
}

/// Runs one request through the snapshot, top to bottom, and always produces a response;
/// records it for listener `listener` (its index in `snapshot`).
///
/// The phases, in order: request id, host and path made canonical; `on_request`; routing (or
/// the listener's redirect); the outcome (`before_proxy`, the upstream, `after_proxy` for a
/// service); `on_error` and `on_response` on the way out. Without devices, the same path runs
/// with no [`Session`] at all.
pub(crate) async fn handle(
    snapshot: Arc<Snapshot>,
    downstream: Downstream,
    listener: usize,
    redirect: Option<Arc<Synthetic>>,
    req: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let (mut head, body) = req.into_parts();
    let request_id = request_id::ensure(&mut head.headers);
    align_host(&mut head);
    // Devices see the normalized path. A path that does not normalize is left as it is and
    // rejected by the router, so its 400 still passes through `on_error` and `on_response`.
    let unnormal = match path::normalize(head.uri.path()) {
        Ok(Cow::Owned(normalized)) => {
            if let Some(uri) = rewrite_uri(&head.uri, &normalized) {
                head.uri = uri;
            }
            None
        }
        Ok(Cow::Borrowed(_)) => None,
        Err(e) => Some(e),
    };
    let mut call = Call {
        unnormal,
        snapshot: &snapshot,
        downstream: &downstream,
        redirect: redirect.as_deref(),
        request_id: &request_id,
        route: usize::MAX,
    };
    let pipeline = &snapshot.pipeline;
    let mut response = if pipeline.is_empty() {
        let format = ErrorFormat::of(&head.headers);
        let mut response = match call.route_and_call(None, head, body).await {
            Ok(response) => response,
            Err(error) => respond::error_as(&error, &request_id, format, pipeline.error_detail()),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        response
    } else {
        let mut session = Session::new(
            pipeline,
            &head,
            request_id.clone(),
            downstream.peer,
            started,
        );
        let ended = hyper::body::Body::is_end_stream(&body);
        // Matched rather than `Ran::outcome().await`: no future unless a device defers.
        let early = match session.on_request(&mut head, ended) {
            Ran::Ended(early) => early,
            Ran::Waiting(rest) => rest.await,
        };
        let answer = match early {
            Some(answer) => answer,
            None => {
                let body = session.hook_body(body);
                call.route_and_call(Some(&mut session), head, body).await
            }
        };
        session.finish(answer)
    };
    call.record(listener, &mut response, started);
    response
}

/// One request's call into the snapshot: what routing and the outcome need, and the route
/// taken.
struct Call<'a> {
    /// Why the request's path did not normalize on arrival, if it did not.
    unnormal: Option<path::PathError>,
    snapshot: &'a Snapshot,
    downstream: &'a Downstream,
    /// The listener's `redirect_http_to` answer, in place of routing.
    redirect: Option<&'a Synthetic>,
    request_id: &'a HeaderValue,
    /// The route taken: an index into the snapshot's router, `usize::MAX` until routed.
    route: usize,
}

// === impl Call ===

impl<'a> Call<'a> {
    /// Routes the request and calls its outcome, or answers with the listener's redirect;
    /// with a session, notes the route, the service and the origin in its context and runs
    /// `before_proxy` and `after_proxy` around the upstream.
    async fn route_and_call(
        &mut self,
        mut session: Option<&mut Session<'_>>,
        head: request::Parts,
        body: Body,
    ) -> Answer {
        let mut req = Request::from_parts(head, body);
        // With devices, one of them may have changed the path: routing normalizes it again if so.
        let routed = match self.redirect {
            Some(redirect) => Err(redirect_to_https(redirect, &req)),
            None => {
                let seen = session.as_deref().map(|s| s.ctx().path());
                self.select(&req, seen).map_err(Err)
            }
        };
        let (index, route) = match routed {
            Ok(routed) => routed,
            Err(answer) => {
                if let Some(session) = session {
                    session.ctx_mut().origin = Some(Origin::Synthetic);
                }
                return self.logged(answer);
            }
        };
        self.route = index;
        tracing::debug!(
            request_id = self.request_id.to_str().unwrap_or("-"),
            route = %route.name,
            "request routed"
        );
        if let Some(session) = session.as_deref_mut() {
            session.routed(&route.name, route.target.outcome.service_name());
        }
        let answer = match &route.target.outcome {
            Outcome::Respond(synthetic) => {
                let scheme = if self.downstream.tls { "https" } else { "http" };
                if let Some(session) = session {
                    session.ctx_mut().origin = Some(Origin::Synthetic);
                }
                synthetic
                    .respond(&snakeway_synthetic::vars(&req, scheme))
                    .map_err(synthetic_failed)
            }
            Outcome::Static(files) => {
                if let Some(session) = session {
                    session.ctx_mut().origin = Some(Origin::Static);
                }
                Ok(files.serve(req).await)
            }
            Outcome::Service {
                service,
                strip_prefix,
                websockets,
                ..
            } => {
                route.target.headers.apply_to_request(req.headers_mut());
                if *strip_prefix {
                    let stripped = strip(req.uri().path(), &route.prefix);
                    if let Some(uri) = rewrite_uri(req.uri(), &stripped) {
                        *req.uri_mut() = uri;
                    }
                }
                let upgrade = websockets
                    .as_ref()
                    .filter(|_| is_websocket_upgrade(&req))
                    .and_then(|ws| Some((ws, req.extensions_mut().remove::<TunnelHost>()?)));
                if let Some(session) = session.as_deref_mut()
                    && session.has(Phase::BeforeProxy)
                {
                    let (mut head, body) = req.into_parts();
                    if let Some(answer) = session.before_proxy(&mut head).await {
                        return self.logged(answer);
                    }
                    req = Request::from_parts(head, body);
                }
                // The proxy's future in line; a WebSocket handshake's boxed.
                let forwarded = match upgrade {
                    None => service.forward(req, self.downstream).await,
                    Some(upgrade) => {
                        Box::pin(upgrade_to_websocket(
                            service,
                            self.downstream,
                            req,
                            upgrade,
                            &route.name,
                        ))
                        .await
                    }
                };
                match session {
                    Some(session) if session.has(Phase::AfterProxy) => match forwarded {
                        Ok(response) => session.after_proxy(response).await,
                        failed => failed,
                    },
                    // No device takes part: the response stays where it is.
                    Some(session) => {
                        if forwarded.is_ok() {
                            session.ctx_mut().origin = Some(Origin::Upstream);
                        }
                        forwarded
                    }
                    None => forwarded,
                }
            }
        };
        self.logged(answer)
    }

    /// The route for a request, or why there is none. The path was normalized on arrival;
    /// `seen` is the path the devices were shown (when they ran): a path they changed is
    /// normalized again.
    fn select(
        &self,
        req: &Request<Body>,
        seen: Option<&str>,
    ) -> Result<(usize, &'a crate::router::Route<Routed>), Error> {
        // HTTP/1 heads (Host included) were checked by the framing guard.
        if req.version() == Version::HTTP_2 {
            check_h2_host(req)?;
        }
        let path = match self.unnormal {
            // The devices' snapshot shares the path's bytes until one changes it: the same
            // slice is the same path, with no comparison.
            _ if seen.is_some_and(|seen| {
                let path = req.uri().path();
                !std::ptr::eq(seen, path) && seen != path
            }) =>
            {
                path::normalize(req.uri().path())
            }
            Some(e) => Err(e),
            None => Ok(Cow::Borrowed(req.uri().path())),
        }
        .map_err(|e| Error::new(ErrorKind::BadRequest, e.to_string()))?;
        self.snapshot
            .router
            .route_index(request_host(req), &path)
            .ok_or_else(|| Error::new(ErrorKind::NoRoute, format!("no route for {path}")))
    }

    /// Sets the route's `response_headers` on `response` (every response of a routed
    /// request, errors included), and records it into its route's recorders (those of
    /// requests without a route when it has none).
    #[inline]
    fn record(&self, listener: usize, response: &mut Response<Body>, started: Instant) {
        let recorders = match self.snapshot.router.get(self.route) {
            Some(route) => {
                route
                    .target
                    .headers
                    .apply_to_response(response.headers_mut());
                &route.target.recorders
            }
            None => &self.snapshot.unrouted,
        };
        recorders.record(listener, response.status(), started.elapsed());
    }

    /// Logs a failed answer: client faults at debug, the rest as warnings.
    fn logged(&self, answer: Answer) -> Answer {
        if let Err(error) = &answer {
            let request_id = self.request_id.to_str().unwrap_or("-");
            match error.kind() {
                // Client faults; a client body timeout is already logged once, with its cause,
                // by the proxy.
                ErrorKind::BadRequest | ErrorKind::NoRoute | ErrorKind::RequestTimeout => {
                    tracing::debug!(request_id, %error, "request rejected");
                }
                _ => tracing::warn!(request_id, %error, "request failed"),
            }
        }
        answer
    }
}

/// Forwards a WebSocket handshake (`req`, on a websocket route) to `service` as an upgrade
/// whose tunnel runs on the connection's [`TunnelHost`]: 503 when the route has
/// `max_websockets` open, before the upstream is contacted.
async fn upgrade_to_websocket(
    service: &ProxyService,
    downstream: &Downstream,
    req: Request<Body>,
    (websockets, host): (&WebSockets, TunnelHost),
    route: &Arc<str>,
) -> Result<Response<Body>, Error> {
    let Some(open) = websockets.try_open() else {
        return Err(Error::new(
            ErrorKind::Overloaded,
            format!(
                "route {route}: max_websockets ({}) are open",
                websockets.max
            ),
        ));
    };
    let (response, tunnel) = service.forward_upgrade(req, downstream).await?;
    if let Some(tunnel) = tunnel {
        host.spawn(tunnel, open, route.clone());
    }
    Ok(response)
}

/// The host of an HTTP/2 request (HTTP/1 heads were checked by the framing guard): `:authority`
/// when present, else exactly one `host` field, either `uri-host[:port]` without userinfo.
fn check_h2_host(req: &Request<Body>) -> Result<(), Error> {
    let valid = match req.uri().authority() {
        Some(authority) => host::is_valid(authority.as_str().as_bytes()),
        None => {
            let mut hosts = req.headers().get_all(HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => host::is_valid(h.as_bytes()),
                (None, _) => true,
                (Some(_), Some(_)) => false,
            }
        }
    };
    if valid {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::BadRequest, "invalid host").with_reason("invalid host"))
    }
}

/// Makes the `host` field say what routing reads (RFC 9112 §3.2.2, RFC 9113 §8.3.1): the
/// target's authority when there is one (absolute-form HTTP/1, HTTP/2's `:authority`), so the
/// upstream sees the host that was routed on. An HTTP/2 request without `host` keeps none here
/// (the proxy derives it); an origin-form request costs one `Option` check.
fn align_host(head: &mut request::Parts) {
    let Some(authority) = head.uri.authority() else {
        return;
    };
    let mut hosts = head.headers.get_all(HOST).iter();
    let aligned = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.as_bytes() == authority.as_str().as_bytes(),
        (None, _) => head.version == Version::HTTP_2,
        (Some(_), Some(_)) => false,
    };
    if !aligned && let Ok(value) = HeaderValue::from_str(authority.as_str()) {
        head.headers.insert(HOST, value);
    }
}

/// `/api/x` with prefix `/api` → `/x`; `/api` → `/`.
fn strip(path: &str, prefix: &str) -> String {
    match &path[prefix.len().min(path.len())..] {
        "" => "/".to_owned(),
        rest => rest.to_owned(),
    }
}

/// The request URI with its path replaced by `path` (query kept), or `None` when unchanged.
fn rewrite_uri(uri: &Uri, path: &str) -> Option<Uri> {
    if uri.path() == path {
        return None;
    }
    let pq = match uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).ok()
}
