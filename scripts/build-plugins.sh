#!/usr/bin/env bash
# Builds the domain plugins and the test fixtures as WebAssembly components, and copies the
# domain plugins into target/plugins (the gateway's default plugin directory).
# Usage: scripts/build-plugins.sh [plugin-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/plugins}"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
cargo build --quiet --release --target wasm32-wasip2 --manifest-path tests/fixtures/Cargo.toml

mkdir -p "$out"
for plugin in weather crypto news stocks; do
  # Write then rename: a watching gateway never sees a half-written file.
  cp "target/wasm32-wasip2/release/flux_${plugin}.wasm" "$out/.flux_${plugin}.wasm.tmp"
  mv "$out/.flux_${plugin}.wasm.tmp" "$out/flux_${plugin}.wasm"
done
echo "plugins in $out: $(ls "$out" | tr '\n' ' ')"
