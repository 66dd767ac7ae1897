"""quad_select in-process: the same bytes as the CLI, the Selection's views, the stage functions,
errors as exceptions and the GIL released while Rust works."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import quad_select
from conftest import TINY, quad_bin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def test_select_in_process_matches_the_cli_byte_for_byte(tmp_path, pool_small, reference, cli_run):
    _, _, expected = cli_run
    # A fresh cache: nothing computed by the CLI is reused.
    sel = quad_select.select(pool_small, reference, 40_000, config=TINY, out=tmp_path / "out", cache=tmp_path / "cache")
    assert (tmp_path / "out" / "selected.jsonl").read_bytes() == expected
    assert "".join(line + "\n" for line in sel.lines()).encode() == expected
    for name in ["rounds.csv", "clusters.csv", "manifest.json"]:
        assert (tmp_path / "out" / name).is_file()


def test_selection_views(tmp_path, pool_small, reference, cli_run):
    out, cache, expected = cli_run
    sel = quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache)
    lines = expected.decode().splitlines()
    assert sel.ids == [json.loads(line)["id"] for line in lines]
    assert len(sel) == len(lines)
    m = sel.manifest
    assert m["documents"]["selected"] == len(sel.ids)
    cli = json.loads((out / "manifest.json").read_text())
    for key in ["documents", "parameters", "inputs", "model", "factors", "rounds", "stop", "k"]:
        assert m[key] == cli[key], key
    assert len(sel.rounds) == m["rounds"] and all(isinstance(r, dict) for r in sel.rounds)
    assert sum(c["size"] for c in sel.clusters) == m["documents"]["selectable"]
    table = sel.to_arrow()
    assert table.num_rows == len(sel.ids)
    assert table.column("id").to_pylist() == sel.ids
    quad = table.column("quad").to_pylist()
    assert {"cluster", "round", "reward", "score"} <= set(quad[0])
    assert all(q["cluster"] < len(sel.clusters) for q in quad)
    assert "Selection(" in repr(sel)


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_config_as_a_dict_is_the_config_as_a_file(pool_small, reference, cli_run):
    _, cache, expected = cli_run
    config = tomllib.loads(TINY.read_text())
    sel = quad_select.select(pool_small, reference, 40_000, config=config, cache=cache)
    assert "".join(line + "\n" for line in sel.lines()).encode() == expected


def test_temperature_is_the_cli_flag(tmp_path, pool_small, reference, cli_run):
    _, cache, default = cli_run
    out = tmp_path / "cli-t2"
    subprocess.run(
        [str(quad_bin()), "select", "--input", str(pool_small), "--reference", str(reference),
         "--budget-tokens", "40000", "--config", str(TINY), "--cache", str(cache), "--out", str(out),
         "--temperature", "2"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    expected = (out / "selected.jsonl").read_bytes()
    sel = quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache, temperature=2.0)
    assert "".join(line + "\n" for line in sel.lines()).encode() == expected
    assert sel.manifest["parameters"]["bandit"]["temperature"] == 2.0
    assert expected != default, "a hotter tilt takes another selection"
    with pytest.raises(quad_select.QuadError, match="temperature"):
        quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache, temperature=0.0)


def test_errors_are_exceptions_with_the_rust_message(tmp_path, reference):
    with pytest.raises(quad_select.QuadError, match="no-such-pool.jsonl"):
        quad_select.select(tmp_path / "no-such-pool.jsonl", reference, 1000, config=TINY, cache=tmp_path / "c")
    with pytest.raises(quad_select.QuadError, match="unknown field"):
        quad_select.select(tmp_path / "p.jsonl", reference, 1000, config={"bandit": {"no_such_key": 1}})
    with pytest.raises(quad_select.QuadError, match="budget"):
        quad_select.select(tmp_path / "p.jsonl", reference, None)
    with pytest.raises(quad_select.QuadError, match="columns"):
        quad_select.assign(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))


def test_embed_and_assign():
    texts = ["the cat sat on the mat", "SELECT * FROM pg_class;", "To be, or not to be"]
    rows = quad_select.embed(texts, hashing_dim=256)
    assert rows.shape == (3, 256) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(quad_select.embed(texts[:1], hashing_dim=256)[0], rows[0])
    labels, distances = quad_select.assign(rows, rows[[2, 0, 1]])
    assert labels.tolist() == [1, 2, 0]
    np.testing.assert_allclose(distances, 0.0, atol=1e-5)


def test_scorer_gives_the_runs_scores(pool_small, cli_run):
    out, cache, _ = cli_run
    proxy = next(cache.glob("proxy-*"))
    factors = next(cache.glob("factors-*"))
    records = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["quad"]["score"] is not None][:6]
    assert scored, "the run scored no selected document"
    reference = json.loads((out / "manifest.json").read_text())["inputs"]["reference"]["path"]
    ref_texts = [json.loads(line)["text"] for line in Path(reference).read_text().splitlines()]
    config = tomllib.loads(TINY.read_text()) if tomllib else {}
    max_tokens = config.get("influence", {}).get("max_tokens", 256)
    scorer = quad_select.Scorer(str(proxy), str(factors), ref_texts, max_tokens=max_tokens)
    got = np.array(scorer.score([r["text"] for r in scored]))
    # The provenance holds standardised scores: (raw − median) / std of the calibration sample.
    calibration = json.loads((out / "manifest.json").read_text())["calibration"]
    want = np.array([r["quad"]["score"] for r in scored])
    np.testing.assert_allclose((got - calibration["median"]) / calibration["std"], want, rtol=1e-6, atol=1e-9)
    assert scorer.score(["a"]) == [None]


def test_the_gil_is_released_while_rust_works(tmp_path, pool_small, reference):
    done = threading.Event()
    errors = []

    def work():
        try:
            quad_select.select(pool_small, reference, 40_000, config=TINY, cache=tmp_path / "cache")
        except Exception as e:  # pragma: no cover
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=work)
    started = time.perf_counter()
    t.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    assert not errors, errors
    # Python ran beside the selection: about one tick per millisecond of its wall time.
    assert ticks > 0.2 * (time.perf_counter() - started) * 1000


def test_an_out_folder_holding_the_pool_is_refused_and_the_pool_kept(tmp_path, pool_small, reference):
    out = tmp_path / "out"
    out.mkdir()
    pool = out / "selected.jsonl"
    pool.write_bytes(Path(pool_small).read_bytes())
    before = pool.read_bytes()
    with pytest.raises(quad_select.QuadError, match="contains the input pool"):
        quad_select.select(pool, reference, 40_000, config=TINY, out=out, cache=tmp_path / "cache")
    assert pool.read_bytes() == before
    assert not (tmp_path / "cache").exists(), "nothing is written before the refusal"
