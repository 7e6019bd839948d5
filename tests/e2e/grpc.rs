//! gRPC through Snakeway with a real client and server (tonic, h2c both ways): unary and
//! server-streaming calls, trailing metadata and the server's own error statuses pass through
//! untouched, and every failure Snakeway generates reaches the client as the right gRPC code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use http::{Request, StatusCode};
use http_body_util::Empty;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::client::{T, send_h2};
use crate::harness::Server;
use crate::upstream;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    text: String,
    /// How many replies a streaming call sends.
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    index: u32,
}

const UNARY: &str = "/test.Echo/Unary";
const STREAM: &str = "/test.Echo/Stream";
const FAIL: &str = "/test.Echo/Fail";
const SLOW: &str = "/test.Echo/Slow";

/// The test service, written by hand on tonic's server API (no code generation):
/// `Unary` echoes, `Stream` sends `count` replies and ends with custom trailing metadata,
/// `Fail` answers NOT_FOUND with a message and metadata, `Slow` never answers.
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

fn metadata(name: &'static str, value: &'static str) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert(name, MetadataValue::from_static(value));
    md
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let response = match req.uri().path() {
                UNARY => {
                    let echo = tower::service_fn(|r: tonic::Request<EchoRequest>| async move {
                        let text = r.into_inner().text;
                        Ok::<_, Status>(tonic::Response::new(EchoReply { text, index: 0 }))
                    });
                    grpc.unary(echo, req).await
                }
                STREAM => {
                    let replies = tower::service_fn(|r: tonic::Request<EchoRequest>| async move {
                        let EchoRequest { text, count } = r.into_inner();
                        let replies = (0..count).map(move |index| {
                            Ok(EchoReply {
                                text: format!("{text} #{index}"),
                                index,
                            })
                        });
                        // A final OK status carrying metadata: tonic sends it as trailers.
                        let end = Status::with_metadata(
                            Code::Ok,
                            "",
                            metadata("x-checksum", "streamed-ok"),
                        );
                        let stream = futures_util::stream::iter(replies.chain([Err(end)]));
                        Ok::<_, Status>(tonic::Response::new(stream))
                    });
                    grpc.server_streaming(replies, req).await
                }
                FAIL => {
                    let fail = tower::service_fn(|_: tonic::Request<EchoRequest>| async {
                        Err::<tonic::Response<EchoReply>, _>(Status::with_metadata(
                            Code::NotFound,
                            "no widget 42 (ünïcode kept)",
                            metadata("x-detail", "from-upstream"),
                        ))
                    });
                    grpc.unary(fail, req).await
                }
                SLOW => {
                    let slow = tower::service_fn(|_: tonic::Request<EchoRequest>| async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, Status>(tonic::Response::new(EchoReply::default()))
                    });
                    grpc.unary(slow, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

/// A tonic server with [`Echo`] on a loopback port; stops when the returned task is dropped
/// with the test's runtime.
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(Echo)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, task)
}

/// One listener; service `grpc` (h2c to `upstream`) routed at `route_path`; then `extra`.
fn config(upstream: &str, service_keys: &str, route_path: &str, extra: &str) -> String {
    format!(
        r#"
[server]
threads = 2
# These tests check what each failure tells a gRPC client; error_detail.rs checks the default.
error_detail = "full"

[[listener]]
listen = "127.0.0.1:0"

[[service]]
name = "grpc"
upstreams = [{{ url = "http://{upstream}" }}]
http2 = true
{service_keys}

[[route]]
path = "{route_path}"
service = "grpc"
{extra}
"#
    )
}

/// A tonic client speaking h2c to `addr`.
async fn client(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(T)
        .connect()
        .await
        .expect("h2c connection to snakeway");
    tonic::client::Grpc::new(channel)
}

async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    request: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<EchoReply>, Status> {
    client.ready().await.expect("client ready");
    let call = client.unary(
        request,
        PathAndQuery::from_static(path),
        ProstCodec::<EchoRequest, EchoReply>::default(),
    );
    tokio::time::timeout(T, call)
        .await
        .expect("the call did not finish in time")
}

fn hello() -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        text: "hello".into(),
        count: 0,
    })
}

/// Asserts a Snakeway-generated status: `code`, a message containing `needle`, and the
/// request id as metadata.
fn assert_generated(status: &Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} does not contain {needle:?}",
        status.message()
    );
    let id = status
        .metadata()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id in {status:?}"));
    assert!(!id.is_empty());
}

#[tokio::test]
async fn unary_and_server_streaming_calls_pass_with_trailers() {
    let (up, _task) = echo_server().await;
    let server = Server::start(&config(&up.to_string(), "", "/", "")).await;
    let mut client = client(server.addr()).await;

    let reply = unary(&mut client, UNARY, hello())
        .await
        .expect("unary call");
    assert_eq!(reply.get_ref().text, "hello");
    assert!(reply.metadata().get("x-request-id").is_some());

    client.ready().await.unwrap();
    let request = tonic::Request::new(EchoRequest {
        text: "tick".into(),
        count: 5,
    });
    let call = client.server_streaming(
        request,
        PathAndQuery::from_static(STREAM),
        ProstCodec::<EchoRequest, EchoReply>::default(),
    );
    let mut stream = tokio::time::timeout(T, call)
        .await
        .unwrap()
        .expect("streaming call")
        .into_inner();
    let mut got = Vec::new();
    while let Some(reply) = tokio::time::timeout(T, stream.message())
        .await
        .unwrap()
        .expect("stream message")
    {
        got.push((reply.index, reply.text));
    }
    let want: Vec<_> = (0..5).map(|i| (i, format!("tick #{i}"))).collect();
    assert_eq!(got, want);
    let trailers = stream
        .trailers()
        .await
        .expect("trailers")
        .expect("the stream ended with trailers");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.to_str().unwrap()),
        Some("streamed-ok"),
        "custom trailing metadata did not reach the client: {trailers:?}"
    );
}

#[tokio::test]
async fn the_servers_error_status_reaches_the_client_unchanged() {
    let (up, _task) = echo_server().await;
    let server = Server::start(&config(&up.to_string(), "", "/", "")).await;
    let mut client = client(server.addr()).await;
    let status = unary(&mut client, FAIL, hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no widget 42 (ünïcode kept)");
    assert_eq!(
        status
            .metadata()
            .get("x-detail")
            .map(|v| v.to_str().unwrap()),
        Some("from-upstream")
    );
}

#[tokio::test]
async fn no_route_is_unimplemented_and_grpc_web_gets_a_page() {
    let (up, _task) = echo_server().await;
    let server = Server::start(&config(&up.to_string(), "", "/other.Service/", "")).await;
    let mut client = client(server.addr()).await;
    let status = unary(&mut client, UNARY, hello()).await.unwrap_err();
    assert_generated(
        &status,
        Code::Unimplemented,
        "no route for /test.Echo/Unary",
    );

    // gRPC-Web is not gRPC: an ordinary 404 page.
    let req = Request::post("http://t.test/test.Echo/Unary")
        .header("content-type", "application/grpc-web+proto")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.status, 404);
    assert!(res.header("grpc-status").is_none());

    // The gRPC answer on the wire: 200, headers only.
    let req = Request::post("http://t.test/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send_h2(server.addr(), req).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("content-type"), Some("application/grpc"));
    assert_eq!(res.header("grpc-status"), Some("12"));
    assert!(res.body.is_empty(), "{:?}", res.text());
    assert!(res.header("x-request-id").is_some());
}

#[tokio::test]
async fn a_dead_upstream_is_unavailable_and_an_open_circuit_too() {
    let dead = upstream::refused_addr();
    let breaker = "[service.circuit_breaker]\nfailure_threshold = 1\nopen_ms = 600000";
    let server = Server::start(&config(&dead.to_string(), breaker, "/", "")).await;
    let mut client = client(server.addr()).await;
    let status = unary(&mut client, UNARY, hello()).await.unwrap_err();
    assert_generated(&status, Code::Unavailable, "refused the connection");
    assert!(
        !status.message().contains("no healthy upstream"),
        "{status:?}"
    );
    // The refusal opened the circuit: now no upstream may take the call.
    let status = unary(&mut client, UNARY, hello()).await.unwrap_err();
    assert_generated(&status, Code::Unavailable, "no healthy upstream");
}

#[tokio::test]
async fn an_upstream_response_timeout_is_deadline_exceeded() {
    let (up, _task) = echo_server().await;
    let server = Server::start(&config(
        &up.to_string(),
        "response_timeout_ms = 300",
        "/",
        "",
    ))
    .await;
    let mut client = client(server.addr()).await;
    let status = unary(&mut client, SLOW, hello()).await.unwrap_err();
    assert_generated(
        &status,
        Code::DeadlineExceeded,
        "did not respond within 300 ms",
    );
}

#[tokio::test]
async fn a_device_refusal_is_permission_denied() {
    let (up, _task) = echo_server().await;
    let device = "[[device]]\ntype = \"request_filter\"\ndeny_headers = [\"x-evil\"]";
    let server = Server::start(&config(&up.to_string(), "", "/test.Echo/", device)).await;
    let mut client = client(server.addr()).await;

    // Through the pipeline, a call the filter lets pass works as before.
    let reply = unary(&mut client, UNARY, hello())
        .await
        .expect("unary call");
    assert_eq!(reply.get_ref().text, "hello");

    let mut refused = hello();
    refused
        .metadata_mut()
        .insert("x-evil", MetadataValue::from_static("1"));
    let status = unary(&mut client, UNARY, refused).await.unwrap_err();
    assert_generated(&status, Code::PermissionDenied, "403 Forbidden");

    // A Snakeway error inside the pipeline is a gRPC status too.
    let status = unary(&mut client, "/other.Service/Call", hello())
        .await
        .unwrap_err();
    assert_generated(
        &status,
        Code::Unimplemented,
        "no route for /other.Service/Call",
    );
}
