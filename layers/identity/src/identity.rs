//! The identity device, its options, what it records, and its standalone layer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::USER_AGENT;
use http::{Extensions, HeaderMap, request};
use ipnet::IpNet;
use serde::Serialize;
use snakeway_core::pipeline::{Pipeline, PipelineLayer, PipelineService};
use snakeway_core::{ClientAddr, Device, DeviceResult, Flow, Phase, Phases, RequestCtx};
use tower::Layer;

use snakeway_core::TrustedProxies;

use crate::client_ip;
use crate::geoip::GeoIp;
use crate::recent;
use crate::user_agent::{self, DeviceClass, UserAgent};

/// How the identity device works out who the client is.
#[derive(Clone, Debug, Default)]
pub struct IdentityOptions {
    /// Peers (and `x-forwarded-for` hops) trusted to report the client's address. Empty:
    /// the peer is always the client and `x-forwarded-for` is ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// A GeoIP database to look the client up in; `None` for no lookup.
    pub geoip: Option<GeoIp>,
    /// Whether to classify the `user-agent` header.
    pub user_agent: bool,
}

/// Who the client is, as the identity device worked it out. Stored as an
/// `Arc<ClientIdentity>` in the request context's extensions (for later devices) and in the
/// request's extensions (for handlers); [`ClientIdentity::get`] reads either.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientIdentity {
    /// The client's address: the peer, or what trusted proxies reported for it.
    pub ip: IpAddr,
    /// The trusted proxies between the client and Snakeway, nearest first: the peer, then
    /// each `x-forwarded-for` hop passed right to left. Empty when the peer is the client.
    pub proxy_chain: Vec<IpAddr>,
    /// The client's ISO 3166-1 alpha-2 country code, from GeoIP.
    pub country: Option<String>,
    /// The client's city (English name), from GeoIP.
    pub city: Option<String>,
    /// The client's autonomous system number, from GeoIP.
    pub asn: Option<u32>,
    /// What the `user-agent` header says, when user-agent parsing is on and the header is
    /// present.
    pub user_agent: Option<UserAgent>,
}

// === impl ClientIdentity ===

impl ClientIdentity {
    /// The identity stored in `extensions` (a [`RequestCtx`]'s or a request's), if the
    /// identity device ran.
    pub fn get(extensions: &Extensions) -> Option<&ClientIdentity> {
        extensions.get::<Arc<ClientIdentity>>().map(Arc::as_ref)
    }

    /// The device class, when the user agent was parsed.
    pub fn device(&self) -> Option<DeviceClass> {
        self.user_agent.as_ref().map(|ua| ua.device)
    }

    /// Whether the user agent was parsed and is a bot.
    pub fn is_bot(&self) -> bool {
        self.user_agent.as_ref().is_some_and(|ua| ua.bot)
    }
}

/// The identity device: resolves the client's address, optionally looks it up in a GeoIP
/// database and classifies its user agent, and stores the result as a [`ClientIdentity`].
/// It takes part in the request phase only, never answers early and never changes headers.
///
/// See the [crate docs](crate) for the `x-forwarded-for` rules.
pub struct Identity {
    /// Tells this device's identities apart in the per-thread [`recent`] cache.
    id: u64,
    trusted: TrustedProxies,
    geoip: Option<GeoIp>,
    user_agent: bool,
}

// === impl Identity ===

impl Identity {
    /// A device with these options. With user-agent parsing on, the parser is warmed up here
    /// so the first request does not pay for it.
    pub fn new(options: IdentityOptions) -> Self {
        if options.user_agent {
            user_agent::warm_up();
        }
        /// Tells devices (and the devices a reload builds) apart.
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            trusted: TrustedProxies::new(options.trusted_proxies.iter().copied()),
            geoip: options.geoip,
            user_agent: options.user_agent,
        }
    }

    /// A standalone Tower layer running just this device; see [`IdentityLayer`].
    pub fn layer(options: IdentityOptions) -> IdentityLayer {
        IdentityLayer::new(options)
    }

    /// Works out the identity of a request from `peer` with `headers` (what `on_request`
    /// stores).
    pub fn identify(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientIdentity {
        let (ip, proxy_chain) = client_ip::resolve(peer, headers, &self.trusted);
        let geo = self
            .geoip
            .as_ref()
            .map(|db| db.lookup(ip))
            .unwrap_or_default();
        let user_agent = if self.user_agent {
            headers
                .get(USER_AGENT)
                .map(|ua| user_agent::classify(ua.as_bytes()))
        } else {
            None
        };
        ClientIdentity {
            ip,
            proxy_chain,
            country: geo.country,
            city: geo.city,
            asn: geo.asn,
            user_agent,
        }
    }
}

impl Device for Identity {
    fn name(&self) -> &str {
        "identity"
    }

    fn phases(&self) -> Phases {
        Phases::only(Phase::Request)
    }

    /// Stores the request's `Arc<ClientIdentity>` in `ctx.extensions` and in the request's
    /// extensions (replacing one an earlier identity device stored), and the client's address
    /// as a [`ClientAddr`] request extension. Always continues.
    fn on_request(&self, ctx: &mut RequestCtx, req: &mut request::Parts) -> DeviceResult {
        let peer = ctx.peer();
        let headers = &req.headers;
        let canonical = peer.ip().to_canonical();
        let inputs = recent::Inputs {
            peer: canonical,
            forwarded: client_ip::reads_forwarded(canonical, &self.trusted).then_some(headers),
            agent: self.user_agent.then(|| {
                headers
                    .get(USER_AGENT)
                    .map(|ua| user_agent::capped(ua.as_bytes()))
            }),
        };
        // The requests of one client share its identity (built once per thread).
        let identity = recent::identity(self.id, &inputs, || self.identify(peer, headers));
        req.extensions.insert(ClientAddr(identity.ip));
        req.extensions.insert(identity.clone());
        ctx.extensions.insert(identity);
        Ok(Flow::Continue)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("trusted", &self.trusted)
            .field("geoip", &self.geoip)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// A Tower layer running the identity device alone, for axum and other Tower apps: a
/// [`PipelineLayer`] over a pipeline of just [`Identity`].
///
/// The peer address comes from the [`PeerAddr`](snakeway_core::PeerAddr) request extension
/// (in axum, insert it from `ConnectInfo`); without it the peer is `0.0.0.0`. Handlers read
/// the result with [`ClientIdentity::get`] on the request's extensions (or axum's
/// `Extension<Arc<ClientIdentity>>`).
///
/// The wrapped service gets a request with a [`snakeway_core::Body`] and its errors must
/// convert into [`snakeway_core::Error`] (`Infallible` does); the resulting service is
/// infallible and answers with a `snakeway_core::Body`.
#[derive(Clone, Debug)]
pub struct IdentityLayer {
    inner: PipelineLayer,
}

// === impl IdentityLayer ===

impl IdentityLayer {
    /// A layer running an [`Identity`] with these options.
    pub fn new(options: IdentityOptions) -> Self {
        let device: Arc<dyn Device> = Arc::new(Identity::new(options));
        Self {
            inner: PipelineLayer::new(Pipeline::new(vec![device])),
        }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
