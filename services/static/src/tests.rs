//! Service-level tests: requests through `StaticFiles::serve` against a temporary directory.
//! (Raw-socket tests of the whole server are in `tests/e2e/static_files.rs`.)

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use snakeway_core::Body;

use crate::{CacheOptions, CompressionOptions, StaticFiles, StaticOptions};

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "snakeway-static-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn get(files: &StaticFiles, path: &str, headers: &[(&str, &str)]) -> (Response<()>, Vec<u8>) {
    send(files, "GET", path, headers).await
}

async fn send(
    files: &StaticFiles,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response<()>, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = files.serve(req.body(Body::empty()).unwrap()).await;
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (Response::from_parts(parts, ()), bytes)
}

fn h<'a>(res: &'a Response<()>, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

fn text(n: usize) -> Vec<u8> {
    let words = [
        "static ",
        "files ",
        "served ",
        "fast ",
        "and ",
        "safely ",
        "snakeway ",
    ];
    let mut out = Vec::with_capacity(n);
    let mut i = 7usize;
    while out.len() < n {
        i = i.wrapping_mul(31).wrapping_add(17) % 1009;
        out.extend_from_slice(words[i % words.len()].as_bytes());
    }
    out.truncate(n);
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Both cache modes: everything in memory, and everything streamed from disk.
fn both(opts: impl Fn() -> StaticOptions) -> [StaticFiles; 2] {
    [
        StaticFiles::new(opts()),
        StaticFiles::new(opts().with_cache(CacheOptions {
            max_bytes: 0,
            ..CacheOptions::default()
        })),
    ]
}

#[tokio::test]
async fn serves_files_with_types_and_validators() {
    let d = Dir::new();
    d.write("hello.txt", "hi");
    d.write("a/b.css", "b{}");
    d.write("img.png", [0x89, b'P', b'N', b'G']);
    for files in both(|| StaticOptions::new(&d.0)) {
        let (res, body) = get(&files, "/hello.txt", &[]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(body, b"hi");
        assert_eq!(h(&res, "content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(h(&res, "content-length"), Some("2"));
        assert_eq!(h(&res, "accept-ranges"), Some("bytes"));
        assert!(h(&res, "etag").unwrap().starts_with('"'));
        assert!(h(&res, "last-modified").unwrap().ends_with(" GMT"));
        assert_eq!(h(&res, "vary"), None, "too small to compress");
        assert_eq!(h(&res, "cache-control"), None);

        let (res, body) = get(&files, "/a/b.css", &[]).await;
        assert_eq!((res.status(), &body[..]), (StatusCode::OK, &b"b{}"[..]));
        assert_eq!(h(&res, "content-type"), Some("text/css; charset=utf-8"));
        let (res, _) = get(&files, "/img.png", &[]).await;
        assert_eq!(h(&res, "content-type"), Some("image/png"));

        let (res, body) = send(&files, "HEAD", "/hello.txt", &[]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(h(&res, "content-length"), Some("2"));
        assert!(body.is_empty());

        assert_eq!(get(&files, "/nope.txt", &[]).await.0.status(), 404);
        assert_eq!(get(&files, "/hello.txt/", &[]).await.0.status(), 404);
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let d = Dir::new();
    d.write("f.txt", "x");
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let (res, _) = send(&files, m, "/f.txt", &[]).await;
        assert_eq!(res.status(), 405, "{m}");
        assert_eq!(h(&res, "allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn index_files_and_trailing_slash_redirects() {
    let d = Dir::new();
    d.write("index.html", "root index");
    d.write("docs/index.html", "docs index");
    d.write("docs/start.htm", "start");
    d.write("empty/x.txt", "x");
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    let (res, body) = get(&files, "/", &[]).await;
    assert_eq!(
        (res.status().as_u16(), &body[..]),
        (200, &b"root index"[..])
    );
    assert_eq!(h(&res, "content-type"), Some("text/html; charset=utf-8"));
    let (res, body) = get(&files, "/docs/", &[]).await;
    assert_eq!(
        (res.status().as_u16(), &body[..]),
        (200, &b"docs index"[..])
    );
    let (res, _) = get(&files, "/docs?x=1", &[]).await;
    assert_eq!(res.status(), 301);
    assert_eq!(h(&res, "location"), Some("/docs/?x=1"));
    // No index and no listing: 404.
    assert_eq!(get(&files, "/empty/", &[]).await.0.status(), 404);

    // A custom index name, and a route prefix.
    let files = StaticFiles::new(
        StaticOptions::new(&d.0)
            .with_prefix("/site/")
            .with_index(Some("start.htm")),
    );
    let (res, body) = get(&files, "/site/docs/", &[]).await;
    assert_eq!((res.status().as_u16(), &body[..]), (200, &b"start"[..]));
    let (res, _) = get(&files, "/site", &[]).await;
    assert_eq!(res.status(), 301);
    assert_eq!(h(&res, "location"), Some("/site/"));
    let (res, _) = get(&files, "/site/docs", &[]).await;
    assert_eq!(h(&res, "location"), Some("/site/docs/"));
    assert_eq!(
        get(&files, "/site/", &[]).await.0.status(),
        404,
        "no start.htm at the root"
    );
    assert_eq!(get(&files, "/other/docs/", &[]).await.0.status(), 404);

    // Index off.
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_index(None));
    assert_eq!(get(&files, "/docs/", &[]).await.0.status(), 404);
}

#[tokio::test]
async fn max_file_size_refuses_with_404() {
    let d = Dir::new();
    d.write("small.bin", vec![1u8; 100]);
    d.write("big.bin", vec![1u8; 101]);
    for files in both(|| StaticOptions::new(&d.0).with_max_file_size(100)) {
        assert_eq!(get(&files, "/small.bin", &[]).await.0.status(), 200);
        assert_eq!(get(&files, "/big.bin", &[]).await.0.status(), 404);
    }
    // Without the option, no limit: a file above the 10 MiB that used to be the default.
    let big = d.write("huge.bin", vec![2u8; (10 << 20) + 1]);
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    let (res, body) = send(&files, "HEAD", "/huge.bin", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(h(&res, "content-length"), Some("10485761"));
    assert!(body.is_empty());
    std::fs::remove_file(big).unwrap();
}

#[tokio::test]
async fn conditional_requests_follow_rfc_9110_precedence() {
    let d = Dir::new();
    d.write("f.txt", "content");
    for files in both(|| StaticOptions::new(&d.0).with_cache_control(Some("public, max-age=60"))) {
        let (res, _) = get(&files, "/f.txt", &[]).await;
        let etag = h(&res, "etag").unwrap().to_owned();
        let lm = h(&res, "last-modified").unwrap().to_owned();
        assert_eq!(h(&res, "cache-control"), Some("public, max-age=60"));

        let (res, body) = get(&files, "/f.txt", &[("if-none-match", &etag)]).await;
        assert_eq!(res.status(), 304);
        assert!(body.is_empty());
        assert_eq!(h(&res, "etag"), Some(&etag[..]));
        assert_eq!(h(&res, "cache-control"), Some("public, max-age=60"));
        let weak = format!("W/{etag}");
        let list = format!("\"zzz\", {weak}");
        assert_eq!(
            get(&files, "/f.txt", &[("if-none-match", &list)])
                .await
                .0
                .status(),
            304
        );
        assert_eq!(
            get(&files, "/f.txt", &[("if-none-match", "*")])
                .await
                .0
                .status(),
            304
        );
        assert_eq!(
            get(&files, "/f.txt", &[("if-modified-since", &lm)])
                .await
                .0
                .status(),
            304
        );
        assert_eq!(
            get(
                &files,
                "/f.txt",
                &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]
            )
            .await
            .0
            .status(),
            200
        );
        assert_eq!(
            get(&files, "/f.txt", &[("if-modified-since", "garbage")])
                .await
                .0
                .status(),
            200
        );
        // If-None-Match wins over If-Modified-Since, both ways.
        assert_eq!(
            get(
                &files,
                "/f.txt",
                &[("if-none-match", "\"other\""), ("if-modified-since", &lm)]
            )
            .await
            .0
            .status(),
            200
        );
        assert_eq!(
            get(
                &files,
                "/f.txt",
                &[
                    ("if-none-match", &etag),
                    ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
                ]
            )
            .await
            .0
            .status(),
            304
        );
        // If-Match (strong) and If-Unmodified-Since → 412.
        assert_eq!(
            get(&files, "/f.txt", &[("if-match", "\"other\"")])
                .await
                .0
                .status(),
            412
        );
        assert_eq!(
            get(&files, "/f.txt", &[("if-match", &weak)])
                .await
                .0
                .status(),
            412
        );
        assert_eq!(
            get(&files, "/f.txt", &[("if-match", &etag)])
                .await
                .0
                .status(),
            200
        );
        assert_eq!(
            get(
                &files,
                "/f.txt",
                &[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]
            )
            .await
            .0
            .status(),
            412
        );
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(
            get(
                &files,
                "/f.txt",
                &[
                    ("if-match", &etag),
                    ("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
                ]
            )
            .await
            .0
            .status(),
            200
        );
        // HEAD is conditional too.
        assert_eq!(
            send(&files, "HEAD", "/f.txt", &[("if-none-match", &etag)])
                .await
                .0
                .status(),
            304
        );
    }
}

#[tokio::test]
async fn ranges() {
    let d = Dir::new();
    d.write("r.bin", b"0123456789");
    d.write("empty.bin", b"");
    for files in both(|| StaticOptions::new(&d.0)) {
        for (range, want, content_range) in [
            ("bytes=0-3", &b"0123"[..], "bytes 0-3/10"),
            ("bytes=7-", b"789", "bytes 7-9/10"),
            ("bytes=-2", b"89", "bytes 8-9/10"),
            ("bytes=5-100", b"56789", "bytes 5-9/10"),
            ("bytes=-20", b"0123456789", "bytes 0-9/10"),
        ] {
            let (res, body) = get(&files, "/r.bin", &[("range", range)]).await;
            assert_eq!(res.status(), 206, "{range}");
            assert_eq!(body, want, "{range}");
            assert_eq!(h(&res, "content-range"), Some(content_range));
            assert_eq!(h(&res, "content-length"), Some(&want.len().to_string()[..]));
        }
        for range in ["bytes=10-", "bytes=10-20", "bytes=-0"] {
            let (res, body) = get(&files, "/r.bin", &[("range", range)]).await;
            assert_eq!(res.status(), 416, "{range}");
            assert_eq!(h(&res, "content-range"), Some("bytes */10"));
            assert!(body.is_empty());
        }
        assert_eq!(
            get(&files, "/empty.bin", &[("range", "bytes=0-")])
                .await
                .0
                .status(),
            416
        );
        // Ignored: another unit, bad syntax, several ranges, HEAD.
        for range in ["items=0-1", "bytes=3-1", "bytes=0-1,4-5", "bytes=x"] {
            let (res, body) = get(&files, "/r.bin", &[("range", range)]).await;
            assert_eq!((res.status().as_u16(), body.len()), (200, 10), "{range}");
        }
        assert_eq!(
            send(&files, "HEAD", "/r.bin", &[("range", "bytes=0-1")])
                .await
                .0
                .status(),
            200
        );

        // If-Range: a matching strong tag or date applies the range; anything else does not.
        let (res, _) = get(&files, "/r.bin", &[]).await;
        let etag = h(&res, "etag").unwrap().to_owned();
        let lm = h(&res, "last-modified").unwrap().to_owned();
        let r = ("range", "bytes=0-0");
        assert_eq!(
            get(&files, "/r.bin", &[r, ("if-range", &etag)])
                .await
                .0
                .status(),
            206
        );
        assert_eq!(
            get(&files, "/r.bin", &[r, ("if-range", &lm)])
                .await
                .0
                .status(),
            206
        );
        assert_eq!(
            get(&files, "/r.bin", &[r, ("if-range", "\"old\"")])
                .await
                .0
                .status(),
            200
        );
        let weak = format!("W/{etag}");
        assert_eq!(
            get(&files, "/r.bin", &[r, ("if-range", &weak)])
                .await
                .0
                .status(),
            200
        );
        assert_eq!(
            get(
                &files,
                "/r.bin",
                &[r, ("if-range", "Sun, 06 Nov 1994 08:49:37 GMT")]
            )
            .await
            .0
            .status(),
            200
        );
    }
}

#[tokio::test]
async fn compression_negotiates_and_caches_variants() {
    let d = Dir::new();
    let page = text(20_000);
    d.write("page.html", &page);
    d.write("small.html", text(100));
    d.write("photo.jpg", text(20_000)); // not compressible by type, whatever its bytes
    for files in both(|| StaticOptions::new(&d.0)) {
        let (plain, body) = get(&files, "/page.html", &[]).await;
        assert_eq!(body, page);
        assert_eq!(h(&plain, "vary"), Some("accept-encoding"));
        assert_eq!(h(&plain, "content-encoding"), None);
        let identity_etag = h(&plain, "etag").unwrap().to_owned();

        let (res, body) = get(&files, "/page.html", &[("accept-encoding", "gzip")]).await;
        assert_eq!(h(&res, "content-encoding"), Some("gzip"));
        assert_eq!(h(&res, "vary"), Some("accept-encoding"));
        assert!(body.len() < page.len() / 2);
        assert_eq!(gunzip(&body), page);
        let gz_etag = h(&res, "etag").unwrap().to_owned();
        assert!(
            gz_etag.starts_with("W/") && gz_etag != identity_etag,
            "{gz_etag}"
        );

        let (res, body) = get(
            &files,
            "/page.html",
            &[("accept-encoding", "gzip, deflate, br")],
        )
        .await;
        assert_eq!(h(&res, "content-encoding"), Some("br"));
        assert_eq!(unbrotli(&body), page);

        let (res, _) = get(
            &files,
            "/page.html",
            &[("accept-encoding", "br;q=0.5, gzip")],
        )
        .await;
        assert_eq!(h(&res, "content-encoding"), Some("gzip"));
        let (res, _) = get(&files, "/page.html", &[("accept-encoding", "identity")]).await;
        assert_eq!(h(&res, "content-encoding"), None);

        // The gzip variant revalidates with its own tag.
        let (res, _) = get(
            &files,
            "/page.html",
            &[("accept-encoding", "gzip"), ("if-none-match", &gz_etag)],
        )
        .await;
        assert_eq!(res.status(), 304);
        assert_eq!(h(&res, "vary"), Some("accept-encoding"));
        let (res, _) = get(
            &files,
            "/page.html",
            &[
                ("accept-encoding", "gzip"),
                ("if-none-match", &identity_etag),
            ],
        )
        .await;
        assert_eq!(res.status(), 200);

        // Never a compressed range.
        let (res, body) = get(
            &files,
            "/page.html",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
        )
        .await;
        assert_eq!(res.status(), 206);
        assert_eq!(h(&res, "content-encoding"), None);
        assert_eq!(body, &page[..10]);

        // Below min_size, or an already compressed type: identity, no Vary.
        let (res, _) = get(&files, "/small.html", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!((h(&res, "content-encoding"), h(&res, "vary")), (None, None));
        let (res, _) = get(&files, "/photo.jpg", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!((h(&res, "content-encoding"), h(&res, "vary")), (None, None));

        // HEAD of a compressed variant: its headers, no body.
        let (res, body) = send(&files, "HEAD", "/page.html", &[("accept-encoding", "gzip")]).await;
        assert_eq!(h(&res, "content-encoding"), Some("gzip"));
        assert!(body.is_empty());
    }

    // Codings switched off.
    let files = StaticFiles::new(
        StaticOptions::new(&d.0).with_compression(CompressionOptions {
            gzip: false,
            brotli: true,
            min_size: 1024,
        }),
    );
    let (res, _) = get(&files, "/page.html", &[("accept-encoding", "gzip")]).await;
    assert_eq!(h(&res, "content-encoding"), None);
    let (res, _) = get(&files, "/page.html", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(h(&res, "content-encoding"), Some("br"));
}

#[tokio::test]
async fn precompressed_siblings_are_served_as_they_are() {
    let d = Dir::new();
    let js = text(5000);
    d.write("app.js", &js);
    // Sentinel contents: the handler must send these bytes, not compress anything itself.
    d.write("app.js.gz", b"GZ-SIBLING");
    d.write("app.js.br", b"BR-SIBLING");
    d.write("logo.png", b"png");
    d.write("logo.png.gz", b"PNG-GZ");
    for files in both(|| StaticOptions::new(&d.0)) {
        let (res, body) = get(&files, "/app.js", &[("accept-encoding", "gzip")]).await;
        assert_eq!(
            (h(&res, "content-encoding"), &body[..]),
            (Some("gzip"), &b"GZ-SIBLING"[..])
        );
        assert_eq!(h(&res, "content-length"), Some("10"));
        let etag = h(&res, "etag").unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with("-gz\""), "{etag}");
        assert!(h(&res, "content-type").unwrap().contains("javascript"));
        let (res, body) = get(&files, "/app.js", &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(
            (h(&res, "content-encoding"), &body[..]),
            (Some("br"), &b"BR-SIBLING"[..])
        );
        let (res, body) = get(&files, "/app.js", &[]).await;
        assert_eq!((h(&res, "content-encoding"), body), (None, js.clone()));
        assert_eq!(h(&res, "vary"), Some("accept-encoding"));
        // Even for types never compressed on the fly, and below min_size.
        let (res, body) = get(&files, "/logo.png", &[("accept-encoding", "gzip")]).await;
        assert_eq!(
            (h(&res, "content-encoding"), &body[..]),
            (Some("gzip"), &b"PNG-GZ"[..])
        );
        // The siblings themselves are plain files too.
        let (res, body) = get(&files, "/app.js.gz", &[]).await;
        assert_eq!(
            (res.status().as_u16(), &body[..]),
            (200, &b"GZ-SIBLING"[..])
        );
    }
}

#[tokio::test]
async fn cache_follows_changes_on_disk() {
    let d = Dir::new();
    let p = d.write("f.txt", "one");
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        revalidate_after: Duration::ZERO,
        ..CacheOptions::default()
    }));
    assert_eq!(get(&files, "/f.txt", &[]).await.1, b"one");
    assert_eq!(files_cached(&files), 1);
    std::fs::write(&p, "two!").unwrap();
    assert_eq!(get(&files, "/f.txt", &[]).await.1, b"two!");
    // Same size, different content, replaced by rename (new inode).
    let tmp = d.write("tmp", "six!");
    std::fs::rename(&tmp, &p).unwrap();
    assert_eq!(get(&files, "/f.txt", &[]).await.1, b"six!");
    std::fs::remove_file(&p).unwrap();
    assert_eq!(get(&files, "/f.txt", &[]).await.0.status(), 404);

    // A revalidation interval trusts the entry meanwhile.
    let p = d.write("g.txt", "old");
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        revalidate_after: Duration::from_secs(3600),
        ..CacheOptions::default()
    }));
    assert_eq!(get(&files, "/g.txt", &[]).await.1, b"old");
    std::fs::write(&p, "new!").unwrap();
    assert_eq!(get(&files, "/g.txt", &[]).await.1, b"old");
}

fn files_cached(files: &StaticFiles) -> usize {
    files.inner_cache_len()
}

#[tokio::test]
async fn cache_evicts_to_its_budget() {
    let d = Dir::new();
    for i in 0..64 {
        d.write(&format!("f{i}.bin"), vec![i as u8; 4096]);
    }
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        max_bytes: 64 << 10,
        ..CacheOptions::default()
    }));
    for round in 0..2 {
        for i in 0..64 {
            let (res, body) = get(&files, &format!("/f{i}.bin"), &[]).await;
            assert_eq!(res.status(), 200);
            assert_eq!(body, vec![i as u8; 4096], "round {round} file {i}");
        }
    }
    let (used, len) = files.inner_cache_usage();
    assert!(used <= 64 << 10, "{used}");
    assert!(len > 0 && len < 64, "{len}");
}

#[tokio::test]
async fn hidden_files_and_bad_paths() {
    let d = Dir::new();
    d.write(".env", "SECRET");
    d.write(".git/config", "SECRET");
    d.write("ok/.hidden.txt", "SECRET");
    d.write("ok/file.txt", "fine");
    for files in both(|| StaticOptions::new(&d.0)) {
        for p in [
            "/.env",
            "/.git/config",
            "/ok/.hidden.txt",
            "/%2eenv",
            "/%2Egit/config",
            "/ok/%2ehidden.txt",
        ] {
            let (res, body) = get(&files, p, &[]).await;
            assert_eq!(res.status(), 404, "{p}");
            assert!(!String::from_utf8_lossy(&body).contains("SECRET"), "{p}");
        }
        for p in [
            "/..%2f..%2fetc/passwd",
            "/a%5c..%5cb",
            "/x%00.txt",
            "/../../etc/passwd",
        ] {
            let (res, _) = get(&files, p, &[]).await;
            assert!(
                matches!(res.status().as_u16(), 400 | 404),
                "{p}: {}",
                res.status()
            );
        }
        assert_eq!(get(&files, "/ok/file.txt", &[]).await.1, b"fine");
    }
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_serve_hidden(true));
    assert_eq!(get(&files, "/.env", &[]).await.1, b"SECRET");
    assert_eq!(get(&files, "/%2eenv", &[]).await.1, b"SECRET");
}

#[tokio::test]
async fn symlinks_may_not_leave_the_root() {
    let outside = Dir::new();
    outside.write("secret.txt", "SECRET");
    let d = Dir::new();
    d.write("real.txt", "real");
    std::os::unix::fs::symlink(outside.0.join("secret.txt"), d.0.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&outside.0, d.0.join("leakdir")).unwrap();
    std::os::unix::fs::symlink(d.0.join("real.txt"), d.0.join("alias.txt")).unwrap();
    for files in both(|| StaticOptions::new(&d.0).with_directory_listing(true)) {
        for p in ["/leak.txt", "/leakdir/secret.txt", "/leakdir/", "/leakdir"] {
            let (res, body) = get(&files, p, &[]).await;
            assert_eq!(res.status(), 404, "{p}");
            assert!(!String::from_utf8_lossy(&body).contains("SECRET"));
        }
        assert_eq!(get(&files, "/alias.txt", &[]).await.1, b"real");
        let (_, listing) = get(&files, "/", &[]).await;
        let listing = String::from_utf8(listing).unwrap();
        assert!(
            listing.contains("alias.txt") && !listing.contains("leak"),
            "{listing}"
        );
    }
}

#[tokio::test]
async fn a_root_that_is_a_symlink_follows_deploys() {
    let d = Dir::new();
    d.write("v1/app.txt", "v1");
    d.write("v2/app.txt", "v2");
    let current = d.0.join("current");
    std::os::unix::fs::symlink(d.0.join("v1"), &current).unwrap();
    let files = StaticFiles::new(StaticOptions::new(&current).with_cache(CacheOptions {
        revalidate_after: Duration::ZERO,
        ..CacheOptions::default()
    }));
    assert_eq!(get(&files, "/app.txt", &[]).await.1, b"v1");
    let next = d.0.join("next");
    std::os::unix::fs::symlink(d.0.join("v2"), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    assert_eq!(get(&files, "/app.txt", &[]).await.1, b"v2");
}

#[tokio::test]
async fn directory_listing_only_when_enabled() {
    let d = Dir::new();
    d.write("pub/a file.txt", "12345");
    d.write("pub/.secret", "s");
    d.write("pub/<i>.txt", "x");
    d.write("pub/sub/x", "x");
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    assert_eq!(get(&files, "/pub/", &[]).await.0.status(), 404);

    let files = StaticFiles::new(
        StaticOptions::new(&d.0)
            .with_prefix("/files")
            .with_directory_listing(true),
    );
    let (res, body) = get(&files, "/files/pub/", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(h(&res, "content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("Index of /files/pub/"), "{html}");
    assert!(
        html.contains("<a href=\"a%20file.txt\">a file.txt</a>"),
        "{html}"
    );
    assert!(html.contains("<td class=\"n\">5</td>"), "{html}");
    assert!(
        html.contains("<a href=\"%3Ci%3E.txt\">&lt;i&gt;.txt</a>"),
        "{html}"
    );
    assert!(html.contains("<a href=\"sub/\">sub/</a>"), "{html}");
    assert!(html.contains(" GMT</td>"), "{html}");
    assert!(!html.contains("secret"), "{html}");
    assert_eq!(get(&files, "/files/pub", &[]).await.0.status(), 301);
    // An index file still wins.
    d.write("pub/index.html", "index");
    assert_eq!(get(&files, "/files/pub/", &[]).await.1, b"index");
}

#[tokio::test]
async fn large_files_stream_in_chunks() {
    let d = Dir::new();
    let big = text(3 * crate::body::CHUNK + 123);
    d.write("big.txt", &big);
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        max_file_size: 1024,
        ..CacheOptions::default()
    }));
    let (res, body) = get(&files, "/big.txt", &[]).await;
    assert_eq!(h(&res, "content-length"), Some(&big.len().to_string()[..]));
    assert_eq!(body, big);
    let (res, body) = get(&files, "/big.txt", &[("accept-encoding", "gzip")]).await;
    assert_eq!(h(&res, "content-encoding"), Some("gzip"));
    assert_eq!(h(&res, "content-length"), None);
    assert!(h(&res, "etag").unwrap().starts_with("W/"));
    assert_eq!(gunzip(&body), big);
    let (res, body) = get(&files, "/big.txt", &[("accept-encoding", "br")]).await;
    assert_eq!(h(&res, "content-encoding"), Some("br"));
    assert_eq!(unbrotli(&body), big);
    let start = crate::body::CHUNK as u64 - 5;
    let range = format!("bytes={start}-{}", start + 9);
    let (res, body) = get(&files, "/big.txt", &[("range", &range)]).await;
    assert_eq!(res.status(), 206);
    assert_eq!(body, &big[start as usize..start as usize + 10]);
}

#[tokio::test]
async fn works_as_a_tower_service() {
    use tower::ServiceExt;
    let d = Dir::new();
    d.write("f.txt", "tower");
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    let req = Request::get("/f.txt")
        .body(String::from("ignored"))
        .unwrap();
    let res = files.oneshot(req).await.unwrap();
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"tower"
    );

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<StaticFiles>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_compress_once() {
    const LEN: usize = 54_321; // unique among the tests: identifies this file's compressions
    let d = Dir::new();
    d.write("once.js", text(LEN));
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let files = files.clone();
            tokio::spawn(async move {
                let (res, body) = get(&files, "/once.js", &[("accept-encoding", "br")]).await;
                assert_eq!(h(&res, "content-encoding"), Some("br"));
                unbrotli(&body)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), text(LEN));
    }
    let n = crate::encoding::COMPRESSED_LENGTHS
        .lock()
        .unwrap()
        .iter()
        .filter(|&&l| l == LEN)
        .count();
    assert_eq!(n, 1, "one compression for sixteen concurrent requests");
}

#[tokio::test]
async fn changed_siblings_are_picked_up() {
    let d = Dir::new();
    d.write("app.css", text(3000));
    let gz = d.write("app.css.gz", b"OLD-GZ");
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        revalidate_after: Duration::ZERO,
        ..CacheOptions::default()
    }));
    let ae = [("accept-encoding", "gzip")];
    assert_eq!(get(&files, "/app.css", &ae).await.1, b"OLD-GZ");
    std::fs::write(&gz, b"NEWER-GZ").unwrap();
    assert_eq!(get(&files, "/app.css", &ae).await.1, b"NEWER-GZ");
    // A removed sibling: the file is compressed on the fly instead.
    std::fs::remove_file(&gz).unwrap();
    let (res, body) = get(&files, "/app.css", &ae).await;
    assert_eq!(h(&res, "content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&body), text(3000));
}

// --- issue 13: large bodies, shared cached bytes, bounded cache ------------------------------

/// Serves `files` with hyper's HTTP/1 server on a loopback socket, one task per connection.
async fn serve_on_loopback(files: StaticFiles) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let files = files.clone();
                    async move {
                        let (parts, _) = req.into_parts();
                        let res = files
                            .respond(&parts.method, &parts.uri, &parts.headers)
                            .await;
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
}

/// One `GET` over a fresh connection, read to the end: the head and the raw body bytes.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = all.split_off(end);
    (String::from_utf8(all).unwrap(), body)
}

/// Bytes that repeat nowhere (xorshift), so that a misplaced or repeated chunk shows.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_arrive_whole_through_a_socket() {
    let d = Dir::new();
    // Streamed: several full chunks and a partial one; cached: the largest file the cache takes.
    let streamed = noise(5 * crate::body::CHUNK + 4321);
    let cached = noise(1 << 20);
    d.write("streamed.bin", &streamed);
    d.write("cached.bin", &cached);
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    let addr = serve_on_loopback(files.clone()).await;
    for round in 0..2 {
        let (head, body) = raw_get(addr, "/streamed.bin").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len = format!("content-length: {}\r\n", streamed.len());
        assert!(head.to_ascii_lowercase().contains(&len), "{head}");
        assert_eq!(body.len(), streamed.len(), "round {round}");
        assert!(body == streamed, "round {round}: the streamed body differs");
        let (head, body) = raw_get(addr, "/cached.bin").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body == cached, "round {round}: the cached body differs");
    }
    assert_eq!(files_cached(&files), 1, "only the 1 MiB file is cached");
}

/// A frame of a `FileBody`: its size and where its bytes were.
type FrameAt = (usize, *const u8);

/// Reads every frame of a `FileBody`, dropping each before asking for the next (as hyper does
/// once it wrote a frame); the frames, and the bytes or the error.
async fn frames(
    mut body: crate::body::FileBody,
) -> (Vec<FrameAt>, Result<Vec<u8>, std::io::Error>) {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                let data = f.into_data().unwrap();
                seen.push((data.len(), data.as_ptr()));
                out.extend_from_slice(&data);
            }
            Err(e) => return (seen, Err(e)),
        }
    }
    (seen, Ok(out))
}

#[tokio::test]
async fn file_bodies_go_out_in_whole_chunks_by_either_read() {
    let d = Dir::new();
    let data = noise(3 * crate::body::CHUNK + 99);
    let p = d.write("f.bin", &data);
    for nowait in [true, false] {
        let open = || std::fs::File::open(&p).unwrap();
        let body =
            crate::body::FileBody::new(open(), 0, data.len() as u64, None).with_nowait(nowait);
        let (seen, got) = frames(body).await;
        assert!(got.unwrap() == data, "nowait {nowait}");
        // A hot file comes out of the page cache in whole chunks...
        let chunk = crate::body::CHUNK;
        let sizes: Vec<usize> = seen.iter().map(|f| f.0).collect();
        assert_eq!(sizes, [chunk, chunk, chunk, 99], "nowait {nowait}");
        // ... all read into one buffer, reused once the previous chunk was dropped.
        assert!(seen.iter().all(|f| f.1 == seen[0].1), "nowait {nowait}");
        // A range in the middle.
        let body = crate::body::FileBody::new(open(), 1000, 300_000, None).with_nowait(nowait);
        let (_, got) = frames(body).await;
        assert!(got.unwrap() == data[1000..301_000], "nowait {nowait}");
    }
}

#[tokio::test]
async fn a_file_that_shrinks_while_sent_fails_the_body() {
    let d = Dir::new();
    let data = noise(3 * crate::body::CHUNK);
    for nowait in [true, false] {
        let p = d.write("shrinks.bin", &data);
        let file = std::fs::File::open(&p).unwrap();
        let mut body =
            crate::body::FileBody::new(file, 0, data.len() as u64, None).with_nowait(nowait);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first == data[..crate::body::CHUNK]);
        // Truncated to the middle of the second chunk: its bytes, then an error, never a
        // short body that ends cleanly.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(crate::body::CHUNK as u64 + 10).unwrap();
        let (_, rest) = frames(body).await;
        let e = rest.unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "nowait {nowait}: {e}"
        );
    }
}

#[tokio::test]
async fn cached_files_share_one_buffer_and_one_header_block() {
    let d = Dir::new();
    d.write("a.css", text(4000));
    let files = StaticFiles::new(StaticOptions::new(&d.0));
    let mut seen = Vec::new();
    for ae in ["", "gzip", "gzip"] {
        let mut req = Request::get("/a.css");
        if !ae.is_empty() {
            req = req.header("accept-encoding", ae);
        }
        let res = files.serve(req.body(Body::empty()).unwrap()).await;
        let (parts, mut body) = res.into_parts();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(body.frame().await.is_none(), "one frame");
        seen.push((parts.headers, data));
    }
    let (h0, b0) = &seen[0];
    let (h1, b1) = &seen[1];
    let (h2, b2) = &seen[2];
    assert_eq!(&b0[..], &text(4000)[..]);
    assert_eq!(gunzip(b1), text(4000));
    // The same bytes, not a copy: a hit clones the cached `Bytes`.
    assert_eq!(b1.as_ptr(), b2.as_ptr());
    assert_ne!(b0.as_ptr(), b1.as_ptr());
    // With their prepared headers.
    assert_eq!(h1, h2);
    assert_eq!(h0.get("content-length").unwrap(), "4000");
    assert_eq!(h1.get("content-length").unwrap(), &b1.len().to_string()[..]);
    assert_eq!(h1.get("content-encoding").unwrap(), "gzip");
    for h in [h0, h1] {
        for name in [
            "etag",
            "last-modified",
            "content-type",
            "vary",
            "accept-ranges",
        ] {
            assert!(h.contains_key(name), "{name}");
        }
    }
    // A second identity request shares the first one's bytes too.
    let again = files
        .serve(Request::get("/a.css").body(Body::empty()).unwrap())
        .await;
    let data = again
        .into_body()
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(data.as_ptr(), b0.as_ptr());
}

#[tokio::test]
async fn the_cache_bounds_entries_and_bytes() {
    let d = Dir::new();
    // Empty files weigh only their bookkeeping: the entry count is bounded too.
    for i in 0..600 {
        d.write(&format!("e/{i}.txt"), "");
    }
    for i in 0..40 {
        d.write(&format!("b/{i}.bin"), noise(10_000 + i));
    }
    let max_bytes = 128 << 10;
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        max_bytes,
        ..CacheOptions::default()
    }));
    for i in 0..600 {
        let (res, body) = get(&files, &format!("/e/{i}.txt"), &[]).await;
        assert_eq!((res.status().as_u16(), body.len()), (200, 0));
        let (used, len) = files.inner_cache_usage();
        assert!(used <= max_bytes, "{used} bytes after {i} empty files");
        assert!(
            len as u64 <= max_bytes / crate::entry::ENTRY_OVERHEAD,
            "{len} entries"
        );
    }
    for round in 0..2 {
        for i in 0..40 {
            let (res, body) = get(&files, &format!("/b/{i}.bin"), &[]).await;
            assert_eq!(res.status(), 200);
            assert!(body == noise(10_000 + i), "round {round} file {i}");
            let (used, _) = files.inner_cache_usage();
            assert!(used <= max_bytes, "{used} bytes");
        }
    }
    let (_, len) = files.inner_cache_usage();
    assert!(len > 0, "the cache still holds something");
}

#[tokio::test]
async fn a_changed_file_is_served_fresh_after_the_revalidation_interval() {
    let d = Dir::new();
    let p = d.write("v.txt", "version one");
    let files = StaticFiles::new(StaticOptions::new(&d.0).with_cache(CacheOptions {
        revalidate_after: Duration::from_millis(50),
        ..CacheOptions::default()
    }));
    let (res, body) = get(&files, "/v.txt", &[]).await;
    assert_eq!(body, b"version one");
    let old_etag = h(&res, "etag").unwrap().to_owned();
    // Same length: only the mtime (and the bytes) tell.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&p, "version two").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (res, body) = get(&files, "/v.txt", &[]).await;
    assert_eq!(body, b"version two");
    assert_ne!(h(&res, "etag").unwrap(), old_etag);
    assert_eq!(h(&res, "content-length"), Some("11"));
}

#[tokio::test]
async fn chunks_still_held_are_never_reused() {
    let d = Dir::new();
    let data = noise(4 * crate::body::CHUNK + 7);
    let p = d.write("held.bin", &data);
    for nowait in [true, false] {
        let file = std::fs::File::open(&p).unwrap();
        let mut body =
            crate::body::FileBody::new(file, 0, data.len() as u64, None).with_nowait(nowait);
        // Every frame kept, as when hyper has not written one yet when it asks for the next.
        let mut held = Vec::new();
        while let Some(frame) = body.frame().await {
            held.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(held.len(), 5, "nowait {nowait}");
        let mut ptrs: Vec<_> = held.iter().map(|b| b.as_ptr()).collect();
        ptrs.dedup();
        assert_eq!(
            ptrs.len(),
            5,
            "nowait {nowait}: a held chunk's memory was read into"
        );
        assert!(held.concat() == data, "nowait {nowait}");
    }
}
