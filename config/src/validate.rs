//! [`RawConfig`] into [`Config`]: defaults, path resolution and every check.
//!
//! Nothing here stops at the first problem. An element that cannot be built (a required key is
//! missing or unusable) is left out of the result, which is thrown away when any problem was
//! reported anyway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::model::*;
use crate::raw::*;
use crate::report::Problems;
use crate::suggest::did_you_mean;

const TARGETS: &str = "exactly one of service, static_dir or respond";

// The range of every integer key: `config check` refuses anything outside, so no value can
// overflow or exhaust something at start or reload.

/// Every `*_ms` timeout and period: 1 ms to one day.
const TIMEOUT_MS: RangeInclusive<u64> = 1..=86_400_000;
/// `server.shutdown_grace_ms`: 0 (close at once) to one day.
const GRACE_MS: RangeInclusive<u64> = 0..=86_400_000;
/// `server.threads`.
const THREADS: RangeInclusive<usize> = 1..=1024;
/// `listener.max_header_bytes`: at least a realistic request head, at most 1 MiB.
const HEADER_BYTES: RangeInclusive<usize> = 1024..=1_048_576;
/// `listener.max_connections` (tokio's semaphore holds at most `usize::MAX >> 3` permits).
const CONNECTIONS: RangeInclusive<usize> = 1..=1_000_000;
/// `upstreams[].weight`.
const WEIGHT: RangeInclusive<u32> = 1..=1000;
/// Circuit-breaker and health-check thresholds and the half-open request allowance.
const THRESHOLD: RangeInclusive<u32> = 1..=1000;
/// `retry.attempts`: tries per request, the first included.
const ATTEMPTS: RangeInclusive<u32> = 1..=5;
/// `retry.budget_percent`.
const PERCENT: RangeInclusive<u32> = 0..=100;
/// `route.max_websockets`.
const WEBSOCKETS: RangeInclusive<u32> = 1..=1_000_000;
/// Sizes of files and bodies: up to 1 TiB.
const FILE_BYTES: RangeInclusive<u64> = 1..=1_099_511_627_776;
/// `compression.min_size`: 0 (compress everything) to 1 GiB.
const MIN_SIZE: RangeInclusive<u64> = 0..=1_073_741_824;
/// An HTTP status of a configured response.
const STATUS: RangeInclusive<u64> = 100..=599;
/// `request_filter.deny_status`: an error status.
const ERROR_STATUS: RangeInclusive<u64> = 400..=599;
/// `request_filter.max_header_bytes`.
const FILTER_HEADER_BYTES: RangeInclusive<usize> = 1..=1_048_576;
/// `request_filter.max_body_bytes`: 0 (no body at all) to 1 TiB.
const BODY_BYTES: RangeInclusive<u64> = 0..=1_099_511_627_776;
/// A WASM device's `timeout_ms` per hook call: a hook is a function call, not a request.
const WASM_TIMEOUT_MS: RangeInclusive<u64> = 1..=60_000;
/// A WASM device's `memory_limit_bytes`: one WASM page to the engine's 256 MiB per instance.
const WASM_MEMORY: RangeInclusive<u64> = 65_536..=268_435_456;
/// `wasm.max_instances`.
const WASM_INSTANCES: RangeInclusive<u64> = 1..=100_000;
/// A logging device's `queue_bytes`: 4 KiB to 1 GiB.
const LOG_QUEUE_BYTES: RangeInclusive<u64> = 4096..=1_073_741_824;
/// `device[].limit` and `device[].burst` of a rate limit.
const RATE_LIMIT: RangeInclusive<u64> = 1..=1_000_000;
const RATE_BURST: RangeInclusive<u64> = 0..=1_000_000;
/// `device[].period_ms` of a rate limit: 1 ms to a day.
const RATE_PERIOD_MS: RangeInclusive<u64> = 1..=86_400_000;
/// `device[].redis_timeout_ms`.
const REDIS_TIMEOUT_MS: RangeInclusive<u64> = 1..=10_000;
/// `device[].max_keys` of a rate limit.
const RATE_MAX_KEYS: RangeInclusive<u64> = 1..=100_000_000;

/// Checks everything and fills defaults; problems go to `problems`.
pub(crate) fn validate(raw: RawConfig, problems: &mut Problems) -> Config {
    let RawConfig {
        files,
        server,
        admin,
        wasm,
        listeners,
        services,
        routes,
        devices,
    } = raw;
    let main = &files[0];

    let server = build_server(
        &mut Scope::new(main, "server", problems),
        server.unwrap_or_default(),
    );

    // A file that did not parse (syntax error, unreadable) may hold the listeners.
    let unread = problems
        .list
        .iter()
        .any(|p| p.key.is_empty() || p.key.starts_with("line "));
    if listeners.is_empty() && !unread {
        // Nothing would ever be served; nginx and Caddy refuse such a config too.
        problems.push(
            main.name.clone(),
            "listener",
            "no [[listener]]: the server would accept no connection. Add one, e.g. \
             [[listener]] with listen = \"127.0.0.1:8080\"",
        );
    }
    let mut listen_addrs: Vec<(SocketAddr, String)> = Vec::new();
    let mut out_listeners = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, item) in listeners.into_iter().enumerate() {
        let Some(raw) = item.raw else { continue };
        let mut s = Scope::new(&files[item.file], format!("listener[{i}]"), problems);
        let name = raw.name.clone().unwrap_or_else(|| format!("listener-{i}"));
        if name.trim().is_empty() {
            s.bad("name", "is empty");
        } else if let Some(first) = names.insert(name.clone(), i) {
            s.bad(
                "name",
                format!("duplicate listener name {name:?} (also listener[{first}])"),
            );
        }
        if let Some(listener) = build_listener(&mut s, raw, name, &mut listen_addrs) {
            out_listeners.push(listener);
        }
    }

    let admin = admin
        .and_then(|raw| build_admin(&mut Scope::new(main, "admin", problems), raw, &listen_addrs));

    let mut out_services = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // Names routes may use; `None` when some service's name is unknown (it failed to parse).
    let known: Option<Vec<String>> = services.iter().map(|item| item.name.clone()).collect();
    let known = known.map(|mut names| {
        names.sort();
        names.dedup();
        names
    });
    for (i, item) in services.into_iter().enumerate() {
        let Some(raw) = item.raw else { continue };
        let mut s = Scope::new(&files[item.file], format!("service[{i}]"), problems);
        if let Some(name) = &raw.name
            && let Some(first) = names.insert(name.clone(), i)
        {
            s.bad(
                "name",
                format!("duplicate service name {name:?} (also service[{first}])"),
            );
        }
        if let Some(service) = build_service(&mut s, raw) {
            out_services.push(service);
        }
    }

    let mut out_routes = Vec::new();
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    for (i, item) in routes.into_iter().enumerate() {
        let Some(raw) = item.raw else { continue };
        let mut s = Scope::new(&files[item.file], format!("route[{i}]"), problems);
        let Some(route) = build_route(&mut s, raw, known.as_deref()) else {
            continue;
        };
        if let Some(first) = seen.insert((route.host.clone(), route.path.clone()), i) {
            let host = route
                .host
                .as_deref()
                .map_or("no host".to_owned(), |h| format!("host {h:?}"));
            s.bad(
                "path",
                format!(
                    "duplicate route for {host} and path {:?} (also route[{first}])",
                    route.path
                ),
            );
        }
        out_routes.push(route);
    }

    let mut out_devices = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, item) in devices.into_iter().enumerate() {
        let Some(raw) = item.raw else { continue };
        let mut s = Scope::new(&files[item.file], format!("device[{i}]"), problems);
        if let Some(name) = &item.name
            && let Some(first) = names.insert(name.clone(), i)
        {
            s.bad(
                "name",
                format!("duplicate device name {name:?} (also device[{first}])"),
            );
        }
        if let Some(device) = build_device(&mut s, raw) {
            out_devices.push(device);
        }
    }

    let wasm = build_wasm(
        &mut Scope::new(main, "wasm", problems),
        wasm.unwrap_or_default(),
    );

    Config {
        server,
        admin,
        listeners: out_listeners,
        services: out_services,
        routes: out_routes,
        devices: out_devices,
        wasm,
    }
}

// === server, admin, listeners ===

fn build_server(s: &mut Scope<'_>, raw: RawServer) -> Server {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = s.range("threads", raw.threads, cores.min(*THREADS.end()), THREADS);
    Server {
        threads,
        pid_file: raw.pid_file.and_then(|p| s.path("pid_file", &p)),
        shutdown_grace_ms: s.range("shutdown_grace_ms", raw.shutdown_grace_ms, 10_000, GRACE_MS),
        include: raw.include.unwrap_or_default(),
        error_detail: raw
            .error_detail
            .and_then(|text| s.one_of("error_detail", &text, &ErrorDetail::ALL))
            .unwrap_or_default(),
        runtime: raw
            .runtime
            .and_then(|text| s.one_of("runtime", &text, &Runtime::ALL))
            .unwrap_or_default(),
    }
}

fn build_wasm(s: &mut Scope<'_>, raw: RawWasmSettings) -> WasmSettings {
    let cache = raw.cache.unwrap_or(true);
    let cache_dir = match raw.cache_dir {
        Some(dir) => s.path("cache_dir", &dir),
        None if cache => WasmSettings::default_cache_dir(
            std::env::var_os("XDG_CACHE_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        ),
        None => None,
    };
    // In range, so it fits a u32.
    let max_instances = s.range("max_instances", raw.max_instances, 1000, WASM_INSTANCES) as u32;
    WasmSettings {
        cache,
        cache_dir,
        max_instances,
    }
}

fn build_admin(
    s: &mut Scope<'_>,
    raw: RawAdmin,
    listeners: &[(SocketAddr, String)],
) -> Option<Admin> {
    let listen = s.socket_addr("listen", raw.listen);
    if let Some(addr) = listen
        && let Some((_, other)) = listeners.iter().find(|(a, _)| conflicts(*a, addr))
    {
        s.bad("listen", format!("{addr} is already used by {other}"));
    }
    let token = raw.token;
    if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        s.bad("token", "is empty");
    }
    let listen = listen?;
    if token.is_none() && !listen.ip().is_loopback() {
        s.bad(
            "token",
            format!("required when admin.listen ({listen}) is not a loopback address"),
        );
    }
    Some(Admin { listen, token })
}

fn build_listener(
    s: &mut Scope<'_>,
    raw: RawListener,
    name: String,
    seen: &mut Vec<(SocketAddr, String)>,
) -> Option<Listener> {
    let listen = s.socket_addr("listen", raw.listen);
    if let Some(addr) = listen {
        if let Some((_, other)) = seen.iter().find(|(a, _)| conflicts(*a, addr)) {
            s.bad("listen", format!("{addr} is already used by {other}"));
        }
        seen.push((addr, s.prefix.clone()));
    }
    let redirect_http_to = raw
        .redirect_http_to
        .and_then(|text| https_redirect(s, &text, raw.tls.is_some()));
    let tls = match raw.tls {
        None => Some(None),
        Some(tls) => build_tls(s, tls).map(Some),
    };
    Some(Listener {
        name,
        listen: listen?,
        http2: raw.http2.unwrap_or(true),
        max_header_bytes: s.range(
            "max_header_bytes",
            raw.max_header_bytes,
            65_536,
            HEADER_BYTES,
        ),
        header_read_timeout_ms: s.range(
            "header_read_timeout_ms",
            raw.header_read_timeout_ms,
            10_000,
            TIMEOUT_MS,
        ),
        idle_timeout_ms: s.range("idle_timeout_ms", raw.idle_timeout_ms, 60_000, TIMEOUT_MS),
        max_connections: s.range("max_connections", raw.max_connections, 10_000, CONNECTIONS),
        send_timeout_ms: s.range("send_timeout_ms", raw.send_timeout_ms, 60_000, TIMEOUT_MS),
        max_concurrent_streams: s.range(
            "max_concurrent_streams",
            raw.max_concurrent_streams,
            100,
            1..=10_000,
        ),
        body_read_timeout_ms: s.range(
            "body_read_timeout_ms",
            raw.body_read_timeout_ms,
            60_000,
            TIMEOUT_MS,
        ),
        trusted_proxies: ip_nets(s, "trusted_proxies", raw.trusted_proxies),
        tls: tls?,
        redirect_http_to,
    })
}

/// `redirect_http_to`: `"https"` or `"https:PORT"`, on a plain listener only.
fn https_redirect(s: &mut Scope<'_>, text: &str, tls: bool) -> Option<HttpsRedirect> {
    const KEY: &str = "redirect_http_to";
    let redirect = match text.split_once(':') {
        None if text == "https" => Some(HttpsRedirect { port: None }),
        Some(("https", port)) => match port.parse::<u16>() {
            Ok(port) if port != 0 => Some(HttpsRedirect { port: Some(port) }),
            _ => {
                s.bad(
                    KEY,
                    format!("{text:?} has an invalid port {port:?} (1-65535)"),
                );
                return None;
            }
        },
        _ => {
            s.bad(
                KEY,
                format!("unknown value {text:?} (expected \"https\" or \"https:PORT\")"),
            );
            return None;
        }
    };
    if tls {
        s.bad(
            KEY,
            "only allowed on a plain listener (this one has [listener.tls])",
        );
        return None;
    }
    redirect
}

/// Two listen addresses that cannot both be bound. Port 0 (any free port) never conflicts.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn build_tls(s: &mut Scope<'_>, raw: RawTls) -> Option<Tls> {
    let cert = s.existing("tls.cert", raw.cert, Kind::File);
    let key = s.existing("tls.key", raw.key, Kind::File);
    let mut sni = Vec::new();
    for (j, entry) in raw.sni.unwrap_or_default().into_iter().enumerate() {
        let at = format!("tls.sni[{j}]");
        let hosts = match entry.hosts {
            Some(hosts) if !hosts.is_empty() => hosts
                .iter()
                .enumerate()
                .filter_map(|(k, h)| s.host(&format!("{at}.hosts[{k}]"), h))
                .collect(),
            _ => {
                s.bad(&format!("{at}.hosts"), "needs at least one host name");
                Vec::new()
            }
        };
        let cert = s.existing(&format!("{at}.cert"), entry.cert, Kind::File);
        let key = s.existing(&format!("{at}.key"), entry.key, Kind::File);
        if let (Some(cert), Some(key)) = (cert, key) {
            sni.push(SniCert { hosts, cert, key });
        }
    }
    Some(Tls {
        cert: cert?,
        key: key?,
        sni,
    })
}

// === services ===

fn build_service(s: &mut Scope<'_>, raw: RawService) -> Option<Service> {
    let name = s.required("name", raw.name);
    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        s.bad("name", "is empty");
    }
    let strategy = match raw.strategy.as_deref() {
        None => Strategy::default(),
        Some(text) => s.one_of("strategy", text, &STRATEGIES)?,
    };
    let sticky_key = match (strategy, raw.sticky_key) {
        (Strategy::StickyHash, None) => {
            s.bad(
                "sticky_key",
                "required for strategy sticky_hash (client_ip, header:<name> or cookie:<name>)",
            );
            None
        }
        // Accepted (and checked) with any strategy, so switching strategies is a one-line
        // change; only sticky_hash uses it.
        (_, Some(text)) => parse_sticky_key(&text).or_else(|| {
            s.bad(
                "sticky_key",
                format!("{text:?} is not client_ip, header:<name> or cookie:<name>"),
            );
            None
        }),
        (_, None) => None,
    };
    let mut upstreams = Vec::new();
    match raw.upstreams {
        Some(list) if !list.is_empty() => {
            for (j, up) in list.into_iter().enumerate() {
                let at = format!("upstreams[{j}]");
                let url = s.required(&format!("{at}.url"), up.url).and_then(|url| {
                    upstream_url(&url, &s.file.dir)
                        .map_err(|why| s.bad(&format!("{at}.url"), format!("{url:?} {why}")))
                        .ok()
                });
                let weight = s.range(&format!("{at}.weight"), up.weight, 1, WEIGHT);
                if let Some(url) = url {
                    upstreams.push(Upstream { url, weight });
                }
            }
        }
        _ => s.bad("upstreams", "no upstreams: a service needs at least one"),
    }
    let cb = raw.circuit_breaker.unwrap_or_default();
    let d = CircuitBreaker::default();
    let circuit_breaker = CircuitBreaker {
        enabled: cb.enabled.unwrap_or(d.enabled),
        failure_threshold: s.range(
            "circuit_breaker.failure_threshold",
            cb.failure_threshold,
            d.failure_threshold,
            THRESHOLD,
        ),
        open_ms: s.range("circuit_breaker.open_ms", cb.open_ms, d.open_ms, TIMEOUT_MS),
        half_open_max_requests: s.range(
            "circuit_breaker.half_open_max_requests",
            cb.half_open_max_requests,
            d.half_open_max_requests,
            THRESHOLD,
        ),
        success_threshold: s.range(
            "circuit_breaker.success_threshold",
            cb.success_threshold,
            d.success_threshold,
            THRESHOLD,
        ),
        count_5xx: cb.count_5xx.unwrap_or(d.count_5xx),
    };
    let hc = raw.health_check.unwrap_or_default();
    let d = HealthCheck::default();
    let path = hc.path.unwrap_or(d.path);
    if !path.starts_with('/') {
        s.bad("health_check.path", format!("{path:?} must start with '/'"));
    }
    let health_check = HealthCheck {
        enabled: hc.enabled.unwrap_or(d.enabled),
        path,
        interval_ms: s.range(
            "health_check.interval_ms",
            hc.interval_ms,
            d.interval_ms,
            TIMEOUT_MS,
        ),
        timeout_ms: s.range(
            "health_check.timeout_ms",
            hc.timeout_ms,
            d.timeout_ms,
            TIMEOUT_MS,
        ),
        unhealthy_threshold: s.range(
            "health_check.unhealthy_threshold",
            hc.unhealthy_threshold,
            d.unhealthy_threshold,
            THRESHOLD,
        ),
        healthy_threshold: s.range(
            "health_check.healthy_threshold",
            hc.healthy_threshold,
            d.healthy_threshold,
            THRESHOLD,
        ),
    };
    let retry = raw.retry.map(|raw| build_retry(s, raw));
    let ca_file = raw
        .ca_file
        .and_then(|p| s.existing("ca_file", Some(p), Kind::File));
    Some(Service {
        name: name?,
        strategy,
        sticky_key,
        upstreams,
        http2: raw.http2.unwrap_or(false),
        ca_file,
        connect_timeout_ms: s.range(
            "connect_timeout_ms",
            raw.connect_timeout_ms,
            2000,
            TIMEOUT_MS,
        ),
        response_timeout_ms: s.range(
            "response_timeout_ms",
            raw.response_timeout_ms,
            30_000,
            TIMEOUT_MS,
        ),
        read_timeout_ms: s.range("read_timeout_ms", raw.read_timeout_ms, 60_000, TIMEOUT_MS),
        max_response_header_bytes: usize::try_from(s.range(
            "max_response_header_bytes",
            raw.max_response_header_bytes,
            65_536,
            1024..=1_048_576,
        ))
        .unwrap_or(65_536),
        circuit_breaker,
        health_check,
        retry,
    })
}

/// `[service.retry]`, present: its keys or their defaults.
fn build_retry(s: &mut Scope<'_>, raw: RawRetry) -> Retry {
    let d = Retry::default();
    let on = match raw.on {
        None => d.on,
        Some(list) => {
            let mut on = Vec::with_capacity(list.len());
            for (j, text) in list.iter().enumerate() {
                if let Some(cond) = s.one_of(&format!("retry.on[{j}]"), text, &RetryOn::ALL)
                    && !on.contains(&cond)
                {
                    on.push(cond);
                }
            }
            if list.is_empty() {
                s.bad(
                    "retry.on",
                    "names no condition: nothing would be retried (remove [service.retry] instead)",
                );
            }
            on
        }
    };
    Retry {
        attempts: s.range("retry.attempts", raw.attempts, d.attempts, ATTEMPTS),
        on,
        budget_percent: s.range(
            "retry.budget_percent",
            raw.budget_percent,
            d.budget_percent,
            PERCENT,
        ),
    }
}

/// A list of IP networks (CIDR) or single addresses.
fn ip_nets(s: &mut Scope<'_>, key: &str, list: Option<Vec<String>>) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (j, text) in list.unwrap_or_default().iter().enumerate() {
        let net = text.parse::<ipnet::IpNet>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        });
        match net {
            Some(net) => nets.push(net),
            None => s.bad(
                &format!("{key}[{j}]"),
                format!("{text:?} is not an IP network (CIDR like 10.0.0.0/8) or address"),
            ),
        }
    }
    nets
}

const STRATEGIES: [(&str, Strategy); 5] = [
    ("failover", Strategy::Failover),
    ("round_robin", Strategy::RoundRobin),
    ("random", Strategy::Random),
    ("least_requests", Strategy::LeastRequests),
    ("sticky_hash", Strategy::StickyHash),
];

fn parse_sticky_key(text: &str) -> Option<StickyKey> {
    if text == "client_ip" {
        Some(StickyKey::ClientIp)
    } else if let Some(name) = text.strip_prefix("header:") {
        is_token(name).then(|| StickyKey::Header(name.to_ascii_lowercase()))
    } else if let Some(name) = text.strip_prefix("cookie:") {
        is_token(name).then(|| StickyKey::Cookie(name.to_owned()))
    } else {
        None
    }
}

/// Checks an upstream URL; returns it normalized, or why it is wrong (after the quoted URL).
fn upstream_url(url: &str, dir: &Path) -> Result<String, String> {
    const SHAPES: &str = "http://host[:port], https://host[:port] or unix:/path";
    if let Some(path) = url.strip_prefix("unix:") {
        // `unix:///run/x.sock` is common too.
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("has no socket path (unix:/path/to.sock)".to_owned());
        }
        return Ok(format!("unix:{}", dir.join(path).display()));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("is not a valid upstream: use {SHAPES}"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("has unsupported scheme {scheme:?}: use {SHAPES}"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.is_empty() && tail != "/" {
        return Err("must not have a path or query: the upstream is host and port only".to_owned());
    }
    if authority.contains('@') {
        return Err("must not contain user info".to_owned());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| "has an unclosed '['".to_owned())?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("has an invalid IPv6 address {ip:?}"))?;
        (&authority[..ip.len() + 2], after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if !host_ok {
        return Err(format!("has an invalid host {host:?}"));
    }
    if let Some(port) = port
        && !matches!(port.parse::<u16>(), Ok(p) if p != 0)
    {
        return Err(format!("has an invalid port {port:?} (1-65535)"));
    }
    Ok(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

// === routes ===

fn build_route(s: &mut Scope<'_>, mut raw: RawRoute, services: Option<&[String]>) -> Option<Route> {
    let path = s.required("path", raw.path.take());
    if let Some(p) = &path {
        if !p.starts_with('/') {
            s.bad("path", format!("{p:?} must start with '/'"));
        } else if p.contains(['?', '#']) || p.contains(char::is_whitespace) {
            s.bad(
                "path",
                format!("{p:?} must be a plain path (no '?', '#' or whitespace)"),
            );
        }
    }
    let host = raw.host.take().and_then(|h| s.host("host", &h));

    let response_headers = s.header_map("response_headers", raw.response_headers.take(), false);
    let request_headers = s.header_map("request_headers", raw.request_headers.take(), true);
    let remove_request_headers =
        s.header_names("remove_request_headers", raw.remove_request_headers.take());
    for (j, name) in remove_request_headers.iter().enumerate() {
        if let Some(why) = refused_header(name, true) {
            s.bad(&format!("remove_request_headers[{j}]"), why);
        }
    }
    let service_keys = [
        ("strip_prefix", raw.strip_prefix.is_some()),
        ("websocket", raw.websocket.is_some()),
        ("max_websockets", raw.max_websockets.is_some()),
        ("request_headers", !request_headers.is_empty()),
        ("remove_request_headers", !remove_request_headers.is_empty()),
    ];
    let static_keys = [
        ("index", raw.index.is_some()),
        ("directory_listing", raw.directory_listing.is_some()),
        ("max_file_size", raw.max_file_size.is_some()),
        ("cache_control", raw.cache_control.is_some()),
        ("compression", raw.compression.is_some()),
        ("serve_hidden", raw.serve_hidden.is_some()),
    ];
    let given: Vec<&str> = [
        ("service", raw.service.is_some()),
        ("static_dir", raw.static_dir.is_some()),
        ("respond", raw.respond.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect();
    let target = match given.as_slice() {
        [] => {
            s.bad("", format!("needs {TARGETS}"));
            None
        }
        [one] => {
            // Keys of the other targets are mistakes, not silently ignored settings.
            for (key, present) in service_keys {
                if present && *one != "service" {
                    s.bad(key, "only allowed on routes with `service`");
                }
            }
            for (key, present) in static_keys {
                if present && *one != "static_dir" {
                    s.bad(key, "only allowed on routes with `static_dir`");
                }
            }
            match *one {
                "service" => service_target(s, raw, services),
                "static_dir" => static_target(s, raw),
                _ => respond_target(s, raw.respond),
            }
        }
        many => {
            s.bad(
                "",
                format!("has {}: a route needs {TARGETS}", many.join(" and ")),
            );
            None
        }
    };
    Some(Route {
        path: path?,
        host,
        target: target?,
        response_headers,
        request_headers,
        remove_request_headers,
    })
}

/// Why a header named `name` may not be set or removed by configuration: it would break the
/// message's framing (`content-length`, hop-by-hop fields), or, for requests, its routing
/// (`host`). `None` when it may.
fn refused_header(name: &str, request: bool) -> Option<String> {
    const FRAMING: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    if FRAMING.contains(&name) {
        Some(format!(
            "{name:?} cannot be set or removed here: Snakeway manages the message framing \
             (content-length and hop-by-hop fields)"
        ))
    } else if request && name == "host" {
        Some("\"host\" cannot be set or removed here: it is what the request was routed on".into())
    } else {
        None
    }
}

fn service_target(
    s: &mut Scope<'_>,
    raw: RawRoute,
    services: Option<&[String]>,
) -> Option<RouteTarget> {
    let service = raw.service?;
    if let Some(names) = services
        && !names.contains(&service)
    {
        let list = if names.is_empty() {
            "no services are defined".to_owned()
        } else {
            format!("services: {}", names.join(", "))
        };
        let hint = did_you_mean(&service, names.iter().map(String::as_str));
        s.bad(
            "service",
            format!("no service named {service:?}{hint} ({list})"),
        );
    }
    Some(RouteTarget::Service(ServiceRoute {
        service,
        strip_prefix: raw.strip_prefix.unwrap_or(false),
        websocket: raw.websocket.unwrap_or(false),
        max_websockets: s.range("max_websockets", raw.max_websockets, 1000, WEBSOCKETS),
    }))
}

fn static_target(s: &mut Scope<'_>, raw: RawRoute) -> Option<RouteTarget> {
    let static_dir = s.existing("static_dir", raw.static_dir, Kind::Dir);
    let index = match raw.index {
        None => Some("index.html".to_owned()),
        Some(i) if i.is_empty() => None,
        Some(i) => {
            if i.contains(['/', '\\']) || i == "." || i == ".." {
                s.bad("index", format!("{i:?} must be a file name, not a path"));
            }
            Some(i)
        }
    };
    if let Some(value) = &raw.cache_control {
        s.header_value("cache_control", value);
    }
    let c = raw.compression.unwrap_or_default();
    let d = Compression::default();
    Some(RouteTarget::Static(StaticRoute {
        static_dir: static_dir?,
        index,
        directory_listing: raw.directory_listing.unwrap_or(false),
        max_file_size: s.within("max_file_size", raw.max_file_size, FILE_BYTES),
        cache_control: raw.cache_control,
        compression: Compression {
            gzip: c.gzip.unwrap_or(d.gzip),
            brotli: c.brotli.unwrap_or(d.brotli),
            min_size: s.range("compression.min_size", c.min_size, d.min_size, MIN_SIZE),
        },
        serve_hidden: raw.serve_hidden.unwrap_or(false),
    }))
}

fn respond_target(s: &mut Scope<'_>, respond: Option<RawRespond>) -> Option<RouteTarget> {
    let respond = respond?;
    let status = s.required("respond.status", respond.status).and_then(|st| {
        if STATUS.contains(&st) {
            u16::try_from(st).ok()
        } else {
            s.bad(
                "respond.status",
                format!(
                    "{st} is not an HTTP status ({}-{})",
                    STATUS.start(),
                    STATUS.end()
                ),
            );
            None
        }
    });
    let content_type = respond
        .content_type
        .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
    s.header_value("respond.content_type", &content_type);
    let headers = s.header_map("respond.headers", respond.headers, false);
    if headers.contains_key("content-type") {
        s.bad(
            "respond.headers.content-type",
            "set it with respond.content_type",
        );
    }
    Some(RouteTarget::Respond(Respond {
        status: status?,
        body: respond.body.unwrap_or_default(),
        content_type,
        headers,
    }))
}

// === devices ===

fn build_device(s: &mut Scope<'_>, raw: RawDevice) -> Option<Device> {
    match raw {
        RawDevice::RateLimit(raw) => build_rate_limit(s, raw).map(Device::RateLimit),
        RawDevice::Identity(raw) => {
            let trusted_proxies = ip_nets(s, "trusted_proxies", raw.trusted_proxies);
            let geoip_db = raw
                .geoip_db
                .and_then(|p| s.existing("geoip_db", Some(p), Kind::File));
            Some(Device::Identity(IdentityDevice {
                enabled: raw.enabled.unwrap_or(true),
                name: s.name(raw.name),
                trusted_proxies,
                geoip_db,
                user_agent: raw.user_agent.unwrap_or(false),
            }))
        }
        RawDevice::RequestFilter(raw) => {
            let allow_methods = s.methods("allow_methods", raw.allow_methods);
            let deny_methods = s.methods("deny_methods", raw.deny_methods);
            for m in deny_methods.iter().filter(|m| allow_methods.contains(m)) {
                s.bad("deny_methods", format!("{m} is also in allow_methods"));
            }
            let required_headers = s.header_names("required_headers", raw.required_headers);
            let deny_headers = s.header_names("deny_headers", raw.deny_headers);
            let allow_headers = s.header_names("allow_headers", raw.allow_headers);
            let deny_status = raw.deny_status.and_then(|st| {
                if ERROR_STATUS.contains(&st) {
                    u16::try_from(st).ok()
                } else {
                    s.bad(
                        "deny_status",
                        format!(
                            "{st} is not an error status ({}-{})",
                            ERROR_STATUS.start(),
                            ERROR_STATUS.end()
                        ),
                    );
                    None
                }
            });
            Some(Device::RequestFilter(RequestFilterDevice {
                enabled: raw.enabled.unwrap_or(true),
                name: s.name(raw.name),
                allow_methods,
                deny_methods,
                required_headers,
                deny_headers,
                allow_headers,
                max_header_bytes: s.within(
                    "max_header_bytes",
                    raw.max_header_bytes,
                    FILTER_HEADER_BYTES,
                ),
                max_body_bytes: s.within("max_body_bytes", raw.max_body_bytes, BODY_BYTES),
                deny_status,
            }))
        }
        RawDevice::Wasm(raw) => {
            let name = s.required("name", raw.name);
            if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                s.bad("name", "is empty");
            }
            let path = s.existing("path", raw.path, Kind::File);
            let on_failure = match raw.on_failure.as_deref() {
                None => Some(FailurePolicy::default()),
                Some(text) => s.one_of(
                    "on_failure",
                    text,
                    &[
                        ("closed", FailurePolicy::Closed),
                        ("open", FailurePolicy::Open),
                    ],
                ),
            };
            let config = raw
                .config
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, to_json(v)))
                .collect();
            Some(Device::Wasm(WasmDevice {
                enabled: raw.enabled.unwrap_or(true),
                name: Some(name?),
                path: path?,
                config,
                timeout_ms: s.range("timeout_ms", raw.timeout_ms, 5, WASM_TIMEOUT_MS),
                memory_limit_bytes: s.range(
                    "memory_limit_bytes",
                    raw.memory_limit_bytes,
                    16 * 1024 * 1024,
                    WASM_MEMORY,
                ),
                on_failure: on_failure?,
                max_instances: s
                    .within("max_instances", raw.max_instances, WASM_INSTANCES)
                    .and_then(|n| u32::try_from(n).ok()),
            }))
        }
        RawDevice::StructuredLogging(raw) => {
            let output = match raw.output.as_deref() {
                None | Some("stdout") => Some(LogOutput::Stdout),
                Some("stderr") => Some(LogOutput::Stderr),
                Some(path) => s.path("output", Path::new(path)).map(LogOutput::File),
            };
            let mut phases = Vec::new();
            for (j, text) in raw
                .phases
                .unwrap_or_else(|| vec!["response".to_owned()])
                .iter()
                .enumerate()
            {
                if let Some(phase) = s.one_of(&format!("phases[{j}]"), text, &LogPhase::ALL)
                    && !phases.contains(&phase)
                {
                    phases.push(phase);
                }
            }
            if phases.is_empty() {
                s.bad("phases", "names no phase: the device would never log");
            }
            let default_fields = || {
                ["ip", "country", "device", "bot"]
                    .map(str::to_owned)
                    .to_vec()
            };
            let identity_fields = raw.identity_fields.unwrap_or_else(default_fields);
            for (j, field) in identity_fields.iter().enumerate() {
                if !IDENTITY_FIELDS.contains(&field.as_str()) {
                    let hint = did_you_mean(field, IDENTITY_FIELDS);
                    let message = format!(
                        "unknown identity field {field:?}{hint} (expected one of {})",
                        IDENTITY_FIELDS.join(", ")
                    );
                    s.bad(&format!("identity_fields[{j}]"), message);
                }
            }
            Some(Device::StructuredLogging(LoggingDevice {
                enabled: raw.enabled.unwrap_or(true),
                name: s.name(raw.name),
                output: output?,
                phases,
                include_headers: raw.include_headers.unwrap_or(false),
                allowed_headers: s.header_names("allowed_headers", raw.allowed_headers),
                redacted_headers: s.header_names("redacted_headers", raw.redacted_headers),
                include_identity: raw.include_identity.unwrap_or(true),
                identity_fields,
                queue_bytes: s.range(
                    "queue_bytes",
                    raw.queue_bytes,
                    16 * 1024 * 1024,
                    LOG_QUEUE_BYTES,
                ),
            }))
        }
    }
}

/// TOML to JSON for the WASM `config`: datetimes become strings, as do non-finite floats.
fn to_json(value: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(f).map_or_else(|| J::String(f.to_string()), J::Number)
        }
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => J::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
    }
}

// === impl Scope ===

/// One element being checked: its file, its key prefix (`route[2]`) and the problem sink.
struct Scope<'a> {
    file: &'a SourceFile,
    prefix: String,
    problems: &'a mut Problems,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

impl<'a> Scope<'a> {
    fn new(file: &'a SourceFile, prefix: impl Into<String>, problems: &'a mut Problems) -> Self {
        Self {
            file,
            prefix: prefix.into(),
            problems,
        }
    }

    /// Reports a problem at `prefix.key` (at `prefix` itself when `key` is empty).
    fn bad(&mut self, key: &str, message: impl Into<String>) {
        let key = if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{key}", self.prefix)
        };
        self.problems.push(self.file.name.clone(), key, message);
    }

    fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.bad(key, "missing (required)");
        }
        value
    }

    /// `value` or `default`; a value outside `range` is a problem naming the range (and yields
    /// the default).
    fn range<T: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        key: &str,
        value: Option<T>,
        default: T,
        range: RangeInclusive<T>,
    ) -> T {
        self.within(key, value, range).unwrap_or(default)
    }

    /// An optional key without a default: `value` when inside `range`; outside, a problem
    /// naming the range, and `None`.
    fn within<T: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        key: &str,
        value: Option<T>,
        range: RangeInclusive<T>,
    ) -> Option<T> {
        let v = value?;
        if range.contains(&v) {
            Some(v)
        } else {
            self.bad(
                key,
                format!("{v} is out of range ({}-{})", range.start(), range.end()),
            );
            None
        }
    }

    /// `text` looked up in `choices`; otherwise a problem listing them.
    fn one_of<T: Copy>(&mut self, key: &str, text: &str, choices: &[(&str, T)]) -> Option<T> {
        let found = choices
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            let hint = did_you_mean(text, names.iter().copied());
            self.bad(
                key,
                format!(
                    "unknown value {text:?}{hint} (expected one of {})",
                    names.join(", ")
                ),
            );
        }
        found
    }

    fn socket_addr(&mut self, key: &str, value: Option<String>) -> Option<SocketAddr> {
        let text = self.required(key, value)?;
        let addr = text.parse().ok();
        if addr.is_none() {
            self.bad(
                key,
                format!("{text:?} is not a socket address (ip:port, e.g. 127.0.0.1:8080)"),
            );
        }
        addr
    }

    /// Resolves a path against the file's directory; no existence check.
    fn path(&mut self, key: &str, path: &Path) -> Option<PathBuf> {
        if path.as_os_str().is_empty() {
            self.bad(key, "is empty");
            return None;
        }
        Some(self.file.dir.join(path))
    }

    /// Resolves a required path that must exist as a file or directory. The resolved path is
    /// returned even when missing, so one missing file does not hide the rest of the element.
    fn existing(&mut self, key: &str, path: Option<PathBuf>, kind: Kind) -> Option<PathBuf> {
        let path = self.required(key, path)?;
        let full = self.path(key, &path)?;
        let shown = if path.is_absolute() {
            format!("{:?}", path.display().to_string())
        } else {
            format!(
                "{:?} (resolved to {})",
                path.display().to_string(),
                full.display()
            )
        };
        match std::fs::metadata(&full) {
            Ok(meta) if kind == Kind::File && !meta.is_file() => {
                self.bad(key, format!("{shown} is not a file"))
            }
            Ok(meta) if kind == Kind::Dir && !meta.is_dir() => {
                self.bad(key, format!("{shown} is not a directory"))
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.bad(key, format!("{shown} does not exist"))
            }
            Err(err) => self.bad(key, format!("{shown} cannot be read: {err}")),
        }
        Some(full)
    }

    /// A host pattern: lower-cased; exact or `*.suffix`.
    fn host(&mut self, key: &str, host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let why = if host.is_empty() {
            Some("is empty")
        } else if host.contains('/') {
            Some("must be a host name, not a URL or path")
        } else if host.contains(':') {
            Some("must not contain ':' (no port; IPv6 literals are not supported)")
        } else if host.contains(char::is_whitespace) {
            Some("must not contain whitespace")
        } else if host.strip_prefix("*.").unwrap_or(&host).contains('*') {
            Some("may only use '*' as a leading \"*.\"")
        } else if host == "*." {
            Some("needs a suffix after \"*.\"")
        } else {
            None
        };
        match why {
            Some(why) => {
                self.bad(key, format!("{host:?} {why}"));
                None
            }
            None => Some(host),
        }
    }

    fn name(&mut self, name: Option<String>) -> Option<String> {
        if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            self.bad("name", "is empty");
        }
        name
    }

    fn methods(&mut self, key: &str, list: Option<Vec<String>>) -> Vec<String> {
        let mut out = Vec::new();
        for (j, m) in list.unwrap_or_default().into_iter().enumerate() {
            if is_token(&m) {
                out.push(m.to_ascii_uppercase());
            } else {
                self.bad(
                    &format!("{key}[{j}]"),
                    format!("{m:?} is not an HTTP method"),
                );
            }
        }
        out
    }

    fn header_names(&mut self, key: &str, list: Option<Vec<String>>) -> Vec<String> {
        let mut out = Vec::new();
        for (j, h) in list.unwrap_or_default().into_iter().enumerate() {
            if is_token(&h) {
                out.push(h.to_ascii_lowercase());
            } else {
                self.bad(
                    &format!("{key}[{j}]"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
        out
    }

    /// A table of header fields to set: names lower-cased tokens, none that
    /// [`refused_header`] refuses (`request`: for requests), values valid header values.
    fn header_map(
        &mut self,
        key: &str,
        table: Option<std::collections::BTreeMap<String, String>>,
        request: bool,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for (name, value) in table.unwrap_or_default() {
            let entry = format!("{key}.{name}");
            if !is_token(&name) {
                self.bad(&entry, format!("{name:?} is not a header name"));
                continue;
            }
            let name = name.to_ascii_lowercase();
            if let Some(why) = refused_header(&name, request) {
                self.bad(&entry, why);
                continue;
            }
            self.header_value(&entry, &value);
            if out.insert(name, value).is_some() {
                self.bad(&entry, "is set twice (header names are case-insensitive)");
            }
        }
        out
    }

    fn header_value(&mut self, key: &str, value: &str) {
        if value
            .chars()
            .any(|c| (c.is_ascii_control() && c != '\t') || !c.is_ascii())
        {
            self.bad(
                key,
                format!("{value:?} is not a valid header value (visible ASCII only)"),
            );
        }
    }
}

fn build_rate_limit(s: &mut Scope<'_>, raw: RawRateLimit) -> Option<RateLimitDevice> {
    let name = s.required("name", raw.name);
    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        s.bad("name", "is empty");
    }
    let key = s.required("key", raw.key).and_then(|text| {
        let key = parse_rate_limit_key(&text);
        if key.is_none() {
            s.bad(
                "key",
                format!(
                    "{text:?} is not a key (client_ip, header:NAME, cookie:NAME, route or attribute:NAME)"
                ),
            );
        }
        key
    });
    let limit = s
        .required("limit", raw.limit)
        .and_then(|l| s.within("limit", Some(l), RATE_LIMIT));
    let mut routes = Vec::new();
    for (j, route) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        if route.starts_with('/') {
            routes.push(route);
        } else {
            s.bad(
                &format!("routes[{j}]"),
                format!("{route:?} must start with '/'"),
            );
        }
    }
    let store = match raw.store.as_deref() {
        None => Some(RateLimitStore::Local),
        Some(text) => s.one_of(
            "store",
            text,
            &[
                ("local", RateLimitStore::Local),
                ("redis", RateLimitStore::Redis),
            ],
        ),
    };
    let redis_url = match (store, raw.redis_url) {
        (Some(RateLimitStore::Redis), None) => {
            s.bad("redis_url", "missing (required with store = \"redis\")");
            None
        }
        (Some(RateLimitStore::Local), Some(_)) => {
            s.bad("redis_url", "only with store = \"redis\"");
            None
        }
        (_, Some(url)) => {
            let schemes = ["redis://", "redis+unix://", "unix://"];
            let host = schemes.iter().find_map(|p| url.strip_prefix(p));
            match host {
                Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Some(url),
                _ => {
                    s.bad(
                        "redis_url",
                        format!("{url:?} is not a Redis URL (redis://host[:port][/db] or redis+unix:///path)"),
                    );
                    None
                }
            }
        }
        (_, None) => None,
    };
    let on_store_error = match raw.on_store_error.as_deref() {
        None => Some(StoreErrorPolicy::Open),
        Some(text) => s.one_of(
            "on_store_error",
            text,
            &[
                ("open", StoreErrorPolicy::Open),
                ("closed", StoreErrorPolicy::Closed),
            ],
        ),
    };
    let status = match raw.status {
        None => Some(429),
        Some(st) if ERROR_STATUS.contains(&st) => u16::try_from(st).ok(),
        Some(st) => {
            s.bad(
                "status",
                format!(
                    "{st} is not an error status ({}-{})",
                    ERROR_STATUS.start(),
                    ERROR_STATUS.end()
                ),
            );
            None
        }
    };
    let period_ms = s.range("period_ms", raw.period_ms, 1000, RATE_PERIOD_MS);
    let burst = s.range("burst", raw.burst, 0, RATE_BURST);
    let redis_timeout_ms = s.range(
        "redis_timeout_ms",
        raw.redis_timeout_ms,
        5,
        REDIS_TIMEOUT_MS,
    );
    let max_keys = s.range("max_keys", raw.max_keys, 1_000_000, RATE_MAX_KEYS);
    Some(RateLimitDevice {
        enabled: raw.enabled.unwrap_or(true),
        name: name?,
        key: key?,
        limit: u32::try_from(limit?).ok()?,
        period_ms,
        burst: u32::try_from(burst).ok()?,
        routes,
        store: store?,
        redis_url,
        redis_timeout_ms,
        on_store_error: on_store_error?,
        status: status?,
        max_keys,
    })
}

/// A `rate_limit` key: `client_ip`, `header:NAME`, `cookie:NAME`, `route` or
/// `attribute:NAME`.
fn parse_rate_limit_key(text: &str) -> Option<RateLimitKey> {
    match text {
        "client_ip" => return Some(RateLimitKey::ClientIp),
        "route" => return Some(RateLimitKey::Route),
        _ => {}
    }
    let (kind, name) = text.split_once(':')?;
    match kind {
        "header" => is_token(name).then(|| RateLimitKey::Header(name.to_ascii_lowercase())),
        "cookie" => is_token(name).then(|| RateLimitKey::Cookie(name.to_owned())),
        "attribute" => (!name.is_empty() && name.len() <= 256 && !name.contains(char::is_control))
            .then(|| RateLimitKey::Attribute(name.to_owned())),
        _ => None,
    }
}

/// An RFC 9110 token (method or header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
