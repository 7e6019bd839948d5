//! Turns a validated configuration into the immutable runtime [`Snapshot`]: the router with its
//! typed outcome services, and the per-listener connection settings.
//!
//! A snapshot is built off the hot path (at start and on reload) and swapped in with one store;
//! requests load it once and keep it for their whole life. Upstream pools of services whose
//! upstreams did not change are carried over from the previous snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use snakeway_config::{Config, Problem, Report, RouteTarget};
use snakeway_core::TrustedProxies;
use snakeway_core::pipeline::Pipeline;
use snakeway_core::respond::ErrorDetail;
use snakeway_proxy::{
    CircuitBreakerOptions, HealthCheckOptions, ProxyService, RetryOn, RetryPolicy, ServiceOptions,
    StickyKey, Strategy, Target, UpstreamSpec,
};
use snakeway_synthetic::Synthetic;
use tokio_rustls::TlsAcceptor;

use crate::conn::tls;
use crate::conn::tunnel::{WebSocketCount, WebSockets};
use crate::devices::Purpose;
use crate::route_headers::RouteHeaders;
use crate::router::{HostMatch, Route, Router};
use crate::telemetry::recorded::{ListenerRecorders, RouteRecorders};

/// The whole runtime state of the server, built from one configuration.
pub(crate) struct Snapshot {
    /// Increases by one on every successful reload.
    pub(crate) epoch: u64,
    /// The configuration this snapshot was built from.
    pub(crate) config: Arc<Config>,
    /// The main configuration file (named in problems found while building).
    pub(crate) source: PathBuf,
    pub(crate) router: Router<Routed>,
    /// What requests that match no route (or are refused before routing) record into.
    pub(crate) unrouted: RouteRecorders,
    /// Connection settings per configured listen address.
    pub(crate) listeners: HashMap<SocketAddr, Arc<ListenerRuntime>>,
    /// Upstream services by name (for pool carry-over on reload).
    pub(crate) services: HashMap<String, ProxyService>,
    /// The `[[device]]` pipeline (empty: requests skip it entirely).
    pub(crate) pipeline: Pipeline,
}

/// A route's outcome, its header changes and what its requests record into.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) outcome: Outcome,
    pub(crate) headers: RouteHeaders,
    pub(crate) recorders: RouteRecorders,
}

/// Where a route leads.
pub(crate) enum Outcome {
    /// Forward to an upstream service.
    Service {
        service: ProxyService,
        /// The service's name, shared with request contexts.
        name: Arc<str>,
        strip_prefix: bool,
        /// `websocket = true`: the route's `max_websockets` and open count.
        websockets: Option<WebSockets>,
    },
    /// Answer with a configured response.
    Respond(Synthetic),
    /// Serve files from a directory.
    Static(snakeway_static::StaticFiles),
}

impl Outcome {
    /// The service's name, for a service route.
    pub(crate) fn service_name(&self) -> Option<&Arc<str>> {
        match self {
            Self::Service { name, .. } => Some(name),
            Self::Respond(_) | Self::Static(_) => None,
        }
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Service { service, .. } => write!(f, "Service({})", service.name()),
            Self::Respond(s) => write!(f, "Respond({s:?})"),
            Self::Static(_) => f.write_str("Static"),
        }
    }
}

/// How connections accepted on one listener are served.
pub(crate) struct ListenerRuntime {
    /// The listener's name, for logs.
    pub(crate) name: String,
    /// The TLS acceptor; plain TCP without one.
    pub(crate) tls: Option<TlsAcceptor>,
    /// hyper's HTTP/1.1 connection builder (connections behind the framing guard).
    pub(crate) http1: http1::Builder,
    /// hyper's HTTP/2 connection builder (ALPN h2 or the h2c preface), with its limits.
    pub(crate) h2: http2::Builder<TokioExecutor>,
    /// Whether HTTP/2 is served.
    pub(crate) http2: bool,
    /// `max_header_bytes`, enforced by the HTTP/1 guard (and as HTTP/2's header list size).
    pub(crate) max_header_bytes: usize,
    /// Bounds the TLS handshake, the protocol sniff and hyper's HTTP/1 header read.
    pub(crate) header_read_timeout: Duration,
    /// `idle_timeout_ms`.
    pub(crate) idle_timeout: Duration,
    /// Longest time a response write may make no progress before the connection is dropped.
    pub(crate) send_timeout: Duration,
    /// `max_connections`.
    pub(crate) max_connections: usize,
    /// Longest gap between two reads of a request body (→ 408).
    pub(crate) body_read_timeout: Duration,
    /// Peers whose forwarding headers are kept (checked once per connection).
    pub(crate) trusted_proxies: TrustedProxies,
    /// The epoch of the snapshot it was built for: [`ListenerRuntime::index`] is valid in
    /// that snapshot only.
    pub(crate) epoch: u64,
    /// Its position in the configuration's listeners: the index of its per-route recorders.
    pub(crate) index: usize,
    /// Its connection counts and body bytes.
    pub(crate) recorders: ListenerRecorders,
    /// `redirect_http_to`: the 308 every request on this (plain) listener is answered with.
    pub(crate) redirect: Option<Arc<Synthetic>>,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds a snapshot, reusing what can be reused from `previous`. Fails with a report (e.g.
    /// a certificate that does not parse). For [`Purpose::Check`] no log file is opened (WASM
    /// devices still load through the compilation cache).
    pub(crate) fn build(
        config: Config,
        source: PathBuf,
        epoch: u64,
        previous: Option<&Snapshot>,
        purpose: Purpose,
    ) -> Result<Self, Report> {
        let mut problems = Vec::new();

        let mut services = HashMap::new();
        // Under per_core every worker has its own pool per upstream.
        let worker_pools = match config.server.runtime {
            snakeway_config::Runtime::PerCore => config.server.threads,
            snakeway_config::Runtime::WorkStealing => 0,
        };
        for (i, svc) in config.services.iter().enumerate() {
            let previous = previous.and_then(|p| p.services.get(&svc.name));
            match build_service(svc, previous, worker_pools) {
                Ok(built) => {
                    services.insert(svc.name.clone(), built);
                }
                Err(message) => problems.push(problem(&source, format!("service[{i}]"), message)),
            }
        }

        let listener_names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let outcome = match &route.target {
                RouteTarget::Service(s) if s.websocket && speaks_http2(&config, &s.service) => {
                    problems.push(problem(
                        &source,
                        format!("route[{i}].websocket"),
                        format!(
                            "service {:?} has http2 = true; WebSockets are proxied over \
                             HTTP/1.1 only",
                            s.service
                        ),
                    ));
                    continue;
                }
                RouteTarget::Service(s) => match services.get(&s.service) {
                    Some(service) => Outcome::Service {
                        service: service.clone(),
                        name: s.service.as_str().into(),
                        strip_prefix: s.strip_prefix,
                        websockets: s.websocket.then(|| WebSockets {
                            count: previous
                                .and_then(|p| p.websocket_count(route.host.as_deref(), &route.path))
                                .unwrap_or_default(),
                            max: s.max_websockets as usize,
                        }),
                    },
                    // Unknown services are reported by validation; a failed build was reported above.
                    None => continue,
                },
                RouteTarget::Respond(r) => match synthetic(r) {
                    Ok(s) => Outcome::Respond(s),
                    Err((key, message)) => {
                        problems.push(problem(&source, format!("route[{i}].{key}"), message));
                        continue;
                    }
                },
                RouteTarget::Static(s) => Outcome::Static(snakeway_static::StaticFiles::new(
                    snakeway_static::StaticOptions::new(&s.static_dir)
                        .with_prefix(&route.path)
                        .with_index(s.index.as_deref())
                        .with_directory_listing(s.directory_listing)
                        .with_max_file_size(s.max_file_size)
                        .with_cache_control(s.cache_control.as_deref())
                        .with_compression(snakeway_static::CompressionOptions {
                            gzip: s.compression.gzip,
                            brotli: s.compression.brotli,
                            min_size: s.compression.min_size,
                        })
                        .with_serve_hidden(s.serve_hidden),
                )),
            };
            let name = match &route.host {
                Some(host) => format!("{host}{}", route.path),
                None => route.path.clone(),
            };
            let service = match &route.target {
                RouteTarget::Service(s) => s.service.as_str(),
                _ => "",
            };
            let headers = match RouteHeaders::build(route) {
                Ok(headers) => headers,
                Err((key, message)) => {
                    problems.push(problem(&source, format!("route[{i}].{key}"), message));
                    continue;
                }
            };
            let recorders = RouteRecorders::new(&name, service, listener_names.iter().copied());
            routes.push(Route {
                name: name.into(),
                host: HostMatch::parse(route.host.as_deref()),
                prefix: route.path.clone(),
                target: Routed {
                    outcome,
                    headers,
                    recorders,
                },
            });
        }

        let mut listeners = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(t) => match tls::acceptor(t, l.http2) {
                    Ok(acceptor) => Some(acceptor),
                    Err(message) => {
                        problems.push(problem(&source, format!("listener[{i}].tls"), message));
                        continue;
                    }
                },
                None => None,
            };
            let redirect = match l.redirect_http_to.as_ref().map(https_redirect).transpose() {
                Ok(redirect) => redirect,
                Err(e) => {
                    problems.push(problem(
                        &source,
                        format!("listener[{i}].redirect_http_to"),
                        e.to_string(),
                    ));
                    continue;
                }
            };
            let mut runtime = ListenerRuntime::new(l, tls, epoch, i);
            runtime.redirect = redirect.map(Arc::new);
            listeners.insert(l.listen, Arc::new(runtime));
        }

        let pipeline = match crate::devices::pipeline(&config.devices, &config.wasm, purpose) {
            Ok(pipeline) => pipeline,
            Err(failed) => {
                for (i, (key, message)) in failed {
                    let key = match key {
                        Some(key) => format!("device[{i}].{key}"),
                        None => format!("device[{i}]"),
                    };
                    problems.push(problem(&source, key, message));
                }
                Pipeline::default()
            }
        };
        let pipeline = pipeline.with_error_detail(match config.server.error_detail {
            snakeway_config::ErrorDetail::Minimal => ErrorDetail::Minimal,
            snakeway_config::ErrorDetail::Full => ErrorDetail::Full,
        });

        let unrouted = RouteRecorders::new("", "", listener_names);
        if !problems.is_empty() {
            return Err(Report { problems });
        }
        Ok(Self {
            epoch,
            config: Arc::new(config),
            source,
            router: Router::new(routes),
            unrouted,
            listeners,
            services,
            pipeline,
        })
    }
}

impl Snapshot {
    /// The open-WebSocket count of the websocket route for `host` and `path` exactly, to carry
    /// over to the next snapshot.
    fn websocket_count(&self, host: Option<&str>, path: &str) -> Option<Arc<WebSocketCount>> {
        let host = HostMatch::parse(host);
        let prefix = path.trim_end_matches('/');
        self.router.routes().find_map(|r| match &r.target.outcome {
            Outcome::Service {
                websockets: Some(ws),
                ..
            } if r.host == host && r.prefix == prefix => Some(ws.count.clone()),
            _ => None,
        })
    }
}

/// Whether the service `name` talks HTTP/2 to its upstreams (and so cannot carry an HTTP/1.1
/// upgrade).
fn speaks_http2(config: &Config, name: &str) -> bool {
    config
        .services
        .iter()
        .any(|svc| svc.name == name && svc.http2)
}

/// The synthetic response of a `respond` route, or the key (under the route) and message of
/// what is wrong with it.
fn synthetic(r: &snakeway_config::Respond) -> Result<Synthetic, (String, String)> {
    let mut synthetic = Synthetic::new(r.status, &r.content_type, &r.body).map_err(|e| {
        let key = match e {
            snakeway_synthetic::SyntheticError::BodyPlaceholder(_) => "respond.body",
            _ => "respond",
        };
        (key.to_owned(), e.to_string())
    })?;
    for (name, value) in &r.headers {
        synthetic = synthetic
            .with_header(name, value)
            .map_err(|e| (format!("respond.headers.{name}"), e.to_string()))?;
    }
    Ok(synthetic)
}

/// The answer of a listener with `redirect_http_to`: 308 to the same host, path and query on
/// HTTPS (on `redirect.port` when given).
fn https_redirect(
    redirect: &snakeway_config::HttpsRedirect,
) -> Result<Synthetic, snakeway_synthetic::SyntheticError> {
    let location = match redirect.port {
        None => "https://{host}{path}{query}".to_owned(),
        Some(port) => format!("https://{{host}}:{port}{{path}}{{query}}"),
    };
    Synthetic::new(308, "text/plain; charset=utf-8", "")?.with_header("location", &location)
}

fn problem(source: &Path, key: String, message: String) -> Problem {
    Problem {
        file: source.to_owned(),
        key,
        message,
    }
}

fn build_service(
    svc: &snakeway_config::Service,
    previous: Option<&ProxyService>,
    worker_pools: usize,
) -> Result<ProxyService, String> {
    let upstreams = svc
        .upstreams
        .iter()
        .map(|u| {
            Ok(UpstreamSpec {
                target: Target::parse(&u.url).map_err(|e| format!("{}: {e}", u.url))?,
                weight: u.weight,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let strategy = match svc.strategy {
        snakeway_config::Strategy::Failover => Strategy::Failover,
        snakeway_config::Strategy::RoundRobin => Strategy::RoundRobin,
        snakeway_config::Strategy::Random => Strategy::Random,
        snakeway_config::Strategy::LeastRequests => Strategy::LeastRequests,
        snakeway_config::Strategy::StickyHash => Strategy::StickyHash(match &svc.sticky_key {
            Some(snakeway_config::StickyKey::Header(name)) => StickyKey::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("sticky_key: {name:?} is not a header name"))?,
            ),
            Some(snakeway_config::StickyKey::Cookie(name)) => {
                StickyKey::Cookie(name.as_str().into())
            }
            // Validation requires the key with sticky_hash; client_ip is its only other value.
            Some(snakeway_config::StickyKey::ClientIp) | None => StickyKey::ClientIp,
        }),
    };
    let cb = &svc.circuit_breaker;
    let hc = &svc.health_check;
    let health_check = if hc.enabled {
        Some(HealthCheckOptions {
            path: hc
                .path
                .parse()
                .map_err(|e| format!("health_check.path {:?}: {e}", hc.path))?,
            interval: Duration::from_millis(hc.interval_ms),
            timeout: Duration::from_millis(hc.timeout_ms),
            unhealthy_threshold: hc.unhealthy_threshold,
            healthy_threshold: hc.healthy_threshold,
        })
    } else {
        None
    };
    let options = ServiceOptions {
        strategy,
        http2: svc.http2,
        ca_file: svc.ca_file.clone(),
        connect_timeout: Duration::from_millis(svc.connect_timeout_ms),
        response_timeout: Duration::from_millis(svc.response_timeout_ms),
        read_timeout: Duration::from_millis(svc.read_timeout_ms),
        max_response_header_bytes: svc.max_response_header_bytes,
        circuit_breaker: CircuitBreakerOptions {
            enabled: cb.enabled,
            failure_threshold: cb.failure_threshold,
            open: Duration::from_millis(cb.open_ms),
            half_open_max_requests: cb.half_open_max_requests,
            success_threshold: cb.success_threshold,
            count_5xx: cb.count_5xx,
        },
        health_check,
        retry: svc.retry.as_ref().map(|r| {
            let on = r.on.iter().map(|cond| match cond {
                snakeway_config::RetryOn::ConnectFailure => RetryOn::ConnectFailure,
                snakeway_config::RetryOn::ResetBeforeResponse => RetryOn::ResetBeforeResponse,
                snakeway_config::RetryOn::Status502 => RetryOn::Status502,
                snakeway_config::RetryOn::Status503 => RetryOn::Status503,
                snakeway_config::RetryOn::Status504 => RetryOn::Status504,
            });
            RetryPolicy::new(r.attempts, on, r.budget_percent)
        }),
        worker_pools,
    };
    ProxyService::new(&svc.name, upstreams, options, previous).map_err(|e| e.to_string())
}

// === impl ListenerRuntime ===

/// HTTP/2 flow-control windows we grant a client per stream and per connection: what it may send
/// before a request body is read. The connection window bounds the sum.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes buffered per HTTP/2 stream waiting for the client's window or the socket:
/// with `max_concurrent_streams = 100` at most 6.4 MiB per connection (hyper's default is
/// 400 KiB, 40 MiB per connection).
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// Streams the client may reset before the server has accepted them (rapid reset), and
/// streams the server may reset for the client's errors, before the connection gets GOAWAY.
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Ceiling of the keepalive PING interval and ack timeout that find dead HTTP/2 peers.
const H2_KEEPALIVE_MAX: Duration = Duration::from_secs(30);

impl ListenerRuntime {
    fn new(
        l: &snakeway_config::Listener,
        tls: Option<TlsAcceptor>,
        epoch: u64,
        index: usize,
    ) -> Self {
        let header_read_timeout = Duration::from_millis(l.header_read_timeout_ms);
        let idle_timeout = Duration::from_millis(l.idle_timeout_ms);
        let send_timeout = Duration::from_millis(l.send_timeout_ms);
        let max_buf = l.max_header_bytes.max(8192); // hyper's floor; `StrictH1` enforces smaller limits
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(max_buf)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(l.max_concurrent_streams)
            .max_header_list_size(u32::try_from(l.max_header_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .adaptive_window(false)
            .max_send_buf_size(H2_MAX_SEND_BUF)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            // PINGs find dead peers while streams are open; an idle connection is closed by
            // the connection watch, whose clock PINGs do not reset.
            .keep_alive_interval(idle_timeout.min(H2_KEEPALIVE_MAX))
            .keep_alive_timeout(send_timeout.min(H2_KEEPALIVE_MAX));
        Self {
            name: l.name.clone(),
            tls,
            http1,
            h2,
            http2: l.http2,
            max_header_bytes: l.max_header_bytes,
            header_read_timeout,
            idle_timeout,
            send_timeout,
            max_connections: l.max_connections,
            body_read_timeout: Duration::from_millis(l.body_read_timeout_ms),
            trusted_proxies: TrustedProxies::new(l.trusted_proxies.iter().copied()),
            epoch,
            index,
            recorders: ListenerRecorders::new(&l.name),
            redirect: None,
        }
    }
}
