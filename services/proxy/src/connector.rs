//! A connector that always dials one fixed upstream, whatever URI hyper asks for.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::io::Stream;
use crate::target::Target;
use crate::tls::TlsConfigError;

/// Dials the upstream it was built for; the URI handed to it by hyper only keys the pool.
///
/// Cloning is cheap (one `Arc`): hyper clones the connector for every new connection.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<Inner>,
}

struct Inner {
    dest: Dest,
    connect_timeout: Duration,
}

enum Dest {
    Tcp {
        host: Box<str>,
        port: u16,
    },
    Tls {
        host: Box<str>,
        port: u16,
        server_name: ServerName<'static>,
        tls: TlsConnector,
    },
    Unix(PathBuf),
}

/// Why a connection to an upstream could not be established.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Connecting (including the TLS handshake) took longer than `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP or Unix-socket connect failed.
    #[error("connect failed")]
    Connect(#[source] io::Error),
    /// The TLS handshake failed (certificate, protocol, or the peer hung up).
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
}

// === impl Connector ===

impl Connector {
    /// A connector for `target`. `tls` must be given for `https` targets.
    pub(crate) fn new(
        target: &Target,
        tls: Option<&Arc<ClientConfig>>,
        connect_timeout: Duration,
    ) -> Result<Self, TlsConfigError> {
        let dest = match (target, target.host_port()) {
            (Target::Unix(path), _) => Dest::Unix(path.clone()),
            (Target::Http { .. }, Some((host, port))) => Dest::Tcp {
                host: host.into(),
                port,
            },
            (Target::Https { .. }, Some((host, port))) => {
                let server_name = ServerName::try_from(host.to_owned()).map_err(|_| {
                    TlsConfigError::InvalidServerName {
                        host: host.to_owned(),
                    }
                })?;
                let config = tls.expect("https targets get a TLS config").clone();
                Dest::Tls {
                    host: host.into(),
                    port,
                    server_name,
                    tls: TlsConnector::from(config),
                }
            }
            _ => unreachable!("TCP targets always have a host and port"),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dest,
                connect_timeout,
            }),
        })
    }

    async fn connect(self) -> Result<Stream, ConnectError> {
        match &self.inner.dest {
            Dest::Tcp { host, port } => tcp(host, *port).await.map(Stream::Tcp),
            Dest::Tls {
                host,
                port,
                server_name,
                tls,
            } => {
                let tcp = tcp(host, *port).await?;
                let tls = tls
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(ConnectError::Tls)?;
                Ok(Stream::Tls(Box::new(tls)))
            }
            Dest::Unix(path) => UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(ConnectError::Connect),
        }
    }
}

async fn tcp(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(ConnectError::Connect)?;
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on an upstream connection");
    }
    Ok(stream)
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    // Boxed: this runs once per new upstream connection, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.inner.connect_timeout;
            match tokio::time::timeout(timeout, this.connect()).await {
                Ok(stream) => stream.map(TokioIo::new),
                Err(_elapsed) => Err(ConnectError::Timeout(timeout)),
            }
        })
    }
}
