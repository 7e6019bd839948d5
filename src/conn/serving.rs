//! The future a connection's task holds, from accept to close: the connection under its
//! [`Watch`](super::watch::Watch), as one of a few concrete types.
//!
//! Written by hand rather than as one `async fn`: an `async fn` keeps its arguments beside the
//! locals they are moved into, and keeps a value it ever borrowed until the end of its scope,
//! so every connection's task would hold several copies of the connection's state for its
//! whole life (docs/benchmarks.md § connection scale). Here a plain connection holds its
//! [`Driven`] future once; a TLS connection holds its handshake boxed while it runs, then its
//! [`Driven`] future in the same place.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use hyper_util::rt::{TokioExecutor, TokioIo};
use pin_project_lite::pin_project;
use snakeway_core::BoxError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::h1::Rejections;
use super::listener::Service;
use super::park::{ParkingH1, ReadReady};
use super::plain::Plain;
use super::watch::{Active, Driven, Meter, Watched};
use crate::snapshot::ListenerRuntime;

/// The socket of a connection, metered.
pub(crate) type Tcp = Active<TcpStream>;

/// The TLS stream of a connection.
pub(crate) type Tls = tokio_rustls::server::TlsStream<Tcp>;

/// The TLS handshake (and what it takes to serve the connection after it), boxed while it
/// runs: `None` if it failed (recorded and logged by then).
pub(crate) type Handshake = Pin<Box<dyn Future<Output = Option<Driven<Http<Tls>>>> + Send>>;

pin_project! {
    /// Serves one connection to its end (see the module docs).
    #[project = ServingProj]
    pub(crate) enum Serving {
        /// Plain TCP on a listener that serves HTTP/1 and h2c.
        Plain { #[pin] driven: Driven<Plain> },
        /// Plain TCP on an HTTP/1-only listener.
        Http1 { #[pin] driven: Driven<ParkingH1<Tcp>> },
        /// TLS, during the handshake.
        Handshake { handshake: Handshake },
        /// TLS, once the handshake is done.
        Tls { #[pin] driven: Driven<Http<Tls>> },
        /// Over.
        Done,
    }
}

impl Future for Serving {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ServingProj::Plain { driven } => return driven.poll(cx).map(drop),
                ServingProj::Http1 { driven } => return driven.poll(cx).map(drop),
                ServingProj::Tls { driven } => return driven.poll(cx).map(drop),
                ServingProj::Handshake { handshake } => {
                    let next = match ready!(handshake.as_mut().poll(cx)) {
                        Some(driven) => Self::Tls { driven },
                        None => Self::Done,
                    };
                    self.set(next);
                }
                ServingProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// hyper's HTTP/2 connection over `I`.
pub(crate) type H2<I> = hyper::server::conn::http2::Connection<TokioIo<I>, Service, TokioExecutor>;

/// A connection whose protocol is decided: HTTP/1 (parking between requests), or HTTP/2, boxed
/// at its own size so that the connection is as small as its HTTP/1 state.
pub(crate) enum Http<I> {
    /// HTTP/1 behind the framing guard.
    Http1(ParkingH1<I>),
    /// HTTP/2.
    Http2(Pin<Box<H2<I>>>),
}

impl<I> Http<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + Sync + 'static,
{
    /// Serves `io` as HTTP/2 (`http2`: ALPN or the h2c preface said so) with the listener's
    /// HTTP/2 builder, else as HTTP/1 behind the framing guard, parking when the watch of
    /// `meter` asks; `service` answers the refusals the guard puts in `rejections`.
    pub(crate) fn new(
        http2: bool,
        io: I,
        runtime: Arc<ListenerRuntime>,
        service: Service,
        rejections: Rejections,
        meter: Arc<Meter>,
    ) -> Self {
        if http2 {
            Self::Http2(Box::pin(
                runtime.h2.serve_connection(TokioIo::new(io), service),
            ))
        } else {
            Self::Http1(ParkingH1::new(io, runtime, service, rejections, meter))
        }
    }
}

impl<I> Future for Http<I>
where
    ParkingH1<I>: Future<Output = Result<(), BoxError>> + Unpin,
    H2<I>: Future<Output = Result<(), hyper::Error>>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Http1(conn) => Pin::new(conn).poll(cx),
            Self::Http2(conn) => conn.as_mut().poll(cx).map_err(Into::into),
        }
    }
}

impl<I> Watched for Http<I>
where
    ParkingH1<I>: Watched + Unpin,
    H2<I>: Watched,
{
    fn drain(self: Pin<&mut Self>) {
        match self.get_mut() {
            Self::Http1(conn) => Pin::new(conn).drain(),
            Self::Http2(conn) => conn.as_mut().drain(),
        }
    }

    fn http2(&self) -> bool {
        matches!(self, Self::Http2(_))
    }
}
