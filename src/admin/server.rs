//! The admin listener's accept loop and connections: hyper HTTP/1.1 with small limits.

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{Ctx, HEADER_READ_TIMEOUT, MAX_CONNECTION_LIFE, MAX_CONNECTIONS, MAX_HEAD_BYTES};

/// Accepts admin connections until aborted, at most [`MAX_CONNECTIONS`] at once.
pub(super) async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| super::routes::handle(req, ctx.clone()));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFE, conn).await;
            drop(slot);
        });
    }
}
