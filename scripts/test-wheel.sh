#!/usr/bin/env bash
# The wheel as a user meets it: builds it (scripts/build-wheel.sh), installs it into a fresh
# virtual environment, shows that its extension resolves OpenBLAS, libgfortran and libquadmath
# from the wheel (ldd), then hides the system's copies of those libraries (a private mount
# namespace: each file is covered with an empty one, so `target/release/quad` cannot start) and
# runs a selection there with the wheel's `quad` command and with `quad_select.select`: both must
# give the bytes of `target/release/quad` on the same input. Where this machine cannot make a
# mount namespace (unshare needs root), the runs go ahead with the system libraries in place and
# say so. Called by scripts/test-python.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${QUAD_SHARED:-$root/../shared}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"

started=$(date +%s)
wheel="$(bash scripts/build-wheel.sh "$work/wheels")"
echo "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) in $(( $(date +%s) - started )) s"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$wheel"
ext="$(ls "$work"/venv/lib/python3*/site-packages/quad_select/_quad*.so)"
echo "ldd of the installed extension:"
ldd "$ext" | sed 's/^/  /' | tee "$work/ldd.txt"
if grep -E "openblas|gfortran|quadmath" "$work/ldd.txt" | grep -v "/quad_select.libs/"; then
  echo "the wheel's extension resolves a BLAS or Fortran runtime outside the wheel" >&2
  exit 1
fi

head -n 40 "$shared/data/reference-wiki.jsonl" > "$work/ref.jsonl"
run=(select --input "$shared/data/pool-small.jsonl" --reference "$work/ref.jsonl" --budget-tokens 40000
     --config tests/fixtures/tiny-select.toml)
target/release/quad "${run[@]}" --cache "$work/cache-binary" --out "$work/binary" >/dev/null 2>&1

# The real files behind the binary's system libraries, each to be covered.
hidden="$(ldd target/release/quad | awk '/openblas|gfortran|quadmath/ {print $3}' | xargs -r realpath | sort -u)"
hide_system_libraries() {
  : > "$work/empty"
  for f in $hidden; do mount --bind "$work/empty" "$f"; done
  if "$root/target/release/quad" --version >/dev/null 2>&1; then
    echo "the system libraries are still reachable" >&2
    return 1
  fi
  echo "system libraries hidden: target/release/quad no longer starts ($("$root/target/release/quad" --version 2>&1 | head -n 1))"
}
run_with_the_wheel() {
  "$work/venv/bin/quad" --help | head -n 3
  "$work/venv/bin/quad" "${run[@]}" --cache "$work/cache-wheel" --out "$work/wheel" >/dev/null 2>&1
  "$work/venv/bin/python" -c 'import sys, quad_select
quad_select.select(sys.argv[1], sys.argv[2], 40000, config=sys.argv[3], cache=sys.argv[4], out=sys.argv[5])' \
    "$shared/data/pool-small.jsonl" "$work/ref.jsonl" "$root/tests/fixtures/tiny-select.toml" "$work/cache-wheel" "$work/python"
}
if unshare --mount --propagation private true 2>/dev/null; then
  unshare --mount --propagation private bash -euo pipefail -c \
    "$(declare -p work root shared hidden run; declare -f hide_system_libraries run_with_the_wheel)
     hide_system_libraries && run_with_the_wheel"
else
  echo "cannot make a mount namespace here (unshare needs root): the wheel runs with the system libraries in place"
  run_with_the_wheel
fi
cmp "$work/binary/selected.jsonl" "$work/wheel/selected.jsonl"
cmp "$work/binary/selected.jsonl" "$work/python/selected.jsonl"
echo "the wheel's quad command and quad_select.select give the binary's selection ($(wc -l < "$work/binary/selected.jsonl") documents)"
