//! `snakeway serve`: the runtime, the listeners, signals, reload and graceful shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use snakeway_config::{Config, Report};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Listeners;
use crate::devices::Purpose;
use crate::stack::Snapshot;
use crate::state::State;

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
pub(crate) fn serve(config_path: &Path, config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.threads)
        .thread_name("snakeway-worker")
        .enable_all()
        .build()?;
    runtime.block_on(run(config_path.to_owned(), config))?;
    // Connections that outlived the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let pid_file = config.server.pid_file.clone();
    let snapshot = Snapshot::build(config, path.clone(), 1, None, Purpose::Serve)?;
    let mut listeners = Listeners::new();
    let bound = listeners.bind(&snapshot)?;
    let state = Arc::new(State {
        snapshot: ArcSwap::from_pointee(snapshot),
    });
    listeners.apply(bound, &state.snapshot.load(), &state);
    if let Some(pid_file) = &pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("cannot write pid_file {}: {e}", pid_file.display()))?;
    }

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let _reload_tx = reload_tx; // kept for the admin API's reload endpoint
    tracing::info!(epoch = 1, "snakeway started");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = reload(&path, &state, &mut listeners).await;
            }
            Some(reply) = reload_rx.recv() => {
                let result = reload(&path, &state, &mut listeners).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining connections"
    );
    let drained = listeners.shutdown(grace).await;
    if drained {
        tracing::info!("all connections finished");
    } else {
        tracing::warn!("shutdown grace period over; closing the remaining connections");
    }
    state.snapshot.load().pipeline.flush();
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(())
}

/// Reads, validates and builds the configuration at `path`, binds new listeners, swaps the
/// snapshot, and closes removed listeners. Any failure leaves everything as it was.
async fn reload(path: &Path, state: &Arc<State>, listeners: &mut Listeners) -> Result<u64, Report> {
    let result = async {
        let loaded = {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || snakeway_config::load(&path))
                .await
                .expect("config loading does not panic")?
        };
        let current = state.snapshot.load_full();
        let snapshot = Snapshot::build(
            loaded,
            path.to_owned(),
            current.epoch + 1,
            Some(&current),
            Purpose::Serve,
        )?;
        let bound = listeners.bind(&snapshot)?;
        let epoch = snapshot.epoch;
        state.snapshot.store(Arc::new(snapshot));
        listeners.apply(bound, &state.snapshot.load(), state);
        Ok(epoch)
    }
    .await;
    match &result {
        Ok(epoch) => tracing::info!(epoch, "configuration reloaded"),
        Err(report) => {
            tracing::error!("reload refused, the running configuration stays:\n{report}")
        }
    }
    result
}
