//! The families the throttling device records (exposed by the server's `/metrics`).

use snakeway_core::metrics::{Counters, Family, Value};

/// The `outcome` label of [`RATE_LIMIT_REQUESTS`].
pub const RATE_LIMIT_OUTCOMES: [&str; 4] = ["allowed", "limited", "no_key", "store_error"];

/// Requests a throttling device saw, by device, per [`RATE_LIMIT_OUTCOMES`]: `no_key` passed
/// unlimited (no key, or a path under none of the device's routes is not counted at all);
/// `store_error` is counted whatever `on_store_error` then decided.
pub static RATE_LIMIT_REQUESTS: Family<Counters<4>> = Family::new(
    "rate_limit_requests",
    "Requests a rate_limit device saw, by device and outcome.",
    &["device"],
);

/// Keys a local-store throttling device holds (at most its `max_keys`).
pub static RATE_LIMIT_KEYS: Family<Value> = Family::new(
    "rate_limit_keys",
    "Keys a local-store rate_limit device holds (bounded by max_keys).",
    &["device"],
);

/// The index of an outcome in [`RATE_LIMIT_OUTCOMES`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Allowed = 0,
    Limited = 1,
    NoKey = 2,
    StoreError = 3,
}
