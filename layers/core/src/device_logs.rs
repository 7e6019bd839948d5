//! Log lines devices record for a request, for the structured-logging device to write.

use std::sync::{Arc, Mutex, PoisonError};

/// One log line a device recorded for a request (a WASM guest's `log` call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLog {
    /// The device's name.
    pub device: Arc<str>,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// What it said.
    pub message: String,
}

/// The device log lines of one request not yet written: the structured-logging device takes
/// them at its next line for the request and writes each with the request id. The lock is
/// per request, never contended; no lines cost nothing.
#[derive(Debug, Default)]
pub struct DeviceLogs(Mutex<Vec<DeviceLog>>);

impl DeviceLogs {
    /// Records a line.
    pub fn push(&self, log: DeviceLog) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(log);
    }

    /// Takes every line recorded so far.
    pub fn take(&self) -> Vec<DeviceLog> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
