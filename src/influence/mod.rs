//! Influence stage: `I(z) = ∇L(R)ᵀ (H + δI)⁻¹ ∇L(z)` with H approximated per linear layer by
//! Kronecker factors (K-FAC) or their eigenvalue-corrected form (EK-FAC).
//!
//! - [`kfac`]: one block's factors, eigenbases, EK-FAC eigenvalues and damped iHVP;
//! - [`factors`]: fitting all selected layers of a model (attention per head, MLP per layer) and
//!   the reference iHVP;
//! - [`scores`]: candidate scores, batched and planned, and [`DocumentScorer`], the one scoring
//!   path of `quad select`, `quad influence`, the Python `Scorer` and distributed workers;
//! - [`project`]: the optional seeded Rademacher projection applied to both sides;
//! - [`store`]: saving and loading fitted factors;
//! - [`stage`]: fitting factors and the reference iHVP as the commands run them (fitting and
//!   scoring options apart);
//! - [`validate`]: the comparison against the exact damped Fisher on a tiny model;
//! - [`InfluenceError`]: the stage's error.

mod error;
pub mod factors;
pub mod kfac;
pub mod project;
pub mod scores;
pub mod stage;
pub mod store;
pub mod validate;

pub use error::InfluenceError;
pub use factors::{Damping, Factors, FitOptions, ReferenceIhvp};
pub use scores::{
    encode_for_scoring, mean_by_label, plan_batches, run_planned, scatter, score_documents, score_texts, score_token_batch,
    write_scores, DocumentScorer,
};
pub use project::Projection;
pub use kfac::{BlockRange, EkfacSums, FactorSums, KfacError, KroneckerFactors, Strategy};

/// The default damping, relative to each block's mean eigenvalue (`quad select`'s
/// `influence.damping_rel`, `quad influence --damping-rel`, and the factors header).
pub const DEFAULT_DAMPING_REL: f64 = 0.1;

/// Documents per forward/backward pass when scoring (`influence.batch`): 2 was the fastest on 2
/// cores (`experiments/score_paths.rs`).
pub const DEFAULT_BATCH: usize = 2;

/// Turns off candle's per-op threads (`CANDLE_NUM_THREADS=1`) unless the user has set it, so that
/// work is spread across documents instead ([`score_documents`]). Call it first thing in `main`,
/// before any other thread exists: it sets a process environment variable.
pub fn prefer_document_parallelism() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY (edition 2021: safe): called before threads are spawned, as documented.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

