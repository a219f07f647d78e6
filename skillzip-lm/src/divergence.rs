//! Comparing two models' next-token distributions: per-position log-probabilities and the KL
//! divergence between them (what `skillzip eval` and the benchmark report measure).

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::model::{LinearHook, Llama, Logits};

/// The log-softmax of `model`'s logits at every position of `ids` (one sequence), in f64:
/// row `i` is the distribution of the token after `ids[..=i]`.
pub fn log_prob_rows(
    model: &Llama,
    ids: &[u32],
    hook: &mut dyn LinearHook,
) -> Result<Vec<Vec<f64>>> {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    let logits = model.forward(&input, None, Logits::All, hook)?;
    let rows: Vec<Vec<f32>> = logits.squeeze(0)?.to_vec2()?;
    Ok(rows.iter().map(|r| log_softmax(r)).collect())
}

/// `log softmax(row)` in f64 (max-shifted, so large logits do not overflow).
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_z = row
        .iter()
        .map(|v| (*v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|v| *v as f64 - log_z).collect()
}

/// `KL(p ‖ q)` of two log-probability rows of the same vocabulary.
///
/// # Panics
/// If the rows differ in length (distributions over different vocabularies).
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(
        p.len(),
        q.len(),
        "KL of distributions over different vocabularies"
    );
    p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_known_distributions() {
        let p = log_softmax(&[0.0, 0.0]);
        assert!((p[0] - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(kl_divergence(&p, &p), 0.0);
        // KL(½,½ ‖ ¾,¼) = ½ ln(2/3) + ½ ln 2.
        let q = [0.75f64.ln(), 0.25f64.ln()];
        let want = 0.5 * (2.0f64 / 3.0).ln() + 0.5 * 2.0f64.ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-12);
        // Large logits stay finite.
        assert!(log_softmax(&[1e30, 0.0]).iter().all(|v| v.is_finite()));
    }
}
