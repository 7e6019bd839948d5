//! Builds the `[[device]]` pipeline from the configuration: the one place that knows both the
//! TOML schema and the device crates' typed constructors.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use snakeway_config::{
    Config, Device as DeviceConfig, RateLimitDevice, RateLimitKey, RateLimitStore,
    StoreErrorPolicy, WasmSettings,
};
use snakeway_core::Device;
use snakeway_core::pipeline::Pipeline;
use snakeway_filter::{FilterOptions, RequestFilter};
use snakeway_identity::{ClientIdentity, GeoIp, Identity, IdentityOptions};
use snakeway_logging::{IdentityExtractor, LogWriter, LoggingOptions, StructuredLogging};
use snakeway_ratelimit::{
    LocalStore, OnStoreError, Quota, RateKey, RateLimit, RateLimitOptions, RedisStore, Store,
};

/// What a pipeline is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// To serve: outputs are opened.
    Serve,
    /// For `config check`: outputs are only checked, not created. (WASM devices load as when
    /// serving, so the compilation cache is used and filled.)
    Check,
}

/// Checks, without creating anything, that a log file could be opened: the path is not a
/// directory and its directory exists. A missing directory is not created (as nginx does, and
/// unlike Caddy): `config check` stays free of side effects and agrees with `serve`, and the
/// operator chooses the log directory's owner and mode. The message says what to do.
fn check_output(output: &snakeway_logging::Output) -> Result<(), String> {
    let snakeway_logging::Output::File(path) = output else {
        return Ok(());
    };
    if path.is_dir() {
        return Err(format!(
            "cannot open {output}: it is a directory; name a file inside it"
        ));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(format!(
            "cannot open {output}: the directory {dir} does not exist; create it (mkdir -p {dir}) \
             or log to \"stdout\"",
            dir = dir.display()
        )),
        _ => Ok(()),
    }
}

/// Why a device could not be built: the key inside its `[[device]]` entry, if one is to
/// blame, and the reason.
pub(crate) type Failure = (Option<&'static str>, String);

/// The pipeline for `devices` (disabled ones left out), or, per failing entry, its index and
/// what failed. WASM devices use the process-wide engine (see [`wasm_engine`]).
pub(crate) fn pipeline(
    devices: &[DeviceConfig],
    wasm: &WasmSettings,
    purpose: Purpose,
) -> Result<Pipeline, Vec<(usize, Failure)>> {
    let mut built: Vec<Arc<dyn Device>> = Vec::new();
    let mut problems = Vec::new();
    let mut engine = LazyEngine {
        settings: wasm,
        engine: None,
    };
    for (i, device) in devices.iter().enumerate() {
        if !device.enabled() {
            continue;
        }
        match build(device, purpose, &mut engine) {
            Ok(device) => built.push(device),
            Err(message) => problems.push((i, message)),
        }
    }
    if problems.is_empty() {
        Ok(Pipeline::new(built))
    } else {
        Err(problems)
    }
}

/// The WASM engine of one pipeline build, fetched for its first WASM device.
struct LazyEngine<'a> {
    settings: &'a WasmSettings,
    engine: Option<Result<snakeway_wasm::WasmEngine, String>>,
}

impl LazyEngine<'_> {
    fn get(&mut self) -> Result<snakeway_wasm::WasmEngine, String> {
        self.engine
            .get_or_insert_with(|| wasm_engine(self.settings))
            .clone()
    }
}

/// The process-wide WASM engine. The first configuration that loads a WASM device creates it
/// with its `[wasm]` settings, which stay until the process ends: a later configuration with
/// other settings gets the same engine, and a warning per changed setting that it takes effect
/// at a restart.
fn wasm_engine(settings: &WasmSettings) -> Result<snakeway_wasm::WasmEngine, String> {
    let cache_dir = settings.cache_dir().map(Path::to_owned);
    let engine = snakeway_wasm::WasmEngine::shared_with(snakeway_wasm::EngineOptions {
        cache_dir: cache_dir.clone(),
        max_instances: settings.max_instances,
        ..snakeway_wasm::EngineOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let running = engine.options().max_instances;
    if running != settings.max_instances {
        tracing::warn!(
            "the WASM instance limit changed ({running} -> {}): it takes effect at the next restart",
            settings.max_instances
        );
    }
    let running = &engine.options().cache_dir;
    if *running != cache_dir {
        let shown = |dir: &Option<std::path::PathBuf>| {
            dir.as_ref()
                .map_or_else(|| "none".to_owned(), |d| d.display().to_string())
        };
        tracing::warn!(
            "the WASM compilation cache changed ({} -> {}): it takes effect at the next restart",
            shown(running),
            shown(&cache_dir)
        );
    }
    Ok(engine)
}

/// What `config check` warns about without failing: a compilation cache the server would run
/// without. Only asked when a WASM device is enabled, as only then is an engine created.
pub(crate) fn warnings(config: &Config) -> Vec<String> {
    let wasm = config
        .devices
        .iter()
        .any(|d| d.enabled() && matches!(d, DeviceConfig::Wasm(_)));
    if !wasm {
        return Vec::new();
    }
    match wasm_engine(&config.wasm) {
        Ok(engine) => engine
            .disk_cache_error()
            .map(|e| {
                format!("wasm.cache_dir: {e}; WASM components would be compiled at every start")
            })
            .into_iter()
            .collect(),
        // Reported as a problem of the devices already.
        Err(_) => Vec::new(),
    }
}

fn build(
    device: &DeviceConfig,
    purpose: Purpose,
    engine: &mut LazyEngine<'_>,
) -> Result<Arc<dyn Device>, Failure> {
    Ok(match device {
        DeviceConfig::Identity(d) => {
            let geoip = match &d.geoip_db {
                Some(path) => {
                    Some(GeoIp::open(path).map_err(|e| (Some("geoip_db"), e.to_string()))?)
                }
                None => None,
            };
            Arc::new(Identity::new(IdentityOptions {
                trusted_proxies: d.trusted_proxies.clone(),
                geoip,
                user_agent: d.user_agent,
            }))
        }
        DeviceConfig::RequestFilter(d) => Arc::new(RequestFilter::new(FilterOptions {
            allow_methods: methods(&d.allow_methods).map_err(|e| (Some("allow_methods"), e))?,
            deny_methods: methods(&d.deny_methods).map_err(|e| (Some("deny_methods"), e))?,
            required_headers: headers(&d.required_headers)
                .map_err(|e| (Some("required_headers"), e))?,
            deny_headers: headers(&d.deny_headers).map_err(|e| (Some("deny_headers"), e))?,
            allow_headers: headers(&d.allow_headers).map_err(|e| (Some("allow_headers"), e))?,
            max_header_bytes: d.max_header_bytes,
            max_body_bytes: d.max_body_bytes,
            deny_status: d
                .deny_status
                .map(|s| {
                    StatusCode::from_u16(s)
                        .map_err(|_| (Some("deny_status"), format!("{s} is not a status")))
                })
                .transpose()?,
        })),
        DeviceConfig::StructuredLogging(d) => {
            let output = match &d.output {
                snakeway_config::LogOutput::Stdout => snakeway_logging::Output::Stdout,
                snakeway_config::LogOutput::Stderr => snakeway_logging::Output::Stderr,
                snakeway_config::LogOutput::File(path) => {
                    snakeway_logging::Output::File(path.clone())
                }
            };
            let options = LoggingOptions {
                output: output.clone(),
                phases: d.phases.iter().map(|p| log_phase(*p)).collect(),
                include_headers: d.include_headers,
                allowed_headers: headers(&d.allowed_headers)
                    .map_err(|e| (Some("allowed_headers"), e))?,
                redacted_headers: headers(&d.redacted_headers)
                    .map_err(|e| (Some("redacted_headers"), e))?,
                include_identity: d.include_identity,
                identity: d
                    .include_identity
                    .then(|| identity_extractor(&d.identity_fields)),
                // Validated to at most 1 GiB.
                queue_bytes: usize::try_from(d.queue_bytes).unwrap_or(usize::MAX),
            };
            check_output(&output).map_err(|why| (Some("output"), why))?;
            let writer = match purpose {
                Purpose::Serve => LogWriter::open(&output, options.queue_bytes),
                Purpose::Check => LogWriter::with_sink(std::io::sink(), 0),
            }
            .map_err(|e| (Some("output"), format!("cannot open {output}: {e}")))?;
            Arc::new(StructuredLogging::new(options, writer))
        }
        DeviceConfig::RateLimit(d) => Arc::new(rate_limit(d, purpose)?),
        DeviceConfig::Wasm(d) => {
            let engine = engine.get().map_err(|e| (None, e))?;
            let limits = snakeway_wasm::WasmLimits {
                timeout: std::time::Duration::from_millis(d.timeout_ms),
                memory_bytes: usize::try_from(d.memory_limit_bytes).unwrap_or(usize::MAX),
                on_failure: match d.on_failure {
                    snakeway_config::FailurePolicy::Closed => snakeway_wasm::FailurePolicy::Closed,
                    snakeway_config::FailurePolicy::Open => snakeway_wasm::FailurePolicy::Open,
                },
                output: snakeway_wasm::OutputLimits::default(),
                max_instances: d.max_instances,
            };
            let config = serde_json::Value::Object(d.config.clone()).to_string();
            let name = d.name.as_deref().unwrap_or("wasm");
            let device = snakeway_wasm::WasmDevice::load(&engine, name, &d.path, &config, limits)
                .map_err(|e| {
                let key = match e.kind() {
                    snakeway_wasm::LoadErrorKind::Limits(_) => None,
                    snakeway_wasm::LoadErrorKind::Init(_) => Some("config"),
                    _ => Some("path"),
                };
                (key, e.to_string())
            })?;
            Arc::new(device)
        }
    })
}

/// A `rate_limit` device. Its store is the one an earlier build made for the same settings
/// when that one is still alive (see [`STORES`]): a reload that leaves the device unchanged
/// keeps its buckets, and its Redis connection.
fn rate_limit(d: &RateLimitDevice, purpose: Purpose) -> Result<RateLimit, Failure> {
    let key = match &d.key {
        RateLimitKey::ClientIp => RateKey::ClientIp,
        RateLimitKey::Header(name) => RateKey::Header(
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (Some("key"), format!("{name:?} is not a header name")))?,
        ),
        RateLimitKey::Cookie(name) => RateKey::Cookie(name.clone()),
        RateLimitKey::Route => RateKey::Route,
        // The attribute map WASM devices (and builtin ones, through `Attributes::of`) write.
        RateLimitKey::Attribute(name) => {
            let name = name.clone();
            RateKey::Custom(Arc::new(move |ctx, _| {
                snakeway_wasm::Attributes::get_from(ctx)?.get(&name)
            }))
        }
    };
    let status = StatusCode::from_u16(d.status)
        .map_err(|_| (Some("status"), format!("{} is not a status", d.status)))?;
    let mut options = RateLimitOptions::new(d.name.clone(), key);
    options.routes = d.routes.clone();
    options.status = status;
    options.on_store_error = match d.on_store_error {
        StoreErrorPolicy::Open => OnStoreError::Open,
        StoreErrorPolicy::Closed => OnStoreError::Closed,
    };
    let store = match purpose {
        Purpose::Serve => STORES.get_or_open(d)?,
        Purpose::Check => open_store(d)?,
    };
    Ok(RateLimit::new(options, store))
}

/// A new store for a `rate_limit` device.
fn open_store(d: &RateLimitDevice) -> Result<Store, Failure> {
    let quota = Quota::new(d.limit, Duration::from_millis(d.period_ms), d.burst)
        .ok_or_else(|| (Some("limit"), "the quota is empty".to_owned()))?;
    Ok(match (d.store, &d.redis_url) {
        (RateLimitStore::Redis, Some(url)) => {
            let store = RedisStore::open(
                quota,
                url,
                format!("snakeway:rl:{}:", d.name),
                Duration::from_millis(d.redis_timeout_ms),
            )
            .map_err(|e| (Some("redis_url"), e.to_string()))?;
            Store::Redis(Arc::new(store))
        }
        (RateLimitStore::Redis, None) => {
            return Err((Some("redis_url"), "missing".to_owned()));
        }
        (RateLimitStore::Local, _) => {
            let max_keys = usize::try_from(d.max_keys).unwrap_or(usize::MAX);
            let gauge = snakeway_ratelimit::metrics::RATE_LIMIT_KEYS.get(&[&d.name]);
            Store::Local(Arc::new(
                LocalStore::new(quota, max_keys).with_key_gauge(gauge),
            ))
        }
    })
}

/// The stores of the `rate_limit` devices being served, by the settings they depend on. Only
/// weak references: a store lives as long as a snapshot's device holds it, so a reload finds
/// the running one, and a device removed for good frees its buckets with the old snapshot.
static STORES: StoreRegistry = StoreRegistry(Mutex::new(BTreeMap::new()));

/// See [`STORES`].
struct StoreRegistry(Mutex<BTreeMap<String, WeakStore>>);

/// A store, not kept alive by the registry.
enum WeakStore {
    Local(Weak<LocalStore>),
    Redis(Weak<RedisStore>),
}

impl WeakStore {
    fn upgrade(&self) -> Option<Store> {
        match self {
            Self::Local(s) => s.upgrade().map(Store::Local),
            Self::Redis(s) => s.upgrade().map(Store::Redis),
        }
    }
}

impl StoreRegistry {
    /// The live store for `d`'s settings, or a new one (remembered).
    fn get_or_open(&self, d: &RateLimitDevice) -> Result<Store, Failure> {
        // Everything the buckets depend on; `routes`, `status` and `on_store_error` do not.
        let id = format!(
            "{}\0{}\0{}\0{}\0{}\0{:?}\0{:?}\0{}\0{}",
            d.name,
            d.key,
            d.limit,
            d.period_ms,
            d.burst,
            d.store,
            d.redis_url,
            d.redis_timeout_ms,
            d.max_keys
        );
        let mut stores = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|_, s| s.upgrade().is_some());
        if let Some(store) = stores.get(&id).and_then(WeakStore::upgrade) {
            return Ok(store);
        }
        let store = open_store(d)?;
        let weak = match &store {
            Store::Local(s) => WeakStore::Local(Arc::downgrade(s)),
            Store::Redis(s) => WeakStore::Redis(Arc::downgrade(s)),
        };
        stores.insert(id, weak);
        Ok(store)
    }
}

fn methods(names: &[String]) -> Result<Vec<Method>, String> {
    names
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("{m:?} is not a method")))
        .collect()
}

fn headers(names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|h| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("{h:?} is not a header name"))
        })
        .collect()
}

fn log_phase(phase: snakeway_config::LogPhase) -> snakeway_logging::LogPhase {
    use snakeway_config::LogPhase as C;
    use snakeway_logging::LogPhase as L;
    match phase {
        C::Request => L::Request,
        C::BeforeProxy => L::BeforeProxy,
        C::AfterProxy => L::AfterProxy,
        C::Response => L::Response,
        C::Error => L::Error,
    }
}

/// One field of `ClientIdentity` a logging device can include.
#[derive(Clone, Copy)]
enum IdentityField {
    Ip,
    Country,
    City,
    Asn,
    Device,
    Bot,
    UserAgent,
    ProxyChain,
}

/// The identity fields a logging device includes, read from the identity device's
/// `ClientIdentity` in the request context. Field names are resolved once, here; a log line
/// reads each value straight from the struct.
fn identity_extractor(names: &[String]) -> IdentityExtractor {
    use serde_json::{Map, Value};
    let fields: Vec<(String, IdentityField)> = names
        .iter()
        .filter_map(|name| {
            let field = match name.as_str() {
                "ip" => IdentityField::Ip,
                "country" => IdentityField::Country,
                "city" => IdentityField::City,
                "asn" => IdentityField::Asn,
                "device" => IdentityField::Device,
                "bot" => IdentityField::Bot,
                "user_agent" => IdentityField::UserAgent,
                "proxy_chain" => IdentityField::ProxyChain,
                // The configuration accepts only the names above.
                _ => return None,
            };
            Some((name.clone(), field))
        })
        .collect();
    Arc::new(move |ctx| {
        let identity = ctx.extensions.get::<Arc<ClientIdentity>>()?;
        let text = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::from(s.as_str()));
        let mut out = Map::with_capacity(fields.len());
        for (name, field) in &fields {
            let value = match field {
                IdentityField::Ip => Value::from(identity.ip.to_string()),
                IdentityField::Country => text(&identity.country),
                IdentityField::City => text(&identity.city),
                IdentityField::Asn => identity.asn.map_or(Value::Null, Value::from),
                IdentityField::Device => identity
                    .device()
                    .map_or(Value::Null, |d| Value::from(d.as_str())),
                IdentityField::Bot => identity
                    .user_agent
                    .as_ref()
                    .map_or(Value::Null, |ua| Value::from(ua.bot)),
                IdentityField::UserAgent => identity
                    .user_agent
                    .as_ref()
                    .and_then(|ua| serde_json::to_value(ua).ok())
                    .unwrap_or(Value::Null),
                IdentityField::ProxyChain => Value::Array(
                    identity
                        .proxy_chain
                        .iter()
                        .map(|ip| Value::from(ip.to_string()))
                        .collect(),
                ),
            };
            out.insert(name.clone(), value);
        }
        Some(out)
    })
}
