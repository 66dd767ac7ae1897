//! Influence stage: `I(z) = ∇L(R)ᵀ (H + δI)⁻¹ ∇L(z)` with H approximated per linear layer by
//! Kronecker factors (K-FAC) or their eigenvalue-corrected form (EK-FAC); see [`kfac`].

pub mod kfac;

pub use kfac::{BlockRange, EkfacSums, FactorSums, KfacError, KroneckerFactors, Strategy};
