//! `quad validate`: identity / K-FAC / EK-FAC against the exact damped empirical Fisher on a tiny
//! model.
//!
//! Exact target, by default the token-level true Fisher (the GGN for softmax cross-entropy),
//! estimated with one label per token sampled from the model: `F = E_n[Σ_t vec(g_t a_tᵀ) vec(g_t a_tᵀ)ᵀ]`.
//! It treats tokens as independent, as K-FAC's factors do: under sampled labels the products of
//! different positions' losses have zero expectation, so it is the true Fisher exactly for layers
//! whose output at position t reaches only the loss at t (the last block's MLP), and the usual
//! token-level approximation of it for the others. With observed labels it
//! is the empirical Fisher `F = E_n[vec(G_n) vec(G_n)ᵀ]`. K-FAC and EK-FAC are block-diagonal
//! Kronecker approximations of the same F (EK-FAC's Λ is fitted per token or per example to match),
//! damped per block with the same
//! `δ_b = 0.1 · tr(F_b) / n_b` that EK-FAC's default uses (its mean eigenvalue is exactly that), and
//! solved densely: `v* = (F + D)⁻¹ vec(∇L(R))`, exact scores `s*(z) = ⟨v*, vec(G_z)⟩`. Each
//! approximation reports the relative error of its reference iHVP, `‖v − v*‖ / ‖v*‖` (for identity,
//! after the best scalar rescaling, since the plain gradient has no curvature scale), and the
//! Spearman and Pearson correlations of its candidate scores with the exact ones.

use ndarray::{Array1, Array2, ArrayView2};
use ndarray_linalg::Solve;

use super::factors::{arrays, capture_gradients, mean_gradient, Damping, Factors, FitOptions, InfluenceError, ReferenceIhvp};
use super::kfac::{on_big_stack, Strategy};
use crate::model::{Labels, LayerId, LlamaModel};

/// One line of the validation table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValidationRow {
    pub strategy: String,
    pub ihvp_relative_error: f64,
    pub spearman: f64,
    pub pearson: f64,
}

/// The validation table plus sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValidationReport {
    pub parameters: usize,
    /// "true" (Fisher with labels sampled from the model, = GGN) or "empirical".
    pub fisher: String,
    pub fitting_examples: usize,
    pub candidates: usize,
    pub per_head: bool,
    pub rows: Vec<ValidationRow>,
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "exact damped {} Fisher over {} parameters, {} fitting examples, {} candidates, per-head {}",
            self.fisher, self.parameters, self.fitting_examples, self.candidates, self.per_head
        )?;
        writeln!(f, "| strategy | iHVP rel. error | Spearman | Pearson |")?;
        writeln!(f, "|---|---|---|---|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {:.4} | {:.4} | {:.4} |",
                r.strategy, r.ihvp_relative_error, r.spearman, r.pearson
            )?;
        }
        Ok(())
    }
}

fn flatten(layers: &[(LayerId, Array2<f64>)]) -> Array1<f64> {
    layers.iter().flat_map(|(_, g)| g.iter().copied()).collect()
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Ranks with ties averaged (1-based).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of the tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Runs the comparison with damping `δ_b = damping_scale · tr(F_b)/n_b` per block (default 0.1).
/// Keep the targeted parameters to a few thousand: F is dense.
pub fn validate(
    model: &LlamaModel,
    fitting: &[Vec<u32>],
    reference: &[Vec<u32>],
    candidates: &[Vec<u32>],
    opts: &FitOptions,
    damping_scale: f64,
) -> Result<ValidationReport, InfluenceError> {
    let factors = Factors::fit(model, fitting, opts)?;
    let ref_grad = mean_gradient(model, reference, opts)?;
    let n: usize = ref_grad.iter().map(|(_, g)| g.len()).sum();
    if n > 20_000 {
        return Err(InfluenceError::Input(format!(
            "{n} targeted parameters: too many for the dense exact solve (use a tinier model or fewer layers)"
        )));
    }
    let (mut fisher, examples) = dense_fisher(model, fitting, opts, n)?;
    // Per-block damping δ_b = x · tr(F_b)/n_b on the diagonal (x = 0.1 by default), matching
    // Damping::Fisher(x) for K-FAC and EK-FAC.
    let damping = Damping::Fisher(damping_scale);
    let blocks = block_index(&factors, &ref_grad, n, damping)?;
    for (k, &(_, delta)) in blocks.iter().enumerate() {
        fisher[[k, k]] += delta;
    }
    let rhs = flatten(&ref_grad);
    let solve = |m: &Array2<f64>| {
        on_big_stack(|| m.solve(&rhs)).map_err(|e| InfluenceError::Input(format!("dense solve failed: {e}")))
    };
    let exact_v = solve(&fisher)?;
    // The same matrix restricted to the approximations' block-diagonal structure (no coupling
    // between layers or heads): what K-FAC/EK-FAC could at best reach.
    let blockdiag_v = solve(&Array2::from_shape_fn((n, n), |(i, j)| {
        if blocks[i].0 == blocks[j].0 {
            fisher[[i, j]]
        } else {
            0.0
        }
    }))?;
    drop(fisher);
    let mut exact_scores = Vec::new();
    let mut blockdiag_scores = Vec::new();
    let mut cand_caps = Vec::new();
    for chunk in candidates.chunks(opts.batch.max(1)) {
        for cap in model.capture(chunk, opts.context, &opts.selection)?.into_iter().flatten() {
            let g = flatten(&capture_gradients(&cap)?);
            exact_scores.push(g.dot(&exact_v));
            blockdiag_scores.push(g.dot(&blockdiag_v));
            cand_caps.push(cap);
        }
    }
    let exact = Exact { v: &exact_v, scores: &exact_scores };
    let mut rows = vec![exact.row("exact block-diagonal".into(), exact.relative_error(&blockdiag_v), &blockdiag_scores)];
    for strategy in [Strategy::Identity, Strategy::Kfac, Strategy::Ekfac] {
        let ihvp = ReferenceIhvp::new(&factors, &ref_grad, strategy, damping)?;
        let v = flatten(&ihvp.layers);
        let err = if strategy == Strategy::Identity {
            // Best scalar c minimising ‖c·v − v*‖.
            exact.relative_error(&(&v * (v.dot(&exact_v) / v.dot(&v))))
        } else {
            exact.relative_error(&v)
        };
        let scores: Vec<f64> = cand_caps.iter().map(|c| ihvp.score(c)).collect::<Result<_, _>>()?;
        rows.push(exact.row(format!("{strategy:?}").to_lowercase(), err, &scores));
    }
    Ok(ValidationReport {
        parameters: n,
        fisher: if matches!(opts.labels, Labels::Sampled { .. }) { "true" } else { "empirical" }.into(),
        fitting_examples: examples,
        candidates: cand_caps.len(),
        per_head: opts.per_head,
        rows,
    })
}

/// The exact iHVP and scores an approximation is measured against.
struct Exact<'a> {
    v: &'a Array1<f64>,
    scores: &'a [f64],
}

impl Exact<'_> {
    /// `‖v − v*‖ / ‖v*‖`.
    fn relative_error(&self, v: &Array1<f64>) -> f64 {
        (v - self.v).dot(&(v - self.v)).sqrt() / self.v.dot(self.v).sqrt()
    }

    fn row(&self, strategy: String, ihvp_relative_error: f64, scores: &[f64]) -> ValidationRow {
        ValidationRow {
            strategy,
            ihvp_relative_error,
            spearman: spearman(scores, self.scores),
            pearson: pearson(scores, self.scores),
        }
    }
}

/// For every targeted parameter (in [`flatten`]'s order): the block it belongs to (numbered over
/// layers and heads) and that block's damping `δ_b`.
fn block_index(
    factors: &Factors,
    ref_grad: &[(LayerId, Array2<f64>)],
    n: usize,
    damping: Damping,
) -> Result<Vec<(usize, f64)>, InfluenceError> {
    let mut out = Vec::with_capacity(n);
    let mut first = 0;
    for (id, g) in ref_grad {
        let lf = factors.layers.iter().find(|l| l.id == *id).expect("fitted every layer");
        let mut of = vec![(0, 0.0); g.len()];
        for (b, (r, f)) in lf.blocks.iter().enumerate() {
            let delta = damping.for_block(f, Strategy::Ekfac)?;
            for i in r.rows.0..r.rows.1 {
                for j in r.cols.0..r.cols.1 {
                    of[i * g.ncols() + j] = (first + b, delta);
                }
            }
        }
        out.extend(of);
        first += lf.blocks.len();
    }
    Ok(out)
}

/// The dense Fisher over the fitting examples, `F = MᵀM / N`, and N. Empirical Fisher: one row
/// of M per example, vec(G_n). True Fisher (sampled labels): one row per token, vec(g_t a_tᵀ) —
/// the cross-token products have zero expectation, and EK-FAC's per-token Λ estimates this F's
/// diagonal in the Kronecker basis.
fn dense_fisher(model: &LlamaModel, fitting: &[Vec<u32>], opts: &FitOptions, n: usize) -> Result<(Array2<f64>, usize), InfluenceError> {
    let per_token = matches!(opts.labels, Labels::Sampled { .. });
    let mut fisher = Array2::<f64>::zeros((n, n));
    let mut buf: Vec<f64> = Vec::new();
    let flush = |buf: &mut Vec<f64>, fisher: &mut Array2<f64>| {
        let m = ArrayView2::from_shape((buf.len() / n, n), buf.as_slice()).expect("whole rows");
        *fisher += &m.t().dot(&m);
        buf.clear();
    };
    let mut examples = 0usize;
    for chunk in fitting.chunks(opts.batch.max(1)) {
        for cap in model.capture_with(chunk, opts.context, &opts.selection, opts.labels)?.into_iter().flatten() {
            if per_token {
                let layers: Vec<_> = cap.layers.iter().map(arrays).collect::<Result<_, _>>()?;
                for t in 0..cap.predicted {
                    for (a, g) in &layers {
                        for &gi in g.row(t) {
                            buf.extend(a.row(t).iter().map(|&aj| gi * aj));
                        }
                    }
                }
            } else {
                buf.extend(flatten(&capture_gradients(&cap)?));
            }
            examples += 1;
            if buf.len() >= 4096 * n {
                flush(&mut buf, &mut fisher);
            }
        }
    }
    flush(&mut buf, &mut fisher);
    fisher /= examples.max(1) as f64;
    Ok((fisher, examples))
}

/// Tokens per example in the standard validation set-up.
pub const VALIDATION_TOKENS: usize = 48;

/// The tiny proxy `quad validate` trains when given no model: 1 block, width 16, 2 heads
/// (3,328 weights in its linear layers), BPE vocabulary 512, 150 steps.
pub fn tiny_proxy_params() -> crate::model::train::ProxyParams {
    crate::model::train::ProxyParams {
        layers: 1,
        width: 16,
        heads: 2,
        context: VALIDATION_TOKENS,
        vocab_size: 512,
        steps: 150,
        batch_size: 8,
        lr: 1e-2,
        warmup: 10,
        eval_every: 50,
        ..Default::default()
    }
}

/// Trains the tiny validation model on `pool` into `dir` (when no model is given).
pub fn train_tiny_model(
    pool: &[String],
    dir: &std::path::Path,
) -> Result<crate::model::train::TrainReport, crate::model::ModelError> {
    crate::model::train::train_proxy(pool.to_vec(), &tiny_proxy_params(), dir, |_| std::ops::ControlFlow::Continue(()))
}

/// What `quad validate` compares on: tokens per example, the damping (× each block's
/// `tr(F_b)/n_b`), the curvature, the layers.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationOptions {
    pub tokens: usize,
    pub damping_rel: f64,
    pub fisher: super::stage::Fisher,
    pub layers: crate::model::LayerSelection,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        Self {
            tokens: VALIDATION_TOKENS,
            damping_rel: super::DEFAULT_DAMPING_REL,
            fisher: super::stage::Fisher::True,
            layers: crate::model::LayerSelection::all(),
        }
    }
}

/// The standard validation set-up on texts: fitting examples are the `tokens + 1`-token pieces of
/// the even-numbered pool documents (at most 6,000, so the Fisher has more examples than a tiny
/// model has targeted weights), candidates the first `tokens + 1` tokens of 240 odd-numbered pool
/// documents, the reference the first `tokens + 1` tokens of up to 40 reference documents.
/// Returns the per-head and the whole-layer reports.
pub fn validate_texts(
    loaded: &crate::model::LoadedModel,
    pool: &[String],
    reference: &[String],
    options: &ValidationOptions,
) -> Result<(ValidationReport, ValidationReport), InfluenceError> {
    let tokens = options.tokens;
    let enc = |t: &str| loaded.encode(t).map_err(|e| InfluenceError::Input(e.to_string()));
    let mut fitting = Vec::new();
    for text in pool.iter().step_by(2) {
        let ids = enc(text)?;
        fitting.extend(ids.chunks(tokens + 1).filter(|c| c.len() > 8).map(|c| c.to_vec()));
        if fitting.len() >= 6000 {
            fitting.truncate(6000);
            break;
        }
    }
    let head = |t: &String| -> Result<Vec<u32>, InfluenceError> {
        let mut ids = enc(t)?;
        ids.truncate(tokens + 1);
        Ok(ids)
    };
    let candidates: Vec<Vec<u32>> = pool.iter().skip(1).step_by(2).take(240).map(head).collect::<Result<_, _>>()?;
    let reference: Vec<Vec<u32>> = reference.iter().take(40).map(head).collect::<Result<_, _>>()?;
    let run = |per_head: bool| {
        let opts = FitOptions {
            per_head,
            context: tokens,
            batch: 16,
            labels: options.fisher.labels(0),
            selection: options.layers.clone(),
        };
        validate(&loaded.model, &fitting, &reference, &candidates, &opts, options.damping_rel)
    };
    Ok((run(true)?, run(false)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_correlations_match_hand_values() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 25.0, 100.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,2,3],[1,3,2,4]) = 0.9486832980505138
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]) - 0.9486832980505138).abs() < 1e-12);
        // numpy.corrcoef([1,2,3,5],[2,1,4,3])[0,1] = 3.5 / sqrt(43.75)
        let p = pearson(&[1.0, 2.0, 3.0, 5.0], &[2.0, 1.0, 4.0, 3.0]);
        assert!((p - 3.5 / 43.75f64.sqrt()).abs() < 1e-12, "{p}");
    }
}
