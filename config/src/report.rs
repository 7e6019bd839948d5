//! Problems found while loading a config, and the report that collects them.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with the configuration.
///
/// `file` is the file that holds the offending key: the main file, or the included file for
/// anything written there. `key` is a path like `route[2].service` or `listener[0].tls.cert`.
/// Indices in `listener`, `service`, `route` and `device` count within the **merged** list (the
/// main file's entries first, then each included file's in include order), so `route[3]` is the
/// fourth route of the whole config, which is also its position in [`crate::Config::routes`].
/// For a TOML syntax error the key is `line L, column C`; deserialization errors (unknown key,
/// wrong type) carry the key path and end their message with `(line L, column C)`. A problem
/// about a whole file (it cannot be read) has an empty key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file that holds the offending key.
    pub file: PathBuf,
    /// The key path, e.g. `route[2].service`; empty for a problem with the whole file.
    pub key: String,
    /// What is wrong, short and specific.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found in a config: loading never stops at the first one.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Report {
    /// The problems, in the order they were found (file by file, then key by key).
    pub problems: Vec<Problem>,
}

impl fmt::Display for Report {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl std::error::Error for Report {}

// === impl Problems ===

/// The sink every stage writes problems into.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) list: Vec<Problem>,
}

impl Problems {
    pub(crate) fn push(
        &mut self,
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.list.push(Problem {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Sort key putting problems in config order: section, then index within it.
pub(crate) fn order(key: &str) -> (usize, usize) {
    const SECTIONS: [&str; 7] = [
        "server", "admin", "listener", "service", "route", "device", "wasm",
    ];
    if key.starts_with("line ") || key.is_empty() {
        return (0, 0);
    }
    let end = key.find(['.', '[']).unwrap_or(key.len());
    let section = SECTIONS
        .iter()
        .position(|s| *s == &key[..end])
        .map_or(SECTIONS.len() + 1, |i| i + 1);
    let index = key[end..]
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    (section, index)
}
