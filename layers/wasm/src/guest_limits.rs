//! The resource limits of one instance, with a typed error for the memory cap.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// A guest grew its linear memory beyond its `memory_limit_bytes` (the call traps).
#[derive(Debug, thiserror::Error)]
#[error("growing memory to {desired} bytes is beyond the limit of {limit} bytes")]
pub(crate) struct MemoryLimitExceeded {
    desired: usize,
    limit: usize,
}

#[cfg(test)]
impl MemoryLimitExceeded {
    /// An example, for tests of the failure kinds.
    pub(crate) fn for_test() -> Self {
        Self {
            desired: 2 << 20,
            limit: 1 << 20,
        }
    }
}

/// One instance's limits: its memory cap, which fails the call with [`MemoryLimitExceeded`],
/// and wasmtime's [`StoreLimits`] for instances, tables and memories (exceeding them traps).
pub(crate) struct GuestLimits {
    memory_bytes: usize,
    rest: StoreLimits,
}

impl GuestLimits {
    /// Limits with a linear memory cap of `memory_bytes`.
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            rest: StoreLimitsBuilder::new()
                .instances(32)
                .memories(8)
                .tables(32)
                .table_elements(1 << 16)
                .trap_on_grow_failure(true)
                .build(),
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(MemoryLimitExceeded {
                desired,
                limit: self.memory_bytes,
            }
            .into());
        }
        self.rest.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.rest.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.rest.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.rest.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.rest.instances()
    }

    fn tables(&self) -> usize {
        self.rest.tables()
    }

    fn memories(&self) -> usize {
        self.rest.memories()
    }
}
