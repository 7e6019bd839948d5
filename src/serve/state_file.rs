//! The run-state file beside the pid file (`snakeway.pid` → `snakeway.pid.state`): the server's
//! epoch and the outcome of its last reload, so that `snakeway reload` can tell whether the
//! reload it asked for by signal was applied or refused, and why.
//!
//! One small JSON object, rewritten atomically (a new file renamed over the old one) when the
//! server starts and after every reload attempt, whatever started it (SIGHUP, `snakeway reload`,
//! `POST /admin/reload`); removed at exit with the pid file.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use snakeway_config::Report;

/// The longest report kept in the file (a longer one is cut, saying so).
const MAX_REPORT: usize = 64 * 1024;
/// The largest state file a reader accepts.
const MAX_FILE: u64 = 2 * MAX_REPORT as u64;

/// What the last event did to the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// The server started with epoch 1; no reload yet.
    Started,
    /// The last reload was applied: `epoch` is the new one.
    Reloaded,
    /// The last reload was refused: `epoch` is the one still serving, `report` says why.
    Refused,
}

/// The contents of the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunState {
    /// The server's process id (the same as in the pid file).
    pub(crate) pid: u32,
    /// The configuration file the server reads on reload.
    pub(crate) config: PathBuf,
    /// The epoch being served.
    pub(crate) epoch: u64,
    /// Reload attempts so far, applied or refused: a client that saw `n` before signalling
    /// waits for more than `n`.
    pub(crate) reloads: u64,
    /// What the last event did.
    pub(crate) result: Outcome,
    /// Why the last reload was refused, one problem per line; empty otherwise.
    pub(crate) report: String,
    /// When this was written, in seconds since the Unix epoch.
    pub(crate) time: u64,
}

impl RunState {
    /// The state of a server that just started serving `config` as epoch 1.
    pub(crate) fn started(config: &Path) -> Self {
        Self {
            pid: std::process::id(),
            config: std::path::absolute(config).unwrap_or_else(|_| config.to_owned()),
            epoch: 1,
            reloads: 0,
            result: Outcome::Started,
            report: String::new(),
            time: now(),
        }
    }

    /// Records one more reload attempt: `result` is the new epoch or why it was refused.
    pub(crate) fn record(&mut self, result: &Result<u64, Report>) {
        self.reloads += 1;
        self.time = now();
        match result {
            Ok(epoch) => {
                self.epoch = *epoch;
                self.result = Outcome::Reloaded;
                self.report.clear();
            }
            Err(report) => {
                self.result = Outcome::Refused;
                self.report = report.to_string();
                if self.report.len() > MAX_REPORT {
                    let mut cut = MAX_REPORT;
                    while !self.report.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    self.report.truncate(cut);
                    self.report
                        .push_str("\n… (cut; the server log has the whole report)");
                }
            }
        }
    }
}

/// Where the state of the server with pid file `pid_file` is kept: `PID_FILE.state`.
pub(crate) fn path(pid_file: &Path) -> PathBuf {
    let mut name = OsString::from(pid_file.as_os_str());
    name.push(".state");
    PathBuf::from(name)
}

/// Writes `state` to `path` atomically (see [`super::write_file_atomically`]).
pub(crate) fn write(path: &Path, state: &RunState) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    json.push(b'\n');
    super::write_file_atomically(path, &json)
}

/// Reads the state file at `path`: `Ok(None)` when there is none. A file larger than any the
/// server writes, or one that is not its JSON, is an error.
pub(crate) fn read(path: &Path) -> anyhow::Result<Option<RunState>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        anyhow::bail!(
            "{} is larger than any state file the server writes",
            path.display()
        );
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{} is not a server state file: {e}", path.display()))
}

/// Removes the state file at exit if it is still ours (it names our pid).
pub(crate) fn remove(path: &Path) {
    if read(path).is_ok_and(|state| state.is_some_and(|s| s.pid == std::process::id())) {
        let _ = std::fs::remove_file(path);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snakeway_config::Problem;

    #[test]
    fn the_state_file_sits_beside_the_pid_file() {
        assert_eq!(
            path(Path::new("/run/snakeway/snakeway.pid")),
            PathBuf::from("/run/snakeway/snakeway.pid.state")
        );
    }

    #[test]
    fn a_reload_counts_and_keeps_the_epoch_of_a_refusal() {
        let mut state = RunState::started(Path::new("snakeway.toml"));
        state.record(&Ok(2));
        assert_eq!(
            (state.epoch, state.reloads, state.result),
            (2, 1, Outcome::Reloaded)
        );
        let refused = Report {
            problems: vec![Problem {
                file: "snakeway.toml".into(),
                key: "route[0].service".into(),
                message: "x".repeat(2 * MAX_REPORT),
            }],
        };
        state.record(&Err(refused));
        assert_eq!(
            (state.epoch, state.reloads, state.result),
            (2, 2, Outcome::Refused)
        );
        assert!(
            state
                .report
                .starts_with("snakeway.toml: route[0].service: xxx")
        );
        assert!(
            state.report.len() < MAX_REPORT + 100,
            "the report was not cut"
        );
        let json = serde_json::to_vec(&state).unwrap();
        assert!((json.len() as u64) < MAX_FILE);
        assert_eq!(serde_json::from_slice::<RunState>(&json).unwrap(), state);
    }
}
