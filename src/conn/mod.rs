//! Connections: what happens between an accepted socket and the request handler.

pub(crate) mod h1;
