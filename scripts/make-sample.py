#!/usr/bin/env python3
"""Rebuild experiments/data/sample.jsonl: the quickstart input shipped in the repo.

It takes a seeded sample of the public-domain domains of ../shared/data/pool.jsonl only
(shakespeare: Project Gutenberg texts; jargon: the Jargon File 4.4.7; devil: Bierce's
The Devil's Dictionary, 1911). The other domains carry GPL/CC licences and stay out of the repo.
Lines are copied unchanged, in pool order.
"""
import json
import random
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
pool = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared" / "data" / "pool.jsonl"
out = root / "experiments" / "data" / "sample.jsonl"
quota = {"shakespeare": 150, "jargon": 150, "devil": 100}

lines = {d: [] for d in quota}
with open(pool, encoding="utf-8") as f:
    for n, line in enumerate(f):
        dom = json.loads(line)["domain"]
        if dom in quota:
            lines[dom].append((n, line))
rng = random.Random("quad-select:sample")
keep = []
for dom, q in quota.items():
    keep.extend(rng.sample(lines[dom], min(q, len(lines[dom]))))
keep.sort()
tmp = out.with_suffix(".tmp")
with open(tmp, "w", encoding="utf-8") as f:
    for _, line in keep:
        f.write(line)
tmp.replace(out)
print(f"{out}: {len(keep)} documents, {out.stat().st_size} bytes")
