"""In-memory pools and references: every kind gives the selection a file of the same data gives."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import quad_select
from conftest import TINY


@pytest.fixture(scope="module")
def records(pool_small):
    return [json.loads(line) for line in Path(pool_small).read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("inputs-cache")


def lines_of(sel):
    return "".join(line + "\n" for line in sel.lines())


def select(pool, reference, cache):
    return quad_select.select(pool, reference, 40_000, config=TINY, cache=cache)


@pytest.fixture(scope="module")
def from_parquet(tmp_path_factory, records, reference, cache):
    """The selection from a Parquet file the user wrote from the same table (pool.parquet, as the
    in-memory pool is written)."""
    d = tmp_path_factory.mktemp("written")
    pq.write_table(pa.Table.from_pylist(records), d / "pool.parquet")
    return select(d / "pool.parquet", reference, cache)


def test_a_pyarrow_table_and_reader_select_as_the_file(records, reference, cache, from_parquet):
    table = pa.Table.from_pylist(records)
    assert lines_of(select(table, reference, cache)) == lines_of(from_parquet)
    assert lines_of(select(table.to_reader(max_chunksize=100), reference, cache)) == lines_of(from_parquet)


def test_pandas_polars_and_datasets_are_arrow_too(records, reference, cache):
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    datasets = pytest.importorskip("datasets")
    expected = lines_of(select(pa.Table.from_pylist(records), reference, cache))
    want_ids = [json.loads(line)["id"] for line in expected.splitlines()]
    for source in [pd.DataFrame(records), pl.DataFrame(records), datasets.Dataset.from_list(records)]:
        sel = select(source, reference, cache)
        assert sel.ids == want_ids, type(source)


def test_dicts_select_as_the_jsonl_file_of_them(tmp_path, records, reference, cache):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    expected = lines_of(select(path, reference, cache))
    assert lines_of(select(records, reference, cache)) == expected
    assert lines_of(select((r for r in records), reference, cache)) == expected
    # The reference may be in memory too.
    ref = [json.loads(line) for line in Path(reference).read_text().splitlines()]
    assert lines_of(select(path, ref, cache)) == expected


def test_the_written_copy_is_removed_and_bad_kinds_are_refused(tmp_path, records, reference, cache, monkeypatch):
    monkeypatch.setenv("QUAD_INPUTS_DIR", str(tmp_path / "inputs"))
    select(records, reference, cache)
    assert list((tmp_path / "inputs" / "quad-select-inputs").iterdir()) == []
    with pytest.raises(TypeError, match="iterable of dicts"):
        select(42, reference, cache)
    with pytest.raises(TypeError, match="item 0 is str"):
        select(["not a dict"], reference, cache)
