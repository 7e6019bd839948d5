#!/usr/bin/env bash
# Builds the example WASM devices (wasm32-wasip2 components) into examples/wasm/out/.
# Needs the target: `rustup target add wasm32-wasip2`.
set -euo pipefail
cd "$(dirname "$0")"
# This is its own workspace, for another target: settings of a calling cargo (a test or a
# benchmark runs this script) must not leak in.
unset CARGO_TARGET_DIR RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "build.sh: installing the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 --quiet "$@"
mkdir -p out
for crate in add-header deny reroute identity-gate body-inspector testkit forbidden-import guide; do
    cp "target/wasm32-wasip2/release/${crate//-/_}.wasm" "out/$crate.wasm"
done
ls -l out/*.wasm >&2
