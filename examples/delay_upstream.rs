//! A minimal HTTP/1.1 upstream that answers every request after a fixed delay: the stand-in
//! upstreams of `benches/balance`, where one of three answers 50 ms slower than the others.
//!
//! ```sh
//! cargo run --release --example delay_upstream -- 127.0.0.1:3001=0 127.0.0.1:3002=50
//! curl http://127.0.0.1:3002/     # "hello from 127.0.0.1:3002" after 50 ms
//! ```
//!
//! Each argument is `ADDR=DELAY_MS`; all listeners share one current-thread runtime, so the
//! process uses one core. Keep-alive, no request body is read beyond what hyper drains.
//! `GET /__counts` on any listener answers at once with one line per listener, `ADDR COUNT`:
//! the requests each has served (`/__counts` itself excluded), for the benchmark to tell how
//! a strategy spread them.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listeners = Vec::new();
    for arg in std::env::args().skip(1) {
        let (addr, delay) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected ADDR=DELAY_MS"))?;
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        let delay = Duration::from_millis(delay.parse().map_err(|e| format!("{delay:?}: {e}"))?);
        listeners.push((addr, delay));
    }
    if listeners.is_empty() {
        return Err("usage: delay_upstream ADDR=DELAY_MS...".into());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let counts: Counts = listeners
                .iter()
                .map(|&(addr, _)| (addr, AtomicU64::new(0)))
                .collect();
            let mut tasks = Vec::new();
            for (index, (addr, delay)) in listeners.into_iter().enumerate() {
                let listener = TcpListener::bind(addr).await?;
                tasks.push(tokio::spawn(serve(listener, index, delay, counts.clone())));
            }
            for task in tasks {
                task.await?;
            }
            Ok(())
        })
}

/// Every listener's address and the requests it has served.
type Counts = Arc<[(SocketAddr, AtomicU64)]>;

/// Accepts connections on `listener` (number `index` of `counts`) forever; each request is
/// answered after `delay`, but `/__counts`, answered at once.
async fn serve(listener: TcpListener, index: usize, delay: Duration, counts: Counts) {
    let body = Bytes::from(format!("hello from {}\n", counts[index].0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                let counts = counts.clone();
                async move {
                    if req.uri().path() == "/__counts" {
                        let mut text = String::new();
                        for (addr, n) in counts.iter() {
                            let _ = writeln!(text, "{addr} {}", n.load(Ordering::Relaxed));
                        }
                        return Ok(Response::new(Full::new(Bytes::from(text))));
                    }
                    counts[index].1.fetch_add(1, Ordering::Relaxed);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                }
            });
            // A client that goes away mid-request is no concern of a benchmark upstream.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
