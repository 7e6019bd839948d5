//! A client that lets its keep-alive connection park (src/conn/park.rs), then trickles half a
//! head: `header_read_timeout_ms` still cuts it off, counted from the head's first byte (a
//! parked connection is bounded by `idle_timeout_ms` alone).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::client::{T, connect, read_one_response, read_until_close};
use crate::harness::Server;

const CONFIG: &str = r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
header_read_timeout_ms = 300
idle_timeout_ms = 20000

[[route]]
path = "/"
respond = { status = 200, body = "hello" }
"#;

#[tokio::test]
async fn half_a_head_after_a_park_is_cut_off_by_header_read_timeout() {
    let server = Server::start_logging(CONFIG, "info,snakeway::conn::park=trace").await;
    let mut stream = connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut stream).await.status, 200);
    assert!(
        server.wait_for_log("connection parked", T).await,
        "the connection did not park; log:\n{}",
        server.log_text()
    );
    // Parked for longer than the header timeout: only the idle timeout bounds a parked
    // connection, so it is still served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut stream).await.status, 200);
    assert!(server.wait_for_log_count("connection parked", 2, T).await);

    // Now half a head, and nothing more.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n")
        .await
        .unwrap();
    let raw = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        raw.closed,
        "half a head after a park was not cut off within 5 s"
    );
    assert!(
        raw.elapsed >= Duration::from_millis(200),
        "cut off after {:?}, before header_read_timeout_ms = 300",
        raw.elapsed
    );
    assert!(
        raw.elapsed < Duration::from_millis(2500),
        "cut off only after {:?} (header_read_timeout_ms = 300, idle_timeout_ms = 20000)",
        raw.elapsed
    );
    assert!(
        raw.bytes.is_empty() || raw.text().starts_with("HTTP/1.1 408"),
        "unexpected answer: {:?}",
        raw.text()
    );
}
