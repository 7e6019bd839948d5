//! Picking an upstream: smooth weighted round robin over a precomputed schedule, failover in
//! configured order, weighted random, weighted power-of-two-choices over in-flight counts, or a
//! consistent hash ring. All skip upstreams that refuse the request (open circuit, failed
//! health checks), take no lock and allocate nothing per request (the random ones draw from a
//! per-thread wyrand generator).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sticky::{Ring, StickyKey};

/// How a service spreads requests over its upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Smooth weighted round robin (nginx's algorithm): with weights 5, 1, 1 the order is
    /// `a a b a c a a`, never `a a a a a b c`.
    #[default]
    RoundRobin,
    /// Every request goes to the first upstream, in configured order, whose circuit allows it.
    Failover,
    /// A weighted random upstream (chance `weight / total`); when its circuit refuses, the
    /// others are tried in a random rotation.
    Random,
    /// Power of two choices (Envoy's least-request): two distinct random upstreams, and the one
    /// with fewer requests in flight per unit of weight wins (`in_flight / weight`, compared by
    /// cross-multiplication). When its circuit refuses, the other, then the rest in a random
    /// rotation.
    LeastRequests,
    /// Consistent hashing of a request key on a ring with virtual nodes (Envoy's ring hash):
    /// requests with the same key go to the same upstream, and losing or removing one of N
    /// upstreams moves only that upstream's keys. A request without the key goes round robin.
    StickyHash(StickyKey),
}

impl Strategy {
    /// What [`Strategy::StickyHash`] hashes; `None` for the other strategies.
    pub fn sticky_key(&self) -> Option<&StickyKey> {
        match self {
            Self::StickyHash(key) => Some(key),
            _ => None,
        }
    }
}

/// The longest schedule we precompute; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 14;

/// The per-service picking state.
#[derive(Debug)]
pub(crate) enum Balancer {
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    Failover,
    Random {
        /// `cumulative[i]` is the sum of the weights of upstreams `0..=i`.
        cumulative: Box<[u64]>,
    },
    LeastRequests {
        weights: Box<[u32]>,
    },
    StickyHash {
        ring: Ring,
        /// Round robin, for requests without the key.
        keyless: Box<Balancer>,
    },
}

// === impl Balancer ===

impl Balancer {
    /// A balancer over upstreams with these weights (all at least 1) and these `ids` (their
    /// URLs: where the hash ring places them).
    pub(crate) fn new<'a>(
        strategy: &Strategy,
        ids: impl ExactSizeIterator<Item = &'a str>,
        weights: &[u32],
    ) -> Self {
        match strategy {
            Strategy::RoundRobin => Self::RoundRobin {
                schedule: smooth_schedule(weights).into_boxed_slice(),
                next: AtomicUsize::new(0),
            },
            Strategy::Failover => Self::Failover,
            Strategy::Random => Self::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |sum, &w| {
                        *sum += u64::from(w);
                        Some(*sum)
                    })
                    .collect(),
            },
            Strategy::LeastRequests => Self::LeastRequests {
                weights: weights.into(),
            },
            Strategy::StickyHash(_) => Self::StickyHash {
                ring: Ring::new(ids, weights),
                keyless: Box::new(Self::new(&Strategy::RoundRobin, [].into_iter(), weights)),
            },
        }
    }

    /// The first upstream index for which `admit` returns `Some`, in this balancer's order, with
    /// what `admit` returned. `None` when every upstream refused.
    ///
    /// Round robin advances the shared counter once per candidate, so the slots of refusing
    /// upstreams are spread over the others in proportion to their weights.
    ///
    /// `in_flight(i)` is the number of requests upstream `i` is serving; only least-requests
    /// reads it. `key` is the hash of the request's sticky key, if it has one; only the hash
    /// ring reads it.
    #[inline]
    pub(crate) fn pick<T>(
        &self,
        upstreams: usize,
        key: Option<u64>,
        in_flight: impl Fn(usize) -> usize,
        admit: impl FnMut(usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        match self {
            Self::StickyHash { ring, keyless } => match key {
                Some(hash) => ring.pick(hash, upstreams, admit),
                None => keyless.pick_ordered(upstreams, admit),
            },
            Self::Random { .. } | Self::LeastRequests { .. } if upstreams > 1 => {
                RNG.with(|state| {
                    let mut rng = Rng(state.get());
                    let picked = self.pick_random(&mut rng, upstreams, in_flight, admit);
                    state.set(rng.0);
                    picked
                })
            }
            _ => self.pick_ordered(upstreams, admit),
        }
    }

    /// [`Balancer::pick`] for the strategies that need no random numbers, and for a single
    /// upstream under any strategy.
    #[inline]
    fn pick_ordered<T>(
        &self,
        upstreams: usize,
        mut admit: impl FnMut(usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        match self {
            Self::Random { .. } | Self::LeastRequests { .. } | Self::Failover => {
                (0..upstreams).find_map(|i| admit(i).map(|t| (i, t)))
            }
            Self::StickyHash { keyless, .. } => keyless.pick_ordered(upstreams, admit),
            // One upstream (the common case): no shared counter to bump.
            Self::RoundRobin { schedule, .. } if schedule.len() == 1 => {
                let i = schedule[0] as usize;
                admit(i).map(|t| (i, t))
            }
            Self::RoundRobin { schedule, next } => {
                let mut refused = Refused::new(upstreams);
                for _ in 0..schedule.len() {
                    let slot = next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                    let i = schedule[slot] as usize;
                    if refused.contains(i) {
                        continue;
                    }
                    if let Some(t) = admit(i) {
                        return Some((i, t));
                    }
                    if refused.insert(i) == upstreams {
                        break;
                    }
                }
                None
            }
        }
    }

    /// [`Balancer::pick`] for random and least-requests over two or more upstreams.
    fn pick_random<T>(
        &self,
        rng: &mut Rng,
        upstreams: usize,
        in_flight: impl Fn(usize) -> usize,
        mut admit: impl FnMut(usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        let n = upstreams as u64;
        let (first, second) = match self {
            Self::Random { cumulative } => {
                let total = cumulative.last().copied().unwrap_or(0);
                let r = rng.below(total);
                (cumulative.partition_point(|&c| c <= r), None)
            }
            Self::LeastRequests { weights } => {
                let a = rng.below(n) as usize;
                let mut b = rng.below(n - 1) as usize;
                if b >= a {
                    b += 1;
                }
                // a is lighter when in_flight(a) / w(a) < in_flight(b) / w(b); a wins ties
                // (it is as random as b).
                let load_a = in_flight(a) as u128 * u128::from(weights[b]);
                let load_b = in_flight(b) as u128 * u128::from(weights[a]);
                if load_b < load_a {
                    (b, Some(a))
                } else {
                    (a, Some(b))
                }
            }
            Self::RoundRobin { .. } | Self::Failover | Self::StickyHash { .. } => {
                return self.pick_ordered(upstreams, admit);
            }
        };
        if let Some(t) = admit(first) {
            return Some((first, t));
        }
        if let Some(second) = second
            && let Some(t) = admit(second)
        {
            return Some((second, t));
        }
        // The rest, in a rotation from a random start among them (not among all upstreams,
        // which would favour the one after a refused upstream), so the refused share spreads
        // evenly. `j` counts over the rest; skipping the tried indices maps it to an upstream.
        let (lo, hi) = match second {
            Some(second) => (first.min(second), first.max(second)),
            None => (first, usize::MAX),
        };
        let rest = upstreams - 1 - usize::from(second.is_some());
        if rest == 0 {
            return None;
        }
        let start = rng.below(rest as u64) as usize;
        (0..rest)
            .map(|k| {
                let mut i = (start + k) % rest;
                if i >= lo {
                    i += 1;
                }
                if i >= hi {
                    i += 1;
                }
                i
            })
            .find_map(|i| admit(i).map(|t| (i, t)))
    }
}

/// The upstreams that refused during one pick (round robin's walk, the hash ring's): a bit set
/// on the stack for up to 64 upstreams, on the heap (that rare pick only) for more.
pub(crate) enum Refused {
    Small(u64, usize),
    Large(Vec<bool>, usize),
}

impl Refused {
    pub(crate) fn new(upstreams: usize) -> Self {
        if upstreams <= 64 {
            Self::Small(0, 0)
        } else {
            Self::Large(vec![false; upstreams], 0)
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        match self {
            Self::Small(bits, _) => bits & (1 << i) != 0,
            Self::Large(set, _) => set[i],
        }
    }

    /// Marks `i` refused; returns how many are.
    pub(crate) fn insert(&mut self, i: usize) -> usize {
        match self {
            Self::Small(bits, n) => {
                *bits |= 1 << i;
                *n += 1;
                *n
            }
            Self::Large(set, n) => {
                set[i] = true;
                *n += 1;
                *n
            }
        }
    }
}

/// wyrand (Wang Yi's generator): one multiply per number, good enough to spread requests, and
/// no dependency. The state lives in a per-thread cell, seeded from std's per-process random
/// keys, so workers never contend.
#[derive(Debug)]
struct Rng(u64);

// === impl Rng ===

impl Rng {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// A number in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for any realistic
    /// `n`). `n` must be at least 1.
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A random number in `0..n` (`n` at least 1) from this thread's generator.
pub(crate) fn random_below(n: u64) -> u64 {
    RNG.with(|state| {
        let mut rng = Rng(state.get());
        let r = rng.below(n);
        state.set(rng.0);
        r
    })
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let mut h = RandomState::new().build_hasher();
        h.write_usize(&h as *const _ as usize);
        h.finish()
    });
}

/// nginx's smooth weighted round robin, run once over a whole cycle: each step adds every
/// weight to its upstream's current value, picks the largest (first on ties) and subtracts the
/// total from it. The cycle is `sum(weights)` long after dividing by their gcd (and scaling down
/// to [`MAX_SCHEDULE`] if still longer).
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|&w| u64::from(w / g)).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_load(_: usize) -> usize {
        0
    }

    /// Upstream names for `n` upstreams.
    fn ids(n: usize) -> impl ExactSizeIterator<Item = &'static str> {
        ["a", "b", "c", "d", "e", "f", "g", "h"][..n]
            .iter()
            .copied()
    }

    impl Balancer {
        /// [`Balancer::pick`] for a request without a sticky key.
        fn pick_keyless<T>(
            &self,
            upstreams: usize,
            in_flight: impl Fn(usize) -> usize,
            admit: impl FnMut(usize) -> Option<T>,
        ) -> Option<(usize, T)> {
            self.pick(upstreams, None, in_flight, admit)
        }
    }

    /// `rounds` picks of `b` from a fixed seed, counted per upstream.
    fn spread(
        b: &Balancer,
        weights: usize,
        rounds: usize,
        admit: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut rng = Rng(42);
        let mut seen = vec![0; weights];
        for _ in 0..rounds {
            let (i, ()) = b
                .pick_random(&mut rng, weights, no_load, |i| admit(i).then_some(()))
                .unwrap();
            seen[i] += 1;
        }
        seen
    }

    #[test]
    fn random_spreads_evenly() {
        let b = Balancer::new(&Strategy::Random, ids(4), &[1, 1, 1, 1]);
        for n in spread(&b, 4, 40_000, |_| true) {
            assert!((9_500..10_500).contains(&n), "{n} of 40000 over 4");
        }
    }

    #[test]
    fn random_respects_weights() {
        let b = Balancer::new(&Strategy::Random, ids(2), &[3, 1]);
        let seen = spread(&b, 2, 40_000, |_| true);
        assert!((29_400..30_600).contains(&seen[0]), "{seen:?}");
        let b = Balancer::new(&Strategy::Random, ids(3), &[1, 1, 8]);
        let seen = spread(&b, 3, 100_000, |_| true);
        assert!((79_000..81_000).contains(&seen[2]), "{seen:?}");
    }

    #[test]
    fn random_skips_refusing_upstreams() {
        let b = Balancer::new(&Strategy::Random, ids(3), &[5, 1, 1]);
        let seen = spread(&b, 3, 30_000, |i| i != 0);
        assert_eq!(seen[0], 0);
        assert!(
            (14_000..16_000).contains(&seen[1]),
            "{seen:?}: the refused share spreads"
        );
        assert!(b.pick_keyless(3, no_load, |_| None::<()>).is_none());
        assert_eq!(
            b.pick_keyless(3, no_load, |i| (i == 2).then_some(i)),
            Some((2, 2))
        );
    }

    #[test]
    fn least_requests_prefers_the_less_loaded() {
        let b = Balancer::new(&Strategy::LeastRequests, ids(2), &[1, 1]);
        let load = |i: usize| if i == 0 { 10 } else { 3 };
        for _ in 0..100 {
            assert_eq!(b.pick_keyless(2, load, |_| Some(())), Some((1, ())));
        }
        // Of three, the busiest never wins a pair; the other two share evenly.
        let b = Balancer::new(&Strategy::LeastRequests, ids(3), &[1, 1, 1]);
        let mut rng = Rng(7);
        let mut seen = [0; 3];
        for _ in 0..30_000 {
            let load = |i: usize| if i == 2 { 50 } else { 1 };
            let (i, ()) = b.pick_random(&mut rng, 3, load, |_| Some(())).unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!((14_000..16_000).contains(&seen[0]), "{seen:?}");
    }

    #[test]
    fn least_requests_weighs_the_load() {
        // 6 in flight on weight 3 (2 each) beats 3 on weight 1.
        let b = Balancer::new(&Strategy::LeastRequests, ids(2), &[3, 1]);
        let load = |i: usize| if i == 0 { 6 } else { 3 };
        assert_eq!(b.pick_keyless(2, load, |_| Some(())), Some((0, ())));
        // 9 on weight 3 (3 each) loses to 2 on weight 1.
        let load = |i: usize| if i == 0 { 9 } else { 2 };
        assert_eq!(b.pick_keyless(2, load, |_| Some(())), Some((1, ())));
        // Idle: both get picked.
        let seen = spread(&b, 2, 1_000, |_| true);
        assert!(seen[0] > 300 && seen[1] > 300, "{seen:?}");
    }

    #[test]
    fn least_requests_falls_back_when_refused() {
        let b = Balancer::new(&Strategy::LeastRequests, ids(3), &[1, 1, 1]);
        let load = |i: usize| i;
        for _ in 0..100 {
            assert_eq!(
                b.pick_keyless(3, load, |i| (i == 2).then_some(())),
                Some((2, ()))
            );
            let (i, ()) = b.pick_keyless(3, load, |i| (i != 0).then_some(())).unwrap();
            assert_ne!(i, 0);
        }
        assert_eq!(b.pick_keyless(3, load, |_| None::<()>), None);
    }

    #[test]
    fn random_strategies_with_one_upstream() {
        for strategy in [Strategy::Random, Strategy::LeastRequests] {
            let b = Balancer::new(&strategy, ids(1), &[4]);
            assert_eq!(b.pick_keyless(1, no_load, Some), Some((0, 0)));
            assert_eq!(b.pick_keyless(1, no_load, |_| None::<()>), None);
        }
    }

    #[test]
    fn sticky_hash_follows_the_key_and_round_robins_without_one() {
        let b = Balancer::new(
            &Strategy::StickyHash(StickyKey::ClientIp),
            ids(3),
            &[1, 1, 1],
        );
        for key in [1u64, 1 << 40, u64::MAX] {
            let (first, ()) = b.pick(3, Some(key), no_load, |_| Some(())).unwrap();
            for _ in 0..10 {
                assert_eq!(
                    b.pick(3, Some(key), no_load, |_| Some(())),
                    Some((first, ()))
                );
            }
            // Its upstream refusing, the key goes to another, and comes back after.
            let (other, ()) = b
                .pick(3, Some(key), no_load, |i| (i != first).then_some(()))
                .unwrap();
            assert_ne!(other, first);
        }
        let order: Vec<usize> = (0..6)
            .map(|_| b.pick_keyless(3, no_load, |_| Some(())).unwrap().0)
            .collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2], "keyless requests go round robin");
        assert_eq!(b.pick(3, Some(5), no_load, |_| None::<()>), None);
    }

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 1]), [0, 1, 0]);
        assert_eq!(smooth_schedule(&[4, 2]), [0, 1, 0], "reduced by the gcd");
        assert_eq!(smooth_schedule(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(smooth_schedule(&[7]), [0]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let s = smooth_schedule(&[1_000_000, 999_999, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&2), "every upstream keeps at least one slot");
    }

    #[test]
    fn round_robin_skips_refusing_upstreams() {
        let b = Balancer::new(&Strategy::RoundRobin, ids(3), &[1, 1, 1]);
        let mut seen = [0; 3];
        for _ in 0..30 {
            let (i, ()) = b
                .pick_keyless(3, no_load, |i| (i != 0).then_some(()))
                .unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen, [0, 15, 15], "the refused share is split evenly");
        assert!(b.pick_keyless(3, no_load, |_| None::<()>).is_none());
    }

    #[test]
    fn failover_takes_the_first_admitted() {
        let b = Balancer::new(&Strategy::Failover, ids(3), &[1, 1, 1]);
        assert_eq!(
            b.pick_keyless(3, no_load, |i| (i >= 1).then_some(i)),
            Some((1, 1))
        );
        assert_eq!(b.pick_keyless(3, no_load, |_| Some(())), Some((0, ())));
        assert_eq!(b.pick_keyless(3, no_load, |_| None::<()>), None);
    }

    #[test]
    fn a_single_upstream_is_always_picked_when_admitted() {
        let b = Balancer::new(&Strategy::RoundRobin, ids(1), &[3]);
        assert_eq!(b.pick_keyless(1, no_load, Some), Some((0, 0)));
        assert_eq!(b.pick_keyless(1, no_load, |_| None::<()>), None);
    }
}
