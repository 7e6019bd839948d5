//! `snakeway completions SHELL` and `snakeway man`: generated from the clap definition, so
//! they always match the commands and flags of this binary.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use clap::CommandFactory;

use super::Cli;

/// Prints the completion script for `shell` to stdout.
pub(super) fn completions(shell: clap_complete::Shell) -> std::io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "snakeway", &mut script);
    print(&script)
}

/// Prints the man page (roff, section 1) to stdout: the top-level page, which lists every
/// subcommand with its summary, followed by the environment and signals from `--help`.
pub(super) fn man() -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    print(&page)
}

/// Writes the page of every command (`snakeway.1`, `snakeway-serve.1`, `snakeway-config-check.1`,
/// …) into `dir`, creating it if needed, and lists them on stdout.
pub(super) fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    for page in pages {
        println!("{}", page.display());
    }
    Ok(())
}

/// Writes `bytes` to stdout; a reader that stopped early (`snakeway man | head`) is no error.
fn print(bytes: &[u8]) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
