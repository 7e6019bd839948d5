//! Hostile peers: process.
