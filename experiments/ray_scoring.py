#!/usr/bin/env python3
"""Scoring throughput of quad_select.ray's scoring actors, with 1 and 2 actors, against scoring in
process, on the same documents with the default proxy, its factors and a reference iHVP.

A selection on the full pool with the defaults (its stages cached in --cache) is started with an
executor that records the run's ScoringSetup and stops it there; the same setup then loads the
in-process scorer and the actors. Each measurement scores --docs pool documents in rounds of
--round documents (the bandit's refinement round is B·b = 32), as the bandit asks for them, and
reports documents per second; the driver's per-round overhead is the wall time of a round of one
document of two tokens. Run it on an otherwise idle machine; it writes a Markdown table.

    .venv/bin/python experiments/ray_scoring.py --cache /work/quad-cache --out experiments/results/ray-scoring/table.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import ray

import quad_select
import quad_select.ray as qray
from quad_select import _quad


class _Found(Exception):
    pass


class Recorder:
    """An executor that records the ScoringSetup and stops the run."""

    def parallelism(self):
        return 1

    def embed(self, chunks, embed_json):
        e = json.loads(embed_json)
        return [_quad.embed(c, model=e.get("model"), hashing_dim=e["hashing_dim"], batch_size=e["batch_size"]) for c in chunks]

    def assign(self, blocks, centroids):
        return [_quad.assign(b, centroids) for b in blocks]

    def prepare_scoring(self, setup_json):
        raise _Found(setup_json)

    def score(self, batches):  # pragma: no cover
        raise AssertionError("prepare_scoring comes first")


def batches_of(ids, batch=2):
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [[ids[i] for i in order[k:k + batch]] for k in range(0, len(order), batch)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pool", default="../shared/data/pool.jsonl")
    p.add_argument("--reference", default="../shared/data/reference-abstracts.jsonl")
    p.add_argument("--cache", default=".quad-cache")
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--round", type=int, default=32)
    p.add_argument("--out", default="experiments/results/ray-scoring/table.md")
    a = p.parse_args()

    try:
        quad_select.select(a.pool, a.reference, 10_000, cache=a.cache, executor=Recorder())
        raise SystemExit("the run scored nothing new: pick a reference whose scores are not cached")
    except quad_select.QuadError as e:
        message = str(e)
        setup_json = message[message.index("{"):message.rindex("}") + 1]
    setup = json.loads(setup_json)
    texts = []
    with open(a.pool) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == a.docs:
                break
    local = _quad.Scorer.for_run(setup_json)
    ids = local.encode(texts)
    rounds = [ids[i:i + a.round] for i in range(0, len(ids), a.round)]
    text_rounds = [texts[i:i + a.round] for i in range(0, len(texts), a.round)]
    rows = []

    started = time.perf_counter()
    for r in text_rounds:
        local.score(r)
    secs = time.perf_counter() - started
    rows.append(("in process (batches in parallel on rayon, CANDLE_NUM_THREADS=1)", "-", a.docs / secs, None))

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for workers in [1, 2]:
            ex = qray.RayExecutor(workers=workers)
            ex.prepare_scoring(setup_json)
            ex.score(batches_of([ids[0]]))  # the actors have loaded
            started = time.perf_counter()
            for r in rounds:
                ex.score(batches_of(r))
            secs = time.perf_counter() - started
            tiny = [[[1, 2]]]
            lat = []
            for _ in range(20):
                t = time.perf_counter()
                ex.score(tiny)
                lat.append(time.perf_counter() - t)
            rows.append((f"Ray, {workers} actor(s)", workers, a.docs / secs, statistics.median(lat)))
            for actor in ex.actors:
                ray.kill(actor)
    finally:
        ray.shutdown()

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Scoring {a.docs} pool documents in rounds of {a.round} (default proxy, `{Path(setup['proxy']).name}`), "
        f"{os.cpu_count()} cores.",
        "",
        "| scorer | actors | docs/s | per-round overhead (ms) |",
        "|---|---|---|---|",
    ]
    for name, w, rate, lat in rows:
        lines.append(f"| {name} | {w} | {rate:.1f} | {'' if lat is None else f'{1000 * lat:.1f}'} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
