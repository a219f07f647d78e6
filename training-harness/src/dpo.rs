//! The length-normalised, reference-free DPO objective (LN-DPO, SimPO-style).
//!
//! For a prompt `x` with a helpful response `y_w` and a harmful one `y_l`,
//!
//! ```text
//! avg_logp(y) = (1/|y|) · Σ_t log π(y_t | x, y_<t)
//! L = −log σ( β·avg_logp(y_w) − β·avg_logp(y_l) − γ )
//! ```
//!
//! averaged over the pairs of a batch. No reference model is kept (the length normalisation
//! plays the role of DPO's reference ratio), so training holds one model. `γ` is a target
//! margin: the loss keeps pushing until the helpful response is ahead by `γ/β` nats per token.
//!
//! An optional term `λ·(−avg_logp(y_w))` ([`LnDpo::nll`], 0 by default) also raises the
//! helpful response's own likelihood. A preference loss alone can win by pushing the harmful
//! response down while the helpful one falls too; with few pairs and reasoning-style answers
//! the negative log-likelihood term keeps the policy on what worked (Pang et al. 2024,
//! *Iterative Reasoning Preference Optimization*, use `λ = 1` with length normalisation).
//!
//! [`average_logps`] runs every sequence of a batch in one right-padded forward pass (causal
//! attention keeps the padding out of real positions), and computes the LM head only at the
//! positions that predict response tokens.

use candle_core::{D, Device, Tensor};
use skillzip_lm::model::{Llama, NoHook};

use crate::error::{Error, Result};

/// One preference pair, as token ids. Responses include their end-of-turn token, so the
/// model also learns where to stop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreferencePair {
    /// The prompt rendered with the chat template, ending where the response begins.
    pub prompt: Vec<u32>,
    /// The helpful response `y_w`.
    pub chosen: Vec<u32>,
    /// The harmful response `y_l`.
    pub rejected: Vec<u32>,
}

/// LN-DPO's two constants.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LnDpo {
    /// Scale `β` of the length-normalised log-likelihood difference.
    pub beta: f64,
    /// Target margin `γ`.
    pub gamma: f64,
    /// Weight `λ` of the helpful response's length-normalised negative log-likelihood added
    /// to the loss (0: LN-DPO alone).
    #[serde(default)]
    pub nll: f64,
}

impl Default for LnDpo {
    /// SimPO's range for instruct models: `β = 2`, `γ/β = 0.5`; no likelihood term.
    fn default() -> Self {
        Self {
            beta: 2.0,
            gamma: 1.0,
            nll: 0.0,
        }
    }
}

/// The loss of one batch and what it is made of.
#[derive(Debug)]
pub struct DpoLoss {
    /// The mean loss, differentiable.
    pub loss: Tensor,
    /// `avg_logp(y_w)` per pair.
    pub chosen: Vec<f32>,
    /// `avg_logp(y_l)` per pair.
    pub rejected: Vec<f32>,
}

impl DpoLoss {
    /// Pairs whose helpful response already has the higher average log-probability.
    pub fn accuracy(&self) -> f64 {
        let won = self
            .chosen
            .iter()
            .zip(&self.rejected)
            .filter(|(w, l)| w > l)
            .count();
        won as f64 / self.chosen.len().max(1) as f64
    }
}

/// The length-normalised log-probability of each `(prompt, response)` under `model`, `[n]`,
/// differentiable in the model's parameters. Every response must be non-empty.
pub fn average_logps(model: &Llama, sequences: &[(&[u32], &[u32])]) -> Result<Tensor> {
    if sequences.is_empty() {
        return Err(Error::InvalidInput("no sequences to score".into()));
    }
    if let Some(i) = sequences
        .iter()
        .position(|(p, r)| p.is_empty() || r.is_empty())
    {
        return Err(Error::InvalidInput(format!(
            "sequence {i} has an empty prompt or response"
        )));
    }
    // Inputs are the sequence without its last token; position i predicts token i + 1.
    let width = sequences
        .iter()
        .map(|(p, r)| p.len() + r.len() - 1)
        .max()
        .unwrap_or(1);
    let n = sequences.len();
    let mut ids = vec![0u32; n * width];
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut owner = Vec::new();
    for (s, (prompt, response)) in sequences.iter().enumerate() {
        let full: Vec<u32> = prompt.iter().chain(response.iter()).copied().collect();
        ids[s * width..s * width + full.len() - 1].copy_from_slice(&full[..full.len() - 1]);
        for i in prompt.len() - 1..full.len() - 1 {
            rows.push((s * width + i) as u32);
            targets.push(full[i + 1]);
            owner.push(s);
        }
    }
    let count = rows.len();
    // weights[s, k] = 1/|y_s| where predicted token k belongs to sequence s.
    let mut weights = vec![0f32; n * count];
    for (k, &s) in owner.iter().enumerate() {
        weights[s * count + k] = 1.0 / sequences[s].1.len() as f32;
    }
    let cpu = &Device::Cpu;
    let ids = Tensor::from_vec(ids, (n, width), cpu)?;
    let hidden = model.hidden_states(&ids, None, &mut NoHook)?;
    let d = hidden.dim(2)?;
    let picked_rows = hidden
        .reshape((n * width, d))?
        .index_select(&Tensor::from_vec(rows, count, cpu)?, 0)?;
    let logits = model.logits_of(&picked_rows)?;
    // log-softmax; the max is only a shift for stability, so it carries no gradient.
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let target = shifted.gather(&Tensor::from_vec(targets, (count, 1), cpu)?, 1)?;
    let token_logp = (target - log_z)?;
    let weights = Tensor::from_vec(weights, (n, count), cpu)?;
    Ok(weights.matmul(&token_logp)?.squeeze(1)?)
}

/// `log(1 + eˣ)` without overflow: `max(x, 0) + log(1 + e^−|x|)`.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

impl LnDpo {
    /// The mean LN-DPO loss of `pairs` under `model` (plus `λ·mean(−avg_logp(y_w))` when
    /// [`LnDpo::nll`] is set).
    pub fn loss(&self, model: &Llama, pairs: &[PreferencePair]) -> Result<DpoLoss> {
        if pairs.is_empty() {
            return Err(Error::InvalidInput("an LN-DPO batch needs pairs".into()));
        }
        let p = pairs.len();
        let sequences: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|x| (&x.prompt[..], &x.chosen[..]))
            .chain(pairs.iter().map(|x| (&x.prompt[..], &x.rejected[..])))
            .collect();
        let avg = average_logps(model, &sequences)?;
        let chosen = avg.narrow(0, 0, p)?;
        let rejected = avg.narrow(0, p, p)?;
        // −log σ(z) = softplus(−z).
        let z = (((&chosen - &rejected)? * self.beta)? - self.gamma)?;
        let mut loss = softplus(&z.neg()?)?.mean_all()?;
        if self.nll != 0.0 {
            loss = (loss - (chosen.mean_all()? * self.nll)?)?;
        }
        Ok(DpoLoss {
            loss,
            chosen: chosen.to_vec1()?,
            rejected: rejected.to_vec1()?,
        })
    }
}
