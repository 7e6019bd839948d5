//! The upstream outcome of Snakeway: pooled hyper client, load balancing, circuit breaking and
//! proxy header handling.
//!
//! A [`ProxyService`] is one configured service: a list of upstreams ([`Target`]s with weights),
//! a [`Strategy`] to pick among them, and [`ServiceOptions`] for timeouts, TLS, the circuit
//! breaker and retries. It depends on no config schema: the server maps `[[service]]` entries
//! to these constructor arguments.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use snakeway_proxy::{Downstream, ProxyService, ServiceOptions, Target, UpstreamSpec};
//!
//! let api = ProxyService::new(
//!     "api",
//!     vec![
//!         UpstreamSpec { target: Target::parse("http://127.0.0.1:3001")?, weight: 2 },
//!         UpstreamSpec { target: Target::parse("unix:/run/app.sock")?, weight: 1 },
//!     ],
//!     ServiceOptions::default(),
//!     None, // on reload: the old snapshot's service of the same name
//! )?;
//! let downstream = Downstream { peer: "192.0.2.7:50123".parse()?, tls: true, trusted: false };
//! let request = http::Request::get("/users?page=2")
//!     .header("host", "api.example.com")
//!     .body(snakeway_core::Body::empty())?;
//! let response = api.forward(request, &downstream).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! # What `forward` does
//!
//! * **Pick.** Smooth weighted round robin over a schedule computed at construction and indexed
//!   by an atomic counter, failover (first usable upstream in configured order), weighted
//!   random (a binary search in prefix sums), least requests (weighted power of two choices
//!   over per-upstream in-flight counts, each request counted until its response body ends),
//!   or sticky hash (a consistent hash ring of the request's [`StickyKey`]).
//!   Upstreams whose circuit is open are skipped; when all are, the request fails with
//!   [`ErrorKind::NoHealthyUpstream`](snakeway_core::ErrorKind::NoHealthyUpstream) (503).
//!   With [`ServiceOptions::health_check`], upstreams that failed their probes are skipped too,
//!   unless every upstream has (panic mode: then all are used, circuits still applying).
//! * **Rewrite.** The URI keeps its path and query and takes the upstream's scheme and
//!   authority (`http://localhost` for Unix sockets). Hop-by-hop headers are removed,
//!   `x-forwarded-for` gets the peer IP appended, `x-forwarded-proto` and `x-forwarded-host`
//!   are set; `host` passes unchanged. Unless the peer is a trusted proxy
//!   ([`Downstream::trusted`]), its own `x-forwarded-*`, `forwarded` and `x-real-ip` are
//!   removed first.
//! * **Send.** Each upstream has its own pooled hyper-util client (keep-alive; prior-knowledge
//!   h2c when `http2`; ALPN for `https`) and its own circuit breaker. Bodies stream both ways,
//!   never buffered (but for a small request body kept for retries, below).
//! * **Fail.** Refused, reset, TLS failure, closed before responding:
//!   [`UpstreamUnavailable`](snakeway_core::ErrorKind::UpstreamUnavailable) (502). Connecting
//!   or the response headers taking longer than their timeouts:
//!   [`UpstreamTimeout`](snakeway_core::ErrorKind::UpstreamTimeout) (504). Each failure is
//!   counted by the upstream's circuit breaker (and a 5xx response too, if so configured).
//! * **Retry, only when asked.** Without [`ServiceOptions::retry`] nothing is sent twice. With a
//!   [`RetryPolicy`], an idempotent request whose body is empty or declares at most 64 KiB (read
//!   into memory first) is tried again after an outcome the policy lists ([`RetryOn`]: connect
//!   failure, reset before the response head, an upstream 502/503/504), on an upstream not
//!   tried yet when one admits it, while attempts remain and the service's retry budget allows
//!   it (fewer retries in flight than 3 or than the policy's share of the service's requests
//!   in flight, whichever is more). Every try counts for its upstream's circuit; the client
//!   gets the last try's outcome.
//! * **Blame the side that stalled.** `response_timeout` runs while the upstream holds the
//!   exchange up, in full from the moment the whole request was sent; a client whose request
//!   body stalls ([`ClientBodyTimeout`](snakeway_core::ClientBodyTimeout)) gets
//!   [`RequestTimeout`](snakeway_core::ErrorKind::RequestTimeout) (408) and its circuit is
//!   untouched. An upstream body that stalls for `read_timeout` fails the response body with
//!   [`UpstreamBodyTimeout`] and counts against the upstream.
//!
//! # Per-worker pools
//!
//! With [`ServiceOptions::worker_pools`] set to the number of workers, every upstream keeps
//! one HTTP/1.1 pool (or HTTP/2 client) per worker besides a shared one: a request takes its
//! connection from the pool of the worker thread it runs on ([`worker::enter`]), so with one
//! single-threaded runtime per worker an upstream connection never changes threads. Circuit
//! breakers, health verdicts and counters stay per upstream.
//!
//! The hot path takes no lock: picking, the circuit breakers, the health verdicts and the
//! counters are atomics.
//!
//! # Active health checks
//!
//! [`ProxyService::start_health_checks`] spawns the service's one probe task and returns a
//! [`HealthChecker`] that stops it when dropped; building a service spawns nothing. The task
//! probes every upstream with `GET` over a fresh connection (2xx/3xx within the timeout
//! passes), flips an upstream's verdict after [`HealthCheckOptions::unhealthy_threshold`]
//! consecutive failures or [`HealthCheckOptions::healthy_threshold`] consecutive passes, and
//! publishes it in an atomic that `forward` reads. Each flip, and entering or leaving panic
//! mode, is logged once.
//!
//! # WebSockets
//!
//! [`ProxyService::forward_upgrade`] forwards a WebSocket handshake ([`is_websocket_upgrade`])
//! over a dedicated HTTP/1.1 upstream connection and, on `101`, returns a [`Tunnel`] that the
//! caller runs ([`Tunnel::run`]: bounded buffers both ways, half-close, an idle timeout).
//! [`ProxyService::forward`] never lets a `101` through: it strips `upgrade`, and an upstream
//! that switches protocols anyway is a 502.
//!
//! # Reloads
//!
//! Pass the old snapshot's same-named service as `previous` to [`ProxyService::new`]: an
//! upstream whose target is unchanged keeps its circuit state and counters, its health verdict
//! (while both services have health checks), and, when its connection options are unchanged
//! too, its connection pool. Start the new service's health checks when it is installed and
//! drop the old checker then.

mod balance;
mod body;
mod breaker;
mod connector;
mod h1pool;
mod headers;
mod health_check;
mod io;
mod recorded;
mod retry;
mod service;
mod sticky;
mod target;
#[cfg(test)]
mod test_upstream;
mod tls;
mod upgrade;
pub mod worker;

pub use balance::Strategy;
pub use body::UpstreamBodyTimeout;
pub use breaker::{CircuitBreakerOptions, CircuitState};
pub use health_check::{HealthCheckOptions, HealthChecker};
pub use retry::{RetryOn, RetryPolicy};
pub use service::{
    BuildError, Downstream, ProxyFuture, ProxyService, ServiceOptions, UpstreamSpec, UpstreamStatus,
};
pub use sticky::StickyKey;
pub use target::{Target, TargetError};
pub use tls::{PemContents, TlsConfigError, pem_problem};
pub use upgrade::{Tunnel, TunnelError, TunnelStats, is_websocket_upgrade};
