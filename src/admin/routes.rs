//! Request dispatch of the admin API: authentication, then one handler per path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::Ctx;

/// The longest a `POST /admin/reload` waits for the reload to finish (WASM compiles included).
const RELOAD_WAIT: Duration = Duration::from_secs(100);

/// Answers one admin request.
pub(super) async fn handle(
    req: Request<Incoming>,
    ctx: Arc<Ctx>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // The token of the running configuration: a reload that changes it applies at once.
    let authorized = match &ctx.state.snapshot.load().config.admin {
        Some(admin) => admin
            .token
            .as_deref()
            .is_none_or(|token| super::auth::authorized(req.headers(), token)),
        // `[admin]` was removed: a connection accepted before is refused everything.
        None => false,
    };
    if !authorized {
        let mut res = text(StatusCode::UNAUTHORIZED, "401 unauthorized\n");
        res.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"snakeway\""),
        );
        return Ok(res);
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    // Loaded per endpoint, not held across the reload's await.
    let snapshot = || ctx.state.snapshot.load_full();
    let res = match req.uri().path() {
        "/admin/health" if get => json(StatusCode::OK, &super::views::health(&ctx.state)),
        "/admin/upstreams" if get => json(StatusCode::OK, &super::views::upstreams(&snapshot())),
        "/admin/stats" if get => json(StatusCode::OK, &super::views::stats(&snapshot())),
        "/admin/config" if get => json(StatusCode::OK, &super::views::config(&snapshot().config)),
        "/metrics" if get => {
            let accept = req.headers().get(ACCEPT).map(HeaderValue::as_bytes);
            let (body, content_type) = crate::telemetry::scrape(&ctx.state, accept);
            let mut res = text(StatusCode::OK, body);
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            res
        }
        "/admin/reload" if req.method() == Method::POST => reload(&ctx).await,
        "/admin/health" | "/admin/upstreams" | "/admin/stats" | "/admin/config" | "/metrics" => {
            not_allowed("GET, HEAD")
        }
        "/admin/reload" => not_allowed("POST"),
        _ => text(StatusCode::NOT_FOUND, "404 not found\n"),
    };
    Ok(res)
}

/// Runs a reload through the serve loop (the same path as SIGHUP) and reports its outcome.
async fn reload(ctx: &Ctx) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    if ctx.reload.try_send(Some(tx)).is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 too many reloads queued (or shutting down)\n",
        );
    }
    match tokio::time::timeout(RELOAD_WAIT, rx).await {
        Ok(Ok(Ok(epoch))) => json(StatusCode::OK, &serde_json::json!({ "epoch": epoch })),
        Ok(Ok(Err(report))) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &super::views::report(&report),
        ),
        // The serve loop dropped the request: shutdown began.
        Ok(Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "503 shutting down\n"),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "504 the reload is still running; see the server log\n",
        ),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    res
}
