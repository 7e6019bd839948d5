//! `snakeway completions SHELL` and `snakeway man`: generated from the clap definition, so
//! they always match the commands and flags of this binary.

use clap::CommandFactory;

use super::Cli;

/// Prints the completion script for `shell` to stdout.
pub(super) fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "snakeway",
        &mut std::io::stdout(),
    );
}

/// Prints the man page (roff, section 1) to stdout: the top-level page, which lists every
/// subcommand with its summary, followed by the environment and signals from `--help`.
pub(super) fn man() -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())
}
