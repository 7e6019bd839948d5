//! Metrics for `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus does), the
//! Prometheus text format otherwise.
//!
//! Each scrape builds a fresh [`Registry`] (prefix `snakeway`): the families below are
//! computed at scrape time from the running snapshot and the process state, so they cost
//! nothing per request; then [`recorded::register`] adds the families recorded on the request
//! path.

mod exposition;
pub(crate) mod recorded;

use std::time::UNIX_EPOCH;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use snakeway_proxy::CircuitState;

use crate::state::State;

/// Labels of the per-upstream families.
type UpstreamLabels = [(&'static str, String); 2];

/// Every circuit state, for `snakeway_upstream_circuit_state`.
const CIRCUIT_STATES: [CircuitState; 3] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
];

/// One scrape: every family, encoded in OpenMetrics if `accept` asks for it, else in the text
/// format; with the content type to send.
pub(crate) fn scrape(state: &State, accept: Option<&[u8]>) -> (String, &'static str) {
    let openmetrics = encode_openmetrics(state);
    if exposition::wants_openmetrics(accept) {
        (openmetrics, exposition::OPENMETRICS)
    } else {
        (
            exposition::to_text_format(&openmetrics),
            exposition::TEXT_FORMAT,
        )
    }
}

/// Every family, in OpenMetrics.
fn encode_openmetrics(state: &State) -> String {
    let mut registry = Registry::with_prefix("snakeway");
    register_process(&mut registry, state);
    register_upstreams(&mut registry, state);
    recorded::register(&mut registry);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Build info, config epoch, reloads and start time.
fn register_process(registry: &mut Registry, state: &State) {
    let build = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    build
        .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    registry.register(
        "build_info",
        "The running build (always 1; the version is a label)",
        build,
    );

    let epoch = Gauge::<i64>::default();
    epoch.set(i64::try_from(state.snapshot.load().epoch).unwrap_or(i64::MAX));
    registry.register(
        "config_epoch",
        "The configuration epoch: 1 at start, +1 per successful reload",
        epoch,
    );

    let reloads = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    reloads
        .get_or_create(&[("result", "success")])
        .inc_by(load(&state.reloads.succeeded));
    reloads
        .get_or_create(&[("result", "failure")])
        .inc_by(load(&state.reloads.failed));
    registry.register(
        "reloads",
        "Reload attempts (SIGHUP or POST /admin/reload) by result",
        reloads,
    );

    let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    start.set(
        state
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    registry.register(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds",
        start,
    );
}

/// Per upstream: in-flight requests, idle connections, circuit and health. (Its tries by
/// outcome are recorded per request: `snakeway_upstream_requests_total`, in [`recorded`].)
fn register_upstreams(registry: &mut Registry, state: &State) {
    let in_flight = Family::<UpstreamLabels, Gauge>::default();
    let idle = Family::<UpstreamLabels, Gauge>::default();
    let active = Family::<UpstreamLabels, Gauge>::default();
    let healthy = Family::<UpstreamLabels, Gauge>::default();
    let circuit = Family::<[(&'static str, String); 3], Gauge>::default();

    let snapshot = state.snapshot.load();
    for svc in &snapshot.config.services {
        let Some(service) = snapshot.services.get(&svc.name) else {
            continue;
        };
        for u in service.upstreams() {
            let labels = [("service", svc.name.clone()), ("upstream", u.target)];
            in_flight
                .get_or_create(&labels)
                .set(i64::try_from(u.in_flight).unwrap_or(i64::MAX));
            if let Some(n) = u.idle_connections {
                idle.get_or_create(&labels)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            if let Some(n) = u.active_connections {
                active
                    .get_or_create(&labels)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            healthy.get_or_create(&labels).set(i64::from(u.healthy));
            let [service_label, upstream_label] = labels;
            for s in CIRCUIT_STATES {
                let labels = [
                    service_label.clone(),
                    upstream_label.clone(),
                    ("state", s.as_str().to_owned()),
                ];
                circuit.get_or_create(&labels).set(i64::from(u.state == s));
            }
        }
    }
    registry.register(
        "upstream_in_flight_requests",
        "Upstream requests sent and not yet finished",
        in_flight,
    );
    registry.register(
        "upstream_idle_connections",
        "Idle pooled HTTP/1.1 connections to an upstream",
        idle,
    );
    registry.register(
        "upstream_active_connections",
        "Busy HTTP/1.1 connections to an upstream (carrying a request or a WebSocket tunnel)",
        active,
    );
    registry.register(
        "upstream_healthy",
        "Active health-check verdict (1 healthy; always 1 without health checks)",
        healthy,
    );
    registry.register(
        "upstream_circuit_state",
        "Circuit breaker state of an upstream: 1 for its current state, 0 for the others",
        circuit,
    );
}
