//! Exactness of the differentiable forward pass (f64, tiny random models):
//! analytic gradients vs central differences, and `Σ_t g_t a_tᵀ` vs candle's weight gradient.

mod common;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use quad_select::model::capture::LossBatch;
use quad_select::model::{LayerSelection, LlamaConfig, LlamaModel};

fn tiny(tied: bool, bias: bool, kv_heads: usize) -> LlamaModel {
    let mut c = LlamaConfig::small(13, 16, 2, 4, 8);
    c.num_key_value_heads = Some(kv_heads);
    c.intermediate_size = 24;
    c.tie_word_embeddings = tied;
    c.attention_bias = bias;
    // Larger init than the default 0.02 so every path carries signal.
    let m = LlamaModel::random(c, DType::F64, &Device::Cpu, 7).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    for (name, v) in m.named_vars() {
        let t = v.as_tensor();
        let scaled = if name.contains("norm.weight") || name.ends_with(".bias") {
            // Perturb norms and biases away from 1 / 0 so their gradients are generic.
            let noise: Vec<f64> = (0..t.elem_count()).map(|_| rng.gen_range(-0.5..0.5)).collect();
            (Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap() + t).unwrap()
        } else {
            (t * 10.0).unwrap()
        };
        v.set(&scaled).unwrap();
    }
    m
}

const DOCS: [&[u32]; 2] = [&[1, 5, 2, 9, 12, 3, 3, 7, 0, 4, 11], &[6, 2, 8]];
const CONTEXT: usize = 4;

fn loss(m: &LlamaModel) -> (f64, Tensor) {
    let batch = LossBatch::new(&DOCS, CONTEXT, true, m).unwrap();
    let logits = m.forward(&batch.ids, None).unwrap();
    let l = batch.loss(&batch.nll(&logits).unwrap()).unwrap();
    (l.to_scalar::<f64>().unwrap(), l)
}

fn check_finite_differences(m: &LlamaModel) {
    let (_, l) = loss(m);
    let grads = l.backward().unwrap();
    let h = 1e-5;
    let mut worst = 0f64;
    for (name, var) in m.named_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let analytic: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(analytic.iter().any(|x| *x != 0.0), "{name}: gradient is all zeros");
        let orig = var.as_tensor().copy().unwrap();
        let base: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
        let mut numeric = vec![0f64; base.len()];
        for i in 0..base.len() {
            let mut v = base.clone();
            v[i] = base[i] + h;
            var.set(&Tensor::from_vec(v.clone(), orig.shape(), &Device::Cpu).unwrap()).unwrap();
            let lp = loss(m).0;
            v[i] = base[i] - h;
            var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap()).unwrap();
            let lm = loss(m).0;
            numeric[i] = (lp - lm) / (2.0 * h);
        }
        var.set(&orig).unwrap();
        let diff: f64 = analytic.iter().zip(&numeric).map(|(a, n)| (a - n).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt();
        let rel = diff / norm;
        worst = worst.max(rel);
        assert!(rel <= 1e-5, "{name}: relative error {rel:e}");
        // Element-wise too, up to the finite-difference noise floor (round-off ~1e-16·L/h plus
        // truncation ~h²·L'''/6: about 1e-10 here).
        for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
            assert!(
                (a - n).abs() <= 1e-5 * a.abs().max(n.abs()) + 1e-9,
                "{name}[{i}]: analytic {a:e} vs numeric {n:e}"
            );
        }
    }
    eprintln!("worst per-tensor relative error: {worst:e}");
}

#[test]
fn every_weight_gradient_matches_central_differences_gqa_tied() {
    check_finite_differences(&tiny(true, false, 2));
}

#[test]
fn every_weight_gradient_matches_central_differences_untied_with_bias() {
    check_finite_differences(&tiny(false, true, 4));
}

#[test]
fn captured_factors_reproduce_each_documents_weight_gradient() {
    let m = tiny(true, false, 2);
    let docs: Vec<Vec<u32>> = DOCS.iter().map(|d| d.to_vec()).collect();
    let captures = m.capture(&docs, CONTEXT, &LayerSelection::all()).unwrap();
    for (d, cap) in captures.iter().enumerate() {
        let cap = cap.as_ref().unwrap();
        assert_eq!(cap.predicted, DOCS[d].len() - 1);
        assert_eq!(cap.layers.len(), 14);
        // This document alone: candle's gradient of its mean loss.
        let batch = LossBatch::new(&[DOCS[d]], CONTEXT, true, &m).unwrap();
        let logits = m.forward(&batch.ids, None).unwrap();
        let nll = batch.nll(&logits).unwrap();
        let l = batch.loss(&nll).unwrap();
        assert!((l.to_scalar::<f64>().unwrap() - cap.loss).abs() < 1e-12);
        let grads = l.backward().unwrap();
        for layer in &cap.layers {
            let w = m.blocks[layer.id.block].linear(layer.id.kind).weight.as_tensor();
            let want = grads.get(w).unwrap();
            let got = layer.weight_grad().unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = common::max_abs_diff(&got, want);
            assert!(diff <= 1e-10, "doc {d} {}: max |Δ| {diff:e}", layer.id);
            assert!(want.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0);
            assert_eq!(layer.inputs.dims()[0], cap.predicted);
        }
    }
}

#[test]
fn too_short_documents_have_no_capture() {
    let m = tiny(true, false, 2);
    let out = m.capture(&[vec![3], vec![1, 2, 3]], CONTEXT, &LayerSelection::mlp()).unwrap();
    assert!(out[0].is_none());
    assert_eq!(out[1].as_ref().unwrap().layers.len(), 6);
}
