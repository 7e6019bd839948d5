//! What the proxy records per upstream try: its outcome per upstream, the time to the response
//! head and connect errors and timeouts per service (the families are in
//! [`snakeway_core::metrics`]). The recorders are resolved when the service is built; a try
//! costs an index and an atomic add or two.

use std::io;
use std::sync::Arc;

use snakeway_core::cause_ref;
use snakeway_core::metrics::{
    Counters, Histogram, UPSTREAM_ERRORS, UPSTREAM_REQUESTS, UPSTREAM_RESPONSE_DURATION,
};

use crate::connector::ConnectError;

/// How one try at an upstream ended (the index of its label in
/// [`UPSTREAM_OUTCOMES`](snakeway_core::metrics::UPSTREAM_OUTCOMES)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head below 500.
    Success = 0,
    /// A 5xx response head.
    Http5xx = 1,
    /// The connection (TCP, Unix socket or TLS) could not be established.
    ConnectError = 2,
    /// Connecting took longer than `connect_timeout`.
    ConnectTimeout = 3,
    /// No response head within `response_timeout`.
    ResponseTimeout = 4,
    /// The upstream reset or closed the connection or answered something invalid.
    UpstreamError = 5,
    /// The try failed on the client's side (its body stalled or broke off).
    ClientError = 6,
}

/// Kinds of [`UPSTREAM_ERRORS`] (the index of their label in
/// [`UPSTREAM_ERROR_KINDS`](snakeway_core::metrics::UPSTREAM_ERROR_KINDS)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    ConnectRefused = 0,
    ConnectUnreachable = 1,
    ConnectTimeout = 2,
    Tls = 3,
    ResponseTimeout = 4,
    ReadTimeout = 5,
    Reset = 6,
}

/// The recorders of one service.
#[derive(Debug)]
pub(crate) struct ServiceRecorders {
    /// Time to the response head.
    pub(crate) response_time: Arc<Histogram>,
    errors: Arc<Counters<7>>,
}

// === impl ServiceRecorders ===

impl ServiceRecorders {
    /// The recorders of service `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            response_time: UPSTREAM_RESPONSE_DURATION.get(&[name]),
            errors: UPSTREAM_ERRORS.get(&[name]),
        }
    }

    /// Counts one connect error or timeout.
    #[inline]
    pub(crate) fn failed(&self, failure: Failure) {
        self.errors.add(failure as usize, 1);
    }
}

/// The try counts of one upstream.
#[derive(Debug)]
pub(crate) struct UpstreamRecorders(Arc<Counters<7>>);

// === impl UpstreamRecorders ===

impl UpstreamRecorders {
    /// The recorders of `upstream` (its URL) in service `service`.
    pub(crate) fn new(service: &str, upstream: &str) -> Self {
        Self(UPSTREAM_REQUESTS.get(&[service, upstream]))
    }

    /// Counts one try.
    #[inline]
    pub(crate) fn tried(&self, outcome: Outcome) {
        self.0.add(outcome as usize, 1);
    }
}

/// The outcome of a try whose send failed with `error` (an upstream fault), and its connect
/// error or reset kind, if it is one.
pub(crate) fn classify(error: &(dyn std::error::Error + 'static)) -> (Outcome, Option<Failure>) {
    match cause_ref::<ConnectError>(error) {
        Some(ConnectError::Timeout(_)) => (Outcome::ConnectTimeout, Some(Failure::ConnectTimeout)),
        Some(ConnectError::Tls(_)) => (Outcome::ConnectError, Some(Failure::Tls)),
        Some(ConnectError::Connect(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            (Outcome::ConnectError, Some(Failure::ConnectRefused))
        }
        Some(ConnectError::Connect(_)) => {
            (Outcome::ConnectError, Some(Failure::ConnectUnreachable))
        }
        None => {
            let reset = cause_ref::<io::Error>(error).is_some_and(|e| {
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                )
            });
            (Outcome::UpstreamError, reset.then_some(Failure::Reset))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snakeway_core::metrics::{UPSTREAM_ERROR_KINDS, UPSTREAM_OUTCOMES};

    #[test]
    fn labels_match_the_indices() {
        for (outcome, label) in [
            (Outcome::Success, "success"),
            (Outcome::Http5xx, "http_5xx"),
            (Outcome::ConnectError, "connect_error"),
            (Outcome::ConnectTimeout, "connect_timeout"),
            (Outcome::ResponseTimeout, "response_timeout"),
            (Outcome::UpstreamError, "upstream_error"),
            (Outcome::ClientError, "client_error"),
        ] {
            assert_eq!(UPSTREAM_OUTCOMES[outcome as usize], label);
        }
        for (failure, label) in [
            (Failure::ConnectRefused, "connect_refused"),
            (Failure::ConnectUnreachable, "connect_unreachable"),
            (Failure::ConnectTimeout, "connect_timeout"),
            (Failure::Tls, "tls"),
            (Failure::ResponseTimeout, "response_timeout"),
            (Failure::ReadTimeout, "read_timeout"),
            (Failure::Reset, "reset"),
        ] {
            assert_eq!(UPSTREAM_ERROR_KINDS[failure as usize], label);
        }
    }

    #[test]
    fn connect_failures_are_classified_by_kind() {
        let refused = ConnectError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            classify(&refused),
            (Outcome::ConnectError, Some(Failure::ConnectRefused))
        );
        let timeout = ConnectError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(
            classify(&timeout),
            (Outcome::ConnectTimeout, Some(Failure::ConnectTimeout))
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            classify(&reset),
            (Outcome::UpstreamError, Some(Failure::Reset))
        );
        let other = io::Error::other("bad");
        assert_eq!(classify(&other), (Outcome::UpstreamError, None));
    }
}
