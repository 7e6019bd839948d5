//! Hostile peers: timeouts.
