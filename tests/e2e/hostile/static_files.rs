//! Hostile peers: static_files.
