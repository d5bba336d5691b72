#!/usr/bin/env bash
# Installs tansu, the Apache-2.0 Kafka-compatible broker the Kafka tests and the load
# benchmarks run on (about 10 minutes once; a no-op when the pinned version is installed).
set -euo pipefail
TANSU_VERSION=0.6.0
if ! cargo install --list | grep -qx "tansu v${TANSU_VERSION}:"; then
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
