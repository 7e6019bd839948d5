//! Hostile peers through real sockets (docs/security.md): clients and upstreams that stall,
//! flood, lie or send malformed bytes. One module per concern; one test per attack.

mod accept_flood;
mod forwarding;
mod framing;
mod h2;
mod parked_heads;
mod plain_on_tls;
mod process;
mod slow_clients;
mod static_files;
mod timeouts;
mod upstream_framing;
mod wasm_pool;
