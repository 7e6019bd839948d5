//! WebSocket upgrades: the handshake forwarded over a dedicated upstream connection, and the
//! tunnel that carries the bytes both ways once the upstream has answered `101`.
//!
//! Only HTTP/1.1 upgrades are proxied (HTTP/2's extended CONNECT, RFC 8441, is not). The
//! caller decides which requests may upgrade (a route option) and runs the [`Tunnel`] where it
//! can account for it (a connection slot, shutdown); see [`ProxyService::forward_upgrade`].

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, HeaderName, HeaderValue, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use snakeway_core::{Body, Error, ErrorKind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::Downstream;
use crate::headers::{Direction, remove_hop_by_hop};
use crate::service::{Blame, Inner, PoolBody, PoolClient, ProxyService};

/// Bytes buffered per direction of a tunnel: what is read from one side and not yet written to
/// the other. Reading stops while it is full, so a slow reader slows the writer down.
const TUNNEL_BUF: usize = 16 * 1024;

static UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");

/// Whether `req` is a WebSocket handshake this proxy forwards as an upgrade: an HTTP/1.1 `GET`
/// whose `connection` lists `upgrade` and whose `upgrade` lists `websocket` (RFC 6455 §4.1,
/// tokens compared without regard to case).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && lists(req.headers(), &CONNECTION, "upgrade")
        && lists(req.headers(), &UPGRADE, "websocket")
}

/// Whether a comma-separated list header `name` has `token` (a protocol in `upgrade` may carry
/// a `/version`, which is ignored).
fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|item| {
                let item = item.trim();
                let protocol = item.split_once('/').map_or(item, |(p, _)| p);
                protocol.trim().eq_ignore_ascii_case(token)
            })
        })
    })
}

/// The two sides of an upgraded exchange, waiting to be joined by [`Tunnel::run`].
///
/// It holds the upstream's in-flight count (for `least_requests`) until it is dropped.
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    _blame: Blame,
}

/// How a [`Tunnel`] ended without error: the bytes it carried each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Bytes from the client to the upstream.
    pub sent: u64,
    /// Bytes from the upstream to the client.
    pub received: u64,
}

/// Why a [`Tunnel`] ended early.
#[derive(Debug)]
#[non_exhaustive]
pub enum TunnelError {
    /// No byte went either way for the idle timeout.
    Idle(Duration),
    /// One side's upgrade did not complete (e.g. the `101` never reached the client).
    Upgrade(hyper::Error),
    /// Reading or writing one side failed.
    Io(io::Error),
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle(idle) => write!(f, "idle for {} ms", idle.as_millis()),
            Self::Upgrade(_) => f.write_str("the upgrade did not complete"),
            Self::Io(_) => f.write_str("the tunnel broke"),
        }
    }
}

impl StdError for TunnelError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Idle(_) => None,
            Self::Upgrade(e) => Some(e),
            Self::Io(e) => Some(e),
        }
    }
}

// === impl Tunnel ===

impl Tunnel {
    /// Waits for both sides to switch protocols, then copies bytes both ways until both have
    /// closed, or until no byte has moved either way for `idle`.
    ///
    /// Each direction has one bounded buffer and writes before it reads again (backpressure).
    /// When one side closes its sending half, the other side's sending half is shut down and
    /// the opposite direction goes on (half-close). Dropping the future closes both.
    pub async fn run(self, idle: Duration) -> Result<TunnelStats, TunnelError> {
        let clock = Clock::new();
        let sides = async {
            let client = self.client.await?;
            let upstream = self.upstream.await?;
            Ok::<_, hyper::Error>((client, upstream))
        };
        let (client, upstream) = match tokio::time::timeout(idle, sides).await {
            Ok(sides) => sides.map_err(TunnelError::Upgrade)?,
            Err(_) => return Err(TunnelError::Idle(idle)),
        };
        let mut client = Touch::new(client, &clock);
        let mut upstream = Touch::new(upstream, &clock);
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            TUNNEL_BUF,
            TUNNEL_BUF,
        );
        tokio::pin!(copy);
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                result = &mut copy => {
                    let (sent, received) = result.map_err(TunnelError::Io)?;
                    return Ok(TunnelStats { sent, received });
                }
                () = &mut sleep => {
                    let deadline = clock.last() + idle;
                    if deadline <= Instant::now() {
                        return Err(TunnelError::Idle(idle));
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

/// When a tunnel last moved a byte, in milliseconds since it started.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    #[inline]
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One upgraded side of a tunnel that notes on its [`Clock`] every read or write that moved
/// bytes.
struct Touch<'a> {
    io: TokioIo<Upgraded>,
    clock: &'a Clock,
}

impl<'a> Touch<'a> {
    fn new(io: Upgraded, clock: &'a Clock) -> Self {
        Self {
            io: TokioIo::new(io),
            clock,
        }
    }
}

impl AsyncRead for Touch<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl AsyncWrite for Touch<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A `101` from an upstream that was not asked to switch protocols (or switched to something
/// else than it was asked): its connection is dropped and the client gets a 502.
#[derive(Debug, thiserror::Error)]
#[error("the upstream switched protocols unasked")]
pub(crate) struct UnaskedSwitch;

// === impl ProxyService ===

impl ProxyService {
    /// Forwards a WebSocket handshake (see [`is_websocket_upgrade`]) and, when the upstream
    /// accepts it with `101 Switching Protocols`, returns that response together with the
    /// [`Tunnel`] the caller must run to carry the connection on.
    ///
    /// The request is prepared as by [`ProxyService::forward`] (forwarding headers, hop-by-hop
    /// headers removed), then `connection: upgrade`, its `upgrade` and its `sec-websocket-*`
    /// headers are put back. It goes over a new upstream connection of its own, never a pooled
    /// one; `response_timeout` bounds the handshake. Any answer other than `101` is passed on as
    /// a plain response (no tunnel); a `101` that does not switch to `websocket` is a 502.
    ///
    /// The client's side of the upgrade is taken from the request's extensions (hyper puts it
    /// there when the connection allows upgrades); without it the request is forwarded as a
    /// plain one, its `upgrade` removed. A service that speaks HTTP/2 to its upstreams
    /// (`http2`) cannot carry an HTTP/1.1 upgrade: a 502.
    pub async fn forward_upgrade(
        &self,
        mut req: Request<Body>,
        downstream: &Downstream,
    ) -> Result<(Response<Body>, Option<Tunnel>), Error> {
        let Some(client) = req.extensions_mut().remove::<OnUpgrade>() else {
            return self.forward(req, downstream).await.map(|r| (r, None));
        };
        let inner = &*self.inner;
        // What `prepare` removes as hop-by-hop and the handshake needs end to end.
        let kept: Vec<(HeaderName, HeaderValue)> = req
            .headers()
            .iter()
            .filter(|(name, _)| name == &UPGRADE || name.as_str().starts_with("sec-websocket-"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();

        let key = inner.sticky_hash(&req, downstream);
        let Some((index, permit)) = inner.pick(key, 0) else {
            return Err(inner.no_healthy_upstream());
        };
        let upstream = &inner.upstreams[index];
        let PoolClient::Http1(pool) = upstream.pool.client() else {
            // The permit is released unsettled: the upstream was not asked.
            return Err(Error::new(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "service \"{}\": http2 upstreams cannot carry a WebSocket upgrade",
                    inner.name
                ),
            ));
        };
        let mut req = inner.prepare(upstream, req, downstream)?;
        let headers = req.headers_mut();
        // Put back as they came, whether `prepare` removed them or not (never twice).
        for (name, _) in &kept {
            headers.remove(name);
        }
        for (name, value) in kept {
            headers.append(name, value);
        }
        headers.insert(CONNECTION, UPGRADE_VALUE.clone());

        upstream.health.requests.fetch_add(1, Ordering::Relaxed);
        let blame = Blame::enter(self.inner.clone(), index);
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(inner.response_timeout, pool.upgrade(req)).await;
        let mut response = match sent {
            Ok(Ok(response)) => {
                inner.record_head(upstream, response.status(), started.elapsed());
                response
            }
            Ok(Err(error)) => return Err(inner.send_failed(upstream, permit, error, None)),
            Err(_) => {
                inner.response_timed_out(upstream, permit);
                return Err(Error::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "service \"{}\": upstream {} did not answer the WebSocket handshake \
                         within {} ms",
                        inner.name,
                        upstream.short_name,
                        inner.response_timeout.as_millis()
                    ),
                ));
            }
        };

        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            inner.settle_status(upstream, permit, response.status());
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers, Direction::Response);
            parts.version = Version::HTTP_11;
            // Not pooled: the body closes its connection at its end.
            let body = self.response_body(PoolBody::Http2(body), blame);
            return Ok((Response::from_parts(parts, body), None));
        }

        if !lists(response.headers(), &UPGRADE, "websocket") {
            Inner::failed(upstream, permit);
            return Err(Error::new(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "service \"{}\": upstream {} switched to another protocol than websocket",
                    inner.name, upstream.short_name
                ),
            )
            .with_source(UnaskedSwitch));
        }
        permit.success();
        let upstream_io = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let protocol = parts.headers.get(UPGRADE).cloned();
        remove_hop_by_hop(&mut parts.headers, Direction::Response);
        if let Some(protocol) = protocol {
            parts.headers.insert(UPGRADE, protocol);
        }
        parts.headers.insert(CONNECTION, UPGRADE_VALUE.clone());
        parts.version = Version::HTTP_11;
        let tunnel = Tunnel {
            client,
            upstream: upstream_io,
            _blame: blame,
        };
        Ok((Response::from_parts(parts, Body::empty()), Some(tunnel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).version(version).uri("/");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn recognizes_websocket_handshakes() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            &ws
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::POST,
            Version::HTTP_11,
            &ws
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_10,
            &ws
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_2,
            &ws
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "websocket")]
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "h2c")]
        )));
        assert!(is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "h2c, websocket/13")]
        )));
    }

    #[tokio::test]
    async fn the_idle_clock_moves_with_bytes() {
        let clock = Clock::new();
        let first = clock.last();
        tokio::time::sleep(Duration::from_millis(20)).await;
        clock.touch();
        assert!(clock.last() >= first + Duration::from_millis(20));
    }
}
