//! `quad_select._quad`: the Rust side of the Python package. Thin on purpose: each function builds
//! library types, runs the library with the GIL released, and hands back plain data (JSON text,
//! numpy arrays); `quad_select/__init__.py` gives it its Python shape.

use std::ops::ControlFlow;
use std::path::PathBuf;

use ndarray::{Array2, ArrayView2};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use arrow_array::cast::AsArray;
use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{Array, ArrayRef};
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};

use quad_select::bandit::Budget;
use quad_select::embed::BertOptions;
use quad_select::influence::stage::ScoreArguments;
use quad_select::influence::DocumentScorer;
use quad_select::influence::{Damping, Strategy};
use quad_select::select::{Event, Executor, Local, ScoringSetup, SelectConfig, SelectError, Selection, Selector, ValidSelectConfig};

// Named as users import it: tracebacks say `quad_select.QuadError`.
pyo3::create_exception!(quad_select, QuadError, pyo3::exceptions::PyException, "An error of quad-select (the Rust library's message).");

/// A library error as a `QuadError`, its text as the CLI prints it.
fn err(e: impl std::error::Error + 'static) -> PyErr {
    QuadError::new_err(quad_select::error_text::error_text(&e))
}

/// The config: a path to a TOML file, a dict (as JSON text, from the Python side), or the defaults.
fn config(path: Option<PathBuf>, json: Option<&str>) -> PyResult<SelectConfig> {
    match (path, json) {
        (Some(_), Some(_)) => Err(QuadError::new_err("give the config as a path or as a dict, not both")),
        (Some(p), None) => SelectConfig::from_toml_file(&p).map_err(err),
        (None, Some(j)) => config_from_dict(j),
        (None, None) => Ok(SelectConfig::default()),
    }
}

/// A dict config (as JSON text): an error names the key path (`bandit.alpah`), not a position in
/// JSON the package generated.
fn config_from_dict(json: &str) -> PyResult<SelectConfig> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| QuadError::new_err(format!("config: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            QuadError::new_err(format!("config: {inner}"))
        } else {
            QuadError::new_err(format!("config: {path}: {inner}"))
        }
    })
}

/// The field names `select` was given (None: the config's).
struct Fields {
    text: Option<String>,
    id: Option<String>,
    reference_text: Option<String>,
    reference_id: Option<String>,
}

/// The config with `select`'s keyword overrides (fields, temperature), checked.
fn run_config(mut cfg: SelectConfig, fields: Fields, temperature: Option<f64>) -> PyResult<ValidSelectConfig> {
    cfg.text_field = fields.text.unwrap_or(cfg.text_field);
    cfg.id_field = fields.id.unwrap_or(cfg.id_field);
    cfg.reference_text_field = fields.reference_text.or(cfg.reference_text_field);
    cfg.reference_id_field = fields.reference_id.or(cfg.reference_id_field);
    if let Some(t) = temperature {
        cfg.bandit = cfg.bandit.with_temperature(t).map_err(err)?;
    }
    cfg.check().map_err(err)
}

/// A budget given from Python: a negative one is a `QuadError` (not an OverflowError); 0 is
/// refused by [`Budget::from_options`], as for the CLI and the library.
fn budget_value(name: &str, v: Option<i64>) -> PyResult<Option<usize>> {
    match v {
        Some(n) if n < 0 => Err(QuadError::new_err(format!("{name} must be above 0 (got {n})"))),
        v => Ok(v.map(|n| n as usize)),
    }
}

/// A finished selection (see `quad_select.Selection`).
#[pyclass(module = "quad_select._quad", frozen)]
struct RawSelection {
    inner: Selection,
}

#[pymethods]
impl RawSelection {
    /// Selected ids, in the order taken.
    fn ids(&self) -> Vec<String> {
        self.inner.ids().map(str::to_string).collect()
    }

    /// The lines of `selected.jsonl`: each record with its `"quad"` provenance.
    fn lines(&self) -> Vec<String> {
        self.inner.documents.iter().map(|d| d.line()).collect()
    }

    fn rounds_json(&self) -> String {
        serde_json::to_string(&self.inner.rounds).expect("plain data")
    }

    fn manifest_json(&self) -> String {
        serde_json::to_string(&self.inner.manifest).expect("plain data")
    }

    /// The pool's and the reference's read reports: `{"pool": {...}, "reference": {...}}`, each
    /// with the skipped records per reason and the first few examples (`file:line`).
    fn skipped_json(&self) -> String {
        serde_json::to_string(&self.inner.manifest.inputs).expect("plain data")
    }

    fn clusters_json(&self) -> String {
        serde_json::to_string(&self.inner.clusters).expect("plain data")
    }

    /// Writes the same four files as `quad select` into `out`.
    fn write(&self, py: Python<'_>, out: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.write(&out)).map_err(err)
    }
}

/// Runs `quad select` in this process. With `out`, as the CLI does: an older selection there is
/// removed first, the checkpoint is `out/checkpoint.json` (continued when `resume`), and the four
/// output files are written at the end. The GIL is released while it runs; Ctrl-C (a pending
/// KeyboardInterrupt) stops it at the next stage step or round.
#[pyfunction]
#[pyo3(signature = (pool, reference, *, budget_tokens=None, budget_documents=None, config_path=None, config_json=None, temperature=None, text_field=None, id_field=None, reference_text_field=None, reference_id_field=None, cache=None, out=None, resume=false, executor=None, on_event=None))]
#[allow(clippy::too_many_arguments)]
fn select(
    py: Python<'_>,
    pool: PathBuf,
    reference: PathBuf,
    budget_tokens: Option<i64>,
    budget_documents: Option<i64>,
    config_path: Option<PathBuf>,
    config_json: Option<&str>,
    temperature: Option<f64>,
    text_field: Option<String>,
    id_field: Option<String>,
    reference_text_field: Option<String>,
    reference_id_field: Option<String>,
    cache: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: bool,
    executor: Option<Py<PyAny>>,
    on_event: Option<Py<PyAny>>,
) -> PyResult<RawSelection> {
    let budget = Budget::from_options(
        budget_value("budget_tokens", budget_tokens)?,
        budget_value("budget_documents", budget_documents)?,
    )
    .map_err(err)?;
    let fields = Fields {
        text: text_field,
        id: id_field,
        reference_text: reference_text_field,
        reference_id: reference_id_field,
    };
    let mut selector = Selector::new(run_config(config(config_path, config_json)?, fields, temperature)?);
    if let Some(c) = cache {
        selector = selector.cache(c);
    }
    let mut _lock = None;
    if let Some(out) = &out {
        selector = selector.checkpoint(out.join("checkpoint.json"), resume);
        _lock = Some(selector.prepare_out(&pool, &reference, budget, out).map_err(err)?);
    }
    let mut interrupted = false;
    let mut callback_error: Option<PyErr> = None;
    let mut remote = match executor {
        Some(obj) => Some(PyExecutor::new(py, obj)?),
        None => None,
    };
    let result = py.detach(|| {
        let mut observer = |e: Event<'_>| {
            Python::attach(|py| {
                if let Some(f) = &on_event {
                    // An exception in the callback stops the run and is raised as it is.
                    if let Err(err) = event_dict(py, &e).and_then(|d| f.call1(py, (d,))) {
                        callback_error = Some(err);
                        return ControlFlow::Break(());
                    }
                }
                // A pending Ctrl-C stops the run between steps.
                if py.check_signals().is_err() {
                    interrupted = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
        };
        let selection = match remote.as_mut() {
            Some(ex) => selector.select_with(&pool, &reference, budget, &mut observer, ex)?,
            None => selector.select_with(&pool, &reference, budget, &mut observer, &mut Local)?,
        };
        if let Some(out) = &out {
            selection.write(out)?;
        }
        Ok(selection)
    });
    if let Some(e) = callback_error {
        return Err(e);
    }
    match result {
        Ok(inner) => Ok(RawSelection { inner }),
        Err(e @ SelectError::Interrupted { .. }) if interrupted => Err(PyKeyboardInterrupt::new_err(e.to_string())),
        Err(e) => Err(err(e)),
    }
}

/// An [`Event`] as the dict `on_event` receives (see `quad_select.progress`).
fn event_dict<'py>(py: Python<'py>, e: &Event<'_>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match *e {
        Event::Stage { name, cached } => {
            d.set_item("kind", "stage")?;
            d.set_item("name", name)?;
            d.set_item("cached", cached)?;
        }
        Event::Progress { done, total } => {
            d.set_item("kind", "progress")?;
            d.set_item("done", done)?;
            d.set_item("total", total)?;
        }
        Event::Note(text) => {
            d.set_item("kind", "note")?;
            d.set_item("text", text)?;
        }
        Event::StageDone { name } => {
            d.set_item("kind", "stage_done")?;
            d.set_item("name", name)?;
        }
        Event::Round { log, budget, best_index } => {
            d.set_item("kind", "round")?;
            d.set_item("round", log.round)?;
            d.set_item("scored", log.scored)?;
            d.set_item("accepted", log.accepted)?;
            d.set_item("docs_selected", log.docs_selected)?;
            d.set_item("tokens_selected", log.tokens_selected)?;
            let b = PyDict::new(py);
            match budget {
                Budget::Tokens(n) => b.set_item("tokens", n)?,
                Budget::Documents(n) => b.set_item("documents", n)?,
            }
            d.set_item("budget", b)?;
            d.set_item("best_index", best_index)?;
        }
    }
    Ok(d)
}

/// An executor written in Python (`quad_select.ray.RayExecutor`): an object with `parallelism()`,
/// `embed(chunks, embed_config_json)`, `assign(blocks, centroids)`, `prepare_scoring(setup_json)`
/// and `score(batches)`. Each call takes the GIL for the call only.
struct PyExecutor {
    obj: Py<PyAny>,
    parallelism: usize,
}

impl PyExecutor {
    fn new(py: Python<'_>, obj: Py<PyAny>) -> PyResult<Self> {
        let parallelism: usize = obj.call_method0(py, "parallelism")?.extract(py)?;
        Ok(Self { obj, parallelism })
    }
}

/// A Python exception as text (type and message).
fn py_message(py: Python<'_>, e: PyErr) -> String {
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
    format!("{kind}: {}", e.value(py))
}

impl Executor for PyExecutor {
    fn parallelism(&self) -> usize {
        self.parallelism.max(1)
    }

    fn embed(
        &mut self,
        chunks: Vec<Vec<String>>,
        _embedder: &dyn quad_select::embed::Embedder,
        config: &SelectConfig,
    ) -> Result<Vec<(Array2<f32>, usize)>, quad_select::embed::EmbedError> {
        let embed = serde_json::to_string(&config.embed).expect("plain data");
        Python::attach(|py| -> PyResult<Vec<(Array2<f32>, usize)>> {
            let out = self.obj.call_method1(py, "embed", (chunks, embed))?;
            let arrays: Vec<PyReadonlyArray2<f32>> = out.extract(py)?;
            Ok(arrays.into_iter().map(|a| (a.as_array().to_owned(), 0)).collect())
        })
        .map_err(|e| quad_select::embed::EmbedError::Executor(Python::attach(|py| py_message(py, e))))
    }

    fn assign(
        &mut self,
        blocks: Vec<Array2<f32>>,
        centroids: ArrayView2<f32>,
    ) -> Result<Vec<(Vec<usize>, Vec<f32>)>, quad_select::cluster::ClusterError> {
        Python::attach(|py| -> PyResult<Vec<(Vec<usize>, Vec<f32>)>> {
            let blocks: Vec<Bound<'_, PyArray2<f32>>> = blocks.into_iter().map(|b| b.into_pyarray(py)).collect();
            let cents = centroids.to_owned().into_pyarray(py);
            let out = self.obj.call_method1(py, "assign", (blocks, cents))?;
            let pairs: Vec<(PyReadonlyArray1<u64>, PyReadonlyArray1<f32>)> = out.extract(py)?;
            Ok(pairs
                .into_iter()
                .map(|(a, d)| (a.as_array().iter().map(|&c| c as usize).collect(), d.as_array().to_vec()))
                .collect())
        })
        .map_err(|e| quad_select::cluster::ClusterError::KMeans(format!("assignment executor: {}", Python::attach(|py| py_message(py, e)))))
    }

    fn prepare_scoring(&mut self, setup: &ScoringSetup) -> Result<(), SelectError> {
        let json = serde_json::to_string(setup).expect("plain data");
        Python::attach(|py| self.obj.call_method1(py, "prepare_scoring", (json,)).map(|_| ()))
            .map_err(|e| SelectError::Config(format!("scoring executor: {}", Python::attach(|py| py_message(py, e)))))
    }

    fn score(
        &mut self,
        batches: Vec<Vec<Vec<u32>>>,
        _here: &(dyn Fn(&[Vec<u32>]) -> Result<Vec<Option<f64>>, quad_select::influence::InfluenceError> + Sync),
    ) -> Result<Vec<Vec<Option<f64>>>, SelectError> {
        Python::attach(|py| -> PyResult<Vec<Vec<Option<f64>>>> { self.obj.call_method1(py, "score", (batches,))?.extract(py) })
            .map_err(|e| SelectError::Config(format!("scoring executor: {}", Python::attach(|py| py_message(py, e)))))
    }
}

/// Runs `f` on the texts `texts` holds, batch by batch (with the index of the batch's first text
/// among all of them), and gives its results in order. A sequence of str is one batch; Arrow data (a string array, or tabular data whose `text_field` column is
/// read; `quad_select.inputs.text_arrays` says which kinds) comes as arrays of at most 8,192 rows,
/// each read in place through the Arrow C data interface: the texts are borrowed from Arrow's
/// buffers, never made into Python strings or copied.
fn for_each_text_batch<R>(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    text_field: &str,
    mut f: impl FnMut(usize, &[&str]) -> PyResult<R>,
) -> PyResult<Vec<R>> {
    let arrays = py.import("quad_select.inputs")?.call_method1("text_arrays", (texts, text_field))?;
    if arrays.is_none() {
        let list: Vec<String> = texts.extract()?;
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        return Ok(vec![f(0, &refs)?]);
    }
    let mut out = Vec::new();
    let mut start = 0;
    for array in arrays.try_iter()? {
        let array = import_array(&array?)?;
        let refs = string_refs(array.as_ref(), start)?;
        out.push(f(start, &refs)?);
        start += refs.len();
    }
    Ok(out)
}

/// An array from an object with `__arrow_c_array__` (the Arrow PyCapsule interface), sharing its
/// buffers: they stay alive until the returned array is dropped.
fn import_array(obj: &Bound<'_, PyAny>) -> PyResult<ArrayRef> {
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = obj.call_method0("__arrow_c_array__")?.extract()?;
    let schema = schema.pointer_checked(Some(c"arrow_schema"))?.cast::<FFI_ArrowSchema>();
    let array = array.pointer_checked(Some(c"arrow_array"))?.cast::<FFI_ArrowArray>();
    // SAFETY: the capsules hold an ArrowSchema and an ArrowArray (their names were checked). The
    // array is moved out and its slot left released, as the interface asks of a consumer that takes
    // it over, so the capsule's destructor does not release it a second time; the schema is only
    // read while its capsule lives.
    let data = unsafe {
        let array = std::ptr::replace(array.as_ptr(), FFI_ArrowArray::empty());
        arrow_array::ffi::from_ffi(array, schema.as_ref())
    }
    .map_err(|e| QuadError::new_err(format!("texts: Arrow data: {e}")))?;
    Ok(arrow_array::make_array(data))
}

/// The strings of a utf8, large-utf8 or utf8-view array, borrowed; a null is an error naming its
/// row (`start` is the array's first row among all the texts).
fn string_refs(array: &dyn Array, start: usize) -> PyResult<Vec<&str>> {
    let values: Box<dyn Iterator<Item = Option<&str>> + '_> = if let Some(a) = array.as_string_opt::<i32>() {
        Box::new(a.iter())
    } else if let Some(a) = array.as_string_opt::<i64>() {
        Box::new(a.iter())
    } else if let Some(a) = array.as_string_view_opt() {
        Box::new(a.iter())
    } else {
        return Err(PyTypeError::new_err(format!("texts: expected strings, got Arrow type {}", array.data_type())));
    };
    values
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| QuadError::new_err(format!("texts: row {} is null", start + i))))
        .collect()
}

/// An embedder loaded once (the sentence-embedding model in `model`, a folder, or the hashing
/// embedder of `hashing_dim` dimensions): what a Ray embedding actor holds between chunks.
#[pyclass(name = "Embedder", module = "quad_select")]
struct PyEmbedder {
    inner: Box<dyn quad_select::embed::Embedder>,
}

#[pymethods]
impl PyEmbedder {
    #[new]
    #[pyo3(signature = (*, model=None, hashing_dim=None, batch_size=32))]
    fn new(py: Python<'_>, model: Option<PathBuf>, hashing_dim: Option<usize>, batch_size: usize) -> PyResult<Self> {
        let dim = hashing_dim.unwrap_or(SelectConfig::default().embed.hashing_dim);
        let bert = BertOptions { batch_size: batch_size.max(1), ..Default::default() };
        let inner = py.detach(|| quad_select::embed::make_embedder(model.as_deref(), bert, dim)).map_err(err)?;
        Ok(Self { inner })
    }

    /// Unit rows (float32), one per text: texts a sequence of str (one chunk) or Arrow data read in
    /// place, each batch a chunk ([`for_each_text_batch`]).
    #[pyo3(signature = (texts, *, text_field="text"))]
    fn embed<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>, text_field: &str) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let parts = for_each_text_batch(py, texts, text_field, |_, batch| {
            py.detach(|| quad_select::embed::embed_chunk(self.inner.as_ref(), batch).map(|(rows, _)| rows)).map_err(err)
        })?;
        let rows = match parts.len() {
            0 => Array2::zeros((0, self.inner.dim())),
            1 => parts.into_iter().next().expect("one part"),
            _ => {
                let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
                ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| QuadError::new_err(format!("embed: {e}")))?
            }
        };
        Ok(rows.into_pyarray(py))
    }

    /// Length of every row.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
}

/// Embeds texts as unit rows (float32, one per text): the sentence-embedding model in `model`
/// (a folder), or the hashing embedder of `hashing_dim` dimensions. Loads the embedder on every
/// call; [`PyEmbedder`] keeps it.
#[pyfunction]
#[pyo3(signature = (texts, *, model=None, hashing_dim=None, batch_size=32, text_field="text"))]
fn embed<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyAny>,
    model: Option<PathBuf>,
    hashing_dim: Option<usize>,
    batch_size: usize,
    text_field: &str,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    PyEmbedder::new(py, model, hashing_dim, batch_size)?.embed(py, texts, text_field)
}

/// Each row's nearest centroid and the squared Euclidean distance to it (2 − 2·cos on unit rows).
#[pyfunction]
fn assign<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    centroids: PyReadonlyArray2<'py, f32>,
) -> PyResult<(Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<f32>>)> {
    let (rows, cents) = (embeddings.as_array().to_owned(), centroids.as_array().to_owned());
    if rows.ncols() != cents.ncols() {
        return Err(QuadError::new_err(format!(
            "embeddings have {} columns, centroids {}",
            rows.ncols(),
            cents.ncols()
        )));
    }
    if cents.nrows() == 0 {
        return Err(QuadError::new_err("no centroids"));
    }
    let (labels, distances) = py.detach(|| quad_select::cluster::assign(rows.view(), cents.view()));
    let labels: Vec<u64> = labels.into_iter().map(|l| l as u64).collect();
    Ok((labels.into_pyarray(py), distances.into_pyarray(py)))
}

/// A proxy, its factors and a reference iHVP, loaded once; scores batches of texts.
#[pyclass(module = "quad_select._quad", frozen)]
struct Scorer {
    inner: DocumentScorer,
}

#[pymethods]
impl Scorer {
    #[new]
    #[pyo3(signature = (model, factors, reference, *, strategy="ekfac", damping_rel=quad_select::influence::DEFAULT_DAMPING_REL, max_tokens=None, batch=2))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        factors: PathBuf,
        reference: Vec<String>,
        strategy: &str,
        damping_rel: f64,
        max_tokens: Option<usize>,
        batch: usize,
    ) -> PyResult<Self> {
        let strategy: Strategy = serde_json::from_value(serde_json::Value::String(strategy.into()))
            .map_err(|_| QuadError::new_err(format!("unknown strategy {strategy:?}")))?;
        let scoring = ScoreArguments {
            strategy,
            damping: Damping::Relative(damping_rel),
            max_tokens,
        };
        let inner = py
            .detach(|| DocumentScorer::load(&model, &factors, &reference, &scoring, batch))
            .map_err(err)?;
        Ok(Self { inner })
    }

    /// The scorer a scoring worker of a run holds: built from the run's `ScoringSetup` (JSON, as
    /// the executor's `prepare_scoring` receives it), it gives the run's bits.
    #[staticmethod]
    fn for_run(py: Python<'_>, setup_json: &str) -> PyResult<Self> {
        let setup: ScoringSetup = serde_json::from_str(setup_json).map_err(|e| QuadError::new_err(format!("scoring setup: {e}")))?;
        let inner = py.detach(|| setup.scorer()).map_err(err)?;
        Ok(Self { inner })
    }

    /// Token ids of `texts` as scoring takes them (each text's head, its first `max_tokens`
    /// predicted tokens).
    #[pyo3(signature = (texts, *, text_field="text"))]
    fn encode(&self, py: Python<'_>, texts: &Bound<'_, PyAny>, text_field: &str) -> PyResult<Vec<Vec<u32>>> {
        let parts = for_each_text_batch(py, texts, text_field, |start, batch| {
            py.detach(|| {
                batch.iter().enumerate().map(|(i, t)| self.inner.encode(&format!("text {}", start + i), t)).collect::<Result<Vec<_>, _>>()
            })
            .map_err(err)
        })?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Raw scores of batches of token ids, each batch one pass (None: fewer than two tokens).
    fn score_batches(&self, py: Python<'_>, batches: Vec<Vec<Vec<u32>>>) -> PyResult<Vec<Vec<Option<f64>>>> {
        py.detach(|| {
            batches
                .iter()
                .map(|b| Ok(self.inner.score_batch(b)?.into_iter().map(|s| s.map(|(score, _)| score)).collect()))
                .collect::<Result<Vec<_>, quad_select::influence::InfluenceError>>()
        })
        .map_err(err)
    }

    /// Influence scores of `texts`, in order (None: fewer than two tokens): a sequence of str or
    /// Arrow data read in place ([`for_each_text_batch`]).
    #[pyo3(signature = (texts, *, text_field="text"))]
    fn score(&self, py: Python<'_>, texts: &Bound<'_, PyAny>, text_field: &str) -> PyResult<Vec<Option<f64>>> {
        let parts = for_each_text_batch(py, texts, text_field, |_, batch| {
            let scored = py.detach(|| self.inner.score_texts(batch)).map_err(err)?;
            Ok(scored.into_iter().map(|s| s.map(|(score, _)| score)).collect::<Vec<_>>())
        })?;
        Ok(parts.into_iter().flatten().collect())
    }
}

/// Runs the `quad` command line in this process with `argv` (the program name first) and returns
/// its exit status: the `quad` command the wheel installs (`quad_select.__main__`), so the wheel
/// carries one native library, with its bundled BLAS, and no second binary.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> i32 {
    py.detach(|| quad_select::cli::main(argv))
}

#[pymodule]
fn _quad(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("QuadError", m.py().get_type::<QuadError>())?;
    m.add_class::<RawSelection>()?;
    m.add_class::<Scorer>()?;
    m.add_class::<PyEmbedder>()?;
    m.add_function(wrap_pyfunction!(select, m)?)?;
    m.add_function(wrap_pyfunction!(embed, m)?)?;
    m.add_function(wrap_pyfunction!(assign, m)?)?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    Ok(())
}
