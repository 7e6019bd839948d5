//! The per-request flow: one snapshot load, request id, path normalization, routing, the
//! outcome, and errors turned into responses that carry the request id.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use snakeway_core::request_id::{self, X_REQUEST_ID};
use snakeway_core::{Body, Error, ErrorKind, path, respond};
use snakeway_proxy::Downstream;

use crate::router::request_host;
use crate::stack::{Outcome, Snapshot};
use crate::state::State;

/// The hyper service for one downstream connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    state: Arc<State>,
    downstream: Downstream,
    /// Requests of this connection still waiting for their response head (for idle timeouts).
    in_flight: Arc<AtomicUsize>,
}

// === impl ConnService ===

impl ConnService {
    pub(crate) fn new(
        state: Arc<State>,
        downstream: Downstream,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            state,
            downstream,
            in_flight,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let snapshot = self.state.snapshot.load_full();
        let downstream = self.downstream;
        let in_flight = InFlight::enter(&self.in_flight);
        Box::pin(async move {
            let response = handle(&snapshot, &downstream, req.map(Body::from)).await;
            drop(in_flight);
            Ok(response)
        })
    }
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one request through the snapshot and always produces a response.
pub(crate) async fn handle(
    snapshot: &Snapshot,
    downstream: &Downstream,
    mut req: Request<Body>,
) -> Response<Body> {
    let request_id = request_id::ensure(req.headers_mut());
    let mut response = match route_and_call(snapshot, downstream, req).await {
        Ok(response) => response,
        Err(error) => {
            if error.kind() == ErrorKind::BadRequest || error.kind() == ErrorKind::NoRoute {
                tracing::debug!(request_id = ?request_id, %error, "request rejected");
            } else {
                tracing::warn!(request_id = ?request_id, %error, "request failed");
            }
            respond::error(&error, &request_id)
        }
    };
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    response
}

async fn route_and_call(
    snapshot: &Snapshot,
    downstream: &Downstream,
    mut req: Request<Body>,
) -> Result<Response<Body>, Error> {
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(HOST) {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "HTTP/1.1 requests need a Host header",
        ));
    }
    let normalized = path::normalize(req.uri().path())
        .map_err(|e| Error::new(ErrorKind::BadRequest, e.to_string()))?;
    let host = request_host(&req);
    let Some(route) = snapshot.router.route(host, &normalized) else {
        return Err(Error::new(
            ErrorKind::NoRoute,
            format!("no route for {}", normalized),
        ));
    };
    match &route.target {
        Outcome::Respond(synthetic) => Ok(synthetic.respond()),
        Outcome::Static(files) => Ok(files.serve(req).await),
        Outcome::Service {
            service,
            strip_prefix,
        } => {
            let forwarded = if *strip_prefix {
                strip(&normalized, &route.prefix)
            } else {
                normalized
            };
            let rewritten = rewrite_uri(req.uri(), &forwarded);
            if let Some(uri) = rewritten {
                *req.uri_mut() = uri;
            }
            service.forward(req, downstream).await
        }
    }
}

/// `/api/x` with prefix `/api` → `/x`; `/api` → `/`.
fn strip<'a>(path: &Cow<'a, str>, prefix: &str) -> Cow<'a, str> {
    match &path[prefix.len()..] {
        "" => Cow::Borrowed("/"),
        rest => Cow::Owned(rest.to_owned()),
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
