"""In-memory pools and references: every kind gives the selection a file of the same data gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_pandas_polars_and_datasets_are_arrow_too(records, reference, cache, from_parquet):
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    datasets = pytest.importorskip("datasets")
    for source in [pd.DataFrame(records), pl.DataFrame(records), datasets.Dataset.from_list(records)]:
        assert lines_of(select(source, reference, cache)) == lines_of(from_parquet), type(source)


def test_an_empty_dataset_is_an_empty_pool_not_an_unknown_kind(reference, cache):
    datasets = pytest.importorskip("datasets")
    empty = datasets.Dataset.from_dict({"id": [], "text": []})
    with pytest.raises(quad_select.QuadError, match="no usable"):
        select(empty, reference, cache)
    assert quad_select.embed(empty, hashing_dim=8).shape == (0, 8)


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


def _text_kinds(texts):
    """The same texts as every kind `embed` and `Scorer` take besides a list: makers, as a reader
    or a generator is read once."""
    kinds = {
        "pyarrow Array": lambda: pa.array(texts),
        "large_string": lambda: pa.array(texts, pa.large_string()),
        "ChunkedArray": lambda: pa.chunked_array([texts[:3], texts[3:]]),
        "Table": lambda: pa.table({"id": list(range(len(texts))), "text": texts}),
        "RecordBatch": lambda: pa.RecordBatch.from_pydict({"text": texts}),
        "RecordBatchReader": lambda: pa.table({"text": texts}).to_reader(max_chunksize=2),
        "generator of str": lambda: (t for t in texts),
        "list of dicts": lambda: [{"id": i, "text": t} for i, t in enumerate(texts)],
        "generator of dicts": lambda: ({"text": t} for t in texts),
    }
    if hasattr(pa, "string_view"):
        kinds["string_view"] = lambda: pa.array(texts, pa.string_view())
    try:
        import datasets
        import pandas as pd
        import polars as pl

        kinds["pandas"] = lambda: pd.DataFrame({"text": texts})
        kinds["Polars DataFrame"] = lambda: pl.DataFrame({"text": texts})
        kinds["Polars Series"] = lambda: pl.Series("text", texts)
        kinds["datasets.Dataset"] = lambda: datasets.Dataset.from_dict({"text": texts})
    except ImportError:
        pass
    return kinds


def test_embed_reads_every_kind_as_the_list(records):
    texts = [r["text"] for r in records[:7]]
    want = quad_select.embed(texts, hashing_dim=128)
    embedder = quad_select.Embedder(hashing_dim=128)
    for kind, make in _text_kinds(texts).items():
        np.testing.assert_array_equal(quad_select.embed(make(), hashing_dim=128), want, err_msg=kind)
    np.testing.assert_array_equal(embedder.embed(pa.table({"body": texts}), text_field="body"), want)
    assert quad_select.embed(pa.array([], pa.string()), hashing_dim=128).shape == (0, 128)


def test_arrow_texts_are_checked(records):
    with pytest.raises(KeyError, match="no field 'text'.*body"):
        quad_select.embed(pa.table({"body": ["a"]}), hashing_dim=8)
    with pytest.raises(TypeError, match="expected strings"):
        quad_select.embed(pa.array([1, 2]), hashing_dim=8)
    with pytest.raises(quad_select.QuadError, match="row 2 is null"):
        quad_select.embed(pa.chunked_array([["a", "b"], [None]]), hashing_dim=8)
    with pytest.raises(TypeError, match="single str"):
        quad_select.embed("a text", hashing_dim=8)
    with pytest.raises(KeyError, match="item 1 has no field 'text'"):
        quad_select.embed([{"text": "a"}, {"body": "b"}], hashing_dim=8)
    with pytest.raises(TypeError, match="item 0 is int"):
        quad_select.embed([1, 2], hashing_dim=8)


def test_the_scorer_reads_every_kind_as_the_list(records, cli_run):
    out, cache, _ = cli_run
    scorer = quad_select.Scorer(str(next(cache.glob("proxy-*"))), str(next(cache.glob("factors-*"))),
                                [r["text"] for r in records[:3]], max_tokens=48)
    texts = [r["text"] for r in records[3:10]]
    want_scores, want_ids = scorer.score(texts), scorer.encode(texts)
    for kind, make in _text_kinds(texts).items():
        assert scorer.score(make()) == want_scores, kind
        assert scorer.encode(make()) == want_ids, kind
