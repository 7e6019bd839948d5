//! The in-memory cache of small files: a fixed number of shards, each an immutable hash map
//! behind an [`ArcSwap`].
//!
//! **Reads take no lock.** A hit is one `ArcSwap::load` (a thread-local "debt" slot, no write
//! to any shared cache line), one hash look-up and one `Arc` clone. Misses, inserts and
//! evictions are rare by construction; they copy the one shard they change (a few hundred
//! entries at most for a cache of thousands of files) under a per-shard writer mutex and
//! publish the copy with one store. In-flight readers keep the map they loaded.
//!
//! Why not one `ArcSwap<HashMap>`: every insert would copy the whole map, quadratic while a
//! cold cache fills. Why not `RwLock` shards (dashmap): every read would write the lock word,
//! a cache line bouncing between the worker threads. A lock-free hash map crate (papaya, scc)
//! would do, at the cost of a dependency and epoch-based reclamation for a read-mostly map.
//!
//! Eviction is CLOCK (second chance): a hit sets the entry's `referenced` bit (a store only
//! when it was clear); when the bytes held exceed the budget, a sweep drops entries whose bit
//! is clear and clears the others, shard by shard, until usage is under 7/8 of the budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::entry::Entry;

const SHARDS: usize = 32;

type Map = HashMap<Box<str>, Arc<Entry>>;

struct Shard {
    map: ArcSwap<Map>,
    /// Serializes writers of this shard; never taken by readers.
    write: Mutex<()>,
}

/// The cache of one static route.
pub(crate) struct Cache {
    shards: Box<[Shard]>,
    /// Approximate bytes held (exact after each sweep).
    used: AtomicU64,
    max_bytes: u64,
    /// Where the next eviction sweep starts.
    hand: AtomicUsize,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("used", &self.used.load(Ordering::Relaxed))
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl Cache {
    pub(crate) fn new(max_bytes: u64) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: ArcSwap::from_pointee(HashMap::new()),
                    write: Mutex::new(()),
                })
                .collect(),
            used: AtomicU64::new(0),
            max_bytes,
            hand: AtomicUsize::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn shard(&self, key: &str) -> &Shard {
        // FNV-1a: cheap, and only spreads keys over shards (the maps hash with SipHash).
        let mut h: u32 = 0x811c_9dc5;
        for &b in key.as_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        &self.shards[h as usize % SHARDS]
    }

    /// The entry for `key`, if cached. Lock-free.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        if !self.enabled() {
            return None;
        }
        let map = self.shard(key).map.load();
        let entry = map.get(key)?;
        entry.touch();
        Some(Arc::clone(entry))
    }

    /// Caches `entry` under `key` and returns the entry to use: the one already cached if it
    /// describes the same file (concurrent misses then share one entry, and so one
    /// compression of each variant), else `entry`, replacing any older one. Evicts if over
    /// budget.
    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>) -> Arc<Entry> {
        let weight = entry.weight.load(Ordering::Relaxed);
        if !self.enabled() || weight > self.max_bytes {
            return entry;
        }
        let shard = self.shard(key);
        {
            let _writer = shard.write.lock().unwrap_or_else(|e| e.into_inner());
            let current = shard.map.load();
            if let Some(cached) = current.get(key)
                && cached.stamp == entry.stamp
                && cached.path == entry.path
            {
                cached.touch();
                return Arc::clone(cached);
            }
            let mut map = Map::clone(&current);
            if let Some(old) = map.insert(key.into(), Arc::clone(&entry)) {
                self.sub(old.weight.load(Ordering::Relaxed));
            }
            shard.map.store(Arc::new(map));
        }
        let used = self.used.fetch_add(weight, Ordering::Relaxed) + weight;
        if used > self.max_bytes {
            self.evict();
        }
        entry
    }

    /// Drops `key` if it still maps to `entry` (a stale entry found by a reader).
    pub(crate) fn remove(&self, key: &str, entry: &Arc<Entry>) {
        let shard = self.shard(key);
        let _writer = shard.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = shard.map.load();
        if current.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            let mut map = Map::clone(&current);
            map.remove(key);
            shard.map.store(Arc::new(map));
            self.sub(entry.weight.load(Ordering::Relaxed));
        }
    }

    /// Counts `bytes` more held by a cached entry (a variant compressed after insertion).
    pub(crate) fn grow(&self, entry: &Entry, bytes: u64) {
        entry.weight.fetch_add(bytes, Ordering::Relaxed);
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used > self.max_bytes {
            self.evict();
        }
    }

    fn sub(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// The CLOCK sweep; at most two turns over the shards (the first may only clear bits).
    fn evict(&self) {
        let target = self.max_bytes / 8 * 7;
        for _ in 0..2 * SHARDS {
            if self.used.load(Ordering::Relaxed) <= target {
                break;
            }
            let i = self.hand.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let shard = &self.shards[i];
            let _writer = shard.write.lock().unwrap_or_else(|e| e.into_inner());
            let current = shard.map.load_full();
            let mut kept = Map::with_capacity(current.len());
            let mut freed = 0;
            for (k, e) in current.iter() {
                if e.referenced.swap(false, Ordering::Relaxed) {
                    kept.insert(k.clone(), Arc::clone(e));
                } else {
                    freed += e.weight.load(Ordering::Relaxed);
                }
            }
            if kept.len() != current.len() {
                shard.map.store(Arc::new(kept));
                self.sub(freed);
            }
        }
        // Re-count exactly: variants compressed for entries evicted meanwhile were counted.
        let exact: u64 = self
            .shards
            .iter()
            .map(|s| {
                s.map
                    .load()
                    .values()
                    .map(|e| e.weight.load(Ordering::Relaxed))
                    .sum::<u64>()
            })
            .sum();
        self.used.store(exact, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.load().len()).sum()
    }
}
