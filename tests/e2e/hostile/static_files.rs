//! Hostile peers: static files. Someone who can write inside the root (an upload directory,
//! a shared checkout) swaps symlinks while requests run, to get the server to read a file
//! outside the root; and a file larger than the old default limit must still be served.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::client::{self, T, get, parse_response, raw};
use crate::harness::{Server, TestDir};

/// The marker every byte of the secret file carries.
const SECRET: &[u8] = b"SECRET!";

fn config(extra: &str) -> String {
    format!(
        "[server]\nthreads = 2\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nstatic_dir = \"site\"\n{extra}\n"
    )
}

/// `n` bytes made of `unit` repeated.
fn repeated(unit: &[u8], n: usize) -> Vec<u8> {
    unit.iter().copied().cycle().take(n).collect()
}

/// Replaces the symlink `link` by one to `target`, atomically (a new link renamed over it).
fn swap(link: &std::path::Path, tmp: &std::path::Path, target: &std::path::Path) {
    std::os::unix::fs::symlink(target, tmp).expect("symlink");
    std::fs::rename(tmp, link).expect("rename over the link");
}

/// Two threads swap two links inside the root, as fast as they can, between an in-root target
/// and an out-of-root one: `site/file` (a file) and `site/dir` (a directory on the way to
/// the file). Meanwhile four clients ask for both, 250 times each. Files are 2 MiB, above
/// the cache's file size limit, so every request resolves the path on disk again; the
/// clients ask for a range of 64 bytes to keep the test fast. No response may carry a byte
/// of the secret; both outcomes (served from inside, refused) must have been seen, or the
/// swap did not race the requests at all.
#[tokio::test]
async fn a_symlink_swapped_in_a_loop_never_leaks_a_byte_from_outside() {
    let dir = TestDir::new("hostile-swap");
    let size = 2 << 20;
    // The in-root targets lie 40 directories deep: a check that resolves the link's target
    // (as `realpath` does) takes long enough for the link to change again before the open.
    let deep = "d/".repeat(40);
    dir.write(
        &format!("site/{deep}inside.bin"),
        repeated(b"inside.", size),
    );
    dir.write(
        &format!("site/{deep}in-dir/data.bin"),
        repeated(b"inside.", size),
    );
    dir.write("outside/secret.bin", repeated(SECRET, size));
    dir.write("outside/out-dir/data.bin", repeated(SECRET, size));
    let site = dir.join("site");
    let links: Vec<(PathBuf, PathBuf, PathBuf, PathBuf)> = vec![
        (
            site.join("file"),
            site.join(".file-tmp"),
            PathBuf::from(format!("{deep}inside.bin")),
            dir.join("outside/secret.bin"),
        ),
        (
            site.join("dir"),
            site.join(".dir-tmp"),
            PathBuf::from(format!("{deep}in-dir")),
            dir.join("outside/out-dir"),
        ),
    ];
    for (link, tmp, inside, _) in &links {
        swap(link, tmp, inside);
    }
    let server = Server::start_in(dir, &config("")).await;
    let addr = server.addr();

    // One thread per link, swapping it out and back in as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swappers: Vec<_> = links
        .into_iter()
        .map(|(link, tmp, inside, outside)| {
            let (stop, swaps) = (stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    swap(&link, &tmp, &outside);
                    swap(&link, &tmp, &inside);
                    swaps.fetch_add(2, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let served = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    // What bytes 1000-1063 of the in-root files are.
    let expected = repeated(b"inside.", 1064)[1000..].to_vec();
    for c in 0..4 {
        let (served, refused) = (served.clone(), refused.clone());
        let expected = expected.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..250 {
                let path = if (c + i) % 2 == 0 {
                    "/file"
                } else {
                    "/dir/data.bin"
                };
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: static.test\r\nRange: bytes=1000-1063\r\n\
                     Connection: close\r\n\r\n"
                );
                let r = raw(addr, req.as_bytes(), T).await;
                assert!(
                    !r.bytes.windows(SECRET.len()).any(|w| w == SECRET),
                    "{path} leaked the secret:\n{}",
                    r.text()
                );
                let res = parse_response(&r.bytes)
                    .unwrap_or_else(|| panic!("{path}: no response:\n{}", r.text()));
                match res.status {
                    206 => {
                        assert_eq!(res.body, expected, "{path}");
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    403 | 404 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("{path}: status {other}:\n{}", r.text()),
                }
            }
        }));
    }
    let mut failure = None;
    for client in clients {
        if let Err(e) = client.await {
            failure.get_or_insert(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for swapper in swappers {
        swapper.join().expect("a swapping thread");
    }
    if let Some(e) = failure {
        std::panic::resume_unwind(e.into_panic());
    }
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "1000 requests: {served} served from inside, {refused} refused, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
    assert!(
        served > 0 && refused > 0,
        "the swaps did not race the requests: {served} served, {refused} refused"
    );
}

/// Links that leave the root, by an absolute or a relative target, directly, through a
/// directory, or through a chain of in-root links, are answered 404; links that stay inside,
/// absolute or relative, to a file or a directory, are served.
#[tokio::test]
async fn links_out_of_the_root_are_404_and_links_inside_are_served() {
    let dir = TestDir::new("hostile-links");
    dir.write("outside/secret.txt", SECRET);
    dir.write("site/hello.txt", "hello\n");
    dir.write("site/sub/deep.txt", "deep\n");
    let site = dir.join("site");
    let link = |target: PathBuf, name: &str| {
        std::os::unix::fs::symlink(target, site.join(name)).expect("symlink");
    };
    link(dir.join("outside/secret.txt"), "abs-out.txt");
    link("../outside/secret.txt".into(), "rel-out.txt");
    link(dir.join("outside"), "abs-out-dir");
    link("../outside".into(), "rel-out-dir");
    link("rel-out.txt".into(), "chain-out.txt");
    link("sub/../../outside/secret.txt".into(), "dots-out.txt");
    link("/proc/self/root/etc/hostname".into(), "magic");
    link(dir.join("site/hello.txt"), "abs-in.txt");
    link("hello.txt".into(), "rel-in.txt");
    link("sub/../rel-in.txt".into(), "chain-in.txt");
    link("sub".into(), "in-dir");
    link(dir.join("site/sub"), "abs-in-dir");
    link("../hello.txt".into(), "sub/up-in.txt");
    let server = Server::start_in(dir, &config("directory_listing = true")).await;
    let addr = server.addr();

    for path in [
        "/abs-out.txt",
        "/rel-out.txt",
        "/abs-out-dir/secret.txt",
        "/rel-out-dir/secret.txt",
        "/abs-out-dir/",
        "/chain-out.txt",
        "/dots-out.txt",
        "/magic",
    ] {
        let res = get(addr, path).await;
        assert_eq!(res.status, 404, "{path}: {}", res.text());
        assert!(!res.text().contains("SECRET"), "{path}");
    }
    for (path, body) in [
        ("/abs-in.txt", "hello\n"),
        ("/rel-in.txt", "hello\n"),
        ("/chain-in.txt", "hello\n"),
        ("/in-dir/deep.txt", "deep\n"),
        ("/abs-in-dir/deep.txt", "deep\n"),
        ("/sub/up-in.txt", "hello\n"),
    ] {
        let res = get(addr, path).await;
        assert_eq!((res.status, res.text().as_str()), (200, body), "{path}");
    }
    // The listing shows the links that stay inside and none that leave.
    let listing = get(addr, "/").await.text();
    for name in ["abs-in.txt", "rel-in.txt", "in-dir/", "abs-in-dir/"] {
        assert!(listing.contains(&format!(">{name}<")), "{name}: {listing}");
    }
    assert!(!listing.contains("-out"), "{listing}");
    assert!(!listing.contains("magic"), "{listing}");
}

/// Files stream in constant memory, so size is no reason to refuse one: a 12 MiB file (above
/// the 10 MiB limit that used to be the default) is served whole without `max_file_size`;
/// with `max_file_size` below its size it is answered 404, without a byte of it.
#[tokio::test]
async fn a_large_file_is_served_whole_by_default_and_404_above_max_file_size() {
    let size = 12 << 20;
    let content = repeated(b"0123456789abcdef", size);
    let site = |tag: &str| {
        let dir = TestDir::new(tag);
        dir.write("site/big.bin", &content);
        dir.write("site/small.bin", "small");
        dir
    };

    let server = Server::start_in(site("hostile-big"), &config("")).await;
    let started = Instant::now();
    let res = client::send_h1(server.addr(), client::get_req("static.test", "/big.bin"))
        .await
        .expect("GET /big.bin");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length"), Some(&*size.to_string()));
    assert!(res.body == content[..], "the body differs from the file");
    eprintln!("12 MiB served in {:?}", started.elapsed());
    drop(server);

    let server = Server::start_in(
        site("hostile-big-limited"),
        &config("max_file_size = 1048576"),
    )
    .await;
    let res = get(server.addr(), "/big.bin").await;
    assert_eq!(res.status, 404);
    assert!(!res.body.starts_with(b"0123"), "no byte of the file");
    assert_eq!(get(server.addr(), "/small.bin").await.text(), "small");
}
