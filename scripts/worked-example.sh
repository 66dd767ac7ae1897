#!/usr/bin/env bash
# Re-measures the README's worked example on pool-small (wiki reference, 130,000 tokens): trains
# the default proxy into models/proxy if it is not there, runs `quad select` at its defaults and
# with --policy random and --policy topk (one shared, fresh cache), prints the ucb run's output
# and stage times, and rewrites the domains table between the README's `domains` markers.
# Run after `cargo build --release`; about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
quad=target/release/quad
shared=${QUAD_SHARED:-../shared}
pool=$shared/data/pool-small.jsonl
mkdir -p out
if [ ! -f models/proxy/model.safetensors ]; then
    /usr/bin/time -f "proxy: %e s" "$quad" proxy train --input "$pool" --out models/proxy
fi
rm -rf out/worked-cache
for policy in ucb random topk; do
    flags=()
    [ "$policy" = ucb ] || flags=(--policy "$policy")
    rm -rf "out/worked-$policy"
    "$quad" select --input "$pool" --reference "$shared/data/reference-wiki.jsonl" --budget-tokens 130000 \
        --model models/proxy --cache out/worked-cache --out "out/worked-$policy" "${flags[@]}" 2>&1 \
        | tee "out/worked-$policy.log"
done
python3 - "$pool" <<'PY'
import collections, json, re, sys
pool = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
in_pool = collections.Counter(d["domain"] for d in pool)
runs = ["ucb", "random", "topk"]
counts, summary = {}, {}
for r in runs:
    sel = [json.loads(l) for l in open(f"out/worked-{r}/selected.jsonl")]
    counts[r] = collections.Counter(d["domain"] for d in sel)
    m = json.load(open(f"out/worked-{r}/manifest.json"))
    summary[r] = f'{m["documents"]["selected"]} / {m["documents"]["scored"]}'
    if r == "ucb":
        for s in m["stages"]:
            print(f'{s["stage"]}: {s["seconds"]:.1f} s{" (cached)" if s["cached"] else ""}')
        print(f'scored {m["documents"]["scored"]} of {m["documents"]["selectable"]} ({100 * m["documents"]["scored_fraction"]:.1f}%)')
domains = sorted(in_pool, key=lambda d: (-counts["ucb"][d], d))
rows = ["| domain | ucb | random | topk |", "|---|---|---|---|"]
for d in domains:
    name = f"{d} ({in_pool[d]} in the pool)" if d == "wikipedia" else d
    rows.append(f"| {name} | " + " | ".join(str(counts[r][d]) for r in runs) + " |")
rows.append("| documents / scored | " + " | ".join(summary[r] for r in runs) + " |")
text = open("README.md").read()
new = re.sub(r"(<!-- domains:begin -->\n).*?(<!-- domains:end -->)", lambda m: m.group(1) + "\n".join(rows) + "\n" + m.group(2), text, flags=re.S)
open("README.md", "w").write(new)
print("\n".join(rows))
PY
