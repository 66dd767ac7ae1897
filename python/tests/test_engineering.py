"""What a data engineer meets first: budgets, error names and locations, a fixed Arrow schema,
skipped records reported, and the reference's own fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pytest

import quad_select
from conftest import TINY


def test_the_error_is_named_as_it_is_imported():
    assert quad_select.QuadError.__module__ == "quad_select"
    assert quad_select.QuadError.__name__ == "QuadError"


@pytest.mark.parametrize("budget", [{"budget_tokens": 0}, {"budget_tokens": -5}, {"budget_documents": 0}, {"budget_documents": -1}])
def test_a_budget_of_nothing_is_an_error(tmp_path, pool_small, reference, budget):
    with pytest.raises(quad_select.QuadError, match="above 0"):
        quad_select.select(pool_small, reference, config=TINY, cache=tmp_path / "cache", **budget)
    assert not (tmp_path / "cache").exists()


def test_a_bad_key_in_a_dict_config_is_named_by_its_path(pool_small, reference):
    with pytest.raises(quad_select.QuadError) as e:
        quad_select.select(pool_small, reference, 1000, config={"bandit": {"alpah": 1.0}})
    message = str(e.value)
    assert "bandit" in message and "alpah" in message, message
    assert "line 1" not in message and "column" not in message, message
    with pytest.raises(quad_select.QuadError, match=r"bandit\.alpha"):
        quad_select.select(pool_small, reference, 1000, config={"bandit": {"alpha": "high"}})


def tiny_with(tmp_path: Path, policy: str) -> Path:
    """The tiny fixture config with another policy."""
    p = tmp_path / f"tiny-{policy}.toml"
    p.write_text(TINY.read_text().replace("[bandit]\n", f'[bandit]\npolicy = "{policy}"\n'))
    return p


def test_to_arrow_has_one_schema_for_every_run(tmp_path, pool_small, reference, cli_run):
    _, cache, _ = cli_run
    quad = quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache)
    # `uniform` scores nothing: every reward and score is None.
    uniform = quad_select.select(pool_small, reference, 40_000, config=tiny_with(tmp_path, "uniform"), cache=cache)
    a, b = quad.to_arrow(), uniform.to_arrow()
    assert a.schema.field("quad").type == quad_select.QUAD_TYPE() == b.schema.field("quad").type
    assert all(q["reward"] is None and q["score"] is None for q in b.column("quad").to_pylist())
    both = pa.concat_tables([a, b], promote_options="default")
    assert both.num_rows == a.num_rows + b.num_rows


def test_skipped_records_are_counted_and_shown(tmp_path, reference):
    lines = (Path(reference)).read_text().splitlines()
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines) + "\nnot json\n" + json.dumps({"id": "x", "text": ""}) + "\n")
    sel = quad_select.select(pool, reference, budget_documents=5, config=tiny_with(tmp_path, "random"), cache=tmp_path / "cache")
    skipped = sel.skipped["pool"]
    assert skipped["counts"] == {"invalid_json": 1, "empty_text": 1}
    assert any(e.endswith(f"pool.jsonl:{len(lines) + 1}: invalid_json") for e in skipped["examples"]), skipped
    assert sel.skipped["reference"]["counts"] == {}


def test_the_reference_has_its_own_fields(tmp_path, pool_small, reference):
    pool = tmp_path / "pool.jsonl"
    with open(pool, "w") as f:
        for line in Path(pool_small).read_text().splitlines():
            r = json.loads(line)
            r["content"], r["doc_id"] = r.pop("text"), r.pop("id")
            f.write(json.dumps(r) + "\n")
    args = dict(budget_documents=10, config=TINY, cache=tmp_path / "cache", text_field="content", id_field="doc_id")
    with pytest.raises(quad_select.QuadError, match="reference"):
        quad_select.select(pool, reference, **args)
    sel = quad_select.select(pool, reference, reference_text_field="text", reference_id_field="id", **args)
    assert len(sel) == 10
    assert sel.manifest["parameters"]["reference_text_field"] == "text"


def test_every_event_reaches_the_callback(pool_small, reference, cli_run):
    _, cache, expected = cli_run
    events = []
    sel = quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache, on_event=events.append)
    assert "".join(line + "\n" for line in sel.lines()).encode() == expected, "watching changes nothing"
    stages = [e["name"] for e in events if e["kind"] == "stage"]
    assert stages[:3] == ["read corpus", "embed", "cluster"], stages
    rounds = [e for e in events if e["kind"] == "round"]
    assert len(rounds) == sel.manifest["rounds"]
    assert rounds[-1]["tokens_selected"] == sel.manifest["documents"]["tokens_selected"]
    assert rounds[-1]["budget"] == {"tokens": 40_000}


def test_an_exception_in_the_callback_stops_the_run_and_is_raised(tmp_path, pool_small, reference, cli_run):
    _, cache, _ = cli_run

    class Enough(Exception):
        pass

    seen = []

    def stop_at_the_first_round(e):
        seen.append(e["kind"])
        if e["kind"] == "round":
            raise Enough

    with pytest.raises(Enough):
        quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache, on_event=stop_at_the_first_round)
    assert seen.count("round") == 1


def test_without_a_callback_progress_is_logged(pool_small, reference, cli_run, caplog):
    _, cache, _ = cli_run
    with caplog.at_level(logging.INFO, logger="quad_select"):
        quad_select.select(pool_small, reference, 40_000, config=TINY, cache=cache)
    messages = [r.getMessage() for r in caplog.records if r.name == "quad_select"]
    assert any(m.startswith("embed") for m in messages), messages


def _quad_command() -> Path:
    """The `quad` command the package installed beside this interpreter."""
    import sys

    p = Path(sys.executable).parent / "quad"
    assert p.is_file(), f"{p}: the package's `quad` command is not installed"
    return p


def test_the_packages_quad_command_is_the_cli(tmp_path, pool_small, reference, cli_run):
    import subprocess

    quad = _quad_command()
    help_text = subprocess.run([str(quad), "select", "--help"], check=True, capture_output=True, text=True).stdout
    assert "--budget-documents" in help_text and help_text.startswith("Select documents")
    usage = subprocess.run([str(quad), "select", "--budget-tokens", "0"], capture_output=True, text=True)
    assert usage.returncode == 2 and "error:" in usage.stderr
    missing = subprocess.run(
        [str(quad), "select", "--input", str(tmp_path / "missing.jsonl"), "--reference", str(reference),
         "--budget-tokens", "1000", "--config", str(TINY), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert missing.returncode == 1 and "missing.jsonl" in missing.stderr
    # The same selection as the binary, byte for byte (same cache, as conftest's CLI run).
    _, cache, expected = cli_run
    out = tmp_path / "out"
    subprocess.run(
        [str(quad), "select", "--input", str(pool_small), "--reference", str(reference), "--budget-tokens", "40000",
         "--config", str(TINY), "--cache", str(cache), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert (out / "selected.jsonl").read_bytes() == expected
    from quad_select.__main__ import main

    assert main(["--version"]) == 0
