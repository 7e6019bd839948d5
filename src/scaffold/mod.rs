//! `snakeway wasm new`: writes a WASM device crate that builds and loads as it stands.
//!
//! The crate's `src/lib.rs` is the guide's example (`examples/wasm/guide/src/lib.rs`, built
//! with the other examples and shown in `docs/wasm.md`), and its `wit/` is the WIT package
//! this binary implements, embedded at build time: no Snakeway source checkout is needed.

mod files;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

/// `snakeway wasm …`.
#[derive(Debug, Subcommand)]
pub(crate) enum WasmCommand {
    /// Write a new WASM device crate (all hooks, the WIT, a build script, a config snippet).
    New {
        /// The device's crate name (letters, digits, `-` and `_`, starting with a letter).
        name: String,
        /// Where to write it (default: `./NAME`); must be missing or empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a `snakeway wasm` command.
pub(crate) fn run(command: WasmCommand) -> anyhow::Result<ExitCode> {
    match command {
        WasmCommand::New { name, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            new_crate(&name, &dir)?;
            let shown = dir.display();
            println!(
                "created the WASM device crate `{name}` in {shown}\n\
                 next:\n  \
                 {shown}/build.sh    builds {shown}/{name}.wasm (needs the wasm32-wasip2 \
                 target)\n  \
                 add {shown}/device.toml to your snakeway.toml (its path is relative to the \
                 directory you ran this in), then: snakeway config check"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the crate `name` into `dir` (created if missing; refused if it holds anything).
fn new_crate(name: &str, dir: &Path) -> anyhow::Result<()> {
    check_name(name)?;
    check_empty(dir)?;
    for (path, contents, executable) in files::crate_files(name, dir) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
        }
        write_new(&path, contents.as_bytes(), executable)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A name Cargo takes as a package name and that reads well as a device name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !starts_well
        || name.len() > 64
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!(
            "{name:?} is not a usable crate name: use letters, digits, `-` and `_`, starting \
             with a letter, at most 64 characters (e.g. `my-device`)"
        );
    }
    Ok(())
}

/// Refuses a `dir` that is a file or holds anything, naming what is in the way.
fn check_empty(dir: &Path) -> anyhow::Result<()> {
    let shown = dir.display();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            if let Some(first) = names.first() {
                anyhow::bail!(
                    "{shown} is not empty (it holds {}{}): nothing was written; choose a new \
                     directory with --dir",
                    dir.join(first).display(),
                    match names.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    }
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => {
            anyhow::bail!("{shown} exists and is not a directory: nothing was written")
        }
        Err(e) => anyhow::bail!("cannot read {shown}: {e}"),
    }
}

/// Creates `path` (never replacing a file) with `contents`.
fn write_new(path: &Path, contents: &[u8], executable: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if executable { 0o755 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = executable;
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guide_shows_the_scaffold_code_verbatim() {
        let guide = include_str!("../../docs/wasm.md");
        let block = format!("```rust\n{}```\n", files::LIB_RS);
        assert!(
            guide.contains(&block),
            "docs/wasm.md must embed examples/wasm/guide/src/lib.rs verbatim in a rust block"
        );
    }

    #[test]
    fn the_scaffold_depends_on_what_the_examples_build_with() {
        let examples = include_str!("../../examples/wasm/Cargo.toml");
        for dep in files::DEPENDENCIES.lines() {
            assert!(
                examples.lines().any(|l| l == dep),
                "examples/wasm/Cargo.toml has no `{dep}`: keep the scaffold's versions the \
                 examples' (they are what CI builds)"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["hello", "my-device", "gate_2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "2fast", "-x", "a b", "dir/x", "é", &"x".repeat(65)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("not a usable crate name"), "{bad:?}: {err}");
        }
    }
}
