//! Telemetry: what the server records and its Prometheus exposition.

pub(crate) mod recorded;
