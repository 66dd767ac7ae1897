"""Shared fixtures: the repository, the shared data, the `quad` binary and a small reference."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny-select.toml"


def shared() -> Path:
    """`../shared` beside the repository (override with QUAD_SHARED)."""
    p = Path(os.environ.get("QUAD_SHARED", REPO.parent / "shared"))
    assert (p / "data" / "pool-small.jsonl").is_file(), f"shared data not found at {p} (set QUAD_SHARED)"
    return p


def quad_bin() -> Path:
    """The release `quad` binary (`cargo test --release` builds it; override with QUAD_BIN)."""
    p = Path(os.environ.get("QUAD_BIN", REPO / "target" / "release" / "quad"))
    assert p.is_file(), f"{p} not found: run `cargo build --release` first (or set QUAD_BIN)"
    return p


@pytest.fixture(scope="session")
def pool_small() -> Path:
    return shared() / "data" / "pool-small.jsonl"


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 chunks of the wiki reference set."""
    lines = (shared() / "data" / "reference-wiki.jsonl").read_text().splitlines()[:40]
    p = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def run_cli(pool: Path, reference: Path, out: Path, cache: Path, budget: int = 40_000) -> bytes:
    """`quad select` with the tiny fixture config; returns its selected.jsonl."""
    subprocess.run(
        [str(quad_bin()), "select", "--input", str(pool), "--reference", str(reference),
         "--budget-tokens", str(budget), "--config", str(TINY), "--cache", str(cache), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return (out / "selected.jsonl").read_bytes()


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory: pytest.TempPathFactory, pool_small: Path, reference: Path):
    """One CLI run on pool-small: (its out folder, its cache, its selected.jsonl bytes)."""
    base = tmp_path_factory.mktemp("cli")
    out, cache = base / "out", base / "cache"
    return out, cache, run_cli(pool_small, reference, out, cache)
