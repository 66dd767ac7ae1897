#!/usr/bin/env python3
"""The practitioners' anchors beside our `dsir` and `classifier` policies (issue 33).

Runs the DSIR authors' package (`data-selection` 1.0.3, `HashedNgramDSIR` at its defaults) and a
DCLM-style fastText classifier (`fasttext` 0.9.3) on the frontier experiment's selectable pool and
each reference's target half, and writes, per reference and seed, a JSONL ranking of the pool's ids
(best first) that `cargo run --release --example frontier -- --external NAME=PATH` cuts at the
budget and evaluates exactly as it evaluates our selectors. Each ranking has `PATH.seconds`: the
wall time from nothing to that ranking (fit, weights or training, scoring, sampling).

Install the anchors in a throwaway venv, never as project dependencies (fasttext's `predict`
needs numpy < 2):

    python3 -m venv /tmp/anchors-venv
    /tmp/anchors-venv/bin/pip install data-selection==1.0.3 fasttext==0.9.3 'numpy<2'
    /tmp/anchors-venv/bin/python experiments/anchors.py      # after the frontier has made split/

DSIR: the package's own `fit_importance_estimator` and `compute_importance_weights` (one process,
so its one virtual shard is the file's order), then its `resample` rule written as a ranking: the
log importance weights plus Gumbel noise (numpy's global generator seeded with the seed, as the
package draws it), documents passing the package's length filter (>= 100 words) by noised weight;
those it filters out follow, in the same order (the package would never take them; the ranking
says how many there are in summary.json, and the budget never reaches them here).

fastText: positives the target half, negatives 4x as many pool documents drawn at random (seeded),
word bigrams, 25 epochs at learning rate 0.5 (fastText's defaults, 5 epochs at 0.1, leave the
positives at the prior), one thread (deterministic), documents ranked by P(positive).
"""
import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_ranking(path, ids, seconds):
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in ids:
            f.write(json.dumps({"id": i}) + "\n")
    os.replace(tmp, path)
    Path(f"{path}.seconds").write_text(f"{seconds:.3f}\n")


def dsir_rankings(pool_path, pool_ids, target_path, seeds, work):
    from data_selection import HashedNgramDSIR

    started = time.perf_counter()
    dsir = HashedNgramDSIR([str(pool_path)], [str(target_path)], cache_dir=str(work), num_proc=1)
    dsir.fit_importance_estimator(num_tokens_to_fit="auto")
    dsir.compute_importance_weights()
    weights = np.load(work / "log_importance_weights" / "0.npy")
    lengths = np.load(work / "perexample_metadata" / "0.npy")
    keep = dsir.perexample_metadata_filter(lengths)
    fit_seconds = time.perf_counter() - started
    assert len(weights) == len(pool_ids), (len(weights), len(pool_ids))
    out = []
    for seed in range(seeds):
        t = time.perf_counter()
        np.random.seed(seed)
        noised = weights + np.random.gumbel(size=weights.shape)
        # Passing documents first, each group by noised weight, highest first.
        order = np.lexsort((-noised, ~keep))
        out.append(([pool_ids[i] for i in order], fit_seconds + time.perf_counter() - t))
    info = {"documents": len(pool_ids), "passing_length_filter": int(keep.sum()), "fit_seconds": fit_seconds}
    return out, info


def fasttext_rankings(pool, target, seeds, work):
    import fasttext

    def line(text):
        return " ".join(text.split())

    out = []
    info = {"positives": len(target), "negatives": 4 * len(target)}
    for seed in range(seeds):
        started = time.perf_counter()
        rng = random.Random(seed)
        negatives = rng.sample(range(len(pool)), min(4 * len(target), len(pool)))
        rows = [f"__label__pos {line(r['text'])}" for r in target] + [f"__label__neg {line(pool[i]['text'])}" for i in negatives]
        rng.shuffle(rows)
        train = work / f"train-{seed}.txt"
        train.write_text("\n".join(rows) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(str(train), wordNgrams=2, epoch=25, lr=0.5, thread=1, seed=seed, verbose=0)
        labels, probs = model.predict([line(r["text"]) for r in pool], k=2)
        p = np.array([dict(zip(ls, ps)).get("__label__pos", 0.0) for ls, ps in zip(labels, probs)])
        order = np.argsort(-p, kind="stable")
        out.append(([pool[i]["id"] for i in order], time.perf_counter() - started))
        info[f"s{seed}_mean_p_pos"] = float(p.mean())
        info[f"s{seed}_p_pos_above_half"] = int((p > 0.5).sum())
    return out, info


def main():
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frontier", type=Path, default=here / "results" / "frontier", help="the frontier experiment's --out")
    ap.add_argument("--references", default="wiki,abstracts")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=here / "results" / "anchors")
    a = ap.parse_args()

    import data_selection
    import fasttext  # noqa: F401  (fail before any work if missing)

    pool_path = a.frontier / "split" / "pool.jsonl"
    pool = read_jsonl(pool_path)
    pool_ids = [str(r["id"]) for r in pool]
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {"data_selection": getattr(data_selection, "__version__", "1.0.3"), "numpy": np.__version__, "pool": str(pool_path)}
    for ref in a.references.split(","):
        target_path = a.frontier / f"ref-{ref}" / "target.jsonl"
        target = read_jsonl(target_path)
        work = Path(tempfile.mkdtemp(prefix=f"anchors-{ref}-"))
        try:
            rankings, info = dsir_rankings(pool_path, pool_ids, target_path, a.seeds, work / "dsir")
            for seed, (ids, seconds) in enumerate(rankings):
                write_ranking(a.out / f"dsir-pkg-{ref}-s{seed}.jsonl", ids, seconds)
            summary[f"dsir-pkg-{ref}"] = info
            (work / "fasttext").mkdir()
            rankings, info = fasttext_rankings(pool, target, a.seeds, work / "fasttext")
            for seed, (ids, seconds) in enumerate(rankings):
                write_ranking(a.out / f"fasttext-{ref}-s{seed}.jsonl", ids, seconds)
            summary[f"fasttext-{ref}"] = info
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(ref, json.dumps({k: v for k, v in summary.items() if k.endswith(ref)}))
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
