"""Type stubs of the extension module (python/src/lib.rs)."""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

class QuadError(Exception):
    """An error of quad-select (the Rust library's message)."""

class RawSelection:
    def ids(self) -> List[str]: ...
    def lines(self) -> List[str]: ...
    def rounds_json(self) -> str: ...
    def manifest_json(self) -> str: ...
    def clusters_json(self) -> str: ...
    def skipped_json(self) -> str: ...
    def write(self, out: str) -> None: ...

def select(
    pool: str,
    reference: str,
    *,
    budget_tokens: Optional[int] = None,
    budget_documents: Optional[int] = None,
    config_path: Optional[str] = None,
    config_json: Optional[str] = None,
    temperature: Optional[float] = None,
    text_field: Optional[str] = None,
    id_field: Optional[str] = None,
    reference_text_field: Optional[str] = None,
    reference_id_field: Optional[str] = None,
    cache: Optional[str] = None,
    out: Optional[str] = None,
    resume: bool = False,
    executor: Optional[object] = None,
    on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> RawSelection: ...
# Texts: a list of str (one batch), Arrow data read in place (a pyarrow Array/ChunkedArray of
# strings, a Polars Series, or a Table/RecordBatch/RecordBatchReader, Polars or pandas DataFrame or
# datasets.Dataset whose ``text_field`` column is read), or an iterable of str or of dicts (their
# ``text_field``); all but the list come in batches of at most 8,192 (quad_select.inputs.text_arrays).
Texts = Union[Sequence[str], Any]

def embed(
    texts: Texts,
    *,
    model: Optional[str] = None,
    hashing_dim: Optional[int] = None,
    batch_size: int = 32,
    text_field: str = "text",
) -> npt.NDArray[np.float32]:
    """Unit rows, one per text: the sentence-embedding model folder ``model``, or the hashing
    embedder of ``hashing_dim`` dimensions. A list of str is embedded as one chunk, other texts
    batch by batch (Arrow data without copying its strings); a sentence embedder's rows may differ
    in the last bits between chunkings (it batches by length within a chunk)."""

class Embedder:
    """An embedder loaded once: the sentence-embedding model folder ``model``, or the hashing
    embedder of ``hashing_dim`` dimensions."""

    def __init__(self, *, model: Optional[str] = None, hashing_dim: Optional[int] = None, batch_size: int = 32) -> None: ...
    def embed(self, texts: Texts, *, text_field: str = "text") -> npt.NDArray[np.float32]:
        """Unit rows, one per text (as :func:`embed`)."""
    @property
    def dim(self) -> int:
        """Length of every row."""

def assign(
    embeddings: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> Tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
    """Each row's nearest centroid and the squared Euclidean distance to it (2 − 2·cos on unit
    rows)."""

class Scorer:
    """A proxy, its factors and a reference iHVP, loaded once; scores batches of texts."""

    def __init__(
        self,
        model: str,
        factors: str,
        reference: Sequence[str],
        *,
        strategy: str = "ekfac",
        damping_rel: float = 0.1,
        max_tokens: Optional[int] = None,
        batch: int = 2,
    ) -> None: ...
    @staticmethod
    def for_run(setup_json: str) -> "Scorer":
        """The scorer of a run's scoring worker, from the ScoringSetup JSON its executor received."""
    def encode(self, texts: Texts, *, text_field: str = "text") -> List[List[int]]:
        """Token ids of ``texts`` as scoring takes them."""
    def score_batches(self, batches: Sequence[Sequence[Sequence[int]]]) -> List[List[Optional[float]]]:
        """Raw scores of batches of token ids, each batch one pass."""
    def score(self, texts: Texts, *, text_field: str = "text") -> List[Optional[float]]:
        """Influence scores of ``texts`` in order (None: fewer than two tokens); Arrow data is read
        in place, batch by batch."""

def cli(argv: Sequence[str]) -> int:
    """Runs the ``quad`` command line with ``argv`` (the program name first) in this process and
    returns its exit status (``quad_select.__main__``)."""
