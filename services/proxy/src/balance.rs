//! Picking an upstream: smooth weighted round robin over a precomputed schedule, or failover in
//! configured order. Both skip upstreams whose circuit refuses the request, and take no lock.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How a service spreads requests over its upstreams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Smooth weighted round robin (nginx's algorithm): with weights 5, 1, 1 the order is
    /// `a a b a c a a`, never `a a a a a b c`.
    #[default]
    RoundRobin,
    /// Every request goes to the first upstream, in configured order, whose circuit allows it.
    Failover,
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
}

// === impl Balancer ===

impl Balancer {
    /// A balancer over upstreams with these weights (all at least 1).
    pub(crate) fn new(strategy: Strategy, weights: &[u32]) -> Self {
        match strategy {
            Strategy::RoundRobin => Self::RoundRobin {
                schedule: smooth_schedule(weights).into_boxed_slice(),
                next: AtomicUsize::new(0),
            },
            Strategy::Failover => Self::Failover,
        }
    }

    /// The first upstream index for which `admit` returns `Some`, in this balancer's order, with
    /// what `admit` returned. `None` when every upstream refused.
    ///
    /// Round robin advances the shared counter once per candidate, so the slots of refusing
    /// upstreams are spread over the others in proportion to their weights.
    #[inline]
    pub(crate) fn pick<T>(
        &self,
        upstreams: usize,
        mut admit: impl FnMut(usize) -> Option<T>,
    ) -> Option<(usize, T)> {
        match self {
            Self::Failover => (0..upstreams).find_map(|i| admit(i).map(|t| (i, t))),
            // One upstream (the common case): no shared counter to bump.
            Self::RoundRobin { schedule, .. } if schedule.len() == 1 => {
                let i = schedule[0] as usize;
                admit(i).map(|t| (i, t))
            }
            Self::RoundRobin { schedule, next } => {
                // Upstreams that refused during this pick (exact for the first 64, which is
                // every realistic service; beyond that the walk is bounded by the schedule).
                let mut refused: u64 = 0;
                let mut refused_count = 0;
                for _ in 0..schedule.len() {
                    let slot = next.fetch_add(1, Ordering::Relaxed) % schedule.len();
                    let i = schedule[slot] as usize;
                    let bit = if i < 64 { 1u64 << i } else { 0 };
                    if refused & bit != 0 {
                        continue;
                    }
                    if let Some(t) = admit(i) {
                        return Some((i, t));
                    }
                    refused |= bit;
                    refused_count += 1;
                    if refused_count == upstreams {
                        break;
                    }
                }
                None
            }
        }
    }
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
        let b = Balancer::new(Strategy::RoundRobin, &[1, 1, 1]);
        let mut seen = [0; 3];
        for _ in 0..30 {
            let (i, ()) = b.pick(3, |i| (i != 0).then_some(())).unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen, [0, 15, 15], "the refused share is split evenly");
        assert!(b.pick(3, |_| None::<()>).is_none());
    }

    #[test]
    fn failover_takes_the_first_admitted() {
        let b = Balancer::new(Strategy::Failover, &[1, 1, 1]);
        assert_eq!(b.pick(3, |i| (i >= 1).then_some(i)), Some((1, 1)));
        assert_eq!(b.pick(3, |_| Some(())), Some((0, ())));
        assert_eq!(b.pick(3, |_| None::<()>), None);
    }

    #[test]
    fn a_single_upstream_is_always_picked_when_admitted() {
        let b = Balancer::new(Strategy::RoundRobin, &[3]);
        assert_eq!(b.pick(1, Some), Some((0, 0)));
        assert_eq!(b.pick(1, |_| None::<()>), None);
    }
}
