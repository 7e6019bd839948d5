//! `snakeway config check | dump | init`, `--version`, and `server.include`.

use crate::client::{get, get_host};
use crate::harness::{Server, TestDir, run_cli};
use crate::upstream;

const VALID: &str = r#"
[server]
threads = 1

[[listener]]
name = "public"
listen = "127.0.0.1:0"

[[service]]
name = "api"
upstreams = [{ url = "http://127.0.0.1:9" }]

[[route]]
path = "/api"
service = "api"

[[route]]
path = "/healthz"
respond = { status = 200, body = "ok" }
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_prints_the_package_version() {
    let dir = TestDir::new("version");
    let out = run_cli(&["--version"], &dir.path);
    assert!(out.status.success(), "--version failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("snakeway") && text.contains(env!("CARGO_PKG_VERSION")),
        "unexpected --version output: {text:?}"
    );
}

#[test]
fn config_check_accepts_a_valid_config_and_rejects_an_invalid_one() {
    let dir = TestDir::new("check-ok");
    let file = dir.write("snakeway.toml", VALID);
    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    assert!(
        out.status.success(),
        "valid config rejected:\n{}",
        stderr(&out)
    );

    let bad = dir.write(
        "bad.toml",
        VALID.replace("service = \"api\"", "service = \"nope\""),
    );
    let out = run_cli(&["config", "check", "-c", bad.to_str().unwrap()], &dir.path);
    assert!(
        !out.status.success(),
        "config naming an unknown service was accepted"
    );
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("route[0].service"))
        .unwrap_or_else(|| panic!("no `route[0].service` problem in:\n{err}"));
    assert!(
        line.starts_with(&format!("{}: route[0].service: ", bad.display())),
        "problem not formatted `FILE: KEY: MESSAGE`: {line:?}"
    );
    assert!(
        line.contains("nope"),
        "problem does not name the unknown service: {line:?}"
    );
}

#[test]
fn config_check_reports_every_problem_with_file_and_key() {
    let dir = TestDir::new("check-many");
    let file = dir.write(
        "snakeway.toml",
        r#"
[[listener]]
listen = "not-an-address"

[[listener]]
listen = "127.0.0.1:18481"

[[listener]]
listen = "127.0.0.1:18481"

[[service]]
name = "api"
upstreams = [{ url = "http://127.0.0.1:9" }]

[[route]]
path = "/a"
service = "nope"

[[route]]
path = "noslash"
respond = { status = 200, body = "x" }

[[route]]
path = "/zero"

[[route]]
path = "/two"
service = "api"
respond = { status = 200, body = "x" }

[[route]]
path = "/k"
respond = { status = 200 }
colour = "red"

[[device]]
type = "teleporter"
"#,
    );
    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    assert!(!out.status.success(), "invalid config accepted");
    let err = stderr(&out);
    let f = file.display().to_string();
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{f}: ")))
        .collect();
    let find = |what: &str, pred: &dyn Fn(&str) -> bool| {
        assert!(
            problems.iter().any(|l| pred(l)),
            "no problem reported for {what}; stderr:\n{err}"
        );
    };
    find("the bad socket address (listener[0].listen)", &|l| {
        l.contains("listener[0].listen")
    });
    find("the duplicate listener address", &|l| {
        (l.contains("listener[1].listen") || l.contains("listener[2].listen"))
            && l.contains("18481")
            || (l.contains("listener[") && l.to_ascii_lowercase().contains("duplicate"))
    });
    find("the unknown service (route[0].service)", &|l| {
        l.contains("route[0].service") && l.contains("nope")
    });
    find("the path without a leading / (route[1].path)", &|l| {
        l.contains("route[1].path")
    });
    find("the route without a target (route[2])", &|l| {
        l.contains("route[2]")
    });
    find("the route with two targets (route[3])", &|l| {
        l.contains("route[3]")
    });
    find("the unknown key (route[4] colour)", &|l| {
        l.contains("route[4]") && l.contains("colour")
    });
    find("the unknown device type (device[0])", &|l| {
        l.contains("device[0]") && l.contains("teleporter")
    });
    assert!(
        problems.len() >= 8,
        "expected at least 8 problems, got {}:\n{err}",
        problems.len()
    );
}

#[test]
fn config_dump_fills_in_defaults_as_toml_and_json() {
    let dir = TestDir::new("dump");
    let file = dir.write("snakeway.toml", VALID);
    let out = run_cli(&["config", "dump", "-c", file.to_str().unwrap()], &dir.path);
    assert!(out.status.success(), "dump failed:\n{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "max_header_bytes = 65536",
        "idle_timeout_ms = 60000",
        "header_read_timeout_ms = 10000",
    ] {
        assert!(text.contains(needle), "dump lacks `{needle}`:\n{text}");
    }
    // The TOML dump is itself TOML.
    let _: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("dump is not TOML ({e}):\n{text}"));

    let out = run_cli(
        &["config", "dump", "-c", file.to_str().unwrap(), "--json"],
        &dir.path,
    );
    assert!(
        out.status.success(),
        "dump --json failed:\n{}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("dump --json is not JSON ({e}):\n{}", stdout(&out)));
    let l = &json["listener"][0];
    assert_eq!(l["name"], "public");
    assert_eq!(l["listen"], "127.0.0.1:0");
    assert_eq!(l["max_header_bytes"], 65536);
    assert_eq!(l["idle_timeout_ms"], 60000);
    assert_eq!(l["header_read_timeout_ms"], 10000);
    assert_eq!(l["max_connections"], 10000);
    assert_eq!(l["http2"], true);
    let s = &json["service"][0];
    assert_eq!(s["strategy"], "round_robin");
    assert_eq!(s["connect_timeout_ms"], 2000);
    assert_eq!(s["response_timeout_ms"], 30000);
    assert_eq!(s["circuit_breaker"]["failure_threshold"], 5);
    assert_eq!(s["upstreams"][0]["weight"], 1);
    assert_eq!(json["server"]["threads"], 1);
    assert_eq!(json["server"]["shutdown_grace_ms"], 10000);
    assert_eq!(json["route"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["wasm"]["max_instances"], 1000);
    assert!(
        text.contains("max_instances = 1000"),
        "dump lacks `max_instances = 1000`:\n{text}"
    );
}

#[tokio::test]
async fn config_init_writes_a_starter_that_checks_and_serves() {
    let dir = TestDir::new("init");
    let target = dir.join("starter");
    let out = run_cli(&["config", "init", target.to_str().unwrap()], &dir.path);
    assert!(out.status.success(), "init failed:\n{}", stderr(&out));
    let file = target.join("snakeway.toml");
    assert!(file.is_file(), "init did not write {}", file.display());

    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    assert!(
        out.status.success(),
        "the starter config does not check:\n{}",
        stderr(&out)
    );

    // Serve it, on an OS-picked port instead of the starter's fixed one.
    let original = std::fs::read_to_string(&file).unwrap();
    let mut table: toml::Table = toml::from_str(&original).unwrap();
    let listeners = table
        .get_mut("listener")
        .and_then(|l| l.as_array_mut())
        .expect("the starter has [[listener]]s");
    assert!(!listeners.is_empty(), "the starter has no listener");
    for l in listeners.iter_mut() {
        l.as_table_mut()
            .unwrap()
            .insert("listen".into(), "127.0.0.1:0".into());
    }
    let n_listeners = listeners.len();
    if let Some(admin) = table.get_mut("admin").and_then(|a| a.as_table_mut()) {
        admin.insert(
            "listen".into(),
            format!("127.0.0.1:{}", crate::harness::free_port()).into(),
        );
    }
    assert!(
        table.get("admin").is_none() && !original.contains("[admin]"),
        "the starter mentions an admin API it does not configure:\n{original}"
    );
    assert!(
        original.contains("type = \"structured_logging\"")
            && original.contains("output = \"stdout\""),
        "the starter does not log requests to stdout:\n{original}"
    );
    std::fs::write(&file, toml::to_string(&table).unwrap()).unwrap();

    // Every synthetic route answers as configured; any static route answers 200 at its path.
    let routes: Vec<toml::Table> = table
        .get("route")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|r| r.as_table().cloned()).collect())
        .unwrap_or_default();
    let server = Server::start_file(dir, file, n_listeners).await;
    let mut checked = 0;
    for r in &routes {
        if r.contains_key("host") {
            continue;
        }
        let path = r["path"].as_str().unwrap();
        if let Some(respond) = r.get("respond").and_then(|v| v.as_table()) {
            let res = get(server.addr(), path).await;
            let status = respond.get("status").and_then(|s| s.as_integer()).unwrap();
            assert_eq!(
                i64::from(res.status),
                status,
                "starter route {path}: {}",
                res.text()
            );
            if let Some(body) = respond.get("body").and_then(|b| b.as_str()) {
                assert_eq!(res.text(), body, "starter route {path}");
            }
            checked += 1;
        } else if r.contains_key("static_dir") {
            let res = get(server.addr(), path).await;
            assert_eq!(
                res.status,
                200,
                "starter static route {path}: {}",
                res.text()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "the starter config has no synthetic or static route to try: {original}"
    );
    // It logs each request as JSON on stdout.
    assert!(
        server
            .wait_for_log("\"status\":200", std::time::Duration::from_secs(5))
            .await,
        "no access log line:\n{}",
        server.log_text()
    );

    // Its pid_file lets `snakeway reload` find it and confirm the reload.
    let out = run_cli(
        &["reload", "-c", server.config.to_str().unwrap()],
        &std::env::temp_dir(),
    );
    assert!(
        out.status.success(),
        "reload of the starter failed:\n{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("epoch 2"), "{}", stdout(&out));
}

#[test]
fn config_init_names_the_file_in_the_way_and_force_overwrites_it() {
    let dir = TestDir::new("init-existing");
    let mine = dir.write("site/snakeway.toml", "# my own config\n");
    let target = dir.join("site");
    let out = run_cli(&["config", "init", target.to_str().unwrap()], &dir.path);
    assert!(
        !out.status.success(),
        "init overwrote an existing snakeway.toml"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&mine.display().to_string()) && err.contains("--force"),
        "the refusal does not name the file or offer --force: {err}"
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "# my own config\n");
    assert!(
        !target.join("public").exists(),
        "a refused init wrote part of the starter"
    );

    // Only public/index.html in the way: named the same way.
    let dir2 = TestDir::new("init-index");
    let index = dir2.write("public/index.html", "mine");
    let out = run_cli(&["config", "init", "."], &dir2.path);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("index.html"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&index).unwrap(), "mine");

    // Unrelated files in the directory are not in the way.
    let dir3 = TestDir::new("init-other");
    dir3.write("README", "hello");
    let out = run_cli(&["config", "init", "."], &dir3.path);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run_cli(
        &["config", "init", "--force", target.to_str().unwrap()],
        &dir.path,
    );
    assert!(
        out.status.success(),
        "init --force failed: {}",
        stderr(&out)
    );
    let written = std::fs::read_to_string(&mine).unwrap();
    assert!(
        written.contains("[[listener]]"),
        "--force did not overwrite: {written}"
    );
    let out = run_cli(
        &["config", "check", "-c", mine.to_str().unwrap()],
        &dir.path,
    );
    assert!(
        out.status.success(),
        "the forced starter does not check: {}",
        stderr(&out)
    );
}

/// `server.include` appends routes and services from other files; a relative path in an
/// included file (here a `unix:` upstream) resolves against that file's directory.
#[tokio::test]
async fn includes_merge_and_resolve_paths_against_the_including_file() {
    let dir = TestDir::new("include");
    let sock = dir.join("conf.d/sockets/up.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let (requests, _task) = upstream::unix(&sock, upstream::echo("unix")).await;
    dir.write(
        "conf.d/10-service.toml",
        r#"
[[service]]
name = "sock"
upstreams = [{ url = "unix:sockets/up.sock" }]

[[route]]
path = "/sock"
service = "sock"
"#,
    );
    dir.write(
        "conf.d/20-route.toml",
        r#"
[[route]]
path = "/included"
respond = { status = 200, body = "from conf.d" }
"#,
    );
    // A file the glob does not match is not read (it would not even parse).
    dir.write("conf.d/ignored.txt", "this is not toml [[");
    let main = r#"
[server]
threads = 1
include = ["conf.d/*.toml"]

[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/main"
respond = { status = 200, body = "from main" }
"#;
    let file = dir.write("snakeway.toml", main);

    let out = run_cli(
        &["config", "dump", "-c", file.to_str().unwrap(), "--json"],
        &dir.path,
    );
    assert!(out.status.success(), "dump failed:\n{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = json["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/main", "/sock", "/included"],
        "merged routes in main-then-file-name order"
    );

    // Problems in an included file name that file.
    dir.write(
        "conf.d/30-bad.toml",
        "[[route]]\npath = \"/bad\"\nservice = \"missing\"\n",
    );
    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    assert!(!out.status.success());
    let bad = dir.join("conf.d/30-bad.toml");
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.contains("30-bad.toml")
            && l.contains("route[3].service")
            && l.contains("missing")),
        "problem in an included file does not name {} and route[3].service:\n{err}",
        bad.display()
    );
    std::fs::remove_file(&bad).unwrap();

    let server = Server::start_file(dir, file, 1).await;
    let res = get(server.addr(), "/included").await;
    assert_eq!((res.status, res.text().as_str()), (200, "from conf.d"));
    let res = get(server.addr(), "/main").await;
    assert_eq!((res.status, res.text().as_str()), (200, "from main"));
    let res = get_host(server.addr(), "inc.test", "/sock/x").await;
    assert_eq!(
        res.status,
        200,
        "unix upstream named relative to conf.d/: {}",
        res.text()
    );
    let json = res.json();
    assert_eq!(json["tag"], "unix");
    assert_eq!(json["uri"], "/sock/x");
    assert!(requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn config_check_defaults_to_snakeway_toml_and_rejects_unknown_server_keys() {
    let dir = TestDir::new("check-default");
    dir.write("snakeway.toml", VALID);
    let out = run_cli(&["config", "check"], &dir.path);
    assert!(
        out.status.success(),
        "`config check` without -c did not read ./snakeway.toml:\n{}",
        stderr(&out)
    );

    dir.write(
        "snakeway.toml",
        VALID.replace("threads = 1", "threads = 1\nthreadz = 2"),
    );
    let out = run_cli(&["config", "check"], &dir.path);
    assert!(!out.status.success(), "unknown key server.threadz accepted");
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("snakeway.toml: ") && l.contains("threadz")),
        "unknown key not reported with its file and name:\n{err}"
    );
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// `server.threads` sets the number of worker threads: 4 workers run exactly 3 more threads
/// than 1 worker, everything else equal.
#[tokio::test]
async fn server_threads_sets_the_worker_count() {
    let cfg = |n: usize| VALID.replace("threads = 1", &format!("threads = {n}"));
    let one = Server::start(&cfg(1)).await;
    let four = Server::start(&cfg(4)).await;
    for s in [&one, &four] {
        assert_eq!(get(s.addr(), "/healthz").await.status, 200);
    }
    let (a, b) = (threads_of(one.pid), threads_of(four.pid));
    assert_eq!(b, a + 3, "threads with 1 worker: {a}, with 4 workers: {b}");
}

#[test]
fn config_check_refuses_a_max_connections_beyond_its_range() {
    // 2^62: more than tokio's semaphore can hold; it used to pass the check and panic the
    // server at start.
    let dir = TestDir::new("check-huge");
    let file = dir.write(
        "snakeway.toml",
        VALID.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmax_connections = 4611686018427387904",
        ),
    );
    for args in [
        &["config", "check", "-c", file.to_str().unwrap()][..],
        &["serve", "-c", file.to_str().unwrap()][..],
    ] {
        let out = run_cli(args, &dir.path);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(
                "listener[0].max_connections: 4611686018427387904 is out of range (1-1000000)"
            ),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
