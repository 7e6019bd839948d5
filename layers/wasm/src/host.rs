//! What a guest's host imports work on: the store's data, and the time limit of a call.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::{HeaderMap, Uri};
use snakeway_core::{DeviceLog, RequestInfo};
use snakeway_identity::ClientIdentity;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::attributes::Attributes;
use crate::bindings::snakeway::device::{host, types};
use crate::guest_limits::GuestLimits;

/// Attribute map caps, per request.
const MAX_ATTRIBUTE_NAME: usize = 256;
const MAX_ATTRIBUTE_VALUE: usize = 16 << 10;
const MAX_ATTRIBUTES: usize = 256;
/// Log lines per instance (more are dropped), and bytes per line (more are cut).
const MAX_LOG_LINES: u32 = 100;
const MAX_LOG_BYTES: usize = 4 << 10;

/// The store's data: what the host imports of one instance read and write.
pub(crate) struct HostState {
    pub(crate) limits: GuestLimits,
    pub(crate) device: Arc<str>,
    /// The request this instance serves (dangling while `init` runs at load). Weak: the
    /// instance lives in the request's slots, so a strong reference would be a cycle.
    request: Weak<RequestInfo>,
    /// The headers of the message the running hook is about, moved in for the call and moved
    /// back out after it (empty between calls and in the body hook).
    pub(crate) headers: HeaderMap,
    /// The request's current URI in request-side hooks (earlier devices may have changed it),
    /// moved in and out like the headers; `None` elsewhere, where the URI as received is used.
    pub(crate) uri: Option<Uri>,
    /// The client identity, as the identity device left it (kept for the body hook).
    pub(crate) identity: Option<Arc<ClientIdentity>>,
    pub(crate) attributes: Attributes,
    log_lines: u32,
    clock: CallClock,
}

impl HostState {
    /// The state of an instance serving `request`.
    pub(crate) fn new(device: Arc<str>, limits: GuestLimits, request: Weak<RequestInfo>) -> Self {
        Self {
            limits,
            device,
            request,
            headers: HeaderMap::new(),
            uri: None,
            identity: None,
            attributes: Attributes::default(),
            log_lines: 0,
            clock: CallClock::default(),
        }
    }
}

/// The running call's CPU budget: the thread's CPU clock when it started, the limit, and a
/// wall-clock backstop (10 × the limit) for a thread starved of CPU.
struct CallClock {
    cpu_start: Duration,
    cpu_budget: Duration,
    wall_deadline: Instant,
}

impl Default for CallClock {
    fn default() -> Self {
        Self {
            cpu_start: Duration::ZERO,
            cpu_budget: Duration::ZERO,
            wall_deadline: Instant::now(),
        }
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, |t| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_nsec()).unwrap_or(0),
        )
    })
}

/// The time limit of one call into a guest: its CPU budget, and the epoch ticks after which the
/// budget is first checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeLimit {
    budget: Duration,
    ticks: u64,
}

impl TimeLimit {
    /// A limit of `budget`, checked on an epoch advancing every `tick`.
    pub(crate) fn new(budget: Duration, tick: Duration) -> Self {
        let ticks = budget.as_nanos().div_ceil(tick.as_nanos().max(1)).max(1);
        Self {
            budget,
            ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
        }
    }
}

/// How stale the per-thread CPU clock reading [`arm`] starts from may be.
const CPU_MARK_REFRESH: Duration = Duration::from_millis(1);

thread_local! {
    /// A recent reading of this thread's CPU clock, and when it was taken: reading the clock
    /// is a system call (no vDSO for thread CPU time), so [`arm`] reads it at most once per
    /// [`CPU_MARK_REFRESH`] per thread.
    static CPU_MARK: std::cell::Cell<Option<(Instant, Duration)>> =
        const { std::cell::Cell::new(None) };
}

/// Arms the time limit for the next call into `store`: the epoch deadline first fires after
/// `ticks` (wall clock); from then on, every tick checks the CPU time this thread really spent
/// in the call, so a worker descheduled by the OS does not fail a well-behaved guest.
///
/// The call's starting CPU time is taken as the thread's last CPU reading plus all the wall
/// time since (an upper bound: the thread cannot have run longer than that). A looping guest
/// therefore gets at most [`CPU_MARK_REFRESH`] more than its limit, and a hook costs no
/// system call.
pub(crate) fn arm(store: &mut Store<HostState>, limit: TimeLimit) {
    let TimeLimit { budget, ticks } = limit;
    let now = Instant::now();
    let cpu_start = CPU_MARK.with(|mark| match mark.get() {
        Some((at, cpu)) if now.duration_since(at) < CPU_MARK_REFRESH => cpu + (now - at),
        _ => {
            let cpu = thread_cpu();
            mark.set(Some((now, cpu)));
            cpu
        }
    });
    let clock = &mut store.data_mut().clock;
    clock.cpu_start = cpu_start;
    clock.cpu_budget = budget;
    clock.wall_deadline = now + budget.saturating_mul(10);
    store.set_epoch_deadline(ticks);
}

/// Installs the deadline check [`arm`] relies on.
pub(crate) fn watch_deadline(store: &mut Store<HostState>) {
    store.epoch_deadline_callback(|ctx| {
        let clock = &ctx.data().clock;
        let used = thread_cpu().saturating_sub(clock.cpu_start);
        if used >= clock.cpu_budget || Instant::now() >= clock.wall_deadline {
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        Ok(UpdateDeadline::Continue(1))
    });
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, mut message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return Ok(());
        }
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let request = self.request.upgrade();
        let request_id = request
            .as_ref()
            .and_then(|r| r.request_id.to_str().ok())
            .unwrap_or("");
        let device = &*self.device;
        let level = match level {
            host::Level::Trace => {
                tracing::trace!(target: "snakeway::wasm", device, request_id, "{message}");
                "trace"
            }
            host::Level::Debug => {
                tracing::debug!(target: "snakeway::wasm", device, request_id, "{message}");
                "debug"
            }
            host::Level::Info => {
                tracing::info!(target: "snakeway::wasm", device, request_id, "{message}");
                "info"
            }
            host::Level::Warn => {
                tracing::warn!(target: "snakeway::wasm", device, request_id, "{message}");
                "warn"
            }
            host::Level::Error => {
                tracing::error!(target: "snakeway::wasm", device, request_id, "{message}");
                "error"
            }
        };
        // For the request's structured log (written by the structured-logging device).
        if let Some(request) = request {
            request.device_logs.push(DeviceLog {
                device: self.device.clone(),
                level,
                message,
            });
        }
        Ok(())
    }

    fn get_attribute(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.attributes.get(&name))
    }

    fn set_attribute(&mut self, name: String, value: Option<String>) -> wasmtime::Result<()> {
        if name.len() > MAX_ATTRIBUTE_NAME {
            return Err(wasmtime::Error::msg(format!(
                "attribute name of {} bytes (at most {MAX_ATTRIBUTE_NAME})",
                name.len()
            )));
        }
        match value {
            None => {
                self.attributes.remove(&name);
            }
            Some(value) => {
                if value.len() > MAX_ATTRIBUTE_VALUE {
                    return Err(wasmtime::Error::msg(format!(
                        "attribute value of {} bytes (at most {MAX_ATTRIBUTE_VALUE})",
                        value.len()
                    )));
                }
                if self.attributes.len() >= MAX_ATTRIBUTES && self.attributes.get(&name).is_none() {
                    return Err(wasmtime::Error::msg(format!(
                        "more than {MAX_ATTRIBUTES} attributes"
                    )));
                }
                self.attributes.set(name, value);
            }
        }
        Ok(())
    }

    fn get_context(&mut self) -> wasmtime::Result<types::Context> {
        let identity = self.identity.as_deref().map(|id| types::Identity {
            ip: id.ip.to_string(),
            country: id.country.clone(),
            device: id.device().map(|d| d.as_str().to_owned()),
            bot: id.is_bot(),
        });
        let Some(request) = self.request.upgrade() else {
            return Ok(types::Context {
                request_id: String::new(),
                method: String::new(),
                path: String::new(),
                query: None,
                identity,
            });
        };
        let uri = self.uri.as_ref().unwrap_or(&request.uri);
        Ok(types::Context {
            request_id: String::from_utf8_lossy(request.request_id.as_bytes()).into_owned(),
            method: request.method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            identity,
        })
    }

    fn get_header(&mut self, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec()))
    }

    fn get_header_all(&mut self, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(self
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect())
    }

    fn get_headers(&mut self) -> wasmtime::Result<types::Headers> {
        Ok(self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect())
    }
}

impl types::Host for HostState {}
