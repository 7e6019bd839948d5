//! Hostile peers: h2.
