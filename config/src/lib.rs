//! The `snakeway.toml` schema: parsing, includes, defaults and validation with a full report.
//!
//! [`load`] reads the main file and the files its `server.include` globs name, resolves every
//! relative path against the directory of the file that names it, fills every default and checks
//! everything, returning either a [`Config`] or a [`Report`] of **every** problem found, each
//! with its file and key path (see [`Problem`]).
//!
//! How it works: each file is parsed by toml (a syntax error stops that file only), then `[server]`,
//! `[admin]`, `[wasm]` and each `[[listener]]`, `[[service]]`, `[[route]]` and `[[device]]` element is
//! deserialized on its own into a private serde mirror with `deny_unknown_fields` (so one bad
//! element does not hide the others), and finally `validate` turns the mirror into the public,
//! typed model. Included files' elements are appended after the main file's, in include order.
//!
//! ```no_run
//! let config = snakeway_config::load("snakeway.toml".as_ref()).unwrap_or_else(|report| {
//!     eprintln!("{report}");
//!     std::process::exit(1)
//! });
//! println!("{}", toml::to_string(&config).unwrap());
//! ```

mod include;
mod model;
mod parse;
mod raw;
mod report;
mod schema;
mod starter;
mod suggest;
mod validate;

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use model::*;
pub use report::{Problem, Report};
pub use starter::write_starter;

use parse::Role;
use raw::{RawConfig, SourceFile};
use report::Problems;

/// Reads `path` and its includes, resolves relative paths, fills defaults and validates.
///
/// Every problem is collected; on any problem the result is a [`Report`] listing them all.
pub fn load(path: &Path) -> Result<Config, Report> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path),
        Err(err) => Err(Report {
            problems: vec![Problem {
                file: path.to_owned(),
                key: String::new(),
                message: format!("cannot read: {err}"),
            }],
        }),
    }
}

/// Like [`load`], with the main file's text given; `path` still names it in problems, and its
/// directory is where relative paths and includes are looked up.
pub fn load_str(text: &str, path: &Path) -> Result<Config, Report> {
    let mut problems = Problems::default();
    let mut raw = RawConfig::default();
    raw.files.push(SourceFile {
        name: path.to_owned(),
        dir: dir_of(path),
    });
    parse::parse_file(text, 0, Role::Main, &mut raw, &mut problems);

    let patterns = raw
        .server
        .as_ref()
        .and_then(|s| s.include.clone())
        .unwrap_or_default();
    let dir = raw.files[0].dir.clone();
    for file in include::expand(&patterns, &dir, path, &mut problems) {
        let id = raw.files.len();
        raw.files.push(SourceFile {
            dir: dir_of(&file),
            name: file,
        });
        match std::fs::read_to_string(&raw.files[id].name) {
            Ok(text) => parse::parse_file(&text, id, Role::Include, &mut raw, &mut problems),
            Err(err) => problems.push(
                raw.files[id].name.clone(),
                "",
                format!("cannot read: {err}"),
            ),
        }
    }

    let config = validate::validate(raw, &mut problems);
    if problems.list.is_empty() {
        return Ok(config);
    }
    // Config order: syntax errors, server, admin, then each list by merged index, then wasm.
    let mut problems = problems.list;
    problems.sort_by_key(|p| report::order(&p.key));
    Err(Report { problems })
}

/// The absolute directory of `file`, against which its relative paths resolve.
fn dir_of(file: &Path) -> PathBuf {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    file.parent().map(Path::to_owned).unwrap_or_default()
}
