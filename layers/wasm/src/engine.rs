//! The shared wasmtime engine: pooling allocator, epoch ticker, compiled-module cache.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::LoadError;

/// How the shared engine is set up.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Use the pooling allocator (pre-reserved slots, copy-on-write memory images). Without
    /// it every instance allocates on demand (about twice as slow to instantiate).
    pub pooling: bool,
    /// Component instances alive at once, over all devices and requests (pooling only): the
    /// concurrency limit of WASM devices. A request that finds the pool full fails the device
    /// (503 when `on_failure = "closed"`).
    pub max_instances: u32,
    /// The largest linear memory any device may have; a device's `memory_limit_bytes` above
    /// this is refused at load.
    pub max_memory_bytes: usize,
    /// The WASM stack limit per call (deep recursion traps beyond it).
    pub max_wasm_stack: usize,
    /// The epoch tick: the resolution of per-hook time limits.
    pub tick: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            pooling: true,
            max_instances: 1000,
            max_memory_bytes: 256 << 20,
            max_wasm_stack: 512 << 10,
            tick: Duration::from_millis(1),
        }
    }
}

/// Bytes of each pooled linear memory kept mapped when an instance ends.
const KEEP_RESIDENT: usize = 2 << 20;

/// Compiled components by content hash (full bytes compared on a hit).
type Cache = HashMap<u64, Vec<(Arc<[u8]>, Component)>>;

/// The wasmtime engine all WASM devices share (cheap to clone): compilation settings, the
/// instance pool, the epoch ticker thread, and a cache of compiled components by content, so
/// a reload of an unchanged module skips compilation.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    options: EngineOptions,
    cache: Mutex<Cache>,
}

// === impl WasmEngine ===

impl WasmEngine {
    /// A new engine with its own pool and ticker thread (the thread ends with the engine).
    pub fn new(options: EngineOptions) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .wasm_backtrace_max_frames(None)
            .max_wasm_stack(options.max_wasm_stack)
            .memory_init_cow(true);
        if options.pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(options.max_instances)
                .total_core_instances(options.max_instances.saturating_mul(4))
                .total_memories(options.max_instances.saturating_mul(2))
                .total_tables(options.max_instances.saturating_mul(2))
                .max_memory_size(options.max_memory_bytes)
                // Reset a freed slot by rewriting only the pages the instance dirtied (Linux
                // PAGEMAP_SCAN, 6.7+; a plain memset of the low pages elsewhere) instead of
                // unmapping it: the next instance takes no page faults and no TLB shootdown.
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(64 << 10)
                .pagemap_scan(Enabled::Auto);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let weak = engine.weak();
        let tick = options.tick;
        std::thread::Builder::new()
            .name("snakeway-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                options,
                cache: Mutex::default(),
            }),
        })
    }

    /// The process-wide engine with default options, created on first use.
    pub fn shared() -> Result<Self, LoadError> {
        static SHARED: OnceLock<Result<WasmEngine, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::new(EngineOptions::default()).map_err(|e| e.to_string()))
            .clone()
            .map_err(LoadError::Engine)
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The options it was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Compiles `bytes` (a component binary), or returns the cached compilation of the same
    /// bytes.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(hit) = self
            .lock_cache()
            .get(&key)
            .and_then(|v| v.iter().find(|(b, _)| **b == *bytes))
        {
            return Ok(hit.1.clone());
        }
        let component = Component::from_binary(&self.inner.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.lock_cache()
            .entry(key)
            .or_default()
            .push((Arc::from(bytes), component.clone()));
        Ok(component)
    }

    /// How many compiled components the cache holds.
    pub fn cached_components(&self) -> usize {
        self.lock_cache().values().map(Vec::len).sum()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}
