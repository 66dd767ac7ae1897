#!/usr/bin/env python3
"""How much of the influence-score variance lies between clusters, from a `frontier` cache.

    python3 experiments/score_variance.py CACHE SPLIT_POOL CLUSTER_FILE SCORES_FILE [SCORES_FILE ...]

CLUSTER_FILE is a `cluster-KEY.json` of the cache (assignment and centroid distances, in the order of
SPLIT_POOL's records); each SCORES_FILE is a `scores-KEY.jsonl` of a full `topk` pass. Prints, per
scores file: η² (the between-cluster share of the score variance: the most any rule that allots
the budget by cluster can see), the share of the pool's top-5% documents that sit in the 8 clusters
with the best mean score, and how many clusters hold any of them. Standard library only.
"""
import collections
import json
import statistics as st
import sys


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    cache, pool, cluster_file, *score_files = sys.argv[1:]
    ids = [json.loads(line)["id"] for line in open(pool) if line.strip()]
    assignment, _ = json.load(open(f"{cache}/{cluster_file}"))
    if len(assignment) != len(ids):
        sys.exit(f"{cluster_file}: {len(assignment)} assignments for {len(ids)} documents")
    for sf in score_files:
        scores = {}
        for line in open(f"{cache}/{sf}"):
            try:
                i, s = json.loads(line)
                scores[i] = s
            except ValueError:
                pass  # a line cut by a kill
        rows = [(scores[i], c) for i, c in zip(ids, assignment) if i in scores]
        values = [s for s, _ in rows]
        mu = st.mean(values)
        by = collections.defaultdict(list)
        for s, c in rows:
            by[c].append(s)
        between = sum(len(v) * (st.mean(v) - mu) ** 2 for v in by.values())
        total = sum((s - mu) ** 2 for s in values)
        top = sorted(rows, reverse=True)[: len(rows) // 20]
        best8 = {c for _, c in sorted(((st.mean(v), c) for c, v in by.items()), reverse=True)[:8]}
        in_best = sum(1 for _, c in top if c in best8) / len(top)
        print(
            f"{sf}: {len(rows)} scored, k = {len(by)}: eta^2 = {between / total:.3f}; "
            f"top 5% in the 8 best-mean clusters: {in_best:.2f}; clusters holding the top 5%: {len({c for _, c in top})}"
        )


if __name__ == "__main__":
    main()
