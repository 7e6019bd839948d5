//! The identity device end to end: as a standalone Tower layer in an axum-like stack, and
//! inside a pipeline with another device reading what it stored.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode, request};
use http_body_util::BodyExt;
use snakeway_core::pipeline::{Pipeline, PipelineLayer};
use snakeway_core::{
    Body, Device, DeviceError, DeviceResult, Flow, PeerAddr, Phase, Phases, RequestCtx, ResponseCtx,
};
use snakeway_identity::{
    ClientIdentity, DeviceClass, GeoIp, Identity, IdentityLayer, IdentityOptions,
};
use support::mmdb::{Value, Writer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn geoip() -> GeoIp {
    let mut w = Writer::new("GeoIP2-City");
    w.insert(
        "81.2.69.0/24",
        &Value::map([
            (
                "city",
                Value::map([("names", Value::map([("en", Value::str("London"))]))]),
            ),
            ("country", Value::map([("iso_code", Value::str("GB"))])),
        ]),
    );
    GeoIp::from_bytes(w.build()).unwrap()
}

fn options() -> IdentityOptions {
    IdentityOptions {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        geoip: Some(geoip()),
        user_agent: true,
    }
}

fn request(peer: &str, xff: &[&str]) -> Request<Body> {
    let mut builder = Request::get("/who")
        .header("user-agent", CHROME)
        .extension(PeerAddr(peer.parse().unwrap()));
    for line in xff {
        builder = builder.header("x-forwarded-for", *line);
    }
    builder.body(Body::empty()).unwrap()
}

/// An axum-style handler: reads the identity from the request's extensions and answers with
/// it as JSON; also reports the forwarding header it saw, to show it was left alone.
async fn handler(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let Some(identity) = ClientIdentity::get(req.extensions()) else {
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("no identity"))
            .unwrap());
    };
    let xff: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let json = serde_json::json!({ "identity": identity, "xff": xff });
    Ok(Response::new(Body::from(json.to_string())))
}

async fn call<S>(service: S, req: Request<Body>) -> (StatusCode, serde_json::Value)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let response = service.oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn assert_axum_bounds<L, S>(_: &L)
where
    L: Layer<S> + Clone + Send + Sync + 'static,
    L::Service: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
}

#[tokio::test]
async fn layer_in_a_tower_stack() {
    let layer = IdentityLayer::new(options());
    type Handler = tower::util::ServiceFn<
        fn(
            Request<Body>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>,
    >;
    assert_axum_bounds::<_, Handler>(&layer);

    let service = ServiceBuilder::new().layer(layer).service_fn(handler);

    // Through a trusted proxy: the client is the rightmost untrusted address.
    let (status, json) = call(
        service.clone(),
        request("10.0.0.1:40000", &["6.6.6.6, 81.2.69.160", "10.0.0.2"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let identity = &json["identity"];
    assert_eq!(identity["ip"], "81.2.69.160");
    assert_eq!(
        identity["proxy_chain"],
        serde_json::json!(["10.0.0.1", "10.0.0.2"])
    );
    assert_eq!(identity["country"], "GB");
    assert_eq!(identity["city"], "London");
    assert_eq!(identity["asn"], serde_json::Value::Null);
    assert_eq!(identity["user_agent"]["device"], "desktop");
    assert_eq!(identity["user_agent"]["bot"], false);
    assert_eq!(identity["user_agent"]["browser"], "Chrome");
    // Headers are untouched.
    assert_eq!(
        json["xff"],
        serde_json::json!(["6.6.6.6, 81.2.69.160", "10.0.0.2"])
    );

    // Directly from an untrusted client spoofing the header: the peer.
    let (_, json) = call(service.clone(), request("81.2.69.7:40000", &["10.0.0.9"])).await;
    assert_eq!(json["identity"]["ip"], "81.2.69.7");
    assert_eq!(json["identity"]["proxy_chain"], serde_json::json!([]));
    assert_eq!(json["identity"]["country"], "GB");

    // IPv6 peer without a GeoIP entry.
    let (_, json) = call(service, request("[2001:db8::5]:443", &[])).await;
    assert_eq!(json["identity"]["ip"], "2001:db8::5");
    assert_eq!(json["identity"]["country"], serde_json::Value::Null);
}

#[tokio::test]
async fn shortcut_without_geoip_or_user_agent() {
    let service = ServiceBuilder::new()
        .layer(Identity::layer(IdentityOptions::default()))
        .service_fn(handler);
    let (status, json) = call(service, request("192.0.2.1:1000", &["10.0.0.1"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json["identity"],
        serde_json::json!({
            "ip": "192.0.2.1",
            "proxy_chain": [],
            "country": null,
            "city": null,
            "asn": null,
            "user_agent": null,
        })
    );
}

#[tokio::test]
async fn without_peer_addr_the_peer_is_unspecified() {
    let service = ServiceBuilder::new()
        .layer(IdentityLayer::new(IdentityOptions::default()))
        .service_fn(handler);
    let req = Request::get("/").body(Body::empty()).unwrap();
    let (_, json) = call(service, req).await;
    assert_eq!(json["identity"]["ip"], "0.0.0.0");
}

/// A device placed after identity: reads the identity in `on_request` and `on_response`.
struct Reader {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Device for Reader {
    fn name(&self) -> &str {
        "reader"
    }
    fn phases(&self) -> Phases {
        Phases::only(Phase::Request).with(Phase::Response)
    }
    fn on_request(&self, ctx: &mut RequestCtx, _: &mut request::Parts) -> DeviceResult {
        let identity = ClientIdentity::get(&ctx.extensions).expect("identity ran first");
        self.seen.lock().unwrap().push(format!(
            "request {} bot={} device={:?}",
            identity.ip,
            identity.is_bot(),
            identity.device()
        ));
        Ok(Flow::Continue)
    }
    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        _: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        let identity = ClientIdentity::get(&ctx.extensions).expect("kept in the context");
        self.seen
            .lock()
            .unwrap()
            .push(format!("response {}", identity.ip));
        Ok(())
    }
}

#[tokio::test]
async fn later_devices_read_it_from_the_context() {
    let identity = Identity::new(IdentityOptions {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        geoip: None,
        user_agent: true,
    });
    assert_eq!(identity.name(), "identity");
    assert_eq!(identity.phases(), Phases::only(Phase::Request));

    let seen = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::new(vec![
        Arc::new(identity),
        Arc::new(Reader { seen: seen.clone() }),
    ]);
    let service = PipelineLayer::new(pipeline).layer(service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    }));
    let mut req = request("[::ffff:10.1.2.3]:9", &["2001:db8::1, fd00::7"]);
    req.headers_mut().insert(
        "user-agent",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
            .parse()
            .unwrap(),
    );
    let response = service.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            format!(
                "request 2001:db8::1 bot=true device={:?}",
                Some(DeviceClass::Bot)
            ),
            "response 2001:db8::1".to_owned(),
        ]
    );
}

#[test]
fn identify_directly() {
    let identity = Identity::new(options());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-forwarded-for", "81.2.69.1, 10.0.0.3".parse().unwrap());
    let peer: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let id = identity.identify(peer, &headers);
    assert_eq!(id.ip, "81.2.69.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        id.proxy_chain,
        ["10.0.0.1", "10.0.0.3"]
            .map(|s| s.parse::<IpAddr>().unwrap())
            .to_vec()
    );
    assert_eq!(id.country.as_deref(), Some("GB"));
    // No user-agent header: nothing parsed.
    assert_eq!(id.user_agent, None);
    assert_eq!(id.device(), None);
    assert!(!id.is_bot());
}
