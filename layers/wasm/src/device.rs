//! The WASM device: load, per-request instances, hooks, failure handling.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri, request, response};
use snakeway_core::{
    BodyCtx, Device, DeviceError, DeviceResult, Flow, Phase, Phases, RequestCtx, RequestInfo,
    ResponseCtx,
};
use snakeway_identity::ClientIdentity;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};

use crate::attributes::Attributes;
use crate::bindings::snakeway::device::{host, types};
use crate::bindings::{SnakewayDevice, SnakewayDevicePre};
use crate::engine::WasmEngine;
use crate::output::{self, Hook, OutputLimits};

/// What a failing WASM device does to the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer the request with an error (500; 503 for a timeout or a full pool).
    #[default]
    Closed,
    /// Skip the device for the rest of the request.
    Open,
}

/// A WASM device's limits.
#[derive(Clone, Copy, Debug)]
pub struct WasmLimits {
    /// Per hook call (instantiation and `init` get the same limit).
    pub timeout: Duration,
    /// The guest's linear memory cap.
    pub memory_bytes: usize,
    /// What a failure does to the request.
    pub on_failure: FailurePolicy,
    /// Caps on what the guest may output.
    pub output: OutputLimits,
}

impl Default for WasmLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(5),
            memory_bytes: 16 << 20,
            on_failure: FailurePolicy::Closed,
            output: OutputLimits::default(),
        }
    }
}

/// Why a WASM device could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The module file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid component.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component imports something the host does not grant.
    #[error("the module imports {0}, which is not granted (only snakeway:device/host@1.0.0 is)")]
    Import(String),
    /// The component does not implement the `snakeway:device` world.
    #[error("the module does not implement snakeway:device@1.0.0: {0}")]
    Link(String),
    /// The limits do not fit the engine.
    #[error("limits: {0}")]
    Limits(String),
    /// `init` failed or trapped.
    #[error("init failed: {0}")]
    Init(String),
}

/// Attribute map caps, per request.
const MAX_ATTRIBUTE_NAME: usize = 256;
const MAX_ATTRIBUTE_VALUE: usize = 16 << 10;
const MAX_ATTRIBUTES: usize = 256;
/// Log lines per instance (more are dropped), and bytes per line (more are cut).
const MAX_LOG_LINES: u32 = 100;
const MAX_LOG_BYTES: usize = 4 << 10;

/// What a guest's host imports work on: the store's data.
pub(crate) struct HostState {
    limits: StoreLimits,
    device: Arc<str>,
    request_id: String,
    attributes: Attributes,
    log_lines: u32,
    /// The running call's CPU budget: the thread's CPU clock when it started, the limit, and a
    /// wall-clock backstop (10 × the limit) for a thread starved of CPU.
    cpu_start: Duration,
    cpu_budget: Duration,
    wall_deadline: Instant,
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

/// Arms the time limit for the next call into `store`: the epoch deadline first fires after
/// `ticks` (wall clock); from then on, every tick checks the CPU time this thread really spent
/// in the call, so a worker descheduled by the OS does not fail a well-behaved guest.
fn arm(store: &mut Store<HostState>, ticks: u64, budget: Duration) {
    let data = store.data_mut();
    data.cpu_start = thread_cpu();
    data.cpu_budget = budget;
    data.wall_deadline = Instant::now() + budget.saturating_mul(10);
    store.set_epoch_deadline(ticks);
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
        let (device, request_id) = (&*self.device, &*self.request_id);
        match level {
            host::Level::Trace => {
                tracing::trace!(target: "snakeway::wasm", device, request_id, "{message}")
            }
            host::Level::Debug => {
                tracing::debug!(target: "snakeway::wasm", device, request_id, "{message}")
            }
            host::Level::Info => {
                tracing::info!(target: "snakeway::wasm", device, request_id, "{message}")
            }
            host::Level::Warn => {
                tracing::warn!(target: "snakeway::wasm", device, request_id, "{message}")
            }
            host::Level::Error => {
                tracing::error!(target: "snakeway::wasm", device, request_id, "{message}")
            }
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
}

impl types::Host for HostState {}

/// A live instance for one request.
struct Live {
    store: Store<HostState>,
    guest: SnakewayDevice,
    /// The identity seen at an earlier hook, for the body hook (which has no `RequestCtx`).
    identity: Option<types::Identity>,
}

enum Slot {
    Empty,
    Live(Box<Live>),
    /// The device failed for this request: later hooks of the request skip it.
    Failed,
}

struct Entry {
    /// Keeps the `RequestInfo` allocation (the key) from being reused while the entry exists.
    info: Weak<RequestInfo>,
    slot: Arc<Mutex<Slot>>,
}

#[derive(Default)]
struct Registry {
    map: HashMap<usize, Entry>,
    sweep_at: usize,
}

/// A failure of one hook call.
struct Failure {
    what: &'static str,
    detail: String,
    status: StatusCode,
}

impl Failure {
    fn invalid(detail: String) -> Self {
        Self {
            what: "invalid output",
            detail,
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn from_wasm(error: &wasmtime::Error) -> Self {
        if let Some(trap) = error.chain().find_map(|e| e.downcast_ref::<Trap>()) {
            return match trap {
                Trap::Interrupt => Self {
                    what: "timeout",
                    detail: "the time limit was exceeded".into(),
                    status: StatusCode::SERVICE_UNAVAILABLE,
                },
                Trap::StackOverflow => Self {
                    what: "trap",
                    detail: "stack overflow".into(),
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                },
                other => Self {
                    what: "trap",
                    detail: other.to_string(),
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                },
            };
        }
        let detail = error.root_cause().to_string();
        if detail.starts_with("unknown import") {
            // A WASI function a `std` guest links implicitly (e.g. printing a panic message).
            return Self {
                what: "trap",
                detail: format!("called an import that is not granted ({detail})"),
                status: StatusCode::INTERNAL_SERVER_ERROR,
            };
        }
        if detail.starts_with("forcing trap when growing memory") {
            return Self {
                what: "memory limit",
                detail,
                status: StatusCode::INTERNAL_SERVER_ERROR,
            };
        }
        Self {
            what: "error",
            detail,
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A device running a WebAssembly component (the `snakeway:device@1.0.0` world).
pub struct WasmDevice {
    name: Arc<str>,
    engine: WasmEngine,
    pre: SnakewayDevicePre<HostState>,
    config: String,
    limits: WasmLimits,
    ticks: u64,
    guest_phases: types::Phases,
    phases: Phases,
    registry: Mutex<Registry>,
}

// === impl WasmDevice ===

impl WasmDevice {
    /// Loads the component at `path`: compiles it (or takes it from the engine's cache),
    /// links it, and runs its `init` with `config_json` to learn its phases.
    pub fn load(
        engine: &WasmEngine,
        name: &str,
        path: &Path,
        config_json: &str,
        limits: WasmLimits,
    ) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(engine, name, &bytes, config_json, limits)
    }

    /// Like [`WasmDevice::load`], from the component's bytes.
    pub fn from_bytes(
        engine: &WasmEngine,
        name: &str,
        bytes: &[u8],
        config_json: &str,
        limits: WasmLimits,
    ) -> Result<Self, LoadError> {
        if engine.options().pooling && limits.memory_bytes > engine.options().max_memory_bytes {
            return Err(LoadError::Limits(format!(
                "memory_limit_bytes {} is above the engine's maximum of {}",
                limits.memory_bytes,
                engine.options().max_memory_bytes
            )));
        }
        if limits.timeout.is_zero() {
            return Err(LoadError::Limits("timeout_ms must be at least 1".into()));
        }
        let component = engine.compile(bytes)?;

        let mut refused = Vec::new();
        for (import, _) in component.component_type().imports(engine.engine()) {
            if !import_allowed(import) {
                refused.push(import.to_owned());
            }
        }
        if !refused.is_empty() {
            return Err(LoadError::Import(refused.join(", ")));
        }
        let mut linker = Linker::<HostState>::new(engine.engine());
        SnakewayDevice::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        // The WASI interfaces a `std` guest imports implicitly trap if called.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(SnakewayDevicePre::new)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;

        let tick = engine.options().tick.as_nanos().max(1);
        let ticks = limits.timeout.as_nanos().div_ceil(tick).max(1);
        let mut device = Self {
            name: Arc::from(name),
            engine: engine.clone(),
            pre,
            config: config_json.to_owned(),
            limits,
            ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            guest_phases: types::Phases::empty(),
            phases: Phases::NONE,
            registry: Mutex::default(),
        };
        // `init` at load is off the request path: it gets at least a second.
        let per_hook = device.ticks;
        device.ticks = per_hook.max(u64::try_from(1_000_000_000 / tick).unwrap_or(1));
        let loaded = device.instantiate(String::new(), Attributes::default());
        device.ticks = per_hook;
        let (_, registration) =
            loaded.map_err(|f| LoadError::Init(format!("{}: {}", f.what, f.detail)))?;
        device.guest_phases = registration.phases;
        device.phases = phases_of(registration.phases, true);
        Ok(device)
    }

    /// The phases the guest registered for.
    pub fn guest_phases(&self) -> Phases {
        phases_of(self.guest_phases, false)
    }

    /// How many requests currently hold an instance of this device (instances are dropped at
    /// `on_response`, or for devices with a body hook, swept after their request is gone).
    pub fn live_instances(&self) -> usize {
        self.lock_registry()
            .map
            .values()
            .filter(|e| e.info.strong_count() > 0)
            .count()
    }

    fn new_store(&self, request_id: String, attributes: Attributes) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(32)
            .memories(8)
            .tables(32)
            .table_elements(1 << 16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            self.engine.engine(),
            HostState {
                limits,
                device: self.name.clone(),
                request_id,
                attributes,
                log_lines: 0,
                cpu_start: Duration::ZERO,
                cpu_budget: self.limits.timeout,
                wall_deadline: Instant::now(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let used = thread_cpu().saturating_sub(state.cpu_start);
            if used >= state.cpu_budget || Instant::now() >= state.wall_deadline {
                return Err(wasmtime::Error::new(Trap::Interrupt));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store
    }

    /// A fresh instance, `init` already run.
    fn instantiate(
        &self,
        request_id: String,
        attributes: Attributes,
    ) -> Result<(Live, types::Registration), Failure> {
        let mut store = self.new_store(request_id, attributes);
        let budget = self.budget();
        arm(&mut store, self.ticks, budget);
        let guest = self.pre.instantiate(&mut store).map_err(|e| {
            let mut failure = Failure::from_wasm(&e);
            if failure.what == "error" {
                // Not a trap in a start function: no pool slot or memory for it.
                failure.what = "instantiation";
                failure.status = StatusCode::SERVICE_UNAVAILABLE;
            }
            failure
        })?;
        arm(&mut store, self.ticks, budget);
        let registration = guest
            .snakeway_device_device()
            .call_init(&mut store, &self.config)
            .map_err(|e| Failure::from_wasm(&e))?
            .map_err(|message| Failure {
                what: "init",
                detail: message,
                status: StatusCode::INTERNAL_SERVER_ERROR,
            })?;
        let live = Live {
            store,
            guest,
            identity: None,
        };
        Ok((live, registration))
    }

    /// The time budget of the current `ticks` (longer while `init` runs at load).
    fn budget(&self) -> Duration {
        let tick = self.engine.options().tick;
        self.limits
            .timeout
            .max(tick.saturating_mul(u32::try_from(self.ticks).unwrap_or(u32::MAX)))
    }

    fn lock_registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request's slot, created empty if this is the device's first hook of the request.
    fn slot(&self, info: &Arc<RequestInfo>) -> Arc<Mutex<Slot>> {
        let key = Arc::as_ptr(info) as usize;
        let mut registry = self.lock_registry();
        if let Some(entry) = registry.map.get(&key) {
            return entry.slot.clone();
        }
        if registry.map.len() >= registry.sweep_at {
            registry.map.retain(|_, e| e.info.strong_count() > 0);
            registry.sweep_at = (registry.map.len() * 2).max(64);
        }
        let slot = Arc::new(Mutex::new(Slot::Empty));
        registry.map.insert(
            key,
            Entry {
                info: Arc::downgrade(info),
                slot: slot.clone(),
            },
        );
        slot
    }

    /// Drops the request's instance, if any.
    fn release(&self, info: &Arc<RequestInfo>) {
        let key = Arc::as_ptr(info) as usize;
        let entry = self.lock_registry().map.remove(&key);
        drop(entry);
    }

    /// Runs `hook` on the request's instance (created and `init`ed on first use). `Ok(None)`
    /// means the device is skipped: it failed earlier in this request, or it failed now and
    /// fails open.
    fn call<R>(
        &self,
        info: &Arc<RequestInfo>,
        hook: Hook,
        attributes: Option<Attributes>,
        identity: Option<&types::Identity>,
        run: impl FnOnce(&mut Live) -> Result<R, Failure>,
    ) -> Result<Option<R>, DeviceError> {
        let slot = self.slot(info);
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Slot::Empty = &*guard {
            let request_id = String::from_utf8_lossy(info.request_id.as_bytes()).into_owned();
            match self.instantiate(request_id, attributes.clone().unwrap_or_default()) {
                Ok((live, _)) => *guard = Slot::Live(Box::new(live)),
                Err(failure) => {
                    *guard = Slot::Failed;
                    return self.failed(info, hook, &failure);
                }
            }
        }
        let Slot::Live(live) = &mut *guard else {
            return Ok(None);
        };
        if let Some(attributes) = attributes {
            live.store.data_mut().attributes = attributes;
        }
        if let Some(identity) = identity {
            live.identity = Some(identity.clone());
        }
        arm(&mut live.store, self.ticks, self.limits.timeout);
        match run(live) {
            Ok(value) => Ok(Some(value)),
            Err(failure) => {
                // The instance may be inconsistent after a trap: drop it now.
                *guard = Slot::Failed;
                self.failed(info, hook, &failure)
            }
        }
    }

    fn failed<R>(
        &self,
        info: &RequestInfo,
        hook: Hook,
        failure: &Failure,
    ) -> Result<Option<R>, DeviceError> {
        let request_id = String::from_utf8_lossy(info.request_id.as_bytes());
        let message = format!(
            "wasm device {:?}, hook {hook}, request {request_id}: {}: {}",
            &*self.name, failure.what, failure.detail
        );
        match self.limits.on_failure {
            FailurePolicy::Closed => {
                tracing::error!(
                    target: "snakeway::wasm",
                    device = &*self.name,
                    hook = hook.as_str(),
                    request_id = &*request_id,
                    failure = failure.what,
                    on_failure = "closed",
                    "{}", failure.detail
                );
                // The client sees what kind of failure and where; the details (guest output,
                // request id) go to the log and the error's source.
                Err(DeviceError::new(format!("{} in {hook}", failure.what))
                    .with_status(failure.status)
                    .with_source(message))
            }
            FailurePolicy::Open => {
                tracing::warn!(
                    target: "snakeway::wasm",
                    device = &*self.name,
                    hook = hook.as_str(),
                    request_id = &*request_id,
                    failure = failure.what,
                    on_failure = "open",
                    "{}; device skipped", failure.detail
                );
                Ok(None)
            }
        }
    }

    /// A request-side hook (`on-request`, `before-proxy`).
    fn request_hook(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        hook: Hook,
    ) -> DeviceResult {
        let attributes = Attributes::of(ctx);
        let identity = identity_of(ctx);
        let context = context(ctx.request_id(), &head.method, &head.uri, identity.clone());
        let headers = output::headers_view(&head.headers);
        let info = ctx.info().clone();
        let limits = self.limits.output;
        let flow = self.call(&info, hook, Some(attributes), identity.as_ref(), |live| {
            let guest = live.guest.snakeway_device_device();
            let action = match hook {
                Hook::OnRequest => guest.call_on_request(&mut live.store, &context, &headers),
                _ => guest.call_before_proxy(&mut live.store, &context, &headers),
            }
            .map_err(|e| Failure::from_wasm(&e))?;
            match action {
                types::Action::Continue => Ok(Flow::Continue),
                types::Action::Modify(edits) => {
                    output::apply_request_edits(edits, hook, head, &limits)
                        .map_err(Failure::invalid)?;
                    Ok(Flow::Continue)
                }
                types::Action::Respond(reply) => output::reply(reply, &limits)
                    .map(Flow::Respond)
                    .map_err(Failure::invalid),
            }
        })?;
        Ok(flow.unwrap_or(Flow::Continue))
    }
}

impl Device for WasmDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn phases(&self) -> Phases {
        self.phases
    }

    fn on_request(&self, ctx: &mut RequestCtx, head: &mut request::Parts) -> DeviceResult {
        self.request_hook(ctx, head, Hook::OnRequest)
    }

    fn on_request_body(&self, ctx: &BodyCtx, chunk: &Bytes, end_of_stream: bool) -> DeviceResult {
        let info = &ctx.info;
        let limits = self.limits.output;
        let flow = self.call(info, Hook::OnRequestBody, None, None, |live| {
            let context = context(
                &info.request_id,
                &info.method,
                &info.uri,
                live.identity.clone(),
            );
            let action = live
                .guest
                .snakeway_device_device()
                .call_on_request_body(&mut live.store, &context, chunk, end_of_stream)
                .map_err(|e| Failure::from_wasm(&e))?;
            match action {
                types::Action::Continue => Ok(Flow::Continue),
                types::Action::Modify(_) => Err(Failure::invalid(
                    "modify is not allowed in on-request-body".into(),
                )),
                types::Action::Respond(reply) => output::reply(reply, &limits)
                    .map(Flow::Respond)
                    .map_err(Failure::invalid),
            }
        })?;
        Ok(flow.unwrap_or(Flow::Continue))
    }

    fn before_proxy(&self, ctx: &mut RequestCtx, head: &mut request::Parts) -> DeviceResult {
        self.request_hook(ctx, head, Hook::BeforeProxy)
    }

    fn after_proxy(&self, ctx: &mut RequestCtx, head: &mut response::Parts) -> DeviceResult {
        let attributes = Attributes::of(ctx);
        let identity = identity_of(ctx);
        let context = context(
            ctx.request_id(),
            ctx.method(),
            &ctx.info().uri,
            identity.clone(),
        );
        let headers = output::headers_view(&head.headers);
        let status = head.status.as_u16();
        let info = ctx.info().clone();
        let limits = self.limits.output;
        let flow = self.call(
            &info,
            Hook::AfterProxy,
            Some(attributes),
            identity.as_ref(),
            |live| {
                let action = live
                    .guest
                    .snakeway_device_device()
                    .call_after_proxy(&mut live.store, &context, status, &headers)
                    .map_err(|e| Failure::from_wasm(&e))?;
                match action {
                    types::Action::Continue => Ok(Flow::Continue),
                    types::Action::Modify(edits) => {
                        output::apply_response_edits(edits, Hook::AfterProxy, head, &limits)
                            .map_err(Failure::invalid)?;
                        Ok(Flow::Continue)
                    }
                    types::Action::Respond(reply) => output::reply(reply, &limits)
                        .map(Flow::Respond)
                        .map_err(Failure::invalid),
                }
            },
        )?;
        Ok(flow.unwrap_or(Flow::Continue))
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        let result = if self.guest_phases.contains(types::Phases::ON_RESPONSE) {
            let attributes = Attributes::of(ctx);
            let identity = identity_of(ctx);
            let context = context(
                ctx.request_id(),
                ctx.method(),
                &ctx.info().uri,
                identity.clone(),
            );
            let headers = output::headers_view(&res.head.headers);
            let status = res.head.status.as_u16();
            let info = ctx.info().clone();
            let limits = self.limits.output;
            let head = &mut *res.head;
            self.call(
                &info,
                Hook::OnResponse,
                Some(attributes),
                identity.as_ref(),
                |live| {
                    let action = live
                        .guest
                        .snakeway_device_device()
                        .call_on_response(&mut live.store, &context, status, &headers)
                        .map_err(|e| Failure::from_wasm(&e))?;
                    match action {
                        types::Action::Continue => Ok(()),
                        types::Action::Modify(edits) => {
                            output::apply_response_edits(edits, Hook::OnResponse, head, &limits)
                                .map_err(Failure::invalid)
                        }
                        types::Action::Respond(_) => Err(Failure::invalid(
                            "respond is not allowed in on-response".into(),
                        )),
                    }
                },
            )
            .map(|_| ())
        } else {
            Ok(())
        };
        if !self.guest_phases.contains(types::Phases::ON_REQUEST_BODY) {
            self.release(ctx.info());
        }
        result
    }
}

impl std::fmt::Debug for WasmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmDevice")
            .field("name", &self.name)
            .field("phases", &self.phases)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Whether a component import is linked (`snakeway:device/*@1.x`) or tolerated as a trapping
/// stub (the WASI interfaces Rust's `std` imports implicitly). Everything else is refused.
fn import_allowed(name: &str) -> bool {
    const GRANTED: &[&str] = &["snakeway:device/host@1.", "snakeway:device/types@1."];
    const STUBBED: &[&str] = &["wasi:io/", "wasi:cli/", "wasi:clocks/", "wasi:random/"];
    GRANTED.iter().chain(STUBBED).any(|p| name.starts_with(p))
}

/// The guest's phases as the pipeline's; with `release`, `Response` is included whenever the
/// guest takes part in anything (the instance is released there).
fn phases_of(flags: types::Phases, release: bool) -> Phases {
    let mut phases = Phases::NONE;
    for (flag, phase) in [
        (types::Phases::ON_REQUEST, Phase::Request),
        (types::Phases::ON_REQUEST_BODY, Phase::RequestBody),
        (types::Phases::BEFORE_PROXY, Phase::BeforeProxy),
        (types::Phases::AFTER_PROXY, Phase::AfterProxy),
        (types::Phases::ON_RESPONSE, Phase::Response),
    ] {
        if flags.contains(flag) {
            phases = phases.with(phase);
        }
    }
    if release && phases != Phases::NONE {
        phases = phases.with(Phase::Response);
    }
    phases
}

fn identity_of(ctx: &RequestCtx) -> Option<types::Identity> {
    let identity = ClientIdentity::get(&ctx.extensions)?;
    Some(types::Identity {
        ip: identity.ip.to_string(),
        country: identity.country.clone(),
        device: identity.device().map(|d| d.as_str().to_owned()),
        bot: identity.is_bot(),
    })
}

fn context(
    request_id: &HeaderValue,
    method: &Method,
    uri: &Uri,
    identity: Option<types::Identity>,
) -> types::Context {
    types::Context {
        request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        identity,
    }
}
