//! Core types shared by Snakeway's layers and services.
//!
//! Everything here is independent of the server and of the `snakeway.toml` schema, so the same
//! pieces work inside any Tower or axum application:
//!
//! * [`Body`]: the one body type that flows through the stack (no boxing for the common cases);
//! * [`Error`] and [`ErrorKind`]: an opaque error that knows which HTTP status it becomes;
//! * [`request_id`]: accepting or generating `x-request-id`;
//! * [`path`]: RFC 3986 path normalization with the safety rules of the design contract;
//! * [`respond`]: small synthetic responses (error pages, configured bodies);
//! * [`grpc`]: Snakeway's own failures answered as gRPC statuses to gRPC clients;
//! * [`metrics`]: sharded, lock-free metric recorders and the families Snakeway records;
//! * [`Device`] and [`pipeline`]: the device API and the Tower layers that run devices at their
//!   phases.

mod body;
mod ctx;
mod device;
mod device_logs;
mod error;
pub mod grpc;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod request_id;
pub mod respond;
mod slots;
mod trusted;

pub use body::{Body, ClientBodyTimeout, GapTimer};
pub use ctx::{BodyBytes, BodyCtx, Origin, RequestCtx, RequestInfo, ResponseCtx, Transfer};
pub use device::{Deferred, Device, DeviceError, DeviceResult, Flow, Pending, Phase, Phases};
pub use device_logs::{DeviceLog, DeviceLogs};
pub use error::{BoxError, Error, ErrorKind, cause_ref, is_caused_by};
pub use slots::{DeviceSlots, SlotKey};
pub use trusted::TrustedProxies;

/// The downstream peer's address, as a request extension. The server sets it; in an axum app,
/// insert it from `ConnectInfo` so devices see the client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The client's address as a device resolved it (the identity device, past trusted proxies),
/// as a request extension. Outcomes that key on the client (the proxy's `sticky_hash` on
/// `client_ip`) prefer it to the peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);
