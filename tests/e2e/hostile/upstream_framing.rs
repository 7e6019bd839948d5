//! Hostile peers: upstream_framing.
