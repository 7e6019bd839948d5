//! Static files (issue 5) through the real server: serving, redirects, validators and 304s,
//! ranges, compression, listings, size limits, streaming in bounded memory, and the safety
//! rules, checked with raw requests that no well-behaved client would send.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;

use crate::client::{self, Resp, T, get, parse_response, raw, raw_exchange};
use crate::harness::{Server, TestDir};

const SECRET: &str = "TOP-SECRET-DO-NOT-SERVE";

/// A test dir holding `site/` (the root) and `outside/secret.txt` next to it, with links
/// from the root to the outside.
fn site() -> TestDir {
    let dir = TestDir::new("static");
    dir.write("outside/secret.txt", SECRET);
    dir.write("site/index.html", "<h1>home</h1>");
    dir.write("site/hello.txt", "hello world\n");
    dir.write("site/data.json", "{\"ok\":true}");
    dir.write("site/img.png", [0x89, b'P', b'N', b'G', 0, 1, 2, 3]);
    dir.write("site/docs/index.html", "docs home");
    dir.write("site/sub/file.txt", "in sub");
    dir.write("site/range.bin", b"0123456789abcdef");
    dir.write("site/.env", SECRET);
    dir.write("site/.git/config", SECRET);
    dir.write("site/sub/.hidden", SECRET);
    dir.write("site/%2e%2e/literal.txt", "a literal %2e%2e directory");
    std::os::unix::fs::symlink(dir.join("outside/secret.txt"), dir.join("site/leak.txt")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), dir.join("site/leakdir")).unwrap();
    std::os::unix::fs::symlink(dir.join("site/hello.txt"), dir.join("site/alias.txt")).unwrap();
    dir
}

fn config(extra: &str) -> String {
    format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/"
static_dir = "site"
{extra}
"#
    )
}

async fn start(dir: TestDir, extra: &str) -> Server {
    Server::start_in(dir, &config(extra)).await
}

async fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(server, "GET", path, headers).await
}

async fn request(server: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "static.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client::send_h1(server.addr(), req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[tokio::test]
async fn serves_files_with_types_validators_and_methods() {
    let server = start(site(), "cache_control = \"public, max-age=60\"").await;
    let res = get(server.addr(), "/hello.txt").await;
    assert_eq!((res.status, res.text().as_str()), (200, "hello world\n"));
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(res.header("content-length"), Some("12"));
    assert_eq!(res.header("accept-ranges"), Some("bytes"));
    assert_eq!(res.header("cache-control"), Some("public, max-age=60"));
    assert!(res.header("etag").is_some_and(|e| e.starts_with('"')));
    assert!(
        res.header("last-modified")
            .is_some_and(|d| d.ends_with(" GMT"))
    );
    assert!(res.header("x-request-id").is_some());
    assert_eq!(
        get(server.addr(), "/data.json")
            .await
            .header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        get(server.addr(), "/img.png").await.header("content-type"),
        Some("image/png")
    );
    let res = get(server.addr(), "/").await;
    assert_eq!((res.status, res.text().as_str()), (200, "<h1>home</h1>"));
    assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        get(server.addr(), "/alias.txt").await.text(),
        "hello world\n"
    );
    assert_eq!(get(server.addr(), "/missing.txt").await.status, 404);
    // A literal directory named `%2e%2e`, reached with `%252e%252e`: one decoding only.
    assert_eq!(
        get(server.addr(), "/%252e%252e/literal.txt").await.text(),
        "a literal %2e%2e directory"
    );

    // HEAD: the same head, no body (read raw, so nothing is inferred by a client).
    let head = raw_exchange(
        server.addr(),
        b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("12"));
    assert!(head.body.is_empty());

    // Other methods: 405 with Allow.
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let req = format!(
            "{method} /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let res = raw_exchange(server.addr(), req.as_bytes()).await;
        assert_eq!(res.status, 405, "{method}");
        assert_eq!(res.header("allow"), Some("GET, HEAD"), "{method}");
    }

    // HTTP/2 too.
    let req = Request::get("http://static.test/hello.txt")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = client::send_h2(server.addr(), req).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "hello world\n"));
}

#[tokio::test]
async fn directories_redirect_and_serve_their_index_under_a_prefix() {
    let dir = site();
    let server = Server::start_in(
        dir,
        r#"
[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/static"
static_dir = "site"
index = "file.txt"

[[route]]
path = "/plain"
static_dir = "site"
index = ""
"#,
    )
    .await;
    let res = get(server.addr(), "/static/sub").await;
    assert_eq!(res.status, 301);
    assert_eq!(res.header("location"), Some("/static/sub/"));
    let res = get(server.addr(), "/static/sub?v=1").await;
    assert_eq!(res.header("location"), Some("/static/sub/?v=1"));
    let res = get(server.addr(), "/static").await;
    assert_eq!(
        (res.status, res.header("location")),
        (301, Some("/static/"))
    );
    let res = get(server.addr(), "/static/sub/").await;
    assert_eq!((res.status, res.text().as_str()), (200, "in sub"));
    let res = get(server.addr(), "/static/hello.txt").await;
    assert_eq!((res.status, res.text().as_str()), (200, "hello world\n"));
    // No file.txt in docs/, no listing: 404. Index off: 404.
    assert_eq!(get(server.addr(), "/static/docs/").await.status, 404);
    assert_eq!(get(server.addr(), "/plain/docs/").await.status, 404);
    assert_eq!(
        get(server.addr(), "/plain/docs/index.html").await.text(),
        "docs home"
    );
}

#[tokio::test]
async fn conditional_requests_and_ranges() {
    let server = start(site(), "cache_control = \"no-cache\"").await;
    let a = server.addr();
    let first = get(a, "/range.bin").await;
    let etag = first.header("etag").unwrap().to_owned();
    let lm = first.header("last-modified").unwrap().to_owned();
    let old = "Sun, 06 Nov 1994 08:49:37 GMT";

    let res = get_with(&server, "/range.bin", &[("if-none-match", &etag)]).await;
    assert_eq!(res.status, 304);
    assert!(res.body.is_empty());
    assert_eq!(res.header("etag"), Some(etag.as_str()));
    assert_eq!(res.header("cache-control"), Some("no-cache"));
    assert_eq!(
        get_with(&server, "/range.bin", &[("if-modified-since", &lm)])
            .await
            .status,
        304
    );
    assert_eq!(
        get_with(&server, "/range.bin", &[("if-modified-since", old)])
            .await
            .status,
        200
    );
    // If-None-Match takes precedence over If-Modified-Since (RFC 9110 §13.2.2).
    let both = [
        ("if-none-match", "\"stale\""),
        ("if-modified-since", lm.as_str()),
    ];
    assert_eq!(get_with(&server, "/range.bin", &both).await.status, 200);
    assert_eq!(
        get_with(&server, "/range.bin", &[("if-match", "\"stale\"")])
            .await
            .status,
        412
    );
    assert_eq!(
        get_with(&server, "/range.bin", &[("if-unmodified-since", old)])
            .await
            .status,
        412
    );

    for (range, body, content_range) in [
        ("bytes=0-3", "0123", "bytes 0-3/16"),
        ("bytes=10-", "abcdef", "bytes 10-15/16"),
        ("bytes=-4", "cdef", "bytes 12-15/16"),
    ] {
        let res = get_with(&server, "/range.bin", &[("range", range)]).await;
        assert_eq!((res.status, res.text().as_str()), (206, body), "{range}");
        assert_eq!(res.header("content-range"), Some(content_range));
        assert_eq!(
            res.header("content-length"),
            Some(&body.len().to_string()[..])
        );
    }
    let res = get_with(&server, "/range.bin", &[("range", "bytes=16-")]).await;
    assert_eq!(res.status, 416);
    assert_eq!(res.header("content-range"), Some("bytes */16"));
    let ranged = |if_range: &str| {
        let if_range = if_range.to_owned();
        let server = &server;
        async move {
            get_with(
                server,
                "/range.bin",
                &[("range", "bytes=0-0"), ("if-range", &if_range)],
            )
            .await
            .status
        }
    };
    assert_eq!(ranged(&etag).await, 206);
    assert_eq!(ranged(&lm).await, 206);
    assert_eq!(ranged("\"stale\"").await, 200);
    assert_eq!(ranged(old).await, 200);
}

#[tokio::test]
async fn compression_with_q_values_precompressed_siblings_and_vary() {
    let dir = site();
    let mut page = String::new();
    for i in 0..600 {
        page.push_str(&format!("<p>line {i} of a compressible page</p>\n"));
    }
    dir.write("site/page.html", &page);
    dir.write("site/app.js", "x".repeat(4000));
    dir.write("site/app.js.gz", "PRECOMPRESSED-GZ");
    dir.write("site/photo.jpg", page.as_bytes());
    let server = start(
        dir,
        "compression = { gzip = true, brotli = true, min_size = 1024 }",
    )
    .await;
    let a = server.addr();

    let res = get_with(&server, "/page.html", &[("accept-encoding", "gzip")]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-encoding"), Some("gzip"));
    assert_eq!(res.header("vary"), Some("accept-encoding"));
    assert!(res.body.len() < page.len() / 4, "{} bytes", res.body.len());
    let res = get_with(
        &server,
        "/page.html",
        &[("accept-encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(res.header("content-encoding"), Some("br"));
    let res = get_with(
        &server,
        "/page.html",
        &[("accept-encoding", "br;q=0.1, gzip;q=0.9")],
    )
    .await;
    assert_eq!(res.header("content-encoding"), Some("gzip"));
    let res = get_with(
        &server,
        "/page.html",
        &[("accept-encoding", "gzip;q=0, br;q=0")],
    )
    .await;
    assert_eq!(res.header("content-encoding"), None);
    assert_eq!(res.text(), page);
    let res = get(a, "/page.html").await;
    assert_eq!(
        (res.header("content-encoding"), res.header("vary")),
        (None, Some("accept-encoding"))
    );

    // A range is never compressed.
    let res = get_with(
        &server,
        "/page.html",
        &[("accept-encoding", "gzip, br"), ("range", "bytes=0-2")],
    )
    .await;
    assert_eq!((res.status, res.header("content-encoding")), (206, None));
    assert_eq!(res.text(), "<p>");
    // Already-compressed types and small files are sent as they are.
    let res = get_with(&server, "/photo.jpg", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(
        (res.header("content-encoding"), res.header("vary")),
        (None, None)
    );
    let res = get_with(&server, "/hello.txt", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(res.header("content-encoding"), None);

    // The precompressed sibling is sent byte for byte.
    let res = get_with(&server, "/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(res.header("content-encoding"), Some("gzip"));
    assert_eq!(res.text(), "PRECOMPRESSED-GZ");

    // A real client decodes both codings to the original.
    for coding in ["gzip", "br"] {
        let url = format!("http://{a}/page.html");
        let out = client::curl(&[
            "--compressed",
            "-H",
            &format!("accept-encoding: {coding}"),
            &url,
        ])
        .await;
        assert!(
            out.status.success(),
            "{coding}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), page, "{coding}");
        let head = client::curl(&["-sI", "-H", &format!("accept-encoding: {coding}"), &url]).await;
        assert!(
            String::from_utf8_lossy(&head.stdout)
                .to_ascii_lowercase()
                .contains(&format!("content-encoding: {coding}")),
            "{coding}"
        );
    }
}

/// Every way of naming something outside the root, or a dotfile, sent as raw bytes: never
/// the secret's bytes, always 400, 403 or 404.
#[tokio::test]
async fn nothing_outside_the_root_or_hidden_is_ever_served() {
    let server = start(site(), "directory_listing = true").await;
    let targets = [
        "/../outside/secret.txt",
        "/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/.%2e/outside/secret.txt",
        "/%2e./outside/secret.txt",
        "/sub/../../outside/secret.txt",
        "/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/./../outside/secret.txt",
        "//../outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/..%2Foutside/secret.txt",
        "/%2e%2e%2foutside%2fsecret.txt",
        "/sub%2f..%2f..%2foutside%2fsecret.txt",
        "/..%5coutside%5csecret.txt",
        "/..\\outside\\secret.txt",
        "/%5c..%5coutside%5csecret.txt",
        "/%252e%252e/outside/secret.txt",
        "/%c0%ae%c0%ae/outside/secret.txt",
        "/%e0%80%ae%e0%80%ae/outside/secret.txt",
        "/..%00/outside/secret.txt",
        "/hello.txt%00.html",
        "/leak.txt",
        "/leakdir/secret.txt",
        "/leakdir/",
        "/leakdir",
        "/.env",
        "/%2eenv",
        "/%2Eenv",
        "/.git/config",
        "/%2egit/config",
        "/.git/",
        "/sub/.hidden",
        "/sub/%2ehidden",
        "http://static.test/../outside/secret.txt",
        "http://static.test/%2e%2e/outside/secret.txt",
    ];
    for target in targets {
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: static.test\r\nConnection: close\r\n\r\n");
        let r = raw(server.addr(), req.as_bytes(), T).await;
        let text = r.text();
        assert!(
            !text.contains(SECRET),
            "{target} leaked the secret:\n{text}"
        );
        let status = parse_response(&r.bytes).map(|p| p.status);
        assert!(
            matches!(status, Some(400 | 403 | 404)),
            "{target}: expected 400/403/404, got {status:?}:\n{text}"
        );
    }
    // The listing of the root leaves out dotfiles and links that leave the root.
    let listing = get(server.addr(), "/").await;
    assert_eq!(listing.status, 200, "index.html is served, not the listing");
    let listing = get(server.addr(), "/sub/").await;
    assert!(!listing.text().contains("hidden"), "{}", listing.text());
}

#[tokio::test]
async fn directory_listing_is_escaped_and_off_by_default() {
    let dir = site();
    dir.write("site/files/a b&c.txt", "12345");
    dir.write("site/files/<script>x.txt", "1");
    dir.write("site/files/.dot", "1");
    dir.write("site/files/inner/deep.txt", "1");
    let off = start(dir, "").await;
    assert_eq!(get(off.addr(), "/files/").await.status, 404);
    drop(off);

    let dir = site();
    dir.write("site/files/a b&c.txt", "12345");
    dir.write("site/files/<script>x.txt", "1");
    dir.write("site/files/.dot", "1");
    dir.write("site/files/inner/deep.txt", "1");
    let on = start(dir, "directory_listing = true").await;
    let res = get(on.addr(), "/files/").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
    let html = res.text();
    assert!(
        html.contains("<a href=\"a%20b%26c.txt\">a b&amp;c.txt</a>"),
        "{html}"
    );
    assert!(html.contains("<td class=\"n\">5</td>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;x.txt") && !html.contains("<script>"),
        "{html}"
    );
    assert!(html.contains("<a href=\"inner/\">inner/</a>"), "{html}");
    assert!(html.contains(" GMT</td>"), "{html}");
    assert!(!html.contains(".dot"), "{html}");
    // Links in the listing work.
    assert_eq!(get(on.addr(), "/files/a%20b%26c.txt").await.text(), "12345");
}

#[tokio::test]
async fn max_file_size_refuses_larger_files_with_404() {
    let dir = site();
    dir.write("site/small.bin", vec![7u8; 1000]);
    dir.write("site/big.bin", vec![7u8; 1001]);
    let server = start(dir, "max_file_size = 1000").await;
    assert_eq!(get(server.addr(), "/small.bin").await.status, 200);
    let res = get(server.addr(), "/big.bin").await;
    assert_eq!(res.status, 404);
    assert!(!res.body.contains(&7u8));
}

/// The cache trusts an entry for one second (`CacheOptions::revalidate_after`), then sees the
/// change; until then it serves the previous version whole (bytes and validators together).
#[tokio::test]
async fn changed_files_are_served_fresh_within_a_second() {
    let dir = site();
    let path = dir.join("site/hello.txt");
    let server = start(dir, "").await;
    let a = server.addr();
    let first = get(a, "/hello.txt").await;
    assert_eq!(first.text(), "hello world\n");
    std::fs::write(&path, "changed!").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(2500);
    loop {
        let res = get(a, "/hello.txt").await;
        if res.text() == "changed!" {
            assert_ne!(res.header("etag"), first.header("etag"));
            break;
        }
        assert_eq!(res.text(), "hello world\n", "a mix of versions");
        assert_eq!(
            res.header("etag"),
            first.header("etag"),
            "a mix of versions"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "still stale after 2.5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(a, "/hello.txt").await.status, 404);
}

/// A 20 MiB file, three downloads at once (one of them a range) plus a 4 MiB one compressed
/// on the fly: the server's peak RSS stays under 96 MiB.
#[tokio::test]
async fn large_files_stream_in_bounded_memory() {
    let dir = site();
    let mut big = Vec::with_capacity(20 << 20);
    let mut x: u32 = 1;
    while big.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.extend_from_slice(format!("{x:08x} ").as_bytes());
    }
    big.truncate(20 << 20);
    dir.write("site/big.txt", &big);
    // Compressed on the fly: smaller, so that a debug build's compressor finishes in time.
    dir.write("site/big.css", &big[..4 << 20]);
    let server = start(dir, "max_file_size = 31457280").await;
    let before = server.peak_rss_kib();
    let a = server.addr();
    let (r1, r2, r3, r4) = tokio::join!(
        get(a, "/big.txt"),
        get(a, "/big.txt"),
        async {
            let req = Request::get("/big.css")
                .header("host", "t")
                .header("accept-encoding", "gzip")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client::send_h1(a, req).await.unwrap()
        },
        async {
            let req = Request::get("/big.txt")
                .header("host", "t")
                .header("range", "bytes=1000-")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client::send_h1(a, req).await.unwrap()
        },
    );
    for r in [&r1, &r2] {
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), big.len());
        assert!(r.body == big[..], "body differs");
    }
    assert_eq!(r3.header("content-encoding"), Some("gzip"));
    assert!(!r3.body.is_empty() && r3.body.len() < 4 << 20);
    assert_eq!(r4.status, 206);
    assert!(r4.body == big[1000..]);
    let peak = server.peak_rss_kib();
    eprintln!("peak RSS: {before} KiB at start, {peak} KiB after the downloads");
    assert!(peak < 96 * 1024, "peak RSS {peak} KiB");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
