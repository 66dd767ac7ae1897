//! Agreement of a clustering with labels: NMI, ARI, purity.

use serde::Serialize;

/// External quality of a clustering against reference labels.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LabelAgreement {
    /// Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default).
    pub nmi: f64,
    /// Adjusted Rand index.
    pub ari: f64,
    /// Share of documents whose cluster's majority label is their own.
    pub purity: f64,
}

/// Compares cluster ids with labels: NMI = `I(U;V) / ((H(U) + H(V)) / 2)`,
/// ARI = `(Σ C(n_ij,2) − E) / (½(Σ C(a_i,2) + Σ C(b_j,2)) − E)` with
/// `E = Σ C(a_i,2) Σ C(b_j,2) / C(n,2)`, purity = `Σ_i max_j n_ij / n`.
pub fn label_agreement(clusters: &[usize], labels: &[String]) -> LabelAgreement {
    assert_eq!(clusters.len(), labels.len());
    let n = clusters.len() as f64;
    let mut label_ids = std::collections::HashMap::new();
    let lab: Vec<usize> = labels
        .iter()
        .map(|l| {
            let next = label_ids.len();
            *label_ids.entry(l.as_str()).or_insert(next)
        })
        .collect();
    let kc = clusters.iter().max().map_or(0, |m| m + 1);
    let kl = label_ids.len();
    let mut table = vec![vec![0f64; kl]; kc];
    for (&c, &l) in clusters.iter().zip(&lab) {
        table[c][l] += 1.0;
    }
    let a: Vec<f64> = table.iter().map(|r| r.iter().sum()).collect();
    let b: Vec<f64> = (0..kl).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    let entropy = |xs: &[f64]| -> f64 {
        xs.iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| -(x / n) * (x / n).ln())
            .sum()
    };
    let mut mi = 0.0;
    for (i, row) in table.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0.0 {
                mi += (nij / n) * ((n * nij) / (a[i] * b[j])).ln();
            }
        }
    }
    let (hu, hv) = (entropy(&a), entropy(&b));
    let nmi = if hu == 0.0 && hv == 0.0 {
        1.0
    } else {
        (mi / ((hu + hv) / 2.0)).clamp(0.0, 1.0)
    };
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let sum_ij: f64 = table.iter().flatten().map(|&x| c2(x)).sum();
    let sum_a: f64 = a.iter().map(|&x| c2(x)).sum();
    let sum_b: f64 = b.iter().map(|&x| c2(x)).sum();
    let expected = sum_a * sum_b / c2(n);
    let max_index = (sum_a + sum_b) / 2.0;
    let ari = if max_index == expected {
        1.0
    } else {
        (sum_ij - expected) / (max_index - expected)
    };
    let purity = table
        .iter()
        .map(|r| r.iter().cloned().fold(0.0, f64::max))
        .sum::<f64>()
        / n;
    LabelAgreement { nmi, ari, purity }
}
