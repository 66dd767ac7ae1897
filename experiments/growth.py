#!/usr/bin/env python3
"""Growth table: `quad select` with its defaults on N× pools, time and peak RSS per stage.

For each pool, one fresh run (its own empty cache) of

    /usr/bin/time -v quad select --input POOL --reference REF --budget-tokens B --out OUT --cache CACHE

with B = 10% of the pool's tokens, estimated before the run as N × 0.97 × T1 (T1: tokens of the
1× pool under the shipped proxy's tokenizer; each replica drops about 3% of the words). The realized
share is `tokens_selected / tokens_selectable` from the manifest. Per-stage time and peak RSS come
from the manifest (`stages[].seconds`, `stages[].peak_rss_mb`: the peak while that stage ran, memory
held from earlier stages included); the whole run's wall time and peak RSS from `/usr/bin/time -v`.

    python3 experiments/growth.py --pools /work/scale/pool-6.jsonl:6 /work/scale/pool-17.jsonl:17 \
        --reference ../shared/data/reference-wiki.jsonl --work /work/scale/runs \
        --out experiments/results/growth [--t1 10443023] [--quad target/release/quad]

Pools come from `../shared/tools/make-scale-pool.py N OUT` (not committed). A pool whose
`manifest.json` is already in WORK/N is not run again; the table is rebuilt from every manifest.
"""
import argparse
import json
import os
import re
import subprocess
import time

STAGES = ["corpus", "embed", "cluster", "proxy", "tokenize", "factors", "reference", "bandit", "report"]


def run(args, pool, n):
    work = os.path.join(args.work, str(n))
    out, cache = os.path.join(work, "out"), os.path.join(work, "cache")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        return
    os.makedirs(work, exist_ok=True)
    budget = int(round(0.10 * n * 0.97 * args.t1))
    cmd = ["/usr/bin/time", "-v", args.quad, "select", "--input", pool, "--reference", args.reference,
           "--budget-tokens", str(budget), "--out", out, "--cache", cache]
    started = time.time()
    with open(os.path.join(work, "stderr.log"), "w") as err:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=err)
    with open(os.path.join(work, "run.json"), "w") as f:
        json.dump({"budget": budget, "wall_s": time.time() - started, "cmd": cmd}, f)


def rss_and_wall(work):
    text = open(os.path.join(work, "stderr.log")).read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return rss, secs


def table(args, pools):
    head = ["pool", "docs", "k", "budget (tokens)", "selected share"] + STAGES + ["wall", "peak RSS (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pool, n in pools:
        work = os.path.join(args.work, str(n))
        mpath = os.path.join(work, "out", "manifest.json")
        if not os.path.exists(mpath):
            continue
        m = json.load(open(mpath))
        d = m["documents"]
        k = sum(1 for _ in open(os.path.join(work, "out", "clusters.csv"))) - 1
        by = {s["stage"]: s for s in m["stages"]}
        share = d["tokens_selected"] / max(d.get("tokens_selectable") or 1, 1)
        cells = [f"{n}× ({os.path.basename(pool)})", f"{d['read']:,}", str(k), f"{m['budget']['tokens']:,}", f"{100 * share:.1f}%"]
        for s in STAGES:
            st = by.get(s)
            if st is None:
                cells.append("–")
            else:
                rss = st.get("peak_rss_mb")
                cells.append(f"{st['seconds']:.0f} s / {rss:.0f} MB" if rss is not None else f"{st['seconds']:.0f} s")
        rss, wall = rss_and_wall(work)
        cells += [f"{wall / 60:.1f} min", f"{rss:.0f}"]
        cells[4] += f" ({d['scored']:,} scored, {100 * d['scored_fraction']:.2f}%)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", nargs="+", required=True, help="POOL:N pairs")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--t1", type=int, default=10_443_023, help="tokens of the 1× pool")
    ap.add_argument("--quad", default="target/release/quad")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    pools = [(p.rsplit(":", 1)[0], int(p.rsplit(":", 1)[1])) for p in args.pools]
    if not args.table_only:
        for pool, n in pools:
            run(args, pool, n)
    os.makedirs(args.out, exist_ok=True)
    t = table(args, pools)
    open(os.path.join(args.out, "table.md"), "w").write(t)
    print(t)


if __name__ == "__main__":
    main()
