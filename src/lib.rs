//! quad-select: choose pretraining data that is both high-quality (influence on a reference set)
//! and diverse (spread over clusters of the pool), after Quad (ICLR 2025).
//!
//! Stages, one module each, data flowing one way:
//! `corpus → embed → cluster → model → influence → bandit → select` (with `select::report`).
//!
//! # Reading guide (pipeline order)
//!
//! - [`corpus`]: JSONL/Parquet readers, skip counts, the on-disk [`corpus::DocumentStore`].
//! - [`embed`]: the hashing and BERT embedders, streamed into an embeddings folder.
//! - [`cluster`]: k-means (`seeding`, `lloyd`, `assign`), the centroid graph (`neighbours`),
//!   label agreement (`metrics`); [`cluster::Clustering`] fits in memory or over a stored matrix.
//! - [`model`]: the Llama proxy (candle), its training, gradient captures, GGUF loading.
//! - [`influence`]: K-FAC/EK-FAC `factors` and `kfac` math, `scores` (batched scoring and
//!   [`influence::DocumentScorer`]), `stage` (fitting and scoring options), `store`, `validate`.
//! - [`bandit`]: `params` (as written, and checked into a [`bandit::Policy`]), `state`
//!   (problem, checkpoint state), `index` (UCB/Thompson/ε-greedy), `threshold`, `tilted`,
//!   `baselines`, `estimate` (document-level estimators); [`bandit::Bandit`] runs the rounds.
//! - [`select`]: [`select::Selector`] runs the stages (`stages`), caches them (`cache`, `keys`),
//!   reports (`report`), tells an [`select::Observer`] (`observer`), runs scoring on an
//!   [`select::executor::Executor`] (`executor`).
//! - [`eval`]: the fixed evaluation model and held-out splits.
//! - Helpers: [`atomic`] (atomic writes, temporaries), [`path_io`] (path errors, output-over-input
//!   checks), [`hash`] (one hash module), [`npy`], [`weights`], [`error_text`].
//! - [`cli`]: the `quad` command line as a function (the binary and Python's `quad` call it):
//!   `args` parses and checks flags, `commands` builds library types and prints.
//!
//! # Selecting from Rust
//!
//! [`select::Selector`] runs the whole pipeline and returns a [`select::Selection`]: the
//! selected documents with their provenance, the bandit's rounds, and a typed manifest.
//! [`select::Selection::write`] makes the same output folder as `quad select`.
//!
//! ```no_run
//! use quad_select::bandit::Budget;
//! use quad_select::select::{Quiet, SelectConfig, Selector};
//!
//! # fn main() -> Result<(), quad_select::select::SelectError> {
//! let config = SelectConfig::default().check()?; // or SelectConfig::from_toml_file(path)?
//! let selection = Selector::new(config)
//!     .cache(".quad-cache")
//!     .select("pool.jsonl".as_ref(), "reference.jsonl".as_ref(), Budget::Tokens(400_000), &mut Quiet)?;
//! println!(
//!     "{} documents, {} tokens; scored {:.1}% of the pool",
//!     selection.documents.len(),
//!     selection.tokens(),
//!     100.0 * selection.scored_fraction()
//! );
//! for doc in selection.documents.iter().take(3) {
//!     println!("{} (cluster {}, round {}, score {:?})", doc.id, doc.cluster, doc.round, doc.score);
//! }
//! selection.write("out".as_ref())?; // selected.jsonl, manifest.json, rounds.csv, clusters.csv
//! # Ok(())
//! # }
//! ```
//!
//! An [`select::Observer`] (any `FnMut(Event) -> ControlFlow<()>`) sees stage and round events
//! and can stop the run between them; with [`select::Selector::checkpoint`] a stopped run resumes.

pub mod atomic;
pub mod bandit;
pub mod cli;
pub mod cluster;
pub mod corpus;
pub mod embed;
pub mod error_text;
pub mod eval;
pub mod hash;
pub mod influence;
pub mod model;
pub mod npy;
pub mod path_io;
pub mod select;
pub mod signals;
pub mod weights;

pub use model::tune_allocator;
