#!/usr/bin/env bash
# One-time machine setup for quad-select: the system BLAS (for ndarray-linalg) and the models. The
# Python environment is the Python tests' own (scripts/test-python.sh makes it): a selection does
# not wait for it.
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
