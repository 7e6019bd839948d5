//! A plain TCP connection on a listener that serves both HTTP/1 and h2c: its protocol sniffed
//! from its first bytes ([`Sniff`]), then served as [`Http`] (HTTP/1 parking between
//! requests, or hyper's HTTP/2), all under the one [`Watch`](super::watch::Watch) of the
//! connection.
//!
//! One future for the connection's whole life, so the sniff needs no timer of its own (the
//! watch closes a connection still [opening](Watched::opening) at `header_read_timeout_ms`,
//! sooner under pressure) and the task holds no more than the larger of the two states.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use snakeway_core::BoxError;

use super::detect::{Protocol, Rewind, Sniff};
use super::h1::Rejections;
use super::listener::Service;
use super::serving::{Http, Tcp};
use super::watch::{Meter, Watched};
use crate::snapshot::ListenerRuntime;

/// Serves one plain connection, HTTP/1 or h2c (see the module docs).
pub(crate) struct Plain {
    state: State,
}

enum State {
    /// Reading until the protocol is known, with what serving it takes.
    Sniffing {
        sniff: Sniff<Tcp>,
        runtime: Arc<ListenerRuntime>,
        service: Service,
        rejections: Rejections,
        meter: Arc<Meter>,
    },
    /// Decided: HTTP/1 or HTTP/2.
    Served(Http<Rewind<Tcp>>),
    /// Over (closed while sniffing).
    Done,
}

// === impl Plain ===

impl Plain {
    /// Starts sniffing `io`; then serves it with `service` (which answers the refusals the
    /// HTTP/1 guard puts in `rejections`) and the listener's settings in `runtime`.
    pub(crate) fn new(
        io: Tcp,
        runtime: Arc<ListenerRuntime>,
        service: Service,
        rejections: Rejections,
        meter: Arc<Meter>,
    ) -> Self {
        Self {
            state: State::Sniffing {
                sniff: Sniff::new(io),
                runtime,
                service,
                rejections,
                meter,
            },
        }
    }
}

impl Future for Plain {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Sniffing { sniff, .. } => {
                    let sniffed = ready!(Pin::new(sniff).poll(cx));
                    let State::Sniffing {
                        runtime,
                        service,
                        rejections,
                        meter,
                        ..
                    } = std::mem::replace(&mut this.state, State::Done)
                    else {
                        return Poll::Ready(Ok(()));
                    };
                    let (protocol, io) = sniffed?;
                    let http2 = protocol == Protocol::Http2;
                    this.state =
                        State::Served(Http::new(http2, io, runtime, service, rejections, meter));
                }
                State::Served(conn) => return Pin::new(conn).poll(cx),
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Watched for Plain {
    fn drain(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.state {
            // Nothing to finish: closed at once.
            State::Sniffing { .. } => this.state = State::Done,
            State::Served(conn) => Pin::new(conn).drain(),
            State::Done => {}
        }
    }

    fn http2(&self) -> bool {
        matches!(&self.state, State::Served(conn) if conn.http2())
    }

    fn opening(&self) -> bool {
        matches!(self.state, State::Sniffing { .. })
    }
}
