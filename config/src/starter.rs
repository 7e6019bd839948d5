//! `snakeway config init DIR`: a small config that loads and serves as written.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The starter `snakeway.toml`.
const STARTER_TOML: &str = r#"# snakeway.toml, written by `snakeway config init`.
# Relative paths resolve against this file's directory. Unknown keys are errors;
# `snakeway config check` lists every problem, `snakeway config dump` shows all defaults.

[server]
pid_file = "snakeway.pid"          # lets `snakeway reload` find and check this server
shutdown_grace_ms = 10000          # drain time on SIGTERM / SIGINT
# include = ["conf.d/*.toml"]      # more [[listener]] [[service]] [[route]] [[device]]

[[listener]]
name = "public"
listen = "127.0.0.1:8080"

# Proxy /api to an application: uncomment both tables.
# [[service]]
# name = "app"
# upstreams = [{ url = "http://127.0.0.1:3000" }]
#
# [[route]]
# path = "/api"
# service = "app"

[[route]]
path = "/healthz"
respond = { status = 200, body = "ok\n" }

[[route]]
path = "/"
static_dir = "public"              # serves public/index.html for /

[[device]]
type = "structured_logging"        # one JSON line per response on stdout
output = "stdout"
phases = ["response"]
"#;

/// The starter `public/index.html`.
const STARTER_INDEX: &str = "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>snakeway</title></head>
<body>
<h1>snakeway is running</h1>
<p>This page is <code>public/index.html</code>; edit <code>snakeway.toml</code> to route elsewhere.</p>
</body>
</html>
";

/// Writes `dir/snakeway.toml` and `dir/public/index.html` (creating `dir` if needed) and returns
/// the path of the toml.
///
/// Writing into an existing directory is fine as long as neither file exists there. When one
/// does, nothing is written and the error ([`io::ErrorKind::AlreadyExists`]) names it and
/// suggests `--force`; with `overwrite`, both files are replaced (the old directory entry is
/// removed first, so a symbolic link there is replaced, never written through).
pub fn write_starter(dir: &Path, overwrite: bool) -> io::Result<PathBuf> {
    let toml_path = dir.join("snakeway.toml");
    let index_path = dir.join("public").join("index.html");
    let files = [(&toml_path, STARTER_TOML), (&index_path, STARTER_INDEX)];
    if !overwrite {
        for (path, _) in &files {
            if fs::symlink_metadata(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is in the way: it already exists (pass --force to overwrite it)",
                        path.display()
                    ),
                ));
            }
        }
    }
    for (path, contents) in files {
        write_new(path, contents, overwrite).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
        })?;
    }
    Ok(toml_path)
}

/// Creates `path` (and its parent directories) holding `contents`; with `overwrite`, a file or
/// symbolic link already there is removed first. A directory in the way is an error.
fn write_new(path: &Path, contents: &str, overwrite: bool) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    if overwrite {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(io::Error::other("it is a directory"));
            }
            Ok(_) => fs::remove_file(path)?,
            Err(_) => {}
        }
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(contents.as_bytes())
}
