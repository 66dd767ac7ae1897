//! Seeded Rademacher projection of layer gradients (TRAK-style), for memory: off by default.
//!
//! Each layer's gradient `G` (d_out × d_in) becomes `P_out G P_inᵀ` (k_out × k_in) with
//! `k = min(dim, d)` per side and independent entries `±1/√k`. Since `E[Pᵀ P] = I`,
//! `⟨P_out X P_inᵀ, P_out Y P_inᵀ⟩` is an unbiased estimate of `⟨X, Y⟩`. The Kronecker structure
//! (as in LoGra) lets a candidate be projected from its captures, `P_out G P_inᵀ = (g P_outᵀ)ᵀ (a
//! P_inᵀ)`, without forming `G`. The matrices are drawn from the seed and the layer's identity
//! only, so the reference and every candidate are projected identically (same seed, same layer
//! order), on any machine.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::model::{LayerId, LayerKind};

/// A Kronecker-structured Rademacher projection to at most `dim × dim` per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Projection {
    pub dim: usize,
    pub seed: u64,
}

/// `P_out` (k_out × d_out) and `P_in` (k_in × d_in) of one layer.
#[derive(Debug, Clone)]
pub struct LayerProjection {
    pub p_out: Array2<f64>,
    pub p_in: Array2<f64>,
}

fn rademacher(rng: &mut Xoshiro256PlusPlus, k: usize, d: usize) -> Array2<f64> {
    let scale = 1.0 / (k as f64).sqrt();
    Array2::from_shape_fn((k, d), |_| if rng.gen::<bool>() { scale } else { -scale })
}

impl Projection {
    /// The layer's matrices, drawn from `seed` and the layer id alone.
    pub fn layer(&self, id: LayerId, d_out: usize, d_in: usize) -> LayerProjection {
        let kind = LayerKind::ALL.iter().position(|&k| k == id.kind).unwrap_or(0) as u64;
        let stream = (id.block as u64) * LayerKind::ALL.len() as u64 + kind;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let p_out = rademacher(&mut rng, self.dim.min(d_out), d_out);
        let p_in = rademacher(&mut rng, self.dim.min(d_in), d_in);
        LayerProjection { p_out, p_in }
    }
}

impl LayerProjection {
    /// `P_out G P_inᵀ`.
    pub fn gradient(&self, g: &Array2<f64>) -> Array2<f64> {
        self.p_out.dot(g).dot(&self.p_in.t())
    }

    /// `P_out (Σ_t g_t a_tᵀ) P_inᵀ = (g P_outᵀ)ᵀ (a P_inᵀ)` from captures `a` (T × d_in), `g` (T × d_out).
    pub fn capture(&self, a: &Array2<f64>, g: &Array2<f64>) -> Array2<f64> {
        g.dot(&self.p_out.t()).t().dot(&a.dot(&self.p_in.t()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rng: &mut Xoshiro256PlusPlus, r: usize, c: usize) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |_| rng.gen_range(-1.0..1.0))
    }

    const ID: LayerId = LayerId { block: 1, kind: LayerKind::Up };

    #[test]
    fn captures_project_like_the_gradient_and_the_same_seed_gives_the_same_matrices() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let (a, g) = (random(&mut rng, 5, 12), random(&mut rng, 5, 9));
        let p = Projection { dim: 4, seed: 3 };
        let lp = p.layer(ID, 9, 12);
        assert_eq!(lp.p_out.dim(), (4, 9));
        assert_eq!(lp.p_in.dim(), (4, 12));
        let direct = lp.gradient(&g.t().dot(&a));
        let factored = lp.capture(&a, &g);
        assert!((&direct - &factored).iter().all(|x| x.abs() < 1e-12));
        let again = p.layer(ID, 9, 12);
        assert_eq!(lp.p_out, again.p_out);
        assert_eq!(lp.p_in, again.p_in);
        // Another layer or seed draws other matrices.
        assert_ne!(lp.p_out, p.layer(LayerId { block: 1, kind: LayerKind::Gate }, 9, 12).p_out);
        assert_ne!(lp.p_out, Projection { dim: 4, seed: 4 }.layer(ID, 9, 12).p_out);
    }

    #[test]
    fn projected_inner_products_are_unbiased() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
        let (x, y) = (random(&mut rng, 6, 10), random(&mut rng, 6, 10));
        let exact = (&x * &y).sum();
        let trials = 4000;
        let (mut mean, mut sq) = (0.0, 0.0);
        for seed in 0..trials {
            let lp = Projection { dim: 3, seed }.layer(ID, 6, 10);
            let v = (&lp.gradient(&x) * &lp.gradient(&y)).sum();
            mean += v;
            sq += v * v;
        }
        mean /= trials as f64;
        let sd = (sq / trials as f64 - mean * mean).sqrt();
        // Within 4 standard errors of the exact value.
        assert!((mean - exact).abs() < 4.0 * sd / (trials as f64).sqrt(), "{mean} vs {exact} (sd {sd})");
    }
}
