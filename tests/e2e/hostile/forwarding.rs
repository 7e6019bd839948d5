//! Hostile peers: forwarding.
