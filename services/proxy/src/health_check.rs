//! Active health checks: a background task per service probes each upstream with a `GET` and
//! publishes the verdicts as atomics that the workers read while picking.
//!
//! * **Probe.** `GET path` over a new connection made by the upstream's own connector (so `unix`
//!   and `https` upstreams are probed the way requests reach them), HTTP/2 when the service
//!   speaks it, `Host` set to the upstream's authority and `user-agent: snakeway-health-check`.
//!   A 2xx or 3xx answer within `timeout` (connecting included) passes; anything else fails.
//!   The connection is closed after every probe.
//! * **Schedule.** Every upstream is probed at once when the checker starts, then each waits
//!   `interval` (plus up to a tenth of it as jitter) after its previous probe *ended*, so slow
//!   probes never pile up. One service's upstreams are probed concurrently, in one task.
//! * **Verdict.** `unhealthy_threshold` consecutive failures make a healthy upstream unhealthy;
//!   `healthy_threshold` consecutive passes make it healthy again. A new upstream starts healthy.
//!   Each flip is logged once.
//! * **Panic mode.** When every upstream of a service is unhealthy, probe verdicts are ignored
//!   and traffic goes to all of them (circuit breakers still apply), as Envoy's panic threshold
//!   does at 100 %. Entering and leaving it is logged once per transition.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{CONNECTION, HOST, HeaderValue, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, StatusCode, Uri};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioExecutor;
use snakeway_core::Body;
use tokio::task::AbortHandle;
use tower::ServiceExt;

use crate::connector::{ConnectError, Connector};

/// The `user-agent` of every probe.
const PROBE_USER_AGENT: &str = "snakeway-health-check";

/// How a service probes its upstreams (`[service.health_check]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckOptions {
    /// Path (and query) requested with `GET`.
    pub path: PathAndQuery,
    /// Time from the end of one probe of an upstream to the start of its next (at least 1 ms).
    pub interval: Duration,
    /// Limit on a whole probe, connecting included; a slower answer is a failure.
    pub timeout: Duration,
    /// Consecutive failed probes that make a healthy upstream unhealthy (0 is taken as 1).
    pub unhealthy_threshold: u32,
    /// Consecutive passed probes that make an unhealthy upstream healthy (0 is taken as 1).
    pub healthy_threshold: u32,
}

impl Default for HealthCheckOptions {
    /// The defaults of the design contract: `/healthz` every 5 s, 1 s timeout, 3 failures to
    /// mark unhealthy, 2 passes to mark healthy.
    fn default() -> Self {
        Self {
            path: PathAndQuery::from_static("/healthz"),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// The running probes of one service; dropping it stops them.
///
/// Returned by [`ProxyService::start_health_checks`](crate::ProxyService::start_health_checks).
/// The verdicts the probes reached stay with the upstreams, so a checker started for the next
/// snapshot carries on from them.
#[derive(Debug)]
#[must_use = "the probes stop when the checker is dropped"]
pub struct HealthChecker {
    task: AbortHandle,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probe verdict of one upstream, carried across reloads with the upstream.
///
/// Workers only read `healthy`; the streak counters are written by the service's one checker.
#[derive(Debug)]
pub(crate) struct ProbeHealth {
    healthy: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
}

/// The probe verdicts of one service's upstreams, in configured order, as workers read them.
#[derive(Debug)]
pub(crate) struct ServiceHealth {
    options: HealthCheckOptions,
    upstreams: Box<[Arc<ProbeHealth>]>,
    /// Every upstream is unhealthy: verdicts are ignored. Kept by the checker, which logs its
    /// transitions.
    panic: AtomicBool,
    /// Whether the service this one replaced was in panic mode (its transitions were logged).
    inherited_panic: bool,
}

/// What the checker needs to probe one upstream.
pub(crate) struct ProbeTarget {
    /// The upstream's URL, for logs.
    pub(crate) name: Box<str>,
    pub(crate) connector: Connector,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// Prior-knowledge HTTP/2 (otherwise HTTP/1.1, or what ALPN chose for `https`).
    pub(crate) http2: bool,
}

/// Why a probe failed (logged with its whole `source()` chain, see [`Causes`]).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error(transparent)]
    Request(#[from] http::Error),
}

/// Displays an error and its `source()` chain: `connect failed: Connection refused (os error
/// 111)`.
struct Causes<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

// === impl ProbeHealth ===

impl ProbeHealth {
    /// A new upstream: healthy until its probes say otherwise.
    pub(crate) fn new() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// The current verdict.
    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Counts one probe result; returns the new verdict when this result flipped it.
    fn record(&self, passed: bool, options: &HealthCheckOptions) -> Option<bool> {
        let (streak, other, threshold) = if passed {
            (&self.passes, &self.failures, options.healthy_threshold)
        } else {
            (&self.failures, &self.passes, options.unhealthy_threshold)
        };
        other.store(0, Ordering::Relaxed);
        // Saturates at the threshold: the count only has to reach it.
        let threshold = threshold.max(1);
        let count = streak
            .load(Ordering::Relaxed)
            .saturating_add(1)
            .min(threshold);
        streak.store(count, Ordering::Relaxed);
        if count >= threshold && self.is_healthy() != passed {
            self.healthy.store(passed, Ordering::Relaxed);
            return Some(passed);
        }
        None
    }
}

// === impl ServiceHealth ===

impl ServiceHealth {
    /// The verdicts of a service's upstreams; panic mode is on from the start when every one of
    /// them is already unhealthy (carried over from `previous`, the service this one replaces).
    pub(crate) fn new(
        options: HealthCheckOptions,
        upstreams: Box<[Arc<ProbeHealth>]>,
        previous: Option<&Self>,
    ) -> Self {
        let panic = all_unhealthy(&upstreams);
        Self {
            options,
            upstreams,
            panic: AtomicBool::new(panic),
            inherited_panic: previous.is_some_and(|p| p.panic.load(Ordering::Relaxed)),
        }
    }

    /// The verdict of upstream `index`.
    pub(crate) fn upstream(&self, index: usize) -> &Arc<ProbeHealth> {
        &self.upstreams[index]
    }

    /// Whether upstream `index` may be picked: it is healthy, or the service is in panic mode.
    #[inline]
    pub(crate) fn admits(&self, index: usize) -> bool {
        self.upstreams[index].is_healthy() || self.panic.load(Ordering::Relaxed)
    }

    /// Recomputes panic mode when the checker starts; logs it when it differs from the replaced
    /// service's (e.g. a reload removed the last healthy upstream).
    fn start(&self, service: &str) {
        let panic = all_unhealthy(&self.upstreams);
        self.panic.store(panic, Ordering::Relaxed);
        if panic != self.inherited_panic {
            log_panic(service, panic, self.upstreams.len());
        }
    }

    /// Recomputes panic mode after a probe; logs a transition.
    fn update_panic(&self, service: &str) {
        let panic = all_unhealthy(&self.upstreams);
        if self.panic.swap(panic, Ordering::Relaxed) != panic {
            log_panic(service, panic, self.upstreams.len());
        }
    }
}

fn log_panic(service: &str, panic: bool, upstreams: usize) {
    if panic {
        tracing::warn!(
            service,
            upstreams,
            "every upstream is unhealthy: panic mode, traffic goes to all of them"
        );
    } else {
        tracing::warn!(service, "an upstream is healthy: panic mode over");
    }
}

fn all_unhealthy(upstreams: &[Arc<ProbeHealth>]) -> bool {
    upstreams.iter().all(|u| !u.is_healthy())
}

// === impl HealthChecker ===

impl HealthChecker {
    /// Spawns the checker of service `service` on the current tokio runtime.
    pub(crate) fn spawn(
        service: Box<str>,
        health: Arc<ServiceHealth>,
        targets: Vec<ProbeTarget>,
    ) -> Self {
        let task = tokio::spawn(check(service, health, targets));
        Self {
            task: task.abort_handle(),
        }
    }
}

/// Probes every target forever (until aborted), publishing verdicts in `health`.
async fn check(service: Box<str>, health: Arc<ServiceHealth>, targets: Vec<ProbeTarget>) {
    let options = &health.options;
    health.start(&service);
    let mut probes: FuturesUnordered<_> = targets
        .iter()
        .enumerate()
        .map(|(i, target)| probe_after(Duration::ZERO, i, target, options))
        .collect();
    while let Some((i, outcome)) = probes.next().await {
        let target = &targets[i];
        let passed = outcome.is_ok();
        match &outcome {
            Ok(status) => tracing::trace!(
                service = &*service,
                upstream = &*target.name,
                status = status.as_u16(),
                "health probe passed"
            ),
            Err(error) => tracing::debug!(
                service = &*service,
                upstream = &*target.name,
                error = %Causes(error),
                "health probe failed"
            ),
        }
        match (health.upstream(i).record(passed, options), outcome) {
            (Some(false), Err(error)) => tracing::warn!(
                service = &*service,
                upstream = &*target.name,
                failed_probes = options.unhealthy_threshold,
                last_error = %Causes(&error),
                "upstream unhealthy: no traffic until its probes pass again"
            ),
            (Some(true), _) => tracing::info!(
                service = &*service,
                upstream = &*target.name,
                passed_probes = options.healthy_threshold,
                "upstream healthy again"
            ),
            _ => {}
        }
        health.update_panic(&service);
        probes.push(probe_after(
            next_delay(options.interval),
            i,
            target,
            options,
        ));
    }
}

/// Waits `delay`, then probes `target` (upstream `index`).
async fn probe_after(
    delay: Duration,
    index: usize,
    target: &ProbeTarget,
    options: &HealthCheckOptions,
) -> (usize, Result<StatusCode, ProbeError>) {
    tokio::time::sleep(delay).await;
    let outcome = match tokio::time::timeout(options.timeout, probe(target, &options.path)).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(ProbeError::Timeout(options.timeout)),
    };
    (index, outcome)
}

/// `interval` plus up to a tenth of it, so probes of many upstreams drift apart; at least 1 ms.
fn next_delay(interval: Duration) -> Duration {
    let interval = interval.max(Duration::from_millis(1));
    let spread = u64::try_from(interval.as_nanos() / 10).unwrap_or(u64::MAX);
    if spread == 0 {
        return interval;
    }
    interval + Duration::from_nanos(crate::balance::random_below(spread))
}

/// One probe: a new connection, one `GET`, the answer's status. No timeout of its own.
async fn probe(target: &ProbeTarget, path: &PathAndQuery) -> Result<StatusCode, ProbeError> {
    let io = target.connector.clone().oneshot(Uri::default()).await?;
    // Plain connections follow `http2`; on TLS, ALPN decided.
    let h2 = if target.scheme == Scheme::HTTPS {
        io.inner().connected().is_negotiated_h2()
    } else {
        target.http2
    };
    let request = if h2 {
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(path.clone())
            .build()?;
        Request::get(uri)
    } else {
        Request::get(Uri::from(path.clone()))
            .header(HOST, target.authority.as_str())
            .header(CONNECTION, HeaderValue::from_static("close"))
    };
    let request = request
        .header(USER_AGENT, HeaderValue::from_static(PROBE_USER_AGENT))
        .body(Body::empty())?;

    let response = if h2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        let exchange = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        beside(conn, exchange).await?
    } else {
        let (mut sender, conn) = http1::handshake(io).await?;
        let exchange = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        beside(conn, exchange).await?
    };
    // Dropping the response and the connection closes it; the body is not read.
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(status)
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Runs `exchange` while driving its connection `conn` in the same task. A connection that
/// ends first fails the exchange itself (hyper hands it the error), so only `exchange` ends
/// this.
async fn beside<T>(conn: impl Future, exchange: impl Future<Output = T>) -> T {
    let conn = async {
        let _ = conn.await;
        std::future::pending::<T>().await
    };
    tokio::select! {
        out = exchange => out,
        never = conn => never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(unhealthy: u32, healthy: u32) -> HealthCheckOptions {
        HealthCheckOptions {
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            ..HealthCheckOptions::default()
        }
    }

    #[test]
    fn verdict_flips_only_after_consecutive_results() {
        let opts = options(3, 2);
        let h = ProbeHealth::new();
        assert!(h.is_healthy(), "a new upstream starts healthy");
        assert_eq!(h.record(true, &opts), None, "already healthy");
        assert_eq!(h.record(false, &opts), None);
        assert_eq!(h.record(false, &opts), None);
        assert_eq!(
            h.record(true, &opts),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(h.record(false, &opts), None);
        assert_eq!(h.record(false, &opts), None);
        assert!(h.is_healthy());
        assert_eq!(
            h.record(false, &opts),
            Some(false),
            "third consecutive failure"
        );
        assert!(!h.is_healthy());
        assert_eq!(h.record(false, &opts), None, "flips once");
        assert_eq!(h.record(true, &opts), None);
        assert_eq!(
            h.record(false, &opts),
            None,
            "a failure resets the pass streak"
        );
        assert_eq!(h.record(true, &opts), None);
        assert!(!h.is_healthy());
        assert_eq!(h.record(true, &opts), Some(true), "second consecutive pass");
        assert!(h.is_healthy());
    }

    #[test]
    fn zero_thresholds_are_one() {
        let opts = options(0, 0);
        let h = ProbeHealth::new();
        assert_eq!(h.record(false, &opts), Some(false));
        assert_eq!(h.record(true, &opts), Some(true));
    }

    #[test]
    fn panic_mode_admits_everyone_when_all_are_unhealthy() {
        let opts = options(1, 1);
        let ups: Box<[Arc<ProbeHealth>]> = (0..2).map(|_| Arc::new(ProbeHealth::new())).collect();
        let health = ServiceHealth::new(opts.clone(), ups, None);
        assert!(health.admits(0) && health.admits(1));

        health.upstream(0).record(false, &opts);
        health.update_panic("s");
        assert!(!health.admits(0), "unhealthy upstream skipped");
        assert!(health.admits(1));

        health.upstream(1).record(false, &opts);
        health.update_panic("s");
        assert!(health.admits(0) && health.admits(1), "panic: all admitted");

        health.upstream(1).record(true, &opts);
        health.update_panic("s");
        assert!(
            !health.admits(0),
            "panic over: the unhealthy one is skipped again"
        );
        assert!(health.admits(1));

        // Carried over with every upstream unhealthy: in panic mode from the start.
        let both_down = ServiceHealth::new(
            opts,
            Box::new([health.upstream(0).clone(), health.upstream(0).clone()]),
            Some(&health),
        );
        assert!(both_down.admits(0));
    }

    #[test]
    fn delay_is_interval_plus_a_bounded_jitter() {
        let interval = Duration::from_millis(200);
        for _ in 0..100 {
            let d = next_delay(interval);
            assert!(d >= interval && d < interval + interval / 10, "{d:?}");
        }
        let floor = next_delay(Duration::ZERO);
        assert!(floor >= Duration::from_millis(1) && floor < Duration::from_micros(1100));
    }
}
