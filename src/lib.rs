//! Snakeway facade
