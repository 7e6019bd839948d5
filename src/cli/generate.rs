//! `snakeway completions SHELL` and `snakeway man`: generated from the clap definition, so
//! they always match the commands and flags of this binary.

use std::io::Write as _;

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

/// Writes `bytes` to stdout; a reader that stopped early (`snakeway man | head`) is no error.
fn print(bytes: &[u8]) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
