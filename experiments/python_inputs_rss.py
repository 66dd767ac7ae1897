#!/usr/bin/env python3
"""Peak memory of `quad_select.select` by input kind, each in its own process (issue 26): the pool
as a path, as a generator of dicts (one JSON line parsed at a time), and as a pyarrow Table held in
memory. The in-memory kinds are written out batch by batch (quad_select.inputs), so a generator
should cost no more than the path beyond the Python interpreter itself.

    python experiments/python_inputs_rss.py POOL.jsonl REFERENCE.jsonl [--budget-tokens N] [--config TOML]

Prints one row per kind: wall time, the process's peak RSS (ru_maxrss), the selected documents and
whether the selection equals the path's. Each kind gets its own fresh cache.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
import quad_select
kind, pool, reference, budget, config, cache = sys.argv[1:7]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if kind == "path":
    source = pool
elif kind == "generator":
    source = (json.loads(line) for line in open(pool, encoding="utf-8"))
elif kind == "pyarrow-table":
    import pyarrow.json as pj
    source = pj.read_json(pool)
start = time.time()
sel = quad_select.select(source, reference, int(budget), config=config or None, cache=cache)
print(json.dumps({"kind": kind, "seconds": round(time.time() - start, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "interpreter_mb": round(base / 1024), "documents": len(sel), "ids": sel.ids}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pool")
    p.add_argument("reference")
    p.add_argument("--budget-tokens", type=int, default=1_000_000)
    p.add_argument("--config", default="")
    p.add_argument("--kinds", default="path,generator,pyarrow-table")
    a = p.parse_args()
    rows = []
    for kind in a.kinds.split(","):
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run([sys.executable, "-c", CHILD, kind, a.pool, a.reference, str(a.budget_tokens), a.config, cache],
                                 check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    want = rows[0]["ids"]
    print(f"{'input':<14} {'seconds':>8} {'peak RSS MB':>12} {'interpreter MB':>15} {'documents':>10}  same as path")
    for r in rows:
        print(f"{r['kind']:<14} {r['seconds']:>8} {r['peak_rss_mb']:>12} {r['interpreter_mb']:>15} {r['documents']:>10}  {r['ids'] == want}")


if __name__ == "__main__":
    main()
