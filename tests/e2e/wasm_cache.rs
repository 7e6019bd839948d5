//! The on-disk WASM compilation cache through the real server (issue 4: "compiled artifacts
//! cached by content hash so restarts and reloads skip compilation"): a second server on the
//! same `[wasm] cache_dir` loads the compiled module instead of compiling it, a reload that
//! changes `[wasm]` keeps the running cache and instance limit, and a directory that cannot be
//! used is a warning for `config check` and `serve`, never a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client;
use crate::harness::{Server, Signal, TestDir, run_cli};

const WAIT: Duration = Duration::from_secs(10);

/// The `add-header` example guest, freshly built by `examples/wasm/build.sh`.
fn add_header() -> PathBuf {
    PathBuf::from(crate::wasm::guest("add-header"))
}

/// One listener answering 200, one WASM device tagging responses, and `[wasm] cache_dir`.
fn config(cache_dir: &Path) -> String {
    format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/"
respond = {{ status = 200, body = "ok" }}

[[device]]
type = "wasm"
name = "tag"
path = {guest:?}
config = {{ response_name = "x-served-by", response_value = "wasm" }}

[wasm]
cache_dir = {cache_dir:?}
"#,
        guest = add_header().display().to_string(),
        cache_dir = cache_dir.display().to_string(),
    )
}

/// The compiled artifacts in a cache directory (`modules/<wasmtime version>/<hash>`).
fn artifacts(cache_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(versions) = std::fs::read_dir(cache_dir.join("modules")) else {
        return found;
    };
    for version in versions.flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(version.path()).unwrap().flatten() {
            if file.path().extension().is_none() {
                found.push(file.path());
            }
        }
    }
    found
}

/// The server's log lines about getting a component's compiled code (`WASM component compiled`
/// or `WASM component loaded from the compilation cache`, with a `disk_cache` field).
fn compiled(server: &Server) -> Vec<String> {
    server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("WASM component") && l.contains("disk_cache="))
        .collect()
}

async fn assert_tagged(server: &Server) {
    let resp = client::get(server.addr(), "/").await;
    assert_eq!(resp.status, 200, "{}", server.log_text());
    assert_eq!(resp.header("x-served-by"), Some("wasm"));
}

#[tokio::test]
async fn a_restart_loads_the_compiled_module_from_the_cache_dir() {
    let cache = TestDir::new("wasm-cache");
    let cache_dir = cache.join("compiled");

    let first = Server::start_in(TestDir::new("wasm-cache-1"), &config(&cache_dir)).await;
    let lines = compiled(&first);
    assert!(
        lines.len() == 1 && lines[0].contains("compiled") && lines[0].contains("\"miss\""),
        "{}",
        first.log_text()
    );
    assert_tagged(&first).await;
    assert_eq!(artifacts(&cache_dir).len(), 1, "{}", first.log_text());
    drop(first);

    let second = Server::start_in(TestDir::new("wasm-cache-2"), &config(&cache_dir)).await;
    let lines = compiled(&second);
    assert!(
        lines.len() == 1 && lines[0].contains("loaded from the compilation cache"),
        "{}",
        second.log_text()
    );
    assert_tagged(&second).await;
    assert_eq!(artifacts(&cache_dir).len(), 1);

    // A reload with another cache directory keeps the running one, and says so.
    let elsewhere = cache.join("elsewhere");
    second.rewrite_config(&config(&elsewhere));
    second.signal(Signal::SIGHUP);
    assert!(
        second.wait_for_log("configuration reloaded", WAIT).await,
        "{}",
        second.log_text()
    );
    assert_eq!(
        second.log_count("it takes effect at the next restart"),
        1,
        "{}",
        second.log_text()
    );
    // The unchanged module came from memory: no compilation, no new directory.
    assert_eq!(compiled(&second).len(), 1);
    assert!(!elsewhere.exists());
    assert_tagged(&second).await;

    // So does one with another instance limit.
    second.rewrite_config(&format!("{}max_instances = 8\n", config(&elsewhere)));
    second.signal(Signal::SIGHUP);
    assert!(
        second
            .wait_for_log_count("configuration reloaded", 2, WAIT)
            .await,
        "{}",
        second.log_text()
    );
    assert_eq!(
        second.log_count(
            "the WASM instance limit changed (1000 -> 8): it takes effect at the next restart"
        ),
        1,
        "{}",
        second.log_text()
    );
    assert_tagged(&second).await;
}

#[tokio::test]
async fn a_cache_dir_that_cannot_be_used_is_only_a_warning() {
    let dir = TestDir::new("wasm-cache-unusable");
    let not_a_dir = dir.write("not-a-dir", "x");
    let toml = config(&not_a_dir);
    let file = dir.write("snakeway.toml", &toml);

    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check failed:\n{stderr}");
    let warning = format!("{}: warning: wasm.cache_dir: ", file.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&warning) && l.contains("not a directory")),
        "no warning in:\n{stderr}"
    );

    let server = Server::start_in(dir, &toml).await;
    assert!(
        server.log_count("without a disk cache") == 1,
        "{}",
        server.log_text()
    );
    let lines = compiled(&server);
    assert!(
        lines.len() == 1 && lines[0].contains("compiled") && lines[0].contains("\"off\""),
        "{}",
        server.log_text()
    );
    assert_tagged(&server).await;
    assert_eq!(std::fs::read_to_string(&not_a_dir).unwrap(), "x");
}
