//! Hostile peers: slow_clients.
