//! `snakeway reload`: check the configuration, have the running server reload it, and say what
//! the server did with it.
//!
//! 1. The configuration is checked exactly as `snakeway config check` does; an invalid one is
//!    reported and nothing is sent.
//! 2. With `[admin]`, the reload goes through `POST /admin/reload`, whose answer is the new
//!    epoch or the server's report. If nothing listens there (a server started before `[admin]`
//!    was added) and a pid file is configured, step 3 is used instead.
//! 3. Otherwise the pid in `server.pid_file` gets SIGHUP, once it is known to be a running
//!    `snakeway serve` (see [`super::process`]); then the server's run-state file beside the
//!    pid file is watched until it records one more reload attempt: applied (the new epoch)
//!    or refused (the report).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::admin::status::{self, ReloadAnswer};
use crate::serve::state_file::{self, Outcome, RunState};

/// How often the state file is looked at while waiting.
const POLL: Duration = Duration::from_millis(50);

/// What `snakeway reload` says after reporting an invalid configuration.
const NOTHING_SENT: &str = "nothing was sent to the server; it keeps its configuration";

/// Runs `snakeway reload` for the configuration at `config_path`, waiting at most `wait` for
/// the server's answer.
pub(super) fn run(config_path: &Path, wait: Duration) -> anyhow::Result<ExitCode> {
    let Some(loaded) = super::load_or_report(config_path) else {
        eprintln!("{NOTHING_SENT}");
        return Ok(ExitCode::FAILURE);
    };
    let admin = loaded.admin.clone();
    let pid_file = loaded.server.pid_file.clone();
    if !super::check_or_report(config_path, loaded) {
        eprintln!("{NOTHING_SENT}");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(admin) = &admin {
        match status::reload(admin, wait) {
            Ok(answer) => return Ok(report_admin(answer)),
            Err(e) if unreachable(&e) && pid_file.is_some() => {
                eprintln!("{e:#}; signalling the pid in server.pid_file instead");
            }
            Err(e) => return Err(e),
        }
    }
    let Some(pid_file) = pid_file else {
        bail!(
            "{}: neither [admin] nor server.pid_file is set, so the server cannot be found",
            config_path.display()
        );
    };
    by_signal(config_path, &pid_file, wait)
}

/// Whether `e` says the admin API could not be reached at all (nothing was asked).
fn unreachable(e: &anyhow::Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        })
}

fn report_admin(answer: ReloadAnswer) -> ExitCode {
    match answer {
        ReloadAnswer::Reloaded(epoch) => {
            println!("reloaded: the server now serves epoch {epoch}");
            ExitCode::SUCCESS
        }
        ReloadAnswer::Refused(report) => {
            eprintln!("the server refused the configuration and keeps the running one:\n{report}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP to the server in `pid_file`, then waits up to `wait` for its state file to record
/// the outcome.
fn by_signal(config_path: &Path, pid_file: &Path, wait: Duration) -> anyhow::Result<ExitCode> {
    let pid = super::process::read_pid(pid_file)?;
    super::process::ensure_snakeway_server(pid, pid_file)?;
    let state_path = state_file::path(pid_file);
    let before = match state_file::read(&state_path)? {
        Some(state) if i64::from(state.pid) == i64::from(pid) => state,
        Some(state) => bail!(
            "{} belongs to process {}, not to process {pid} named by {}: refusing to signal \
             it; is another server using the same pid_file?",
            state_path.display(),
            state.pid,
            pid_file.display()
        ),
        None => bail!(
            "process {pid} is a Snakeway server but records no state in {} (a version without \
             it?), so its answer cannot be read; signal it yourself: kill -HUP {pid}",
            state_path.display()
        ),
    };
    if !same_file(&before.config, config_path) {
        eprintln!(
            "note: the server reads {}, not {}; it reloads its own file",
            before.config.display(),
            config_path.display()
        );
    }
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|e| anyhow!("cannot signal process {pid}: {e}"))?;
    let after = wait_for_reload(pid, &state_path, &before, wait)?;
    match after.result {
        Outcome::Reloaded => {
            println!(
                "reloaded: the server (pid {pid}) now serves epoch {}",
                after.epoch
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Refused => {
            eprintln!(
                "the server (pid {pid}) refused the configuration and keeps serving epoch {}:\n{}",
                after.epoch, after.report
            );
            Ok(ExitCode::FAILURE)
        }
        Outcome::Started => bail!(
            "{} says process {pid} restarted instead of reloading",
            state_path.display()
        ),
    }
}

/// Polls the state file until it records more reload attempts than `before`, the server is
/// gone, or `wait` has passed.
fn wait_for_reload(
    pid: i32,
    state_path: &Path,
    before: &RunState,
    wait: Duration,
) -> anyhow::Result<RunState> {
    let deadline = Instant::now() + wait;
    loop {
        std::thread::sleep(POLL);
        match state_file::read(state_path)? {
            Some(state) if state.pid == before.pid && state.reloads > before.reloads => {
                return Ok(state);
            }
            Some(_) => {}
            None => bail!(
                "{} disappeared: the server (pid {pid}) stopped before it reloaded",
                state_path.display()
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "the server (pid {pid}) was signalled but recorded no reload within {wait:?}; \
                 it may still be building the configuration (see its log, or pass a longer --wait)"
            );
        }
    }
}

/// Whether two paths name the same file (compared canonically where both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
