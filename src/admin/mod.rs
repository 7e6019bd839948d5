//! The admin API: its own small HTTP/1.1 listener (`[admin] listen`), never reachable through a
//! public listener.
//!
//! It has its own limits, smaller than any public listener's: at most [`MAX_CONNECTIONS`]
//! connections (more wait in the kernel backlog), request heads of at most [`MAX_HEAD_BYTES`],
//! [`HEADER_READ_TIMEOUT`] to send a head, and [`MAX_CONNECTION_LIFE`] per connection. Request
//! bodies are never read (no endpoint takes one).
//!
//! The listener follows reloads: a changed `listen` binds the new address before the new
//! configuration is installed (a bind failure refuses the reload) and closes the old one; a
//! removed `[admin]` closes it; the token is read from the running snapshot on every request.

mod auth;
mod routes;
mod server;
pub(crate) mod status;
mod views;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use snakeway_config::{Config, Problem, Report};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::serve::ReloadRequest;
use crate::state::State;

/// Connections served at once; more wait in the kernel's accept backlog.
const MAX_CONNECTIONS: usize = 64;
/// The largest request head accepted (hyper's read buffer; a larger head closes the connection).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time allowed for sending a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (a reload that compiles WASM devices takes seconds).
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(120);

/// The admin listener of a running server, if `[admin]` is configured.
pub(crate) struct Admin {
    running: Option<Running>,
    reload: mpsc::Sender<ReloadRequest>,
}

/// An open admin listener: its configured address and its accept loop.
struct Running {
    listen: SocketAddr,
    accept: JoinHandle<()>,
}

/// What [`Admin::apply`] does to the admin listener after a (re)load.
pub(crate) enum Plan {
    /// The address is unchanged (or there is still no `[admin]`).
    Keep,
    /// `[admin]` was removed.
    Close,
    /// A new address, already bound.
    Open(SocketAddr, TcpListener),
}

/// What the admin endpoints share.
pub(crate) struct Ctx {
    pub(crate) state: Arc<State>,
    pub(crate) reload: mpsc::Sender<ReloadRequest>,
}

// === impl Admin ===

impl Admin {
    /// No admin listener yet; `reload` reaches the serve loop's reload path.
    pub(crate) fn new(reload: mpsc::Sender<ReloadRequest>) -> Self {
        Self {
            running: None,
            reload,
        }
    }

    /// Binds the admin address of `config` if it is not the one open now. Fails with a report
    /// naming `admin.listen` (nothing changes).
    pub(crate) fn bind(&self, config: &Config, source: &Path) -> Result<Plan, Report> {
        let wanted = config.admin.as_ref().map(|a| a.listen);
        let open = self.running.as_ref().map(|r| r.listen);
        match wanted {
            None if open.is_none() => Ok(Plan::Keep),
            None => Ok(Plan::Close),
            Some(addr) if open == Some(addr) => Ok(Plan::Keep),
            Some(addr) => bind(addr).map(|l| Plan::Open(addr, l)).map_err(|e| Report {
                problems: vec![Problem {
                    file: source.to_owned(),
                    key: "admin.listen".to_owned(),
                    message: format!("cannot bind {addr}: {e}"),
                }],
            }),
        }
    }

    /// Carries out `plan`: opens the new listener and closes the old one. Connections already
    /// accepted finish on their own (a `POST /admin/reload` that moved the listener still
    /// gets its answer).
    pub(crate) fn apply(&mut self, plan: Plan, state: &Arc<State>) {
        match plan {
            Plan::Keep => {}
            Plan::Close => self.close(),
            Plan::Open(listen, listener) => {
                self.close();
                let local = listener.local_addr().map_or(listen, |a| a);
                tracing::info!(admin_addr = %local, "admin API open");
                let ctx = Arc::new(Ctx {
                    state: state.clone(),
                    reload: self.reload.clone(),
                });
                self.running = Some(Running {
                    listen,
                    accept: tokio::spawn(server::accept_loop(listener, ctx)),
                });
            }
        }
    }

    /// Closes the admin listener, if open.
    pub(crate) fn close(&mut self) {
        if let Some(running) = self.running.take() {
            running.accept.abort();
            tracing::info!(admin_addr = %running.listen, "admin API closed");
        }
    }
}

/// Binds `addr` for the admin listener (non-blocking, `SO_REUSEADDR` like the public ones).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}
