//! Snakeway's identity device: who is the client?
//!
//! [`Identity`] is a [`Device`](snakeway_core::Device) that runs in the request phase. For
//! every request it stores an `Arc<`[`ClientIdentity`]`>` in the request context's
//! extensions (for the devices after it) and in the request's extensions (for handlers in an
//! axum app); it never changes a header and never answers early. [`IdentityLayer`] runs it
//! alone as a Tower layer.
//!
//! # The client address
//!
//! * When the peer is **not** in `trusted_proxies` (or the list is empty), the peer is the
//!   client and `x-forwarded-for` is ignored: a client can never spoof its address through
//!   an untrusted hop.
//! * When the peer is trusted, `x-forwarded-for` is walked right to left (all header lines
//!   in order, as one comma-separated list; entries trimmed). Trusted addresses are passed
//!   over; the first untrusted address is the client. If every address is trusted, the
//!   leftmost is the client.
//! * An entry that is not an IP address (empty, `unknown`, RFC 7239 obfuscated identifiers,
//!   `for=` syntax, non-ASCII) stops the walk, and the client is the nearest address known
//!   good: the trusted hop that reported the bad entry (the peer itself if it was the first
//!   entry). Nothing left of a bad entry is believed.
//! * Entries may carry a port (`192.0.2.1:1234`, `[2001:db8::1]:443`); it is ignored.
//!   IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) count as their IPv4 address, for the
//!   peer, the entries and the trusted networks alike.
//! * [`ClientIdentity::proxy_chain`] lists the trusted proxies walked past, **nearest
//!   first**: the peer, then the hops from right to left. It is empty when the peer is the
//!   client, and never contains the client.
//!
//! # GeoIP and user agent
//!
//! With a [`GeoIp`] database (opened once with [`GeoIp::open`], shared by all workers), the
//! client address is looked up for its country code, and for the city and ASN where the
//! database has them (Country, City and ASN databases all work). With `user_agent` on, the
//! first [`MAX_USER_AGENT_BYTES`] of the `user-agent` header are classified with woothee
//! into a [`UserAgent`]: a [`DeviceClass`], a bot flag, browser and OS names. Each worker
//! thread remembers the last user agents it classified (a small lock-free per-thread cache),
//! since real traffic repeats a handful of them and parsing one costs microseconds.
//!
//! # Cost
//!
//! Each worker thread also remembers the identities of its recent clients (64 per thread,
//! keyed by the device, the peer address, the `x-forwarded-for` lines read and the
//! `user-agent` classified, compared byte for byte): the requests of one client share one
//! `Arc<ClientIdentity>`, so a repeat request costs no address walk, GeoIP lookup or
//! user-agent strings. What a request always costs is handing the identity on: the three
//! extension inserts (the client address and the identity in the request, the identity in the
//! context), and no other allocation. A new client costs the walk (a `Vec` only when there
//! are trusted hops), the lookups, one `Arc`, and its entry (copies of the `x-forwarded-for`
//! lines and the `user-agent` it was built from).

mod client_ip;
mod geoip;
mod identity;
mod recent;
mod user_agent;

pub use crate::geoip::{GeoIp, GeoIpError, GeoRecord};
pub use crate::identity::{ClientIdentity, Identity, IdentityLayer, IdentityOptions};
pub use crate::user_agent::{DeviceClass, MAX_USER_AGENT_BYTES, UserAgent};
