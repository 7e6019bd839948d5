//! Hostile peers: framing.
