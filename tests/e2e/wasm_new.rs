//! `snakeway wasm new` (issue 15): the crate it writes builds for `wasm32-wasip2` as it stands
//! (offline, with the crates the examples use), its `device.toml` snippet loads in
//! `config check`, and a request served through the device shows each of its hooks' work.
//! It refuses to write into a directory that holds anything, and changes nothing there.

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;

use crate::client::send_h1;
use crate::harness::{Server, TestDir, run_cli};
use crate::upstream::{self, echo_header};
use crate::wasm::{SERIAL, guest};

/// Builds the crate in `dir` with its own `build.sh`, offline, sharing the examples' target
/// directory: `guest` has just built the examples (the guide's code is the scaffold's) there,
/// so only the new crate itself compiles.
fn build(dir: &std::path::Path) {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/wasm/target");
    let out = Command::new(dir.join("build.sh"))
        .arg("--offline")
        .env("CARGO_TARGET_DIR", &target)
        // The test run's own flags are for the host, not for the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run build.sh");
    assert!(
        out.status.success(),
        "build.sh of the new crate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_new_device_crate_builds_loads_and_serves() {
    let _serial = SERIAL.lock().await;
    // The examples are built (and their crates fetched) once per run.
    guest("guide");
    let dir = TestDir::new("wasm-new");
    let out = run_cli(&["wasm", "new", "hello-dev"], &dir.path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let krate = dir.join("hello-dev");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "wit/device.wit",
        "build.sh",
        "device.toml",
        "README.md",
    ] {
        assert!(krate.join(file).is_file(), "no {file} written");
    }
    // The WIT is the one this Snakeway implements, not a path into a source checkout.
    assert_eq!(
        std::fs::read_to_string(krate.join("wit/device.wit")).unwrap(),
        include_str!("../../wit/device.wit")
    );
    build(&krate);
    assert!(krate.join("hello-dev.wasm").is_file());

    let up = upstream::http(upstream::echo("up")).await;
    let snippet = std::fs::read_to_string(krate.join("device.toml")).unwrap();
    let config = dir.write(
        "snakeway.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
             [[service]]\nname = \"up\"\nupstreams = [{{ url = \"{}\" }}]\n\n\
             [[route]]\npath = \"/\"\nservice = \"up\"\n\n{snippet}",
            up.url()
        ),
    );
    let out = run_cli(&["config", "check"], &dir.path);
    assert!(
        out.status.success(),
        "config check refused the new device:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = Server::start_file(dir, config, 1).await;
    let get = |path: &str| {
        let req = Request::get(path)
            .header("host", "test.local")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send_h1(server.addr(), req)
    };
    let res = get("/items").await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-device"), Some("hello-dev"));
    assert_eq!(
        echo_header(&res.json(), "x-greeting").as_deref(),
        Some("hello")
    );
    let res = get("/private/x").await.unwrap();
    assert_eq!(res.status, 403);
    assert_eq!(res.text(), "private\n");
    assert_eq!(res.header("x-device"), Some("hello-dev"));
    assert_eq!(up.requests(), 1, "the refused request never went upstream");
}

#[tokio::test]
async fn wasm_new_refuses_a_directory_that_holds_anything() {
    let dir = TestDir::new("wasm-new-refuse");
    let mine = dir.write("mine/notes.txt", "keep me");
    let out = run_cli(&["wasm", "new", "dev", "--dir", "mine"], &dir.path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wrote into a non-empty directory");
    assert!(
        err.contains("mine/notes.txt"),
        "the file is not named: {err}"
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(dir.join("mine")).unwrap().count(), 1);

    let file = dir.write("file", "x");
    let out = run_cli(&["wasm", "new", "dev", "--dir", "file"], &dir.path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    let out = run_cli(&["wasm", "new", "../escape"], &dir.path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a usable crate name"));

    // An existing empty directory is fine.
    std::fs::create_dir(dir.join("empty")).unwrap();
    let out = run_cli(&["wasm", "new", "dev", "--dir", "empty"], &dir.path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("empty/src/lib.rs").is_file());
}
