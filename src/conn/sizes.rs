//! What one connection holds inline, by type: the budgets of the per-connection state that
//! `docs/benchmarks.md` (§ connections) breaks down, each with some headroom. Heap buffers (hyper's 8 KiB read and
//! write buffers, rustls's, h2's) are not in these sizes; they are measured by
//! `benches/connections/run.sh`. Run with `--nocapture` to see the figures.

use std::mem::size_of;
use std::sync::OnceLock;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::detect::Rewind;
use super::h1::StrictH1;
use super::park::ParkingH1;
use super::plain::Plain;
use super::serving::Serving;
use super::watch::{Active, Driven, Meter, Metered, Watch};
use crate::session::ConnService;

type Tcp = Active<TcpStream>;
type Tls = tokio_rustls::server::TlsStream<Tcp>;
type Service = Metered<ConnService>;
type H1<I> = http1::UpgradeableConnection<TokioIo<StrictH1<I>>, Service>;
type H2<I> = http2::Connection<TokioIo<I>, Service, TokioExecutor>;

/// (what, its size, the budget it must stay within).
fn sizes() -> Vec<(&'static str, usize, usize)> {
    vec![
        // With the park bell (a flag and a waker slot).
        ("Meter (one Arc per connection)", size_of::<Meter>(), 128),
        ("Watch", size_of::<Watch>(), 160),
        ("ConnService", size_of::<ConnService>(), 160),
        ("StrictH1<TCP>", size_of::<StrictH1<Tcp>>(), 320),
        ("TlsStream<TCP>", size_of::<Tls>(), 1408),
        ("hyper http1 connection, plain", size_of::<H1<Tcp>>(), 1152),
        ("hyper http1 connection, TLS", size_of::<H1<Tls>>(), 2560),
        (
            "hyper http2 connection, h2c",
            size_of::<H2<Rewind<Tcp>>>(),
            1920,
        ),
        ("hyper http2 connection, TLS", size_of::<H2<Tls>>(), 3264),
        // Inline in the task, hyper's connection boxed (and dropped while parked).
        ("ParkingH1<TCP>", size_of::<ParkingH1<Tcp>>(), 256),
        ("ParkingH1<TLS>", size_of::<ParkingH1<Tls>>(), 256),
        // The slot's heap block, where a parked transport waits.
        ("parked TCP transport", size_of::<OnceLock<Tcp>>(), 96),
        ("parked TLS transport", size_of::<OnceLock<Tls>>(), 1408),
        // The whole future of a connection's task (what an idle parked connection holds
        // inline: 2,864 bytes when it was an `async fn`), and its parts: the watch driving
        // an HTTP/1-only or an HTTP/1-or-h2c connection.
        (
            "connection task future (Serving)",
            size_of::<Serving>(),
            768,
        ),
        (
            "Driven<ParkingH1<TCP>>",
            size_of::<Driven<ParkingH1<Tcp>>>(),
            704,
        ),
        ("Plain (HTTP/1 or h2c)", size_of::<Plain>(), 272),
        ("Driven<Plain>", size_of::<Driven<Plain>>(), 768),
    ]
}

#[test]
fn per_connection_state_stays_within_its_budget() {
    let sizes = sizes();
    for (what, size, budget) in &sizes {
        eprintln!("{what}: {size} bytes (budget {budget})");
    }
    let over: Vec<_> = sizes
        .iter()
        .filter(|(_, size, budget)| size > budget)
        .collect();
    assert!(over.is_empty(), "over budget: {over:?}");
}
