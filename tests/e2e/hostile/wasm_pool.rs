//! Hostile peers: wasm_pool.
