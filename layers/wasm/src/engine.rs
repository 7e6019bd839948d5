//! The shared wasmtime engine: pooling allocator, epoch ticker, compiled-component caches (in
//! memory by content, and wasmtime's on-disk compilation cache).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{
    Cache as DiskCache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

use crate::load_error::{self, LoadError, LoadErrorKind};

/// How the shared engine is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineOptions {
    /// Use the pooling allocator (pre-reserved slots, copy-on-write memory images). Without
    /// it every instance allocates on demand (about twice as slow to instantiate).
    pub pooling: bool,
    /// Component instances alive at once, over all devices and requests (pooling only): the
    /// concurrency limit of WASM devices. A request that finds the pool full is answered 503,
    /// whatever the device's failure policy.
    pub max_instances: u32,
    /// The largest linear memory any device may have; a device's `memory_limit_bytes` above
    /// this is refused at load.
    pub max_memory_bytes: usize,
    /// The WASM stack limit per call (deep recursion traps beyond it).
    pub max_wasm_stack: usize,
    /// The epoch tick: the resolution of per-hook time limits.
    pub tick: Duration,
    /// wasmtime's on-disk compilation cache: compiled components are stored in this directory
    /// (created, mode 0700, if missing), keyed by a SHA-256 of the component bytes, the
    /// wasmtime version and the engine's compilation settings, so a restart loads them instead
    /// of compiling. `None`: no disk cache. The directory must be dedicated to the cache
    /// (wasmtime's cleanup deletes anything else in it) and not writable by every user (its
    /// files become native code in this process). When it cannot be used the engine logs a
    /// warning and compiles without it: see [`WasmEngine::disk_cache_error`].
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            pooling: true,
            max_instances: 1000,
            max_memory_bytes: 256 << 20,
            max_wasm_stack: 512 << 10,
            tick: Duration::from_millis(1),
            cache_dir: None,
        }
    }
}

/// What the on-disk compilation cache did since the engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCacheStats {
    /// Compilations loaded from the directory instead of compiled.
    pub hits: usize,
    /// Compilations stored into the directory (each one was compiled).
    pub misses: usize,
}

/// Bytes of each pooled linear memory kept mapped when an instance ends.
const KEEP_RESIDENT: usize = 2 << 20;

/// Compiled components by content hash (full bytes compared on a hit).
type MemoryCache = HashMap<u64, Vec<(Arc<[u8]>, Component)>>;

/// The wasmtime engine all WASM devices share (cheap to clone): compilation settings, the
/// instance pool, the epoch ticker thread, and two caches of compiled components: one in
/// memory by content, so a reload of an unchanged module skips compilation (and the disk), and
/// wasmtime's on-disk cache ([`EngineOptions::cache_dir`]), so a restart does too.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    options: EngineOptions,
    cache: Mutex<MemoryCache>,
    /// The on-disk cache in use (a handle sharing wasmtime's hit and miss counters).
    disk: Option<DiskCache>,
    /// Why `options.cache_dir` is not in use.
    disk_error: Option<String>,
}

// === impl WasmEngine ===

impl WasmEngine {
    /// A new engine with its own pool and ticker thread (the thread ends with the engine). A
    /// cache directory that cannot be used is not an error: see [`EngineOptions::cache_dir`].
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
        let (disk, disk_error) = match options.cache_dir.as_deref().map(open_disk_cache) {
            None => (None, None),
            Some(Ok(cache)) => {
                tracing::info!(
                    target: "snakeway::wasm",
                    dir = %cache.directory().display(),
                    "WASM compilation cache"
                );
                config.cache(Some(cache.clone()));
                (Some(cache), None)
            }
            Some(Err(error)) => {
                tracing::warn!(
                    target: "snakeway::wasm",
                    "{error}; WASM components are compiled without a disk cache"
                );
                (None, Some(error))
            }
        };
        let engine = Engine::new(&config)
            .map_err(|e| LoadError::from(LoadErrorKind::Engine(format!("{e:#}"))))?;
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
            .map_err(|e| LoadErrorKind::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                options,
                cache: Mutex::default(),
                disk,
                disk_error,
            }),
        })
    }

    /// The process-wide engine with default options (no disk cache), created on first use.
    pub fn shared() -> Result<Self, LoadError> {
        Self::shared_with(EngineOptions::default())
    }

    /// The process-wide engine, created on first use with `options`. The first call's options
    /// stay for the life of the process: later calls return the same engine whatever options
    /// they pass (compare them with [`options`](Self::options)).
    pub fn shared_with(options: EngineOptions) -> Result<Self, LoadError> {
        static SHARED: OnceLock<Result<WasmEngine, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::new(options).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| LoadErrorKind::Engine(e).into())
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The options it was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// The on-disk cache directory in use (canonical), if any.
    pub fn disk_cache_dir(&self) -> Option<&Path> {
        self.inner
            .disk
            .as_ref()
            .map(|cache| cache.directory().as_path())
    }

    /// Why the configured [`EngineOptions::cache_dir`] is not in use, if it is not.
    pub fn disk_cache_error(&self) -> Option<&str> {
        self.inner.disk_error.as_deref()
    }

    /// The on-disk cache's counters, if one is in use.
    pub fn disk_cache_stats(&self) -> Option<DiskCacheStats> {
        self.inner.disk.as_ref().map(|cache| DiskCacheStats {
            hits: cache.cache_hits(),
            misses: cache.cache_misses(),
        })
    }

    /// Compiles `bytes` (a component binary), or returns the cached compilation of the same
    /// bytes: from memory, else from the disk cache.
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
        let hits = self.disk_cache_stats().map(|s| s.hits);
        let started = Instant::now();
        let component = Component::from_binary(&self.inner.engine, bytes)
            .map_err(|e| load_error::invalid(&e))?;
        // Exact when components are loaded one at a time, as configurations are.
        let disk_cache = match (hits, self.disk_cache_stats()) {
            (Some(before), Some(after)) if after.hits > before => "hit",
            (Some(_), Some(_)) => "miss",
            _ => "off",
        };
        let ms = started.elapsed().as_millis() as u64;
        let what = if disk_cache == "hit" {
            "loaded from the compilation cache"
        } else {
            "compiled"
        };
        tracing::info!(
            target: "snakeway::wasm",
            bytes = bytes.len(),
            ms,
            disk_cache,
            "WASM component {what}"
        );
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

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, MemoryCache> {
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
            .field("disk_cache_dir", &self.disk_cache_dir())
            .finish_non_exhaustive()
    }
}

// === the disk cache ===

/// The subdirectory wasmtime keeps compiled code in; besides it the cache directory holds only
/// wasmtime's `.cleanup*` lock files.
const MODULES: &str = "modules";

/// wasmtime's cache in `dir`, created if missing, after checking that nothing but the cache
/// lives there (wasmtime's cleanup deletes whatever it does not recognize) and that not every
/// user can write there (what it holds is loaded as native code).
fn open_disk_cache(dir: &Path) -> Result<DiskCache, String> {
    let shown = dir.display();
    let dir = std::path::absolute(dir)
        .map_err(|e| format!("wasm cache directory {shown}: cannot resolve it: {e}"))?;
    let shown = dir.display();
    if !dir.exists() {
        create_private_dir(&dir)
            .map_err(|e| format!("wasm cache directory {shown}: cannot create it: {e}"))?;
    }
    check_private(&dir).map_err(|e| format!("wasm cache directory {shown}: {e}"))?;
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| format!("wasm cache directory {shown}: cannot list it: {e}"))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("wasm cache directory {shown}: cannot list it: {e}"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name != MODULES && !name.starts_with(".cleanup") {
            return Err(format!(
                "wasm cache directory {shown} holds {name:?}, which is not part of a compilation \
                 cache (wasmtime's cleanup would delete it): use an empty or dedicated directory"
            ));
        }
    }
    let modules = dir.join(MODULES);
    create_private_dir(&modules)
        .map_err(|e| format!("wasm cache directory {shown}: cannot create {MODULES}/: {e}"))?;
    check_private(&modules)
        .map_err(|e| format!("wasm cache directory {shown}: {MODULES}/: {e}"))?;
    // wasmtime only warns when a store fails; find out now, with a file wasmtime would clean up.
    // The cleanup of another engine on this directory (the one a reload replaces, still
    // running) may delete the probe first: written is what counts.
    let probe = modules.join(format!(".snakeway-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| match std::fs::remove_file(&probe) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            removed => removed,
        })
        .map_err(|e| format!("wasm cache directory {shown}: cannot write in it: {e}"))?;
    let mut config = CacheConfig::new();
    config.with_directory(&dir);
    DiskCache::new(config).map_err(|e| format!("wasm cache directory {shown}: {e:#}"))
}

/// Creates `dir` and its missing parents, readable by this user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Refuses what is not a directory, or a directory any user may write in.
fn check_private(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_dir() {
        return Err("it is not a directory".to_owned());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            return Err(format!(
                "any user may write in it (mode {:o}), and what it holds runs as native code in \
                 this process",
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A component exporting `answer: func() -> u32`.
    const COMPONENT: &str = r#"
        (component
          (core module $m (func (export "answer") (result i32) i32.const 42))
          (core instance $i (instantiate $m))
          (func (export "answer") (result u32) (canon lift (core func $i "answer"))))
    "#;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("snakeway-wasm-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn options(cache_dir: Option<PathBuf>) -> EngineOptions {
        EngineOptions {
            pooling: false,
            cache_dir,
            ..EngineOptions::default()
        }
    }

    /// The compiled artifacts under `dir` (wasmtime's `modules/<version>/<hash>`, without the
    /// `.stats` files its worker writes next to them).
    fn artifacts(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for version in std::fs::read_dir(dir.join(MODULES)).unwrap() {
            let version = version.unwrap().path();
            if !version.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&version).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_none() {
                    found.push(file);
                }
            }
        }
        found
    }

    fn answer(engine: &WasmEngine, component: &Component) -> u32 {
        let mut store = wasmtime::Store::new(engine.engine(), ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = wasmtime::component::Linker::new(engine.engine())
            .instantiate(&mut store, component)
            .unwrap();
        let answer = instance
            .get_typed_func::<(), (u32,)>(&mut store, "answer")
            .unwrap();
        answer.call(&mut store, ()).unwrap().0
    }

    #[test]
    fn a_fresh_engine_loads_compilations_from_the_disk_cache() {
        let tmp = TempDir::new("hit");
        let dir = tmp.0.join("cache/wasm");
        let bytes = wat::parse_str(COMPONENT).unwrap();

        let first = WasmEngine::new(options(Some(dir.clone()))).unwrap();
        assert_eq!(first.disk_cache_error(), None);
        assert_eq!(
            first.disk_cache_dir(),
            Some(dir.canonicalize().unwrap().as_path())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "created with mode {mode:o}");
        }
        let component = first.compile(&bytes).unwrap();
        assert_eq!(answer(&first, &component), 42);
        assert_eq!(
            first.disk_cache_stats(),
            Some(DiskCacheStats { hits: 0, misses: 1 })
        );
        assert_eq!(artifacts(&dir).len(), 1);
        drop((first, component));

        // A restart: a new engine, same settings, same directory.
        let second = WasmEngine::new(options(Some(dir.clone()))).unwrap();
        let component = second.compile(&bytes).unwrap();
        assert_eq!(
            second.disk_cache_stats(),
            Some(DiskCacheStats { hits: 1, misses: 0 }),
            "{:?}",
            second.disk_cache_error()
        );
        assert_eq!(answer(&second, &component), 42);
        // A reload of the same bytes is served from memory, without reading the disk.
        second.compile(&bytes).unwrap();
        assert_eq!(
            second.disk_cache_stats(),
            Some(DiskCacheStats { hits: 1, misses: 0 })
        );
        assert_eq!(second.cached_components(), 1);
        // Other bytes are another entry.
        let other = wat::parse_str(COMPONENT.replace("i32.const 42", "i32.const 7")).unwrap();
        let component = second.compile(&other).unwrap();
        assert_eq!(answer(&second, &component), 7);
        assert_eq!(
            second.disk_cache_stats(),
            Some(DiskCacheStats { hits: 1, misses: 1 })
        );
        assert_eq!(artifacts(&dir).len(), 2);
    }

    #[test]
    fn a_damaged_cache_entry_is_compiled_again() {
        let tmp = TempDir::new("damaged");
        let dir = tmp.0.join("cache");
        let bytes = wat::parse_str(COMPONENT).unwrap();
        WasmEngine::new(options(Some(dir.clone())))
            .unwrap()
            .compile(&bytes)
            .unwrap();
        let [artifact] = artifacts(&dir).try_into().unwrap();
        std::fs::write(&artifact, b"not a compiled component").unwrap();

        let engine = WasmEngine::new(options(Some(dir))).unwrap();
        let component = engine.compile(&bytes).unwrap();
        assert_eq!(answer(&engine, &component), 42);
        assert_eq!(
            engine.disk_cache_stats(),
            Some(DiskCacheStats { hits: 0, misses: 1 }),
            "{:?}",
            engine.disk_cache_error()
        );
        assert_ne!(
            std::fs::read(&artifact).unwrap(),
            b"not a compiled component"
        );
    }

    #[test]
    fn a_cache_dir_that_cannot_be_used_leaves_the_engine_without_one() {
        let tmp = TempDir::new("unusable");
        let bytes = wat::parse_str(COMPONENT).unwrap();
        let file = tmp.0.join("file");
        std::fs::write(&file, "x").unwrap();
        let shared = tmp.0.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("keep.txt"), "mine").unwrap();
        let mut cases = vec![
            (file.clone(), "is not a directory".to_owned()),
            (file.join("sub"), "cannot create it".to_owned()),
            (shared.clone(), r#"holds "keep.txt""#.to_owned()),
        ];
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let open = tmp.0.join("open");
            std::fs::create_dir(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
            cases.push((open, "any user may write in it (mode 777)".to_owned()));
        }
        for (dir, why) in cases {
            let engine = WasmEngine::new(options(Some(dir.clone()))).unwrap();
            let error = engine.disk_cache_error().unwrap_or_default();
            assert!(error.contains(&why), "{}: {error:?}", dir.display());
            assert!(error.contains(&dir.display().to_string()), "{error:?}");
            assert_eq!(engine.disk_cache_dir(), None);
            assert_eq!(engine.disk_cache_stats(), None);
            let component = engine.compile(&bytes).unwrap();
            assert_eq!(answer(&engine, &component), 42);
        }
        assert_eq!(
            std::fs::read_to_string(shared.join("keep.txt")).unwrap(),
            "mine"
        );
        assert!(!shared.join(MODULES).exists());

        let engine = WasmEngine::new(options(None)).unwrap();
        assert_eq!(
            (
                engine.disk_cache_dir(),
                engine.disk_cache_error(),
                engine.disk_cache_stats()
            ),
            (None, None, None)
        );
    }
}
