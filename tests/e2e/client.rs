//! Clients: hyper's connection API (HTTP/1.1 and prior-knowledge h2c), raw TCP for bytes no
//! well-behaved client sends, and `curl`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Default limit on any one network wait.
pub const T: Duration = Duration::from_secs(10);

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Every value of `name`, in order, as raw bytes.
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    }

    /// The request id the proxy returned, asserted present.
    pub fn request_id(&self) -> &str {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on {} response", self.status))
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Sends one request over a fresh HTTP/1.1 connection on `io` and collects the response.
pub async fn send_h1_on<S, B>(io: S, req: Request<B>) -> io::Result<Resp>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fut = async move {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(other)?;
        tokio::spawn(conn);
        let res = sender.send_request(req).await.map_err(other)?;
        collect(res).await
    };
    timeout(T, fut)
        .await
        .map_err(|_| timed_out("HTTP/1.1 exchange"))?
}

/// Sends one request over a fresh prior-knowledge HTTP/2 connection on `io`.
pub async fn send_h2_on<S, B>(io: S, req: Request<B>) -> io::Result<Resp>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fut = async move {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(other)?;
        tokio::spawn(conn);
        let res = sender.send_request(req).await.map_err(other)?;
        collect(res).await
    };
    timeout(T, fut)
        .await
        .map_err(|_| timed_out("HTTP/2 exchange"))?
}

async fn collect(res: http::Response<hyper::body::Incoming>) -> io::Result<Resp> {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(other)?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    timeout(T, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect"))?
}

/// One HTTP/1.1 request on a new connection.
pub async fn send_h1<B>(addr: SocketAddr, req: Request<B>) -> io::Result<Resp>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    send_h1_on(connect(addr).await?, req).await
}

/// One h2c (prior knowledge) request on a new connection.
pub async fn send_h2<B>(addr: SocketAddr, req: Request<B>) -> io::Result<Resp>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    send_h2_on(connect(addr).await?, req).await
}

/// A GET with a `host` header.
pub fn get_req(host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap()
}

/// GET `path` with `host: test.local` over HTTP/1.1; panics on transport errors.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    get_host(addr, "test.local", path).await
}

pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Resp {
    send_h1(addr, get_req(host, path))
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

pub fn full(body: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(body.into())
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct Raw {
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) within the wait.
    pub closed: bool,
    pub elapsed: Duration,
}

impl Raw {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn status(&self) -> Option<u16> {
        parse_response(&self.bytes).map(|r| r.status)
    }
}

/// Reads from `stream` until EOF/reset or until `wait` has passed.
pub async fn read_until_close(stream: &mut TcpStream, wait: Duration) -> Raw {
    let start = Instant::now();
    let deadline = start + wait;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        let now = Instant::now();
        if now >= deadline {
            break false;
        }
        match timeout(deadline - now, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
        }
    };
    Raw {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// Sends `request` verbatim on a new connection and reads until the server closes or `wait`
/// passes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> Raw {
    let mut stream = connect(addr).await.expect("connect");
    // The server may close before reading everything (it rejected the head): ignore write errors.
    let _ = stream.write_all(request).await;
    read_until_close(&mut stream, wait).await
}

/// A parsed HTTP/1.x response.
#[derive(Debug)]
pub struct Parsed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes consumed by this response.
    pub len: usize,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Parses one complete response from the start of `bytes` (content-length, chunked, or
/// to-EOF bodies). `None` if incomplete or not HTTP.
pub fn parse_response(bytes: &[u8]) -> Option<Parsed> {
    parse_response_to(bytes, false)
}

/// [`parse_response`] for the answer to a request whose method is HEAD (`head_request`): such a
/// response has no body whatever its `content-length` says.
pub fn parse_response_to(bytes: &[u8], head_request: bool) -> Option<Parsed> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let rest = &bytes[head_end..];
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let (body, used) = if no_body {
        (Vec::new(), 0)
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size_str = std::str::from_utf8(&rest[pos..line_end]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        (body, pos)
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().ok()?;
        if rest.len() < n {
            return None;
        }
        (rest[..n].to_vec(), n)
    } else {
        (rest.to_vec(), rest.len())
    };
    Some(Parsed {
        status,
        headers,
        body,
        len: head_end + used,
    })
}

/// Sends `request` (which should say `connection: close`) and parses the response.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Parsed {
    let r = raw(addr, request, T).await;
    parse_response_to(&r.bytes, request.starts_with(b"HEAD ")).unwrap_or_else(|| {
        panic!(
            "no complete response to {:?}: {:?}",
            String::from_utf8_lossy(request),
            r.text()
        )
    })
}

/// Reads one complete response from a kept-alive connection.
pub async fn read_one_response(stream: &mut TcpStream) -> Parsed {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let fut = async {
        loop {
            if let Some(p) = parse_response(&bytes) {
                // A response without framing headers only ends at EOF; we never ask for those here.
                return Some(p);
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return parse_response(&bytes),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    timeout(T, fut)
        .await
        .expect("response within 10 s")
        .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&bytes)))
}

/// Runs curl (asynchronously, so in-process upstreams keep running) and returns its output.
pub async fn curl(args: &[&str]) -> std::process::Output {
    let fut = tokio::process::Command::new("curl")
        .args(["--max-time", "20", "-sS"])
        .args(args)
        .kill_on_drop(true)
        .output();
    timeout(Duration::from_secs(30), fut)
        .await
        .expect("curl within 30 s")
        .expect("run curl")
}

/// Sends `req` over HTTP/1.1 from the local address `from` (any 127.0.0.0/8 address works on
/// Linux loopback), as a client behind a proxy at that address would.
pub async fn send_from(from: &str, to: SocketAddr, req: Request<Empty<Bytes>>) -> Resp {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = timeout(T, socket.connect(to))
        .await
        .expect("connect within 10 s")
        .unwrap_or_else(|e| panic!("connect from {from} to {to}: {e}"));
    assert_eq!(stream.local_addr().unwrap().ip().to_string(), from);
    send_h1_on(stream, req)
        .await
        .unwrap_or_else(|e| panic!("request from {from}: {e}"))
}
