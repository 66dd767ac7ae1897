#!/usr/bin/env python3
"""What a smaller embedding costs in clustering quality: hashing dimension × storage (f32, f16).

For each hashing dimension, `quad embed` writes the matrix; the f16 variant is the same matrix
rounded to half precision (what f16 storage would hand the clustering, which computes in f32).
Each variant is clustered by `quad cluster` at the given k and seeds, and compared with a label
field (NMI, ARI, purity, as `quad cluster --label-field` prints them). Bytes per document on disk
and in a mapped block are dim × 4 (f32) or dim × 2 (f16).

    python3 experiments/embed_storage.py --corpus ../shared/data/pool-small.jsonl --k 11 32 \
        --dims 256 512 1024 2048 --seeds 0 1 2 [--label domain] [--out table.md]

Needs numpy (any venv that has it, e.g. the anchors' venv of kmeans_anchor.py).
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile

import numpy as np


def cluster(args, emb_dir, k, seed):
    with tempfile.TemporaryDirectory() as out:
        cmd = [args.quad, "cluster", "--input", args.corpus, "--embeddings", emb_dir, "--k", str(k),
               "--seed", str(seed), "--label-field", args.label, "--out", out]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"NMI=([\d.]+) ARI=([-\d.]+) purity=([\d.]+)", text)
    return tuple(float(v) for v in m.groups())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--k", type=int, nargs="+", required=True)
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--label", default="domain")
    ap.add_argument("--quad", default="target/release/quad")
    ap.add_argument("--out")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dim in args.dims:
            f32 = os.path.join(tmp, f"d{dim}-f32")
            subprocess.run([args.quad, "embed", "--input", args.corpus, "--hashing-dim", str(dim), "--out", f32],
                           check=True, capture_output=True)
            f16 = os.path.join(tmp, f"d{dim}-f16")
            shutil.copytree(f32, f16)
            x = np.load(os.path.join(f32, "embeddings.npy"))
            np.save(os.path.join(f16, "embeddings.npy"), x.astype(np.float16).astype(np.float32))
            for storage, path, width in (("f32", f32, 4), ("f16", f16, 2)):
                for k in args.k:
                    runs = [cluster(args, path, k, s) for s in args.seeds]
                    mean = [statistics.mean(r[i] for r in runs) for i in range(3)]
                    sd = statistics.stdev(r[0] for r in runs) if len(runs) > 1 else 0.0
                    rows.append((dim, storage, dim * width, k, *mean, sd))
                    print(f"dim={dim} {storage} k={k}: NMI={mean[0]:.4f}±{sd:.4f} ARI={mean[1]:.4f} purity={mean[2]:.4f}", flush=True)

    lines = [
        f"corpus `{os.path.basename(args.corpus)}`, label `{args.label}`, seeds {args.seeds} (mean; NMI ± SD over seeds)",
        "",
        "| dim | storage | bytes/doc | k | NMI | ARI | purity |",
        "|---|---|---|---|---|---|---|",
    ]
    for dim, storage, b, k, nmi, ari, pur, sd in rows:
        lines.append(f"| {dim} | {storage} | {b} | {k} | {nmi:.4f} ± {sd:.4f} | {ari:.4f} | {pur:.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
