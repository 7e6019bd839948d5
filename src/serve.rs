//! `snakeway serve`: the runtime, the listeners, signals, reload and graceful shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use snakeway_config::{Config, Problem, Report, Runtime};
use snakeway_proxy::HealthChecker;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::admin::Admin;
use crate::conn::Listeners;
use crate::devices::Purpose;
use crate::snapshot::Snapshot;
use crate::state::State;

pub(crate) mod state_file;
mod workers;

use workers::Workers;

/// A request to reload the configuration, with an optional reply (the new epoch or the report).
pub(crate) type ReloadRequest = Option<oneshot::Sender<Result<u64, Report>>>;

/// Everything `serve` checks before it binds: the configuration's validation (already done by
/// loading it) plus building the runtime snapshot (certificates, CA files, strategies, devices).
/// On success, what the server would only warn about (e.g. a WASM compilation cache directory
/// it cannot use).
pub(crate) fn check(config_path: &Path, config: Config) -> Result<Vec<String>, Report> {
    let snapshot = Snapshot::build(config, config_path.to_owned(), 0, None, Purpose::Check)?;
    Ok(crate::devices::warnings(&snapshot.config))
}

/// Loads `config_path`, then serves until SIGTERM or SIGINT. Returns once every connection has
/// finished or the shutdown grace period has passed.
///
/// Under `work_stealing` everything runs on one multi-threaded runtime of `threads` workers.
/// Under `per_core` connections run on `threads` single-threaded [`Workers`], and the control
/// work (signals, reloads, the admin API, health checks) on a single-threaded runtime of its
/// own on this thread.
pub(crate) fn serve(config_path: &Path, config: Config) -> anyhow::Result<()> {
    let path = config_path.to_owned();
    match config.server.runtime {
        Runtime::WorkStealing => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.server.threads)
                .thread_name("snakeway-worker")
                .enable_all()
                .build()?;
            runtime.block_on(run(path, config, None))?;
            // Connections that outlived the grace period are dropped with the runtime.
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
        Runtime::PerCore => {
            let workers = Workers::start(config.server.threads)?;
            let control = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = control.block_on(run(path, config, Some(&workers)));
            control.shutdown_timeout(Duration::from_millis(100));
            // Connections that outlived the grace period are dropped with the workers.
            workers.stop();
            result?;
        }
    }
    Ok(())
}

async fn run(path: PathBuf, config: Config, workers: Option<&Workers>) -> anyhow::Result<()> {
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let pid_file = config.server.pid_file.clone();
    let snapshot = Snapshot::build(config, path.clone(), 1, None, Purpose::Serve)?;
    let mut listeners = Listeners::new(workers.map(Workers::handles).unwrap_or_default());
    let bound = listeners.bind(&snapshot)?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let mut admin = Admin::new(reload_tx);
    let admin_plan = admin.bind(&snapshot.config, &path)?;
    let state = Arc::new(State::new(snapshot));
    if let Some(workers) = workers {
        // Queued before the accept loops: each worker has its slot before its first request.
        workers.attach(&state);
    }
    listeners.apply(bound, &state.snapshot.load(), &state);
    admin.apply(admin_plan, &state);
    let mut checkers = start_health_checks(&state.snapshot.load());

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Only now: a `snakeway reload` that finds the pid must find a process that handles SIGHUP
    // (its default action would kill the server).
    if let Some(pid_file) = &pid_file {
        write_pid_file(pid_file)
            .map_err(|e| anyhow::anyhow!("cannot write pid_file {}: {e}", pid_file.display()))?;
    }
    // What `snakeway reload` reads to learn how the reload it asked for went.
    let state_path = pid_file.as_deref().map(state_file::path);
    let mut run_state = state_file::RunState::started(&path);
    if let Some(state_path) = &state_path {
        write_state(state_path, &run_state);
    }
    tracing::info!(epoch = 1, "snakeway started");
    loop {
        let reply: ReloadRequest = tokio::select! {
            _ = hup.recv() => None,
            Some(reply) = reload_rx.recv() => reply,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        // A stop signal does not wait for a reload still building its snapshot (a WASM compile
        // takes seconds): the half-built snapshot is dropped and nothing was changed yet.
        tokio::select! {
            result = reload(&path, &state, &mut listeners, &mut admin, &mut checkers) => {
                if let (Ok(_), Some(workers)) = (&result, workers) {
                    workers.refresh(&state);
                }
                if let Some(state_path) = &state_path {
                    run_state.record(&result);
                    write_state(state_path, &run_state);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    // `GET /admin/health` says so while connections drain (the admin listener stays open);
    // queued and later `POST /admin/reload`s are answered 503 at once.
    state.start_draining();
    drop(reload_rx);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining connections"
    );
    drop(checkers);
    let drained = listeners.shutdown(grace).await;
    if drained {
        tracing::info!("all connections finished");
    } else {
        tracing::warn!("shutdown grace period over; closing the remaining connections");
    }
    admin.close();
    state.snapshot.load().pipeline.flush();
    if let Some(pid_file) = &pid_file {
        remove_pid_file(pid_file);
    }
    if let Some(state_path) = &state_path {
        state_file::remove(state_path);
    }
    Ok(())
}

/// Starts the active health checks of every service of `snapshot` that has them: one task
/// per service, stopped when its checker is dropped (when the next snapshot is installed).
fn start_health_checks(snapshot: &Snapshot) -> Vec<HealthChecker> {
    snapshot
        .services
        .values()
        .filter_map(|service| service.start_health_checks())
        .collect()
}

/// Writes our pid to `path` (see [`write_file_atomically`]).
fn write_pid_file(path: &Path) -> std::io::Result<()> {
    write_file_atomically(path, format!("{}\n", std::process::id()).as_bytes())
}

/// Writes the run state, logging (not failing) when it cannot: serving goes on, only
/// `snakeway reload` loses its answer.
fn write_state(path: &Path, state: &state_file::RunState) {
    if let Err(e) = state_file::write(path, state) {
        tracing::warn!(path = %path.display(), "cannot write the run-state file: {e}");
    }
}

/// Writes `contents` to `path` without following symlinks: they go into a new file in the
/// same directory (`O_CREAT | O_EXCL | O_NOFOLLOW`), which is renamed over `path` (a rename
/// replaces a directory entry, it never writes through one). A symlink at `path` is refused,
/// so the server does not silently take over a path someone pointed elsewhere.
fn write_file_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(std::io::Error::other(
                "it is a symbolic link; refusing to write through it",
            ));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(std::io::Error::other("it exists and is not a regular file"));
        }
        _ => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("it names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .mode(0o644)
            .open(&temp)
    };
    let mut file = match open() {
        // Left over by an earlier process with our pid (or planted): remove the entry itself.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&temp)?;
            open()?
        }
        other => other?,
    };
    let written = file
        .write_all(contents)
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Removes the pid file at exit, but only if it is still ours: a regular file holding our
/// pid. A file another process (a newer server) wrote is left alone.
fn remove_pid_file(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return; // already gone
    };
    let ours = meta.is_file()
        && std::fs::read_to_string(path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    } else {
        tracing::warn!(
            pid_file = %path.display(),
            "pid_file no longer holds this process's pid; left in place"
        );
    }
}

/// Reads, validates and builds the configuration at `path`, binds new listeners, swaps the
/// snapshot, closes removed listeners, moves the admin listener if `[admin] listen` changed,
/// and replaces the health checkers (the old ones stop before the new ones start). Any failure
/// leaves everything as it was. Every attempt is counted (`snakeway_reloads_total`).
///
/// Reading files, loading certificates and compiling WASM devices take long (a compile can
/// take seconds), so the snapshot is built on a blocking-pool thread, never on a worker:
/// traffic keeps flowing meanwhile. Only binding and the swap (one store) happen here, with no
/// await between them, so dropping this future (shutdown during a reload) changes nothing.
async fn reload(
    path: &Path,
    state: &Arc<State>,
    listeners: &mut Listeners,
    admin: &mut Admin,
    checkers: &mut Vec<HealthChecker>,
) -> Result<u64, Report> {
    let result = async {
        let current = state.snapshot.load_full();
        let source = path.to_owned();
        let snapshot = tokio::task::spawn_blocking(move || {
            let loaded = snakeway_config::load(&source)?;
            needs_no_restart(&current.config.server, &loaded.server, &source)?;
            let epoch = current.epoch + 1;
            Snapshot::build(loaded, source, epoch, Some(&current), Purpose::Serve)
        })
        .await
        .map_err(|e| Report {
            problems: vec![Problem {
                file: path.to_owned(),
                key: String::new(),
                message: format!("building the new configuration failed: {e}"),
            }],
        })??;
        let admin_plan = admin.bind(&snapshot.config, path)?;
        let bound = listeners.bind(&snapshot)?;
        let epoch = snapshot.epoch;
        state.store(snapshot);
        listeners.apply(bound, &state.snapshot.load(), state);
        admin.apply(admin_plan, state);
        checkers.clear();
        *checkers = start_health_checks(&state.snapshot.load());
        Ok(epoch)
    }
    .await;
    state.reloads.record(result.is_ok());
    match &result {
        Ok(epoch) => tracing::info!(epoch, "configuration reloaded"),
        Err(report) => {
            tracing::error!("reload refused, the running configuration stays:\n{report}")
        }
    }
    result
}

/// Refuses a reload that changes what the running workers are: `server.runtime` and
/// `server.threads` take effect only at start.
fn needs_no_restart(
    running: &snakeway_config::Server,
    new: &snakeway_config::Server,
    source: &Path,
) -> Result<(), Report> {
    let mut problems = Vec::new();
    let mut changed = |key: &str, from: String, to: String| {
        problems.push(Problem {
            file: source.to_owned(),
            key: format!("server.{key}"),
            message: format!(
                "changed from {from} to {to}: the workers are set up at start; restart the server to apply it"
            ),
        });
    };
    if new.runtime != running.runtime {
        changed(
            "runtime",
            format!("{:?}", running.runtime.name()),
            format!("{:?}", new.runtime.name()),
        );
    }
    if new.threads != running.threads {
        changed(
            "threads",
            running.threads.to_string(),
            new.threads.to_string(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Report { problems })
    }
}
