#!/usr/bin/env bash
# Builds the Python domain plugins (plugins/python/*/app.py, with the Python SDK) as
# WebAssembly components with componentize-py (pinned, installed into target/pyenv the first
# time), into the given plugin directory. A plugin whose sources did not change since its
# last build is not rebuilt (a build takes ~10 s and makes an ~18 MB component).
# Usage: scripts/build-python-plugins.sh [plugin-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/plugins}"
COMPONENTIZE_PY_VERSION=0.25.1
venv=target/pyenv

if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
  if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

mkdir -p "$out"
for dir in plugins/python/*/; do
  name=$(basename "$dir")
  [[ -f "$dir/app.py" && "$name" != template ]] || continue
  target="$out/flux_${name}.wasm"
  if [[ -f "$target" && -z $(find "$dir" plugins/python/flux_plugin_sdk wit -newer "$target" -name '*.py' -o -newer "$target" -name '*.wit') ]]; then
    continue
  fi
  # Write then rename: a watching gateway never sees a half-written file.
  "$venv/bin/componentize-py" -d wit -w plugin componentize app -p "$dir" -p plugins/python \
    -o "$out/.flux_${name}.wasm.tmp" > /dev/null
  mv "$out/.flux_${name}.wasm.tmp" "$target"
done
echo "python plugins in $out: $(cd "$out" && ls flux_*.wasm | tr '\n' ' ')"
