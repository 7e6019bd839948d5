//! The files of a new WASM device crate.

use std::path::Path;

/// The device's code: the guide's example, compiled with the other examples.
pub(super) const LIB_RS: &str = include_str!("../../examples/wasm/guide/src/lib.rs");

/// The WIT package this binary implements, written out as `wit/device.wit`.
const DEVICE_WIT: &str = include_str!("../../wit/device.wit");

/// The crate's dependencies, as `examples/wasm/Cargo.toml` pins them (a test keeps them so).
pub(super) const DEPENDENCIES: &str = "wit-bindgen = \"0.63\"\nserde_json = \"1\"\n";

/// The Rust stack size of the examples (`examples/wasm/.cargo/config.toml`).
const CARGO_CONFIG: &str = "\
# A 64 KiB shadow stack instead of Rust's default 1 MiB: each request's instance touches (and
# Snakeway resets) fewer pages. Overflowing it traps instead of corrupting data.
[target.wasm32-wasip2]
rustflags = [\"-C\", \"link-arg=-zstack-size=65536\"]
";

/// Every file as (path in the crate, contents, executable).
pub(super) fn crate_files(name: &str, dir: &Path) -> Vec<(&'static str, String, bool)> {
    vec![
        ("Cargo.toml", cargo_toml(name), false),
        ("src/lib.rs", LIB_RS.to_owned(), false),
        ("wit/device.wit", DEVICE_WIT.to_owned(), false),
        (".cargo/config.toml", CARGO_CONFIG.to_owned(), false),
        ("build.sh", build_sh(name), true),
        ("device.toml", device_toml(name, dir), false),
        ("README.md", readme(name), false),
        (".gitignore", "/target\n/*.wasm\n".to_owned(), false),
    ]
}

fn cargo_toml(name: &str) -> String {
    format!(
        "[package]\n\
         name = \"{name}\"\n\
         version = \"0.1.0\"\n\
         edition = \"2024\"\n\
         publish = false\n\
         \n\
         [lib]\n\
         crate-type = [\"cdylib\"]\n\
         \n\
         [dependencies]\n\
         {DEPENDENCIES}\
         \n\
         # Small and fast to instantiate: Snakeway makes one instance per request.\n\
         [profile.release]\n\
         opt-level = \"s\"\n\
         lto = true\n\
         codegen-units = 1\n\
         strip = true\n\
         panic = \"abort\"\n\
         \n\
         # Its own workspace, even inside another project's directory.\n\
         [workspace]\n"
    )
}

fn build_sh(name: &str) -> String {
    let lib = name.replace('-', "_");
    format!(
        r#"#!/bin/sh
# Builds this device as a WebAssembly component and copies it to {name}.wasm, next to this
# script. Arguments go to cargo (e.g. --offline).
set -eu
# A relative CARGO_TARGET_DIR means relative to where this was started.
case "${{CARGO_TARGET_DIR:-}}" in
    "" | /*) ;;
    *) CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"; export CARGO_TARGET_DIR ;;
esac
cd "$(dirname "$0")"
if command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "build.sh: installing the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 "$@"
cp "${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{lib}.wasm" {name}.wasm
echo "built $PWD/{name}.wasm" >&2
"#
    )
}

fn device_toml(name: &str, dir: &Path) -> String {
    let path = toml::Value::String(dir.join(format!("{name}.wasm")).display().to_string());
    format!(
        "# Add this to your snakeway.toml. A relative `path` is taken from that file's directory:\n\
         # this one is right when snakeway.toml is where `snakeway wasm new` ran.\n\
         [[device]]\n\
         type = \"wasm\"\n\
         name = \"{name}\"\n\
         path = {path}\n\
         \n\
         # Handed to the device's `init` as JSON.\n\
         [device.config]\n\
         greeting = \"hello\"\n\
         private_prefix = \"/private\"\n"
    )
}

fn readme(name: &str) -> String {
    format!(
        "# {name}: a Snakeway WASM device\n\
         \n\
         Written by `snakeway wasm new`. It refuses requests under `private_prefix` with a 403,\n\
         sends the upstream an `x-greeting` header, and adds `x-device: {name}` to every\n\
         response. Change `src/lib.rs` to make it yours.\n\
         \n\
         * `src/lib.rs`: the device. It implements every hook of the `snakeway-device` world;\n  \
         `init` says which ones Snakeway calls (`Phases::ON_REQUEST | Phases::ON_RESPONSE`).\n\
         * `wit/device.wit`: the interface, as the Snakeway that wrote this crate implements it\n  \
         (what the host provides, what the device exports, every type).\n\
         * `build.sh`: `cargo build --release --target wasm32-wasip2`, then copies the\n  \
         component to `{name}.wasm` here. Needs the target: `rustup target add wasm32-wasip2`.\n\
         * `device.toml`: the `[[device]]` table to add to `snakeway.toml`.\n\
         \n\
         ## Try it\n\
         \n\
         ```sh\n\
         ./build.sh\n\
         # add device.toml to snakeway.toml, then\n\
         snakeway config check\n\
         snakeway serve\n\
         curl -i http://127.0.0.1:8080/            # x-device: {name}\n\
         curl -i http://127.0.0.1:8080/private/x   # 403 private\n\
         ```\n\
         \n\
         (Use your listener's address.) A device has no filesystem, sockets, clocks or\n\
         randomness: `HashMap::new()` traps (it asks for a random seed), use `BTreeMap`.\n\
         Snakeway's `docs/wasm.md` describes the hooks, the host functions, the limits and what\n\
         happens when a device fails.\n"
    )
}
