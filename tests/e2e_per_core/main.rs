//! The end-to-end tests of `tests/e2e`, every server run with `server.runtime = "per_core"`
//! (the harness puts it in each config it serves): both runtimes pass the same suite.

#![allow(missing_docs, unreachable_pub)]

/// See `tests/e2e/main.rs`.
const RUNTIME: Option<&str> = Some("per_core");

#[path = "../e2e/admin.rs"]
mod admin;
#[path = "../e2e/axum_example.rs"]
mod axum_example;
#[path = "../e2e/balancing.rs"]
mod balancing;
#[path = "../e2e/client.rs"]
mod client;
#[path = "../e2e/config_cli.rs"]
mod config_cli;
#[path = "../e2e/config_messages.rs"]
mod config_messages;
#[path = "../e2e/devices.rs"]
mod devices;
#[path = "../e2e/docs_examples.rs"]
mod docs_examples;
#[path = "../e2e/error_detail.rs"]
mod error_detail;
#[path = "../e2e/everyday.rs"]
mod everyday;
#[path = "../e2e/framing.rs"]
mod framing;
#[path = "../e2e/grpc.rs"]
mod grpc;
#[path = "../e2e/harness.rs"]
mod harness;
#[path = "../e2e/health_check.rs"]
mod health_check;
#[path = "../e2e/hostile/mod.rs"]
mod hostile;
#[path = "../e2e/listeners.rs"]
mod listeners;
#[path = "../e2e/packaging.rs"]
mod packaging;
#[path = "../e2e/pki.rs"]
mod pki;
#[path = "../e2e/prometheus.rs"]
mod prometheus;
#[path = "../e2e/proxy.rs"]
mod proxy;
#[path = "../e2e/rate_limit.rs"]
mod rate_limit;
#[path = "../e2e/reload.rs"]
mod reload;
#[path = "../e2e/reload_cli.rs"]
mod reload_cli;
#[path = "../e2e/retry.rs"]
mod retry;
#[path = "../e2e/routing.rs"]
mod routing;
#[path = "../e2e/runtime.rs"]
mod runtime;
#[path = "../e2e/static_files.rs"]
mod static_files;
#[path = "../e2e/tls_resumption.rs"]
mod tls_resumption;
#[path = "../e2e/trailers.rs"]
mod trailers;
#[path = "../e2e/upstream.rs"]
mod upstream;
#[path = "../e2e/wasm.rs"]
mod wasm;
#[path = "../e2e/wasm_cache.rs"]
mod wasm_cache;
#[path = "../e2e/wasm_new.rs"]
mod wasm_new;
#[path = "../e2e/websocket.rs"]
mod websocket;
