//! Connections, from accept to close: listening sockets and `max_connections` ([`listener`]),
//! TLS ([`tls`]), the strict HTTP/1 framing guard ([`h1`]), choosing HTTP/1 or HTTP/2 once per
//! connection ([`detect`]), the per-connection timers that close idle, stalled or non-reading clients ([`watch`]),
//! idle HTTP/1 connections parked without hyper's buffers between requests ([`park`]),
//! a plain connection served as HTTP/1 or h2c by its first bytes ([`plain`]), the future a
//! connection's task holds ([`serving`]),
//! and the WebSocket tunnels of upgraded connections ([`tunnel`]).
//!
//! Every HTTP/1 connection, plain or TLS, is served by hyper's `http1` builder over the strict
//! framing guard; every HTTP/2 connection (ALPN `h2`, or the h2c prior-knowledge preface) by
//! hyper's `http2` builder, which speaks nothing else.

pub(crate) mod detect;
pub(crate) mod h1;
pub(crate) mod listener;
pub(crate) mod park;
pub(crate) mod plain;
pub(crate) mod serving;
#[cfg(test)]
mod sizes;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod watch;

pub(crate) use listener::Listeners;
