//! The influence stages as `quad select`, `quad factors` and `quad influence` all run them: fit
//! the factors on a seeded sample of the pool, and take the reference gradient and its iHVP.
//!
//! As in kronfluence, fitting options ([`FactorArguments`]: what curvature, on which layers and
//! documents) are kept apart from scoring options ([`ScoreArguments`]: which approximation, what
//! damping, how much of each document).

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::factors::{mean_gradient_with, Damping, Factors, FitOptions, InfluenceError, OnProgress, ReferenceIhvp};
use super::kfac::Strategy;
use super::store::FactorsHeader;
use crate::model::{Labels, LayerId, LayerSelection, LoadedModel};

/// Which curvature K-FAC / EK-FAC approximate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fisher {
    /// The true Fisher (= GGN for cross-entropy): losses against labels sampled from the model.
    #[serde(rename = "true")]
    True,
    /// The empirical Fisher: losses against the documents' own next tokens.
    #[serde(rename = "empirical")]
    Empirical,
}

impl Fisher {
    /// The labels of the fitting losses; `seed` draws the sampled labels.
    pub fn labels(self, seed: u64) -> Labels {
        match self {
            Fisher::True => Labels::Sampled { seed },
            Fisher::Empirical => Labels::Observed,
        }
    }

    /// The name written in factor headers and configs.
    pub fn name(self) -> &'static str {
        match self {
            Fisher::True => "true",
            Fisher::Empirical => "empirical",
        }
    }
}

/// How factors are fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorArguments {
    pub layers: LayerSelection,
    /// Split attention projections per head.
    pub per_head: bool,
    /// Tokens per window.
    pub context: usize,
    /// Documents per forward/backward pass.
    pub batch: usize,
    pub fisher: Fisher,
    /// Seeds the sample of fitting documents and the sampled labels.
    pub seed: u64,
    /// Documents sampled to fit on.
    pub fit_docs: usize,
    /// Predicted tokens of each fitting document used (its first ones); none: all.
    pub max_tokens: Option<usize>,
}

impl FactorArguments {
    /// The layers and windows fitted factors were fitted on (from their header), for taking
    /// gradients that match them.
    pub fn matching(factors: &Factors, header: &FactorsHeader) -> Self {
        FactorArguments {
            layers: factors.selection(),
            per_head: header.per_head,
            context: header.context,
            batch: super::DEFAULT_BATCH,
            fisher: if header.fisher == Fisher::Empirical.name() { Fisher::Empirical } else { Fisher::True },
            seed: 0,
            fit_docs: header.examples,
            max_tokens: None,
        }
    }

    /// Options for the fitting passes (labels per [`Fisher`]).
    pub fn fit_options(&self) -> FitOptions {
        FitOptions {
            selection: self.layers.clone(),
            per_head: self.per_head,
            context: self.context,
            batch: self.batch,
            labels: self.fisher.labels(self.seed),
        }
    }

    /// Options for gradients that are scored, not fitted: the same layers and windows, observed labels.
    pub fn gradient_options(&self) -> FitOptions {
        FitOptions {
            labels: Labels::Observed,
            ..self.fit_options()
        }
    }
}

/// How documents are scored against the reference.
///
/// `strategy` sits here, not beside the fitting options as in kronfluence: a fit here always
/// computes what every strategy needs (the Kronecker factors, their eigenbases and the EK-FAC
/// eigenvalues), so one set of fitted factors serves identity, K-FAC and EK-FAC scoring and the
/// choice is made when the reference iHVP is formed. Damping likewise: the factors' header records
/// the damping they were fitted for only as a default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreArguments {
    pub strategy: Strategy,
    pub damping: Damping,
    /// Predicted tokens of each candidate and reference document used (its first ones); none: all.
    pub max_tokens: Option<usize>,
}

/// A copy of a document's first `max_tokens` predicted tokens (none keeps all).
pub fn truncated(ids: &[u32], max_tokens: Option<usize>) -> Vec<u32> {
    let mut ids = ids.to_vec();
    crate::model::capture::truncate_predicted(&mut ids, max_tokens);
    ids
}

/// Fits factors on a seeded sample of `candidates` (token ids of the pool's documents): shuffle
/// with `args.seed`, keep the first `args.fit_docs`, truncate each to `args.max_tokens`. Returns the
/// factors and the header that names the model and the fit.
pub fn fit_factors(
    loaded: &LoadedModel,
    model_path: &Path,
    model_sha256: &str,
    candidates: &[&[u32]],
    args: &FactorArguments,
    default_damping: f64,
) -> Result<(Factors, FactorsHeader), InfluenceError> {
    let fetch = |idx: &[usize]| Ok(idx.iter().map(|&i| candidates[i].to_vec()).collect());
    fit_factors_from(loaded, model_path, model_sha256, candidates.len(), fetch, args, default_damping, &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })
}

/// [`fit_factors`] on `n` candidates that `fetch` tokenizes by index: only the sample is ever in
/// memory. Same sample, same factors. `on_progress` hears the fit's progress and may stop it
/// ([`Factors::fit_with`]).
pub fn fit_factors_from(
    loaded: &LoadedModel,
    model_path: &Path,
    model_sha256: &str,
    n: usize,
    fetch: impl FnOnce(&[usize]) -> Result<Vec<Vec<u32>>, InfluenceError>,
    args: &FactorArguments,
    default_damping: f64,
    on_progress: OnProgress<'_>,
) -> Result<(Factors, FactorsHeader), InfluenceError> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(args.seed));
    order.truncate(args.fit_docs);
    let docs: Vec<Vec<u32>> = fetch(&order)?.iter().map(|d| truncated(d, args.max_tokens)).collect();
    let factors = Factors::fit_with(&loaded.model, &docs, &args.fit_options(), on_progress)?;
    let header = FactorsHeader {
        model_sha256: model_sha256.to_string(),
        model: model_path.display().to_string(),
        per_head: factors.per_head,
        examples: factors.examples,
        tokens: factors.tokens,
        context: args.context,
        default_damping,
        fisher: args.fisher.name().to_string(),
        layers: factors.block_layout(),
    };
    Ok((factors, header))
}

/// The mean loss gradient of the reference documents (token ids), each truncated to
/// `max_tokens`, on the layers and windows of `args`; `on_progress` hears its progress and may
/// stop it ([`mean_gradient_with`]).
pub fn reference_gradient(
    loaded: &LoadedModel,
    reference: &[Vec<u32>],
    args: &FactorArguments,
    max_tokens: Option<usize>,
    on_progress: OnProgress<'_>,
) -> Result<Vec<(LayerId, ndarray::Array2<f64>)>, InfluenceError> {
    let docs: Vec<Vec<u32>> = reference.iter().map(|d| truncated(d, max_tokens)).collect();
    mean_gradient_with(&loaded.model, &docs, &args.gradient_options(), on_progress)
}

/// `(H + λI)⁻¹ ∇L(R)` block by block; without factors (the `identity` strategy) the plain gradient.
pub fn reference_ihvp(
    factors: Option<&Factors>,
    gradient: &[(LayerId, ndarray::Array2<f64>)],
    per_head: bool,
    args: &ScoreArguments,
) -> Result<ReferenceIhvp, InfluenceError> {
    let empty = Factors {
        layers: Vec::new(),
        per_head,
        examples: 0,
        tokens: 0,
    };
    ReferenceIhvp::new(factors.unwrap_or(&empty), gradient, args.strategy, args.damping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_first_predicted_tokens() {
        assert_eq!(truncated(&[1, 2, 3, 4, 5], Some(2)), vec![1, 2, 3]);
        assert_eq!(truncated(&[1, 2, 3], None), vec![1, 2, 3]);
    }

    #[test]
    fn fisher_names_round_trip_through_serde() {
        for f in [Fisher::True, Fisher::Empirical] {
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.name()));
            assert_eq!(serde_json::from_str::<Fisher>(&json).unwrap(), f);
        }
    }
}
