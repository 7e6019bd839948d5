//! The local store: every key's TAT in one lock-free map shared by all workers, bounded by
//! `max_keys`.
//!
//! The map is a `papaya` hash map (lock-free reads and inserts, epoch-based reclamation) from
//! the key's 64-bit hash to an `AtomicU64` TAT; a request is a map lookup and one
//! compare-and-swap on its key's TAT. Only a key seen for the first time inserts.
//!
//! **Bound.** When a new key finds the map at `max_keys`, one thread (the others do not wait)
//! sweeps it: first every key whose TAT has passed (its bucket is full again, so forgetting it
//! changes nothing), then, if that is not enough, the keys with the oldest TAT (the fullest
//! buckets, the state closest to a quiet key's) until an eighth of `max_keys` is free. The
//! sweep is O(keys), paid once per `max_keys / 8` new keys. While one thread sweeps, new keys
//! inserted by other threads may pass the bound by at most one per thread.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use snakeway_core::metrics::Value;

use crate::gcra::{Decision, Quota};

/// Keys are already uniform hashes: the map uses them as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = papaya::HashMap<u64, AtomicU64, BuildHasherDefault<Prehashed>>;

/// Every key's bucket for one quota, in memory, shared by all workers.
pub struct LocalStore {
    quota: Quota,
    map: Map,
    max_keys: usize,
    /// Held (true) by the one thread sweeping.
    sweeping: AtomicBool,
    /// The origin of the nanosecond clock TATs are counted on.
    epoch: Instant,
    /// Seeds the key hash, so clients cannot aim at collisions.
    seed: u64,
    /// Where the key count is published when it changes.
    gauge: Option<Arc<Value>>,
}

// === impl LocalStore ===

impl LocalStore {
    /// A store for `quota` keeping at most `max_keys` keys (at least 1).
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        Self {
            quota,
            map: Map::default(),
            max_keys: max_keys.max(1),
            sweeping: AtomicBool::new(false),
            epoch: Instant::now(),
            seed: random_seed(),
            gauge: None,
        }
    }

    /// Publishes the key count in `gauge` (set now, and whenever a key is added or evicted).
    #[must_use]
    pub fn with_key_gauge(mut self, gauge: Arc<Value>) -> Self {
        gauge.set(self.keys() as u64);
        self.gauge = Some(gauge);
        self
    }

    /// The quota the store counts against.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// How many keys the store holds now.
    pub fn keys(&self) -> usize {
        self.map.len()
    }

    /// Counts one request of `key` that arrived at `at` (the request's start: the clock is
    /// read once per request, by the server).
    #[inline]
    pub fn check(&self, key: &[u8], at: Instant) -> Decision {
        let since = at.saturating_duration_since(self.epoch);
        let now = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.check_at(crate::key::local_hash(self.seed, key), now)
    }

    /// Counts one request of the key hashed to `hash` at `now` nanoseconds on the store's clock
    /// (for tests: an injected clock).
    pub(crate) fn check_at(&self, hash: u64, now: u64) -> Decision {
        let map = self.map.pin();
        if let Some(tat) = map.get(&hash) {
            return self.step(tat, now);
        }
        if map.len() >= self.max_keys {
            self.evict(now);
        }
        let (decision, next) = self.quota.step(0, now);
        match map.try_insert(hash, AtomicU64::new(next.unwrap_or(0))) {
            Ok(_) => {
                if let Some(gauge) = &self.gauge {
                    gauge.set(map.len() as u64);
                }
                decision
            }
            // Another worker inserted the key meanwhile: count against its TAT.
            Err(occupied) => self.step(occupied.current, now),
        }
    }

    /// One GCRA step on a key's TAT, retried until its compare-and-swap wins.
    #[inline]
    fn step(&self, tat: &AtomicU64, now: u64) -> Decision {
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let (decision, next) = self.quota.step(current, now);
            let Some(next) = next else {
                return decision;
            };
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision,
                Err(actual) => current = actual,
            }
        }
    }

    /// Frees an eighth of `max_keys`: first the keys whose bucket is full again, then the
    /// oldest. Only one thread sweeps at a time; the others go on without waiting.
    fn evict(&self, now: u64) {
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let target = self.max_keys - (self.max_keys / 8).max(1);
        let map = self.map.pin();
        map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        let len = map.len();
        if len > target {
            let mut tats: Vec<u64> = map.values().map(|t| t.load(Ordering::Relaxed)).collect();
            let excess = (len - target).min(tats.len());
            if excess > 0 {
                let (_, cut, _) = tats.select_nth_unstable(excess - 1);
                let cut = *cut;
                map.retain(|_, tat| tat.load(Ordering::Relaxed) > cut);
            }
        }
        self.sweeping.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("quota", &self.quota)
            .field("keys", &self.keys())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

/// A per-store random seed, from the standard library's randomly keyed hasher.
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;

    fn store(limit: u32, period_ms: u64, burst: u32, max_keys: usize) -> LocalStore {
        let quota = Quota::new(limit, Duration::from_millis(period_ms), burst).expect("quota");
        LocalStore::new(quota, max_keys)
    }

    #[test]
    fn keys_are_counted_apart_on_an_injected_clock() {
        let store = store(5, 1000, 0, 100);
        let now = 50 * MS;
        let a: usize = (0..20).filter(|_| store.check_at(1, now).allowed).count();
        assert_eq!(a, 5);
        assert!(store.check_at(2, now).allowed, "another key is untouched");
        assert!(!store.check_at(1, now + 199 * MS).allowed);
        assert!(
            store.check_at(1, now + 200 * MS).allowed,
            "1/5 period: one more"
        );
        assert!(!store.check_at(1, now + 200 * MS).allowed);
        assert_eq!(store.keys(), 2);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_max_keys() {
        let store = store(5, 1000, 0, 1000);
        let now = 10 * MS;
        for key in 0..100_000u64 {
            // Every key keeps state (TAT in the future): only eviction of the oldest bounds it.
            assert!(
                store
                    .check_at(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), now + key)
                    .allowed
            );
            assert!(store.keys() <= 1000, "key {key}: {} keys", store.keys());
        }
        assert!(
            store.keys() > 800,
            "eviction frees an eighth, not everything"
        );
        // The newest keys kept their state; the oldest were forgotten first.
        let newest = 99_999u64.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let remaining: usize = (0..10)
            .filter(|_| store.check_at(newest, now + 99_999).allowed)
            .count();
        assert_eq!(remaining, 4, "the newest key still has its spent request");
    }

    #[test]
    fn expired_keys_go_before_live_ones() {
        let store = store(1, 1000, 0, 8);
        for key in 0..7 {
            store.check_at(key, MS);
        }
        // Key 100 is fresh and busy; the others' buckets are full again by 2 s.
        store.check_at(100, 1_900 * MS);
        store.check_at(200, 2_000 * MS);
        assert!(store.keys() <= 8);
        assert!(
            !store.check_at(100, 2_000 * MS).allowed,
            "the live key kept its state"
        );
    }

    #[test]
    fn workers_share_one_budget() {
        let store = std::sync::Arc::new(store(1000, 60_000, 0, 10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..500).filter(|_| store.check_at(7, MS).allowed).count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(
            allowed, 1000,
            "exactly the bucket, however the CAS races went"
        );
    }
}
