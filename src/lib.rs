//! Snakeway: a programmable L7 edge proxy.
//!
//! This crate is the `snakeway` binary's library: the command line, process bootstrap
//! (runtime, listeners, TLS, signals, reload) and the assembly of a configuration snapshot into
//! the serving stack. The building blocks are separate crates, re-exported here:
//!
//! * [`core`]: the body and error types, request ids, path normalization;
//! * [`proxy`]: the upstream service (pooled client, load balancing, forwarding headers);
//! * [`synthetic`]: configured responses;
//! * [`config`]: the `snakeway.toml` schema and its validation.

pub use snakeway_config as config;
pub use snakeway_core as core;
pub use snakeway_proxy as proxy;
pub use snakeway_synthetic as synthetic;

mod admin;
pub mod cli;
mod conn;
mod devices;
mod route_headers;
mod router;
mod scaffold;
mod serve;
mod session;
mod snapshot;
mod state;
mod telemetry;
