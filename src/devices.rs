//! Builds the `[[device]]` pipeline from the configuration: the one place that knows both the
//! TOML schema and the device crates' typed constructors.

use std::sync::Arc;

use http::{HeaderName, Method, StatusCode};
use snakeway_config::Device as DeviceConfig;
use snakeway_core::Device;
use snakeway_core::pipeline::Pipeline;
use snakeway_filter::{FilterOptions, RequestFilter};
use snakeway_identity::{ClientIdentity, GeoIp, Identity, IdentityOptions};
use snakeway_logging::{IdentityExtractor, LogWriter, LoggingOptions, StructuredLogging};

/// Why a device could not be built: the key inside its `[[device]]` entry, if one is to
/// blame, and the reason.
pub(crate) type Failure = (Option<&'static str>, String);

/// The pipeline for `devices` (disabled ones left out), or, per failing entry, its index and
/// what failed.
pub(crate) fn pipeline(devices: &[DeviceConfig]) -> Result<Pipeline, Vec<(usize, Failure)>> {
    let mut built: Vec<Arc<dyn Device>> = Vec::new();
    let mut problems = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        if !device.enabled() {
            continue;
        }
        match build(device) {
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

fn build(device: &DeviceConfig) -> Result<Arc<dyn Device>, Failure> {
    Ok(match device {
        DeviceConfig::Identity(d) => {
            let geoip = match &d.geoip_db {
                Some(path) => Some(GeoIp::open(path).map_err(|e| (Some("geoip_db"), e.to_string()))?),
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
            required_headers: headers(&d.required_headers).map_err(|e| (Some("required_headers"), e))?,
            deny_headers: headers(&d.deny_headers).map_err(|e| (Some("deny_headers"), e))?,
            allow_headers: headers(&d.allow_headers).map_err(|e| (Some("allow_headers"), e))?,
            max_header_bytes: d.max_header_bytes,
            max_body_bytes: d.max_body_bytes,
            deny_status: d
                .deny_status
                .map(|s| {
                    StatusCode::from_u16(s).map_err(|_| (Some("deny_status"), format!("{s} is not a status")))
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
                allowed_headers: headers(&d.allowed_headers).map_err(|e| (Some("allowed_headers"), e))?,
                redacted_headers: headers(&d.redacted_headers).map_err(|e| (Some("redacted_headers"), e))?,
                include_identity: d.include_identity,
                identity: d
                    .include_identity
                    .then(|| identity_extractor(d.identity_fields.clone())),
                ..LoggingOptions::default()
            };
            let writer = LogWriter::open(&output, options.queue_capacity)
                .map_err(|e| (Some("output"), format!("cannot open {output}: {e}")))?;
            Arc::new(StructuredLogging::new(options, writer))
        }
        DeviceConfig::Wasm(_) => return Err((None, "wasm devices are not supported yet".to_owned())),
    })
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

/// The identity fields a logging device includes, read from the identity device's
/// `ClientIdentity` in the request context.
fn identity_extractor(fields: Vec<String>) -> IdentityExtractor {
    Arc::new(move |ctx| {
        let identity = ctx.extensions.get::<Arc<ClientIdentity>>()?;
        let mut all = match serde_json::to_value(&**identity).ok()? {
            serde_json::Value::Object(map) => map,
            _ => return None,
        };
        // `device`, `bot`, `user_agent` live in the nested user-agent record.
        let ua = all.remove("user_agent").and_then(|v| match v {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        });
        let mut out = serde_json::Map::new();
        for field in &fields {
            let value = match field.as_str() {
                "device" | "bot" => ua.as_ref().and_then(|u| u.get(field)).cloned(),
                "user_agent" => ua.clone().map(serde_json::Value::Object),
                other => all.get(other).cloned(),
            };
            out.insert(field.clone(), value.unwrap_or(serde_json::Value::Null));
        }
        Some(out)
    })
}
