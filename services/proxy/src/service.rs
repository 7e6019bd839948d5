//! [`ProxyService`]: one configured service, its upstreams, their pools and circuit breakers.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use snakeway_core::{Body, BoxError, ClientAddr, ClientBodyTimeout, Error, ErrorKind, cause_ref};

use crate::body::{Progress, SendBody, Sending, UpstreamBody, UpstreamBodyTimeout};

use crate::balance::{Balancer, Strategy};
use crate::breaker::{Admission, Breaker, CircuitBreakerOptions, CircuitState, Permit};
use crate::connector::{ConnectError, Connector};
use crate::h1pool::{Checkin, H1Pool, SendError};
use crate::headers::{Direction, remove_hop_by_hop, set_forwarded};
use crate::health_check::{
    HealthCheckOptions, HealthChecker, ProbeHealth, ProbeTarget, ServiceHealth,
};
use crate::recorded::{self, Outcome, ServiceRecorders, UpstreamRecorders};
use crate::retry::{Budget, ReadError, Replay, RetryOn, RetryPolicy};
use crate::sticky::StickyKey;
use crate::target::Target;
use crate::tls::{self, TlsConfigError};
use crate::upgrade::UnaskedSwitch;

/// One upstream of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// Where it lives.
    pub target: Target,
    /// Its share of requests under [`Strategy::RoundRobin`] and [`Strategy::Random`], and its
    /// capacity under [`Strategy::LeastRequests`] (at least 1).
    pub weight: u32,
}

/// How a service talks to its upstreams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOptions {
    /// How requests are spread over the upstreams.
    pub strategy: Strategy,
    /// Prior-knowledge HTTP/2 (h2c) to `http` and `unix` upstreams; `https` upstreams then offer
    /// `h2` and `http/1.1` by ALPN (otherwise `http/1.1` only).
    pub http2: bool,
    /// PEM file of the certificates trusted for `https` upstreams; `None`: the system store.
    pub ca_file: Option<PathBuf>,
    /// Limit on connecting, TLS handshake included.
    pub connect_timeout: Duration,
    /// Limit on getting response headers once the whole request has been sent (without a
    /// request body: from the start, connecting included) → 504.
    pub response_timeout: Duration,
    /// Longest gap between two reads of an upstream response body; past it the client's
    /// response is aborted and the upstream's circuit counts a failure.
    pub read_timeout: Duration,
    /// Largest upstream response head accepted, in bytes; a larger one is a 502.
    pub max_response_header_bytes: usize,
    /// The circuit breaker of each upstream.
    pub circuit_breaker: CircuitBreakerOptions,
    /// Active health checks; `None`: upstreams are never probed (and always count as healthy).
    pub health_check: Option<HealthCheckOptions>,
    /// Explicit retries; `None`: a failed request is never sent again.
    pub retry: Option<RetryPolicy>,
    /// Connection pools per upstream for that many workers (see [`crate::worker`]), besides
    /// the shared one; 0 (the default): one pool shared by every thread.
    pub worker_pools: usize,
}

impl Default for ServiceOptions {
    /// The defaults of the design contract: round robin, HTTP/1.1, system roots, 2 s to connect,
    /// 30 s to respond, 60 s between body reads, 64 KiB response heads, default circuit breaker,
    /// no health checks, no retries.
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            http2: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_response_header_bytes: 64 * 1024,
            circuit_breaker: CircuitBreakerOptions::default(),
            health_check: None,
            retry: None,
            worker_pools: 0,
        }
    }
}

/// Fields an HTTP/1 response's header map keeps room for, beyond those it holds, when it
/// reaches the client: the `x-request-id`, a route's `response_headers`, device fields such as
/// `RateLimit`.
///
/// Between HTTP/1 connections hyper recycles header maps: the map of a head it wrote parses
/// the next head read on that connection, so the same few maps go round between the server
/// connections and the upstream connections serving them. A map grows only as far as the
/// fields it held (8 slots for 6 fields), and then every insert probes a long cluster. Asked
/// for this room, each map grows once (to 32 slots for a dozen fields or fewer) and stays
/// about a quarter full; inserts and lookups then probe one or two slots (measured in
/// `docs/benchmarks.md` § Header map headroom). Only when both sides speak HTTP/1: an HTTP/2
/// map is new for every message, and would grow on every response.
const HEADROOM: usize = 12;

/// What the proxy needs to know about the downstream connection.
///
/// [`ProxyService::forward`] takes it as an argument; the [`tower::Service`] impl reads it from
/// the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downstream {
    /// The client's address; its IP is appended to `x-forwarded-for`.
    pub peer: SocketAddr,
    /// Whether the client connection is TLS (`x-forwarded-proto: https`).
    pub tls: bool,
    /// Whether the peer is a trusted proxy (see [`TrustedProxies`](snakeway_core::TrustedProxies)):
    /// its `x-forwarded-*`, `forwarded` and `x-real-ip` are kept and `x-forwarded-for` is
    /// appended to; from any other peer they are replaced.
    pub trusted: bool,
}

/// Why a [`ProxyService`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The service lists no upstream.
    #[error("service {service:?} has no upstream")]
    NoUpstreams {
        /// The service name.
        service: String,
    },
    /// An upstream has weight 0.
    #[error("service {service:?}: upstream {target} has weight 0 (the minimum is 1)")]
    ZeroWeight {
        /// The service name.
        service: String,
        /// The upstream.
        target: String,
    },
    /// The TLS client configuration could not be built.
    #[error("service {service:?}: {source}")]
    Tls {
        /// The service name.
        service: String,
        /// What went wrong.
        #[source]
        source: TlsConfigError,
    },
}

/// A read-only view of one upstream, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The upstream URL (`http://127.0.0.1:3001`, `unix:/run/app.sock`).
    pub target: String,
    /// Its configured weight.
    pub weight: u32,
    /// Its circuit.
    pub state: CircuitState,
    /// The verdict of its active health checks (always `true` when the service has none). An
    /// unhealthy upstream gets no traffic unless every upstream of the service is unhealthy.
    pub healthy: bool,
    /// Requests sent to it (since it was first configured; reloads keep the count).
    pub requests: u64,
    /// Failed requests: connect errors, timeouts, and 5xx responses when those are counted.
    pub failures: u64,
    /// Requests sent and not yet finished (up to the end of the response body).
    pub in_flight: usize,
    /// Idle pooled connections; `None` for HTTP/2 upstreams (one multiplexed connection,
    /// pooled by hyper-util, which does not report it).
    pub idle_connections: Option<usize>,
    /// Busy connections (carrying a request, or a WebSocket tunnel): the open ones less the
    /// idle ones; `None` for HTTP/2 upstreams. An idle connection the upstream has closed
    /// counts as idle until it is next taken, so this may read low by those.
    pub active_connections: Option<usize>,
}

/// The upstream outcome of a route: picks an upstream, forwards the request over a pooled
/// connection and streams both bodies.
///
/// Cloning is cheap (one `Arc`). Built once per config snapshot; see [`ProxyService::new`] for
/// how pools survive a reload.
#[derive(Clone)]
pub struct ProxyService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: Box<str>,
    pub(crate) upstreams: Box<[Upstream]>,
    balancer: Balancer,
    /// What `sticky_hash` hashes.
    sticky: Option<StickyKey>,
    pub(crate) response_timeout: Duration,
    read_timeout: Duration,
    pub(crate) breaker: CircuitBreakerOptions,
    /// The probe verdicts, when the service has active health checks.
    health_check: Option<Arc<ServiceHealth>>,
    retry: Option<RetryPolicy>,
    /// Requests and retries in flight, counted only under a retry policy; shared with the
    /// snapshot this one replaced.
    budget: Arc<Budget>,
    /// Response times, connect errors and timeouts.
    pub(crate) recorders: ServiceRecorders,
}

pub(crate) struct Upstream {
    target: Target,
    /// `target` as written (`http://host:port`, `unix:/path`): its name in the admin API, the
    /// metrics and the hash ring.
    url: Box<str>,
    weight: u32,
    /// `host:port` or `unix:/path`, for messages.
    pub(crate) short_name: Box<str>,
    scheme: Scheme,
    authority: Authority,
    /// `host` for the rare request that has none (HTTP/1.0 without `Host`).
    default_host: Option<HeaderValue>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) health: Arc<Health>,
    /// Its probe verdict: carried over while the target is unchanged and the service keeps
    /// its health checks; fresh (healthy) otherwise.
    probe: Arc<ProbeHealth>,
    /// Tries by outcome.
    pub(crate) recorders: UpstreamRecorders,
}

/// The connection pools of one upstream (the shared one, then one per worker) and the options
/// they were built with; carried over to the next snapshot when those options are unchanged.
pub(crate) struct Pool {
    /// `[0]` is shared; `[1 + i]` belongs to worker `i` (see [`crate::worker`]).
    clients: Box<[PoolClient]>,
    options: ConnOptions,
    /// Also dials the health probes.
    connector: Connector,
}

/// How requests reach one upstream (from one worker, or from any thread).
pub(crate) enum PoolClient {
    /// HTTP/1.1: our own lock-free pool of connections.
    Http1(Arc<H1Pool>),
    /// HTTP/2 (prior knowledge or ALPN): hyper-util's client, which multiplexes one connection.
    Http2(Box<Client<Connector, Body>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ConnOptions {
    target: Target,
    http2: bool,
    connect_timeout: Duration,
    /// Only for `https` targets: a changed `ca_file` does not matter to the others.
    ca_file: Option<PathBuf>,
    max_response_header_bytes: usize,
    /// Per-worker pools besides the shared one.
    worker_pools: usize,
}

/// Circuit breaker and counters of one upstream; carried over to the next snapshot whenever
/// the target is unchanged.
pub(crate) struct Health {
    pub(crate) breaker: Breaker,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Requests sent and not yet finished: up to the end (or drop) of the response body, as
    /// Envoy counts them. Read by [`Strategy::LeastRequests`]; shared across reloads, so a
    /// request that outlives its snapshot still counts where the next one looks.
    pub(crate) in_flight: AtomicUsize,
}

// === impl ProxyService ===

impl ProxyService {
    /// Builds the service `name` over `upstreams`.
    ///
    /// `previous` is the same-named service of the snapshot being replaced, if any. Each new
    /// upstream whose target was already there keeps its circuit breaker and counters; when its
    /// connection options (`http2`, `connect_timeout`, and `ca_file` for `https`) are unchanged
    /// too, it keeps its connection pool, so a reload does not drop idle keep-alive connections.
    pub fn new(
        name: &str,
        upstreams: Vec<UpstreamSpec>,
        options: ServiceOptions,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        if upstreams.is_empty() {
            return Err(BuildError::NoUpstreams {
                service: name.to_owned(),
            });
        }
        if let Some(spec) = upstreams.iter().find(|u| u.weight == 0) {
            return Err(BuildError::ZeroWeight {
                service: name.to_owned(),
                target: spec.target.to_string(),
            });
        }

        let old: &[Upstream] = previous.map_or(&[], |p| &p.inner.upstreams);
        let keep_probes = options.health_check.is_some()
            && previous.is_some_and(|p| p.inner.health_check.is_some());
        let mut taken = vec![false; old.len()];
        let mut tls: Option<Arc<ClientConfig>> = None;
        let mut built = Vec::with_capacity(upstreams.len());
        for spec in upstreams {
            let UpstreamSpec { target, weight } = spec;
            let conn = ConnOptions {
                target: target.clone(),
                http2: options.http2,
                connect_timeout: options.connect_timeout,
                ca_file: if target.is_tls() {
                    options.ca_file.clone()
                } else {
                    None
                },
                max_response_header_bytes: options.max_response_header_bytes,
                worker_pools: options.worker_pools,
            };
            // The first old upstream with this target, preferring one whose pool fits as is.
            let same_target = |(i, u): &(usize, &Upstream)| !taken[*i] && u.target == target;
            let reused = old
                .iter()
                .enumerate()
                .filter(same_target)
                .find(|(_, u)| u.pool.options == conn)
                .or_else(|| old.iter().enumerate().find(same_target));
            if let Some((i, _)) = reused {
                taken[i] = true;
            }
            let reused = reused.map(|(_, u)| u);

            let pool = match reused {
                Some(u) if u.pool.options == conn => u.pool.clone(),
                _ => Arc::new(Pool::new(conn, &mut tls, &options).map_err(|source| {
                    BuildError::Tls {
                        service: name.to_owned(),
                        source,
                    }
                })?),
            };
            let health = match reused {
                Some(u) => u.health.clone(),
                None => Arc::new(Health {
                    breaker: Breaker::new(name, &target.to_string()),
                    requests: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                }),
            };
            let probe = match reused {
                Some(u) if keep_probes => u.probe.clone(),
                _ => Arc::new(ProbeHealth::new()),
            };
            let authority = target.uri_authority().clone();
            let url = target.to_string().into_boxed_str();
            built.push(Upstream {
                recorders: UpstreamRecorders::new(name, &url),
                url,
                short_name: target.short_name().into_boxed_str(),
                scheme: target.scheme(),
                default_host: HeaderValue::from_str(authority.as_str()).ok(),
                authority,
                target,
                weight,
                pool,
                health,
                probe,
            });
        }

        let weights: Vec<u32> = built.iter().map(|u| u.weight).collect();
        let health_check = options.health_check.map(|checks| {
            let probes = built.iter().map(|u| u.probe.clone()).collect();
            let previous = previous.and_then(|p| p.inner.health_check.as_deref());
            Arc::new(ServiceHealth::new(checks, probes, previous))
        });
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                balancer: Balancer::new(&options.strategy, built.iter().map(|u| &*u.url), &weights),
                sticky: options.strategy.sticky_key().cloned(),
                upstreams: built.into_boxed_slice(),
                response_timeout: options.response_timeout,
                read_timeout: options.read_timeout,
                breaker: options.circuit_breaker,
                health_check,
                retry: options.retry,
                budget: previous.map_or_else(Arc::default, |p| p.inner.budget.clone()),
                recorders: ServiceRecorders::new(name),
            }),
        })
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A snapshot of every upstream, in configured order.
    pub fn upstreams(&self) -> impl Iterator<Item = UpstreamStatus> + '_ {
        self.inner.upstreams.iter().map(|u| UpstreamStatus {
            target: u.url.to_string(),
            weight: u.weight,
            state: u.health.breaker.state(&self.inner.breaker),
            healthy: u.probe.is_healthy(),
            requests: u.health.requests.load(Ordering::Relaxed),
            failures: u.health.failures.load(Ordering::Relaxed),
            in_flight: u.health.in_flight.load(Ordering::Relaxed),
            idle_connections: u.pool.idle_connections(),
            active_connections: u.pool.active_connections(),
        })
    }

    /// Starts probing this service's upstreams, if it has active health checks: one task on
    /// the current tokio runtime, stopped when the returned checker is dropped. Start it when
    /// the snapshot holding this service is installed, and drop it when that snapshot is
    /// replaced (the next checker carries on from the verdicts reached).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start_health_checks(&self) -> Option<HealthChecker> {
        let health = self.inner.health_check.clone()?;
        let targets = self
            .inner
            .upstreams
            .iter()
            .map(|u| ProbeTarget {
                name: u.url.clone(),
                connector: u.pool.connector.clone(),
                scheme: u.scheme.clone(),
                authority: u.authority.clone(),
                http2: u.pool.options.http2,
            })
            .collect();
        Some(HealthChecker::spawn(
            self.inner.name.clone(),
            health,
            targets,
        ))
    }

    /// Forwards `req` to one upstream and returns its response, whose body streams from the
    /// upstream connection.
    ///
    /// The request is expected to be validated and routed already (framing checked, path
    /// normalized, prefix stripped, `x-request-id` set). Its path and query are kept; scheme and
    /// authority become the upstream's. Hop-by-hop headers are removed both ways and the
    /// `x-forwarded-*` headers are set; `host` passes unchanged.
    ///
    /// Upstreams that failed their health checks are skipped, unless all have (panic mode).
    ///
    /// Tried once, unless [`ServiceOptions::retry`] sets a [`RetryPolicy`]: then a request it
    /// lets be sent again (idempotent, body empty or declaring at most 64 KiB, read into memory
    /// first) is tried again after an outcome it lists, within its attempts and the service's
    /// retry budget, and the caller gets the last try's outcome.
    ///
    /// Errors: [`ErrorKind::NoHealthyUpstream`] when every circuit is open,
    /// [`ErrorKind::UpstreamTimeout`] when connecting or the response headers take too long
    /// (see [`ServiceOptions::response_timeout`]), [`ErrorKind::UpstreamUnavailable`] when the
    /// connection fails, the upstream hangs up or its response head is invalid or too large,
    /// and [`ErrorKind::RequestTimeout`] when the client's request body stalls
    /// ([`ClientBodyTimeout`], not counted against the upstream). An upstream failing after
    /// the headers surfaces as an error from the response body ([`UpstreamBodyTimeout`] when
    /// it stalls for [`ServiceOptions::read_timeout`]).
    ///
    /// While the upstream waits on the client's request body, `response_timeout` is paused (the
    /// stall is the client's, not the upstream's), so the caller must bound the client's body
    /// itself: give a request read from a socket a body made by
    /// [`Body::incoming_with_timeout`](snakeway_core::Body::incoming_with_timeout), as
    /// `snakeway serve` does with the listener's `body_read_timeout_ms`.
    pub async fn forward(
        &self,
        req: Request<Body>,
        downstream: &Downstream,
    ) -> Result<Response<Body>, Error> {
        let inner = &*self.inner;
        // One try, in line: every nested future would be copied into this one's state.
        let _request = match &inner.retry {
            Some(policy) => {
                let request = inner.budget.request();
                if policy.may_retry(&req) {
                    // Boxed: only a request that may be sent again carries the retry loop's
                    // state.
                    return Box::pin(self.forward_retrying(req, downstream, policy)).await;
                }
                Some(request)
            }
            None => None,
        };
        let key = inner.sticky_hash(&req, downstream);
        let Some(picked) = inner.pick(key, 0) else {
            return Err(inner.no_healthy_upstream());
        };
        self.attempt(picked, req, downstream, 1).await.result
    }

    /// [`ProxyService::forward`] for a request that `policy` lets be sent again: its body is
    /// read into memory first, then a try whose outcome `policy` retries is followed by another
    /// (to an upstream not tried yet when one admits it) while attempts remain, the retry
    /// budget allows and some upstream admits it. The client gets the last try's outcome.
    async fn forward_retrying(
        &self,
        req: Request<Body>,
        downstream: &Downstream,
        policy: &RetryPolicy,
    ) -> Result<Response<Body>, Error> {
        let inner = &*self.inner;
        let key = inner.sticky_hash(&req, downstream);
        let (head, body) = req.into_parts();
        let replay = Replay::read(body)
            .await
            .map_err(|e| inner.replay_error(e))?;
        let mut picked = inner
            .pick(key, 0)
            .ok_or_else(|| inner.no_healthy_upstream())?;
        let mut tried = 0u64;
        let mut attempt = 1;
        // The slot of the retry under way in the budget.
        let mut retrying = None;
        loop {
            let index = picked.0;
            let req = copy_request(&head, replay.body());
            let Try { result, cause } = self.attempt(picked, req, downstream, attempt).await;
            let Some(cause) = cause.filter(|cause| policy.retries_on(*cause)) else {
                return result;
            };
            if attempt >= policy.attempts() {
                return result;
            }
            let upstream = &inner.upstreams[index].short_name;
            drop(retrying.take());
            let Some(slot) = inner.budget.try_retry(policy.budget_percent()) else {
                tracing::debug!(
                    service = %inner.name,
                    %upstream,
                    attempt,
                    cause = cause.as_str(),
                    "retry budget exhausted; not retried"
                );
                return result;
            };
            if index < 64 {
                tried |= 1 << index;
            }
            // Every circuit refuses now: the outcome at hand stands.
            let Some(next) = inner.pick(key, tried) else {
                return result;
            };
            retrying = Some(slot);
            attempt += 1;
            tracing::info!(
                service = %inner.name,
                %upstream,
                next = %inner.upstreams[next.0].short_name,
                attempt,
                cause = cause.as_str(),
                "retrying the request"
            );
            // A retried response's body is dropped unread (its connection is not reused).
            drop(result);
            picked = next;
        }
    }

    /// One try (number `attempt`, from 1) on the `picked` upstream (admitted by its circuit):
    /// rewrites `req` for it, sends it and waits for the response head. Settles the upstream's
    /// circuit and counters, and says which [`RetryOn`] the outcome meets, if any. Logs the
    /// outcome at debug (nothing is formatted or copied when debug is off).
    async fn attempt(
        &self,
        picked: (usize, Permit<'_>),
        req: Request<Body>,
        downstream: &Downstream,
        attempt: u32,
    ) -> Try {
        let inner = &*self.inner;
        let (index, permit) = picked;
        let upstream = &inner.upstreams[index];
        let request_id = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| req.headers().get(&snakeway_core::request_id::X_REQUEST_ID))
            .flatten()
            .cloned();
        // hyper recycles the header maps of an HTTP/1 exchange on both sides (see `HEADROOM`).
        let recycles = req.version() < Version::HTTP_2 && !upstream.pool.options.http2;
        let mut try_ = match inner.prepare(upstream, req, downstream) {
            Ok(req) => {
                upstream.health.requests.fetch_add(1, Ordering::Relaxed);
                // Counts the request in flight until dropped: here on failure, or with the body.
                let blame = Blame::enter(self.inner.clone(), index);
                let started = Instant::now();
                let sent = inner.send(upstream, req).await;
                self.settled(upstream, permit, blame, started, sent)
            }
            Err(error) => Try {
                result: Err(error),
                cause: None,
            },
        };
        if recycles && let Ok(response) = &mut try_.result {
            response.headers_mut().reserve(HEADROOM);
        }
        if let Some(request_id) = request_id {
            let request_id = request_id.to_str().unwrap_or("-");
            match &try_.result {
                Ok(response) => tracing::debug!(
                    request_id,
                    service = &*inner.name,
                    upstream = &*upstream.url,
                    attempt,
                    status = response.status().as_u16(),
                    "upstream answered"
                ),
                Err(error) => tracing::debug!(
                    request_id,
                    service = &*inner.name,
                    upstream = &*upstream.url,
                    attempt,
                    %error,
                    "upstream try failed"
                ),
            }
        }
        try_
    }

    /// What a try on `upstream` (at `index`) came to, once [`Inner::send`] answered: the
    /// upstream's circuit and counters settled, the response made ready for the client.
    fn settled(
        &self,
        upstream: &Upstream,
        permit: Permit<'_>,
        blame: Blame,
        started: Instant,
        sent: Result<Response<PoolBody>, Failure>,
    ) -> Try {
        let inner = &*self.inner;
        let (result, cause) = match sent {
            Ok(response) => {
                inner.record_head(upstream, response.status(), started.elapsed());
                inner.settle_status(upstream, permit, response.status());
                let cause = RetryOn::of_status(response.status());
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers, Direction::Response);
                // An HTTP/1.0 upstream's answer goes on as HTTP/1.1 (this proxy speaks 1.1).
                parts.version = Version::HTTP_11;
                let body = self.response_body(body, blame);
                (Ok(Response::from_parts(parts, body)), cause)
            }
            Err(Failure::Send(error, sending)) => {
                let cause = RetryOn::of_failure(&*error, sending);
                (
                    Err(inner.send_failed(upstream, permit, error, sending)),
                    cause,
                )
            }
            Err(Failure::Timeout { sent }) => {
                inner.response_timed_out(upstream, permit);
                let after = if sent {
                    "after the request was sent"
                } else {
                    "while taking the request"
                };
                tracing::warn!(
                    service = %inner.name,
                    upstream = %upstream.short_name,
                    timeout_ms = inner.response_timeout.as_millis(),
                    cause = "response_timeout",
                    "upstream stalled {after}"
                );
                let error = Error::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "service \"{}\": upstream {} did not respond within {} ms",
                        inner.name,
                        upstream.short_name,
                        inner.response_timeout.as_millis()
                    ),
                );
                // Not retried: the upstream may still be working on it.
                (Err(error), None)
            }
        };
        Try { result, cause }
    }

    /// The client-facing body of a response from the upstream of `blame`: read-timed and
    /// holding the request's in-flight count until it ends, unless empty (then the request is
    /// finished now and `blame` is dropped).
    pub(crate) fn response_body(&self, body: PoolBody, blame: Blame) -> Body {
        use http_body::Body as _;
        let gap = self.inner.read_timeout;
        match body {
            PoolBody::Http1(body) if body.is_end_stream() => Body::from(body.into_incoming()),
            PoolBody::Http2(body) if body.is_end_stream() => Body::from(body),
            PoolBody::Http1(body) => Body::new(UpstreamBody::new(body, gap, blame)),
            PoolBody::Http2(body) => Body::new(UpstreamBody::new(body, gap, blame)),
        }
    }

    #[cfg(test)]
    fn pool_ptr(&self, index: usize) -> *const () {
        Arc::as_ptr(&self.inner.upstreams[index].pool).cast()
    }
}

impl fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyService")
            .field("name", &self.inner.name)
            .field(
                "upstreams",
                &self
                    .inner
                    .upstreams
                    .iter()
                    .map(|u| &u.target)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The future of [`ProxyService`]'s [`tower::Service`] impl. Boxed: callers that care about the
/// allocation call [`ProxyService::forward`] directly.
pub type ProxyFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

/// Forwards requests that carry a [`Downstream`] in their extensions (a request without one is
/// an [`ErrorKind::Internal`] error). Always ready.
impl tower::Service<Request<Body>> for ProxyService {
    type Response = Response<Body>;
    type Error = Error;
    type Future = ProxyFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some(downstream) = req.extensions().get::<Downstream>().copied() else {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "service \"{}\": request without downstream info",
                        this.name()
                    ),
                ));
            };
            this.forward(req, &downstream).await
        })
    }
}

/// Why [`Inner::send`] produced no response.
enum Failure {
    /// The exchange failed; where the request body stood when it did (`None`: no body).
    Send(BoxError, Option<Sending>),
    /// No response head within `response_timeout` of the upstream holding things up.
    Timeout {
        /// Whether the whole request had been sent.
        sent: bool,
    },
}

/// The outcome of one try ([`ProxyService::attempt`]).
struct Try {
    /// What the client gets if this is the last try.
    result: Result<Response<Body>, Error>,
    /// The retry condition the outcome meets, if any.
    cause: Option<RetryOn>,
}

/// A copy of a request head with `body`, for one try of a request that may be retried.
fn copy_request(head: &http::request::Parts, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    *req.extensions_mut() = head.extensions.clone();
    req
}

/// A response body as the pool hands it over.
pub(crate) enum PoolBody {
    /// From our HTTP/1.1 pool: returns its connection at its end.
    Http1(Checkin),
    /// From hyper-util's client (HTTP/2, or HTTP/1.1 where ALPN chose it).
    Http2(Incoming),
}

/// Who to blame when an upstream response body stalls: the upstream `index` of `service`.
/// Also the request's slot in that upstream's in-flight count, given back when dropped (with
/// the response body, or when no response came).
pub(crate) struct Blame {
    service: Arc<Inner>,
    index: usize,
}

// === impl Blame ===

impl Blame {
    /// Counts one more request in flight on upstream `index` of `service`.
    pub(crate) fn enter(service: Arc<Inner>, index: usize) -> Self {
        service.upstreams[index]
            .health
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self { service, index }
    }

    /// The upstream sent nothing for `gap` mid-body: logs it and, when `count`, counts a
    /// failure against its circuit. Returns the error the body fails with.
    pub(crate) fn body_stalled(&self, gap: Duration, count: bool) -> UpstreamBodyTimeout {
        let service = &*self.service;
        let upstream = &service.upstreams[self.index];
        if count {
            tracing::warn!(
                service = %service.name,
                upstream = %upstream.short_name,
                timeout_ms = gap.as_millis(),
                cause = "read_timeout",
                "upstream stalled mid-body; client response aborted"
            );
            service.recorders.failed(recorded::Failure::ReadTimeout);
            upstream.health.failures.fetch_add(1, Ordering::Relaxed);
            // After the response head the request's permit is settled: this is a failure of
            // its own, as if a closed circuit admitted it.
            upstream
                .health
                .breaker
                .on_failure(Admission::Closed, &service.breaker);
        }
        UpstreamBodyTimeout {
            upstream: upstream.short_name.clone(),
            gap,
        }
    }
}

impl Drop for Blame {
    fn drop(&mut self) {
        self.service.upstreams[self.index]
            .health
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Inner ===

impl Inner {
    /// Records a response head with `status` from `upstream`, `elapsed` after its try began.
    #[inline]
    pub(crate) fn record_head(
        &self,
        upstream: &Upstream,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        self.recorders.response_time.observe(elapsed);
        upstream.recorders.tried(if status.is_server_error() {
            Outcome::Http5xx
        } else {
            Outcome::Success
        });
    }

    /// `req` rewritten for `upstream` (see [`Upstream::prepare`]), or the 400 it cannot be.
    pub(crate) fn prepare(
        &self,
        upstream: &Upstream,
        req: Request<Body>,
        downstream: &Downstream,
    ) -> Result<Request<Body>, Error> {
        upstream.prepare(req, downstream).map_err(|e| {
            Error::new(
                ErrorKind::BadRequest,
                format!(
                    "service \"{}\": cannot build the upstream request",
                    self.name
                ),
            )
            .with_source(e)
        })
    }

    /// Settles `permit` for a response head with `status`: a failure when 5xx responses count
    /// and this is one, else a success.
    pub(crate) fn settle_status(
        &self,
        upstream: &Upstream,
        permit: Permit<'_>,
        status: http::StatusCode,
    ) {
        if self.breaker.count_5xx && status.is_server_error() {
            Self::failed(upstream, permit);
        } else {
            permit.success();
        }
    }

    /// Counts a failure of `upstream` and settles `permit` as one.
    pub(crate) fn failed(upstream: &Upstream, permit: Permit<'_>) {
        upstream.health.failures.fetch_add(1, Ordering::Relaxed);
        permit.failure();
    }

    /// Settles a try whose exchange failed with `error` (the request body at `sending`):
    /// records its outcome and, when the upstream is to blame, counts the failure. Returns the
    /// error for the client.
    pub(crate) fn send_failed(
        &self,
        upstream: &Upstream,
        permit: Permit<'_>,
        error: BoxError,
        sending: Option<Sending>,
    ) -> Error {
        let (outcome, failure) = recorded::classify(&*error);
        let (error, upstream_fault) = self.upstream_error(upstream, error, sending);
        if upstream_fault {
            upstream.recorders.tried(outcome);
            if let Some(failure) = failure {
                self.recorders.failed(failure);
            }
            Self::failed(upstream, permit);
        } else {
            upstream.recorders.tried(Outcome::ClientError);
        }
        error
    }

    /// Settles a try that got no response head within `response_timeout`: recorded and counted
    /// against `upstream`.
    pub(crate) fn response_timed_out(&self, upstream: &Upstream, permit: Permit<'_>) {
        upstream.recorders.tried(Outcome::ResponseTimeout);
        self.recorders.failed(recorded::Failure::ResponseTimeout);
        Self::failed(upstream, permit);
    }

    /// Whether upstream `index` may take a request now: it passed its health checks (or the
    /// service is in panic mode) and its circuit admits it, whose permit this returns.
    #[inline]
    fn admit(&self, index: usize) -> Option<Permit<'_>> {
        if let Some(checks) = &self.health_check
            && !checks.admits(index)
        {
            return None;
        }
        Permit::acquire(&self.upstreams[index].health.breaker, &self.breaker)
    }

    /// The hash of `req`'s sticky key, when the strategy is `sticky_hash` and `req` has one.
    #[inline]
    pub(crate) fn sticky_hash(&self, req: &Request<Body>, downstream: &Downstream) -> Option<u64> {
        self.sticky.as_ref().and_then(|key| {
            let client = req
                .extensions()
                .get::<ClientAddr>()
                .map_or(downstream.peer.ip(), |c| c.0);
            key.hash(req.headers(), client)
        })
    }

    /// Picks an upstream that [`Inner::admit`]s a request (for `sticky_hash`, the one `key`
    /// maps to, if any), preferring those not in `tried` (a bit
    /// per upstream index, exact for the first 64); when none of those admits, any of them, so
    /// a retry may go to the upstream that just failed.
    #[inline]
    pub(crate) fn pick(&self, key: Option<u64>, tried: u64) -> Option<(usize, Permit<'_>)> {
        let pick = |tried: u64| {
            self.balancer.pick(
                self.upstreams.len(),
                key,
                |i| self.upstreams[i].health.in_flight.load(Ordering::Relaxed),
                |i| {
                    if i < 64 && tried & (1 << i) != 0 {
                        return None;
                    }
                    self.admit(i)
                },
            )
        };
        pick(tried).or_else(|| if tried == 0 { None } else { pick(0) })
    }

    /// The error when every circuit refuses the request.
    pub(crate) fn no_healthy_upstream(&self) -> Error {
        Error::new(
            ErrorKind::NoHealthyUpstream,
            format!("service \"{}\": no healthy upstream", self.name),
        )
    }

    /// The error for a request body that could not be read into memory for retries.
    fn replay_error(&self, error: ReadError) -> Error {
        let name = &self.name;
        match error {
            ReadError::Client(e) if cause_ref::<ClientBodyTimeout>(&*e).is_some() => {
                tracing::warn!(
                    service = %name,
                    cause = "body_read_timeout",
                    "client stalled sending the request body"
                );
                Error::new(
                    ErrorKind::RequestTimeout,
                    format!("service \"{name}\": the client stalled sending the request body"),
                )
                .with_source(e)
            }
            ReadError::Client(e) => Error::new(
                ErrorKind::BadRequest,
                format!("service \"{name}\": the request body broke off"),
            )
            .with_source(e),
            ReadError::TooLong => Error::new(
                ErrorKind::BadRequest,
                format!("service \"{name}\": the request body is longer than it declared"),
            ),
        }
    }

    /// Sends `req` to `upstream` and waits for the response head.
    ///
    /// `response_timeout` runs while the upstream is the side holding things up: without a
    /// request body, from the start; with one, it is restarted whenever the upstream takes
    /// another piece, paused while the client's body is late (that is `body_read_timeout`'s
    /// business), and runs in full from the moment the whole request was sent.
    async fn send(
        &self,
        upstream: &Upstream,
        mut req: Request<Body>,
    ) -> Result<Response<PoolBody>, Failure> {
        use http_body::Body as _;
        let limit = self.response_timeout;
        if req.body().is_end_stream() {
            return upstream
                .pool
                .send(req, Some(limit))
                .await
                .map_err(|e| match e {
                    SendError::Failed(e) => Failure::Send(e, None),
                    SendError::TimedOut => Failure::Timeout { sent: true },
                });
        }
        let progress = Progress::new();
        let body = std::mem::take(req.body_mut());
        *req.body_mut() = Body::new(SendBody::new(body, progress.clone()));
        // Boxed: the wait below is larger than a plain send, and requests without a body
        // (nearly all) should not carry its size around.
        Box::pin(watch(upstream.pool.send(req, None), &progress, limit)).await
    }

    /// Turns a client error into the error the caller sees, and says whether it is the
    /// upstream's fault (and so counts against its circuit). `sending` is where the request
    /// body stood.
    pub(crate) fn upstream_error(
        &self,
        upstream: &Upstream,
        source: BoxError,
        sending: Option<Sending>,
    ) -> (Error, bool) {
        let error: &(dyn std::error::Error + 'static) = &*source;
        let (name, up) = (&self.name, &upstream.short_name);
        let client_timeout = cause_ref::<ClientBodyTimeout>(error).is_some()
            || sending == Some(Sending::ClientTimedOut);
        let (kind, message, fault) = if client_timeout {
            // The client's fault whatever the connection reported (an h2 upstream sees a
            // reset stream). The upstream connection is not reused: hyper closes it.
            tracing::warn!(
                service = %name,
                upstream = %up,
                cause = "body_read_timeout",
                "client stalled sending the request body; not counted against the upstream"
            );
            (
                ErrorKind::RequestTimeout,
                "the client stalled sending the request body".to_owned(),
                false,
            )
        } else if sending == Some(Sending::ClientFailed) {
            (
                ErrorKind::BadRequest,
                format!("the request body for upstream {up} broke off"),
                false,
            )
        } else if let Some(connect) = cause_ref::<ConnectError>(error) {
            match connect {
                ConnectError::Timeout(t) => (
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "timed out connecting to upstream {up} after {} ms",
                        t.as_millis()
                    ),
                    true,
                ),
                ConnectError::Tls(_) => (
                    ErrorKind::UpstreamUnavailable,
                    format!("TLS handshake with upstream {up} failed"),
                    true,
                ),
                ConnectError::Connect(io) => {
                    let what = match io.kind() {
                        io::ErrorKind::ConnectionRefused => "refused the connection",
                        io::ErrorKind::NotFound => "does not exist",
                        io::ErrorKind::TimedOut => "timed out",
                        _ => "is unreachable",
                    };
                    (
                        ErrorKind::UpstreamUnavailable,
                        format!("upstream {up} {what}"),
                        true,
                    )
                }
            }
        } else if let Some(h) = cause_ref::<hyper::Error>(error)
            && h.is_user()
        {
            // Our side of the exchange failed, mostly the downstream request body breaking
            // off: nothing the upstream did.
            (
                ErrorKind::BadRequest,
                format!("the request to upstream {up} could not be sent"),
                false,
            )
        } else {
            let io_kind = cause_ref::<io::Error>(error).map(io::Error::kind);
            let hyper = cause_ref::<hyper::Error>(error);
            let what = if matches!(
                io_kind,
                Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
            ) {
                "reset the connection"
            } else if hyper.is_some_and(hyper::Error::is_parse_too_large) {
                "sent a response head larger than max_response_header_bytes"
            } else if cause_ref::<UnaskedSwitch>(error).is_some() {
                "switched protocols unasked (101)"
            } else if hyper.is_some_and(|h| h.is_parse() || h.is_parse_status()) {
                "sent an invalid response"
            } else if hyper
                .is_some_and(|h| h.is_incomplete_message() || h.is_closed() || h.is_canceled())
                || io_kind == Some(io::ErrorKind::BrokenPipe)
            {
                "closed the connection before responding"
            } else {
                "failed"
            };
            (
                ErrorKind::UpstreamUnavailable,
                format!("upstream {up} {what}"),
                true,
            )
        };
        (
            Error::new(kind, format!("service \"{name}\": {message}")).with_source(source),
            fault,
        )
    }
}

/// Waits for `send` while timing the upstream by `progress` (see [`Inner::send`]).
async fn watch<F>(
    send: F,
    progress: &Progress,
    limit: Duration,
) -> Result<Response<PoolBody>, Failure>
where
    F: Future<Output = Result<Response<PoolBody>, SendError>>,
{
    tokio::pin!(send);
    let sleep = tokio::time::sleep(limit);
    tokio::pin!(sleep);
    let mut frames = progress.frames();
    loop {
        let state = progress.state();
        tokio::select! {
            biased;
            result = &mut send => {
                return result.map_err(|e| match e {
                    SendError::Failed(e) => Failure::Send(e, Some(progress.state())),
                    // Untimed by the pool: the timing is here.
                    SendError::TimedOut => Failure::Timeout { sent: progress.state() == Sending::Sent },
                });
            }
            () = progress.changed() => match progress.state() {
                Sending::Client => {}
                // The client's body failed: whatever the connection makes of it, the
                // upstream is not waited for (nor blamed).
                state @ (Sending::ClientTimedOut | Sending::ClientFailed) => {
                    return Err(Failure::Send("the request body failed".into(), Some(state)));
                }
                // Waiting on the upstream again, or the request is complete: a full
                // `response_timeout` from now.
                Sending::Upstream | Sending::Sent => {
                    frames = progress.frames();
                    sleep.as_mut().reset(tokio::time::Instant::now() + limit);
                }
            },
            () = &mut sleep, if state != Sending::Client => {
                let state = progress.state();
                let now = progress.frames();
                if state == Sending::Upstream && now != frames {
                    // The upstream took more of the body meanwhile: still moving.
                    frames = now;
                    sleep.as_mut().reset(tokio::time::Instant::now() + limit);
                } else if matches!(state, Sending::Upstream | Sending::Sent) {
                    return Err(Failure::Timeout { sent: state == Sending::Sent });
                }
            }
        }
    }
}

// === impl Upstream ===

impl Upstream {
    /// Rewrites a downstream request for this upstream: URI, version and headers.
    #[inline]
    pub(crate) fn prepare(
        &self,
        req: Request<Body>,
        downstream: &Downstream,
    ) -> Result<Request<Body>, http::uri::InvalidUriParts> {
        let (mut parts, body) = req.into_parts();
        let uri = std::mem::take(&mut parts.uri).into_parts();

        remove_hop_by_hop(&mut parts.headers, Direction::Request);
        set_forwarded(
            &mut parts.headers,
            uri.authority.as_ref(),
            downstream.peer.ip(),
            downstream.tls,
            downstream.trusted,
        );
        if !parts.headers.contains_key(HOST)
            && let Some(host) = &self.default_host
        {
            parts.headers.insert(HOST, host.clone());
        }

        let mut upstream_uri = http::uri::Parts::default();
        upstream_uri.scheme = Some(self.scheme.clone());
        upstream_uri.authority = Some(self.authority.clone());
        upstream_uri.path_and_query = Some(
            uri.path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        parts.uri = Uri::from_parts(upstream_uri)?;
        // hyper speaks HTTP/1.1 or HTTP/2 to the upstream as the connection allows; a version
        // of 2 on an HTTP/1 connection would be refused.
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}

// === impl PoolClient ===

impl PoolClient {
    /// A pool for `options`, dialing with `connector`.
    fn new(options: &ConnOptions, connector: &Connector) -> Self {
        if options.http2 {
            let client = Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                // `host` passes through as the client sent it.
                .set_host(false)
                // Not a retry of the request: hyper re-sends only a request it got back
                // unwritten, because the idle pooled connection it picked turned out closed
                // (the keep-alive race). The upstream never saw it.
                .retry_canceled_requests(true)
                // Prior-knowledge h2c for plain upstreams; TLS upstreams negotiate by ALPN.
                .http2_only(!options.target.is_tls())
                // An https upstream may still pick HTTP/1.1 by ALPN: hyper-util has no head
                // limit of its own, so the read buffer is the limit (hyper's floor: 8 KiB).
                .http1_max_buf_size(options.max_response_header_bytes.max(8 * 1024))
                .http2_max_header_list_size(
                    u32::try_from(options.max_response_header_bytes).unwrap_or(u32::MAX),
                )
                .build(connector.clone());
            Self::Http2(Box::new(client))
        } else {
            Self::Http1(Arc::new(H1Pool::new(
                connector.clone(),
                options.max_response_header_bytes,
            )))
        }
    }
}

// === impl Pool ===

impl Pool {
    fn new(
        options: ConnOptions,
        tls: &mut Option<Arc<ClientConfig>>,
        service: &ServiceOptions,
    ) -> Result<Self, TlsConfigError> {
        let tls = if options.target.is_tls() {
            if tls.is_none() {
                *tls = Some(tls::client_config(
                    service.ca_file.as_deref(),
                    service.http2,
                )?);
            }
            tls.as_ref()
        } else {
            None
        };
        let connector = Connector::new(&options.target, tls, options.connect_timeout)?;
        let clients = (0..=options.worker_pools)
            .map(|_| PoolClient::new(&options, &connector))
            .collect();
        Ok(Self {
            clients,
            options,
            connector,
        })
    }

    /// The pool of the current thread: its worker's, or the shared one.
    #[inline]
    pub(crate) fn client(&self) -> &PoolClient {
        &self.clients[crate::worker::slot(self.clients.len())]
    }

    /// Idle connections over every worker's pool; `None` for HTTP/2.
    fn idle_connections(&self) -> Option<usize> {
        self.clients.iter().try_fold(0, |sum, client| match client {
            PoolClient::Http1(pool) => Some(sum + pool.idle_connections()),
            PoolClient::Http2(_) => None,
        })
    }

    /// Busy connections over every worker's pool; `None` for HTTP/2.
    fn active_connections(&self) -> Option<usize> {
        self.clients.iter().try_fold(0, |sum, client| match client {
            PoolClient::Http1(pool) => Some(
                sum + pool
                    .open_connections()
                    .saturating_sub(pool.idle_connections()),
            ),
            PoolClient::Http2(_) => None,
        })
    }

    /// Sends a prepared request to this upstream and waits for the response head, within
    /// `limit` if given (HTTP/1.1: the connection's own timer; HTTP/2: a timeout around the
    /// send). A `101 Switching Protocols` is an error here: upgrades go through
    /// [`ProxyService::forward_upgrade`].
    async fn send(
        &self,
        req: Request<Body>,
        limit: Option<Duration>,
    ) -> Result<Response<PoolBody>, SendError> {
        let response = match self.client() {
            PoolClient::Http1(pool) => pool.request(req, limit).await?.map(PoolBody::Http1),
            PoolClient::Http2(client) => match limit {
                Some(limit) => tokio::time::timeout(limit, client.request(req))
                    .await
                    .map_err(|_| SendError::TimedOut)??,
                None => client.request(req).await?,
            }
            .map(PoolBody::Http2),
        };
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(UnaskedSwitch.into());
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(url: &str, weight: u32) -> UpstreamSpec {
        UpstreamSpec {
            target: Target::parse(url).unwrap(),
            weight,
        }
    }

    #[test]
    fn send_sync_and_cheap_clone() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<ProxyService>();
        fn assert_send<T: Send>(_: &T) {}
        let svc = ProxyService::new(
            "a",
            vec![spec("http://127.0.0.1:1", 1)],
            ServiceOptions::default(),
            None,
        )
        .unwrap();
        let d = Downstream {
            peer: "127.0.0.1:9".parse().unwrap(),
            tls: false,
            trusted: false,
        };
        let fut = svc.forward(Request::new(Body::empty()), &d);
        assert_send(&fut);
    }

    #[tokio::test]
    async fn previous_keeps_pools_only_when_options_match() {
        let ups = || vec![spec("http://127.0.0.1:1", 1), spec("http://127.0.0.1:2", 1)];
        let a = ProxyService::new("a", ups(), ServiceOptions::default(), None).unwrap();
        let b = ProxyService::new("a", ups(), ServiceOptions::default(), Some(&a)).unwrap();
        assert_eq!(a.pool_ptr(0), b.pool_ptr(0));
        assert_eq!(a.pool_ptr(1), b.pool_ptr(1));
        assert!(Arc::ptr_eq(
            &a.inner.upstreams[1].health,
            &b.inner.upstreams[1].health
        ));

        // Reordered: pools follow their targets.
        let c = ProxyService::new(
            "a",
            vec![spec("http://127.0.0.1:2", 1), spec("http://127.0.0.1:3", 1)],
            ServiceOptions::default(),
            Some(&b),
        )
        .unwrap();
        assert_eq!(c.pool_ptr(0), b.pool_ptr(1));

        // Changed connection options: new pool, same breaker.
        let opts = ServiceOptions {
            http2: true,
            ..ServiceOptions::default()
        };
        let d = ProxyService::new("a", ups(), opts, Some(&b)).unwrap();
        assert_ne!(d.pool_ptr(0), b.pool_ptr(0));
        assert!(Arc::ptr_eq(
            &d.inner.upstreams[0].health,
            &b.inner.upstreams[0].health
        ));
    }

    #[tokio::test]
    async fn in_flight_lasts_until_the_response_body_ends() {
        use http_body_util::BodyExt;
        let (up, _) = crate::test_upstream::scripted().await;
        let svc = ProxyService::new(
            "a",
            vec![
                spec(&format!("http://{up}"), 1),
                spec("http://127.0.0.1:1", 1),
            ],
            ServiceOptions {
                strategy: Strategy::Failover,
                ..ServiceOptions::default()
            },
            None,
        )
        .unwrap();
        let in_flight = |i: usize| {
            svc.inner.upstreams[i]
                .health
                .in_flight
                .load(Ordering::Relaxed)
        };
        let d = Downstream {
            peer: "127.0.0.1:9".parse().unwrap(),
            tls: false,
            trusted: false,
        };
        let get = || Request::get("/").body(Body::empty()).unwrap();

        let res = svc.forward(get(), &d).await.unwrap();
        assert_eq!(in_flight(0), 1, "counted while the body is unread");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(in_flight(0), 0, "released at the body's end");

        let res = svc.forward(get(), &d).await.unwrap();
        assert_eq!(in_flight(0), 1);
        drop(res);
        assert_eq!(in_flight(0), 0, "released when the client goes away");

        // A failed exchange releases its count too.
        let down = ProxyService::new(
            "b",
            vec![spec("http://127.0.0.1:1", 1)],
            ServiceOptions::default(),
            Some(&svc),
        )
        .unwrap();
        down.forward(get(), &d).await.unwrap_err();
        assert_eq!(
            in_flight(1),
            0,
            "shared with the reloaded service, and released"
        );
    }

    #[tokio::test]
    async fn retries_leave_no_count_behind() {
        use http_body_util::BodyExt;
        let (up, _) = crate::test_upstream::scripted().await;
        let policy = RetryPolicy::new(3, [RetryOn::ConnectFailure], 0);
        let svc = ProxyService::new(
            "a",
            vec![
                spec("http://127.0.0.1:1", 1),
                spec(&format!("http://{up}"), 1),
            ],
            ServiceOptions {
                strategy: Strategy::Failover,
                circuit_breaker: CircuitBreakerOptions {
                    enabled: false,
                    ..CircuitBreakerOptions::default()
                },
                retry: Some(policy),
                ..ServiceOptions::default()
            },
            None,
        )
        .unwrap();
        let d = Downstream {
            peer: "127.0.0.1:9".parse().unwrap(),
            tls: false,
            trusted: false,
        };
        let budget = &svc.inner.budget;
        let counts = || {
            (
                budget.requests_in_flight(),
                budget.retries_in_flight(),
                svc.inner.upstreams[0]
                    .health
                    .in_flight
                    .load(Ordering::Relaxed),
            )
        };
        for _ in 0..5 {
            // The refused first try is retried on the other upstream.
            let put = Request::put("/")
                .body(Body::full(Bytes::from_static(b"abc")))
                .unwrap();
            let res = svc.forward(put, &d).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
            assert_eq!(counts(), (0, 0, 0));
        }
        assert_eq!(
            svc.inner.upstreams[0]
                .health
                .requests
                .load(Ordering::Relaxed),
            5
        );
        assert_eq!(
            svc.inner.upstreams[1]
                .health
                .requests
                .load(Ordering::Relaxed),
            5
        );
        // A POST is tried once: the refusal is the answer.
        let post = Request::post("/").body(Body::empty()).unwrap();
        let e = svc.forward(post, &d).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UpstreamUnavailable);
        assert_eq!(counts(), (0, 0, 0));
        // A reload keeps the budget's counters.
        let next = ProxyService::new(
            "a",
            vec![spec(&format!("http://{up}"), 1)],
            ServiceOptions::default(),
            Some(&svc),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&next.inner.budget, &svc.inner.budget));
    }

    #[test]
    fn build_errors() {
        let e = ProxyService::new("a", vec![], ServiceOptions::default(), None).unwrap_err();
        assert!(matches!(e, BuildError::NoUpstreams { .. }));
        let e = ProxyService::new(
            "a",
            vec![spec("http://h:1", 0)],
            ServiceOptions::default(),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, BuildError::ZeroWeight { .. }), "{e}");
        let opts = ServiceOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..ServiceOptions::default()
        };
        let e = ProxyService::new("a", vec![spec("https://h", 1)], opts.clone(), None).unwrap_err();
        assert!(matches!(e, BuildError::Tls { .. }), "{e}");
        // The CA file only matters to https upstreams.
        ProxyService::new("a", vec![spec("http://h:1", 1)], opts, None).unwrap();
    }
}
