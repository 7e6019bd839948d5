//! The generic cell rate algorithm (GCRA), as `governor` and redis-cell compute it: one
//! timestamp per key, the *theoretical arrival time* (TAT), and no counters or windows.
//!
//! A key's bucket holds `limit + burst` requests and refills evenly, one request every
//! `period / limit` (the emission interval `T`). A request at `now` is allowed when
//! `max(tat, now) + T - now <= (limit + burst) * T`; it then moves the TAT on by `T`. A quiet key
//! (TAT in the past) starts from `now`, so it may send `limit + burst` at once; sustained, it gets
//! `limit` per period, with no burst at window edges (there are no windows).

use std::time::Duration;

/// A rate: `limit` requests per `period`, sustained, and `burst` more at once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Duration,
    burst: u32,
    /// The emission interval `T` in nanoseconds (at least 1), computed once.
    interval_ns: u64,
    /// The bucket in nanoseconds, `(limit + burst) * T` (saturating), computed once.
    window_ns: u64,
}

/// What one request got from its key's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Requests the key may still send at once after this one.
    pub remaining: u64,
    /// For a refused request, how long until one would be allowed (zero when allowed).
    pub retry_after: Duration,
    /// How long until the bucket is full again (the key is back to a quiet key's allowance).
    pub reset: Duration,
}

// === impl Quota ===

impl Quota {
    /// `limit` per `period`, with `burst` on top; `None` when `limit` or `period` is zero.
    pub fn new(limit: u32, period: Duration, burst: u32) -> Option<Self> {
        if limit == 0 || period.is_zero() {
            return None;
        }
        let interval_ns = interval_of(period, limit, 1);
        let mut quota = Self {
            limit,
            period,
            burst,
            interval_ns,
            window_ns: 0,
        };
        quota.window_ns = interval_ns.saturating_mul(quota.capacity());
        Some(quota)
    }

    /// Requests per period, sustained.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Requests allowed at once on top of `limit`.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The bucket's size: `limit + burst`.
    pub fn capacity(&self) -> u64 {
        u64::from(self.limit) + u64::from(self.burst)
    }

    /// The emission interval `T = period / limit` (at least a nanosecond): how long an allowed
    /// request keeps a full bucket from being full.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// The emission interval `T = period / limit`, in `unit`s of a nanosecond (1 for
    /// nanoseconds, 1000 for microseconds), at least 1.
    pub(crate) fn interval(&self, unit: u64) -> u64 {
        interval_of(self.period, self.limit, unit)
    }

    /// One GCRA step for a key whose TAT is `tat` (0 for a key never seen), at `now`, both in
    /// nanoseconds from the same origin: the decision, and the key's new TAT when the request is
    /// allowed (`None`: refused, the TAT stays).
    pub(crate) fn step(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        let (interval, window) = (self.interval_ns, self.window_ns);
        let start = tat.max(now);
        let next = start.saturating_add(interval);
        let allow_at = next.saturating_sub(window);
        if now < allow_at {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_nanos(allow_at - now),
                reset: Duration::from_nanos(start - now),
            };
            return (decision, None);
        }
        let decision = Decision {
            allowed: true,
            // `now >= next - window`, so `next - now <= window`.
            remaining: (window - (next - now)) / interval,
            retry_after: Duration::ZERO,
            reset: Duration::from_nanos(next - now),
        };
        (decision, Some(next))
    }
}

/// `period / limit` in `unit`s of a nanosecond, at least 1.
fn interval_of(period: Duration, limit: u32, unit: u64) -> u64 {
    let period = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX) / unit;
    (period / u64::from(limit)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs `n` requests at `now` from `tat`, returning the allowed count and the last TAT.
    fn run(quota: &Quota, mut tat: u64, now: u64, n: usize) -> (usize, u64) {
        let mut allowed = 0;
        for _ in 0..n {
            let (decision, next) = quota.step(tat, now);
            if let Some(next) = next {
                allowed += 1;
                tat = next;
            }
            assert_eq!(decision.allowed, next.is_some());
        }
        (allowed, tat)
    }

    #[test]
    fn a_quiet_key_gets_limit_at_once_then_one_per_interval() {
        let quota = Quota::new(5, Duration::from_millis(1000), 0).expect("quota");
        let now = 10_000 * MS;
        let (allowed, tat) = run(&quota, 0, now, 20);
        assert_eq!(allowed, 5, "5 quick requests of 20 pass");

        // The 6th is refused and told when to come back: after 1/5 of the period.
        let (refused, _) = quota.step(tat, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset, Duration::from_millis(1000));

        // Just before 1/5 of the period: still refused; at it: exactly one more.
        assert!(!quota.step(tat, now + 200 * MS - 1).0.allowed);
        let (allowed, tat) = run(&quota, tat, now + 200 * MS, 3);
        assert_eq!(allowed, 1, "after 1/5 of the period one more");

        // After a whole quiet period the full allowance is back.
        let (allowed, _) = run(&quota, tat, now + 1200 * MS, 20);
        assert_eq!(allowed, 5);
    }

    #[test]
    fn burst_adds_to_the_quiet_allowance_not_to_the_rate() {
        let quota = Quota::new(10, Duration::from_secs(1), 5).expect("quota");
        let now = 1_000 * MS;
        let (allowed, mut tat) = run(&quota, 0, now, 100);
        assert_eq!(allowed, 15, "limit + burst at once");
        // Sustained over 10 further seconds, one request every 10 ms: about `limit` per second.
        let mut sustained = 0;
        for i in 1..=1000 {
            let (n, t) = run(&quota, tat, now + i * 10 * MS, 1);
            sustained += n;
            tat = t;
        }
        assert_eq!(sustained, 100, "10 per second over 10 seconds");
    }

    #[test]
    fn remaining_and_reset_count_down_and_up() {
        let quota = Quota::new(3, Duration::from_millis(300), 1).expect("quota");
        let now = 5 * MS;
        let mut tat = 0;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (d, next) = quota.step(tat, now);
            tat = next.expect("allowed");
            seen.push((d.remaining, d.reset.as_millis()));
        }
        assert_eq!(seen, [(3, 100), (2, 200), (1, 300), (0, 400)]);
        let (d, next) = quota.step(tat, now);
        assert_eq!(next, None);
        assert_eq!(d.retry_after, Duration::from_millis(100));
    }

    #[test]
    fn no_edge_bursts_smooth_refill() {
        // A fixed window would let 2 × limit through around a window edge; GCRA lets through the
        // bucket plus what refilled in between.
        let quota = Quota::new(10, Duration::from_secs(1), 0).expect("quota");
        let edge = 1_000 * MS;
        let (before, tat) = run(&quota, 0, edge - MS, 10);
        let (after, _) = run(&quota, tat, edge + MS, 10);
        assert_eq!(
            before + after,
            10,
            "only 2 ms of refill across the edge: none"
        );
    }

    #[test]
    fn degenerate_quotas_are_refused_and_tiny_intervals_stay_positive() {
        assert_eq!(Quota::new(0, Duration::from_secs(1), 0), None);
        assert_eq!(Quota::new(1, Duration::ZERO, 0), None);
        let fast = Quota::new(u32::MAX, Duration::from_millis(1), u32::MAX).expect("quota");
        assert_eq!(fast.interval(1), 1);
        assert_eq!(fast.interval(1000), 1);
        let (d, next) = fast.step(u64::MAX - 1, u64::MAX - 1);
        assert!(
            d.allowed && next.is_some(),
            "saturates instead of overflowing"
        );
    }
}
