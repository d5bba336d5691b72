#!/usr/bin/env bash
# Builds everything and runs the gateway with the simulated upstream services on the embedded
# bus: no external service needed. Extra arguments go to the gateway (e.g. --listen 0.0.0.0:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh
cargo build --quiet --release -p flux-gateway
exec target/release/flux-gateway --demo --plugin-dir target/plugins "$@"
