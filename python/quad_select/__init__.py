"""quad-select from Python: Quad's diversity-aware, influence-based data selection.

``select`` runs the whole pipeline in this process (the same library as ``quad select``, with the
GIL released) and returns a :class:`Selection`. The stage functions a distributed run needs are
here too: :func:`embed` (texts to unit rows), :func:`assign` (rows to their nearest centroid) and
:class:`Scorer` (a proxy, its factors and a reference iHVP, loaded once, scoring batches of
texts). :mod:`quad_select.ray` runs a selection on a Ray cluster.

Errors of the Rust library are raised as :class:`QuadError` with its message.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Union

# Scoring parallelises across documents; candle's own per-op threads mostly wait on operands this
# small (see the README). Set before the extension is loaded; a value the user set stays.
os.environ.setdefault("CANDLE_NUM_THREADS", "1")

from . import _quad  # noqa: E402
from ._quad import Embedder, QuadError, Scorer, assign, embed  # noqa: E402
from .inputs import as_path  # noqa: E402
from .progress import default_reporter  # noqa: E402

if TYPE_CHECKING:
    import pyarrow

__all__ = ["QUAD_TYPE", "Embedder", "QuadError", "Scorer", "Selection", "assign", "embed", "select"]

PathLike = Union[str, "os.PathLike[str]"]

log = logging.getLogger("quad_select")


class Selection:
    """The result of a selection: the selected records with their provenance, the bandit's rounds,
    the clusters at the end and the run's manifest (as ``quad select`` writes them)."""

    def __init__(self, raw: "_quad.RawSelection") -> None:
        self._raw = raw
        self.ids: List[str] = raw.ids()
        self.rounds: List[Dict[str, Any]] = json.loads(raw.rounds_json())
        self.clusters: List[Dict[str, Any]] = json.loads(raw.clusters_json())
        self.manifest: Dict[str, Any] = json.loads(raw.manifest_json())
        self.skipped: Dict[str, Dict[str, Any]] = _skipped(json.loads(raw.skipped_json()))
        """Records skipped on reading, for ``"pool"`` and ``"reference"``: ``{"counts": {reason:
        n}, "examples": ["file:line: reason", ...]}`` (the first few), as ``quad select`` prints them."""

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        docs = self.manifest["documents"]
        return (
            f"Selection({docs['selected']} documents, {docs['tokens_selected']} tokens, "
            f"{len(self.rounds)} rounds, scored {100 * docs['scored_fraction']:.1f}% of the pool)"
        )

    def lines(self) -> List[str]:
        """The lines of ``selected.jsonl``: each input record, byte for byte, with a ``"quad"``
        field (cluster, round, reward, score) added."""
        return self._raw.lines()

    def records(self) -> List[Dict[str, Any]]:
        """The selected records as dicts, each with its ``"quad"`` provenance."""
        return [json.loads(line) for line in self._raw.lines()]

    def to_arrow(self) -> "pyarrow.Table":
        """A pyarrow Table of the selected records, in the order taken: their fields as columns
        (types inferred from the records), then the provenance column ``quad`` with a fixed type,
        ``struct<cluster: int64, round: int64, reward: double, score: double>`` (reward and score
        null where the policy has none), so that tables of different runs concatenate."""
        import pyarrow as pa

        records = self.records()
        quad = pa.array([r.pop("quad") for r in records], type=QUAD_TYPE())
        table = pa.Table.from_pylist(records)
        if table.num_columns == 0:  # no selection, or records without fields of their own
            return pa.table({"quad": quad})
        return table.append_column(pa.field("quad", quad.type), quad)

    def write(self, out: PathLike) -> None:
        """Writes ``selected.jsonl``, ``rounds.csv``, ``clusters.csv`` and ``manifest.json`` into
        ``out`` (atomically, the manifest last)."""
        self._raw.write(os.fspath(out))


def QUAD_TYPE() -> "pyarrow.DataType":
    """The Arrow type of :meth:`Selection.to_arrow`'s ``quad`` column (pyarrow is imported only
    when it is asked for)."""
    import pyarrow as pa

    return pa.struct(
        [("cluster", pa.int64()), ("round", pa.int64()), ("reward", pa.float64()), ("score", pa.float64())]
    )


def _skipped(inputs: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for name in ("pool", "reference"):
        read = inputs[name]["read"]
        examples = [f"{loc['file']}:{loc['line']}: {reason}" for loc, reason in read["first_skips"]]
        out[name] = {"counts": dict(read["skipped"]), "examples": examples}
        if read["skipped"]:
            total = sum(read["skipped"].values())
            log.warning("%s: skipped %d records (%s); first: %s", name, total, read["skipped"], "; ".join(examples[:3]))
    return out


def _config_args(config: Union[None, PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return {"config_json": json.dumps(dict(config))}
    return {"config_path": os.fspath(config)}


def select(
    pool: Any,
    reference: Any,
    budget_tokens: Optional[int] = None,
    *,
    budget_documents: Optional[int] = None,
    config: Union[None, PathLike, Mapping[str, Any]] = None,
    temperature: Optional[float] = None,
    text_field: Optional[str] = None,
    id_field: Optional[str] = None,
    reference_text_field: Optional[str] = None,
    reference_id_field: Optional[str] = None,
    out: Optional[PathLike] = None,
    cache: Optional[PathLike] = None,
    resume: bool = False,
    executor: Optional[object] = None,
    on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Selection:
    """Selects from ``pool`` for ``reference``, up to ``budget_tokens`` proxy tokens (or
    ``budget_documents`` documents). Each is a path (JSONL, optionally compressed, or Parquet; a
    file or a folder), Arrow data (a pyarrow Table or RecordBatchReader, a Polars or pandas
    DataFrame: anything with ``__arrow_c_stream__``), a ``datasets.Dataset``, or an iterable of
    dicts; in-memory data is written out once, batch by batch (:mod:`quad_select.inputs`).

    ``config`` is a TOML file or a dict of the same sections (``{"bandit": {"alpha": 2.0}}``);
    omitted settings take their defaults. ``temperature`` (T, in units of the pool's score
    spread; default 0.5) is the quality/diversity knob of the tilt, as ``quad select
    --temperature``: lower leans towards the best-scored documents, higher stays closer to the
    pool; it overrides ``config``'s ``bandit.temperature``. ``text_field`` and ``id_field`` name
    the pool's fields (default ``text`` and ``id``), ``reference_text_field`` and
    ``reference_id_field`` the reference's when they differ (default: the pool's). Budgets are
    positive whole numbers. With ``out`` the four output files are written there
    as ``quad select --out`` writes them (byte for byte the same), with a checkpoint after every
    round that ``resume=True`` continues. ``cache`` defaults to ``.quad-cache``, as for the CLI.
    Ctrl-C stops the run at its next step and raises KeyboardInterrupt. ``executor`` runs the
    parallel units elsewhere (:class:`quad_select.ray.RayExecutor`); the selection is the same.
    ``on_event`` receives every stage, progress, note and round as a dict
    (:mod:`quad_select.progress`); an exception it raises stops the run and is raised here.
    Without it, a progress bar is drawn on a terminal and ``logging`` records (logger
    ``quad_select``) are emitted otherwise.
    """
    with as_path(pool, "pool") as pool_path, as_path(reference, "reference") as reference_path:
        raw = _quad.select(
            pool_path,
            reference_path,
            budget_tokens=budget_tokens,
            budget_documents=budget_documents,
            cache=None if cache is None else os.fspath(cache),
            out=None if out is None else os.fspath(out),
            resume=resume,
            executor=executor,
            on_event=on_event if on_event is not None else default_reporter(),
            temperature=temperature,
            text_field=text_field,
            id_field=id_field,
            reference_text_field=reference_text_field,
            reference_id_field=reference_id_field,
            **_config_args(config),
        )
    return Selection(raw)
