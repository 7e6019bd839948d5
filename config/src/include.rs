//! `server.include`: which files a config pulls in.

use std::path::{Path, PathBuf};

use crate::report::Problems;

/// The files named by `patterns`, relative to `dir`, in load order.
///
/// Patterns are taken in the order written; the files one glob matches are sorted by path (which
/// is file-name order within a directory). A file matched twice is read once; the main file
/// itself is never included. A glob that matches nothing is fine, but a plain path (no `*`, `?`
/// or `[`) that names no file is a problem at `server.include[i]` of the main file.
pub(crate) fn expand(
    patterns: &[String],
    dir: &Path,
    main_name: &Path,
    problems: &mut Problems,
) -> Vec<PathBuf> {
    let main = main_name.canonicalize().ok();
    let mut found: Vec<PathBuf> = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let key = format!("server.include[{i}]");
        let mut matches = Vec::new();
        if pattern.trim().is_empty() {
            problems.push(main_name, key, "is empty");
            continue;
        }
        if !pattern.contains(['*', '?', '[']) {
            let path = dir.join(pattern);
            if path.is_file() {
                matches.push(path);
            } else if path.is_dir() {
                problems.push(
                    main_name,
                    key,
                    format!("{} is a directory, not a file", path.display()),
                );
            } else {
                problems.push(main_name, key, format!("no such file: {}", path.display()));
            }
        } else {
            let full = if Path::new(pattern).is_absolute() {
                pattern.clone()
            } else {
                let dir = glob::Pattern::escape(&dir.to_string_lossy());
                format!("{dir}/{pattern}")
            };
            match glob::glob(&full) {
                Ok(paths) => {
                    for entry in paths {
                        match entry {
                            Ok(path) if path.is_file() => matches.push(path),
                            Ok(_) => {}
                            Err(err) => problems.push(main_name, key.clone(), err.to_string()),
                        }
                    }
                }
                Err(err) => problems.push(
                    main_name,
                    key,
                    format!("invalid glob {pattern:?}: {}", err.msg),
                ),
            }
            matches.sort();
        }
        for path in matches {
            let canonical = path.canonicalize().ok();
            if canonical.is_some() && canonical == main {
                continue;
            }
            if !found.iter().any(|f| f.canonicalize().ok() == canonical) {
                found.push(path);
            }
        }
    }
    found
}
