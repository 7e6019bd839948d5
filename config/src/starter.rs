//! `snakeway config init DIR`: a small config that loads and serves as written.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The starter `snakeway.toml`.
const STARTER_TOML: &str = r#"# snakeway.toml, written by `snakeway config init`.
# Relative paths resolve against this file's directory. Unknown keys are errors;
# `snakeway config check` lists every problem, `snakeway config dump` shows all defaults.

[server]
shutdown_grace_ms = 10000          # drain time on SIGTERM / SIGINT
# include = ["conf.d/*.toml"]      # more [[listener]] [[service]] [[route]] [[device]]

# [admin]                          # the admin API: /admin/health, /admin/reload, /metrics
# listen = "127.0.0.1:9901"

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
/// Refuses with [`io::ErrorKind::AlreadyExists`] when `dir/snakeway.toml` exists; an existing
/// `public/index.html` is left as it is.
pub fn write_starter(dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let toml_path = dir.join("snakeway.toml");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&toml_path)?;
    file.write_all(STARTER_TOML.as_bytes())?;
    let public = dir.join("public");
    fs::create_dir_all(&public)?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(public.join("index.html"))
    {
        Ok(mut index) => index.write_all(STARTER_INDEX.as_bytes())?,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    Ok(toml_path)
}
