//! The `snakeway` command line.

mod generate;
mod process;
mod reload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `--version`: the package version, the commit and the build date (see `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SNAKEWAY_COMMIT"),
    ", built ",
    env!("SNAKEWAY_BUILD_DATE"),
    ")"
);

/// The end of `--help`: the environment, the signals and the config check.
const AFTER_HELP: &str = "\
Environment:
  SNAKEWAY_LOG     the server's log filter (tracing env-filter syntax), e.g. `debug` or
                   `info,snakeway_proxy=debug`; default `info`

Signals (to `snakeway serve`):
  SIGHUP           reload the configuration (`snakeway reload` sends it and waits for the outcome)
  SIGTERM, SIGINT  stop accepting, let in-flight requests finish within
                   `server.shutdown_grace_ms`, then exit

`snakeway config check` is the `nginx -t` of Snakeway: it validates a configuration fully
(certificates, strategies, WASM modules) without starting anything.";

/// Snakeway: a programmable L7 edge proxy.
#[derive(Debug, Parser)]
#[command(name = "snakeway", version = VERSION, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file.
        #[arg(short, long, default_value = "snakeway.toml")]
        config: PathBuf,
    },
    /// Check, print or create a configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show the running server's health, epoch, uptime and upstreams (through its admin API).
    Status {
        /// The configuration file naming the admin listener and its token.
        #[arg(short, long, default_value = "snakeway.toml")]
        config: PathBuf,
    },
    /// Check the configuration, then have the running server reload it and print the outcome.
    ///
    /// Through `POST /admin/reload` when `[admin]` is configured; otherwise by SIGHUP to the
    /// pid in `server.pid_file` (only if that process is a running `snakeway serve`), then
    /// waiting for the server to record the new epoch or why it refused the configuration.
    /// Exits non-zero when the configuration is invalid or the server refused it.
    Reload {
        /// The configuration file naming the admin listener or the pid file.
        #[arg(short, long, default_value = "snakeway.toml")]
        config: PathBuf,
        /// How long to wait for the server's answer, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        wait: u64,
    },
    /// Print a shell completion script (e.g. `snakeway completions bash > snakeway.bash`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page, in roff (e.g. `snakeway man > snakeway.1`), or write one page per
    /// command into a directory.
    Man {
        /// Write `snakeway.1` and a page per subcommand (`snakeway-reload.1`, …) into DIR.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Write a new WASM device crate.
    Wasm {
        #[command(subcommand)]
        command: crate::scaffold::WasmCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and report every problem; exits non-zero if there are any.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "snakeway.toml")]
        config: PathBuf,
    },
    /// Print the merged configuration with every default filled in.
    Dump {
        /// The configuration file.
        #[arg(short, long, default_value = "snakeway.toml")]
        config: PathBuf,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Write a starter configuration (and a page to serve) into DIR.
    Init {
        /// Where to write `snakeway.toml` (and `public/index.html`).
        dir: PathBuf,
        /// Overwrite `snakeway.toml` and `public/index.html` if they exist.
        #[arg(long)]
        force: bool,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snakeway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Wasm { command } => crate::scaffold::run(command),
        Command::Serve { config } => {
            let _log_guard = init_tracing();
            let Some(loaded) = load_or_report(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            crate::serve::serve(&config, loaded)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let Some(loaded) = load_or_report(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            if !check_or_report(&config, loaded) {
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: configuration is valid", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Dump { config, json },
        } => {
            let Some(loaded) = load_or_report(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&loaded)?);
            } else {
                print!("{}", toml::to_string_pretty(&loaded)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Init { dir, force },
        } => {
            let written = snakeway_config::write_starter(&dir, force)?;
            println!(
                "wrote {}; run it with: snakeway serve -c {}",
                written.display(),
                written.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config } => {
            let Some(loaded) = load_or_report(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            let Some(admin) = loaded.admin else {
                anyhow::bail!(
                    "{}: there is no [admin] table, so the server has no admin API to ask",
                    config.display()
                );
            };
            print!("{}", crate::admin::status::report(&admin)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { config, wait } => {
            reload::run(&config, std::time::Duration::from_secs(wait))
        }
        Command::Completions { shell } => {
            generate::completions(shell)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            match out_dir {
                Some(dir) => generate::man_pages(&dir)?,
                None => generate::man()?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a configuration, printing the full problem report to stderr on failure.
fn load_or_report(path: &Path) -> Option<snakeway_config::Config> {
    match snakeway_config::load(path) {
        Ok(config) => Some(config),
        Err(report) => {
            print_report(&report);
            None
        }
    }
}

/// Runs the whole of `config check` on a loaded configuration (certificates, strategies, WASM
/// modules: everything `serve` builds before it binds), printing warnings and the problem
/// report to stderr. True when the configuration is valid.
fn check_or_report(path: &Path, config: snakeway_config::Config) -> bool {
    match crate::serve::check(path, config) {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            true
        }
        Err(report) => {
            print_report(&report);
            false
        }
    }
}

fn print_report(report: &snakeway_config::Report) {
    eprintln!(
        "{} problem(s) in the configuration:\n{report}",
        report.problems.len()
    );
}

/// Sends the server's own log lines to stderr through a dedicated writer thread (bounded and
/// lossy: a worker never blocks on stderr). The guard flushes the queue when dropped.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SNAKEWAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("snakeway-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .init();
    guard
}
