//! Influence stage: `I(z) = ∇L(R)ᵀ (H + δI)⁻¹ ∇L(z)` with H approximated per linear layer by
//! Kronecker factors (K-FAC) or their eigenvalue-corrected form (EK-FAC).
//!
//! - [`kfac`]: one block's factors, eigenbases, EK-FAC eigenvalues and damped iHVP;
//! - [`factors`]: fitting all selected layers of a model (attention per head, MLP per layer), the
//!   reference iHVP and candidate scores;
//! - [`validate`]: the comparison against the exact damped empirical Fisher on a tiny model.

pub mod factors;
pub mod kfac;
pub mod validate;

pub use factors::{Damping, Factors, FitOptions, InfluenceError, ReferenceIhvp};
pub use kfac::{BlockRange, EkfacSums, FactorSums, KfacError, KroneckerFactors, Strategy};
