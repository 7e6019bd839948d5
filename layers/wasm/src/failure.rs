//! What went wrong in one hook call (or in getting an instance for it), told by type: a
//! wasmtime [`Trap`], the memory cap's [`MemoryLimitExceeded`], or where the error arose.

use http::StatusCode;
use wasmtime::Trap;

use crate::guest_limits::MemoryLimitExceeded;

/// The kinds of failure: what the log and the client's error call it, its status, and its
/// `wasm_failures_total` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The guest trapped: a WASM trap, or a host import it called refused (a stubbed WASI
    /// function, an attribute beyond the caps).
    Trap,
    /// The call ran out of time.
    Timeout,
    /// The guest grew its memory beyond `memory_limit_bytes`.
    MemoryLimit,
    /// The guest's answer broke the output rules.
    InvalidOutput,
    /// `init` answered an error.
    Init,
    /// An instance could not be created, other than by a trap in its start function.
    Instantiation,
    /// The engine's instance pool is full.
    PoolFull,
    /// The device has its `max_instances` alive.
    DeviceFull,
}

impl FailureKind {
    /// Its name in logs and in the client's error (`timeout in on-request`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory limit",
            Self::InvalidOutput => "invalid output",
            Self::Init => "init",
            Self::Instantiation => "instantiation",
            Self::PoolFull => "instance pool full",
            Self::DeviceFull => "device at max_instances",
        }
    }

    /// The status of the request when the device fails closed.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::Timeout | Self::Instantiation | Self::PoolFull | Self::DeviceFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Trap | Self::MemoryLimit | Self::InvalidOutput | Self::Init => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// No instance was free: load, not a guest fault, so 503 whatever the failure policy.
    pub(crate) fn is_capacity(self) -> bool {
        matches!(self, Self::PoolFull | Self::DeviceFull)
    }

    /// Its index in [`WASM_FAILURE_KINDS`](snakeway_core::metrics::WASM_FAILURE_KINDS).
    pub(crate) fn metric(self) -> usize {
        match self {
            Self::Trap => 0,
            Self::Timeout => 1,
            Self::MemoryLimit => 2,
            Self::InvalidOutput => 3,
            Self::PoolFull | Self::DeviceFull => 4,
            Self::Init | Self::Instantiation => 5,
        }
    }
}

/// A failure of one hook call, or of getting an instance for it.
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, detail: String) -> Self {
        Self { kind, detail }
    }

    pub(crate) fn invalid(detail: String) -> Self {
        Self::new(FailureKind::InvalidOutput, detail)
    }

    /// An error out of wasmtime: a trap or the memory cap by their types; anything else is
    /// `otherwise` (a trap for a guest call, whose only other errors come from host imports
    /// refusing it; instantiation when creating an instance).
    pub(crate) fn from_wasm(error: &wasmtime::Error, otherwise: FailureKind) -> Self {
        for cause in error.chain() {
            if let Some(trap) = cause.downcast_ref::<Trap>() {
                return match trap {
                    Trap::Interrupt => {
                        Self::new(FailureKind::Timeout, "the time limit was exceeded".into())
                    }
                    Trap::StackOverflow => Self::new(FailureKind::Trap, "stack overflow".into()),
                    other => Self::new(FailureKind::Trap, other.to_string()),
                };
            }
            if let Some(memory) = cause.downcast_ref::<MemoryLimitExceeded>() {
                return Self::new(FailureKind::MemoryLimit, memory.to_string());
            }
        }
        Self::new(otherwise, error.root_cause().to_string())
    }
}

#[cfg(test)]
mod tests {
    use snakeway_core::metrics::WASM_FAILURE_KINDS;

    use super::*;

    #[test]
    fn kinds_map_to_their_metric_label_and_status() {
        use FailureKind::*;
        let cases = [
            (Trap, "trap", 500),
            (Timeout, "timeout", 503),
            (MemoryLimit, "memory", 500),
            (InvalidOutput, "output", 500),
            (PoolFull, "pool_full", 503),
            (DeviceFull, "pool_full", 503),
            (Init, "other", 500),
            (Instantiation, "other", 503),
        ];
        for (kind, label, status) in cases {
            assert_eq!(WASM_FAILURE_KINDS[kind.metric()], label, "{kind:?}");
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.is_capacity(), label == "pool_full", "{kind:?}");
        }
    }

    #[test]
    fn errors_are_told_by_type() {
        let memory = wasmtime::Error::from(MemoryLimitExceeded::for_test());
        assert_eq!(
            Failure::from_wasm(&memory, FailureKind::Trap).kind,
            FailureKind::MemoryLimit
        );
        let timeout = wasmtime::Error::from(Trap::Interrupt).context("in a hook");
        assert_eq!(
            Failure::from_wasm(&timeout, FailureKind::Trap).kind,
            FailureKind::Timeout
        );
        let other = wasmtime::Error::msg("a host import refused");
        let failure = Failure::from_wasm(&other, FailureKind::Instantiation);
        assert_eq!(failure.kind, FailureKind::Instantiation);
        assert_eq!(failure.detail, "a host import refused");
    }
}
