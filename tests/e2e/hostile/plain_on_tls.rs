//! Plain HTTP sent to a TLS listener: answered `400` with a body that says so (as nginx does),
//! then closed; a client that sends nothing is still cut at the handshake timeout; real TLS
//! clients are unaffected.

use std::time::Duration;

use crate::client::{curl, get_req, raw, send_h1_on};
use crate::harness::{Server, TestDir};
use crate::pki::{Ca, tls_connect};

const TOLD: &str = "The plain HTTP request was sent to HTTPS port";

#[tokio::test]
async fn plain_http_on_a_tls_port_gets_a_400_that_says_so() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["proxy.test"]);
    let dir = TestDir::new("plain-on-tls");
    dir.write("certs/server.pem", &leaf.cert_pem);
    dir.write("certs/server.key", &leaf.key_pem);
    let server = Server::start_in(
        dir,
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
header_read_timeout_ms = 1000
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[route]]
path = "/"
respond = { status = 200, body = "over tls" }
"#,
    )
    .await;
    let addr = server.addr();

    // A plain request: the answer, then the close.
    let answer = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: proxy.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(answer.status(), Some(400), "{}", answer.text());
    assert!(answer.text().contains(TOLD), "{}", answer.text());
    assert!(answer.closed, "the connection is closed after the answer");

    // A plain POST with a body still unread is answered the same way.
    let answer = raw(
        addr,
        b"POST /form HTTP/1.1\r\nhost: proxy.test\r\ncontent-length: 5\r\n\r\nhello",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(answer.status(), Some(400), "{}", answer.text());
    assert!(answer.closed);

    // curl, told http:// for a TLS port, prints the reason instead of "HTTP/0.9".
    let out = curl(&["-i", &format!("http://{addr}/")]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains(TOLD), "{text}");

    // A client that says nothing is closed at the handshake timeout, unanswered.
    let silent = raw(addr, b"", Duration::from_secs(5)).await;
    assert!(
        silent.closed && silent.bytes.is_empty(),
        "{}",
        silent.text()
    );

    // TLS clients still get through.
    let tls = tls_connect(addr, "proxy.test", ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    let res = send_h1_on(tls, get_req("proxy.test", "/")).await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "over tls");
}
