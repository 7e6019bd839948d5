//! The validated config: every default filled in, every relative path resolved.
//!
//! These types are built only by [`crate::load`]; they serialize (for `snakeway config dump`)
//! under the same key names as `snakeway.toml`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer, ser::SerializeMap};

/// The whole, merged configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// Process-wide settings (`[server]`).
    pub server: Server,
    /// The admin API listener (`[admin]`); none without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// Client-facing listeners (`[[listener]]`), main file first, then includes.
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    /// Upstream services (`[[service]]`).
    #[serde(rename = "service")]
    pub services: Vec<Service>,
    /// Routes (`[[route]]`) in config order.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// Devices (`[[device]]`) in pipeline order, including disabled ones.
    #[serde(rename = "device")]
    pub devices: Vec<Device>,
    /// Settings shared by every WASM device (`[wasm]`).
    pub wasm: WasmSettings,
}

/// `[server]`: process-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Server {
    /// Runtime worker threads; default: the number of CPUs.
    pub threads: usize,
    /// Where the pid is written (used by `snakeway reload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Drain time on SIGTERM / SIGINT, in milliseconds (default 10000).
    pub shutdown_grace_ms: u64,
    /// The include globs, as written.
    pub include: Vec<String>,
    /// How much clients are told about failures Snakeway answers itself (default minimal).
    pub error_detail: ErrorDetail,
    /// How the workers run connections (default `work_stealing`).
    pub runtime: Runtime,
}

/// `server.runtime`: how the `threads` workers share the connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// Tokio's multi-threaded runtime: one listener socket per address, connections and
    /// upstream pools shared by every worker, idle workers steal work from busy ones.
    #[default]
    WorkStealing,
    /// Envoy's worker model: each worker a single-threaded runtime on its own thread (pinned
    /// to a core when it can be), with its own `SO_REUSEPORT` listener socket per address and
    /// its own upstream pools; a connection never leaves the worker that accepted it.
    PerCore,
}

impl Runtime {
    /// Every value with its config name.
    pub const ALL: [(&'static str, Self); 2] = [
        ("work_stealing", Self::WorkStealing),
        ("per_core", Self::PerCore),
    ];

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::WorkStealing => "work_stealing",
            Self::PerCore => "per_core",
        }
    }
}

/// `server.error_detail`: what an error page (or a gRPC `grpc-message`) tells the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorDetail {
    /// The status, a short reason and the request id; upstreams, devices and causes go to
    /// the logs only.
    #[default]
    Minimal,
    /// The whole message, naming services, upstreams and devices (for development).
    Full,
}

impl ErrorDetail {
    /// Every value with its config name.
    pub const ALL: [(&'static str, Self); 2] = [("minimal", Self::Minimal), ("full", Self::Full)];
}

/// `[admin]`: the admin API listener.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Admin {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// Bearer token; always present when `listen` is not a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `[[listener]]`: one client-facing socket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    /// Name for logs and metrics; default `listener-<index>`.
    pub name: String,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Offer HTTP/2 (ALPN h2 on TLS, prior-knowledge h2c on plain); default true.
    pub http2: bool,
    /// Largest request head accepted, in bytes; beyond it 431 (default 65536).
    pub max_header_bytes: usize,
    /// Time allowed to send the request head (default 10000).
    pub header_read_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this (default 60000).
    pub idle_timeout_ms: u64,
    /// Open connections beyond this wait in the accept queue (default 10000).
    pub max_connections: usize,
    /// A response write (HTTP/1, or HTTP/2 streams) that makes no progress this long drops the
    /// connection (default 60000).
    pub send_timeout_ms: u64,
    /// HTTP/2 streams open at once per connection (default 100).
    pub max_concurrent_streams: u32,
    /// Longest gap between two reads of a request body, else 408 and the connection closes;
    /// the client's fault, never counted against an upstream (default 60000).
    pub body_read_timeout_ms: u64,
    /// Peers (proxies in front) whose `x-forwarded-*`, `forwarded` and `x-real-ip` are kept and
    /// appended to; from any other peer they are replaced (default: none).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TLS settings; plain TCP without them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// `redirect_http_to`: every request on this plain listener is answered with a 308 to the
    /// same URL on HTTPS (never on a TLS listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_http_to: Option<HttpsRedirect>,
}

/// `redirect_http_to = "https"` or `"https:PORT"`: where a plain listener sends its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpsRedirect {
    /// The HTTPS port written into `location`; `None`: no port (443).
    pub port: Option<u16>,
}

impl Serialize for HttpsRedirect {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.port {
            None => s.serialize_str("https"),
            Some(port) => s.collect_str(&format_args!("https:{port}")),
        }
    }
}

/// `[listener.tls]`: the default certificate plus SNI-selected ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tls {
    /// PEM certificate chain (an existing file).
    pub cert: PathBuf,
    /// PEM private key (an existing file).
    pub key: PathBuf,
    /// Certificates chosen by SNI host name, before falling back to `cert`.
    pub sni: Vec<SniCert>,
}

/// `[[listener.tls.sni]]`: a certificate for some host names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SniCert {
    /// Lower-cased host names, exact or `*.suffix`.
    pub hosts: Vec<String>,
    /// PEM certificate chain (an existing file).
    pub cert: PathBuf,
    /// PEM private key (an existing file).
    pub key: PathBuf,
}

/// `[[service]]`: a named group of upstreams.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Load-balancing strategy (default round_robin).
    pub strategy: Strategy,
    /// What `sticky_hash` hashes; present exactly when the strategy is `sticky_hash`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<StickyKey>,
    /// At least one upstream.
    pub upstreams: Vec<Upstream>,
    /// Prior-knowledge HTTP/2 to plain upstreams (default false).
    pub http2: bool,
    /// Trust roots for https upstreams (an existing file); default: the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Connect timeout (default 2000).
    pub connect_timeout_ms: u64,
    /// Time from the request fully sent until the response head arrives, else 504
    /// (default 30000).
    pub response_timeout_ms: u64,
    /// Longest gap between two reads of an upstream response body, else the client response
    /// is aborted and the upstream blamed (default 60000).
    pub read_timeout_ms: u64,
    /// Largest upstream response head, in bytes, else 502 (default 65536).
    pub max_response_header_bytes: usize,
    /// Per-upstream circuit breaker.
    pub circuit_breaker: CircuitBreaker,
    /// Active health probes.
    pub health_check: HealthCheck,
    /// Explicit retries; `None` (no `[service.retry]` table): a failed request is never sent
    /// again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// How a service picks an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first healthy upstream, in config order.
    Failover,
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random choice.
    Random,
    /// The upstream with the fewest requests in flight.
    LeastRequests,
    /// A consistent hash of [`StickyKey`].
    StickyHash,
}

/// What the `sticky_hash` strategy hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyKey {
    /// The client address (after the identity device, if any).
    ClientIp,
    /// A request header (lower-cased name), from `header:<name>`.
    Header(String),
    /// A cookie, from `cookie:<name>`.
    Cookie(String),
}

impl Serialize for StickyKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::ClientIp => s.serialize_str("client_ip"),
            Self::Header(name) => s.collect_str(&format_args!("header:{name}")),
            Self::Cookie(name) => s.collect_str(&format_args!("cookie:{name}")),
        }
    }
}

/// One upstream of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Upstream {
    /// `http://host[:port]`, `https://host[:port]` (scheme and host lower-cased, no path) or
    /// `unix:/absolute/path`.
    pub url: String,
    /// Relative weight, at least 1 (default 1).
    pub weight: u32,
}

/// `[service.circuit_breaker]`: per-upstream failure tracking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CircuitBreaker {
    /// Whether the breaker trips at all (default true).
    pub enabled: bool,
    /// Consecutive failures that open the circuit (default 5).
    pub failure_threshold: u32,
    /// Time the circuit stays open before probing (default 10000).
    pub open_ms: u64,
    /// Requests let through while half-open (default 1).
    pub half_open_max_requests: u32,
    /// Successes while half-open that close the circuit (default 2).
    pub success_threshold: u32,
    /// Whether a 5xx response counts as a failure (default true).
    pub count_5xx: bool,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            open_ms: 10_000,
            half_open_max_requests: 1,
            success_threshold: 2,
            count_5xx: true,
        }
    }
}

/// `[service.health_check]`: active probes, off unless enabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Whether probes run (default false).
    pub enabled: bool,
    /// Path probed with GET (default `/healthz`).
    pub path: String,
    /// Time between probes (default 5000).
    pub interval_ms: u64,
    /// Probe timeout (default 1000).
    pub timeout_ms: u64,
    /// Failed probes that mark an upstream unhealthy (default 3).
    pub unhealthy_threshold: u32,
    /// Passed probes that mark it healthy again (default 2).
    pub healthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/healthz".to_owned(),
            interval_ms: 5000,
            timeout_ms: 1000,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// `[service.retry]`: which failed requests are sent again, and how many at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Tries per request, the first included (1-5, default 2).
    pub attempts: u32,
    /// The outcomes that are retried, each once, in the order first written (default
    /// `connect_failure`, `reset_before_response`).
    pub on: Vec<RetryOn>,
    /// Retries in flight at most this share of the service's requests in flight (0-100,
    /// default 20); 3 retries in flight are always allowed, so that a quiet service can still
    /// retry (Envoy's `min_retry_concurrency`).
    pub budget_percent: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::ResetBeforeResponse],
            budget_percent: 20,
        }
    }
}

/// An outcome of a try that `[service.retry]` may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RetryOn {
    /// Connecting failed (refused, timed out, TLS handshake failed): nothing was sent.
    #[serde(rename = "connect_failure")]
    ConnectFailure,
    /// The upstream closed or reset the connection before a response head.
    #[serde(rename = "reset_before_response")]
    ResetBeforeResponse,
    /// The upstream answered 502.
    #[serde(rename = "502")]
    Status502,
    /// The upstream answered 503.
    #[serde(rename = "503")]
    Status503,
    /// The upstream answered 504.
    #[serde(rename = "504")]
    Status504,
}

impl RetryOn {
    /// Every condition with its config name.
    pub const ALL: [(&'static str, Self); 5] = [
        ("connect_failure", Self::ConnectFailure),
        ("reset_before_response", Self::ResetBeforeResponse),
        ("502", Self::Status502),
        ("503", Self::Status503),
        ("504", Self::Status504),
    ];
}

/// `[[route]]`: a path prefix (and optional host) and what serves it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    /// Prefix matched on a segment boundary; starts with `/`.
    pub path: String,
    /// Lower-cased host, exact or `*.suffix`; routes with a host win over those without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What serves matching requests.
    #[serde(flatten)]
    pub target: RouteTarget,
    /// Set on every response of the route (replacing a field of the same name), errors
    /// included; lower-cased names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
    /// Set on the request before it is forwarded (service routes); lower-cased names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub request_headers: BTreeMap<String, String>,
    /// Removed from the request before it is forwarded (service routes); lower-cased.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_request_headers: Vec<String>,
}

/// The one outcome of a route.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RouteTarget {
    /// Proxy to a service.
    Service(ServiceRoute),
    /// Serve files from a directory.
    Static(StaticRoute),
    /// A fixed response.
    Respond(#[serde(serialize_with = "respond_table")] Respond),
}

/// Serializes as `respond = { .. }`, the way it is written in the TOML.
fn respond_table<S: Serializer>(respond: &Respond, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry("respond", respond)?;
    map.end()
}

/// A route to a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRoute {
    /// Name of a configured service.
    pub service: String,
    /// Remove the route's path prefix before forwarding (default false).
    pub strip_prefix: bool,
    /// Allow the WebSocket upgrade (default false).
    pub websocket: bool,
    /// Open WebSockets allowed on this route (default 1000).
    pub max_websockets: u32,
}

/// A route to the static-file handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaticRoute {
    /// Directory served (an existing directory).
    pub static_dir: PathBuf,
    /// File served for a directory (default `index.html`; `index = ""` turns it off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Generate listings for directories without an index (default false).
    pub directory_listing: bool,
    /// Larger files are refused with 404 (default: none, any size is served; files stream
    /// in constant memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
    /// `cache-control` header value, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// On-the-fly compression.
    pub compression: Compression,
    /// Serve dot-files (default false).
    pub serve_hidden: bool,
}

/// Compression settings of a static route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compression {
    /// Offer gzip (default true).
    pub gzip: bool,
    /// Offer brotli (default true).
    pub brotli: bool,
    /// Smaller files are sent as they are (default 1024).
    pub min_size: u64,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            gzip: true,
            brotli: true,
            min_size: 1024,
        }
    }
}

/// A synthetic response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Respond {
    /// Status code, 100–599.
    pub status: u16,
    /// Body (default empty).
    pub body: String,
    /// `content-type` (default `text/plain; charset=utf-8`).
    pub content_type: String,
    /// Further response fields (lower-cased names); values and `body` may hold the
    /// placeholders `{scheme}`, `{host}`, `{path}` and `{query}`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `[[device]]`: one step of the pipeline, by `type`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Device {
    /// `type = "identity"`.
    Identity(IdentityDevice),
    /// `type = "request_filter"`.
    RequestFilter(RequestFilterDevice),
    /// `type = "wasm"`.
    Wasm(WasmDevice),
    /// `type = "structured_logging"`.
    StructuredLogging(LoggingDevice),
    /// `type = "rate_limit"`.
    RateLimit(RateLimitDevice),
}

impl Device {
    /// Whether the device is in the pipeline (`enabled = false` keeps it configured but out).
    pub fn enabled(&self) -> bool {
        match self {
            Self::Identity(d) => d.enabled,
            Self::RequestFilter(d) => d.enabled,
            Self::Wasm(d) => d.enabled,
            Self::StructuredLogging(d) => d.enabled,
            Self::RateLimit(d) => d.enabled,
        }
    }

    /// The device's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Identity(d) => d.name.as_deref(),
            Self::RequestFilter(d) => d.name.as_deref(),
            Self::Wasm(d) => d.name.as_deref(),
            Self::StructuredLogging(d) => d.name.as_deref(),
            Self::RateLimit(d) => Some(&d.name),
        }
    }
}

/// `type = "identity"`: client address, GeoIP and user-agent facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdentityDevice {
    /// In the pipeline (default true).
    pub enabled: bool,
    /// Optional unique name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `X-Forwarded-For` is walked right to left past these (bare IPs become /32 or /128).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// MaxMind-format database (an existing file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_db: Option<PathBuf>,
    /// Parse the user agent (default false).
    pub user_agent: bool,
}

/// `type = "request_filter"`: method, header and size rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestFilterDevice {
    /// In the pipeline (default true).
    pub enabled: bool,
    /// Optional unique name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Non-empty: only these methods (upper-cased).
    pub allow_methods: Vec<String>,
    /// Methods refused (upper-cased).
    pub deny_methods: Vec<String>,
    /// Headers that must be present (lower-cased).
    pub required_headers: Vec<String>,
    /// Headers refused (lower-cased).
    pub deny_headers: Vec<String>,
    /// Non-empty: only these headers may appear (lower-cased).
    pub allow_headers: Vec<String>,
    /// Larger request heads get 431.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Larger bodies get 413, enforced while streaming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// One status (400–599) for every denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_status: Option<u16>,
}

/// `type = "wasm"`: a WebAssembly component.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WasmDevice {
    /// In the pipeline (default true).
    pub enabled: bool,
    /// Required, unique name.
    pub name: Option<String>,
    /// The component (an existing file).
    pub path: PathBuf,
    /// The `config` table, handed to the module once at load, as JSON (TOML datetimes
    /// become strings).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Per hook call; exceeded counts as a failure (default 5).
    pub timeout_ms: u64,
    /// Linear memory cap (default 16 MiB).
    pub memory_limit_bytes: u64,
    /// What a failure does (default closed).
    pub on_failure: FailurePolicy,
    /// This device's instances alive at once (1 to 100000; default: all of `[wasm]
    /// max_instances`). A request beyond it is answered 503, whatever `on_failure` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

/// `[wasm]`: settings shared by every WASM device. The server reads them once, when it loads
/// its first WASM device; a reload does not change them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WasmSettings {
    /// Keep compiled modules on disk, so a restart skips compiling them (default true).
    pub cache: bool,
    /// Where (absolute). Default: `$XDG_CACHE_HOME/snakeway/wasm`, else
    /// `$HOME/.cache/snakeway/wasm`; none when `cache = false` and it is not set, or when
    /// neither variable holds an absolute path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// WASM instances alive at once, over all WASM devices and requests in flight (default
    /// 1000, 1 to 100000): the size of the engine's instance pool, whose address space is
    /// reserved up front. A request that finds the pool full fails the device.
    pub max_instances: u32,
}

impl WasmSettings {
    /// The directory of the compilation cache, when there is one.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref().filter(|_| self.cache)
    }

    /// The default `cache_dir` for these environment values: `$XDG_CACHE_HOME/snakeway/wasm`,
    /// else `$HOME/.cache/snakeway/wasm`; a relative value counts as unset.
    pub fn default_cache_dir(
        xdg_cache_home: Option<&OsStr>,
        home: Option<&OsStr>,
    ) -> Option<PathBuf> {
        fn absolute(value: Option<&OsStr>) -> Option<&Path> {
            value.map(Path::new).filter(|p| p.is_absolute())
        }
        absolute(xdg_cache_home)
            .map(Path::to_owned)
            .or_else(|| absolute(home).map(|home| home.join(".cache")))
            .map(|cache| cache.join("snakeway/wasm"))
    }
}

/// `type = "rate_limit"`: GCRA throttling per key, local or shared through Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimitDevice {
    /// In the pipeline (default true).
    pub enabled: bool,
    /// Required, unique name (metrics, logs, the policy name in the `RateLimit` headers, and
    /// the Redis key prefix `snakeway:rl:NAME:`).
    pub name: String,
    /// What requests are counted by.
    pub key: RateLimitKey,
    /// Requests per period per key, sustained (1 to 1000000).
    pub limit: u32,
    /// The period (default 1000 ms; 1 ms to 1 day).
    pub period_ms: u64,
    /// Requests allowed at once on top of `limit` (default 0; at most 1000000).
    pub burst: u32,
    /// Non-empty: only requests whose path is under one of these prefixes count.
    pub routes: Vec<String>,
    /// Where the buckets are kept (default local).
    pub store: RateLimitStore,
    /// The Redis (`redis://` or `redis+unix://`), with `store = "redis"` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// The longest a request waits for Redis, connecting included (default 5 ms).
    pub redis_timeout_ms: u64,
    /// What a store failure does (default open).
    pub on_store_error: StoreErrorPolicy,
    /// The status of a refusal (default 429; 400–599).
    pub status: u16,
    /// Keys the local store keeps at most, the oldest evicted first (default 1000000).
    pub max_keys: u64,
}

/// What a `rate_limit` device counts requests by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitKey {
    /// `client_ip`: the identity device's client address when it ran earlier, else the peer.
    ClientIp,
    /// `header:NAME` (lower-cased).
    Header(String),
    /// `cookie:NAME`.
    Cookie(String),
    /// `route`: the device's `routes` prefix the path is under (one budget for all without).
    Route,
    /// `attribute:NAME`: a request attribute an earlier device set.
    Attribute(String),
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientIp => f.write_str("client_ip"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Route => f.write_str("route"),
            Self::Attribute(name) => write!(f, "attribute:{name}"),
        }
    }
}

impl Serialize for RateLimitKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Where a `rate_limit` device keeps its buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStore {
    /// In the process, shared by its workers.
    #[default]
    Local,
    /// In Redis, shared by every instance using it.
    Redis,
}

/// What a `rate_limit` device does when its store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorPolicy {
    /// Let the request through.
    #[default]
    Open,
    /// Answer 503.
    Closed,
}

/// What a failing WASM device does to the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Answer 500 for that request.
    #[default]
    Closed,
    /// Skip the device.
    Open,
}

/// `type = "structured_logging"`: one JSON line per chosen phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoggingDevice {
    /// In the pipeline (default true).
    pub enabled: bool,
    /// Optional unique name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where lines go (default stdout).
    pub output: LogOutput,
    /// Phases that log (default `["response"]`); never empty, no repeats.
    pub phases: Vec<LogPhase>,
    /// Log request headers (default false).
    pub include_headers: bool,
    /// Headers logged when `include_headers` (lower-cased); empty: all.
    pub allowed_headers: Vec<String>,
    /// Headers whose values are replaced (lower-cased).
    pub redacted_headers: Vec<String>,
    /// Log identity facts (default true).
    pub include_identity: bool,
    /// Which identity facts (default `["ip", "country", "device", "bot"]`).
    pub identity_fields: Vec<String>,
    /// The writer queue's bound in bytes of queued lines (default 16 MiB, 4096..=1 GiB); a
    /// line that would exceed it is dropped and counted.
    pub queue_bytes: u64,
}

/// Where a logging device writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to and reopened on reload.
    File(PathBuf),
}

impl Serialize for LogOutput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Stdout => s.serialize_str("stdout"),
            Self::Stderr => s.serialize_str("stderr"),
            Self::File(path) => path.serialize(s),
        }
    }
}

/// A pipeline phase a logging device can log at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogPhase {
    /// The request head arrived.
    Request,
    /// Right before the upstream call.
    BeforeProxy,
    /// The upstream response head arrived.
    AfterProxy,
    /// The response is sent.
    Response,
    /// The request failed.
    Error,
}

impl LogPhase {
    /// Every phase with its config name.
    pub const ALL: [(&'static str, Self); 5] = [
        ("request", Self::Request),
        ("before_proxy", Self::BeforeProxy),
        ("after_proxy", Self::AfterProxy),
        ("response", Self::Response),
        ("error", Self::Error),
    ];
}

/// The values allowed in `identity_fields`.
pub const IDENTITY_FIELDS: [&str; 8] = [
    "ip",
    "country",
    "city",
    "asn",
    "device",
    "bot",
    "user_agent",
    "proxy_chain",
];

// === impl Config ===

impl Config {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}
