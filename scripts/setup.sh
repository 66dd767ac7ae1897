#!/usr/bin/env bash
# One-time machine setup for quad-select: the system BLAS (for ndarray-linalg), the test models and
# the Python environment of the Python package (scripts/python-env.sh).
# Safe to rerun: it installs and fetches only what is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas-dev >/dev/null
  echo "installed libopenblas-dev"
fi
bash "$root/scripts/fetch-models.sh"
bash "$root/scripts/python-env.sh"
