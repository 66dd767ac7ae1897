#!/usr/bin/env python3
"""k-means side by side on one matrix: `quad cluster`, faiss-cpu's Kmeans and scikit-learn's
MiniBatchKMeans, with the same d, k and iterations; wall time of each, and every inertia computed
the same way (numpy, f64: the squared distance of each row to its nearest returned centroid).

    python3 experiments/kmeans_anchor.py EMBEDDINGS_DIR --k 1024 --iters 14 [--threads 2] \
        --corpus POOL [--quad target/release/quad] [--mini-batch 2048] [--fit-rows 262144]

EMBEDDINGS_DIR is a `quad embed` folder (embeddings.npy, ids.jsonl). The anchors are not project
dependencies: install them in a throwaway venv (`python3 -m venv /tmp/anchors && /tmp/anchors/bin/pip
install faiss-cpu scikit-learn`) and run this script with that venv's python.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def inertia(x, centroids, block=8192):
    """Σ_i min_j ‖x_i − c_j‖², blockwise: the nearest centroid by an f32 GEMM, then that row's
    distance in f64 (exact for the chosen centroid; the GEMM only picks it)."""
    c32 = centroids.astype(np.float32)
    cc = (c32 * c32).sum(1)
    c = centroids.astype(np.float64)
    total = 0.0
    for s in range(0, len(x), block):
        b = x[s : s + block]
        nearest = ((b * b).sum(1)[:, None] - 2 * b @ c32.T + cc[None, :]).argmin(1)
        diff = b.astype(np.float64) - c[nearest]
        total += (diff * diff).sum()
    return total


def run_quad(args, x_dir):
    with tempfile.TemporaryDirectory() as out:
        cmd = [args.quad, "cluster", "--input", args.corpus, "--embeddings", x_dir,
               "--k", str(args.k), "--n-init", "1", "--max-iter", str(args.iters), "--tol", "0", "--out", out]
        if args.mini_batch:
            cmd += ["--mini-batch", str(args.mini_batch)]
        if args.fit_rows:
            cmd += ["--fit-rows", str(args.fit_rows)]
        # The assignment GEMM is one BLAS call per block of rows: BLAS gets the threads (as it does
        # by default), rayon the per-row minima.
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        return wall, np.load(os.path.join(out, "centroids.npy"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings")
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--iters", type=int, default=14)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quad", default="target/release/quad")
    ap.add_argument("--mini-batch", type=int)
    ap.add_argument("--fit-rows", type=int, help="quad's --fit-rows (faiss samples 256 rows per centroid)")
    ap.add_argument("--corpus", required=True, help="the corpus the embeddings came from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x = np.load(os.path.join(args.embeddings, "embeddings.npy")).astype(np.float32)
    n, d = x.shape
    print(f"matrix {n} x {d}, k = {args.k}, {args.iters} iterations, {args.threads} threads")
    rows = []

    wall, c = run_quad(args, args.embeddings)
    rows.append(("quad cluster" + (f" --mini-batch {args.mini_batch}" if args.mini_batch else ""), wall, inertia(x, c)))

    import faiss

    faiss.omp_set_num_threads(args.threads)
    t = time.perf_counter()
    km = faiss.Kmeans(d, args.k, niter=args.iters, seed=args.seed, verbose=False)
    km.train(x)
    _, _ = km.index.search(x, 1)  # the full assignment pass, as quad does
    rows.append(("faiss Kmeans (256 points/centroid sample)", time.perf_counter() - t, inertia(x, km.centroids)))

    from sklearn.cluster import MiniBatchKMeans

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    t = time.perf_counter()
    mb = MiniBatchKMeans(n_clusters=args.k, max_iter=args.iters, batch_size=args.mini_batch or 2048,
                         n_init=1, random_state=args.seed).fit(x)
    mb.predict(x)
    rows.append(("sklearn MiniBatchKMeans", time.perf_counter() - t, inertia(x, mb.cluster_centers_)))

    best = min(r[2] for r in rows)
    print("| method | wall (s) | inertia | vs best |")
    print("|---|---|---|---|")
    for name, wall, iner in rows:
        print(f"| {name} | {wall:.1f} | {iner:.1f} | {100 * (iner / best - 1):+.2f}% |")
    json.dump([{"method": r[0], "seconds": r[1], "inertia": r[2]} for r in rows], sys.stderr)


if __name__ == "__main__":
    main()
