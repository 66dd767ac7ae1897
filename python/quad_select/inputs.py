"""Pools and references held in memory: anything that speaks the Arrow C stream interface
(``__arrow_c_stream__``: a pyarrow Table or RecordBatchReader, a Polars or pandas DataFrame), a
Hugging Face ``datasets.Dataset`` (its Arrow table), or an iterable of dicts.

The library reads a corpus more than once (to embed, to tokenize, to score, to report), so an
in-memory input is written out once, batch by batch (never held twice): Arrow data to Parquet,
dicts to JSONL (one ``json.dumps`` line each). The file lands in a folder named by its content's
hash under ``QUAD_INPUTS_DIR`` (default: the system's temporary folder), so the same data gets the
same path, the same ids where the records have no id field (``file:line``) and the same cache
entries on every call; the folder is removed when the selection is done. The selection is the one
a path to the same file would give.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

BATCH_ROWS = 8192


def is_path(source: Any) -> bool:
    return isinstance(source, (str, bytes, os.PathLike))


def _unwrap_dataset(source: Any) -> Any:
    """A Hugging Face ``datasets.Dataset`` as its Arrow table (``.data.table``); anything else as
    it is. (Not ``table or source``: an empty table is falsy.)"""
    if type(source).__module__.split(".")[0] != "datasets":
        return source
    table = getattr(getattr(source, "data", None), "table", None)
    return table if hasattr(table, "__arrow_c_stream__") else source


def _arrow_reader(source: Any) -> Optional[Any]:
    """A pyarrow RecordBatchReader over `source` if it is Arrow record data, else None."""
    source = _unwrap_dataset(source)
    if not hasattr(source, "__arrow_c_stream__"):
        return None
    import pyarrow as pa

    return pa.RecordBatchReader.from_stream(source)


def _write_parquet(reader: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch, row_group_size=BATCH_ROWS)


def _write_jsonl(records: Iterable[Mapping[str, Any]], path: Path, role: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise TypeError(f"{role}: an iterable of dicts is expected; item {i} is {type(r).__name__}")
            f.write(json.dumps(dict(r), ensure_ascii=False))
            f.write("\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def as_path(source: Any, role: str) -> Iterator[str]:
    """`source` as a corpus path for the duration of the block: a path as it is, in-memory data
    written out (see the module docs)."""
    if is_path(source):
        yield os.fspath(source)
        return
    base = Path(os.environ.get("QUAD_INPUTS_DIR", tempfile.gettempdir())) / "quad-select-inputs"
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    final: Optional[Path] = None
    try:
        reader = _arrow_reader(source)
        if reader is not None:
            name = f"{role}.parquet"
            _write_parquet(reader, staging / name)
        elif isinstance(source, Iterable) and not isinstance(source, Mapping):
            name = f"{role}.jsonl"
            _write_jsonl(source, staging / name, role)
        else:
            raise TypeError(
                f"{role}: expected a path, Arrow data (__arrow_c_stream__: pyarrow, Polars, pandas), "
                f"a datasets.Dataset or an iterable of dicts; got {type(source).__name__}"
            )
        final = base / _sha256(staging / name)[:16]
        try:
            staging.rename(final)
        except OSError:
            # The same data is being selected from elsewhere right now: its copy is this one.
            shutil.rmtree(staging, ignore_errors=True)
        staging = final
        yield str(final / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def text_arrays(source: Any, text_field: str = "text") -> Optional[Iterator[Any]]:
    """The texts of Arrow data as pyarrow string arrays of at most ``BATCH_ROWS`` rows each (slices:
    no copy), for :func:`quad_select.embed`, :class:`quad_select.Embedder` and
    :class:`quad_select.Scorer`, which read them in place through the Arrow C data interface.
    ``source`` is a string array (pyarrow Array or ChunkedArray, a Polars Series, anything with
    ``__arrow_c_array__`` or ``__arrow_c_stream__`` of strings) or tabular Arrow data (a pyarrow
    Table, RecordBatch or RecordBatchReader, a Polars or pandas DataFrame, a ``datasets.Dataset``),
    whose ``text_field`` column is read, or an iterable (a generator, say) of str or of dicts
    (their ``text_field``), gathered into arrays batch by batch. None for a list or tuple of str,
    which the extension reads as it is."""
    if isinstance(source, (str, bytes)):
        raise TypeError("texts: expected a sequence of str or Arrow data, not a single str")
    source = _unwrap_dataset(source)
    if not (hasattr(source, "__arrow_c_stream__") or hasattr(source, "__arrow_c_array__")):
        if isinstance(source, (list, tuple)) and all(isinstance(t, str) for t in source):
            return None
        if isinstance(source, Mapping) or not isinstance(source, Iterable):
            raise TypeError(f"texts: expected a sequence of str, dicts or Arrow data; got {type(source).__name__}")
        return _texts_of(_python_batches(iter(source), text_field), text_field)
    import pyarrow as pa

    if isinstance(source, pa.ChunkedArray):
        chunks: Iterable[Any] = source.chunks
    elif isinstance(source, (pa.Array, pa.RecordBatch)):
        chunks = [source]
    elif hasattr(source, "__arrow_c_array__") and not hasattr(source, "__arrow_c_stream__"):
        chunks = [pa.array(source)]
    else:
        try:
            chunks = _arrow_reader(source)
        except (TypeError, ValueError, pa.ArrowInvalid):  # a stream of strings, not of records
            chunks = pa.chunked_array(source).chunks
    return _texts_of(chunks, text_field)


def _python_batches(items: Iterator[Any], text_field: str) -> Iterator[Any]:
    """Strings or dicts (their ``text_field``) from an iterator, as string arrays of ``BATCH_ROWS``."""
    import itertools

    import pyarrow as pa

    seen = 0
    while True:
        batch = list(itertools.islice(items, BATCH_ROWS))
        if not batch:
            return
        texts = []
        for i, item in enumerate(batch):
            if isinstance(item, Mapping):
                if text_field not in item:
                    raise KeyError(f"texts: item {seen + i} has no field {text_field!r}")
                item = item[text_field]
            if not isinstance(item, str):
                raise TypeError(f"texts: item {seen + i} is {type(item).__name__}, not str")
            texts.append(item)
        seen += len(batch)
        yield pa.array(texts, pa.string())


def _texts_of(chunks: Iterable[Any], text_field: str) -> Iterator[Any]:
    import pyarrow as pa

    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow ≥ 16
    for chunk in chunks:
        if isinstance(chunk, pa.RecordBatch):
            if text_field not in chunk.schema.names:
                raise KeyError(f"texts: no field {text_field!r} (fields: {', '.join(chunk.schema.names)})")
            chunk = chunk.column(text_field)
        elif pa.types.is_struct(chunk.type):
            names = [chunk.type.field(i).name for i in range(chunk.type.num_fields)]
            if text_field not in names:
                raise KeyError(f"texts: no field {text_field!r} (fields: {', '.join(names)})")
            chunk = chunk.field(text_field)
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type) or is_view(chunk.type)):
            raise TypeError(f"texts: expected strings, got Arrow type {chunk.type}")
        for start in range(0, len(chunk), BATCH_ROWS):
            yield chunk.slice(start, BATCH_ROWS)
