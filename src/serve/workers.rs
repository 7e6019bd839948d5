//! The `per_core` runtime's workers (Envoy's worker model).
//!
//! Each worker is an OS thread running a single-threaded Tokio runtime, pinned to one of the
//! CPUs the process may use when there is one for it. Listeners give every worker its own
//! `SO_REUSEPORT` socket per address ([`Listeners`](crate::conn::Listeners)), so a connection
//! is accepted, served and proxied on one thread: its tasks, its upstream connections (the
//! proxy's per-worker pools, [`snakeway_proxy::worker`]) and the snapshot it reads (the
//! worker's slot, [`State::current`]) never leave it. The control runtime (signals, reloads,
//! the admin API, health checks) runs elsewhere and reaches the workers through their
//! [`Handle`]s.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::state::State;

/// The running workers; [`Workers::stop`] ends them.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

// === impl Workers ===

impl Workers {
    /// Starts `count` workers, worker `i` pinned to the `i`-th CPU the process may run on (if
    /// there is one; a pinning failure is logged, not fatal).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let cpus = allowed_cpus();
        // The blocking pools (file reads, compression) together as large as one
        // multi-threaded runtime's.
        let blocking = (512 / count.max(1)).max(8);
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let cpu = cpus.get(index).copied();
            let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("snakeway-worker-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin(cpu);
                    }
                    snakeway_proxy::worker::enter(Some(index));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .max_blocking_threads(blocking)
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Drives this worker's accept loops and connections until told to stop.
                    let _ = runtime.block_on(stopped);
                    State::detach_worker();
                    // Connections still open (the grace period is over) are dropped.
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread ended while starting"))??;
            workers.push(Worker {
                handle,
                stop,
                thread,
            });
        }
        Ok(Self { workers })
    }

    /// Each worker's runtime, in worker order.
    pub(crate) fn handles(&self) -> Vec<Handle> {
        self.workers.iter().map(|w| w.handle.clone()).collect()
    }

    /// Gives every worker its snapshot slot for `state` (before it serves anything).
    pub(crate) fn attach(&self, state: &Arc<State>) {
        for worker in &self.workers {
            let state = state.clone();
            worker.handle.spawn(async move { state.attach_worker() });
        }
    }

    /// Has every worker refresh its slot after a reload, so an idle worker does not keep the
    /// old snapshot (its files, its devices) alive.
    pub(crate) fn refresh(&self, state: &Arc<State>) {
        for worker in &self.workers {
            let state = state.clone();
            worker.handle.spawn(async move { drop(state.current()) });
        }
    }

    /// Stops every worker (dropping what still runs on it) and waits for their threads.
    pub(crate) fn stop(self) {
        for worker in self.workers {
            let _ = worker.stop.send(());
            if worker.thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// The CPUs this process may run on, in order (empty if that cannot be read).
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::warn!(cpu, error = %e, "cannot pin a worker to its CPU; it runs unpinned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_on_their_own_threads_marked_and_pinned() {
        let workers = Workers::start(2).unwrap();
        let cpus = allowed_cpus();
        for (index, handle) in workers.handles().into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let affinity = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
                    .map(|set| {
                        (0..nix::sched::CpuSet::count())
                            .filter(|&c| set.is_set(c).unwrap_or(false))
                            .collect::<Vec<_>>()
                    })
                    .unwrap();
                let _ = tx.send((name, snakeway_proxy::worker::current(), affinity));
            });
            let (name, marked, affinity) = rx.recv().unwrap();
            assert_eq!(name.as_deref(), Some(&*format!("snakeway-worker-{index}")));
            assert_eq!(marked, Some(index));
            if let Some(&cpu) = cpus.get(index) {
                assert_eq!(affinity, vec![cpu], "worker {index} pinned");
            }
        }
        workers.stop();
    }
}
