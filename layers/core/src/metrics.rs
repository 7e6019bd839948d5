//! Cheap metric recorders: sharded counters, gauges and histograms, and the label families
//! that hold them.
//!
//! Recording is one `Relaxed` atomic add on the calling thread's own cache line: every recorder
//! has [`SHARDS`] cache-line-aligned shards, and a thread picks its shard once (round-robin, at
//! its first record). No shared line is written by every worker, no lock is taken and nothing is
//! allocated per record. Reading (a scrape) sums the shards, so a read may miss records still in
//! flight on other threads; it never sees a value go backwards.
//!
//! Label sets are resolved when a configuration snapshot is built: [`Family::get`] returns the
//! recorder for one set of label values (the same `Arc` for the same values while anyone holds
//! it, so unchanged labels keep counting across a reload), and the hot path keeps that `Arc`.
//! A scrape walks each family ([`Family::for_each`]) and forgets recorders no one holds any more
//! (a removed route's series disappear; if the label set comes back later it restarts from zero,
//! which Prometheus reads as a counter reset).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Shards per recorder: a power of two at least the worker threads of a typical edge host.
/// More threads than shards share shards (still correct, only less spread).
pub const SHARDS: usize = 16;

/// Histogram bucket upper bounds in seconds (Prometheus' defaults, with 1 ms and 2.5 ms added for
/// a proxy's fast paths). Observations above the last bound count in `+Inf` only.
pub const BUCKETS_SECONDS: [f64; BUCKETS] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Number of finite histogram buckets.
pub const BUCKETS: usize = 13;

/// [`BUCKETS_SECONDS`] in microseconds, the unit observations are recorded in.
const BUCKETS_MICROS: [u64; BUCKETS] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// The calling thread's shard.
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

/// One shard's values on their own cache line.
#[derive(Debug)]
#[repr(align(64))]
struct Line<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for Line<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// `N` counters recorded together (e.g. one per status class), sharded.
#[derive(Debug)]
pub struct Counters<const N: usize> {
    shards: Box<[Line<N>; SHARDS]>,
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Self {
            shards: Box::new(std::array::from_fn(|_| Line::default())),
        }
    }
}

// === impl Counters ===

impl<const N: usize> Counters<N> {
    /// Adds `n` to counter `i` (an `i` out of range records nothing).
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.shards[shard()].0.get(i) {
            c.fetch_add(n, Relaxed);
        }
    }

    /// Counter `i`, summed over the shards (0 when out of range).
    pub fn get(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .filter_map(|s| s.0.get(i))
            .fold(0u64, |sum, c| sum.wrapping_add(c.load(Relaxed)))
    }
}

/// One connection's handle on a shared [`Counter`]: put in an `Arc` per connection, it is cloned
/// per request (a body that counts its bytes) without writing a reference count other
/// connections write too.
#[derive(Debug)]
pub struct CounterHandle(Arc<Counter>);

// === impl CounterHandle ===

impl CounterHandle {
    /// A handle on `counter`.
    pub fn new(counter: Arc<Counter>) -> Self {
        Self(counter)
    }

    /// Adds `n` to the counter.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.add(n);
    }
}

/// A monotonic counter, sharded.
#[derive(Debug, Default)]
pub struct Counter(Counters<1>);

// === impl Counter ===

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.add(0, 1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.add(0, n);
    }

    /// The count, summed over the shards.
    pub fn get(&self) -> u64 {
        self.0.get(0)
    }
}

/// A value that goes up and down (e.g. connections open), sharded: increments and decrements
/// may land on different shards, the sum is exact.
#[derive(Debug, Default)]
pub struct Gauge(Counters<1>);

// === impl Gauge ===

impl Gauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.add(0, 1);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.add(0, u64::MAX); // wrapping: -1
    }

    /// The value, summed over the shards.
    pub fn get(&self) -> i64 {
        self.0.get(0) as i64
    }

    /// Adds one now and subtracts it when the guard drops.
    pub fn track(self: &Arc<Self>) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// Holds one unit of a [`Gauge`]; dropping it gives the unit back.
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A value set when a snapshot is built (e.g. a capacity); `u64::MAX` means unbounded and is
/// not exposed.
#[derive(Debug)]
pub struct Value(AtomicU64);

impl Default for Value {
    fn default() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }
}

// === impl Value ===

impl Value {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.store(value, Relaxed);
    }

    /// The value; `None` when unbounded.
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Relaxed)).filter(|&v| v != u64::MAX)
    }
}

/// Slots per histogram shard: the finite buckets, `+Inf`, and the sum in microseconds.
const HISTOGRAM_SLOTS: usize = BUCKETS + 2;

/// A latency histogram with the fixed [`BUCKETS_SECONDS`], sharded. Each shard keeps its bucket
/// counts (not cumulative) and the sum in whole microseconds; the count is the buckets' sum.
#[derive(Debug, Default)]
pub struct Histogram(Counters<HISTOGRAM_SLOTS>);

/// A histogram read at scrape: cumulative counts per bound (`+Inf` last), count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket)`, not cumulative; the last bound
    /// is `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum: f64,
}

// === impl Histogram ===

impl Histogram {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        let shard = &self.0.shards[shard()].0;
        shard[bucket].fetch_add(1, Relaxed);
        shard[HISTOGRAM_SLOTS - 1].fetch_add(micros, Relaxed);
    }

    /// The histogram summed over the shards.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(BUCKETS + 1);
        let mut count = 0u64;
        for (i, bound) in BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
        {
            let n = self.0.get(i);
            count = count.wrapping_add(n);
            buckets.push((bound, n));
        }
        let sum = self.0.get(HISTOGRAM_SLOTS - 1) as f64 / 1e6;
        HistogramSnapshot {
            buckets,
            count,
            sum,
        }
    }
}

/// One label set's recorder in a [`Family`].
#[derive(Debug)]
struct Member<M> {
    values: Box<[Arc<str>]>,
    metric: Arc<M>,
}

/// A named metric with fixed label names and one recorder per set of label values.
///
/// [`get`](Self::get) and [`for_each`](Self::for_each) take a lock: call them when a snapshot
/// is built and at scrape, never per request.
#[derive(Debug)]
pub struct Family<M> {
    /// The name without the `snakeway_` prefix, in base units (a counter's without `_total`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The label names, in the order of the values given to [`get`](Self::get).
    pub labels: &'static [&'static str],
    /// By [`key`] of the label values: build-time lookups stay logarithmic however many
    /// routes and listeners there are, and the exposition comes out in a stable order.
    members: Mutex<Members<M>>,
}

/// The members of a [`Family`] and the size that triggers the next sweep of unheld ones.
#[derive(Debug)]
struct Members<M> {
    by_key: BTreeMap<String, Member<M>>,
    /// [`Family::get`] forgets unheld members once there are this many (twice as many as
    /// after the last sweep), so a server that is never scraped does not keep every label set
    /// it ever had.
    sweep_at: usize,
}

impl<M> Members<M> {
    /// Forgets the members no one else holds.
    fn sweep(&mut self) {
        self.by_key.retain(|_, m| Arc::strong_count(&m.metric) > 1);
        self.sweep_at = (2 * self.by_key.len()).max(MIN_SWEEP);
    }
}

/// Members a family may have before [`Family::get`] first sweeps unheld ones.
const MIN_SWEEP: usize = 64;

// === impl Family ===

impl<M: Default> Family<M> {
    /// A family without members (for a `static`).
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            members: Mutex::new(Members {
                by_key: BTreeMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// The recorder for `values` (one per label name, in order), created on first use.
    pub fn get(&self, values: &[&str]) -> Arc<M> {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if members.by_key.len() >= members.sweep_at {
            members.sweep();
        }
        let member = members.by_key.entry(key(values)).or_insert_with(|| Member {
            values: values.iter().map(|&v| Arc::from(v)).collect(),
            metric: Arc::new(M::default()),
        });
        member.metric.clone()
    }

    /// Calls `f` with each held recorder and its label values; forgets recorders no one else
    /// holds any more.
    pub fn for_each(&self, mut f: impl FnMut(&[Arc<str>], &M)) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.sweep();
        for m in members.by_key.values() {
            f(&m.values, &m.metric);
        }
    }
}

/// The map key of a set of label values: each value prefixed by its length, so no two sets
/// share a key whatever the values contain.
fn key(values: &[&str]) -> String {
    let mut key = String::with_capacity(values.iter().map(|v| v.len() + 4).sum());
    for v in values {
        key.push_str(&v.len().to_string());
        key.push(':');
        key.push_str(v);
    }
    key
}

/// The status class label of a status code: `"1xx"` … `"5xx"`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`STATUS_CLASSES`] of `status` (codes outside 100–599 cannot occur in `http`).
#[inline]
pub fn status_class(status: http::StatusCode) -> usize {
    usize::from(status.as_u16() / 100).saturating_sub(1).min(4)
}

// === The families Snakeway records ===
//
// Names are without the `snakeway_` prefix the exposition adds; a counter's `_total` suffix is
// added by the exposition too. Labels expanded from an array index (status class, outcome,
// kind) are the last label and are not in `labels`.

/// Requests answered, by listener, route and service, per [`STATUS_CLASSES`] (label
/// `status_class`). Route and service are empty when no route matched or the request was
/// refused before routing; service is empty for `respond` and `static` routes.
pub static HTTP_REQUESTS: Family<Counters<5>> = Family::new(
    "http_requests",
    "HTTP requests answered, by listener, route, upstream service and status class.",
    &["listener", "route", "service"],
);

/// Time from the request head to the response head, by route (empty: no route matched).
pub static HTTP_REQUEST_DURATION: Family<Histogram> = Family::new(
    "http_request_duration_seconds",
    "Time from receiving a request head to producing its response head, by route.",
    &["route"],
);

/// Request body bytes received from clients, by listener.
pub static HTTP_RECEIVED_BYTES: Family<Counter> = Family::new(
    "http_request_body_received_bytes",
    "Request body bytes received from clients, by listener.",
    &["listener"],
);

/// Response body bytes sent to clients, by listener.
pub static HTTP_SENT_BYTES: Family<Counter> = Family::new(
    "http_response_body_sent_bytes",
    "Response body bytes sent to clients, by listener.",
    &["listener"],
);

/// Connections accepted, by listener.
pub static CONNECTIONS_ACCEPTED: Family<Counter> = Family::new(
    "connections_accepted",
    "Client connections accepted, by listener.",
    &["listener"],
);

/// Connections open now, by listener.
pub static CONNECTIONS_OPEN: Family<Gauge> = Family::new(
    "connections_open",
    "Client connections open, by listener.",
    &["listener"],
);

/// The `reason` label of [`TLS_HANDSHAKE_FAILURES`].
pub const TLS_FAILURE_REASONS: [&str; 3] = ["error", "timeout", "closed_under_pressure"];

/// TLS handshakes that failed, by listener, per [`TLS_FAILURE_REASONS`] (label `reason`).
pub static TLS_HANDSHAKE_FAILURES: Family<Counters<3>> = Family::new(
    "tls_handshake_failures",
    "Client TLS handshakes that failed, by listener and reason.",
    &["listener"],
);

/// The `outcome` label of [`UPSTREAM_REQUESTS`]; see `UpstreamOutcome` in the proxy.
pub const UPSTREAM_OUTCOMES: [&str; 7] = [
    "success",
    "http_5xx",
    "connect_error",
    "connect_timeout",
    "response_timeout",
    "upstream_error",
    "client_error",
];

/// Requests sent to upstreams (each try of a retried request counts), by service and upstream,
/// per [`UPSTREAM_OUTCOMES`] (label `outcome`).
pub static UPSTREAM_REQUESTS: Family<Counters<7>> = Family::new(
    "upstream_requests",
    "Requests sent to upstreams (every try), by service, upstream and outcome.",
    &["service", "upstream"],
);

/// Time from sending a request to an upstream to its response head, by service.
pub static UPSTREAM_RESPONSE_DURATION: Family<Histogram> = Family::new(
    "upstream_response_duration_seconds",
    "Time from sending a request upstream to receiving its response head, by service.",
    &["service"],
);

/// The `kind` label of [`UPSTREAM_ERRORS`].
pub const UPSTREAM_ERROR_KINDS: [&str; 7] = [
    "connect_refused",
    "connect_unreachable",
    "connect_timeout",
    "tls",
    "response_timeout",
    "read_timeout",
    "reset",
];

/// Upstream connect errors and timeouts, by service, per [`UPSTREAM_ERROR_KINDS`] (label
/// `kind`).
pub static UPSTREAM_ERRORS: Family<Counters<7>> = Family::new(
    "upstream_errors",
    "Upstream connect errors, resets and timeouts, by service and kind.",
    &["service"],
);

/// The `outcome` label of [`DEVICE_HOOKS`]: the hook let the request go on, answered it,
/// failed, or panicked.
pub const DEVICE_OUTCOMES: [&str; 4] = ["continue", "respond", "error", "panic"];

/// Device hook runs, by device (its [`Device::name`](crate::Device::name)) and phase, per
/// [`DEVICE_OUTCOMES`] (label `outcome`). `on_response` and `on_error` only `continue` or
/// fail.
pub static DEVICE_HOOKS: Family<Counters<4>> = Family::new(
    "device_hooks",
    "Device hook runs, by device, phase and outcome.",
    &["device", "phase"],
);

/// Live WASM instances, by device (one per request in flight that reached the device).
pub static WASM_INSTANCES_IN_USE: Family<Gauge> = Family::new(
    "wasm_instances_in_use",
    "Live WASM instances, by device.",
    &["device"],
);

/// The WASM instances a device may have at once: the smaller of its `max_instances` and the
/// engine's pool (absent when neither bounds it).
pub static WASM_INSTANCES_CAPACITY: Family<Value> = Family::new(
    "wasm_instances_capacity",
    "WASM instances a device may have at once (its max_instances or the engine's pool).",
    &["device"],
);

/// The `kind` label of [`WASM_FAILURES`]: `other` covers failures to instantiate or `init`.
pub const WASM_FAILURE_KINDS: [&str; 6] =
    ["trap", "timeout", "memory", "output", "pool_full", "other"];

/// WASM device failures, by device, per [`WASM_FAILURE_KINDS`] (label `kind`).
pub static WASM_FAILURES: Family<Counters<6>> = Family::new(
    "wasm_failures",
    "WASM device failures, by device and kind.",
    &["device"],
);

/// Access log lines dropped because the log queue was full, over every log writer.
pub static LOG_LINES_DROPPED: Family<Counter> = Family::new(
    "log_lines_dropped",
    "Access log lines dropped because the log queue was full (the output is too slow).",
    &[],
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_the_shards_of_many_threads() {
        let counter = Arc::new(Counter::default());
        let threads: Vec<_> = (0..2 * SHARDS)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.inc();
                    }
                    counter.add(5);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        assert_eq!(counter.get(), 2 * SHARDS as u64 * 1005);
    }

    #[test]
    fn a_gauge_goes_down_on_another_thread() {
        let gauge = Arc::new(Gauge::default());
        let guards: Vec<_> = (0..3).map(|_| gauge.track()).collect();
        assert_eq!(gauge.get(), 3);
        std::thread::spawn(move || drop(guards))
            .join()
            .expect("dropping thread");
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn histogram_buckets_include_their_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(1_000)); // le 0.001
        h.observe(Duration::from_micros(1_001)); // le 0.0025
        h.observe(Duration::from_millis(300)); // le 0.5
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert!((s.sum - 60.302_001).abs() < 1e-9, "{}", s.sum);
        assert_eq!(s.buckets.len(), BUCKETS + 1);
        let nonzero: Vec<_> = s.buckets.iter().filter(|b| b.1 > 0).copied().collect();
        assert_eq!(
            nonzero,
            vec![(0.001, 1), (0.0025, 1), (0.5, 1), (f64::INFINITY, 1)]
        );
    }

    #[test]
    fn a_family_shares_a_label_set_and_forgets_unheld_ones() {
        static F: Family<Counter> = Family::new("test_things", "Things.", &["a", "b"]);
        let one = F.get(&["x", "y"]);
        let again = F.get(&["x", "y"]);
        assert!(Arc::ptr_eq(&one, &again));
        let other = F.get(&["x", "z"]);
        one.inc();
        other.add(2);
        let mut seen = Vec::new();
        F.for_each(|v, c| seen.push((v.join(","), c.get())));
        assert_eq!(seen, vec![("x,y".to_owned(), 1), ("x,z".to_owned(), 2)]);
        drop((one, again));
        let mut seen = Vec::new();
        F.for_each(|v, c| seen.push((v.join(","), c.get())));
        assert_eq!(seen, vec![("x,z".to_owned(), 2)]);
    }

    #[test]
    fn a_family_never_scraped_stays_bounded() {
        static F: Family<Counter> = Family::new("test_churn", "Churn.", &["n"]);
        let held = F.get(&["held"]);
        for i in 0..10 * MIN_SWEEP {
            drop(F.get(&[&i.to_string()]));
        }
        let len = F
            .members
            .lock()
            .map(|m| m.by_key.len())
            .unwrap_or(usize::MAX);
        assert!(len <= MIN_SWEEP, "{len} members kept");
        assert!(Arc::ptr_eq(&held, &F.get(&["held"])), "a held one is kept");
    }

    #[test]
    fn status_classes() {
        let class = |c: u16| STATUS_CLASSES[status_class(http::StatusCode::from_u16(c).unwrap())];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(200), "2xx");
        assert_eq!(class(304), "3xx");
        assert_eq!(class(499), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(599), "5xx");
    }
}
