#!/usr/bin/env bash
# The whole test suite: lints, Rust unit and integration tests, plugin unit tests, and the
# end-to-end tests with the official socket.io-client. Installs what it needs (idempotently)
# and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "toolchain and tools"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3 python3-venv
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
scripts/ensure-tansu.sh
export TANSU_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"

step "guests: domain plugins and fixtures (wasm32-wasip2)"
scripts/build-plugins.sh

step "format and lints"
cargo fmt --all -- --check
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
cargo fmt --manifest-path tests/fixtures/Cargo.toml --all -- --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
cargo clippy --quiet --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --all-targets -- -D warnings

step "plugin unit tests, the SDKs: Rust (natively, and packaged as a crate of its own) and Python (CPython)"
cargo test --quiet --manifest-path plugins/Cargo.toml --workspace
cargo package --quiet --manifest-path plugins/sdk/Cargo.toml --allow-dirty
for dir in plugins/python/*/; do
  if [[ -f "$dir/test_app.py" ]]; then
    (cd "$dir" && PYTHONPATH=.. python3 -m unittest --quiet)
  fi
done

step "host unit tests and runtime-limit tests"
cargo build --quiet --workspace --bins
cargo test --workspace

step "end-to-end with socket.io-client and headless Chromium: the contract, auth, hot reload, circuits, slow clients, the contract on Kafka, fleet rollout, plugins from other repositories (Rust and Python), a smoke run of the load tool against the gateway and its Node peer, the demo page"
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
(cd tests/e2e && npm install --no-audit --no-fund --loglevel=error)
(cd bench/peer && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/e2e && node --test --test-concurrency=1 contract.test.mjs auth.test.mjs reload.test.mjs circuit.test.mjs slow-client.test.mjs kafka.test.mjs fleet.test.mjs authoring.test.mjs load.test.mjs browser.test.mjs)
