//! The influence stage's error.

use super::kfac::KfacError;

/// Errors of the influence stage.
#[derive(Debug, thiserror::Error)]
pub enum InfluenceError {
    #[error(transparent)]
    Kfac(#[from] KfacError),
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The progress callback stopped the fit (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}
