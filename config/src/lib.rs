//! The snakeway.toml schema: parsing, includes, defaults and validation with a full error report
