//! TLS session resumption on listeners: a returning client skips the full handshake, over
//! TLS 1.3 and TLS 1.2, and across a reload (the ticket key is the process's, not the
//! snapshot's). Checked with rustls clients that keep their sessions in memory.

use std::sync::Arc;
use std::time::Duration;

use rustls::HandshakeKind;

use crate::client::{get_req, send_h1_on};
use crate::harness::{Server, Signal, TestDir};
use crate::pki::{Ca, provider, tls_connect};

const TOML: &str = r#"
[[listener]]
listen = "127.0.0.1:0"
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[route]]
path = "/"
respond = { status = 200, body = "resumed?" }
"#;

async fn start(ca: &Ca, tag: &str) -> Server {
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new(tag);
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    Server::start_in(dir, TOML).await
}

/// A client config trusting `ca`, limited to one TLS version, offering http/1.1. Its default
/// resumption store (in memory) keeps the sessions the server hands out.
fn client(
    ca: &Ca,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects, checks the kind of handshake, and makes one request (which also reads the
/// session tickets the server sent after the handshake).
async fn request(server: &Server, config: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let tls = tls_connect(server.addr(), "proxy.test", config.clone())
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let res = send_h1_on(tls, get_req("proxy.test", "/")).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "resumed?"));
    kind
}

#[tokio::test]
async fn a_returning_tls13_client_resumes() {
    let ca = Ca::new();
    let server = start(&ca, "tls-resume-13").await;
    let config = client(&ca, &rustls::version::TLS13);
    assert_eq!(request(&server, &config).await, HandshakeKind::Full);
    assert_eq!(request(&server, &config).await, HandshakeKind::Resumed);
    // A client without the session still gets a full handshake.
    let stranger = client(&ca, &rustls::version::TLS13);
    assert_eq!(request(&server, &stranger).await, HandshakeKind::Full);
}

#[tokio::test]
async fn a_returning_tls12_client_resumes() {
    let ca = Ca::new();
    let server = start(&ca, "tls-resume-12").await;
    let config = client(&ca, &rustls::version::TLS12);
    assert_eq!(request(&server, &config).await, HandshakeKind::Full);
    assert_eq!(request(&server, &config).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn sessions_resume_across_a_reload() {
    let ca = Ca::new();
    let server = start(&ca, "tls-resume-reload").await;
    let config = client(&ca, &rustls::version::TLS13);
    assert_eq!(request(&server, &config).await, HandshakeKind::Full);
    server.signal(Signal::SIGHUP);
    assert!(
        server
            .wait_for_log("configuration reloaded", Duration::from_secs(10))
            .await,
        "no reload after SIGHUP"
    );
    assert_eq!(request(&server, &config).await, HandshakeKind::Resumed);
}
