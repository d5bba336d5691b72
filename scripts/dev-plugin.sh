#!/usr/bin/env bash
# The plugin dev loop: rebuild one domain plugin and hand it to the running gateway, which
# swaps it in without a restart (see README, "Plugin lifecycle").
# Usage: scripts/dev-plugin.sh weather [plugin-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: scripts/dev-plugin.sh PLUGIN [plugin-dir]}"
out="${2:-target/plugins}"
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p "flux-${name}"
mkdir -p "$out"
# Write then rename: the gateway never sees a half-written file.
cp "target/wasm32-wasip2/release/flux_${name}.wasm" "$out/.flux_${name}.wasm.tmp"
mv "$out/.flux_${name}.wasm.tmp" "$out/flux_${name}.wasm"
echo "deployed flux_${name}.wasm to $out"
