//! WebSocket proxying with a real client and a real server (tokio-tungstenite): echo of text
//! and binary messages, the close handshake, a large message, `max_websockets`, the idle
//! timeout, non-websocket routes, shutdown and reload with an open tunnel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::client::T;
use crate::harness::{Server, Signal};
use crate::upstream::{self, Upstream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket echo server: every text and binary message comes back as it was; the
/// handshake request heads are recorded.
async fn echo_upstream() -> (Upstream, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let up = upstream::raw(move |stream| {
        let log = log.clone();
        Box::pin(async move {
            // The error type is tungstenite's, not ours to shrink.
            #[allow(clippy::result_large_err)]
            let record = |req: &tungstenite::handshake::server::Request,
                          res: tungstenite::handshake::server::Response| {
                log.lock().unwrap().push(req.headers().clone());
                Ok(res)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        })
    })
    .await;
    (up, seen)
}

/// One listener (with `listener_keys`), a service to `upstream`, a websocket route at `/ws`
/// (with `route_keys`) and a plain route at `/`, both to the same service.
fn config(
    upstream: SocketAddr,
    server_keys: &str,
    listener_keys: &str,
    route_keys: &str,
) -> String {
    format!(
        r#"
[server]
threads = 2
{server_keys}

[[listener]]
listen = "127.0.0.1:0"
{listener_keys}

[[service]]
name = "app"
upstreams = [{{ url = "http://{upstream}" }}]

[[route]]
path = "/ws"
service = "app"
websocket = true
{route_keys}

[[route]]
path = "/"
service = "app"
"#
    )
}

async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("ws://{addr}{path}");
    match tokio::time::timeout(T, connect_async(url.as_str())).await {
        Ok(result) => result.map(|(ws, _)| ws),
        Err(_) => panic!("handshake with {url} timed out"),
    }
}

/// The status of a handshake the proxy refused.
async fn refused_status(addr: SocketAddr, path: &str) -> u16 {
    match connect(addr, path).await {
        Ok(_) => panic!("the handshake on {path} succeeded"),
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("handshake on {path} failed without a response: {e}"),
    }
}

/// The next message, within [`T`].
async fn next(ws: &mut Ws) -> Message {
    match tokio::time::timeout(T, ws.next()).await {
        Ok(Some(Ok(msg))) => msg,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(_) => panic!("no message within {T:?}"),
    }
}

async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    assert_eq!(next(ws).await, Message::text(text));
}

/// Waits (up to `limit`) for the tunnel to end: the stream ends or fails, with no message.
async fn ended(ws: &mut Ws, limit: Duration) -> bool {
    match tokio::time::timeout(limit, ws.next()).await {
        Ok(None | Some(Err(_))) => true,
        Ok(Some(Ok(msg))) => panic!("expected the tunnel to end, got {msg:?}"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn text_and_binary_echo_and_the_close_handshake() {
    let (up, seen) = echo_upstream().await;
    let server = Server::start(&config(up.addr, "", "", "")).await;
    let mut ws = connect(server.addr(), "/ws/chat?room=1")
        .await
        .expect("handshake");

    echoes(&mut ws, "hello, upstream").await;
    let binary: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(binary));

    // The handshake reached the upstream with its WebSocket headers and the forwarding ones.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let h = &seen[0];
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(
            h.get("connection")
                .unwrap()
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("upgrade")
        );
        for name in [
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
        ] {
            assert_eq!(h.get_all(name).iter().count(), 1, "{name} sent once");
        }
        assert_eq!(h.get("sec-websocket-version").unwrap(), "13");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert!(h.get("x-request-id").is_some());
    }

    // Close frame both ways: ours is answered with the upstream's, then the stream ends.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the upstream's close frame, got {other:?}"),
    }
    assert!(
        ended(&mut ws, T).await,
        "the tunnel stayed open after close"
    );
}

#[tokio::test]
async fn a_large_message_streams_intact() {
    let (up, _) = echo_upstream().await;
    let server = Server::start(&config(up.addr, "", "", "")).await;
    let mut ws = connect(server.addr(), "/ws").await.expect("handshake");
    let big: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        Ok(Some(Ok(Message::Binary(back)))) => {
            assert_eq!(back.len(), big.len());
            assert!(back[..] == big[..], "the 8 MiB message came back altered");
        }
        other => panic!("expected the 8 MiB message back, got {other:?}"),
    }
    echoes(&mut ws, "still fine").await;
}

#[tokio::test]
async fn max_websockets_refuses_the_next_handshake_with_503() {
    let (up, seen) = echo_upstream().await;
    let server = Server::start(&config(up.addr, "", "", "max_websockets = 1")).await;
    let mut first = connect(server.addr(), "/ws")
        .await
        .expect("first handshake");
    echoes(&mut first, "one").await;

    assert_eq!(refused_status(server.addr(), "/ws").await, 503);
    assert_eq!(seen.lock().unwrap().len(), 1, "the upstream was not asked");
    echoes(&mut first, "the first one still works").await;

    // Closing the first gives its place back.
    first.close(None).await.unwrap();
    assert!(matches!(next(&mut first).await, Message::Close(_)));
    assert!(ended(&mut first, T).await);
    // The upstream has closed its side; the tunnel ends when the client closes its own.
    drop(first);
    let deadline = Instant::now() + T;
    let mut second = loop {
        match connect(server.addr(), "/ws").await {
            Ok(ws) => break ws,
            Err(tungstenite::Error::Http(res)) if res.status() == 503 => {
                assert!(Instant::now() < deadline, "the place was never given back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("second handshake failed: {e}"),
        }
    };
    echoes(&mut second, "two").await;
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_after_the_idle_timeout() {
    let (up, _) = echo_upstream().await;
    let server = Server::start(&config(up.addr, "", "idle_timeout_ms = 2000", "")).await;

    // Traffic keeps a tunnel open well past the idle timeout.
    let mut busy = connect(server.addr(), "/ws").await.expect("handshake");
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        echoes(&mut busy, &format!("ping {i}")).await;
    }

    // A silent one is closed: not before the timeout, and not long after.
    let mut silent = connect(server.addr(), "/ws").await.expect("handshake");
    let opened = Instant::now();
    assert!(
        ended(&mut silent, Duration::from_secs(15)).await,
        "the silent tunnel stayed open"
    );
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}, before the idle timeout"
    );
    assert!(
        server
            .wait_for_log("websocket closed: idle timeout", T)
            .await
    );
}

#[tokio::test]
async fn a_route_without_websocket_never_upgrades() {
    let (recording, seen) = upstream::recording(upstream::echo("plain"), &[]);
    let up = upstream::http(recording).await;
    let server = Server::start(&config(up.addr, "", "", "")).await;
    // `/` is not a websocket route: the upstream sees a plain GET and the client its answer.
    assert_eq!(refused_status(server.addr(), "/chat").await, 200);
    let last = seen.last();
    assert_eq!(last.uri, "/chat");
    assert!(last.header("upgrade").is_none(), "upgrade was forwarded");
    assert!(last.header("sec-websocket-key").is_some());
    // On the websocket route, an upstream that does not switch is answered as is.
    assert_eq!(refused_status(server.addr(), "/ws").await, 200);
    assert_eq!(seen.last().header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn an_unasked_101_is_a_502() {
    // An upstream that switches protocols whatever it is asked.
    let up = upstream::raw(|mut stream| {
        Box::pin(async move {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
                .await;
            let _ = stream.read(&mut buf).await;
        })
    })
    .await;
    let server = Server::start(&config(up.addr, "", "", "")).await;
    let res = crate::client::get(server.addr(), "/plain").await;
    assert_eq!(res.status, 502, "a plain request got a 101 through");
    // A WebSocket handshake on a non-websocket route: never 101 either.
    assert_eq!(refused_status(server.addr(), "/other").await, 502);
    // A connection that switched protocols is never reused for another request.
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn shutdown_drains_an_open_tunnel_then_closes_it() {
    let (up, _) = echo_upstream().await;
    let mut server = Server::start(&config(up.addr, "shutdown_grace_ms = 3000", "", "")).await;
    let mut ws = connect(server.addr(), "/ws").await.expect("handshake");
    echoes(&mut ws, "before").await;

    let term = Instant::now();
    server.signal(Signal::SIGTERM);
    assert!(server.wait_for_log("shutting down", T).await);
    // Within the grace period the tunnel still carries messages.
    echoes(&mut ws, "during the grace period").await;

    let status = server.wait_exit(Duration::from_secs(12)).await;
    let took = term.elapsed();
    assert!(status.is_some(), "still running {took:?} after SIGTERM");
    assert!(
        took >= Duration::from_millis(2500),
        "exited after {took:?}: the open tunnel was not waited for"
    );
    assert!(ended(&mut ws, T).await, "the tunnel outlived the server");
}

#[tokio::test]
async fn a_tunnel_keeps_working_and_counting_across_a_reload() {
    let (up, _) = echo_upstream().await;
    let server = Server::start(&config(up.addr, "", "", "max_websockets = 1")).await;
    let mut ws = connect(server.addr(), "/ws").await.expect("handshake");
    echoes(&mut ws, "before the reload").await;

    let mut reloaded = config(up.addr, "", "", "max_websockets = 1");
    reloaded.push_str("\n[[route]]\npath = \"/new\"\nrespond = { status = 200, body = \"new\" }\n");
    server.rewrite_config(&reloaded);
    server.signal(Signal::SIGHUP);
    assert!(server.wait_for_log("configuration reloaded", T).await);
    assert_eq!(crate::client::get(server.addr(), "/new").await.status, 200);

    echoes(&mut ws, "after the reload").await;
    assert_eq!(
        refused_status(server.addr(), "/ws").await,
        503,
        "the open tunnel no longer counts against its route"
    );
}

#[tokio::test]
async fn the_handshake_passes_the_device_pipeline_first() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (up, seen) = echo_upstream().await;
    let mut toml = config(up.addr, "", "", "");
    toml.push_str("\n[[device]]\ntype = \"request_filter\"\nrequired_headers = [\"x-api-key\"]\n");
    let server = Server::start(&toml).await;
    assert_eq!(refused_status(server.addr(), "/ws").await, 400);
    assert_eq!(seen.lock().unwrap().len(), 0, "the upstream was asked");

    let mut req = format!("ws://{}/ws", server.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-api-key", http::HeaderValue::from_static("k"));
    let (mut ws, _) = tokio::time::timeout(T, connect_async(req))
        .await
        .expect("handshake timed out")
        .expect("handshake");
    echoes(&mut ws, "through the pipeline").await;
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_slot() {
    let (up, _) = echo_upstream().await;
    let mut toml = config(up.addr, "", "max_connections = 1", "");
    toml.push_str("\n[[route]]\npath = \"/plain\"\nrespond = { status = 200, body = \"plain\" }\n");
    let server = Server::start(&toml).await;
    let mut ws = connect(server.addr(), "/ws").await.expect("handshake");
    echoes(&mut ws, "holding the only slot").await;

    // A second connection waits in the accept queue while the tunnel is open...
    let waiting = tokio::spawn(crate::client::get(server.addr(), "/plain"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "served with the slot held by a tunnel"
    );
    echoes(&mut ws, "still open").await;

    // ...and is served once it closes.
    ws.close(None).await.unwrap();
    assert!(matches!(next(&mut ws).await, Message::Close(_)));
    drop(ws);
    let res = tokio::time::timeout(T, waiting)
        .await
        .expect("the waiting request was never served")
        .unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "plain"));
}

#[tokio::test]
async fn a_websocket_route_to_an_http2_service_is_refused_by_config_check() {
    let (up, _) = echo_upstream().await;
    let dir = crate::harness::TestDir::new("ws-h2");
    let toml = config(up.addr, "", "", "").replace("upstreams = [", "http2 = true\nupstreams = [");
    let path = dir.write("snakeway.toml", toml);
    let out = crate::harness::run_cli(
        &["config", "check", "-c", path.to_str().unwrap()],
        &dir.path,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{stderr}");
    assert!(
        stderr.contains("route[0].websocket") && stderr.contains("HTTP/1.1 only"),
        "{stderr}"
    );
}
