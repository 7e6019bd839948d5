//! The JSON documents of the admin endpoints, read from the running snapshot.

use serde_json::{Value, json};
use snakeway_config::{Config, Report};

use snakeway_core::metrics::STATUS_CLASSES;

use crate::snapshot::{Outcome, Snapshot};
use crate::state::State;

/// What replaces secrets in `/admin/config`.
const REDACTED: &str = "<redacted>";

/// `GET /admin/health`.
pub(super) fn health(state: &State) -> Value {
    let draining = state.is_draining();
    json!({
        "status": if draining { "draining" } else { "ok" },
        "epoch": state.snapshot.load().epoch,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "draining": draining,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// The snapshot's services in config order, each with its configuration.
fn services_in_order(
    snapshot: &Snapshot,
) -> impl Iterator<Item = (&snakeway_config::Service, &snakeway_proxy::ProxyService)> {
    snapshot
        .config
        .services
        .iter()
        .filter_map(|svc| Some((svc, snapshot.services.get(&svc.name)?)))
}

/// `GET /admin/upstreams`: every service, in config order, with its upstreams.
pub(super) fn upstreams(snapshot: &Snapshot) -> Value {
    let services: Vec<Value> = services_in_order(snapshot)
        .map(|(svc, service)| {
            let checked = svc.health_check.enabled;
            let upstreams: Vec<Value> = service
                .upstreams()
                .map(|u| {
                    json!({
                        "url": u.target,
                        "weight": u.weight,
                        "circuit": u.state.as_str(),
                        "health": match (checked, u.healthy) {
                            (false, _) => "unchecked",
                            (true, true) => "healthy",
                            (true, false) => "unhealthy",
                        },
                        "in_flight": u.in_flight,
                        "idle_connections": u.idle_connections,
                        "active_connections": u.active_connections,
                        "requests": u.requests,
                        "failures": u.failures,
                    })
                })
                .collect();
            json!({
                "name": svc.name,
                "strategy": svc.strategy,
                "upstreams": upstreams,
            })
        })
        .collect();
    json!({ "epoch": snapshot.epoch, "services": services })
}

/// `GET /admin/stats`: per service, its upstreams' counters summed; per route (most specific
/// first, as they are matched), where it leads, its requests by status class over every
/// listener and their mean duration.
pub(super) fn stats(snapshot: &Snapshot) -> Value {
    let services: Vec<Value> = services_in_order(snapshot)
        .map(|(svc, service)| {
            let (mut requests, mut failures, mut in_flight, mut open) = (0u64, 0u64, 0usize, 0);
            for u in service.upstreams() {
                requests += u.requests;
                failures += u.failures;
                in_flight += u.in_flight;
                open += usize::from(u.state != snakeway_proxy::CircuitState::Closed);
            }
            json!({
                "name": svc.name,
                "requests": requests,
                "failures": failures,
                "in_flight": in_flight,
                "upstreams": svc.upstreams.len(),
                "circuits_not_closed": open,
            })
        })
        .collect();
    let routes: Vec<Value> = snapshot
        .router
        .routes()
        .map(|r| {
            let (kind, target) = match &r.target.outcome {
                Outcome::Service { name, .. } => ("service", json!(&**name)),
                Outcome::Static(_) => ("static", Value::Null),
                Outcome::Respond(_) => ("respond", Value::Null),
            };
            let (classes, count, seconds) = r.target.recorders.totals();
            let requests: serde_json::Map<String, Value> = STATUS_CLASSES
                .iter()
                .zip(classes)
                .map(|(class, n)| ((*class).to_owned(), json!(n)))
                .collect();
            let mean_ms = if count == 0 {
                Value::Null
            } else {
                json!(seconds * 1000.0 / count as f64)
            };
            json!({
                "route": &*r.name,
                "kind": kind,
                "service": target,
                "requests": classes.iter().sum::<u64>(),
                "by_status_class": requests,
                "mean_duration_ms": mean_ms,
            })
        })
        .collect();
    json!({ "epoch": snapshot.epoch, "services": services, "routes": routes })
}

/// Words that mark a WASM device `config` entry as a secret (its key, lower-cased, contains
/// one).
const SECRET_WORDS: [&str; 6] = ["secret", "token", "password", "passwd", "credential", "key"];

/// `GET /admin/config`: the merged configuration, as `snakeway config dump --json` prints it,
/// with secrets redacted: the admin token, and in every WASM device's free-form `config`
/// table each entry whose key names a secret (at any depth).
pub(super) fn config(config: &Config) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(token) = value.pointer_mut("/admin/token") {
        *token = Value::String(REDACTED.to_owned());
    }
    if let Some(Value::Array(devices)) = value.get_mut("device") {
        for device in devices {
            if let Some(table) = device.get_mut("config") {
                redact_secrets(table);
            }
            if let Some(Value::String(url)) = device.get_mut("redis_url") {
                *url = redact_userinfo(url);
            }
        }
    }
    value
}

/// A URL with its credentials (`user:password@`) redacted: a rate_limit device's `redis_url`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Replaces every entry of `value` (recursively) whose key names a secret.
fn redact_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| key.contains(w)) {
                    *v = Value::String(REDACTED.to_owned());
                } else {
                    redact_secrets(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// A refused reload: every problem with its file, key and message.
pub(super) fn report(report: &Report) -> Value {
    let problems: Vec<Value> = report
        .problems
        .iter()
        .map(|p| json!({ "file": p.file, "key": p.key, "message": p.message }))
        .collect();
    json!({ "error": "the configuration was refused; the running one stays", "problems": problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_credentials_are_redacted() {
        assert_eq!(
            redact_userinfo("redis://:pw@h:6379/0"),
            format!("redis://{REDACTED}@h:6379/0")
        );
        assert_eq!(redact_userinfo("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact_userinfo("redis+unix:///run/r.sock"),
            "redis+unix:///run/r.sock"
        );
    }

    #[test]
    fn secret_looking_entries_are_redacted_at_any_depth() {
        let mut table = json!({
            "api_key": "k1",
            "nested": { "Password": "p", "list": [{ "jwt_secret": "s" }], "limit": 3 },
            "mode": "strict",
        });
        redact_secrets(&mut table);
        assert_eq!(
            table,
            json!({
                "api_key": REDACTED,
                "nested": { "Password": REDACTED, "list": [{ "jwt_secret": REDACTED }], "limit": 3 },
                "mode": "strict",
            })
        );
    }
}
