//! The `snakeway` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Snakeway: a programmable L7 edge proxy.
#[derive(Debug, Parser)]
#[command(name = "snakeway", version, about)]
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
    /// Ask the running server (the pid in `server.pid_file`) to reload its configuration.
    Reload {
        /// The configuration file naming the pid file.
        #[arg(short, long, default_value = "snakeway.toml")]
        config: PathBuf,
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
        /// Where to write `snakeway.toml`.
        dir: PathBuf,
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
            Ok(match crate::serve::check(&config, loaded) {
                Ok(warnings) => {
                    for warning in warnings {
                        eprintln!("{}: warning: {warning}", config.display());
                    }
                    println!("{}: configuration is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    print_report(&report);
                    ExitCode::FAILURE
                }
            })
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
            command: ConfigCommand::Init { dir },
        } => {
            let written = snakeway_config::write_starter(&dir)?;
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
        Command::Reload { config } => {
            let Some(loaded) = load_or_report(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            let Some(pid_file) = loaded.server.pid_file else {
                anyhow::bail!(
                    "{}: server.pid_file is not set, so the server cannot be found",
                    config.display()
                );
            };
            signal_reload(&pid_file)?;
            println!("sent SIGHUP to the server in {}", pid_file.display());
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

fn print_report(report: &snakeway_config::Report) {
    eprintln!(
        "{} problem(s) in the configuration:\n{report}",
        report.problems.len()
    );
}

/// Sends SIGHUP to the pid in `pid_file`, which must name one process: a pid of 0, 1 or a
/// negative number would signal a process group, init or every process of the user.
fn signal_reload(pid_file: &Path) -> anyhow::Result<()> {
    let pid = read_pid(pid_file)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| anyhow::anyhow!("cannot signal process {pid}: {e}"))
}

/// The pid a pid file holds: one decimal number greater than 1 (surrounding whitespace
/// allowed). Reads at most a few bytes, so a huge or endless file is refused, not read.
fn read_pid(pid_file: &Path) -> anyhow::Result<i32> {
    use std::io::Read;
    const MAX: u64 = 64;
    let shown = pid_file.display();
    let mut bytes = Vec::new();
    std::fs::File::open(pid_file)
        .and_then(|f| f.take(MAX + 1).read_to_end(&mut bytes))
        .map_err(|e| anyhow::anyhow!("cannot read {shown}: {e} (is the server running?)"))?;
    let text = String::from_utf8_lossy(&bytes);
    if bytes.len() as u64 > MAX {
        anyhow::bail!("{shown} does not hold a process id: it is longer than {MAX} bytes");
    }
    let trimmed = text.trim();
    match trimmed.parse::<i64>() {
        Ok(pid) if pid > 1 => i32::try_from(pid)
            .map_err(|_| anyhow::anyhow!("{shown} holds {pid}, which is not a process id")),
        Ok(pid) => anyhow::bail!(
            "{shown} holds {pid}, which is not a server's process id (it must be greater than 1): \
             refusing to signal it"
        ),
        Err(_) => anyhow::bail!("{shown} does not hold a process id: {trimmed:?}"),
    }
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
