//! A per-upstream circuit breaker that takes no lock: one `AtomicU64` holds the state and its
//! counters, and every transition is a compare-and-swap.
//!
//! * **closed**: requests flow; consecutive failures are counted, a success resets the count.
//!   At `failure_threshold` the circuit opens.
//! * **open**: no request is admitted until `open` has elapsed since the circuit opened.
//! * **half-open**: up to `half_open_max_requests` trial requests may be in flight at once.
//!   `success_threshold` consecutive successful trials close the circuit; any failure opens it
//!   again.
//!
//! A disabled breaker is always closed and costs nothing.
//!
//! Every transition (opened, half-open, closed) is logged at info with the service and the
//! upstream's URL, by the one caller whose compare-and-swap made it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How each upstream's circuit breaker behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitBreakerOptions {
    /// When `false`, the circuit is always closed.
    pub enabled: bool,
    /// Consecutive failures that open a closed circuit (0 is taken as 1).
    pub failure_threshold: u32,
    /// How long an open circuit refuses requests before it admits trials.
    pub open: Duration,
    /// How many trial requests a half-open circuit lets through at once (0 is taken as 1).
    pub half_open_max_requests: u32,
    /// Consecutive successful trials that close a half-open circuit (0 is taken as 1).
    pub success_threshold: u32,
    /// Whether a 5xx response counts as a failure (connect errors and timeouts always do).
    pub count_5xx: bool,
}

impl Default for CircuitBreakerOptions {
    /// The defaults of the design contract: enabled, 5 failures, 10 s open, 1 trial, 2 successes,
    /// 5xx counted.
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            open: Duration::from_secs(10),
            half_open_max_requests: 1,
            success_threshold: 2,
            count_5xx: true,
        }
    }
}

/// The state of a circuit, as reported by [`crate::UpstreamStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the open period ends.
    Open,
    /// Trial requests are admitted (also reported for an open circuit whose period has ended:
    /// the next request is a trial).
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Layout of the state word:
//
//   63..62  state: CLOSED, OPEN or HALF_OPEN
//   61..46  generation, bumped on every trip to open, so that trials admitted in an earlier
//           half-open round are not counted in a later one
//   45..0   payload
//             closed:    consecutive failures
//             open:      when the circuit opened, in ms since `Breaker::epoch`
//             half-open: trials in flight (bits 0..23) and consecutive successes (bits 23..46)
const STATE_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 46;
const GEN_MASK: u64 = 0xffff;
const PAYLOAD_MASK: u64 = (1 << GEN_SHIFT) - 1;
const HALF_BITS: u32 = 23;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u64);

impl Word {
    #[inline]
    const fn new(state: u64, generation: u64, payload: u64) -> Self {
        Self(
            (state << STATE_SHIFT)
                | ((generation & GEN_MASK) << GEN_SHIFT)
                | (payload & PAYLOAD_MASK),
        )
    }

    #[inline]
    const fn state(self) -> u64 {
        self.0 >> STATE_SHIFT
    }

    #[inline]
    const fn generation(self) -> u64 {
        (self.0 >> GEN_SHIFT) & GEN_MASK
    }

    #[inline]
    const fn payload(self) -> u64 {
        self.0 & PAYLOAD_MASK
    }

    #[inline]
    const fn closed(generation: u64, failures: u64) -> Self {
        Self::new(CLOSED, generation, failures)
    }

    #[inline]
    const fn half_open(generation: u64, in_flight: u64, successes: u64) -> Self {
        Self::new(
            HALF_OPEN,
            generation,
            (in_flight & HALF_MASK) | ((successes & HALF_MASK) << HALF_BITS),
        )
    }

    #[inline]
    const fn in_flight(self) -> u64 {
        self.payload() & HALF_MASK
    }

    #[inline]
    const fn successes(self) -> u64 {
        self.payload() >> HALF_BITS
    }
}

/// How a request was let through, which decides what its outcome does to the circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The circuit was closed (or the breaker is disabled).
    Closed,
    /// A half-open trial, in round `generation`.
    Trial { generation: u64 },
}

/// The circuit of one upstream. It outlives reloads (it sits in the upstream's shared state), so
/// its options are passed to every call rather than stored.
#[derive(Debug)]
pub(crate) struct Breaker {
    word: AtomicU64,
    epoch: Instant,
    /// The service and the upstream URL, for the transition log lines.
    service: Box<str>,
    upstream: Box<str>,
}

// === impl Breaker ===

impl Breaker {
    /// The closed circuit of the upstream at `upstream` (its URL) of service `service`.
    pub(crate) fn new(service: &str, upstream: &str) -> Self {
        Self {
            word: AtomicU64::new(Word::closed(0, 0).0),
            epoch: Instant::now(),
            service: service.into(),
            upstream: upstream.into(),
        }
    }

    /// Logs a transition this caller made (cold: at most once per transition).
    #[cold]
    fn log_transition(&self, to: CircuitState, opts: &CircuitBreakerOptions) {
        let (service, upstream) = (&*self.service, &*self.upstream);
        match to {
            CircuitState::Open => tracing::info!(
                service,
                upstream,
                open_ms = u64::try_from(opts.open.as_millis()).unwrap_or(u64::MAX),
                "circuit opened: the upstream gets no requests until the open period ends"
            ),
            CircuitState::HalfOpen => tracing::info!(
                service,
                upstream,
                trials = opts.half_open_max_requests.max(1),
                "circuit half-open: trial requests admitted"
            ),
            CircuitState::Closed => tracing::info!(
                service,
                upstream,
                "circuit closed: the upstream gets requests again"
            ),
        }
    }

    #[inline]
    fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    #[inline]
    fn cas(&self, current: Word, new: Word) -> bool {
        self.word
            .compare_exchange_weak(current.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) & PAYLOAD_MASK
    }

    fn open_expired(&self, word: Word, opts: &CircuitBreakerOptions) -> bool {
        let open_ms = u64::try_from(opts.open.as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_sub(word.payload()) >= open_ms
    }

    /// Asks to send one request. `None`: the circuit refuses it.
    #[inline]
    pub(crate) fn try_acquire(&self, opts: &CircuitBreakerOptions) -> Option<Admission> {
        if !opts.enabled {
            return Some(Admission::Closed);
        }
        loop {
            let word = self.load();
            let next = match word.state() {
                CLOSED => return Some(Admission::Closed),
                OPEN if !self.open_expired(word, opts) => return None,
                OPEN => Word::half_open(word.generation(), 1, 0),
                _ if word.in_flight() >= u64::from(opts.half_open_max_requests.max(1)) => {
                    return None;
                }
                _ => Word::half_open(word.generation(), word.in_flight() + 1, word.successes()),
            };
            if self.cas(word, next) {
                if word.state() == OPEN {
                    self.log_transition(CircuitState::HalfOpen, opts);
                }
                return Some(Admission::Trial {
                    generation: word.generation(),
                });
            }
        }
    }

    /// Records a successful request.
    #[inline]
    pub(crate) fn on_success(&self, admission: Admission, opts: &CircuitBreakerOptions) {
        if !opts.enabled {
            return;
        }
        loop {
            let word = self.load();
            let next = match (word.state(), admission) {
                // The hot path: closed, nothing to reset.
                (CLOSED, _) if word.payload() == 0 => return,
                (CLOSED, _) => Word::closed(word.generation(), 0),
                (HALF_OPEN, Admission::Trial { generation }) if generation == word.generation() => {
                    let successes = word.successes() + 1;
                    if successes >= u64::from(opts.success_threshold.max(1)) {
                        Word::closed(word.generation(), 0)
                    } else {
                        Word::half_open(
                            word.generation(),
                            word.in_flight().saturating_sub(1),
                            successes,
                        )
                    }
                }
                // Open, or a result from before this half-open round: it says nothing new.
                _ => return,
            };
            if self.cas(word, next) {
                if word.state() == HALF_OPEN && next.state() == CLOSED {
                    self.log_transition(CircuitState::Closed, opts);
                }
                return;
            }
        }
    }

    /// Records a failed request (connect error, timeout, or a counted 5xx).
    pub(crate) fn on_failure(&self, admission: Admission, opts: &CircuitBreakerOptions) {
        if !opts.enabled {
            return;
        }
        let _ = admission; // any failure seen while half-open re-opens the circuit
        loop {
            let word = self.load();
            let next = match word.state() {
                CLOSED => {
                    let failures = word.payload() + 1;
                    if failures >= u64::from(opts.failure_threshold.max(1)) {
                        self.tripped(word)
                    } else {
                        Word::closed(word.generation(), failures)
                    }
                }
                HALF_OPEN => self.tripped(word),
                _ => return,
            };
            if self.cas(word, next) {
                if next.state() == OPEN {
                    self.log_transition(CircuitState::Open, opts);
                }
                return;
            }
        }
    }

    /// Gives back a trial slot whose request never produced an outcome (it was cancelled, or
    /// failed before it was sent).
    pub(crate) fn release(&self, admission: Admission) {
        let Admission::Trial { generation } = admission else {
            return;
        };
        loop {
            let word = self.load();
            if word.state() != HALF_OPEN || word.generation() != generation {
                return;
            }
            let next = Word::half_open(
                word.generation(),
                word.in_flight().saturating_sub(1),
                word.successes(),
            );
            if self.cas(word, next) {
                return;
            }
        }
    }

    fn tripped(&self, word: Word) -> Word {
        Word::new(OPEN, word.generation().wrapping_add(1), self.now_ms())
    }

    /// The current state, for status reports.
    pub(crate) fn state(&self, opts: &CircuitBreakerOptions) -> CircuitState {
        if !opts.enabled {
            return CircuitState::Closed;
        }
        let word = self.load();
        match word.state() {
            CLOSED => CircuitState::Closed,
            OPEN if !self.open_expired(word, opts) => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }
}

/// One admitted request. Settle it with [`Permit::success`] or [`Permit::failure`]; dropping
/// it unsettled gives a half-open trial slot back without counting anything.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    opts: &'a CircuitBreakerOptions,
    admission: Admission,
    settled: bool,
}

// === impl Permit ===

impl<'a> Permit<'a> {
    /// Asks `breaker` to admit one request.
    #[inline]
    pub(crate) fn acquire(breaker: &'a Breaker, opts: &'a CircuitBreakerOptions) -> Option<Self> {
        let admission = breaker.try_acquire(opts)?;
        Some(Self {
            breaker,
            opts,
            admission,
            settled: false,
        })
    }

    /// The request succeeded.
    #[inline]
    pub(crate) fn success(mut self) {
        self.settled = true;
        self.breaker.on_success(self.admission, self.opts);
    }

    /// The request failed.
    pub(crate) fn failure(mut self) {
        self.settled = true;
        self.breaker.on_failure(self.admission, self.opts);
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self.admission);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(open_ms: u64) -> CircuitBreakerOptions {
        CircuitBreakerOptions {
            enabled: true,
            failure_threshold: 3,
            open: Duration::from_millis(open_ms),
            half_open_max_requests: 2,
            success_threshold: 2,
            count_5xx: true,
        }
    }

    fn fail(b: &Breaker, o: &CircuitBreakerOptions) {
        Permit::acquire(b, o).expect("admitted").failure();
    }

    fn succeed(b: &Breaker, o: &CircuitBreakerOptions) {
        Permit::acquire(b, o).expect("admitted").success();
    }

    #[test]
    fn word_round_trips() {
        let w = Word::half_open(0xbeef, 5, 7);
        assert_eq!(
            (w.state(), w.generation(), w.in_flight(), w.successes()),
            (2, 0xbeef, 5, 7)
        );
        let w = Word::new(OPEN, 1, PAYLOAD_MASK);
        assert_eq!(
            (w.state(), w.generation(), w.payload()),
            (OPEN, 1, PAYLOAD_MASK)
        );
    }

    #[test]
    fn consecutive_failures_open_and_successes_reset() {
        let o = opts(60_000);
        let b = Breaker::new("svc", "http://127.0.0.1:1");
        fail(&b, &o);
        fail(&b, &o);
        succeed(&b, &o); // resets the count
        fail(&b, &o);
        fail(&b, &o);
        assert_eq!(b.state(&o), CircuitState::Closed);
        fail(&b, &o);
        assert_eq!(b.state(&o), CircuitState::Open);
        assert!(Permit::acquire(&b, &o).is_none());
    }

    #[test]
    fn half_open_admits_limited_trials_then_closes() {
        let o = opts(30);
        let b = Breaker::new("svc", "http://127.0.0.1:1");
        for _ in 0..3 {
            fail(&b, &o);
        }
        assert!(Permit::acquire(&b, &o).is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(&o), CircuitState::HalfOpen);

        let t1 = Permit::acquire(&b, &o).expect("first trial");
        let t2 = Permit::acquire(&b, &o).expect("second trial");
        assert!(Permit::acquire(&b, &o).is_none(), "only two trials at once");
        t1.success();
        assert_eq!(b.state(&o), CircuitState::HalfOpen);
        let t3 = Permit::acquire(&b, &o).expect("a slot was freed");
        drop(t3); // cancelled: the slot comes back, nothing is counted
        t2.success();
        assert_eq!(b.state(&o), CircuitState::Closed);
    }

    #[test]
    fn a_failed_trial_reopens() {
        let o = opts(30);
        let b = Breaker::new("svc", "http://127.0.0.1:1");
        for _ in 0..3 {
            fail(&b, &o);
        }
        std::thread::sleep(Duration::from_millis(40));
        let stale = Permit::acquire(&b, &o).expect("trial");
        fail(&b, &o);
        assert_eq!(b.state(&o), CircuitState::Open);
        // A late success from the earlier round does not count in the next one.
        assert!(Permit::acquire(&b, &o).is_none());
        std::thread::sleep(Duration::from_millis(40));
        let t = Permit::acquire(&b, &o).expect("next round");
        stale.success();
        t.success();
        assert_eq!(b.state(&o), CircuitState::HalfOpen, "one success of two");
        succeed(&b, &o);
        assert_eq!(b.state(&o), CircuitState::Closed);
    }

    #[test]
    fn disabled_is_always_closed() {
        let o = CircuitBreakerOptions {
            enabled: false,
            failure_threshold: 1,
            ..opts(60_000)
        };
        let b = Breaker::new("svc", "http://127.0.0.1:1");
        for _ in 0..10 {
            fail(&b, &o);
        }
        assert_eq!(b.state(&o), CircuitState::Closed);
        assert!(Permit::acquire(&b, &o).is_some());
    }
}
