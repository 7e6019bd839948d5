//! The metrics recorded per request and per connection, and their exposition.
//!
//! The recorders are the sharded counters and histograms of [`snakeway_core::metrics`]. A
//! snapshot resolves the ones each listener and route records into when it is built
//! ([`ListenerRecorders`], [`RouteRecorders`]), so recording is an index and an atomic add.
//! [`register`] adds one collector that sums them at scrape.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use snakeway_core::metrics::{
    CONNECTIONS_ACCEPTED, CONNECTIONS_OPEN, Counter, Counters, DEVICE_HOOKS, DEVICE_OUTCOMES,
    Family, Gauge, HTTP_RECEIVED_BYTES, HTTP_REQUEST_DURATION, HTTP_REQUESTS, HTTP_SENT_BYTES,
    Histogram, LOG_LINES_DROPPED, STATUS_CLASSES, TLS_FAILURE_REASONS, TLS_HANDSHAKE_FAILURES,
    UPSTREAM_ERROR_KINDS, UPSTREAM_ERRORS, UPSTREAM_OUTCOMES, UPSTREAM_REQUESTS,
    UPSTREAM_RESPONSE_DURATION, Value, WASM_FAILURE_KINDS, WASM_FAILURES, WASM_INSTANCES_CAPACITY,
    WASM_INSTANCES_IN_USE, status_class,
};
use snakeway_ratelimit::metrics::{RATE_LIMIT_KEYS, RATE_LIMIT_OUTCOMES, RATE_LIMIT_REQUESTS};

/// Registers the collector of every recorded family in `registry` (whose prefix, `snakeway`,
/// the names get).
pub(crate) fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Recorded));
}

/// Why a TLS handshake failed (the index of its `reason` label).
#[derive(Clone, Copy, Debug)]
pub(crate) enum TlsFailure {
    /// The handshake failed (protocol, certificate, the client hung up).
    Error = 0,
    /// It did not finish within `header_read_timeout_ms`.
    Timeout = 1,
    /// It was cut short because the listener is at `max_connections`.
    Pressure = 2,
}

/// What one listener records into.
#[derive(Debug)]
pub(crate) struct ListenerRecorders {
    /// Connections accepted.
    pub(crate) accepted: Arc<Counter>,
    /// Connections open.
    pub(crate) open: Arc<Gauge>,
    /// Request body bytes received.
    pub(crate) received: Arc<Counter>,
    /// Response body bytes sent.
    pub(crate) sent: Arc<Counter>,
    tls_failures: Arc<Counters<3>>,
}

// === impl ListenerRecorders ===

impl ListenerRecorders {
    /// The recorders of the listener named `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            accepted: CONNECTIONS_ACCEPTED.get(&[name]),
            open: CONNECTIONS_OPEN.get(&[name]),
            received: HTTP_RECEIVED_BYTES.get(&[name]),
            sent: HTTP_SENT_BYTES.get(&[name]),
            tls_failures: TLS_HANDSHAKE_FAILURES.get(&[name]),
        }
    }

    /// Counts a failed TLS handshake.
    pub(crate) fn tls_failed(&self, why: TlsFailure) {
        self.tls_failures.add(why as usize, 1);
    }
}

/// What requests answered by one route record into (or requests that matched no route).
#[derive(Debug)]
pub(crate) struct RouteRecorders {
    /// Requests by status class, one per listener of the snapshot, by its index.
    requests: Box<[Arc<Counters<5>>]>,
    duration: Arc<Histogram>,
}

// === impl RouteRecorders ===

impl RouteRecorders {
    /// The recorders of route `route` (empty: no route) leading to `service` (empty: not a
    /// service), for the snapshot's `listeners` in index order.
    pub(crate) fn new<'a>(
        route: &str,
        service: &str,
        listeners: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            requests: listeners
                .into_iter()
                .map(|listener| HTTP_REQUESTS.get(&[listener, route, service]))
                .collect(),
            duration: HTTP_REQUEST_DURATION.get(&[route]),
        }
    }

    /// Records a request answered with `status` after `elapsed` on listener `listener` (an
    /// index the snapshot does not have records no count).
    #[inline]
    pub(crate) fn record(&self, listener: usize, status: StatusCode, elapsed: Duration) {
        self.count(listener, status);
        self.duration.observe(elapsed);
    }

    /// Requests answered on this route since its labels were first recorded (the counts carry
    /// over reloads), by status class ([`STATUS_CLASSES`] order) over every listener, and the
    /// number and total seconds of their durations.
    pub(crate) fn totals(&self) -> ([u64; 5], u64, f64) {
        let mut classes = [0u64; 5];
        for requests in &self.requests {
            for (i, class) in classes.iter_mut().enumerate() {
                *class += requests.get(i);
            }
        }
        let duration = self.duration.snapshot();
        (classes, duration.count, duration.sum)
    }

    /// Counts a request answered with `status` on listener `listener`, without a duration (a
    /// request refused before it was read whole).
    #[inline]
    pub(crate) fn count(&self, listener: usize, status: StatusCode) {
        if let Some(requests) = self.requests.get(listener) {
            requests.add(status_class(status), 1);
        }
    }
}

/// Every recorded family, summed at scrape.
#[derive(Debug)]
struct Recorded;

impl Collector for Recorded {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut encoder;
        counters(e, &HTTP_REQUESTS, "status_class", &STATUS_CLASSES)?;
        histograms(e, &HTTP_REQUEST_DURATION)?;
        counter(e, &HTTP_RECEIVED_BYTES)?;
        counter(e, &HTTP_SENT_BYTES)?;
        counter(e, &CONNECTIONS_ACCEPTED)?;
        gauge(e, &CONNECTIONS_OPEN)?;
        counters(e, &TLS_HANDSHAKE_FAILURES, "reason", &TLS_FAILURE_REASONS)?;
        counters(e, &UPSTREAM_REQUESTS, "outcome", &UPSTREAM_OUTCOMES)?;
        histograms(e, &UPSTREAM_RESPONSE_DURATION)?;
        counters(e, &UPSTREAM_ERRORS, "kind", &UPSTREAM_ERROR_KINDS)?;
        counters(e, &DEVICE_HOOKS, "outcome", &DEVICE_OUTCOMES)?;
        gauge(e, &WASM_INSTANCES_IN_USE)?;
        values(e, &WASM_INSTANCES_CAPACITY)?;
        counters(e, &WASM_FAILURES, "kind", &WASM_FAILURE_KINDS)?;
        counter(e, &LOG_LINES_DROPPED)?;
        counters(e, &RATE_LIMIT_REQUESTS, "outcome", &RATE_LIMIT_OUTCOMES)?;
        values(e, &RATE_LIMIT_KEYS)?;
        Ok(())
    }
}

/// The label pairs of one family member.
fn labels<'a>(names: &[&'static str], values: &'a [Arc<str>]) -> Vec<(&'static str, &'a str)> {
    names
        .iter()
        .copied()
        .zip(values.iter().map(|v| &**v))
        .collect()
}

/// A counter family, the way `prometheus-client` encodes counters (OpenMetrics: the family
/// named without `_total`, its samples with it); the exposition turns it into the text format's
/// naming for scrapers that do not ask for OpenMetrics.
fn counter(e: &mut DescriptorEncoder<'_>, family: &Family<Counter>) -> fmt::Result {
    let mut metric = e.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
    let mut result = Ok(());
    family.for_each(|values, c| {
        if result.is_ok() {
            let set = labels(family.labels, values);
            result = metric
                .encode_family(&set)
                .and_then(|mut m| m.encode_counter::<NoLabelSet, _, u64>(&c.get(), None));
        }
    });
    result
}

fn gauge(e: &mut DescriptorEncoder<'_>, family: &Family<Gauge>) -> fmt::Result {
    let mut metric = e.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
    let mut result = Ok(());
    family.for_each(|values, g| {
        if result.is_ok() {
            let set = labels(family.labels, values);
            result = metric
                .encode_family(&set)
                .and_then(|mut m| m.encode_gauge(&g.get()));
        }
    });
    result
}

/// A gauge family of values set at build time; unbounded ones are left out.
fn values(e: &mut DescriptorEncoder<'_>, family: &Family<Value>) -> fmt::Result {
    let mut metric = e.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
    let mut result = Ok(());
    family.for_each(|values, v| {
        if let (Ok(()), Some(v)) = (&result, v.get()) {
            let set = labels(family.labels, values);
            result = metric
                .encode_family(&set)
                .and_then(|mut m| m.encode_gauge(&v));
        }
    });
    result
}

/// A family of counter arrays, each index one value of the last label `name`.
fn counters<const N: usize>(
    e: &mut DescriptorEncoder<'_>,
    family: &Family<Counters<N>>,
    label: &'static str,
    label_values: &[&'static str; N],
) -> fmt::Result {
    let mut metric = e.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
    let mut result = Ok(());
    family.for_each(|values, c| {
        for (i, value) in label_values.iter().enumerate() {
            if result.is_ok() {
                let mut set = labels(family.labels, values);
                set.push((label, value));
                result = metric
                    .encode_family(&set)
                    .and_then(|mut m| m.encode_counter::<NoLabelSet, _, u64>(&c.get(i), None));
            }
        }
    });
    result
}

fn histograms(e: &mut DescriptorEncoder<'_>, family: &Family<Histogram>) -> fmt::Result {
    let mut metric = e.encode_descriptor(family.name, family.help, None, MetricType::Histogram)?;
    let mut result = Ok(());
    family.for_each(|values, h| {
        if result.is_ok() {
            let set = labels(family.labels, values);
            let s = h.snapshot();
            result = metric.encode_family(&set).and_then(|mut m| {
                m.encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)
            });
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition of everything recorded so far in this process.
    fn scrape() -> String {
        let mut registry = Registry::with_prefix("snakeway");
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        super::super::exposition::to_text_format(&text)
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn requests_are_exposed_by_listener_route_service_and_status_class() {
        let route = RouteRecorders::new("/exposed", "api", ["main", "admin"]);
        route.record(0, StatusCode::OK, Duration::from_millis(3));
        route.record(0, StatusCode::CREATED, Duration::from_millis(30));
        route.record(1, StatusCode::BAD_GATEWAY, Duration::from_secs(20));
        route.record(7, StatusCode::OK, Duration::from_millis(1)); // no such listener
        let text = scrape();
        assert_eq!(
            sample(
                &text,
                r#"snakeway_http_requests_total{listener="main",route="/exposed",service="api",status_class="2xx"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"snakeway_http_requests_total{listener="admin",route="/exposed",service="api",status_class="5xx"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"snakeway_http_requests_total{listener="main",route="/exposed",service="api",status_class="4xx"}"#
            ),
            Some("0")
        );
        let duration = "snakeway_http_request_duration_seconds";
        assert_eq!(
            sample(&text, &format!(r#"{duration}_count{{route="/exposed"}}"#)),
            Some("4")
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"{duration}_bucket{{le="0.005",route="/exposed"}}"#)
            ),
            Some("2"),
            "1 ms and 3 ms"
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"{duration}_bucket{{le="+Inf",route="/exposed"}}"#)
            ),
            Some("4")
        );
        assert!(text.contains("# TYPE snakeway_http_request_duration_seconds histogram"));
        assert!(text.contains("# TYPE snakeway_http_requests_total counter"));
        drop(route);
        assert!(
            !scrape().contains(r#"route="/exposed""#),
            "a route no snapshot holds is forgotten"
        );
    }

    #[test]
    fn listener_counts_are_exposed() {
        let listener = ListenerRecorders::new("exposed-listener");
        listener.accepted.inc();
        let _open = listener.open.track();
        listener.received.add(10);
        listener.sent.add(20);
        listener.tls_failed(TlsFailure::Timeout);
        let text = scrape();
        let l = r#"listener="exposed-listener""#;
        assert_eq!(
            sample(
                &text,
                &format!("snakeway_connections_accepted_total{{{l}}}")
            ),
            Some("1")
        );
        assert_eq!(
            sample(&text, &format!("snakeway_connections_open{{{l}}}")),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                &format!("snakeway_http_request_body_received_bytes_total{{{l}}}")
            ),
            Some("10")
        );
        assert_eq!(
            sample(
                &text,
                &format!("snakeway_http_response_body_sent_bytes_total{{{l}}}")
            ),
            Some("20")
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"snakeway_tls_handshake_failures_total{{{l},reason="timeout"}}"#)
            ),
            Some("1")
        );
    }

    /// A snapshot of `toml` (without listeners: they are given here) on listener `listener`.
    fn snapshot(listener: &str, toml: &str) -> Arc<crate::snapshot::Snapshot> {
        let text = format!("[[listener]]\nname = \"{listener}\"\nlisten = \"127.0.0.1:1\"\n{toml}");
        let path = std::path::Path::new("/nonexistent/snakeway.toml");
        let config = snakeway_config::load_str(&text, path).unwrap_or_else(|r| panic!("{r}"));
        let snapshot = crate::snapshot::Snapshot::build(
            config,
            path.to_owned(),
            1,
            None,
            crate::devices::Purpose::Check,
        )
        .unwrap_or_else(|r| panic!("{r}"));
        Arc::new(snapshot)
    }

    async fn send(
        snapshot: &Arc<crate::snapshot::Snapshot>,
        method: http::Method,
        path: &str,
    ) -> StatusCode {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "h")
            .body(snakeway_core::Body::empty())
            .expect("request");
        let downstream = snakeway_proxy::Downstream {
            peer: ([127, 0, 0, 1], 5000).into(),
            tls: false,
            trusted: false,
        };
        crate::session::handle(snapshot.clone(), downstream, 0, None, req)
            .await
            .status()
    }

    #[tokio::test]
    async fn the_handler_records_routed_unrouted_and_upstream_requests() {
        // Port 1 on loopback refuses connections.
        let routes = r#"
[[service]]
name = "rec-refused"
upstreams = [{ url = "http://127.0.0.1:1" }]

[[route]]
path = "/rec-ok"
respond = { status = 200, body = "ok" }

[[route]]
path = "/rec-api"
service = "rec-refused"
"#;
        let plain = snapshot("rec-plain", routes);
        assert_eq!(send(&plain, http::Method::GET, "/rec-ok").await, 200);
        assert_eq!(send(&plain, http::Method::GET, "/rec-ok/x").await, 200);
        assert_eq!(send(&plain, http::Method::GET, "/rec-api").await, 502);
        assert_eq!(send(&plain, http::Method::GET, "/elsewhere").await, 404);
        let devices = format!(
            "{routes}\n[[device]]\ntype = \"request_filter\"\ndeny_methods = [\"DELETE\"]\n"
        );
        let piped = snapshot("rec-piped", &devices);
        assert_eq!(send(&piped, http::Method::GET, "/rec-ok").await, 200);
        let denied = send(&piped, http::Method::DELETE, "/rec-ok").await;
        assert!(denied.is_client_error(), "{denied}");

        let text = scrape();
        let requests = |listener: &str, route: &str, service: &str, class: &str| {
            sample(
                &text,
                &format!(
                    r#"snakeway_http_requests_total{{listener="{listener}",route="{route}",service="{service}",status_class="{class}"}}"#
                ),
            )
            .map(str::to_owned)
        };
        let two = Some("2".to_owned());
        let one = Some("1".to_owned());
        assert_eq!(requests("rec-plain", "/rec-ok", "", "2xx"), two);
        assert_eq!(requests("rec-plain", "/rec-api", "rec-refused", "5xx"), one);
        assert_eq!(requests("rec-plain", "", "", "4xx"), one, "no route: 404");
        assert_eq!(requests("rec-piped", "/rec-ok", "", "2xx"), one);
        assert_eq!(
            requests("rec-piped", "", "", "4xx"),
            one,
            "answered by a device before routing"
        );
        assert_eq!(
            sample(
                &text,
                r#"snakeway_http_request_duration_seconds_count{route="/rec-ok"}"#
            ),
            Some("3")
        );
        assert_eq!(
            sample(
                &text,
                r#"snakeway_upstream_requests_total{service="rec-refused",upstream="http://127.0.0.1:1",outcome="connect_error"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"snakeway_upstream_errors_total{service="rec-refused",kind="connect_refused"}"#
            ),
            Some("1")
        );
        drop((plain, piped));
    }

    /// Request body bytes are counted as a real HTTP/1 connection delivers them (chunked, so
    /// no `content-length` could stand in for the count).
    #[tokio::test]
    async fn request_body_bytes_are_counted_as_read() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = ListenerRecorders::new("counted-bodies");
        let handle = Arc::new(snakeway_core::metrics::CounterHandle::new(
            listener.received.clone(),
        ));
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = server.local_addr().expect("address");
        let serve = tokio::spawn(async move {
            let (stream, _) = server.accept().await.expect("accepts");
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let body = req.map(|b| {
                            snakeway_core::Body::incoming_counted(
                                b,
                                Duration::from_secs(10),
                                &handle,
                            )
                        });
                        let read = body.into_body().collect().await.map(|c| c.to_bytes().len());
                        let answer = format!("{}", read.unwrap_or(0));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            snakeway_core::Body::from(answer),
                        ))
                    }
                });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
        });
        let mut client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        client
            .write_all(
                b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
            .await
            .expect("writes");
        let mut response = String::new();
        client
            .read_to_string(&mut response)
            .await
            .expect("reads the response");
        assert!(response.ends_with("\r\n\r\n11"), "{response}");
        serve.await.expect("server task").expect("connection");
        assert_eq!(listener.received.get(), 11);
    }

    /// The whole exposition, in the text format, passes `promtool check metrics` (from the
    /// Prometheus package, which `.ci/run` installs).
    #[test]
    fn the_exposition_is_valid_prometheus_text() {
        let route = RouteRecorders::new("/valid", "", ["main"]);
        route.record(0, StatusCode::NOT_FOUND, Duration::from_millis(2));
        let listener = ListenerRecorders::new("valid");
        listener.accepted.inc();
        let text = scrape();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("snakeway_"), "unprefixed: {line}");
        }
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool (apt-get install prometheus)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writes to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
