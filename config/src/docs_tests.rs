//! `docs/config.md` against the schema, both ways: every key the page documents is one the
//! schema accepts, and every key the schema accepts is documented.
//!
//! The schema side is [`Schema`], traced from the serde mirror in `raw` (so a new field is seen
//! without any list to update). The page side is its key tables, in this format:
//!
//! * A key table is a Markdown table whose header row starts with `| key |`. Its first column
//!   holds one key per row in backticks; the other columns are free.
//! * The line `<!-- keys: PATH -->` (an HTML comment, invisible when rendered) must come before
//!   each key table, after the previous one: it names the table the keys belong to, as a schema
//!   path without indices (`server`, `listener.tls.sni`, `service.upstreams`,
//!   `route.compression`, `device.wasm`). A key written with dots (`respond.status`) is below
//!   that path (`route.respond.status`).
//! * `<!-- keys: device -->` holds the keys common to every device type: each of them must
//!   exist in every type, and documents it for all of them.
//! * A key that is a table (`tls`, `retry`, `respond`) counts as documented when it has a row
//!   or when keys below it are documented.
//!
//! A key table without its marker fails the test, so no table escapes the check.

use std::collections::BTreeSet;

use crate::raw::DEVICE_TYPES;
use crate::schema::{Node, Schema};

const CONFIG_MD: &str = include_str!("../../docs/config.md");

/// The keys documented in `page`, expanded to full schema paths, or what is wrong with the
/// page's format.
fn documented_keys(page: &str) -> Result<BTreeSet<String>, String> {
    let mut keys = BTreeSet::new();
    let mut marker: Option<String> = None;
    let mut in_table: Option<String> = None;
    for (n, line) in page.lines().enumerate() {
        let line_no = n + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- keys:") {
            let path = rest.trim_end_matches("-->").trim();
            marker = Some(path.to_owned());
            continue;
        }
        if trimmed.starts_with("| key |") {
            let Some(path) = marker.take() else {
                return Err(format!(
                    "line {line_no}: a key table without a `<!-- keys: PATH -->` line before it"
                ));
            };
            in_table = Some(path);
            continue;
        }
        let Some(path) = &in_table else { continue };
        if !trimmed.starts_with('|') {
            in_table = None;
            continue;
        }
        if trimmed.starts_with("|---") {
            continue;
        }
        let first = trimmed
            .trim_start_matches('|')
            .split('|')
            .next()
            .unwrap_or("");
        let key = first.trim();
        let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
            return Err(format!(
                "line {line_no}: the first column is not one `key`: {first:?}"
            ));
        };
        if path == "device" {
            for kind in DEVICE_TYPES {
                keys.insert(format!("device.{kind}.{key}"));
            }
        } else {
            keys.insert(format!("{path}.{key}"));
        }
    }
    if let Some(path) = marker {
        return Err(format!(
            "a `<!-- keys: {path} -->` line with no key table after it"
        ));
    }
    Ok(keys)
}

#[test]
fn the_schema_is_traced_whole() {
    let schema = Schema::get();
    assert!(
        schema.untraced.is_empty(),
        "the schema tracer could not follow: {:?}",
        schema.untraced
    );
    // Spot checks that the tracer follows options, arrays and nested tables.
    let keys = schema.keys();
    for key in [
        "server.threads",
        "listener.tls.sni.hosts",
        "service.upstreams.url",
        "service.retry.on",
        "route.compression.min_size",
        "route.respond.status",
        "device.wasm.config",
        "device.identity.type",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    assert_eq!(schema.nodes.get("device.wasm.config"), Some(&Node::Open));
}

#[test]
fn every_documented_key_exists_and_every_key_is_documented() {
    let schema = Schema::get();
    let schema_keys: BTreeSet<String> = schema.keys().into_iter().collect();
    let documented = documented_keys(CONFIG_MD).unwrap_or_else(|e| panic!("docs/config.md: {e}"));

    let unknown: Vec<_> = documented.difference(&schema_keys).collect();
    let undocumented: Vec<_> = schema_keys
        .iter()
        .filter(|key| {
            let below = format!("{key}.");
            !documented.contains(*key) && !documented.iter().any(|d| d.starts_with(&below))
        })
        .collect();
    assert!(
        unknown.is_empty() && undocumented.is_empty(),
        "docs/config.md and the schema (config/src/raw.rs) disagree.\n\
         Documented but not in the schema: {unknown:?}\n\
         In the schema but not documented: {undocumented:?}\n\
         (see config/src/docs_tests.rs for how the page marks its key tables)"
    );
}

#[test]
fn the_page_format_is_enforced() {
    assert!(documented_keys("| key | type |\n|---|---|\n| `a` | x |\n").is_err());
    assert!(documented_keys("<!-- keys: server -->\n\ntext\n").is_err());
    assert!(documented_keys("<!-- keys: server -->\n| key | t |\n|---|---|\n| a | x |\n").is_err());
    let keys = documented_keys(
        "<!-- keys: route -->\n| key | t |\n|---|---|\n| `respond.status` | x |\n\n\
         <!-- keys: device -->\n| key | t |\n|---|---|\n| `name` | x |\n",
    )
    .unwrap();
    assert!(keys.contains("route.respond.status"));
    assert!(keys.contains("device.wasm.name") && keys.contains("device.identity.name"));
}

#[test]
fn a_documented_key_the_schema_lacks_is_caught() {
    // The comparison itself, on a page with one made-up key.
    let documented = documented_keys(
        "<!-- keys: server -->\n| key | t |\n|---|---|\n| `threads` | x |\n| `thread_count` | x |\n",
    )
    .unwrap();
    let schema_keys: BTreeSet<String> = Schema::get().keys().into_iter().collect();
    let unknown: Vec<_> = documented.difference(&schema_keys).collect();
    assert_eq!(unknown, ["server.thread_count"]);
}
