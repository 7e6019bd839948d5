//! Black-box end-to-end tests: each starts the real `snakeway` binary on loopback ports and
//! talks to it with real clients (hyper, raw TCP, curl). One test binary per runtime on
//! purpose: every extra one costs a long link (`tests/e2e_per_core` runs these same modules
//! under `server.runtime = "per_core"`).

#![allow(missing_docs, unreachable_pub)]

/// The `server.runtime` the harness gives every server: the configured default here;
/// `tests/e2e_per_core` runs the same tests under `per_core`.
const RUNTIME: Option<&str> = None;

mod client;
mod harness;
mod pki;
mod upstream;

mod admin;
mod axum_example;
mod balancing;
mod config_cli;
mod config_messages;
mod devices;
mod docs_examples;
mod error_detail;
mod everyday;
mod framing;
mod grpc;
mod health_check;
mod hostile;
mod listeners;
mod packaging;
mod parking;
mod prometheus;
mod proxy;
mod rate_limit;
mod reload;
mod reload_cli;
mod retry;
mod routing;
mod runtime;
mod static_files;
mod tls_resumption;
mod trailers;
mod wasm;
mod wasm_cache;
mod wasm_new;
mod websocket;
