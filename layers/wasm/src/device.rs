//! The WASM device: load, per-request instances, hooks, failure handling.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{request, response};
use snakeway_core::metrics::{
    Counters, Gauge, Value, WASM_FAILURES, WASM_INSTANCES_CAPACITY, WASM_INSTANCES_IN_USE,
};
use snakeway_core::{
    BodyCtx, Device, DeviceError, DeviceResult, Flow, Phase, Phases, RequestCtx, RequestInfo,
    ResponseCtx, SlotKey,
};
use snakeway_identity::ClientIdentity;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{PoolConcurrencyLimitError, Store};

use crate::attributes::Attributes;
use crate::bindings::snakeway::device::types;
use crate::bindings::{SnakewayDevice, SnakewayDevicePre};
use crate::engine::WasmEngine;
use crate::failure::{Failure, FailureKind};
use crate::guest_limits::GuestLimits;
use crate::host::{HostState, TimeLimit, arm, watch_deadline};
use crate::load_error::{self, LoadError, LoadErrorKind};
use crate::output::{self, Hook, OutputLimits};

/// What a failing WASM device does to the request. A request that finds no instance free
/// (the engine's pool or the device's [`WasmLimits::max_instances`] exhausted) is answered
/// 503 under either policy: that is load, not a fault of the guest, and skipping the device
/// would let load switch it off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer the request with an error (500; 503 for a timeout).
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
    /// This device's instances alive at once (one per request in flight that holds one);
    /// `None`: as many as the engine's pool has free. A request beyond it is answered 503, so
    /// that requests stalled in one device cannot take every slot of the shared pool.
    pub max_instances: Option<u32>,
}

impl Default for WasmLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(5),
            memory_bytes: 16 << 20,
            on_failure: FailurePolicy::Closed,
            output: OutputLimits::default(),
            max_instances: None,
        }
    }
}

/// One request's use of a device, kept in the request's `DeviceSlots`.
enum Instance {
    /// A live instance, between two hooks of the request.
    Live(Live),
    /// The device failed for this request: its later hooks skip it.
    Failed,
}

/// A live instance for one request.
struct Live {
    store: Store<HostState>,
    guest: SnakewayDevice,
    _count: LiveCount,
}

/// What a hook with a [`RequestCtx`] hands the instance (the body hook has none: the
/// instance keeps what it was given last).
struct Seen {
    identity: Option<Arc<ClientIdentity>>,
    attributes: Attributes,
}

impl Seen {
    fn of(ctx: &mut RequestCtx) -> Self {
        Self {
            identity: ctx.extensions.get::<Arc<ClientIdentity>>().cloned(),
            attributes: Attributes::of(ctx),
        }
    }

    fn hand_to(self, state: &mut HostState) {
        state.identity = self.identity;
        state.attributes = self.attributes;
    }
}

/// A device's live instances: the count its `max_instances` bounds, and the
/// `wasm_instances_in_use` gauge.
#[derive(Default)]
struct Lives {
    count: AtomicUsize,
    in_use: Arc<Gauge>,
}

/// One of a device's live instances, counted (against the device's `max_instances`) from
/// before it is created until it is dropped.
struct LiveCount(Arc<Lives>);

impl LiveCount {
    /// Counts one more instance, unless `max` are alive already.
    fn try_new(lives: &Arc<Lives>, max: usize) -> Option<Self> {
        lives
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        lives.in_use.inc();
        Some(Self(lives.clone()))
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.in_use.dec();
    }
}

/// A device running a WebAssembly component (the `snakeway:device@1.0.0` world).
pub struct WasmDevice {
    name: Arc<str>,
    /// Where its per-request instance lives in each request's slots.
    key: SlotKey,
    engine: WasmEngine,
    pre: SnakewayDevicePre<HostState>,
    config: String,
    limits: WasmLimits,
    /// The time limit of each hook call (and of a per-request instantiation and `init`).
    hook_limit: TimeLimit,
    guest_phases: types::Phases,
    phases: Phases,
    live: Arc<Lives>,
    /// `limits.max_instances`, unbounded when not set.
    max_live: usize,
    /// Failures by kind (indexed like
    /// [`WASM_FAILURE_KINDS`](snakeway_core::metrics::WASM_FAILURE_KINDS)).
    failures: Arc<Counters<6>>,
    /// Held for the scrape: the instances this device may have at once.
    _capacity: Arc<Value>,
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
        std::fs::read(path)
            .map_err(|e| LoadError::from(LoadErrorKind::Read(e)))
            .and_then(|bytes| Self::from_bytes(engine, name, &bytes, config_json, limits))
            .map_err(|e| e.in_file(path))
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
            return Err(LoadErrorKind::Limits(format!(
                "memory_limit_bytes {} is above the engine's maximum of {}",
                limits.memory_bytes,
                engine.options().max_memory_bytes
            ))
            .into());
        }
        if limits.timeout.is_zero() {
            return Err(LoadErrorKind::Limits("timeout_ms must be at least 1".into()).into());
        }
        if limits.max_instances == Some(0) {
            return Err(LoadErrorKind::Limits("max_instances must be at least 1".into()).into());
        }
        load_error::check_header(bytes)?;
        let component = engine.compile(bytes)?;

        let ty = component.component_type();
        let refused: Vec<String> = ty
            .imports(engine.engine())
            .filter(|(import, _)| !import_allowed(import))
            .map(|(import, _)| import.to_owned())
            .collect();
        if !refused.is_empty() {
            return Err(LoadErrorKind::Import(refused).into());
        }
        let exports: Vec<&str> = ty.exports(engine.engine()).map(|(name, _)| name).collect();
        if !exports.contains(&crate::DEVICE_INTERFACE) {
            let others = exports
                .iter()
                .filter(|name| name.starts_with("snakeway:device/device@"))
                .map(|name| (*name).to_owned())
                .collect();
            return Err(LoadErrorKind::NoExport(others).into());
        }
        let mut linker = Linker::<HostState>::new(engine.engine());
        SnakewayDevice::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| link_error(&e))?;
        // The WASI interfaces a `std` guest imports implicitly trap if called.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| link_error(&e))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(SnakewayDevicePre::new)
            .map_err(|e| link_error(&e))?;

        let tick = engine.options().tick;
        let mut device = Self {
            name: Arc::from(name),
            key: SlotKey::unique(),
            engine: engine.clone(),
            pre,
            config: config_json.to_owned(),
            limits,
            hook_limit: TimeLimit::new(limits.timeout, tick),
            guest_phases: types::Phases::empty(),
            phases: Phases::NONE,
            live: Arc::new(Lives {
                count: AtomicUsize::new(0),
                in_use: WASM_INSTANCES_IN_USE.get(&[name]),
            }),
            max_live: limits
                .max_instances
                .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            failures: WASM_FAILURES.get(&[name]),
            _capacity: {
                let capacity = WASM_INSTANCES_CAPACITY.get(&[name]);
                let pool = if engine.options().pooling {
                    u64::from(engine.options().max_instances)
                } else {
                    u64::MAX
                };
                let own = limits.max_instances.map_or(u64::MAX, u64::from);
                capacity.set(pool.min(own));
                capacity
            },
        };
        // `init` at load is off the request path: it gets at least a second.
        let load_limit = TimeLimit::new(limits.timeout.max(Duration::from_secs(1)), tick);
        let (_, registration) = device
            .instantiate(Weak::new(), None, load_limit)
            .map_err(|f| LoadErrorKind::Init(format!("{}: {}", f.kind.as_str(), f.detail)))?;
        device.guest_phases = registration.phases;
        device.phases = phases_of(registration.phases, true);
        Ok(device)
    }

    /// The phases the guest registered for.
    pub fn guest_phases(&self) -> Phases {
        phases_of(self.guest_phases, false)
    }

    /// How many instances of this device are alive (one per request in flight that reached
    /// the device; dropped at `on_response`, or for devices with a body hook, with the
    /// request).
    pub fn live_instances(&self) -> usize {
        self.live.count.load(Ordering::Relaxed)
    }

    fn new_store(&self, request: Weak<RequestInfo>) -> Store<HostState> {
        let limits = GuestLimits::new(self.limits.memory_bytes);
        let mut store = Store::new(
            self.engine.engine(),
            HostState::new(self.name.clone(), limits, request),
        );
        store.limiter(|s| &mut s.limits);
        watch_deadline(&mut store);
        store
    }

    /// A fresh instance, `init` already run.
    fn instantiate(
        &self,
        request: Weak<RequestInfo>,
        seen: Option<Seen>,
        limit: TimeLimit,
    ) -> Result<(Live, types::Registration), Failure> {
        let count = LiveCount::try_new(&self.live, self.max_live).ok_or_else(|| {
            Failure::new(
                FailureKind::DeviceFull,
                format!("all {} of the device's instances are in use", self.max_live),
            )
        })?;
        let mut store = self.new_store(request);
        if let Some(seen) = seen {
            seen.hand_to(store.data_mut());
        }
        arm(&mut store, limit);
        let guest = self.pre.instantiate(&mut store).map_err(|e| {
            if e.chain()
                .any(|cause| cause.is::<PoolConcurrencyLimitError>())
            {
                return Failure::new(
                    FailureKind::PoolFull,
                    format!("no free slot in the engine's instance pool ({e:#})"),
                );
            }
            Failure::from_wasm(&e, FailureKind::Instantiation)
        })?;
        arm(&mut store, limit);
        let registration = guest
            .snakeway_device_device()
            .call_init(&mut store, &self.config)
            .map_err(|e| Failure::from_wasm(&e, FailureKind::Trap))?
            .map_err(|message| Failure::new(FailureKind::Init, message))?;
        let live = Live {
            store,
            guest,
            _count: count,
        };
        Ok((live, registration))
    }

    /// Whether the request still needs the device's instance after `hook`: a later hook the
    /// guest subscribes to may run. Otherwise the instance goes back to the pool at once, so
    /// a device that only acts in `on-request` holds a pool slot for microseconds, not for
    /// the whole upstream round trip (fewer slots in rotation, warmer caches). The body hook
    /// streams alongside the later hooks, so a device with one keeps its instance until
    /// `on-response` (or the end of the request).
    fn needed_after(&self, hook: Hook) -> bool {
        use types::Phases as P;
        let later = match hook {
            Hook::OnRequest => P::BEFORE_PROXY | P::AFTER_PROXY | P::ON_RESPONSE,
            Hook::BeforeProxy => P::AFTER_PROXY | P::ON_RESPONSE,
            Hook::AfterProxy => P::ON_RESPONSE,
            Hook::OnResponse => P::empty(),
            Hook::OnRequestBody => return true,
        };
        self.guest_phases.intersects(later | P::ON_REQUEST_BODY)
    }

    /// The request's live instance, created (and `init`ed) at the device's first hook of the
    /// request. `Ok(None)`: the device is skipped (it failed earlier in this request, or it
    /// cannot be instantiated and fails open).
    fn checkout(
        &self,
        info: &Arc<RequestInfo>,
        hook: Hook,
        seen: Option<Seen>,
    ) -> Result<Option<Live>, DeviceError> {
        match info.slots.take::<Instance>(self.key).map(|b| *b) {
            Some(Instance::Live(mut live)) => {
                if let Some(seen) = seen {
                    seen.hand_to(live.store.data_mut());
                }
                Ok(Some(live))
            }
            Some(Instance::Failed) => {
                info.slots.put(self.key, Box::new(Instance::Failed));
                Ok(None)
            }
            None => match self.instantiate(Arc::downgrade(info), seen, self.hook_limit) {
                Ok((live, _)) => Ok(Some(live)),
                Err(failure) => self.failed(info, hook, &failure).map(|()| None),
            },
        }
    }

    /// Keeps the instance for the request's later hooks.
    fn checkin(&self, info: &RequestInfo, live: Live) {
        info.slots.put(self.key, Box::new(Instance::Live(live)));
    }

    /// Records that the device failed for this request (its instance, possibly inconsistent
    /// after a trap, is dropped), then applies the failure policy: `Err` when it fails closed.
    fn failed(&self, info: &RequestInfo, hook: Hook, failure: &Failure) -> Result<(), DeviceError> {
        info.slots.put(self.key, Box::new(Instance::Failed));
        self.failures.add(failure.kind.metric(), 1);
        let request_id = String::from_utf8_lossy(info.request_id.as_bytes());
        // A full pool is load, not a guest fault: it fails closed whatever `on_failure` says,
        // or load would switch the device off.
        let policy = if failure.kind.is_capacity() {
            FailurePolicy::Closed
        } else {
            self.limits.on_failure
        };
        match policy {
            FailurePolicy::Closed => {
                tracing::error!(
                    target: "snakeway::wasm",
                    device = &*self.name,
                    hook = hook.as_str(),
                    request_id = &*request_id,
                    failure = failure.kind.as_str(),
                    on_failure = if failure.kind.is_capacity() { "closed (pool full, whatever on_failure says)" } else { "closed" },
                    "{}", failure.detail
                );
                // The client sees what kind of failure and where; the details (guest output,
                // request id) go to the log and the error's source.
                let message = format!(
                    "wasm device {:?}, hook {hook}, request {request_id}: {}: {}",
                    &*self.name,
                    failure.kind.as_str(),
                    failure.detail
                );
                Err(
                    DeviceError::new(format!("{} in {hook}", failure.kind.as_str()))
                        .with_status(failure.kind.status())
                        .with_source(message),
                )
            }
            FailurePolicy::Open => {
                tracing::warn!(
                    target: "snakeway::wasm",
                    device = &*self.name,
                    hook = hook.as_str(),
                    request_id = &*request_id,
                    failure = failure.kind.as_str(),
                    on_failure = "open",
                    "{}; device skipped", failure.detail
                );
                Ok(())
            }
        }
    }

    /// Runs one hook on the request's instance: `prepare` hands the guest what the hook is
    /// about, `call` runs it, `finish` takes back what `prepare` lent and applies the guest's
    /// answer. The instance is kept for the request's later hooks unless `keep` is false.
    #[allow(clippy::too_many_arguments)]
    fn hook<M, T, R>(
        &self,
        info: &Arc<RequestInfo>,
        hook: Hook,
        keep: bool,
        seen: Option<Seen>,
        message: &mut M,
        prepare: impl FnOnce(&mut HostState, &mut M),
        call: impl FnOnce(&SnakewayDevice, &mut Store<HostState>) -> wasmtime::Result<T>,
        finish: impl FnOnce(&mut HostState, &mut M, wasmtime::Result<T>) -> Result<R, Failure>,
    ) -> Result<Option<R>, DeviceError> {
        let Some(mut live) = self.checkout(info, hook, seen)? else {
            return Ok(None);
        };
        prepare(live.store.data_mut(), message);
        arm(&mut live.store, self.hook_limit);
        let answer = call(&live.guest, &mut live.store);
        match finish(live.store.data_mut(), message, answer) {
            Ok(value) => {
                if keep {
                    self.checkin(info, live);
                }
                Ok(Some(value))
            }
            Err(failure) => self.failed(info, hook, &failure).map(|()| None),
        }
    }

    /// A request-side head hook (`on-request`, `before-proxy`).
    fn request_hook(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        hook: Hook,
    ) -> DeviceResult {
        let seen = Seen::of(ctx);
        let limits = &self.limits.output;
        let flow = self.hook(
            ctx.info(),
            hook,
            self.needed_after(hook),
            Some(seen),
            head,
            |state, head| {
                state.uri = Some(std::mem::take(&mut head.uri));
                state.headers = std::mem::take(&mut head.headers);
            },
            |guest, store| match hook {
                Hook::OnRequest => guest.snakeway_device_device().call_on_request(store),
                _ => guest.snakeway_device_device().call_before_proxy(store),
            },
            |state, head, answer| {
                head.headers = std::mem::take(&mut state.headers);
                head.uri = state.uri.take().unwrap_or_default();
                match answer.map_err(|e| Failure::from_wasm(&e, FailureKind::Trap))? {
                    types::Action::Continue => Ok(Flow::Continue),
                    types::Action::Modify(edits) => {
                        output::apply_request_edits(edits, hook, head, limits)
                            .map_err(Failure::invalid)?;
                        Ok(Flow::Continue)
                    }
                    types::Action::Respond(reply) => output::reply(reply, limits)
                        .map(Flow::respond)
                        .map_err(Failure::invalid),
                }
            },
        )?;
        Ok(flow.unwrap_or(Flow::Continue))
    }

    /// A response head hook (`after-proxy`, `on-response`): `Ok(None)` when the device is
    /// skipped or continues, `Ok(Some)` with an early answer (`after-proxy` only).
    fn response_hook(
        &self,
        ctx: &mut RequestCtx,
        head: &mut response::Parts,
        hook: Hook,
    ) -> Result<Option<Flow>, DeviceError> {
        let seen = Seen::of(ctx);
        let limits = &self.limits.output;
        let status = head.status.as_u16();
        self.hook(
            ctx.info(),
            hook,
            self.needed_after(hook),
            Some(seen),
            head,
            |state, head| {
                state.headers = std::mem::take(&mut head.headers);
            },
            |guest, store| match hook {
                Hook::AfterProxy => guest
                    .snakeway_device_device()
                    .call_after_proxy(store, status),
                _ => guest
                    .snakeway_device_device()
                    .call_on_response(store, status),
            },
            |state, head, answer| {
                head.headers = std::mem::take(&mut state.headers);
                match answer.map_err(|e| Failure::from_wasm(&e, FailureKind::Trap))? {
                    types::Action::Continue => Ok(Flow::Continue),
                    types::Action::Modify(edits) => {
                        output::apply_response_edits(edits, hook, head, limits)
                            .map_err(Failure::invalid)?;
                        Ok(Flow::Continue)
                    }
                    types::Action::Respond(_) if hook == Hook::OnResponse => Err(Failure::invalid(
                        "respond is not allowed in on-response".into(),
                    )),
                    types::Action::Respond(reply) => output::reply(reply, limits)
                        .map(Flow::respond)
                        .map_err(Failure::invalid),
                }
            },
        )
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
        let limits = &self.limits.output;
        let flow = self.hook(
            &ctx.info,
            Hook::OnRequestBody,
            true,
            None,
            &mut (),
            |_, _| {},
            |guest, store| {
                guest
                    .snakeway_device_device()
                    .call_on_request_body(store, chunk, end_of_stream)
            },
            |_, _, answer| match answer.map_err(|e| Failure::from_wasm(&e, FailureKind::Trap))? {
                types::Action::Continue => Ok(Flow::Continue),
                types::Action::Modify(_) => Err(Failure::invalid(
                    "modify is not allowed in on-request-body".into(),
                )),
                types::Action::Respond(reply) => output::reply(reply, limits)
                    .map(Flow::respond)
                    .map_err(Failure::invalid),
            },
        )?;
        Ok(flow.unwrap_or(Flow::Continue))
    }

    fn before_proxy(&self, ctx: &mut RequestCtx, head: &mut request::Parts) -> DeviceResult {
        self.request_hook(ctx, head, Hook::BeforeProxy)
    }

    fn after_proxy(&self, ctx: &mut RequestCtx, head: &mut response::Parts) -> DeviceResult {
        let flow = self.response_hook(ctx, head, Hook::AfterProxy)?;
        Ok(flow.unwrap_or(Flow::Continue))
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        if self.guest_phases.contains(types::Phases::ON_RESPONSE) {
            self.response_hook(ctx, res.head, Hook::OnResponse)?;
        } else if !self.needed_after(Hook::OnResponse) {
            // The device's last subscribed hook did not run (e.g. `before-proxy` on a static
            // route): its instance goes back to the pool now rather than with the request.
            drop(ctx.info().slots.take::<Instance>(self.key));
        }
        Ok(())
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
/// A link failure of a component that exports the device interface: its types differ.
fn link_error(error: &wasmtime::Error) -> LoadError {
    LoadErrorKind::Link(load_error::one_line(&format!("{error:#}"))).into()
}

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
