"""`quad select` on a Ray cluster.

The driver runs the pipeline (the same Rust code as ``quad select``) and hands its parallel units
to Ray: every chunk of 256 documents is embedded by one of a pool of Ray actors that each load the
embedder once, every block of rows is assigned to
the centroids (fitted once, on the driver, on k-means' seeded sample) by a Ray task, and each
round's scoring fans out, one batch of similar-length documents per call, to a pool of Ray actors
that each load the proxy, its factors and the reference iHVP once. The bandit runs on the driver
and checkpoints after every round. Each unit gives the same bits wherever it runs, so the
selection is byte for byte ``quad select``'s, whatever the number of workers.

Texts, rows and the scoring files travel through Ray's object store: only the driver reads the
pool, the reference and the cache, so nothing has to be on storage shared by the nodes. Tasks are
retried and actors restarted by Ray when a worker dies.

    python -m quad_select.ray select --address auto --input pool.jsonl --reference ref.jsonl \\
        --budget-tokens 400000 --out out/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import quad_select
from quad_select import _quad

try:
    import ray
except ImportError as e:  # pragma: no cover
    raise ImportError("quad_select.ray needs Ray: pip install 'quad-select[ray]'") from e


@ray.remote(max_restarts=-1, max_task_retries=-1)
class EmbeddingActor:
    """Holds one embedder, loaded once, and embeds the chunks it is sent."""

    def __init__(self, embed: Dict[str, Any]) -> None:
        self._embedder = _quad.Embedder(model=embed.get("model"), hashing_dim=embed["hashing_dim"], batch_size=embed["batch_size"])

    def embed(self, texts: List[str]) -> np.ndarray:
        return self._embedder.embed(texts)


@ray.remote(max_retries=-1)
def _assign_block(rows: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return _quad.assign(rows, centroids)


def _files(path: Path) -> Tuple[bool, Dict[str, bytes]]:
    """A file, or a folder's files (one level): whether it is a folder, and name → bytes."""
    if path.is_dir():
        return True, {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    return False, {path.name: path.read_bytes()}


@ray.remote(max_restarts=-1, max_task_retries=-1)
class ScoringActor:
    """Holds one run's scorer: the proxy, the factors and the reference gradient arrive through the
    object store, are written to a local scratch folder and loaded once.

    The constructor takes nothing: Ray does not keep constructor arguments that live in the object
    store for an actor's restarts (ray#53727; it logs an error-level line for every such actor).
    Every call carries the refs of the run's files instead (the driver holds them), and an actor
    that has not loaded them yet, a restarted one included, loads them first."""

    def __init__(self) -> None:
        self._scorer: Any = None
        self._scratch: Optional[tempfile.TemporaryDirectory] = None

    def load(self, refs: List[Any]) -> None:
        if self._scorer is not None:
            return
        setup, files = ray.get(refs)
        self._scratch = tempfile.TemporaryDirectory(prefix="quad-scorer-")
        local = dict(setup)
        for key, (is_dir, contents) in files.items():
            folder = Path(self._scratch.name) / key
            folder.mkdir()
            for name, data in contents.items():
                (folder / name).write_bytes(data)
            local[key] = str(folder if is_dir else folder / next(iter(contents)))
        self._scorer = _quad.Scorer.for_run(json.dumps(local))

    def score(self, refs: List[Any], batches: List[List[List[int]]]) -> List[List[Optional[float]]]:
        self.load(refs)
        return self._scorer.score_batches(batches)

    def where(self) -> Tuple[str, int]:
        """The node this actor runs on and its process id."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


class RayExecutor:
    """The executor ``quad_select.select(..., executor=...)`` hands its parallel units to.

    ``workers`` scoring actors (default: the cluster's CPUs), each with ``cpus_per_worker`` CPUs.
    """

    def __init__(self, workers: Optional[int] = None, cpus_per_worker: float = 1.0) -> None:
        if not ray.is_initialized():
            raise RuntimeError("connect to a cluster first: ray.init(address=...)")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, workers if workers is not None else int(cpus // cpus_per_worker))
        self.cpus_per_worker = cpus_per_worker
        self.actors: List[Any] = []
        # Embedding actors and the settings they were built with (one embedder per run).
        self._embedders: Tuple[str, List[Any]] = ("", [])

    def parallelism(self) -> int:
        # Two units in flight per worker keep every worker busy while results travel.
        return 2 * self.workers

    def embed(self, chunks: List[List[str]], embed_json: str) -> List[np.ndarray]:
        if self._embedders[0] != embed_json:
            embed = json.loads(embed_json)
            if embed.get("model"):
                embed["model"] = os.path.abspath(embed["model"])
            actors = [EmbeddingActor.options(num_cpus=self.cpus_per_worker).remote(embed) for _ in range(self.workers)]
            self._embedders = (embed_json, actors)
        actors = self._embedders[1]
        # Chunks round-robin over the actors; answers come back in order.
        return ray.get([actors[i % len(actors)].embed.remote(c) for i, c in enumerate(chunks)])

    def _release_embedders(self) -> None:
        """Embedding is over once clustering starts: its actors give their CPUs back (they would
        otherwise hold them while assignment tasks and scoring actors wait for CPUs)."""
        for actor in self._embedders[1]:
            ray.kill(actor)
        self._embedders = ("", [])

    def assign(self, blocks: List[np.ndarray], centroids: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
        self._release_embedders()
        cents = ray.put(centroids)
        return ray.get([_assign_block.options(num_cpus=self.cpus_per_worker).remote(b, cents) for b in blocks])

    def prepare_scoring(self, setup_json: str) -> None:
        self._release_embedders()
        setup = json.loads(setup_json)
        files = {key: _files(Path(setup[key])) for key in ["proxy", "factors", "reference_gradient"] if setup.get(key)}
        # Kept, and sent with every call: a restarted actor loads again from the same objects.
        self._setup_refs = [ray.put(setup), ray.put(files)]
        self.actors = [ScoringActor.options(num_cpus=self.cpus_per_worker).remote() for _ in range(self.workers)]
        for actor in self.actors:
            actor.load.remote(self._setup_refs)

    def score(self, batches: List[List[List[int]]]) -> List[List[Optional[float]]]:
        # Contiguous runs of batches, one per actor; answers come back in order.
        n = len(self.actors)
        per = -(-len(batches) // n) if batches else 0
        parts = [batches[i * per:(i + 1) * per] for i in range(n)]
        futures = [a.score.remote(self._setup_refs, p) for a, p in zip(self.actors, parts) if p]
        return [scores for part in ray.get(futures) for scores in part]


def select(
    pool: "quad_select.PathLike",
    reference: "quad_select.PathLike",
    budget_tokens: Optional[int] = None,
    *,
    budget_documents: Optional[int] = None,
    config: Any = None,
    out: Optional["quad_select.PathLike"] = None,
    cache: Optional["quad_select.PathLike"] = None,
    resume: bool = False,
    workers: Optional[int] = None,
) -> "quad_select.Selection":
    """:func:`quad_select.select` with its parallel units on the connected Ray cluster."""
    executor = RayExecutor(workers)
    return quad_select.select(
        pool, reference, budget_tokens, budget_documents=budget_documents, config=config, out=out,
        cache=cache, resume=resume, executor=executor,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quad_select.ray", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("select", help="select on a Ray cluster (the same outputs as `quad select`)")
    s.add_argument("--address", default="auto", help="the Ray cluster (default: auto, the one this node belongs to)")
    s.add_argument("--input", required=True, help="the pool (a corpus file or folder)")
    s.add_argument("--reference", required=True)
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-tokens", type=int)
    budget.add_argument("--budget-documents", "--budget-docs", dest="budget_documents", type=int)
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="a TOML config (as for quad select)")
    s.add_argument("--cache", default=".quad-cache")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.json")
    s.add_argument("--workers", type=int, help="scoring actors (default: the cluster's CPUs)")
    a = p.parse_args(argv)
    ray.init(address=a.address, log_to_driver=False)
    try:
        sel = select(
            a.input, a.reference, a.budget_tokens, budget_documents=a.budget_documents, config=a.config,
            out=a.out, cache=a.cache, resume=a.resume, workers=a.workers,
        )
    except quad_select.QuadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"stopped: {e}; continue with --resume", file=sys.stderr)
        return 130
    finally:
        ray.shutdown()
    docs = sel.manifest["documents"]
    print(f"selected {docs['selected']} documents, {docs['tokens_selected']} tokens in {len(sel.rounds)} rounds; "
          f"scored {docs['scored']} documents -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
