#!/usr/bin/env bash
# Builds the Python package (python/, maturin, release profile, the same target/ as cargo) into
# the environment of scripts/python-env.sh and runs its tests, then tests the wheel in a fresh
# environment without the system's OpenBLAS (scripts/test-wheel.sh). Needs target/release/quad, which
# `cargo test --release` builds (the tests compare against the CLI byte for byte).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${QUAD_VENV:-$root/.venv}"
cd "$root"
bash "$root/scripts/python-env.sh"
export PATH="$venv/bin:$PATH"
[ -x target/release/quad ] || cargo build --release --bin quad

# One build: the package build (maturin: `cargo rustc -p quad-select-python`) reuses what
# `cargo test --release` compiled only while both resolve every crate they share with the same
# features; one feature apart recompiles that crate and all above it (candle, arrow, parquet).
# The two manifests ask for what the other side turns on (see their comments); this keeps it so.
# `cargo test --release` downloads only the root package's crates: fetch the Python crate's too
# (the lock file's versions, nothing resolved anew) before `cargo tree` reads them offline.
cargo fetch --locked --quiet
features() { cargo tree "$@" -e normal,build -f '{p} {f}' --prefix none --no-dedupe --frozen | sort -u; }
tests="$(features -p quad-select -e dev)"
package="$(features -p quad-select-python -F pyo3/extension-module)"
shared="$(comm -12 <(cut -d' ' -f1,2 <<<"$tests" | sort -u) <(cut -d' ' -f1,2 <<<"$package" | sort -u))"
apart="$(comm -3 <(sort <<<"$tests") <(sort <<<"$package") | sed 's/^\t//' | grep -F -f <(sed 's/$/ /' <<<"$shared") || true)"
if [ -n "$apart" ]; then
  echo "the package build would recompile what cargo test compiled: these shared crates resolve" >&2
  echo "with different features in the two builds (give both manifests the union):" >&2
  echo "$apart" >&2
  exit 1
fi
started=$(date +%s)
"$venv/bin/python" -m pip install --quiet --no-build-isolation ./python
echo "built and installed the Python package in $(( $(date +%s) - started )) s"
"$venv/bin/python" -m pytest -q python/tests "$@"
bash "$root/scripts/test-wheel.sh"
