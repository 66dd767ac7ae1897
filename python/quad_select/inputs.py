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
from typing import Any, Iterable, Iterator, Mapping, Optional, Tuple

BATCH_ROWS = 8192


def is_path(source: Any) -> bool:
    return isinstance(source, (str, bytes, os.PathLike))


def _arrow_reader(source: Any) -> Optional[Any]:
    """A pyarrow RecordBatchReader over `source` if it is Arrow data, else None."""
    table = getattr(getattr(source, "data", None), "table", None)  # datasets.Dataset
    if table is not None and hasattr(table, "__arrow_c_stream__"):
        source = table
    if not hasattr(source, "__arrow_c_stream__"):
        return None
    import pyarrow as pa

    return pa.RecordBatchReader.from_stream(source)


def _write_parquet(reader: Any, path: Path) -> int:
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch, row_group_size=BATCH_ROWS)
            rows += batch.num_rows
    return rows


def _write_jsonl(records: Iterable[Mapping[str, Any]], path: Path, role: str) -> int:
    rows = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            if not isinstance(r, Mapping):
                raise TypeError(f"{role}: an iterable of dicts is expected; item {rows} is {type(r).__name__}")
            f.write(json.dumps(dict(r), ensure_ascii=False))
            f.write("\n")
            rows += 1
    return rows


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
