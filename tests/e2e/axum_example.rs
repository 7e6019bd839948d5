//! The builtin devices as standalone Tower layers in an axum app (`examples/axum_devices.rs`),
//! served through a real socket and driven by a real client.

use std::time::Duration;

use snakeway_logging::Output;

#[path = "../../examples/axum_devices.rs"]
mod example;

async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn axum_app_runs_identity_filter_and_logging_layers() {
    let dir = std::env::temp_dir().join(format!("snakeway-axum-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let app = example::app(&Output::File(log.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(example::serve(listener, app));

    // The peer (127.0.0.1) is a trusted proxy, so the identity comes from x-forwarded-for.
    let ok = raw_request(
        addr,
        "GET /hello HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 203.0.113.9\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("hello, 203.0.113.9"), "{ok}");
    assert!(ok.to_ascii_lowercase().contains("x-request-id: "), "{ok}");

    let denied = raw_request(
        addr,
        "DELETE /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 405"), "{denied}");
    assert!(
        denied.to_ascii_lowercase().contains("allow: get, head"),
        "{denied}"
    );

    // One JSON line per request, written by the logging layer's writer thread.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<_> = events
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 405], "{lines:?}");
    assert_eq!(events[1]["method"], "DELETE");

    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
