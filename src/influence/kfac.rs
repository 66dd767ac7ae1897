//! Kronecker-factored curvature blocks and their damped inverse-Hessian-vector products.
//!
//! For a weight block W (d_out × d_in) with per-token inputs `a_t` and output gradients `g_t`, the
//! per-example gradient is `G_n = Σ_t g_t a_tᵀ`, and with column-stacking `vec`,
//! `(A ⊗ S) vec(G) = vec(S G A)`. K-FAC approximates the empirical Fisher
//! `F = E_n[vec(G_n) vec(G_n)ᵀ] = E_n[Σ_{t,t'} (a_t a_t'ᵀ) ⊗ (g_t g_t'ᵀ)]` by `A ⊗ S` with
//! `A = E_t[a aᵀ]` (mean over tokens) and `S = E_n[Σ_t g_t g_tᵀ]` (per-example sum over tokens,
//! mean over examples), which drops the cross-token terms and keeps F's scale. With `A = Q_A diag(λ_A) Q_Aᵀ` and `S = Q_S diag(λ_S) Q_Sᵀ`,
//!
//! `(A ⊗ S + δI)⁻¹ vec(G) = vec( Q_S [ (Q_Sᵀ G Q_A) ⊘ (λ_S λ_Aᵀ + δ) ] Q_Aᵀ )`.
//!
//! EK-FAC keeps the eigenbasis `Q_A ⊗ Q_S` but replaces the eigenvalues `λ_S λ_Aᵀ` by the second
//! moments of the per-example gradients in that basis, `Λ = E_n[(Q_Sᵀ G_n Q_A)²]` (element-wise
//! square) — the diagonal of the empirical Fisher `E_n[vec(G_n) vec(G_n)ᵀ]` in the Kronecker basis.
//! The damped eigenvalues divide; the rotations are `Q_Sᵀ · Q_A` into the basis and `Q_S · Q_Aᵀ`
//! back.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Eigh, UPLO};
use serde::{Deserialize, Serialize};

/// Which curvature approximation an iHVP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// No curvature: the plain gradient (influence = gradient dot product).
    Identity,
    Kfac,
    Ekfac,
}

impl Strategy {
    /// The name in configs and flags.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Identity => "identity",
            Strategy::Kfac => "kfac",
            Strategy::Ekfac => "ekfac",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "identity" => Ok(Strategy::Identity),
            "kfac" => Ok(Strategy::Kfac),
            "ekfac" => Ok(Strategy::Ekfac),
            o => Err(format!("unknown strategy {o:?} (expected identity, kfac or ekfac)")),
        }
    }
}

/// Errors of the factor math.
#[derive(Debug, thiserror::Error)]
pub enum KfacError {
    #[error("eigendecomposition failed: {0}")]
    Eigh(String),
    #[error("no fitting tokens for this block")]
    Empty,
    #[error("EK-FAC eigenvalues were not fitted for this block")]
    NoCorrection,
    /// A damping that is not a finite number above 0 (infinite damping zeroes every score).
    #[error("damping must be a finite number above 0 (got {0})")]
    Damping(f64),
}

/// Running sums for `A = E_t[a aᵀ]` (over tokens) and `S = E_n[Σ_t g_t g_tᵀ]` (over examples).
#[derive(Debug, Clone)]
pub struct FactorSums {
    pub a: Array2<f64>,
    pub s: Array2<f64>,
    pub tokens: usize,
    pub examples: usize,
}

impl FactorSums {
    pub fn new(d_in: usize, d_out: usize) -> Self {
        Self {
            a: Array2::zeros((d_in, d_in)),
            s: Array2::zeros((d_out, d_out)),
            tokens: 0,
            examples: 0,
        }
    }

    /// Adds the tokens of one example: `a` (T × d_in), `g` (T × d_out).
    pub fn add(&mut self, a: ArrayView2<f64>, g: ArrayView2<f64>) {
        self.a += &a.t().dot(&a);
        self.s += &g.t().dot(&g);
        self.tokens += a.nrows();
        self.examples += 1;
    }

    /// `(A, S)` as averaged.
    pub fn factors(&self) -> (Array2<f64>, Array2<f64>) {
        (&self.a / self.tokens.max(1) as f64, &self.s / self.examples.max(1) as f64)
    }

    /// Eigendecomposes the averaged factors.
    pub fn finish(&self) -> Result<KroneckerFactors, KfacError> {
        if self.tokens == 0 {
            return Err(KfacError::Empty);
        }
        let (a, s) = self.factors();
        KroneckerFactors::from_factors(&a, &s)
    }
}

/// Eigendecomposed Kronecker factors of one block, with optional EK-FAC eigenvalues.
#[derive(Debug, Clone)]
pub struct KroneckerFactors {
    /// Eigenvectors of A (columns), d_in × d_in.
    pub q_a: Array2<f64>,
    pub lambda_a: Array1<f64>,
    /// Eigenvectors of S (columns), d_out × d_out.
    pub q_s: Array2<f64>,
    pub lambda_s: Array1<f64>,
    /// EK-FAC eigenvalues `Λ = E_n[(Q_Sᵀ G_n Q_A)²]`, d_out × d_in.
    pub ekfac: Option<Array2<f64>>,
    /// Examples behind `ekfac`.
    pub ekfac_examples: usize,
}

/// Runs `f` on a thread with a 64 MiB stack. OpenBLAS's threaded LAPACK keeps large work arrays on
/// the caller's stack (`dgetrf_parallel` was seen overflowing a 2 MiB Rust test thread with a
/// segfault), more than Rust's default thread stacks guarantee; every dense LAPACK call goes here.
pub fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("lapack".into())
            .stack_size(64 << 20)
            .spawn_scoped(scope, f)
            .expect("spawn a LAPACK thread");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

pub(crate) fn eigh(m: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>), KfacError> {
    // Symmetrise against round-off before the symmetric solver.
    let sym = (m + &m.t()) / 2.0;
    let (vals, vecs) = on_big_stack(|| sym.eigh(UPLO::Lower)).map_err(|e| KfacError::Eigh(e.to_string()))?;
    // Factors are positive semi-definite; clip round-off negatives.
    Ok((vals.mapv(|v| v.max(0.0)), vecs))
}

impl KroneckerFactors {
    /// Eigendecomposes `A` (d_in × d_in) and `S` (d_out × d_out) in f64.
    pub fn from_factors(a: &Array2<f64>, s: &Array2<f64>) -> Result<Self, KfacError> {
        Ok(Self::from_eigen(eigh(a)?, eigh(s)?))
    }

    /// From the eigendecompositions `(λ_A, Q_A)` and `(λ_S, Q_S)`, without EK-FAC eigenvalues.
    pub fn from_eigen((lambda_a, q_a): (Array1<f64>, Array2<f64>), (lambda_s, q_s): (Array1<f64>, Array2<f64>)) -> Self {
        Self {
            q_a,
            lambda_a,
            q_s,
            lambda_s,
            ekfac: None,
            ekfac_examples: 0,
        }
    }

    pub fn d_in(&self) -> usize {
        self.q_a.nrows()
    }

    pub fn d_out(&self) -> usize {
        self.q_s.nrows()
    }

    /// `Q_Sᵀ G Q_A`: a gradient in the Kronecker eigenbasis.
    pub fn rotate_in(&self, g: ArrayView2<f64>) -> Array2<f64> {
        self.q_s.t().dot(&g).dot(&self.q_a)
    }

    /// `Q_S X Q_Aᵀ`: back from the eigenbasis.
    pub fn rotate_out(&self, x: &Array2<f64>) -> Array2<f64> {
        self.q_s.dot(x).dot(&self.q_a.t())
    }

    /// K-FAC eigenvalues of `A ⊗ S` laid out like G: `λ_S λ_Aᵀ`.
    pub fn kfac_eigenvalues(&self) -> Array2<f64> {
        let s = self.lambda_s.view().insert_axis(Axis(1));
        let a = self.lambda_a.view().insert_axis(Axis(0));
        &s * &a
    }

    /// The eigenvalues a strategy divides by.
    pub fn eigenvalues(&self, strategy: Strategy) -> Result<Array2<f64>, KfacError> {
        match strategy {
            Strategy::Identity => Ok(Array2::zeros((self.d_out(), self.d_in()))),
            Strategy::Kfac => Ok(self.kfac_eigenvalues()),
            Strategy::Ekfac => self.ekfac.clone().ok_or(KfacError::NoCorrection),
        }
    }

    /// Damped inverse-curvature-vector product in matrix form:
    /// `Q_S [ (Q_Sᵀ G Q_A) ⊘ (Λ + δ) ] Q_Aᵀ` with Λ = `λ_S λ_Aᵀ` (K-FAC) or the EK-FAC
    /// eigenvalues. Identity returns `G / δ`.
    pub fn ihvp(&self, g: ArrayView2<f64>, strategy: Strategy, damping: f64) -> Result<Array2<f64>, KfacError> {
        if strategy == Strategy::Identity {
            return Ok(g.to_owned() / damping);
        }
        let lambda = self.eigenvalues(strategy)?;
        let rotated = self.rotate_in(g);
        let scaled = &rotated / &lambda.mapv(|l| l + damping);
        Ok(self.rotate_out(&scaled))
    }
}

/// Accumulates the EK-FAC eigenvalues `Λ = E_n[(Q_Sᵀ G_n Q_A)²]` over per-example gradients.
#[derive(Debug, Clone)]
pub struct EkfacSums {
    pub sum: Array2<f64>,
    pub examples: usize,
}

impl EkfacSums {
    pub fn new(factors: &KroneckerFactors) -> Self {
        Self {
            sum: Array2::zeros((factors.d_out(), factors.d_in())),
            examples: 0,
        }
    }

    /// Adds one example's gradient `G_n` (d_out × d_in).
    pub fn add(&mut self, factors: &KroneckerFactors, g: ArrayView2<f64>) {
        let r = factors.rotate_in(g);
        self.sum += &r.mapv(|x| x * x);
        self.examples += 1;
    }

    /// Adds one example token by token: `a` (T × d_in), `g` (T × d_out). Accumulates
    /// `Σ_t (Q_Sᵀ g_t a_tᵀ Q_A)² = (U ∘ U)ᵀ (V ∘ V)` with `U = g Q_S`, `V = a Q_A`: the diagonal of
    /// the per-token Fisher `E_n[Σ_t vec(g_t a_tᵀ) vec(g_t a_tᵀ)ᵀ]` in the Kronecker basis. For the true
    /// Fisher (labels sampled from the model) the cross-token terms that [`EkfacSums::add`] keeps
    /// have zero expectation, so this is the same Λ with less sampling noise.
    pub fn add_tokens(&mut self, factors: &KroneckerFactors, a: ArrayView2<f64>, g: ArrayView2<f64>) {
        let u = g.dot(&factors.q_s).mapv(|x| x * x);
        let v = a.dot(&factors.q_a).mapv(|x| x * x);
        self.sum += &u.t().dot(&v);
        self.examples += 1;
    }

    /// Adds one example's `Σ_t (Q_Sᵀ g_t)² ((Q_Aᵀ a_t)²)ᵀ`, computed by the caller (see
    /// [`EkfacSums::add_tokens`]).
    pub fn add_squares(&mut self, squares: Array2<f64>) {
        self.sum += &squares;
        self.examples += 1;
    }

    /// Stores `Λ` into the factors.
    pub fn finish(self, factors: &mut KroneckerFactors) -> Result<(), KfacError> {
        if self.examples == 0 {
            return Err(KfacError::Empty);
        }
        factors.ekfac = Some(self.sum / self.examples as f64);
        factors.ekfac_examples = self.examples;
        Ok(())
    }
}

/// A rectangular block of a layer's weight: rows `rows` (outputs) × columns `cols` (inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRange {
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

impl BlockRange {
    pub fn of<'a>(&self, g: ArrayView2<'a, f64>) -> ArrayView2<'a, f64> {
        g.slice_move(s![self.rows.0..self.rows.1, self.cols.0..self.cols.1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_linalg::Solve;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn random(rng: &mut Xoshiro256PlusPlus, r: usize, c: usize) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |_| rng.gen_range(-1.0..1.0))
    }

    /// Column-stacking vec.
    fn vec_col(g: &Array2<f64>) -> Array1<f64> {
        g.t().iter().copied().collect()
    }

    /// Kronecker product `A ⊗ S`.
    fn kron(a: &Array2<f64>, s: &Array2<f64>) -> Array2<f64> {
        let (p, q) = (s.nrows(), a.nrows());
        Array2::from_shape_fn((p * q, p * q), |(i, j)| a[[i / p, j / p]] * s[[i % p, j % p]])
    }

    fn unvec(x: &Array1<f64>, rows: usize, cols: usize) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(i, j)| x[j * rows + i])
    }

    fn max_abs(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        (a - b).iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    /// Examples: each a few tokens of (a, g); returns (factors sums, per-example G).
    fn fitting_set(rng: &mut Xoshiro256PlusPlus, n: usize, t: usize, d_in: usize, d_out: usize) -> (FactorSums, Vec<Array2<f64>>) {
        let mut sums = FactorSums::new(d_in, d_out);
        let mut grads = Vec::new();
        for _ in 0..n {
            let a = random(rng, t, d_in);
            let g = random(rng, t, d_out);
            sums.add(a.view(), g.view());
            grads.push(g.t().dot(&a));
        }
        (sums, grads)
    }

    /// Factors from `sums` with EK-FAC eigenvalues fitted on `grads`.
    fn with_ekfac(sums: &FactorSums, grads: &[Array2<f64>]) -> KroneckerFactors {
        let mut f = sums.finish().unwrap();
        let mut e = EkfacSums::new(&f);
        for g in grads {
            e.add(&f, g.view());
        }
        e.finish(&mut f).unwrap();
        f
    }

    /// Dense empirical Fisher `E_n[vec(G_n) vec(G_n)ᵀ]`.
    fn dense_fisher(grads: &[Array2<f64>]) -> Array2<f64> {
        let n = grads[0].len();
        let mut fisher = Array2::<f64>::zeros((n, n));
        for g in grads {
            let v = vec_col(g);
            fisher += &v.view().insert_axis(Axis(1)).dot(&v.view().insert_axis(Axis(0)));
        }
        fisher / grads.len() as f64
    }

    #[test]
    fn kfac_ihvp_equals_dense_kronecker_solve() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let (d_in, d_out) = (5, 4);
        let (sums, _) = fitting_set(&mut rng, 6, 3, d_in, d_out);
        let f = sums.finish().unwrap();
        let (a, s) = sums.factors();
        let g = random(&mut rng, d_out, d_in);
        let damping = 0.05;
        let dense = kron(&a, &s) + Array2::<f64>::eye(d_in * d_out) * damping;
        let x = dense.solve(&vec_col(&g)).unwrap();
        let want = unvec(&x, d_out, d_in);
        let got = f.ihvp(g.view(), Strategy::Kfac, damping).unwrap();
        assert!(max_abs(&got, &want) < 1e-8, "{}", max_abs(&got, &want));
    }

    #[test]
    fn ekfac_with_kronecker_eigenvalues_is_kfac() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let (sums, _) = fitting_set(&mut rng, 5, 4, 6, 3);
        let mut f = sums.finish().unwrap();
        f.ekfac = Some(f.kfac_eigenvalues());
        let g = random(&mut rng, 3, 6);
        let k = f.ihvp(g.view(), Strategy::Kfac, 0.1).unwrap();
        let e = f.ihvp(g.view(), Strategy::Ekfac, 0.1).unwrap();
        assert!(max_abs(&k, &e) < 1e-10);
    }

    #[test]
    fn ekfac_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_basis() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let (d_in, d_out) = (4, 3);
        let (sums, grads) = fitting_set(&mut rng, 7, 2, d_in, d_out);
        let f = with_ekfac(&sums, &grads);
        // Dense empirical Fisher in the Kronecker eigenbasis Q = Q_A ⊗ Q_S.
        let fisher = dense_fisher(&grads);
        let q = kron(&f.q_a, &f.q_s);
        let in_basis = q.t().dot(&fisher).dot(&q);
        let diag = unvec(&in_basis.diag().to_owned(), d_out, d_in);
        assert!(max_abs(&diag, f.ekfac.as_ref().unwrap()) < 1e-10);
    }

    #[test]
    fn per_token_ekfac_eigenvalues_are_the_per_token_fisher_diagonal() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let (d_in, d_out, t, n) = (4, 3, 3, 6);
        let mut sums = FactorSums::new(d_in, d_out);
        let mut examples = Vec::new();
        let mut token_grads = Vec::new();
        for _ in 0..n {
            let a = random(&mut rng, t, d_in);
            let g = random(&mut rng, t, d_out);
            sums.add(a.view(), g.view());
            for k in 0..t {
                let (gk, ak) = (g.row(k).insert_axis(Axis(1)), a.row(k).insert_axis(Axis(0)));
                token_grads.push(gk.dot(&ak));
            }
            examples.push((a, g));
        }
        let mut f = sums.finish().unwrap();
        let mut e = EkfacSums::new(&f);
        for (a, g) in &examples {
            e.add_tokens(&f, a.view(), g.view());
        }
        e.finish(&mut f).unwrap();
        // Per-token Fisher, normalised per example like Λ: Σ over tokens / n.
        let fisher = dense_fisher(&token_grads) * t as f64;
        let q = kron(&f.q_a, &f.q_s);
        let diag = unvec(&q.t().dot(&fisher).dot(&q).diag().to_owned(), d_out, d_in);
        assert!(max_abs(&diag, f.ekfac.as_ref().unwrap()) < 1e-10);
    }

    #[test]
    fn one_token_fisher_is_solved_exactly_by_kfac_and_ekfac() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let (d_in, d_out) = (4, 3);
        let (sums, grads) = fitting_set(&mut rng, 1, 1, d_in, d_out);
        let f = with_ekfac(&sums, &grads);
        let fisher = dense_fisher(&grads);
        let damping = 0.3;
        let g = random(&mut rng, d_out, d_in);
        let x = (fisher + Array2::<f64>::eye(d_in * d_out) * damping).solve(&vec_col(&g)).unwrap();
        let want = unvec(&x, d_out, d_in);
        for strategy in [Strategy::Kfac, Strategy::Ekfac] {
            let got = f.ihvp(g.view(), strategy, damping).unwrap();
            assert!(max_abs(&got, &want) < 1e-8, "{strategy:?}: {}", max_abs(&got, &want));
        }
    }

    /// The public reference code's two mistakes must be caught: multiplying by the damped
    /// eigenvalues instead of dividing, and rotating with transposed eigenvector matrices.
    #[test]
    fn multiplying_or_transposed_rotations_would_fail_the_exact_check() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let (d_in, d_out) = (5, 4);
        let (sums, grads) = fitting_set(&mut rng, 6, 3, d_in, d_out);
        let f = with_ekfac(&sums, &grads);
        let (a, s) = sums.factors();
        let g = random(&mut rng, d_out, d_in);
        let damping = 0.05;
        let dense = kron(&a, &s) + Array2::<f64>::eye(d_in * d_out) * damping;
        let want = unvec(&dense.solve(&vec_col(&g)).unwrap(), d_out, d_in);
        let lambda = f.kfac_eigenvalues().mapv(|l| l + damping);
        // Multiplying instead of dividing.
        let wrong_mul = f.rotate_out(&(&f.rotate_in(g.view()) * &lambda));
        // Transposed rotations: Q_S G Q_Aᵀ in, Q_Sᵀ X Q_A out.
        let r = f.q_s.dot(&g).dot(&f.q_a.t());
        let wrong_rot = f.q_s.t().dot(&(&r / &lambda)).dot(&f.q_a);
        let right = f.ihvp(g.view(), Strategy::Kfac, damping).unwrap();
        assert!(max_abs(&right, &want) < 1e-8);
        assert!(max_abs(&wrong_mul, &want) > 1e-3);
        assert!(max_abs(&wrong_rot, &want) > 1e-3);
        // And for EK-FAC: its iHVP must invert its own curvature, Q diag(Λ+δ) Qᵀ.
        let ek = f.ihvp(g.view(), Strategy::Ekfac, damping).unwrap();
        let lam = f.ekfac.as_ref().unwrap().mapv(|l| l + damping);
        let back = f.rotate_out(&(&f.rotate_in(ek.view()) * &lam));
        assert!(max_abs(&back, &g) < 1e-10);
        let wrong = f.rotate_out(&(&f.rotate_in(g.view()) * &lam));
        assert!(max_abs(&wrong, &ek) > 1e-3);
    }
}
