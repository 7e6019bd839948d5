//! Loading real files from temporary directories.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::*;

/// [`crate::load_str`] with a listener appended when `text` has none: most tests here are about
/// other sections, and a config without any listener is refused (see
/// `a_config_without_listeners_is_refused_with_what_to_do`). Appended last, it moves no line.
fn load_str(text: &str, path: &Path) -> Result<Config, Report> {
    if text.contains("[[listener]]") {
        crate::load_str(text, path)
    } else {
        crate::load_str(
            &format!("{text}\n[[listener]]\nlisten = \"127.0.0.1:0\"\n"),
            path,
        )
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("snakeway-config-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Writes `text` to `rel`, creating parent directories.
    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The example of DESIGN §4, with `sticky_hash`,
/// one SNI certificate and a `[wasm]` table.
const FULL: &str = r#"
[server]
threads = 2
pid_file = "snakeway.pid"
shutdown_grace_ms = 10000

[admin]
listen = "127.0.0.1:9901"
token = "change-me"

[[listener]]
name = "public"
listen = "127.0.0.1:8080"
http2 = true
max_header_bytes = 65536
header_read_timeout_ms = 10000
idle_timeout_ms = 60000
max_connections = 10000
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"
[[listener.tls.sni]]
hosts = ["A.example", "*.b.example"]
cert = "certs/a.pem"
key = "certs/a.key"

[[service]]
name = "api"
strategy = "sticky_hash"
sticky_key = "client_ip"
upstreams = [
  { url = "http://127.0.0.1:3001", weight = 2 },
  { url = "https://app.internal:8443" },
  { url = "unix:/run/app.sock" },
]
http2 = false
ca_file = "certs/ca.pem"
connect_timeout_ms = 2000
response_timeout_ms = 30000
[service.circuit_breaker]
enabled = true
failure_threshold = 5
open_ms = 10000
half_open_max_requests = 1
success_threshold = 2
count_5xx = true
[service.health_check]
enabled = false
path = "/healthz"
interval_ms = 5000
timeout_ms = 1000
unhealthy_threshold = 3
healthy_threshold = 2

[[route]]
path = "/api"
host = "api.example.com"
service = "api"
strip_prefix = false
websocket = true
max_websockets = 1000

[[route]]
path = "/"
static_dir = "public"
index = "index.html"
directory_listing = false
max_file_size = 10485760
cache_control = "public, max-age=3600"
compression = { gzip = true, brotli = true, min_size = 1024 }

[[route]]
path = "/healthz"
respond = { status = 200, body = "ok", content_type = "text/plain" }

[[device]]
type = "identity"
trusted_proxies = ["10.0.0.0/8"]
geoip_db = "geo/country.mmdb"
user_agent = true

[[device]]
type = "request_filter"
allow_methods = ["GET", "POST", "HEAD"]
deny_methods = ["TRACE"]
required_headers = ["host"]
deny_headers = ["x-original-url"]
allow_headers = []
max_header_bytes = 16384
max_body_bytes = 1048576
deny_status = 403

[[device]]
type = "wasm"
name = "tagger"
path = "devices/tagger.wasm"
config = { greeting = "hello" }
timeout_ms = 5
memory_limit_bytes = 16777216
on_failure = "closed"

[[device]]
type = "structured_logging"
output = "stdout"
phases = ["response"]
include_headers = false
allowed_headers = ["user-agent", "x-request-id"]
redacted_headers = ["authorization", "cookie"]
include_identity = true
identity_fields = ["ip", "country", "device", "bot"]

[wasm]
cache = true
cache_dir = "cache/wasm"
max_instances = 64
"#;

/// A temp dir holding `FULL` and every file it names.
fn full_example() -> (TempDir, PathBuf) {
    let tmp = TempDir::new("full");
    for f in [
        "certs/server.pem",
        "certs/server.key",
        "certs/ca.pem",
        "certs/a.pem",
        "certs/a.key",
    ] {
        tmp.file(f, "pem");
    }
    tmp.file("public/index.html", "<h1>hi</h1>");
    tmp.file("geo/country.mmdb", "");
    tmp.file("devices/tagger.wasm", "");
    let path = tmp.file("snakeway.toml", FULL);
    (tmp, path)
}

fn keys(report: &Report) -> Vec<(String, String)> {
    report
        .problems
        .iter()
        .map(|p| {
            (
                p.file.file_name().unwrap().to_string_lossy().into_owned(),
                p.key.clone(),
            )
        })
        .collect()
}

#[test]
fn full_example_loads_with_its_values() {
    let (tmp, path) = full_example();
    let config = load(&path).unwrap_or_else(|r| panic!("{r}"));

    assert_eq!(
        config.server,
        Server {
            threads: 2,
            pid_file: Some(tmp.path("snakeway.pid")),
            shutdown_grace_ms: 10_000,
            include: vec![],
            error_detail: ErrorDetail::Minimal,
            runtime: Runtime::WorkStealing,
        }
    );
    assert_eq!(
        config.admin,
        Some(Admin {
            listen: "127.0.0.1:9901".parse().unwrap(),
            token: Some("change-me".into()),
        })
    );
    assert_eq!(
        config.listeners,
        vec![Listener {
            name: "public".into(),
            listen: "127.0.0.1:8080".parse().unwrap(),
            http2: true,
            max_header_bytes: 65_536,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            send_timeout_ms: 60_000,
            max_concurrent_streams: 100,
            body_read_timeout_ms: 60_000,
            trusted_proxies: vec![],
            tls: Some(Tls {
                cert: tmp.path("certs/server.pem"),
                key: tmp.path("certs/server.key"),
                sni: vec![SniCert {
                    hosts: vec!["a.example".into(), "*.b.example".into()],
                    cert: tmp.path("certs/a.pem"),
                    key: tmp.path("certs/a.key"),
                }],
            }),
            redirect_http_to: None,
        }]
    );
    assert_eq!(
        config.services,
        vec![Service {
            name: "api".into(),
            strategy: Strategy::StickyHash,
            sticky_key: Some(StickyKey::ClientIp),
            upstreams: vec![
                Upstream {
                    url: "http://127.0.0.1:3001".into(),
                    weight: 2
                },
                Upstream {
                    url: "https://app.internal:8443".into(),
                    weight: 1
                },
                Upstream {
                    url: "unix:/run/app.sock".into(),
                    weight: 1
                },
            ],
            http2: false,
            ca_file: Some(tmp.path("certs/ca.pem")),
            connect_timeout_ms: 2000,
            response_timeout_ms: 30_000,
            read_timeout_ms: 60_000,
            max_response_header_bytes: 65_536,
            circuit_breaker: CircuitBreaker::default(),
            health_check: HealthCheck::default(),
            retry: None,
        }]
    );
    assert_eq!(
        config.routes,
        vec![
            Route {
                path: "/api".into(),
                host: Some("api.example.com".into()),
                target: RouteTarget::Service(ServiceRoute {
                    service: "api".into(),
                    strip_prefix: false,
                    websocket: true,
                    max_websockets: 1000,
                }),
                response_headers: Default::default(),
                request_headers: Default::default(),
                remove_request_headers: vec![],
            },
            Route {
                path: "/".into(),
                host: None,
                target: RouteTarget::Static(StaticRoute {
                    static_dir: tmp.path("public"),
                    index: Some("index.html".into()),
                    directory_listing: false,
                    max_file_size: Some(10_485_760),
                    cache_control: Some("public, max-age=3600".into()),
                    compression: Compression::default(),
                    serve_hidden: false,
                }),
                response_headers: Default::default(),
                request_headers: Default::default(),
                remove_request_headers: vec![],
            },
            Route {
                path: "/healthz".into(),
                host: None,
                target: RouteTarget::Respond(Respond {
                    status: 200,
                    body: "ok".into(),
                    content_type: "text/plain".into(),
                    headers: Default::default(),
                }),
                response_headers: Default::default(),
                request_headers: Default::default(),
                remove_request_headers: vec![],
            },
        ]
    );
    let mut wasm_config = serde_json::Map::new();
    wasm_config.insert("greeting".into(), "hello".into());
    assert_eq!(
        config.devices,
        vec![
            Device::Identity(IdentityDevice {
                enabled: true,
                name: None,
                trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
                geoip_db: Some(tmp.path("geo/country.mmdb")),
                user_agent: true,
            }),
            Device::RequestFilter(RequestFilterDevice {
                enabled: true,
                name: None,
                allow_methods: vec!["GET".into(), "POST".into(), "HEAD".into()],
                deny_methods: vec!["TRACE".into()],
                required_headers: vec!["host".into()],
                deny_headers: vec!["x-original-url".into()],
                allow_headers: vec![],
                max_header_bytes: Some(16_384),
                max_body_bytes: Some(1_048_576),
                deny_status: Some(403),
            }),
            Device::Wasm(WasmDevice {
                enabled: true,
                name: Some("tagger".into()),
                path: tmp.path("devices/tagger.wasm"),
                config: wasm_config,
                timeout_ms: 5,
                memory_limit_bytes: 16 * 1024 * 1024,
                on_failure: FailurePolicy::Closed,
                max_instances: None,
            }),
            Device::StructuredLogging(LoggingDevice {
                enabled: true,
                name: None,
                output: LogOutput::Stdout,
                phases: vec![LogPhase::Response],
                include_headers: false,
                allowed_headers: vec!["user-agent".into(), "x-request-id".into()],
                redacted_headers: vec!["authorization".into(), "cookie".into()],
                include_identity: true,
                identity_fields: ["ip", "country", "device", "bot"]
                    .map(String::from)
                    .to_vec(),
                queue_bytes: 16_777_216,
            }),
        ]
    );
    assert_eq!(
        config.wasm,
        WasmSettings {
            cache: true,
            cache_dir: Some(tmp.path("cache/wasm")),
            max_instances: 64,
        }
    );
}

#[test]
fn defaults_are_filled() {
    let tmp = TempDir::new("defaults");
    tmp.file("w.wasm", "");
    let path = tmp.file(
        "snakeway.toml",
        r#"
[[listener]]
listen = "127.0.0.1:8080"

[[service]]
name = "api"
upstreams = [{ url = "HTTP://Example.COM:8080/" }]

[[route]]
path = "/api"
service = "api"

[[route]]
path = "/"
static_dir = "."

[[route]]
path = "/ping"
respond = { status = 204 }

[[device]]
type = "identity"
trusted_proxies = ["192.168.1.1", "::1"]

[[device]]
type = "request_filter"
deny_methods = ["trace"]
deny_headers = ["X-Original-URL"]

[[device]]
type = "wasm"
name = "w"
path = "w.wasm"
enabled = false

[[device]]
type = "structured_logging"
"#,
    );
    let config = load(&path).unwrap_or_else(|r| panic!("{r}"));

    assert!(config.server.threads >= 1);
    assert_eq!(config.server.pid_file, None);
    assert_eq!(config.server.shutdown_grace_ms, 10_000);
    assert_eq!(config.admin, None);
    assert_eq!(
        config.listeners[0],
        Listener {
            name: "listener-0".into(),
            listen: "127.0.0.1:8080".parse().unwrap(),
            http2: true,
            max_header_bytes: 65_536,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            send_timeout_ms: 60_000,
            max_concurrent_streams: 100,
            body_read_timeout_ms: 60_000,
            trusted_proxies: vec![],
            tls: None,
            redirect_http_to: None,
        }
    );
    assert_eq!(
        config.services[0],
        Service {
            name: "api".into(),
            strategy: Strategy::RoundRobin,
            sticky_key: None,
            upstreams: vec![Upstream {
                url: "http://example.com:8080".into(),
                weight: 1,
            }],
            http2: false,
            ca_file: None,
            connect_timeout_ms: 2000,
            response_timeout_ms: 30_000,
            read_timeout_ms: 60_000,
            max_response_header_bytes: 65_536,
            circuit_breaker: CircuitBreaker {
                enabled: true,
                failure_threshold: 5,
                open_ms: 10_000,
                half_open_max_requests: 1,
                success_threshold: 2,
                count_5xx: true,
            },
            health_check: HealthCheck {
                enabled: false,
                path: "/healthz".into(),
                interval_ms: 5000,
                timeout_ms: 1000,
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            },
            retry: None,
        }
    );
    let targets: Vec<_> = config.routes.iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        vec![
            RouteTarget::Service(ServiceRoute {
                service: "api".into(),
                strip_prefix: false,
                websocket: false,
                max_websockets: 1000,
            }),
            RouteTarget::Static(StaticRoute {
                static_dir: tmp.path("."),
                index: Some("index.html".into()),
                directory_listing: false,
                max_file_size: None,
                cache_control: None,
                compression: Compression {
                    gzip: true,
                    brotli: true,
                    min_size: 1024,
                },
                serve_hidden: false,
            }),
            RouteTarget::Respond(Respond {
                status: 204,
                body: String::new(),
                content_type: "text/plain; charset=utf-8".into(),
                headers: Default::default(),
            }),
        ]
    );
    let Device::Identity(identity) = &config.devices[0] else {
        panic!()
    };
    assert_eq!(
        identity.trusted_proxies,
        vec![
            "192.168.1.1/32".parse().unwrap(),
            "::1/128".parse().unwrap()
        ]
    );
    assert!(!identity.user_agent && identity.geoip_db.is_none());
    let Device::RequestFilter(filter) = &config.devices[1] else {
        panic!()
    };
    assert_eq!(
        (
            filter.deny_methods.as_slice(),
            filter.deny_headers.as_slice()
        ),
        (
            &["TRACE".to_owned()][..],
            &["x-original-url".to_owned()][..]
        )
    );
    assert_eq!(
        (
            filter.max_header_bytes,
            filter.max_body_bytes,
            filter.deny_status
        ),
        (None, None, None)
    );
    let Device::Wasm(wasm) = &config.devices[2] else {
        panic!()
    };
    assert!(!config.devices[2].enabled() && config.devices[2].name() == Some("w"));
    assert_eq!(
        (wasm.timeout_ms, wasm.memory_limit_bytes, wasm.on_failure),
        (5, 16_777_216, FailurePolicy::Closed)
    );
    assert!(wasm.config.is_empty());
    assert_eq!(
        config.devices[3],
        Device::StructuredLogging(LoggingDevice {
            enabled: true,
            name: None,
            output: LogOutput::Stdout,
            phases: vec![LogPhase::Response],
            include_headers: false,
            allowed_headers: vec![],
            redacted_headers: vec![],
            include_identity: true,
            identity_fields: ["ip", "country", "device", "bot"]
                .map(String::from)
                .to_vec(),
            queue_bytes: 16_777_216,
        })
    );
    let home = |var| std::env::var_os(var);
    assert_eq!(
        config.wasm,
        WasmSettings {
            cache: true,
            cache_dir: WasmSettings::default_cache_dir(
                home("XDG_CACHE_HOME").as_deref(),
                home("HOME").as_deref()
            ),
            max_instances: 1000,
        }
    );
}

#[test]
fn wasm_cache_settings() {
    let default = |xdg: Option<&str>, home: Option<&str>| {
        WasmSettings::default_cache_dir(xdg.map(OsStr::new), home.map(OsStr::new))
    };
    assert_eq!(
        default(Some("/xdg"), Some("/home/u")),
        Some(PathBuf::from("/xdg/snakeway/wasm"))
    );
    assert_eq!(
        default(None, Some("/home/u")),
        Some(PathBuf::from("/home/u/.cache/snakeway/wasm"))
    );
    // The XDG spec: a relative value is ignored.
    assert_eq!(
        default(Some("xdg"), Some("/home/u")),
        Some(PathBuf::from("/home/u/.cache/snakeway/wasm"))
    );
    assert_eq!(default(None, Some("home")), None);
    assert_eq!(default(None, None), None);

    let tmp = TempDir::new("wasm");
    let path = tmp.path("etc/snakeway.toml");
    let wasm = |text: &str| load_str(text, &path).map(|c| c.wasm);
    let settings = wasm(
        "[wasm]
cache_dir = \"var/cache\"\n",
    )
    .unwrap();
    assert_eq!(
        settings,
        WasmSettings {
            cache: true,
            cache_dir: Some(tmp.path("etc/var/cache")),
            max_instances: 1000,
        }
    );
    assert_eq!(
        settings.cache_dir(),
        Some(tmp.path("etc/var/cache").as_path())
    );
    assert_eq!(
        wasm(
            "[wasm]
cache_dir = \"/var/cache/snakeway\"\n"
        )
        .unwrap()
        .cache_dir(),
        Some(Path::new("/var/cache/snakeway"))
    );
    // Off: no default is looked up; a directory written stays in the dump but is not used.
    let off = wasm(
        "[wasm]
cache = false
",
    )
    .unwrap();
    assert_eq!(
        (off.cache, off.cache_dir.as_deref(), off.cache_dir()),
        (false, None, None)
    );
    let off = wasm(
        "[wasm]
cache = false
cache_dir = \"c\"\n",
    )
    .unwrap();
    assert_eq!(
        (off.cache_dir.as_deref(), off.cache_dir()),
        (Some(tmp.path("etc/c").as_path()), None)
    );

    let problems = |text: &str| -> Vec<String> {
        wasm(text)
            .unwrap_err()
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    };
    assert_eq!(
        problems(
            "[wasm]
cache_dir = \"\"\n"
        ),
        ["wasm.cache_dir: is empty"]
    );
    let got = problems(
        "[wasm]
cache = \"yes\"\n",
    );
    assert!(
        got.len() == 1 && got[0].starts_with("wasm.cache: invalid type: string \"yes\""),
        "{got:?}"
    );
    let got = problems(
        "[wasm]
cache_directory = \"x\"\n",
    );
    assert!(
        got.len() == 1
            && got[0].starts_with("wasm.cache_directory: unknown field `cache_directory`")
            && got[0].ends_with("(line 2, column 1)"),
        "{got:?}"
    );
    tmp.file(
        "etc/inc.toml",
        "[wasm]
cache = false
",
    );
    assert_eq!(
        problems(
            "[server]
include = [\"inc.toml\"]
"
        ),
        ["wasm: only allowed in the main file (line 1, column 2)"]
    );

    // The dump of a config with the cache off loads back as it is.
    let config = load_str(
        "[wasm]
cache = false
",
        &path,
    )
    .unwrap();
    let text = toml::to_string(&config).unwrap();
    assert_eq!(
        load_str(&text, &tmp.path("elsewhere/dump.toml")).unwrap_or_else(|r| panic!("{r}")),
        config
    );
}

#[test]
fn wasm_max_instances() {
    let tmp = TempDir::new("wasm-instances");
    let path = tmp.path("snakeway.toml");
    let max_instances = |text: &str| load_str(text, &path).map(|c| c.wasm.max_instances);
    assert_eq!(max_instances("").unwrap(), 1000);
    assert_eq!(max_instances("[wasm]\ncache = false\n").unwrap(), 1000);
    assert_eq!(max_instances("[wasm]\nmax_instances = 8\n").unwrap(), 8);
    assert_eq!(max_instances("[wasm]\nmax_instances = 1\n").unwrap(), 1);
    assert_eq!(
        max_instances("[wasm]\nmax_instances = 100000\n").unwrap(),
        100_000
    );

    // Out of range: one problem naming the file, the key and the range.
    for value in ["0", "100001", "4294967297"] {
        let report = max_instances(&format!("[wasm]\nmax_instances = {value}\n")).unwrap_err();
        assert_eq!(
            report.to_string(),
            format!(
                "{}: wasm.max_instances: {value} is out of range (1-100000)",
                path.display()
            )
        );
    }
    // Not a non-negative integer: the type error, on the same key.
    for value in ["-1", "\"8\"", "8.5"] {
        let report = max_instances(&format!("[wasm]\nmax_instances = {value}\n")).unwrap_err();
        let got: Vec<_> = report.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(got, ["wasm.max_instances"], "{value}: {report}");
    }

    // The dump shows it, and loads back as it is.
    let config = load_str("[wasm]\nmax_instances = 8\n", &path).unwrap();
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("max_instances = 8"), "{text}");
    assert_eq!(
        load_str(&text, &tmp.path("elsewhere/dump.toml")).unwrap_or_else(|r| panic!("{r}")),
        config
    );
    let default = load_str("", &path).unwrap();
    let json = serde_json::to_value(&default).unwrap();
    assert_eq!(json["wasm"]["max_instances"], 1000);
}

#[test]
fn listener_send_timeout_and_max_concurrent_streams() {
    let tmp = TempDir::new("listener-conn");
    let path = tmp.path("snakeway.toml");
    let listener = |extra: &str| {
        load_str(
            &format!("[[listener]]\nlisten = \"127.0.0.1:8080\"\n{extra}"),
            &path,
        )
        .map(|c| {
            let l = &c.listeners[0];
            (l.send_timeout_ms, l.max_concurrent_streams)
        })
    };
    assert_eq!(listener("").unwrap(), (60_000, 100));
    assert_eq!(
        listener("send_timeout_ms = 1\nmax_concurrent_streams = 1\n").unwrap(),
        (1, 1)
    );
    assert_eq!(
        listener("send_timeout_ms = 86400000\nmax_concurrent_streams = 10000\n").unwrap(),
        (86_400_000, 10_000)
    );
    for (key, value, range) in [
        ("send_timeout_ms", "0", "1-86400000"),
        ("send_timeout_ms", "86400001", "1-86400000"),
        ("max_concurrent_streams", "0", "1-10000"),
        ("max_concurrent_streams", "10001", "1-10000"),
    ] {
        let report = listener(&format!("{key} = {value}\n")).unwrap_err();
        assert_eq!(
            report.to_string(),
            format!(
                "{}: listener[0].{key}: {value} is out of range ({range})",
                path.display()
            )
        );
    }
    // Too large for the type: a problem on the same key, not a panic.
    let report = listener("max_concurrent_streams = 4294967296\n").unwrap_err();
    let got: Vec<_> = report.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(got, ["listener[0].max_concurrent_streams"], "{report}");
}

#[test]
fn edge_timeouts_trust_and_upstream_head_limit() {
    let tmp = TempDir::new("edge-upstream");
    let path = tmp.path("snakeway.toml");
    let config = |listener: &str, service: &str| {
        load_str(
            &format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n{listener}\n\
                 [[service]]\nname = \"a\"\nupstreams = [{{ url = \"http://127.0.0.1:1\" }}]\n{service}\n"
            ),
            &path,
        )
    };
    let c = config("", "").unwrap();
    assert_eq!(c.listeners[0].body_read_timeout_ms, 60_000);
    assert!(c.listeners[0].trusted_proxies.is_empty());
    assert_eq!(c.services[0].read_timeout_ms, 60_000);
    assert_eq!(c.services[0].max_response_header_bytes, 65_536);

    let c = config(
        "body_read_timeout_ms = 1\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
        "read_timeout_ms = 86400000\nmax_response_header_bytes = 1024",
    )
    .unwrap();
    assert_eq!(c.listeners[0].body_read_timeout_ms, 1);
    assert_eq!(
        c.listeners[0].trusted_proxies,
        ["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    );
    assert_eq!(c.services[0].read_timeout_ms, 86_400_000);
    assert_eq!(c.services[0].max_response_header_bytes, 1024);
    // The dump loads back as it is.
    let text = toml::to_string(&c).unwrap();
    assert_eq!(
        load_str(&text, &tmp.path("elsewhere/dump.toml")).unwrap_or_else(|r| panic!("{r}")),
        c
    );

    let problems = |report: Report| -> Vec<(String, String)> {
        report
            .problems
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    };
    // Every bad value: one problem naming the key and why.
    let report = config(
        "body_read_timeout_ms = 0\ntrusted_proxies = [\"10.0.0.0/33\", \"proxy.local\"]",
        "read_timeout_ms = 86400001\nmax_response_header_bytes = 1023",
    )
    .unwrap_err();
    assert_eq!(
        problems(report),
        [
            (
                "listener[0].body_read_timeout_ms".to_owned(),
                "0 is out of range (1-86400000)".to_owned()
            ),
            (
                "listener[0].trusted_proxies[0]".to_owned(),
                r#""10.0.0.0/33" is not an IP network (CIDR like 10.0.0.0/8) or address"#
                    .to_owned()
            ),
            (
                "listener[0].trusted_proxies[1]".to_owned(),
                r#""proxy.local" is not an IP network (CIDR like 10.0.0.0/8) or address"#
                    .to_owned()
            ),
            (
                "service[0].read_timeout_ms".to_owned(),
                "86400001 is out of range (1-86400000)".to_owned()
            ),
            (
                "service[0].max_response_header_bytes".to_owned(),
                "1023 is out of range (1024-1048576)".to_owned()
            ),
        ]
    );
    let report = config("", "max_response_header_bytes = 1048577").unwrap_err();
    assert_eq!(
        problems(report)[0].1,
        "1048577 is out of range (1024-1048576)"
    );
}

#[test]
fn includes_merge_in_order_and_resolve_paths_per_file() {
    let tmp = TempDir::new("includes");
    tmp.dir("public");
    tmp.dir("conf.d/site");
    tmp.file("extra/tagger.wasm", "");
    let main = tmp.file(
        "snakeway.toml",
        r#"
[server]
include = ["conf.d/*.toml", "extra/one.toml", "conf.d/nothing-*.conf"]
pid_file = "run/snakeway.pid"

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "main"
upstreams = [{ url = "unix:sock/main.sock" }]

[[route]]
path = "/"
static_dir = "public"
"#,
    );
    // Read in file-name order: a before b, whatever the order they were written in.
    tmp.file(
        "conf.d/b.toml",
        r#"
[[service]]
name = "b"
upstreams = [{ url = "http://127.0.0.1:3002" }]

[[route]]
path = "/b"
static_dir = "site"
"#,
    );
    tmp.file(
        "conf.d/a.toml",
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "a"
upstreams = [{ url = "unix:a.sock" }]

[[device]]
type = "structured_logging"
output = "logs/access.log"
"#,
    );
    tmp.file("conf.d/ignored.txt", "not toml");
    tmp.file(
        "extra/one.toml",
        r#"
[[route]]
path = "/one"
service = "a"

[[device]]
type = "wasm"
name = "tagger"
path = "tagger.wasm"
"#,
    );
    let config = load(&main).unwrap_or_else(|r| panic!("{r}"));

    let services: Vec<_> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["main", "a", "b"]);
    let routes: Vec<_> = config.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(routes, ["/", "/b", "/one"]);
    let listeners: Vec<_> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(listeners, ["listener-0", "listener-1"]);

    assert_eq!(config.server.pid_file, Some(tmp.path("run/snakeway.pid")));
    assert_eq!(
        config.services[0].upstreams[0].url,
        format!("unix:{}", tmp.path("sock/main.sock").display())
    );
    assert_eq!(
        config.services[1].upstreams[0].url,
        format!("unix:{}", tmp.path("conf.d/a.sock").display())
    );
    let RouteTarget::Static(root) = &config.routes[0].target else {
        panic!()
    };
    assert_eq!(root.static_dir, tmp.path("public"));
    let RouteTarget::Static(b) = &config.routes[1].target else {
        panic!()
    };
    assert_eq!(b.static_dir, tmp.path("conf.d/site"));
    let Device::StructuredLogging(log) = &config.devices[0] else {
        panic!()
    };
    assert_eq!(
        log.output,
        LogOutput::File(tmp.path("conf.d/logs/access.log"))
    );
    let Device::Wasm(wasm) = &config.devices[1] else {
        panic!()
    };
    assert_eq!(wasm.path, tmp.path("extra/tagger.wasm"));
}

#[test]
fn every_problem_is_reported_with_file_and_key() {
    let tmp = TempDir::new("problems");
    tmp.file("file.txt", "not a directory");
    let main = tmp.file(
        "snakeway.toml",
        r#"
[server]
threads = 0
include = ["conf.d/*.toml", "missing.toml"]

[admin]
listen = "0.0.0.0:9901"

[[listener]]
listen = "127.0.0.1:99999"

[[listener]]
name = "a"
listen = "127.0.0.1:8080"
idle_timeout_ms = 0

[[listener]]
name = "a"
listen = "127.0.0.1:8080"

[[service]]
name = "api"
strategy = "sticky_hash"
upstreams = [{ url = "ftp://x" }, { url = "http://ok:1", weight = 0 }, { url = "http://h/path" }]
connect_timeout_ms = 0
ca_file = "nope.pem"

[[service]]
name = "web"
strategy = "round_robin"
sticky_key = "ip_address"
upstreams = []

[[service]]
name = "api"
strategy = "fastest"
upstreams = [{ url = "unix:/run/x.sock" }]

[[route]]
path = "api"
service = "apx"
index = "index.html"

[[route]]
path = "/both"
service = "api"
respond = { status = 200 }

[[route]]
path = "/none"

[[route]]
path = "/r"
host = "*.*.example.com"
respond = { status = 700 }
strip_prefix = true

[[route]]
path = "/s"
static_dir = "file.txt"

[[device]]
type = "identity"
trusted_proxies = ["10.0.0.0/33", "10.1.2.3"]

[[device]]
type = "firewall"

[[device]]
type = "structured_logging"
phases = ["response", "later"]
identity_fields = ["ip", "shoe_size"]

[[device]]
type = "wasm"
name = "w"
path = "missing.wasm"
on_failure = "maybe"

[wasm]
cache_dir = ""
"#,
    );
    tmp.file(
        "conf.d/10-extra.toml",
        r#"
[server]
threads = 4

[[listener]]
listen = "127.0.0.1:8080"

[[service]]
name = "inc"
upstreams = [{ url = "http://127.0.0.1:3000" }]

[[route]]
path = "/api"
service = "inc"
retries = 3

[[route]]
path = "/s"
service = "nope"

[wasm]
cache = false
"#,
    );
    let report = load(&main).unwrap_err();
    let text = report.to_string();
    let main_name = "snakeway.toml";
    let inc = "10-extra.toml";
    let expected: Vec<(&str, &str, &str)> = vec![
        (main_name, "server.threads", "0 is out of range (1-1024)"),
        (
            main_name,
            "admin.token",
            "required when admin.listen (0.0.0.0:9901) is not a loopback address",
        ),
        (
            main_name,
            "listener[0].listen",
            r#""127.0.0.1:99999" is not a socket address"#,
        ),
        (
            main_name,
            "listener[1].idle_timeout_ms",
            "0 is out of range (1-86400000)",
        ),
        (
            main_name,
            "listener[2].name",
            r#"duplicate listener name "a" (also listener[1])"#,
        ),
        (
            main_name,
            "listener[2].listen",
            "127.0.0.1:8080 is already used by listener[1]",
        ),
        (
            main_name,
            "service[0].sticky_key",
            "required for strategy sticky_hash",
        ),
        (
            main_name,
            "service[0].upstreams[0].url",
            r#""ftp://x" has unsupported scheme "ftp""#,
        ),
        (
            main_name,
            "service[0].upstreams[1].weight",
            "0 is out of range (1-1000)",
        ),
        (
            main_name,
            "service[0].upstreams[2].url",
            "must not have a path",
        ),
        (
            main_name,
            "service[0].ca_file",
            r#""nope.pem" (resolved to "#,
        ),
        (
            main_name,
            "service[0].connect_timeout_ms",
            "0 is out of range (1-86400000)",
        ),
        (
            main_name,
            "service[1].sticky_key",
            "is not client_ip, header:<name> or cookie:<name>",
        ),
        (main_name, "service[1].upstreams", "no upstreams"),
        (
            main_name,
            "service[2].name",
            r#"duplicate service name "api" (also service[0])"#,
        ),
        (
            main_name,
            "service[2].strategy",
            r#"unknown value "fastest" (expected one of failover, round_robin"#,
        ),
        (main_name, "route[0].path", r#""api" must start with '/'"#),
        (
            main_name,
            "route[0].index",
            "only allowed on routes with `static_dir`",
        ),
        (
            main_name,
            "route[0].service",
            r#"no service named "apx"; did you mean `api`? (services: api, inc, web)"#,
        ),
        (main_name, "route[1]", "has service and respond"),
        (
            main_name,
            "route[2]",
            "needs exactly one of service, static_dir or respond",
        ),
        (main_name, "route[3].host", "may only use '*' as a leading"),
        (
            main_name,
            "route[3].strip_prefix",
            "only allowed on routes with `service`",
        ),
        (
            main_name,
            "route[3].respond.status",
            "700 is not an HTTP status",
        ),
        (main_name, "route[4].static_dir", "is not a directory"),
        (
            main_name,
            "device[0].trusted_proxies[0]",
            r#""10.0.0.0/33" is not an IP network"#,
        ),
        (
            main_name,
            "device[1].type",
            r#"unknown device type "firewall" (expected one of identity, request_filter, wasm, structured_logging, rate_limit)"#,
        ),
        (main_name, "device[2].phases[1]", r#"unknown value "later""#),
        (
            main_name,
            "device[2].identity_fields[1]",
            r#"unknown identity field "shoe_size""#,
        ),
        (main_name, "device[3].path", "does not exist"),
        (
            main_name,
            "device[3].on_failure",
            r#"unknown value "maybe" (expected one of closed, open)"#,
        ),
        (main_name, "wasm.cache_dir", "is empty"),
        (main_name, "server.include[1]", "no such file"),
        (inc, "server", "only allowed in the main file"),
        (inc, "wasm", "only allowed in the main file"),
        (
            inc,
            "listener[3].listen",
            "127.0.0.1:8080 is already used by listener[1]",
        ),
        (inc, "route[5].retries", "unknown field `retries`"),
        (inc, "route[6].service", r#"no service named "nope""#),
        (
            inc,
            "route[6].path",
            r#"duplicate route for no host and path "/s" (also route[4])"#,
        ),
    ];
    for (file, key, message) in &expected {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.file.ends_with(file) && p.key == *key && p.message.contains(message)),
            "missing {file}: {key}: {message}\nin:\n{text}"
        );
    }
    let mut got = keys(&report);
    let mut want: Vec<_> = expected
        .iter()
        .map(|(f, k, _)| (f.to_string(), k.to_string()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "\n{text}");
    // One problem per line, `file: key: message`.
    assert_eq!(text.lines().count(), expected.len());
    assert!(text.contains(&format!(
        "{}: route[0].service: no service named \"apx\"",
        main.display()
    )));
    // Problems in an included file name it and carry its line.
    let retries = report
        .problems
        .iter()
        .find(|p| p.key == "route[5].retries")
        .unwrap();
    assert_eq!(retries.file, tmp.path("conf.d/10-extra.toml"));
    assert!(
        retries.message.ends_with("(line 15, column 1)"),
        "{}",
        retries.message
    );
}

#[test]
fn unknown_keys_and_syntax_errors_name_where() {
    let path = Path::new("/nonexistent/snakeway.toml");
    // Each element stops at its first such error, but every element and file is still read.
    let report = load_str(
        "[server]\nthread = 2\n\n[[service]]\nname = \"a\"\nupstreams = [{ url = \"http://a\" }]\n[service.circuit_breaker]\ntreshold = 1\n\n[[service]]\nname = \"b\"\nupstreams = [{ url = \"http://a\", wieght = 2 }]\n\n[[device]]\ntype = \"wasm\"\nnam = \"x\"\n\n[listeners]\n",
        path,
    )
    .unwrap_err();
    let got: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.key.as_str(), p.message.as_str()))
        .collect();
    let find = |key: &str| {
        got.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| *m)
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    assert!(
        find("server.thread").starts_with(
            "unknown field `thread`; did you mean `threads`? (expected one of `threads`"
        )
    );
    assert!(find("server.thread").ends_with("(line 2, column 1)"));
    assert!(find("service[1].upstreams[0].wieght").contains("unknown field `wieght`"));
    assert!(find("service[0].circuit_breaker.treshold").ends_with("(line 8, column 1)"));
    assert!(find("device[0].nam").contains("unknown field `nam`"));
    assert!(find("listeners").starts_with(
        "unknown key; did you mean `listener`? (expected one of server, admin, listener"
    ));
    assert!(report.problems.iter().all(|p| p.file == path));

    let report = load_str("[server]\nthreads = 2\nthreads = 3\n", path).unwrap_err();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].key, "line 3, column 1");

    let report = load_str("[[listener]]\nlisten = 8080\n", path).unwrap_err();
    assert_eq!(report.problems[0].key, "listener[0].listen");
    assert!(
        report.problems[0]
            .message
            .starts_with("invalid type: integer `8080`, expected a string")
    );

    let report = load(Path::new("/nonexistent/snakeway.toml")).unwrap_err();
    assert_eq!(report.problems[0].key, "");
    assert!(
        report
            .to_string()
            .starts_with("/nonexistent/snakeway.toml: cannot read:")
    );
}

#[test]
fn values_are_checked() {
    let tmp = TempDir::new("values");
    let path = tmp.path("snakeway.toml");
    let problems = |text: &str| -> Vec<String> {
        match load_str(text, &path) {
            Ok(_) => vec![],
            Err(report) => report
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect(),
        }
    };
    let service =
        |url: &str| format!("[[service]]\nname = \"s\"\nupstreams = [{{ url = {url:?} }}]\n");
    for ok in [
        "http://a",
        "https://A.b-c.example:8443",
        "http://[::1]:80",
        "http://10.0.0.1:1/",
        "unix:///run/x.sock",
        "unix:rel.sock",
    ] {
        assert_eq!(problems(&service(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in [
        "a:80",
        "tcp://a:1",
        "http://",
        "http://a:0",
        "http://a:x",
        "http://u@a",
        "http://a/b",
        "http://a?x",
        "http://[zz]:1",
        "unix:",
    ] {
        assert_eq!(problems(&service(bad)).len(), 1, "{bad}");
    }
    let route = |host: &str| {
        format!("[[route]]\npath = \"/\"\nhost = {host:?}\nrespond = {{ status = 200 }}\n")
    };
    for ok in ["example.com", "*.example.com", "EXAMPLE.com", "10.0.0.1"] {
        assert_eq!(problems(&route(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in ["", "a/b", "a:80", "a b", "*", "*.", "a.*.b", "*example.com"] {
        assert_eq!(problems(&route(bad)).len(), 1, "{bad}");
    }
    let sticky = |key: &str| {
        format!(
            "{}strategy = \"sticky_hash\"\nsticky_key = {key:?}\n",
            service("http://a")
        )
    };
    for ok in ["client_ip", "header:X-User", "cookie:session"] {
        assert_eq!(problems(&sticky(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in ["ip", "header:", "cookie:a b"] {
        assert_eq!(problems(&sticky(bad)).len(), 1, "{bad}");
    }
    // Port 0 may repeat; a wildcard address conflicts with a specific one on the same port.
    let listeners =
        |a: &str, b: &str| format!("[[listener]]\nlisten = {a:?}\n[[listener]]\nlisten = {b:?}\n");
    assert!(problems(&listeners("127.0.0.1:0", "127.0.0.1:0")).is_empty());
    assert!(problems(&listeners("127.0.0.1:80", "127.0.0.2:80")).is_empty());
    assert_eq!(problems(&listeners("0.0.0.0:80", "127.0.0.1:80")).len(), 1);
    // The admin token may be left out on loopback only.
    assert!(problems("[admin]\nlisten = \"[::1]:9901\"\n").is_empty());
    assert_eq!(problems("[admin]\nlisten = \"10.0.0.1:9901\"\n").len(), 1);
    let filter = "[[device]]\ntype = \"request_filter\"\nallow_methods = [\"GET\", \"BAD METHOD\"]\nallow_headers = [\"x:y\"]\ndeny_status = 200\n";
    assert_eq!(
        problems(filter),
        [
            "device[0].allow_methods[1]: \"BAD METHOD\" is not an HTTP method",
            "device[0].allow_headers[0]: \"x:y\" is not a header name",
            "device[0].deny_status: 200 is not an error status (400-599)",
        ]
    );
    let included = "[server]\ninclude = [\"x.toml\"]\n";
    tmp.file(
        "x.toml",
        "[server]\ninclude = [\"y.toml\"]\n[[route]]\npath = \"/\"\nrespond = { status = 200 }\n",
    );
    assert_eq!(
        problems(included),
        ["server: only allowed in the main file (line 1, column 2)"]
    );
}

#[test]
fn starter_loads_and_is_not_overwritten() {
    let tmp = TempDir::new("starter");
    let dir = tmp.path("new/site");
    let path = write_starter(&dir, false).unwrap();
    assert_eq!(path, dir.join("snakeway.toml"));
    assert!(dir.join("public/index.html").is_file());
    let config = load(&path).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(config.listeners.len(), 1);
    assert!(
        config
            .routes
            .iter()
            .any(|r| r.path == "/" && matches!(r.target, RouteTarget::Static(_)))
    );

    fs::write(&path, "# mine").unwrap();
    let err = write_starter(&dir, false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("snakeway.toml"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "# mine");
    write_starter(&dir, true).unwrap();
    assert!(
        load(&path).is_ok(),
        "--force did not write the starter back"
    );
}

#[test]
fn config_serializes_to_toml_and_json() {
    let (tmp, path) = full_example();
    let config = load(&path).unwrap();

    let text = toml::to_string(&config).unwrap();
    let dumped: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(dumped["server"]["threads"].as_integer(), Some(2));
    assert_eq!(
        dumped["listener"][0]["listen"].as_str(),
        Some("127.0.0.1:8080")
    );
    let cert = tmp.path("certs/server.pem");
    assert_eq!(dumped["listener"][0]["tls"]["cert"].as_str(), cert.to_str());
    assert_eq!(
        dumped["service"][0]["sticky_key"].as_str(),
        Some("client_ip")
    );
    assert_eq!(
        dumped["service"][0]["circuit_breaker"]["failure_threshold"].as_integer(),
        Some(5)
    );
    assert_eq!(dumped["route"][0]["service"].as_str(), Some("api"));
    assert_eq!(
        dumped["route"][1]["compression"]["min_size"].as_integer(),
        Some(1024)
    );
    assert_eq!(
        dumped["route"][2]["respond"]["status"].as_integer(),
        Some(200)
    );
    assert_eq!(
        dumped["device"][0]["trusted_proxies"][0].as_str(),
        Some("10.0.0.0/8")
    );
    assert_eq!(dumped["device"][2]["type"].as_str(), Some("wasm"));
    assert_eq!(
        dumped["device"][2]["config"]["greeting"].as_str(),
        Some("hello")
    );
    assert_eq!(dumped["device"][3]["output"].as_str(), Some("stdout"));
    // The dump uses the schema's own keys with absolute paths, so it even loads back as it is.
    assert_eq!(
        load_str(&text, &tmp.path("elsewhere/dump.toml")).unwrap_or_else(|r| panic!("{r}")),
        config
    );

    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["admin"]["listen"], "127.0.0.1:9901");
    assert_eq!(json["route"][2]["respond"]["content_type"], "text/plain");
    assert_eq!(json["device"][3]["phases"][0], "response");
    assert_eq!(json["service"][0]["strategy"], "sticky_hash");
}

/// Every integer key, in a config that is valid around it: `VALUE` is replaced by the value.
/// With the key path its problems carry and its inclusive range.
const INTEGER_KEYS: &[(&str, &str, u64, u64)] = &[
    ("[server]\nthreads = VALUE\n", "server.threads", 1, 1024),
    (
        "[server]\nshutdown_grace_ms = VALUE\n",
        "server.shutdown_grace_ms",
        0,
        86_400_000,
    ),
    (
        "[wasm]\nmax_instances = VALUE\n",
        "wasm.max_instances",
        1,
        100_000,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nmax_header_bytes = VALUE\n",
        "listener[0].max_header_bytes",
        1024,
        1_048_576,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout_ms = VALUE\n",
        "listener[0].header_read_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nidle_timeout_ms = VALUE\n",
        "listener[0].idle_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nmax_connections = VALUE\n",
        "listener[0].max_connections",
        1,
        1_000_000,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nsend_timeout_ms = VALUE\n",
        "listener[0].send_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nmax_concurrent_streams = VALUE\n",
        "listener[0].max_concurrent_streams",
        1,
        10_000,
    ),
    (
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nbody_read_timeout_ms = VALUE\n",
        "listener[0].body_read_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\nread_timeout_ms = VALUE\n",
        "service[0].read_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\nmax_response_header_bytes = VALUE\n",
        "service[0].max_response_header_bytes",
        1024,
        1_048_576,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\", weight = VALUE }]\n",
        "service[0].upstreams[0].weight",
        1,
        1000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\nconnect_timeout_ms = VALUE\n",
        "service[0].connect_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\nresponse_timeout_ms = VALUE\n",
        "service[0].response_timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.circuit_breaker]\nfailure_threshold = VALUE\n",
        "service[0].circuit_breaker.failure_threshold",
        1,
        1000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.circuit_breaker]\nopen_ms = VALUE\n",
        "service[0].circuit_breaker.open_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.circuit_breaker]\nhalf_open_max_requests = VALUE\n",
        "service[0].circuit_breaker.half_open_max_requests",
        1,
        1000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.circuit_breaker]\nsuccess_threshold = VALUE\n",
        "service[0].circuit_breaker.success_threshold",
        1,
        1000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.health_check]\ninterval_ms = VALUE\n",
        "service[0].health_check.interval_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.health_check]\ntimeout_ms = VALUE\n",
        "service[0].health_check.timeout_ms",
        1,
        86_400_000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.health_check]\nunhealthy_threshold = VALUE\n",
        "service[0].health_check.unhealthy_threshold",
        1,
        1000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.health_check]\nhealthy_threshold = VALUE\n",
        "service[0].health_check.healthy_threshold",
        1,
        1000,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.retry]\nattempts = VALUE\n",
        "service[0].retry.attempts",
        1,
        5,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[service.retry]\nbudget_percent = VALUE\n",
        "service[0].retry.budget_percent",
        0,
        100,
    ),
    (
        "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n[[route]]\npath = \"/\"\nservice = \"s\"\nmax_websockets = VALUE\n",
        "route[0].max_websockets",
        1,
        1_000_000,
    ),
    (
        "[[route]]\npath = \"/\"\nstatic_dir = \"public\"\nmax_file_size = VALUE\n",
        "route[0].max_file_size",
        1,
        1_099_511_627_776,
    ),
    (
        "[[route]]\npath = \"/\"\nstatic_dir = \"public\"\ncompression = { min_size = VALUE }\n",
        "route[0].compression.min_size",
        0,
        1_073_741_824,
    ),
    (
        "[[route]]\npath = \"/\"\nrespond = { status = VALUE }\n",
        "route[0].respond.status",
        100,
        599,
    ),
    (
        "[[device]]\ntype = \"request_filter\"\nmax_header_bytes = VALUE\n",
        "device[0].max_header_bytes",
        1,
        1_048_576,
    ),
    (
        "[[device]]\ntype = \"request_filter\"\nmax_body_bytes = VALUE\n",
        "device[0].max_body_bytes",
        0,
        1_099_511_627_776,
    ),
    (
        "[[device]]\ntype = \"request_filter\"\ndeny_status = VALUE\n",
        "device[0].deny_status",
        400,
        599,
    ),
    (
        "[[device]]\ntype = \"wasm\"\nname = \"w\"\npath = \"w.wasm\"\ntimeout_ms = VALUE\n",
        "device[0].timeout_ms",
        1,
        60_000,
    ),
    (
        "[[device]]\ntype = \"wasm\"\nname = \"w\"\npath = \"w.wasm\"\nmemory_limit_bytes = VALUE\n",
        "device[0].memory_limit_bytes",
        65_536,
        268_435_456,
    ),
    (
        "[[device]]\ntype = \"wasm\"\nname = \"w\"\npath = \"w.wasm\"\nmax_instances = VALUE\n",
        "device[0].max_instances",
        1,
        100_000,
    ),
    (
        "[[device]]\ntype = \"structured_logging\"\nqueue_bytes = VALUE\n",
        "device[0].queue_bytes",
        4096,
        1_073_741_824,
    ),
    (
        "[[device]]\ntype = \"rate_limit\"\nname = \"r\"\nkey = \"client_ip\"\nlimit = VALUE\n",
        "device[0].limit",
        1,
        1_000_000,
    ),
    (
        "[[device]]\ntype = \"rate_limit\"\nname = \"r\"\nkey = \"client_ip\"\nlimit = 5\nperiod_ms = VALUE\n",
        "device[0].period_ms",
        1,
        86_400_000,
    ),
    (
        "[[device]]\ntype = \"rate_limit\"\nname = \"r\"\nkey = \"client_ip\"\nlimit = 5\nburst = VALUE\n",
        "device[0].burst",
        0,
        1_000_000,
    ),
    (
        "[[device]]\ntype = \"rate_limit\"\nname = \"r\"\nkey = \"client_ip\"\nlimit = 5\nstatus = VALUE\n",
        "device[0].status",
        400,
        599,
    ),
    (
        "[[device]]\ntype = \"rate_limit\"\nname = \"r\"\nkey = \"client_ip\"\nlimit = 5\nmax_keys = VALUE\n",
        "device[0].max_keys",
        1,
        100_000_000,
    ),
    (
        "[[device]]\ntype = \"rate_limit\"\nname = \"r\"\nkey = \"client_ip\"\nlimit = 5\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_timeout_ms = VALUE\n",
        "device[0].redis_timeout_ms",
        1,
        10_000,
    ),
];

#[test]
fn every_integer_key_is_checked_against_its_range() {
    let tmp = TempDir::new("ranges");
    tmp.dir("public");
    tmp.file("w.wasm", "");
    let path = tmp.path("snakeway.toml");
    let load_with = |template: &str, value: u64| {
        load_str(&template.replace("VALUE", &value.to_string()), &path)
    };
    for &(template, key, lo, hi) in INTEGER_KEYS {
        for ok in [lo, hi, lo + (hi - lo) / 2] {
            if let Err(report) = load_with(template, ok) {
                panic!("{key} = {ok} is in range, yet:\n{report}");
            }
        }
        let mut bad = vec![hi + 1, i64::MAX as u64];
        if lo > 0 {
            bad.push(lo - 1);
        }
        for value in bad {
            let report = load_with(template, value).expect_err(key);
            let [problem] = report.problems.as_slice() else {
                panic!("{key} = {value}: one problem expected:\n{report}");
            };
            assert_eq!(problem.key, key, "{report}");
            // Beyond a u32 key's type, the type error names the value and the key instead.
            let too_big_for_type = problem.message.contains("expected u32")
                && problem.message.contains(&format!("`{value}`"));
            assert!(
                too_big_for_type
                    || problem.message.starts_with(&value.to_string())
                        && problem.message.ends_with(&format!("({lo}-{hi})")),
                "{key} = {value}: {}",
                problem.message
            );
        }
    }
}

#[test]
fn the_integer_key_table_covers_every_integer_key() {
    // Each integer field of the serde mirror, by name; a new key needs a row in INTEGER_KEYS.
    let raw = include_str!("raw.rs");
    let integer_fields: Vec<&str> = raw
        .lines()
        .filter_map(|line| {
            let field = line.trim().strip_prefix("pub(crate) ")?;
            let (name, ty) = field.split_once(": ")?;
            ["u16", "u32", "u64", "usize", "i64"]
                .iter()
                .any(|int| ty.starts_with(&format!("Option<{int}>")))
                .then_some(name)
        })
        .collect();
    assert!(integer_fields.len() >= 20, "{integer_fields:?}");
    for name in integer_fields {
        assert!(
            INTEGER_KEYS.iter().any(|(_, key, _, _)| key
                .rsplit(['.', ' '])
                .next()
                .is_some_and(|last| last == name)),
            "the integer key {name} has no row in INTEGER_KEYS"
        );
    }
}

#[test]
fn a_huge_max_connections_is_a_problem_not_a_panic() {
    // 2^62: beyond tokio's semaphore; it used to pass the check and panic the server at start.
    let tmp = TempDir::new("huge");
    let path = tmp.path("snakeway.toml");
    let report = load_str(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4611686018427387904\n",
        &path,
    )
    .unwrap_err();
    assert_eq!(
        report.to_string(),
        format!(
            "{}: listener[0].max_connections: 4611686018427387904 is out of range (1-1000000)",
            path.display()
        )
    );
}

#[test]
fn rate_limit_device() {
    let tmp = TempDir::new("rate-limit");
    let path = tmp.path("snakeway.toml");
    let device = |text: &str| match &load_str(text, &path).unwrap().devices[0] {
        Device::RateLimit(d) => d.clone(),
        other => panic!("{other:?}"),
    };
    let rl = "[[device]]\ntype = \"rate_limit\"\n";
    let d = device(&format!(
        "{rl}name = \"r\"\nkey = \"client_ip\"\nlimit = 5\n"
    ));
    assert_eq!(
        (d.key, d.period_ms, d.burst, d.store, d.redis_timeout_ms),
        (RateLimitKey::ClientIp, 1000, 0, RateLimitStore::Local, 5)
    );
    assert_eq!(
        (d.on_store_error, d.status, d.max_keys),
        (StoreErrorPolicy::Open, 429, 1_000_000)
    );
    let d = device(&format!(
        "{rl}name = \"r\"\nkey = \"header:X-Api-Key\"\nlimit = 5\nroutes = [\"/api\"]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\non_store_error = \"closed\"\n"
    ));
    assert_eq!(d.key, RateLimitKey::Header("x-api-key".into()));
    assert_eq!(d.key.to_string(), "header:x-api-key");
    assert_eq!(
        (d.store, d.on_store_error),
        (RateLimitStore::Redis, StoreErrorPolicy::Closed)
    );
    assert_eq!(d.routes, ["/api"]);
    for key in ["attribute:tier", "cookie:session", "route", "client_ip"] {
        let d = device(&format!("{rl}name = \"r\"\nkey = {key:?}\nlimit = 1\n"));
        assert_eq!(d.key.to_string(), key);
    }

    let problems = |text: &str| -> Vec<String> {
        load_str(text, &path)
            .expect_err(text)
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    };
    assert_eq!(
        problems(rl),
        [
            "device[0].name: missing (required)",
            "device[0].key: missing (required)",
            "device[0].limit: missing (required)",
        ]
    );
    let bad = format!(
        "{rl}name = \"r\"\nkey = \"header:a b\"\nlimit = 0\nroutes = [\"api\"]\nstore = \"memcached\"\non_store_error = \"maybe\"\nstatus = 200\n"
    );
    assert_eq!(
        problems(&bad),
        [
            "device[0].key: \"header:a b\" is not a key (client_ip, header:NAME, cookie:NAME, route or attribute:NAME)",
            "device[0].limit: 0 is out of range (1-1000000)",
            "device[0].routes[0]: \"api\" must start with '/'",
            "device[0].store: unknown value \"memcached\" (expected one of local, redis)",
            "device[0].on_store_error: unknown value \"maybe\" (expected one of open, closed)",
            "device[0].status: 200 is not an error status (400-599)",
        ]
    );
    let base = format!("{rl}name = \"r\"\nkey = \"route\"\nlimit = 1\n");
    assert_eq!(
        problems(&format!("{base}store = \"redis\"\n")),
        ["device[0].redis_url: missing (required with store = \"redis\")"]
    );
    assert_eq!(
        problems(&format!("{base}redis_url = \"redis://x\"\n")),
        ["device[0].redis_url: only with store = \"redis\""]
    );
    assert_eq!(
        problems(&format!(
            "{base}store = \"redis\"\nredis_url = \"http://x\"\n"
        )),
        [
            "device[0].redis_url: \"http://x\" is not a Redis URL (redis://host[:port][/db] or redis+unix:///path)"
        ]
    );
}

#[test]
fn logging_queue_bytes() {
    let tmp = TempDir::new("queue-bytes");
    let path = tmp.path("snakeway.toml");
    let queue_bytes = |text: &str| match &load_str(text, &path).unwrap().devices[0] {
        Device::StructuredLogging(d) => d.queue_bytes,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        queue_bytes("[[device]]\ntype = \"structured_logging\"\n"),
        16 * 1024 * 1024
    );
    assert_eq!(
        queue_bytes("[[device]]\ntype = \"structured_logging\"\nqueue_bytes = 65536\n"),
        65536
    );
}

#[test]
fn static_max_file_size_is_optional_and_checked() {
    let tmp = TempDir::new("static-max-file-size");
    tmp.file("site/index.html", "hi");
    let path = tmp.path("snakeway.toml");
    let load = |extra: &str| {
        let text = format!("[[route]]\npath = \"/\"\nstatic_dir = \"site\"\n{extra}\n");
        load_str(&text, &path).map(|c| match &c.routes[0].target {
            RouteTarget::Static(s) => s.max_file_size,
            other => panic!("{other:?}"),
        })
    };
    // Absent: no limit (files stream in constant memory).
    assert_eq!(load("").unwrap(), None);
    assert_eq!(load("max_file_size = 1").unwrap(), Some(1));
    assert_eq!(
        load("max_file_size = 1099511627776").unwrap(),
        Some(1_099_511_627_776)
    );
    let report = load("max_file_size = 0").unwrap_err();
    assert_eq!(
        report.to_string(),
        format!(
            "{}: route[0].max_file_size: 0 is out of range (1-1099511627776)",
            path.display()
        )
    );
    // Negative or not an integer: the type error, on the same key.
    for value in ["-1", "\"10\"", "1.5"] {
        let report = load(&format!("max_file_size = {value}")).unwrap_err();
        let got: Vec<_> = report.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(got, ["route[0].max_file_size"], "{value}: {report}");
    }
}

#[test]
fn wasm_device_max_instances() {
    let tmp = TempDir::new("wasm-device-instances");
    tmp.file("w.wasm", "");
    let path = tmp.path("snakeway.toml");
    let load = |extra: &str| {
        let text =
            format!("[[device]]\ntype = \"wasm\"\nname = \"w\"\npath = \"w.wasm\"\n{extra}\n");
        load_str(&text, &path).map(|c| match &c.devices[0] {
            Device::Wasm(d) => d.max_instances,
            other => panic!("{other:?}"),
        })
    };
    // Absent: the device may use the whole pool (`[wasm] max_instances`).
    assert_eq!(load("").unwrap(), None);
    assert_eq!(load("max_instances = 1").unwrap(), Some(1));
    assert_eq!(load("max_instances = 100000").unwrap(), Some(100_000));
    for value in ["0", "100001", "4294967297"] {
        let report = load(&format!("max_instances = {value}")).unwrap_err();
        assert_eq!(
            report.to_string(),
            format!(
                "{}: device[0].max_instances: {value} is out of range (1-100000)",
                path.display()
            )
        );
    }
    for value in ["-1", "\"8\""] {
        let report = load(&format!("max_instances = {value}")).unwrap_err();
        let got: Vec<_> = report.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(got, ["device[0].max_instances"], "{value}: {report}");
    }
    // The dump shows it, and loads back as it is.
    let config = load_str(
        "[[device]]\ntype = \"wasm\"\nname = \"w\"\npath = \"w.wasm\"\nmax_instances = 8\n",
        &path,
    )
    .unwrap();
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("max_instances = 8"), "{text}");
    assert_eq!(load_str(&text, &path).unwrap(), config);
}

#[test]
fn service_retry() {
    let tmp = TempDir::new("retry");
    let path = tmp.path("snakeway.toml");
    let service = "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n";
    let load = |extra: &str| load_str(&format!("{service}{extra}"), &path);
    let retry = |extra: &str| {
        load(&format!("[service.retry]\n{extra}"))
            .map(|c| c.services[0].retry.clone().expect("a retry policy"))
    };

    // Absent: no retries at all.
    assert_eq!(load("").unwrap().services[0].retry, None);
    // Present: the defaults fill what is not written.
    assert_eq!(retry("").unwrap(), Retry::default());
    assert_eq!(
        retry("").unwrap(),
        Retry {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::ResetBeforeResponse],
            budget_percent: 20,
        }
    );
    // Every condition, in the order written, each once.
    assert_eq!(
        retry("attempts = 3\non = [\"503\", \"connect_failure\", \"502\", \"503\", \"504\", \"reset_before_response\"]\nbudget_percent = 0").unwrap(),
        Retry {
            attempts: 3,
            on: vec![
                RetryOn::Status503,
                RetryOn::ConnectFailure,
                RetryOn::Status502,
                RetryOn::Status504,
                RetryOn::ResetBeforeResponse,
            ],
            budget_percent: 0,
        }
    );

    // Unknown conditions are named with their key; an empty list is refused.
    let report = retry("on = [\"503\", \"500\", \"timeout\"]").unwrap_err();
    let problems: Vec<(String, String)> = report
        .problems
        .iter()
        .map(|p| (p.key.clone(), p.message.clone()))
        .collect();
    assert!(report.problems.iter().all(|p| p.file == path), "{report}");
    assert_eq!(
        problems,
        [
            (
                "service[0].retry.on[1]".to_owned(),
                "unknown value \"500\" (expected one of connect_failure, reset_before_response, 502, 503, 504)".to_owned()
            ),
            (
                "service[0].retry.on[2]".to_owned(),
                "unknown value \"timeout\" (expected one of connect_failure, reset_before_response, 502, 503, 504)".to_owned()
            ),
        ]
    );
    let report = retry("on = []").unwrap_err();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(report.problems[0].key, "service[0].retry.on");
    // Statuses are strings, as in the schema; a number is a type error at the key.
    let report = retry("on = [503]").unwrap_err();
    assert!(report.to_string().contains("service[0]"), "{report}");
    // Unknown keys are errors.
    let report = retry("tries = 2").unwrap_err();
    assert!(report.to_string().contains("tries"), "{report}");

    // The dump shows the table (and only when present), and loads back as it is.
    let config = load(
        "[service.retry]\nattempts = 4\non = [\"502\", \"connect_failure\"]\nbudget_percent = 50",
    )
    .unwrap();
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("[service.retry]"), "{text}");
    assert!(
        text.contains(r#"on = ["502", "connect_failure"]"#),
        "{text}"
    );
    assert_eq!(load_str(&text, &path).unwrap(), config);
    let plain = load("").unwrap();
    let text = toml::to_string(&plain).unwrap();
    assert!(!text.contains("retry"), "{text}");
    assert_eq!(load_str(&text, &path).unwrap(), plain);
}

#[test]
fn a_config_without_listeners_is_refused_with_what_to_do() {
    let path = Path::new("/nonexistent/snakeway.toml");
    for text in [
        "",
        "[server]\nthreads = 1\n",
        "[[route]]\npath = \"/\"\nrespond = { status = 200 }\n",
    ] {
        let report = crate::load_str(text, path).unwrap_err();
        assert!(
            report.problems.iter().any(|p| p.key == "listener"
                && p.message
                    .starts_with("no [[listener]]: the server would accept no connection")
                && p.message.contains("listen = \"127.0.0.1:8080\"")),
            "{report}"
        );
    }
    // A file that did not parse is not also said to lack listeners.
    let report = crate::load_str("[[listener]\n", path).unwrap_err();
    assert_eq!(report.problems.len(), 1, "{report}");
}

#[test]
fn misspelt_names_get_a_suggestion() {
    let path = Path::new("/nonexistent/snakeway.toml");
    let report = load_str(
        "[[listeners]]\n\
         [[service]]\nname = \"api\"\nstratgy = \"round_robin\"\nupstreams = [{ url = \"http://a\" }]\n\
         [[service]]\nname = \"web\"\nupstreams = [{ url = \"http://a\", wieght = 2 }, { url = \"http://b\", colour = 1 }]\n\
         [[service]]\nname = \"db\"\nstrategy = \"least_request\"\nupstreams = [{ url = \"http://a\" }]\n\
         [[route]]\npath = \"/\"\nservice = \"apl\"\n\
         [[route]]\npath = \"/s\"\nstatic_dir = \"/\"\ncompression = { gzp = true }\n\
         [[device]]\ntype = \"identiy\"\n\
         [[device]]\ntype = \"wasm\"\nname = \"w\"\npath = \"/\"\non_failure = \"opne\"\n",
        path,
    )
    .unwrap_err();
    let find = |key: &str| {
        report
            .problems
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.message.as_str())
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    assert!(find("listeners").starts_with("unknown key; did you mean `listener`?"));
    assert!(
        find("service[0].stratgy").starts_with("unknown field `stratgy`; did you mean `strategy`?")
    );
    assert!(find("service[2].strategy").starts_with(
        "unknown value \"least_request\"; did you mean `least_requests`? (expected one of failover,"
    ));
    // Every unknown key of an element, at any depth, not only the first.
    assert!(
        find("service[1].upstreams[0].wieght")
            .starts_with("unknown field `wieght`; did you mean `weight`?")
    );
    assert!(
        find("service[1].upstreams[1].colour")
            .starts_with("unknown field `colour` (expected one of `url`, `weight`)")
    );
    assert!(find("route[0].service").starts_with("no service named \"apl\"; did you mean `api`?"));
    assert!(
        find("route[1].compression.gzp").starts_with("unknown field `gzp`; did you mean `gzip`?")
    );
    assert!(
        find("device[0].type")
            .starts_with("unknown device type \"identiy\"; did you mean `identity`?")
    );
    assert!(
        find("device[1].on_failure").starts_with("unknown value \"opne\"; did you mean `open`?")
    );
    // Values are spelt as in the config, never as Rust names.
    for problem in &report.problems {
        for internal in ["LeastRequests", "RoundRobin", "StickyHash", "KeyMismatch"] {
            assert!(!problem.message.contains(internal), "{problem}");
        }
    }
}

#[test]
fn everyday_headers_redirects_and_error_detail() {
    let tmp = TempDir::new("everyday");
    let path = tmp.path("snakeway.toml");
    let base = "[[service]]\nname = \"s\"\nupstreams = [{ url = \"http://a\" }]\n";
    let load = |extra: &str| load_str(&format!("{base}{extra}"), &path);
    let problems = |extra: &str| -> Vec<(String, String)> {
        load(extra)
            .expect_err("refused")
            .problems
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    };

    let config = load(
        "[server]\nerror_detail = \"full\"\n\
         [[listener]]\nlisten = \"127.0.0.1:8080\"\nredirect_http_to = \"https:8443\"\n\
         [[listener]]\nlisten = \"127.0.0.1:8081\"\nredirect_http_to = \"https\"\n\
         [[route]]\npath = \"/\"\nservice = \"s\"\n\
         response_headers = { Strict-Transport-Security = \"max-age=63072000\" }\n\
         request_headers = { x-env = \"prod\" }\nremove_request_headers = [\"X-Debug\"]\n\
         [[route]]\npath = \"/old\"\n\
         respond = { status = 308, headers = { location = \"https://{host}{path}{query}\" } }\n",
    )
    .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(config.server.error_detail, ErrorDetail::Full);
    assert_eq!(
        config.listeners[0].redirect_http_to,
        Some(HttpsRedirect { port: Some(8443) })
    );
    assert_eq!(
        config.listeners[1].redirect_http_to,
        Some(HttpsRedirect { port: None })
    );
    let route = &config.routes[0];
    assert_eq!(
        route.response_headers["strict-transport-security"],
        "max-age=63072000"
    );
    assert_eq!(route.request_headers["x-env"], "prod");
    assert_eq!(route.remove_request_headers, ["x-debug"]);
    let RouteTarget::Respond(respond) = &config.routes[1].target else {
        panic!("a respond route")
    };
    assert_eq!(respond.headers["location"], "https://{host}{path}{query}");
    // The dump writes the keys back as they are read.
    let text = toml::to_string(&config).unwrap();
    assert_eq!(
        load_str(&text, &path).unwrap_or_else(|r| panic!("{r}")),
        config
    );
    assert!(text.contains("redirect_http_to = \"https:8443\""), "{text}");
    assert_eq!(load("").unwrap().server.error_detail, ErrorDetail::Minimal);

    // Bad values, each named at its key.
    let got = problems(
        "[server]\nerror_detail = \"verbose\"\n\
         [[listener]]\nlisten = \"127.0.0.1:8080\"\nredirect_http_to = \"http\"\n\
         [[listener]]\nlisten = \"127.0.0.1:8081\"\nredirect_http_to = \"https:0\"\n\
         [[route]]\npath = \"/\"\nservice = \"s\"\n\
         response_headers = { content-length = \"1\", \"bad name\" = \"x\", x-ok = \"a\\nb\" }\n\
         request_headers = { host = \"evil\", transfer-encoding = \"chunked\" }\n\
         remove_request_headers = [\"connection\"]\n\
         [[route]]\npath = \"/r\"\nrespond = { status = 200, headers = { content-type = \"x\" } }\n\
         [[route]]\npath = \"/s\"\nrespond = { status = 200 }\nrequest_headers = { x-a = \"b\" }\n",
    );
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "server.error_detail",
        "listener[0].redirect_http_to",
        "listener[1].redirect_http_to",
        "route[0].response_headers.content-length",
        "route[0].response_headers.bad name",
        "route[0].response_headers.x-ok",
        "route[0].request_headers.host",
        "route[0].request_headers.transfer-encoding",
        "route[0].remove_request_headers[0]",
        "route[1].respond.headers.content-type",
        "route[2].request_headers",
    ] {
        assert!(keys.contains(&key), "{key} not in {got:#?}");
    }
    assert_eq!(got.len(), 11, "{got:#?}");
    let message = |key: &str| &got.iter().find(|(k, _)| k == key).unwrap().1;
    assert!(
        message("server.error_detail").contains("minimal, full"),
        "{got:?}"
    );
    assert!(
        message("route[0].request_headers.host").contains("routed"),
        "{got:?}"
    );

    // On a TLS listener the redirect is refused.
    tmp.file("c.pem", "pem");
    tmp.file("k.pem", "pem");
    let got = problems(
        "[[listener]]\nlisten = \"127.0.0.1:8443\"\nredirect_http_to = \"https\"\n\
         [listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "listener[0].redirect_http_to");
    assert!(got[0].1.contains("plain listener"), "{got:?}");
}

#[test]
fn runtime_is_work_stealing_unless_per_core_is_asked_for() {
    let tmp = TempDir::new("runtime");
    let path = tmp.path("snakeway.toml");
    let runtime = |text: &str| load_str(text, &path).map(|c| c.server.runtime);
    assert_eq!(runtime(""), Ok(Runtime::WorkStealing));
    assert_eq!(
        runtime("[server]\nruntime = \"work_stealing\"\n"),
        Ok(Runtime::WorkStealing)
    );
    assert_eq!(
        runtime("[server]\nruntime = \"per_core\"\n"),
        Ok(Runtime::PerCore)
    );
    // The dump names it, and loads back to the same value.
    let config = load_str("[server]\nruntime = \"per_core\"\n", &path).unwrap();
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("runtime = \"per_core\""), "{text}");

    let report = load_str("[server]\nruntime = \"percore\"\n", &path).expect_err("refused");
    assert_eq!(report.problems.len(), 1, "{report}");
    let problem = &report.problems[0];
    assert_eq!(problem.key, "server.runtime");
    assert!(
        problem.message.contains("did you mean `per_core`")
            && problem.message.contains("work_stealing, per_core"),
        "{problem:?}"
    );
}
