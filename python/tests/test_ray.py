"""quad_select.ray on a real two-node Ray cluster started by the test (`ray start --head` with 1 CPU
plus `ray start --address` with 1 CPU, both on this machine): the same bytes as `quad select`,
with a scoring actor killed mid-run, and after the driver is killed and resumed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import quad_select.ray as qray  # noqa: E402
from conftest import TINY, REPO  # noqa: E402

# The test cluster and its clients talk without Ray's token authentication.
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, 1 CPU each; stopped afterwards, also when a test fails."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([RAY, "start", "--head", "--num-cpus", "1", "--port", str(port), "--include-dashboard=false",
                        "--disable-usage-stats"], env=ENV, check=True, capture_output=True)
        subprocess.run([RAY, "start", "--address", address, "--num-cpus", "1"], env=ENV, check=True, capture_output=True)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True)


def driver(address: str, pool: Path, reference: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "quad_select.ray", "select", "--address", address, "--input", str(pool),
         "--reference", str(reference), "--budget-tokens", "40000", "--config", str(TINY), "--cache", str(cache),
         "--out", str(out), *extra],
        env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("workers", [None, "1"])
def test_two_node_run_matches_the_cli_byte_for_byte(tmp_path, cluster, pool_small, reference, cli_run, workers):
    _, _, expected = cli_run
    extra = ["--workers", workers] if workers else []  # default: one actor per CPU of the cluster (2)
    p = driver(cluster, pool_small, reference, tmp_path / "out", tmp_path / "cache", *extra)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert (tmp_path / "out" / "selected.jsonl").read_bytes() == expected
    for name in ["rounds.csv", "clusters.csv", "manifest.json"]:
        assert (tmp_path / "out" / name).is_file()
    # Ray logs an error-level line for an actor whose constructor arguments live in the object
    # store and that may restart; none of ours does.
    logs = Path("/tmp/ray/session_latest/logs")
    said = [p.name for p in logs.glob("*.log") if "constructor arguments in the object store" in p.read_text(errors="replace")]
    assert not said, said


class KillingExecutor(qray.RayExecutor):
    """Kills scoring actor 0 while its second scoring call is in flight (Ray restarts it and
    retries the call)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls, self.killed_pid = 0, None

    def score(self, batches):
        self.calls += 1
        if self.calls != 2:
            return super().score(batches)
        n = len(self.actors)
        per = -(-len(batches) // n)
        parts = [batches[i * per:(i + 1) * per] for i in range(n)]
        self.killed_pid = ray.get(self.actors[0].where.remote())[1]
        refs = list(self._setup_refs)
        futures = [a.score.remote(refs, p) for a, p in zip(self.actors, parts) if p]
        ray.kill(self.actors[0], no_restart=False)
        return [s for part in ray.get(futures) for s in part]


def test_a_killed_scoring_actor_leaves_the_selection_unchanged(tmp_path, cluster, pool_small, reference, cli_run):
    _, _, expected = cli_run
    os.environ.update(RAY_AUTH_MODE="disabled")
    ray.init(address=cluster, log_to_driver=False)
    try:
        ex = KillingExecutor(workers=2)
        assert ex.workers == 2
        qray.quad_select.select(pool_small, reference, 40_000, config=TINY, out=tmp_path / "out",
                                cache=tmp_path / "cache", executor=ex)
        assert ex.calls >= 3, "the run scored too few times to kill mid-run"
        # The actors ran on both nodes, and actor 0 is a new process.
        places = [ray.get(a.where.remote()) for a in ex.actors]
        assert len({node for node, _ in places}) == 2, places
        assert places[0][1] != ex.killed_pid
    finally:
        ray.shutdown()
    assert (tmp_path / "out" / "selected.jsonl").read_bytes() == expected


def test_a_killed_driver_resumes_from_its_checkpoint(tmp_path, cluster, pool_small, reference, cli_run):
    _, _, expected = cli_run
    out, cache = tmp_path / "out", tmp_path / "cache"
    p = driver(cluster, pool_small, reference, out, cache)
    # Kill -9 once the bandit has checkpointed a round.
    while p.poll() is None and not (out / "checkpoint.json").exists():
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not (out / "manifest.json").exists(), "the driver finished before it could be killed"
    p = driver(cluster, pool_small, reference, out, cache, "--resume")
    _, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert (out / "selected.jsonl").read_bytes() == expected
