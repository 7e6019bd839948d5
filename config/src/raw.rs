//! The serde mirror of `snakeway.toml`.
//!
//! Every key is optional here and unknown keys are rejected; defaults, required keys and
//! cross-checks are applied in `validate`, so that one element can report many problems.
//! Enum-like values stay strings until then, for the same reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) threads: Option<usize>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) shutdown_grace_ms: Option<u64>,
    pub(crate) include: Option<Vec<String>>,
    pub(crate) error_detail: Option<String>,
    pub(crate) runtime: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<String>,
    pub(crate) token: Option<String>,
}

/// `[wasm]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWasmSettings {
    pub(crate) cache: Option<bool>,
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) max_instances: Option<u64>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) http2: Option<bool>,
    pub(crate) max_header_bytes: Option<usize>,
    pub(crate) header_read_timeout_ms: Option<u64>,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) send_timeout_ms: Option<u64>,
    pub(crate) max_concurrent_streams: Option<u32>,
    pub(crate) body_read_timeout_ms: Option<u64>,
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) tls: Option<RawTls>,
    pub(crate) redirect_http_to: Option<String>,
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) sni: Option<Vec<RawSni>>,
}

/// `[[listener.tls.sni]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSni {
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) name: Option<String>,
    pub(crate) strategy: Option<String>,
    pub(crate) sticky_key: Option<String>,
    pub(crate) upstreams: Option<Vec<RawUpstream>>,
    pub(crate) http2: Option<bool>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) connect_timeout_ms: Option<u64>,
    pub(crate) response_timeout_ms: Option<u64>,
    pub(crate) read_timeout_ms: Option<u64>,
    pub(crate) max_response_header_bytes: Option<u64>,
    pub(crate) circuit_breaker: Option<RawCircuitBreaker>,
    pub(crate) health_check: Option<RawHealthCheck>,
    pub(crate) retry: Option<RawRetry>,
}

/// One entry of `upstreams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) url: Option<String>,
    pub(crate) weight: Option<u32>,
}

/// `[service.circuit_breaker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCircuitBreaker {
    pub(crate) enabled: Option<bool>,
    pub(crate) failure_threshold: Option<u32>,
    pub(crate) open_ms: Option<u64>,
    pub(crate) half_open_max_requests: Option<u32>,
    pub(crate) success_threshold: Option<u32>,
    pub(crate) count_5xx: Option<bool>,
}

/// `[service.health_check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub(crate) enabled: Option<bool>,
    pub(crate) path: Option<String>,
    pub(crate) interval_ms: Option<u64>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) unhealthy_threshold: Option<u32>,
    pub(crate) healthy_threshold: Option<u32>,
}

/// `[service.retry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) attempts: Option<u32>,
    pub(crate) on: Option<Vec<String>>,
    pub(crate) budget_percent: Option<u32>,
}

/// `[[route]]`: the keys of all three targets, sorted out in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) path: Option<String>,
    pub(crate) host: Option<String>,
    // service target
    pub(crate) service: Option<String>,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) websocket: Option<bool>,
    pub(crate) max_websockets: Option<u32>,
    // static target
    pub(crate) static_dir: Option<PathBuf>,
    pub(crate) index: Option<String>,
    pub(crate) directory_listing: Option<bool>,
    pub(crate) max_file_size: Option<u64>,
    pub(crate) cache_control: Option<String>,
    pub(crate) compression: Option<RawCompression>,
    pub(crate) serve_hidden: Option<bool>,
    // respond target
    pub(crate) respond: Option<RawRespond>,
    // headers, any target
    pub(crate) response_headers: Option<BTreeMap<String, String>>,
    pub(crate) request_headers: Option<BTreeMap<String, String>>,
    pub(crate) remove_request_headers: Option<Vec<String>>,
}

/// `compression = { .. }` of a static route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompression {
    pub(crate) gzip: Option<bool>,
    pub(crate) brotli: Option<bool>,
    pub(crate) min_size: Option<u64>,
}

/// `respond = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub(crate) status: Option<u64>,
    pub(crate) body: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) headers: Option<BTreeMap<String, String>>,
}

/// A `[[device]]`, dispatched on its `type` key by `parse`.
#[derive(Debug)]
pub(crate) enum RawDevice {
    Identity(RawIdentity),
    RequestFilter(RawRequestFilter),
    Wasm(RawWasm),
    StructuredLogging(RawLogging),
    RateLimit(RawRateLimit),
}

/// The `type` values, in the order error messages list them.
pub(crate) const DEVICE_TYPES: [&str; 5] = [
    "identity",
    "request_filter",
    "wasm",
    "structured_logging",
    "rate_limit",
];

/// `type = "identity"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub(crate) enabled: Option<bool>,
    pub(crate) name: Option<String>,
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) geoip_db: Option<PathBuf>,
    pub(crate) user_agent: Option<bool>,
}

/// `type = "request_filter"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequestFilter {
    pub(crate) enabled: Option<bool>,
    pub(crate) name: Option<String>,
    pub(crate) allow_methods: Option<Vec<String>>,
    pub(crate) deny_methods: Option<Vec<String>>,
    pub(crate) required_headers: Option<Vec<String>>,
    pub(crate) deny_headers: Option<Vec<String>>,
    pub(crate) allow_headers: Option<Vec<String>>,
    pub(crate) max_header_bytes: Option<usize>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) deny_status: Option<u64>,
}

/// `type = "wasm"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWasm {
    pub(crate) enabled: Option<bool>,
    pub(crate) name: Option<String>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) config: Option<toml::Table>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) memory_limit_bytes: Option<u64>,
    pub(crate) on_failure: Option<String>,
    pub(crate) max_instances: Option<u64>,
}

/// `type = "structured_logging"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogging {
    pub(crate) enabled: Option<bool>,
    pub(crate) name: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) phases: Option<Vec<String>>,
    pub(crate) include_headers: Option<bool>,
    pub(crate) allowed_headers: Option<Vec<String>>,
    pub(crate) redacted_headers: Option<Vec<String>>,
    pub(crate) include_identity: Option<bool>,
    pub(crate) identity_fields: Option<Vec<String>>,
    pub(crate) queue_bytes: Option<u64>,
}

/// `type = "rate_limit"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) enabled: Option<bool>,
    pub(crate) name: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) limit: Option<u64>,
    pub(crate) period_ms: Option<u64>,
    pub(crate) burst: Option<u64>,
    pub(crate) routes: Option<Vec<String>>,
    pub(crate) store: Option<String>,
    pub(crate) redis_url: Option<String>,
    pub(crate) redis_timeout_ms: Option<u64>,
    pub(crate) on_store_error: Option<String>,
    pub(crate) status: Option<u64>,
    pub(crate) max_keys: Option<u64>,
}

/// Where an element came from: index into [`RawConfig::files`].
pub(crate) type FileId = usize;

/// A file that contributed to the config.
#[derive(Debug)]
pub(crate) struct SourceFile {
    /// Shown in problems: the main file as given, included files as found.
    pub(crate) name: PathBuf,
    /// Absolute directory that relative paths in this file resolve against.
    pub(crate) dir: PathBuf,
}

/// One array element. `raw` is `None` when it did not deserialize (that problem is already
/// reported); it still takes its index so later indices stay right. `name` is its `name` key
/// when that is a string, even if the rest failed, so references to it are not reported twice.
#[derive(Debug)]
pub(crate) struct Item<T> {
    pub(crate) file: FileId,
    pub(crate) raw: Option<T>,
    pub(crate) name: Option<String>,
}

/// Everything read from the main file and its includes, before validation.
#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub(crate) files: Vec<SourceFile>,
    /// `[server]` of the main file (default when absent).
    pub(crate) server: Option<RawServer>,
    /// `[admin]` of the main file.
    pub(crate) admin: Option<RawAdmin>,
    /// `[wasm]` of the main file (default when absent).
    pub(crate) wasm: Option<RawWasmSettings>,
    pub(crate) listeners: Vec<Item<RawListener>>,
    pub(crate) services: Vec<Item<RawService>>,
    pub(crate) routes: Vec<Item<RawRoute>>,
    pub(crate) devices: Vec<Item<RawDevice>>,
}
