//! In-process upstreams: hyper servers on 127.0.0.1:0 (HTTP/1.1 + h2c, h2c only, TLS, Unix
//! socket) with configurable handlers, and raw TCP upstreams for misbehaviour.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;

pub type UpBody = BoxBody<Bytes, std::io::Error>;
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFut<Response<UpBody>> + Send + Sync>;

/// A running upstream. Counts accepted connections and requests; stops accepting on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Auto,
    H2Only,
}

fn counting(
    handler: Handler,
    requests: Arc<AtomicUsize>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<UpBody>,
    Error = Infallible,
    Future = BoxFut<Result<Response<UpBody>, Infallible>>,
> + Clone {
    service_fn(move |req| {
        requests.fetch_add(1, Ordering::SeqCst);
        let fut = handler(req);
        Box::pin(async move { Ok::<_, Infallible>(fut.await) }) as BoxFut<_>
    })
}

async fn serve_tcp(
    handler: Handler,
    proto: Proto,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let svc = counting(handler.clone(), r.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            serve_conn(TokioIo::new(s), svc, proto).await;
                        }
                    }
                    None => serve_conn(TokioIo::new(stream), svc, proto).await,
                }
            });
        }
    });
    Upstream {
        addr,
        connections,
        requests,
        task,
    }
}

async fn serve_conn<I, S>(io: I, svc: S, proto: Proto)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<UpBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    match proto {
        Proto::Auto => {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        }
        Proto::H2Only => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        }
    }
}

/// HTTP/1.1 and h2c on 127.0.0.1:0.
pub async fn http(handler: Handler) -> Upstream {
    serve_tcp(handler, Proto::Auto, None).await
}

/// Prior-knowledge HTTP/2 only: an HTTP/1.1 request fails.
pub async fn h2c_only(handler: Handler) -> Upstream {
    serve_tcp(handler, Proto::H2Only, None).await
}

/// HTTPS (HTTP/1.1, ALPN h2 and http/1.1) with the given rustls server config.
pub async fn tls(handler: Handler, config: Arc<rustls::ServerConfig>) -> Upstream {
    serve_tcp(
        handler,
        Proto::Auto,
        Some(tokio_rustls::TlsAcceptor::from(config)),
    )
    .await
}

/// HTTP/1.1 on a Unix socket at `path`. Returns the request counter.
pub async fn unix(path: &Path, handler: Handler) -> (Arc<AtomicUsize>, JoinHandle<()>) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = counting(handler.clone(), r.clone());
            tokio::spawn(serve_conn(TokioIo::new(stream), svc, Proto::Auto));
        }
    });
    (requests, task)
}

/// A raw TCP upstream: `f` gets every accepted connection.
pub async fn raw<F>(f: F) -> Upstream
where
    F: Fn(TcpStream) -> BoxFut<()> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(stream));
        }
    });
    Upstream {
        addr,
        connections,
        requests,
        task,
    }
}

/// A loopback port nothing listens on (connections are refused).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// === handlers ===

pub fn full_body(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)) as BoxFut<_>)
}

/// Answers with JSON describing the request: `tag`, `method`, `uri`, `version`, `headers`
/// (a list of `[name, value]` in arrival order) and `body_len` (counted while streaming, never
/// buffered).
pub fn echo(tag: &'static str) -> Handler {
    handler(move |req: Request<Incoming>| async move {
        let (parts, mut body) = req.into_parts();
        let mut len: u64 = 0;
        let mut body_error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        len += d.len() as u64;
                    }
                }
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let json = serde_json::json!({
            "tag": tag,
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": len,
            "body_error": body_error,
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("x-upstream", tag)
            .body(full_body(json.to_string()))
            .unwrap()
    })
}

/// Answers `body` after `delay`.
pub fn slow(delay: Duration, body: &'static str) -> Handler {
    handler(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::builder().body(full_body(body)).unwrap()
    })
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A body of `total` zero bytes in 64 KiB chunks, generated as it is polled.
pub fn zeros_body(total: u64) -> UpBody {
    let chunk = ZEROS.len() as u64;
    let n = total.div_ceil(chunk);
    let s = stream::iter((0..n).map(move |i| {
        let len = chunk.min(total - i * chunk) as usize;
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&ZEROS[..len])))
    }));
    BodyExt::boxed(StreamBody::new(s))
}

/// Answers 200 with `total` generated bytes (content-length set).
pub fn download(total: u64) -> Handler {
    handler(move |_req| async move {
        Response::builder()
            .header("content-length", total.to_string())
            .body(zeros_body(total))
            .unwrap()
    })
}

/// JSON field helpers for echo responses.
pub fn echo_header(json: &serde_json::Value, name: &str) -> Option<String> {
    echo_headers(json, name).into_iter().next()
}

pub fn echo_headers(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .filter(|p| p[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect()
}

/// One request head as a [`recording`] upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The request target as received (path and query).
    pub uri: String,
    /// Header lines in arrival order, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Seen {
    /// Every value of `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The first value of `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name)
            .first()
            .map(|v| std::str::from_utf8(v).expect("UTF-8 header value"))
    }
}

/// The request heads a [`recording`] upstream saw, in arrival order.
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<Seen>>>);

impl Recorded {
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// How many recorded request heads satisfy `f`.
    pub fn count_where(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|s| f(s)).count()
    }

    /// The last request head, asserted present.
    pub fn last(&self) -> Seen {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// Wraps `inner`: records every request head (raw header values) before `inner` answers, and
/// appends `reply_headers` (raw values, repeated names allowed) to every answer.
pub fn recording(
    inner: Handler,
    reply_headers: &'static [(&'static str, &'static [u8])],
) -> (Handler, Recorded) {
    let recorded = Recorded::default();
    let log = recorded.clone();
    let handler = handler(move |req: Request<Incoming>| {
        log.0.lock().unwrap().push(Seen {
            method: req.method().as_str().to_owned(),
            uri: req.uri().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
        });
        let fut = inner(req);
        async move {
            let mut res = fut.await;
            for (name, value) in reply_headers {
                res.headers_mut().append(
                    *name,
                    http::HeaderValue::from_bytes(value).expect("valid header value"),
                );
            }
            res
        }
    });
    (handler, recorded)
}
