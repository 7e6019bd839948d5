//! Every TOML example in `README.md` and `docs/*.md` passes `snakeway config check`.
//!
//! Each fenced block whose info string starts with `toml` is checked, and its info string says
//! how (any other word after `toml` fails the test, so no example escapes checking):
//!
//! * ```` ```toml ```` — a complete `snakeway.toml`, checked as it stands.
//! * ```` ```toml fragment ```` — part of a config: checked appended to a minimal config that
//!   holds one `[[listener]]` (`listen = "127.0.0.1:0"`). It must start with a table header
//!   (`[[device]]`, `[[route]]`, …), so that none of its keys lands in that listener, and it
//!   must not hold a `[[listener]]` (a complete example is plain `toml`).
//! * ```` ```toml cargo ```` — a Cargo file (the WASM guide's), not a Snakeway config: it must
//!   parse as TOML.
//!
//! Files an example names are made in its temporary directory before the check, at the path
//! it gives (which must be relative): a matching certificate and key for each TLS `cert`/`key`
//! pair, a CA certificate for `ca_file`, a directory for `static_dir`, a MaxMind database for
//! `geoip_db`, the example guest of the same file name (from `examples/wasm`) for a WASM
//! `path`, and the directory of a log `output` file. Nothing else is made.

#[path = "../../layers/identity/tests/support/mmdb.rs"]
mod mmdb;

use std::path::Path;

use crate::harness::{TestDir, run_cli};
use crate::pki::Ca;

/// How a block is checked (its info string after `toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Complete,
    Fragment,
    Cargo,
}

/// One ```` ```toml ```` block of a Markdown file.
#[derive(Debug)]
struct Example {
    /// `FILE:LINE` of its opening fence.
    at: String,
    kind: Result<Kind, String>,
    text: String,
}

/// The TOML blocks of `markdown` (named `file` in their `at`).
fn examples(file: &str, markdown: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut open: Option<Example> = None;
    // Inside a block of another language, whose fences open nothing.
    let mut other = false;
    for (n, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        if let Some(example) = &mut open {
            if fence.starts_with("```") {
                out.push(open.take().unwrap());
            } else {
                example.text.push_str(line);
                example.text.push('\n');
            }
            continue;
        }
        let Some(info) = fence.strip_prefix("```") else {
            continue;
        };
        if other {
            other = false;
            continue;
        }
        let mut words = info.split_whitespace();
        if words.next() != Some("toml") {
            other = true;
            continue;
        }
        let rest: Vec<&str> = words.collect();
        let kind = match rest.as_slice() {
            [] => Ok(Kind::Complete),
            ["fragment"] => Ok(Kind::Fragment),
            ["cargo"] => Ok(Kind::Cargo),
            other => Err(format!(
                "unknown info string `toml {}` (use `toml`, `toml fragment` or `toml cargo`)",
                other.join(" ")
            )),
        };
        open = Some(Example {
            at: format!("{file}:{}", n + 1),
            kind,
            text: String::new(),
        });
    }
    if let Some(example) = open {
        panic!("{}: the block is never closed", example.at);
    }
    out
}

/// The config file to check for `example`, or why it is not one.
fn config_text(example: &Example) -> Result<Option<String>, String> {
    match example.kind.clone()? {
        Kind::Cargo => toml::from_str::<toml::Table>(&example.text)
            .map(|_| None)
            .map_err(|e| format!("not valid TOML: {e}")),
        Kind::Complete => Ok(Some(example.text.clone())),
        Kind::Fragment => {
            let first = example
                .text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or("");
            if !first.starts_with('[') {
                return Err(format!(
                    "a fragment must start with a table header, not {first:?}"
                ));
            }
            if example.text.contains("[[listener]]") {
                return Err(
                    "a fragment with a [[listener]]: make it a complete `toml` example".into(),
                );
            }
            Ok(Some(format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{}",
                example.text
            )))
        }
    }
}

/// Makes the files `config` names in `dir` (see the module docs).
fn make_files(dir: &TestDir, config: &toml::Table) -> Result<(), String> {
    let ca = Ca::new();
    let rel = |value: Option<&toml::Value>| -> Result<Option<String>, String> {
        match value.and_then(toml::Value::as_str) {
            Some(p) if Path::new(p).is_absolute() => {
                Err(format!("{p}: an example's files must be relative paths"))
            }
            Some(p) => Ok(Some(p.to_owned())),
            None => Ok(None),
        }
    };
    let tables = |key: &str| -> Vec<toml::Table> {
        match config.get(key) {
            Some(toml::Value::Array(items)) => {
                items.iter().filter_map(|i| i.as_table().cloned()).collect()
            }
            _ => Vec::new(),
        }
    };
    let pair = |cert: Option<String>, key: Option<String>| {
        let leaf = ca.leaf(&["localhost"]);
        if let Some(cert) = cert {
            dir.write(&cert, &leaf.cert_pem);
        }
        if let Some(key) = key {
            dir.write(&key, &leaf.key_pem);
        }
    };
    for listener in tables("listener") {
        let Some(tls) = listener.get("tls").and_then(toml::Value::as_table) else {
            continue;
        };
        pair(rel(tls.get("cert"))?, rel(tls.get("key"))?);
        for sni in tls
            .get("sni")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            pair(rel(sni.get("cert"))?, rel(sni.get("key"))?);
        }
    }
    for service in tables("service") {
        if let Some(ca_file) = rel(service.get("ca_file"))? {
            dir.write(&ca_file, &ca.cert_pem);
        }
    }
    for route in tables("route") {
        if let Some(static_dir) = rel(route.get("static_dir"))? {
            std::fs::create_dir_all(dir.join(&static_dir)).unwrap();
        }
    }
    for device in tables("device") {
        match device.get("type").and_then(toml::Value::as_str) {
            Some("identity") => {
                if let Some(db) = rel(device.get("geoip_db"))? {
                    let mut w = mmdb::Writer::new("GeoIP2-Country");
                    let record = mmdb::Value::map([(
                        "country",
                        mmdb::Value::map([("iso_code", mmdb::Value::str("NL"))]),
                    )]);
                    w.insert("192.0.2.0/24", &record);
                    dir.write(&db, w.build());
                }
            }
            Some("wasm") => {
                if let Some(path) = rel(device.get("path"))? {
                    let stem = Path::new(&path).file_stem().unwrap().to_string_lossy();
                    // The five-minute guide's `hello` is what `snakeway wasm new hello` writes,
                    // whose code is the `guide` example's.
                    let stem = if stem == "hello" {
                        "guide".into()
                    } else {
                        stem
                    };
                    let guest = crate::wasm::guest(&stem);
                    let bytes = std::fs::read(&guest)
                        .map_err(|e| format!("{path}: no example guest {guest}: {e}"))?;
                    dir.write(&path, bytes);
                }
            }
            Some("structured_logging") => {
                if let Some(output) = rel(device.get("output"))?
                    && output != "stdout"
                    && output != "stderr"
                    && let Some(parent) = Path::new(&output).parent()
                {
                    std::fs::create_dir_all(dir.join(&parent.to_string_lossy())).unwrap();
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks one example; the error says why it fails.
fn check(example: &Example) -> Result<(), String> {
    let Some(text) = config_text(example)? else {
        return Ok(());
    };
    let config: toml::Table = toml::from_str(&text).map_err(|e| format!("not valid TOML: {e}"))?;
    let dir = TestDir::new("docs-example");
    make_files(&dir, &config)?;
    let file = dir.write("snakeway.toml", &text);
    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`config check` refused it:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `README.md` and every `docs/*.md`, with their names relative to the repository.
fn pages() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn every_toml_example_in_the_docs_passes_config_check() {
    // Examples with WASM devices compile a module, like the WASM tests.
    let _serial = crate::wasm::SERIAL.lock().await;
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, text) in pages() {
        for example in examples(&name, &text) {
            checked += 1;
            if let Err(why) = check(&example) {
                failures.push(format!("{}: {why}\n{}", example.at, example.text));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} TOML examples found: is the extraction broken?"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} TOML examples fail (conventions: tests/e2e/docs_examples.rs):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_conventions_catch_bad_examples() {
    let page = "text\n```toml\n[server]\nthreads = 0\n```\n```toml fragment\npath = \"/\"\n```\n\
                ```toml frgment\n[[route]]\n```\n```rust\nlet x = 1;\n```\n\
                ```toml fragment\n[[route]]\npath = \"/\"\nrespond = { status = 200 }\n```\n\
                ```toml cargo\n[lib]\ncrate-type = [\"cdylib\"]\n```\n";
    let found = examples("page.md", page);
    assert_eq!(found.len(), 5, "{found:?}");
    assert_eq!(found[0].at, "page.md:2");
    // A complete example with a bad value, and one without a listener.
    assert!(check(&found[0]).unwrap_err().contains("server.threads"));
    // A fragment whose first line is a key, and an unknown info string.
    assert!(check(&found[1]).unwrap_err().contains("table header"));
    assert!(
        check(&found[2])
            .unwrap_err()
            .contains("unknown info string")
    );
    // A good fragment and a Cargo file pass.
    check(&found[3]).unwrap();
    check(&found[4]).unwrap();
}

#[tokio::test]
async fn the_default_config_serves_and_logs_each_request_on_stdout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("snakeway.toml")).unwrap();
    let fixed = "listen = \"127.0.0.1:8080\"";
    assert!(
        text.contains(fixed),
        "the README's quick start promises 127.0.0.1:8080"
    );
    // Its own port may be taken here; everything else is served as shipped.
    let text = text.replace(fixed, "listen = \"127.0.0.1:0\"");
    let dir = TestDir::new("default-config");
    dir.write(
        "public/index.html",
        std::fs::read(root.join("public/index.html")).unwrap(),
    );
    let server = crate::harness::Server::start_in(dir, &text).await;

    let resp = crate::client::get(server.addr(), "/healthz").await;
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"ok\n");
    let resp = crate::client::get(server.addr(), "/").await;
    assert_eq!(resp.status, 200);

    let logged = |path: &'static str| {
        move |line: &String| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|v| v["path"] == path && v["status"] == 200)
        }
    };
    let lines = || server.log_lines();
    assert!(
        crate::harness::eventually(std::time::Duration::from_secs(5), || {
            let lines = lines();
            lines.iter().any(logged("/healthz")) && lines.iter().any(logged("/"))
        })
        .await,
        "no JSON access-log line per request; output:\n{}",
        server.log_text()
    );
}
