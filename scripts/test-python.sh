#!/usr/bin/env bash
# Builds the Python package (python/, maturin, release profile, the same target/ as cargo) into
# the environment of scripts/python-env.sh and runs its tests. Needs target/release/quad, which
# `cargo test --release` builds (the tests compare against the CLI byte for byte).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${QUAD_VENV:-$root/.venv}"
cd "$root"
bash "$root/scripts/python-env.sh"
export PATH="$venv/bin:$PATH"
[ -x target/release/quad ] || cargo build --release --bin quad
started=$(date +%s)
"$venv/bin/python" -m pip install --quiet --no-build-isolation ./python
echo "built and installed the Python package in $(( $(date +%s) - started )) s"
"$venv/bin/python" -m pytest -q python/tests "$@"
