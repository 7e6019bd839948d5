//! Snakeway's builtin devices as ordinary Tower layers in an axum app, without the proxy.
//!
//! ```sh
//! cargo run --example axum_devices            # listens on 127.0.0.1:3000
//! curl -H 'x-forwarded-for: 203.0.113.9' http://127.0.0.1:3000/hello
//! curl -X DELETE http://127.0.0.1:3000/hello  # 405 from the request filter
//! ```
//!
//! Each device is its own layer (`IdentityLayer`, `RequestFilterLayer`,
//! `StructuredLoggingLayer`); stacked this way they behave as ordinary Tower middleware (an
//! onion), and handlers read the identity from the request extensions.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use http::Method;
use snakeway::core::PeerAddr;
use snakeway_filter::{FilterOptions, RequestFilterLayer};
use snakeway_identity::{ClientIdentity, IdentityLayer, IdentityOptions};
use snakeway_logging::{
    LogWriter, LoggingOptions, Output, StructuredLogging, StructuredLoggingLayer,
};

/// The example app: `/hello` greets the client by the IP the identity layer resolved.
/// Access logs go to `log`.
pub fn app(log: &Output) -> std::io::Result<Router> {
    let logging = LoggingOptions {
        output: log.clone(),
        ..LoggingOptions::default()
    };
    let writer = LogWriter::open(log, logging.queue_bytes)?;
    let identity = IdentityOptions {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("a CIDR")],
        geoip: None,
        user_agent: true,
    };
    let filter = FilterOptions {
        allow_methods: vec![Method::GET, Method::HEAD],
        ..FilterOptions::default()
    };
    Ok(Router::new()
        .route("/hello", get(hello))
        // The last layer added is the outermost: peer address → logging → identity → filter.
        .layer(RequestFilterLayer::new(filter))
        .layer(IdentityLayer::new(identity))
        .layer(StructuredLoggingLayer::new(StructuredLogging::new(
            logging, writer,
        )))
        .layer(middleware::from_fn(peer_addr)))
}

async fn hello(req: Request) -> String {
    match req.extensions().get::<Arc<ClientIdentity>>() {
        Some(identity) => format!("hello, {}\n", identity.ip),
        None => "hello, stranger\n".to_owned(),
    }
}

/// Hands the connection's peer address to the devices (they read [`PeerAddr`]).
async fn peer_addr(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(PeerAddr(peer));
    next.run(req).await
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[allow(dead_code)] // `main` is unused when the e2e tests include this file as a module.
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, app(&Output::Stdout)?).await
}
