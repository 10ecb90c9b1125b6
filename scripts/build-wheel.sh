#!/bin/sh
# The wheel, GraphiQL's assets inside (scripts/hatch_build.py): what the Dockerfile's builder stage
# and CI both run. Needs hatchling in $PYTHON (requirements-build.lock) and npm, unless
# web/node_modules already holds the locked assets.
# Usage: scripts/build-wheel.sh [OUT_DIR]   (default dist/; prints the wheel's path)
set -eu
cd "$(dirname "$0")/.."
out="${1:-dist}"
python="${PYTHON:-python3}"
mkdir -p "$out"
rm -f "$out"/wallet-*.whl
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" . >&2
ls "$out"/wallet-*.whl
