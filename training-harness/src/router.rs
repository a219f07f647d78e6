//! A learned router on the backbone's own hidden states: which skill a prompt belongs to.
//!
//! Features ([`prompt_features`]) are the base model's last hidden state averaged over the
//! chat-rendered prompt's tokens; the [`Router`] is multinomial logistic regression on those
//! features after per-feature standardisation, trained by full-batch Adam in f64 on the
//! softmax cross-entropy plus an L2 penalty on the weights ([`loss_and_gradient`]).
//!
//! Numerics: parameters and features are f32, everything is computed in f64. Every stored
//! value is finite and every `inv_std` lies in `(0, 1e6]` after training (any positive finite
//! f32 after loading), so for finite f32 features each standardised value is below
//! `2·f32::MAX · f32::MAX ≈ 2.3e77` in magnitude and each logit below `d · 2.3e77 · f32::MAX`:
//! finite in f64 for any realistic `d`. Probabilities go through a max-shifted softmax, so
//! they are finite and sum to 1 even for features of 1e30.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use skillzip_lm::model::{Llama, NoHook};
use skillzip_lm::tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::selfgen::encode_prompt;

/// The smallest per-feature standard deviation standardisation divides by: constant features
/// get `inv_std = 1e6` (their standardised value is then exactly 0 on the training set).
pub const STD_FLOOR: f64 = 1e-6;

/// Features of each prompt: the base model's last hidden state (the last block's output,
/// [`Llama::hidden_states`]) averaged over every token of the prompt rendered with the chat
/// template as [`encode_prompt`] does, as f32 vectors of length `hidden_size`.
///
/// The states are taken *before* the final RMSNorm. The norm is a per-token rescaling
/// followed by a fixed per-channel gain; the router standardises every feature anyway, which
/// cancels the gain, and the raw residual stream keeps the token's magnitude, which the norm
/// would discard. It also needs no access to the norm's weights and is exactly what the model
/// computes on its way to the LM head (a serving path can read it for free).
///
/// One prompt per forward pass (no padding, no batching), so a prompt's features never
/// depend on the other prompts of the call. `progress(done, total)` after each prompt. A
/// prompt longer than the model's context, or a model producing non-finite states, is an
/// error.
pub fn prompt_features(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[&str],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = encode_prompt(tok, prompt)?;
        let features = token_features(model, &ids).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("prompt {i}: {m}")),
            e => e,
        })?;
        out.push(features);
        progress(i + 1, prompts.len());
    }
    Ok(out)
}

/// The router's features of one token sequence (a prompt already rendered and encoded): the
/// model's last hidden states before the final norm, averaged over the tokens in f64. What
/// [`prompt_features`] computes per prompt, and what a server computes on its backbone.
pub fn token_features(model: &Llama, ids: &[u32]) -> Result<Vec<f32>> {
    let d = model.config().hidden_size;
    let n = ids.len();
    if n == 0 {
        return Err(Error::InvalidInput(
            "the prompt renders to no tokens".into(),
        ));
    }
    let ids = Tensor::from_vec(ids.to_vec(), (1, n), &Device::Cpu)?;
    let states = model.hidden_states(&ids, None, &mut NoHook)?;
    let rows: Vec<Vec<f32>> = states.squeeze(0)?.to_dtype(DType::F32)?.to_vec2()?;
    let mut sum = vec![0f64; d];
    for row in &rows {
        if row.len() != d {
            return Err(Error::InvalidInput(format!(
                "hidden states of width {}, the model's is {d}",
                row.len()
            )));
        }
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / rows.len() as f64) as f32).collect();
    if mean.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidInput(
            "the model's hidden states are not finite".into(),
        ));
    }
    Ok(mean)
}

/// How [`Router::train`] fits.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Full-batch Adam steps (each sees every example once); at least 1.
    pub epochs: usize,
    /// Adam's step size; finite and positive.
    pub learning_rate: f64,
    /// The L2 penalty `l2/2 · ‖W‖²` on the weights (not the bias); finite and `≥ 0`.
    pub l2: f64,
    /// Recorded for reproducibility of a run's settings. Training is full-batch from zero
    /// weights and draws no random numbers, so it is deterministic and the same for every
    /// seed.
    pub seed: u64,
}

impl Default for RouterConfig {
    /// 300 epochs of Adam at 0.05 with `l2 = 1e-3`.
    fn default() -> Self {
        Self {
            epochs: 300,
            learning_rate: 0.05,
            l2: 1e-3,
            seed: 0,
        }
    }
}

/// Multinomial logistic regression on standardised features: for features `x`,
/// `z_j = (x_j − mean_j)·inv_std_j`, logits `W·z + b`, probabilities their softmax.
///
/// Serialised as JSON (`skills`, `mean`, `inv_std`, `weights`, `bias`; no other fields);
/// deserialising always validates ([`Router::from_json_bytes`]'s checks), so no invalid
/// router can be built from bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RouterFile")]
pub struct Router {
    /// The skills, in label order (at least 2, non-empty, unique).
    pub(crate) skills: Vec<String>,
    /// Per-feature training mean; its length is the feature width `d`.
    pub(crate) mean: Vec<f32>,
    /// Per-feature `1 / max(std, STD_FLOOR)`: positive and finite.
    pub(crate) inv_std: Vec<f32>,
    /// `K × d`, row-major (row `k` scores skill `k`).
    pub(crate) weights: Vec<f32>,
    /// One per skill.
    pub(crate) bias: Vec<f32>,
}

/// The JSON as read, before validation.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterFile {
    skills: Vec<String>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl TryFrom<RouterFile> for Router {
    type Error = String;

    fn try_from(f: RouterFile) -> std::result::Result<Self, String> {
        check_skills(&f.skills)?;
        let k = f.skills.len();
        let d = f.mean.len();
        if d == 0 {
            return Err("no features (empty `mean`)".into());
        }
        if f.inv_std.len() != d {
            return Err(format!(
                "{} inv_std values for {d} features",
                f.inv_std.len()
            ));
        }
        let kd = k
            .checked_mul(d)
            .ok_or_else(|| format!("{k} skills × {d} features overflow"))?;
        if f.weights.len() != kd {
            return Err(format!(
                "{} weights for {k} skills × {d} features",
                f.weights.len()
            ));
        }
        if f.bias.len() != k {
            return Err(format!("{} biases for {k} skills", f.bias.len()));
        }
        for (name, values) in [
            ("mean", &f.mean),
            ("inv_std", &f.inv_std),
            ("weights", &f.weights),
            ("bias", &f.bias),
        ] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!("{name}[{i}] is not finite"));
            }
        }
        if let Some(i) = f.inv_std.iter().position(|&v| v <= 0.0) {
            return Err(format!("inv_std[{i}] = {} is not positive", f.inv_std[i]));
        }
        Ok(Router {
            skills: f.skills,
            mean: f.mean,
            inv_std: f.inv_std,
            weights: f.weights,
            bias: f.bias,
        })
    }
}

/// At least two skills, none empty, no duplicates.
fn check_skills(skills: &[String]) -> std::result::Result<(), String> {
    if skills.len() < 2 {
        return Err(format!(
            "{} skill(s): a router needs at least 2",
            skills.len()
        ));
    }
    if let Some(i) = skills.iter().position(String::is_empty) {
        return Err(format!("skill {i} has an empty name"));
    }
    let mut seen = BTreeSet::new();
    for s in skills {
        if !seen.insert(s.as_str()) {
            return Err(format!("skill {s:?} appears twice"));
        }
    }
    Ok(())
}

/// The training objective on standardised features `z` (`n × d` row-major, `n = labels.len()`)
/// and its gradient: `(1/n) Σ_i [logsumexp(W·z_i + b) − (W·z_i + b)_{y_i}] + l2/2 · ‖W‖²`.
/// `K = bias.len()`, `weights` is `K × d` row-major. Returns `(loss, ∂/∂W, ∂/∂b)`.
///
/// What [`Router::train`] descends; public so the tests can check it against finite
/// differences.
#[doc(hidden)]
pub fn loss_and_gradient(
    z: &[f64],
    d: usize,
    labels: &[usize],
    weights: &[f64],
    bias: &[f64],
    l2: f64,
) -> Result<(f64, Vec<f64>, Vec<f64>)> {
    let n = labels.len();
    let k = bias.len();
    if n == 0 || d == 0 || k == 0 {
        return Err(Error::InvalidInput(
            "no examples, features or classes".into(),
        ));
    }
    if Some(z.len()) != n.checked_mul(d) || Some(weights.len()) != k.checked_mul(d) {
        return Err(Error::InvalidInput(format!(
            "{} feature values for {n} × {d}, {} weights for {k} × {d}",
            z.len(),
            weights.len()
        )));
    }
    if let Some(&y) = labels.iter().find(|&&y| y >= k) {
        return Err(Error::InvalidInput(format!("label {y} with {k} classes")));
    }
    let mut grad_w = vec![0f64; k * d];
    let mut grad_b = vec![0f64; k];
    let mut loss = 0f64;
    let mut logits = vec![0f64; k];
    let inv_n = 1.0 / n as f64;
    for (row, &y) in z.chunks_exact(d).zip(labels) {
        logits_into(weights, bias, row, &mut logits);
        log_softmax_in_place(&mut logits);
        // `logits` now holds log-probabilities.
        loss -= logits[y];
        for (c, &lp) in logits.iter().enumerate() {
            let g = (lp.exp() - f64::from(u8::from(c == y))) * inv_n;
            grad_b[c] += g;
            for (gw, &zj) in grad_w[c * d..(c + 1) * d].iter_mut().zip(row) {
                *gw += g * zj;
            }
        }
    }
    loss *= inv_n;
    let mut penalty = 0f64;
    for (gw, &w) in grad_w.iter_mut().zip(weights) {
        *gw += l2 * w;
        penalty += w * w;
    }
    loss += 0.5 * l2 * penalty;
    Ok((loss, grad_w, grad_b))
}

/// `out = W·z + b`.
fn logits_into(weights: &[f64], bias: &[f64], z: &[f64], out: &mut [f64]) {
    let d = z.len();
    for (c, o) in out.iter_mut().enumerate() {
        *o = bias[c]
            + weights[c * d..(c + 1) * d]
                .iter()
                .zip(z)
                .map(|(w, x)| w * x)
                .sum::<f64>();
    }
}

/// Turns finite logits into log-probabilities in place (shifted by the maximum first, so
/// nothing overflows).
fn log_softmax_in_place(v: &mut [f64]) {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for x in v.iter_mut() {
        *x -= max;
    }
    // `x − max` first: subtracting `max + ln Σ` at once would lose `ln Σ` against a huge max.
    let log_sum = v.iter().map(|x| x.exp()).sum::<f64>().ln();
    for x in v.iter_mut() {
        *x -= log_sum;
    }
}

impl Router {
    /// Fits a router to `features` (one f32 vector of width `d` per example) labelled with
    /// indices into `skills`. Standardisation statistics come from these features (f64, two
    /// passes, std floored at [`STD_FLOOR`]); then `cfg.epochs` full-batch Adam steps
    /// (β = 0.9, 0.999, ε = 1e-8) from zero on [`loss_and_gradient`].
    ///
    /// Typed errors ([`Error::InvalidInput`]): no examples or zero-width features, ragged
    /// widths, as many labels as examples, a label outside `skills`, a non-finite feature,
    /// fewer than 2 skills (or an empty or duplicate name), settings that cannot train, and
    /// weights that leave f32's range.
    pub fn train(
        features: &[Vec<f32>],
        labels: &[usize],
        skills: Vec<String>,
        cfg: &RouterConfig,
    ) -> Result<Router> {
        check_skills(&skills).map_err(Error::InvalidInput)?;
        let k = skills.len();
        let n = features.len();
        if n == 0 {
            return Err(Error::InvalidInput("no training examples".into()));
        }
        let d = features[0].len();
        if d == 0 {
            return Err(Error::InvalidInput("features of width 0".into()));
        }
        if let Some(i) = features.iter().position(|f| f.len() != d) {
            return Err(Error::InvalidInput(format!(
                "ragged features: example {i} has {} values, example 0 has {d}",
                features[i].len()
            )));
        }
        if labels.len() != n {
            return Err(Error::InvalidInput(format!(
                "{} labels for {n} examples",
                labels.len()
            )));
        }
        if let Some(i) = labels.iter().position(|&y| y >= k) {
            return Err(Error::InvalidInput(format!(
                "label {} of example {i} is out of range for {k} skills",
                labels[i]
            )));
        }
        for (i, f) in features.iter().enumerate() {
            if let Some(j) = f.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidInput(format!(
                    "feature {j} of example {i} is not finite"
                )));
            }
        }
        if cfg.epochs == 0 {
            return Err(Error::InvalidInput("0 training epochs".into()));
        }
        if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
            return Err(Error::InvalidInput(format!(
                "learning rate {} is not finite and positive",
                cfg.learning_rate
            )));
        }
        if !(cfg.l2.is_finite() && cfg.l2 >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "l2 {} is not finite and non-negative",
                cfg.l2
            )));
        }

        // Standardisation, stored as f32; training uses exactly the stored values.
        let mut mean = vec![0f64; d];
        for f in features {
            for (m, &v) in mean.iter_mut().zip(f) {
                *m += f64::from(v);
            }
        }
        let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
        let mut var = vec![0f64; d];
        for f in features {
            for ((s, &v), &m) in var.iter_mut().zip(f).zip(&mean) {
                let c = f64::from(v) - f64::from(m);
                *s += c * c;
            }
        }
        let inv_std: Vec<f32> = var
            .iter()
            .map(|s| {
                let std = (s / n as f64).sqrt().max(STD_FLOOR);
                ((1.0 / std) as f32).max(f32::MIN_POSITIVE)
            })
            .collect();
        let mut z = Vec::with_capacity(n * d);
        for f in features {
            z.extend(standardise(f, &mean, &inv_std));
        }

        // Full-batch Adam from zero.
        let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut w = vec![0f64; k * d];
        let mut b = vec![0f64; k];
        let mut m_w = vec![0f64; k * d];
        let mut v_w = vec![0f64; k * d];
        let mut m_b = vec![0f64; k];
        let mut v_b = vec![0f64; k];
        for t in 1..=cfg.epochs {
            let (_, gw, gb) = loss_and_gradient(&z, d, labels, &w, &b, cfg.l2)?;
            let c1 = 1.0 - beta1.powi(t.min(i32::MAX as usize) as i32);
            let c2 = 1.0 - beta2.powi(t.min(i32::MAX as usize) as i32);
            let step = |p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64]| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *p -= cfg.learning_rate * (*m / c1) / ((*v / c2).sqrt() + eps);
                }
            };
            step(&mut w, &mut m_w, &mut v_w, &gw);
            step(&mut b, &mut m_b, &mut v_b, &gb);
        }
        let to_f32 = |v: &[f64], what: &str| -> Result<Vec<f32>> {
            v.iter()
                .map(|&x| {
                    let y = x as f32;
                    if y.is_finite() {
                        Ok(y)
                    } else {
                        Err(Error::InvalidInput(format!(
                            "training diverged: a {what} value of {x} does not fit f32"
                        )))
                    }
                })
                .collect()
        };
        Ok(Router {
            weights: to_f32(&w, "weight")?,
            bias: to_f32(&b, "bias")?,
            skills,
            mean,
            inv_std,
        })
    }

    /// The skills, in label order.
    pub fn skills(&self) -> &[String] {
        &self.skills
    }

    /// The feature width `d` the router reads.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The logits `W·z + b` of one feature vector, in f64; the width and finiteness are
    /// checked ([`Error::InvalidInput`]).
    pub fn logits(&self, features: &[f32]) -> Result<Vec<f64>> {
        let d = self.dim();
        if features.len() != d {
            return Err(Error::InvalidInput(format!(
                "{} features, the router reads {d}",
                features.len()
            )));
        }
        if let Some(j) = features.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!("feature {j} is not finite")));
        }
        let z: Vec<f64> = standardise(features, &self.mean, &self.inv_std).collect();
        Ok(self
            .bias
            .iter()
            .zip(self.weights.chunks_exact(d))
            .map(|(&b, row)| {
                f64::from(b)
                    + row
                        .iter()
                        .zip(&z)
                        .map(|(&w, &x)| f64::from(w) * x)
                        .sum::<f64>()
            })
            .collect())
    }

    /// The probability of each skill for one feature vector (a max-shifted softmax in f64:
    /// finite, summing to 1). Errors as [`Router::logits`].
    pub fn probabilities(&self, features: &[f32]) -> Result<Vec<f64>> {
        let mut p = self.logits(features)?;
        log_softmax_in_place(&mut p);
        for x in p.iter_mut() {
            *x = x.exp();
        }
        Ok(p)
    }

    /// The most probable skill's index (the first on a tie). Errors as [`Router::logits`].
    pub fn route(&self, features: &[f32]) -> Result<usize> {
        let logits = self.logits(features)?;
        let mut best = 0;
        for (c, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = c;
            }
        }
        Ok(best)
    }

    /// The router as JSON bytes.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::InvalidInput(format!("router JSON: {e}")))
    }

    /// Writes the router as JSON to `path`, atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        skillzip_format::write_atomic_bytes(path, &self.to_json_bytes()?)?;
        Ok(())
    }

    /// Parses and validates a router: skills at least 2, non-empty and unique; `d =
    /// mean.len() ≥ 1`, `inv_std` of length `d`, `weights` of `K·d`, `bias` of `K`; every
    /// value finite; every `inv_std > 0`; no unknown fields. Any failure is
    /// [`Error::Corrupt`]; never a panic.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Router> {
        parse(bytes, Path::new("router.json"))
    }

    /// Reads and validates a router file ([`Router::from_json_bytes`]'s checks, errors naming
    /// `path`).
    pub fn load(path: &Path) -> Result<Router> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        parse(&bytes, path)
    }
}

/// [`Router::from_json_bytes`] with `path` named in errors.
fn parse(bytes: &[u8], path: &Path) -> Result<Router> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(path, format!("router: {e}")))
}

/// `(x_j − mean_j)·inv_std_j` in f64.
fn standardise<'a>(
    x: &'a [f32],
    mean: &'a [f32],
    inv_std: &'a [f32],
) -> impl Iterator<Item = f64> + 'a {
    x.iter()
        .zip(mean)
        .zip(inv_std)
        .map(|((&x, &m), &s)| (f64::from(x) - f64::from(m)) * f64::from(s))
}

/// How often `router` routes `features` to their `labels`, and the confusion matrix:
/// `confusion[true][routed]` counts (`K × K`). Errors: no examples, as many labels as
/// examples, a label outside the router's skills, and [`Router::route`]'s.
pub fn routing_accuracy(
    router: &Router,
    features: &[Vec<f32>],
    labels: &[usize],
) -> Result<(f64, Vec<Vec<usize>>)> {
    let k = router.skills.len();
    if features.is_empty() {
        return Err(Error::InvalidInput("no examples to route".into()));
    }
    if labels.len() != features.len() {
        return Err(Error::InvalidInput(format!(
            "{} labels for {} examples",
            labels.len(),
            features.len()
        )));
    }
    let mut confusion = vec![vec![0usize; k]; k];
    let mut correct = 0usize;
    for (i, (f, &y)) in features.iter().zip(labels).enumerate() {
        if y >= k {
            return Err(Error::InvalidInput(format!(
                "label {y} of example {i} is out of range for {k} skills"
            )));
        }
        let r = router.route(f)?;
        confusion[y][r] += 1;
        correct += usize::from(r == y);
    }
    Ok((correct as f64 / features.len() as f64, confusion))
}
