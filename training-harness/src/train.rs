//! [`DpoTrainer`]: full-parameter LN-DPO on every linear layer of a Llama model, with AdamW,
//! warm-up + cosine decay, gradient clipping, and checkpoints that survive a kill.
//!
//! Embeddings and norms stay frozen (their deltas are zero, as SkillWeave's skill deltas are
//! linear-layer deltas). A checkpoint is a directory `ckpt-NNNNNN/` holding the trainable
//! tensors, both AdamW moments and `state.json`; it is complete before it gets its final name
//! (written as `*.partial`, then renamed), and the file `LATEST` — replaced atomically — names
//! the newest. A crash at any point leaves the previous checkpoint loadable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;
use skillzip_lm::save::{DenseDtype, write_streamed};

use crate::dpo::{LnDpo, PreferencePair};
use crate::error::{Error, Result};
use crate::optim::{AdamW, AdamWConfig, Schedule, StepStats};

/// Parameters by HF name, row-major f32.
pub type Params = BTreeMap<String, Vec<f32>>;

/// Everything that shapes training.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The objective's constants.
    pub objective: LnDpo,
    /// AdamW's constants.
    pub adamw: AdamWConfig,
    /// The learning-rate schedule (its `total_steps` is the whole run's).
    pub schedule: Schedule,
    /// Clip the gradient's global L2 norm to this (`None`: no clipping).
    pub clip_norm: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: LnDpo::default(),
            adamw: AdamWConfig::default(),
            schedule: Schedule {
                peak_lr: 1e-5,
                min_lr: 1e-6,
                warmup_steps: 2,
                total_steps: 20,
            },
            clip_norm: Some(1.0),
        }
    }
}

/// What one training step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step's index (0-based).
    pub step: usize,
    /// The batch's mean loss before the update.
    pub loss: f32,
    /// Fraction of pairs whose helpful response had the higher average log-probability.
    pub accuracy: f64,
    /// Mean of `avg_logp(y_w) − avg_logp(y_l)`.
    pub margin: f64,
    /// Mean of `avg_logp(y_w)`: whether the helpful responses themselves grow likelier (a
    /// margin won only by pushing harmful responses down shows here as a falling value).
    pub chosen_logp: f64,
    /// The optimizer's view of the step.
    pub optimizer: StepStats,
}

/// A policy being trained with LN-DPO.
pub struct DpoTrainer {
    config: LlamaConfig,
    train: TrainConfig,
    model: Llama,
    optimizer: AdamW,
    frozen: Params,
}

impl std::fmt::Debug for DpoTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpoTrainer")
            .field("train", &self.train)
            .field("steps", &self.optimizer.steps())
            .finish_non_exhaustive()
    }
}

const STATE_FILE: &str = "state.json";
const PARAMS_FILE: &str = "trainable.safetensors";
const M_FILE: &str = "adam_m.safetensors";
const V_FILE: &str = "adam_v.safetensors";
const LATEST: &str = "LATEST";

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedState {
    steps: u64,
    train: TrainConfig,
    /// The caller's own progress (round, data cursor, …), returned on resume.
    extra: serde_json::Value,
}

impl DpoTrainer {
    /// A trainer starting from `params` (every tensor of a `config`-shaped model).
    pub fn new(config: &LlamaConfig, params: Params, train: TrainConfig) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let mut vars = Vec::new();
        let mut frozen = Params::new();
        let mut params = params;
        for (name, shape, role) in tensor_specs(config) {
            let data = params.remove(&name).ok_or_else(|| {
                Error::InvalidInput(format!("the starting parameters lack {name}"))
            })?;
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::InvalidInput(format!(
                    "{name} holds {} values, its shape {shape:?} needs {}",
                    data.len(),
                    shape.iter().product::<usize>()
                )));
            }
            let t = Tensor::from_slice(&data, shape, &Device::Cpu)?;
            if matches!(role, TensorRole::Linear(..)) {
                let v = Var::from_tensor(&t)?;
                tensors.insert(name.clone(), v.as_tensor().clone());
                vars.push((name, v));
            } else {
                tensors.insert(name.clone(), t);
                frozen.insert(name, data);
            }
        }
        if let Some(extra) = params.keys().next() {
            return Err(Error::InvalidInput(format!(
                "{extra} is not a tensor of this model"
            )));
        }
        let model = Llama::from_tensors(config.clone(), tensors)?;
        Ok(Self {
            config: config.clone(),
            train,
            model,
            optimizer: AdamW::new(vars, train.adamw)?,
            frozen,
        })
    }

    /// The policy as it is now (for generating the next round's samples).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.optimizer.steps() as usize
    }

    /// The training settings.
    pub fn train_config(&self) -> &TrainConfig {
        &self.train
    }

    /// One LN-DPO step on `pairs`.
    pub fn step(&mut self, pairs: &[PreferencePair]) -> Result<StepReport> {
        let step = self.steps();
        let out = self.train.objective.loss(&self.model, pairs)?;
        let loss = out.loss.to_scalar::<f32>()?;
        if !loss.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the loss is {loss} at step {step}: refusing to step"
            )));
        }
        let grads = out.loss.backward()?;
        let grads = self.optimizer.gradients(&grads)?;
        let lr = self.train.schedule.lr(step);
        let optimizer = self.optimizer.step(&grads, lr, self.train.clip_norm)?;
        let margin = out
            .chosen
            .iter()
            .zip(&out.rejected)
            .map(|(w, l)| (w - l) as f64)
            .sum::<f64>()
            / pairs.len() as f64;
        let chosen_logp = out.chosen.iter().map(|&w| w as f64).sum::<f64>() / pairs.len() as f64;
        Ok(StepReport {
            step,
            loss,
            accuracy: out.accuracy(),
            margin,
            chosen_logp,
            optimizer,
        })
    }

    /// Every parameter of the current policy (trained and frozen), by HF name.
    pub fn parameters(&self) -> Params {
        let mut out = self.frozen.clone();
        for (name, p) in self
            .optimizer
            .names()
            .iter()
            .zip(self.optimizer.parameters())
        {
            out.insert(name.clone(), p.clone());
        }
        out
    }

    fn trainable_specs(&self) -> Vec<(String, Vec<usize>)> {
        let specs = tensor_specs(&self.config);
        self.optimizer
            .names()
            .iter()
            .map(|n| {
                let shape = specs
                    .iter()
                    .find(|(s, _, _)| s == n)
                    .map(|(_, shape, _)| shape.clone())
                    .unwrap_or_default();
                (n.clone(), shape)
            })
            .collect()
    }

    /// Writes a checkpoint under `dir` (see the module doc) with the caller's `extra`
    /// progress, then removes older checkpoints there. Returns the checkpoint's directory.
    pub fn save_checkpoint(&self, dir: &Path, extra: serde_json::Value) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = format!("ckpt-{:06}", self.steps());
        let partial = dir.join(format!("{name}.partial"));
        let done = dir.join(&name);
        for stale in [&partial, &done] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| Error::io(stale, e))?;
            }
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        let specs = self.trainable_specs();
        let (m, v) = self.optimizer.moments();
        for (file, values) in [
            (PARAMS_FILE, self.optimizer.parameters()),
            (M_FILE, m),
            (V_FILE, v),
        ] {
            let mut next = values.iter();
            write_streamed(
                &partial.join(file),
                &specs,
                DenseDtype::F32,
                &[],
                &mut |_, _| Ok(next.next().cloned().unwrap_or_default()),
            )?;
        }
        let state = SavedState {
            steps: self.optimizer.steps(),
            train: self.train,
            extra,
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::InvalidInput(format!("checkpoint state: {e}")))?;
        skillzip_format::write_atomic_bytes(partial.join(STATE_FILE), &json)?;
        std::fs::rename(&partial, &done).map_err(|e| Error::io(&done, e))?;
        skillzip_format::write_atomic_bytes(dir.join(LATEST), name.as_bytes())?;
        // Only now is the new checkpoint the one a resume finds; older ones can go.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().to_string();
                if file.starts_with("ckpt-") && file != name {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(done)
    }

    /// Resumes from the newest checkpoint under `dir`, if there is one: `base` must be the
    /// parameters the run started from (the frozen tensors come from it). Returns the trainer
    /// and the `extra` progress saved with it; `Ok(None)` when `dir` holds no checkpoint.
    pub fn resume(
        config: &LlamaConfig,
        base: Params,
        dir: &Path,
    ) -> Result<Option<(Self, serde_json::Value)>> {
        let latest = dir.join(LATEST);
        let name = match std::fs::read_to_string(&latest) {
            Ok(name) => name,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&latest, e)),
        };
        let name = name.trim();
        if !name.starts_with("ckpt-") || name.contains(['/', '\\']) || name.contains("..") {
            return Err(Error::corrupt(&latest, format!("names {name:?}")));
        }
        let ckpt = dir.join(name);
        let state_path = ckpt.join(STATE_FILE);
        let bytes = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state = parse_state(&bytes, &state_path)?;
        let mut trainer = Self::new(config, base, state.train)?;
        let specs = trainer.trainable_specs();
        let read = |file: &str| read_f32_tensors(&ckpt.join(file), &specs);
        trainer.optimizer.restore(
            read(PARAMS_FILE)?,
            read(M_FILE)?,
            read(V_FILE)?,
            state.steps,
        )?;
        Ok(Some((trainer, state.extra)))
    }
}

/// Reads the f32 tensors `specs` (in order) from a safetensors file written by
/// [`DpoTrainer::save_checkpoint`].
fn read_f32_tensors(path: &Path, specs: &[(String, Vec<usize>)]) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_f32_tensors(&bytes, path, specs)
}

/// Parses the f32 tensors `specs` (in order) from safetensors bytes, checking every name,
/// dtype and shape; `path` names the file in errors.
pub(crate) fn parse_f32_tensors(
    bytes: &[u8],
    path: &Path,
    specs: &[(String, Vec<usize>)],
) -> Result<Vec<Vec<f32>>> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::corrupt(path, e.to_string()))?;
    specs
        .iter()
        .map(|(name, shape)| {
            let t = file
                .tensor(name)
                .map_err(|e| Error::corrupt(path, format!("{name}: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape.as_slice() {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "{name} is {:?} {:?}, expected F32 {shape:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        })
        .collect()
}

/// Parses a checkpoint's `state.json`; `path` names the file in errors.
pub(crate) fn parse_state(bytes: &[u8], path: &Path) -> Result<SavedState> {
    let state: SavedState =
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(path, e.to_string()))?;
    if state.steps > usize::MAX as u64 / 2 {
        return Err(Error::corrupt(path, format!("{} steps", state.steps)));
    }
    Ok(state)
}
