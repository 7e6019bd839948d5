//! Real upstream servers on loopback (TCP, TLS, Unix) and small helpers for the tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use snakeway_core::Body;
use snakeway_proxy::{
    CircuitBreakerOptions, Downstream, ProxyService, ServiceOptions, Strategy, Target, UpstreamSpec,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

/// A running upstream: where it listens, how many connections it accepted, what it saw.
pub struct Upstream {
    pub addr: Option<SocketAddr>,
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn target(&self) -> Target {
        Target::parse(&self.url).unwrap()
    }

    pub fn spec(&self, weight: u32) -> UpstreamSpec {
        UpstreamSpec {
            target: self.target(),
            weight,
        }
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wraps an async handler for the upstream builders.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A handler answering 200 with `body` and `x-upstream: body`.
pub fn named(body: &'static str) -> Handler {
    handler(move |_req| async move {
        Response::builder()
            .header("x-upstream", body)
            .body(Body::from(body))
            .unwrap()
    })
}

/// A plain HTTP upstream (HTTP/1.1 and prior-knowledge h2c) on 127.0.0.1.
pub async fn http(handler: Handler) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, seen) = counters();
    let task = tokio::spawn({
        let (connections, seen) = (connections.clone(), seen.clone());
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                serve(stream, handler.clone(), seen.clone());
            }
        }
    });
    Upstream {
        addr: Some(addr),
        url: format!("http://{addr}"),
        connections,
        seen,
        task,
    }
}

/// An HTTPS upstream for `localhost`, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
pub async fn https(handler: Handler, cert: &TestCert, alpn: &[&[u8]]) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config(alpn));
    let (connections, seen) = counters();
    let task = tokio::spawn({
        let (connections, seen) = (connections.clone(), seen.clone());
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler, seen) = (acceptor.clone(), handler.clone(), seen.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve(tls, handler, seen);
                    }
                });
            }
        }
    });
    Upstream {
        addr: Some(addr),
        url: format!("https://localhost:{}", addr.port()),
        connections,
        seen,
        task,
    }
}

/// A plain HTTP upstream on a Unix socket at `path`.
pub fn unix(handler: Handler, path: &Path) -> Upstream {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let (connections, seen) = counters();
    let task = tokio::spawn({
        let (connections, seen) = (connections.clone(), seen.clone());
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                serve(stream, handler.clone(), seen.clone());
            }
        }
    });
    Upstream {
        addr: None,
        url: format!("unix:{}", path.display()),
        connections,
        seen,
        task,
    }
}

fn counters() -> (Arc<AtomicUsize>, Arc<Mutex<Vec<Seen>>>) {
    (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    )
}

fn serve<IO>(io: IO, handler: Handler, seen: Arc<Mutex<Vec<Seen>>>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            seen.lock().unwrap().push(Seen {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
            });
            let response = handler(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service)
            .await;
    });
}

/// A free loopback port nobody listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A unique path for a Unix socket.
pub fn socket_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "snakeway-proxy-test-{}-{}-{name}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A self-signed certificate for `localhost` and 127.0.0.1, with its PEM written to a file.
pub struct TestCert {
    pub ca_file: PathBuf,
    cert: rustls_pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCert {
    pub fn new(name: &str) -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "snakeway-proxy-test-{}-{name}.pem",
            std::process::id()
        ));
        std::fs::write(&ca_file, certified.cert.pem()).unwrap();
        Self {
            ca_file,
            cert: certified.cert.der().clone(),
            key_der: certified.signing_key.serialize_der(),
        }
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// Options with short timeouts and the circuit breaker off (tests that want it turn it on).
pub fn options() -> ServiceOptions {
    ServiceOptions {
        strategy: Strategy::RoundRobin,
        http2: false,
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        max_response_header_bytes: 64 * 1024,
        circuit_breaker: CircuitBreakerOptions {
            enabled: false,
            ..Default::default()
        },
        health_check: None,
        retry: None,
        worker_pools: 0,
    }
}

pub fn service(upstreams: Vec<UpstreamSpec>, options: ServiceOptions) -> ProxyService {
    ProxyService::new("api", upstreams, options, None).unwrap()
}

pub fn downstream() -> Downstream {
    Downstream {
        peer: "198.51.100.7:40000".parse().unwrap(),
        tls: false,
        trusted: false,
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap()
}

/// Sends a GET through `svc` and returns status, headers and the whole body.
pub async fn fetch(
    svc: &ProxyService,
    path: &str,
) -> Result<(http::StatusCode, HeaderMap, Bytes), snakeway_core::Error> {
    use http_body_util::BodyExt;
    let response = svc.forward(get(path), &downstream()).await?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("the body arrives whole")
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// A body fed through a channel, so tests can stream at their own pace.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, Body::new(ChannelBody { rx }))
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
