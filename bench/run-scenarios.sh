#!/usr/bin/env bash
# Installs and builds what the load scenarios need (tansu, the release binaries, the plugins,
# the peer's packages), lifts the file-descriptor limit for both servers and the
# load generator (20,000 clients each side), and runs bench/scenarios.mjs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tansu.sh
export TANSU_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
scripts/build-plugins.sh
cargo build --release -p flux-gateway -p flux-load
(cd bench/peer && npm ci --no-audit --no-fund --loglevel=error)
# As high as the hard limit allows (raising the hard limit needs CAP_SYS_RESOURCE).
ulimit -n "$(ulimit -Hn)"
FD_LIMIT="$(ulimit -n)" exec node bench/scenarios.mjs
