#!/usr/bin/env bash
# Builds everything and runs the gateway with the simulated upstream services on the embedded
# bus: no external service needed. The demo serves the four Rust domains and the Python `fx`
# domain. Extra arguments go to the gateway (e.g. --listen 0.0.0.0:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh target/demo-plugins
scripts/build-python-plugins.sh target/demo-plugins
cargo build --quiet --release -p flux-gateway
exec target/release/flux-gateway --demo --plugin-dir target/demo-plugins "$@"
