//! A tiny base model on disk, fine-tunes of it (low-rank-plus-noise deltas on every linear,
//! written as safetensors checkpoints) and each fine-tune's calibration from the base: the
//! fixture of the model-level compression and baseline tests.

use std::path::{Path, PathBuf};

use faer::Mat;
use rand_distr::{Distribution, Normal};
use skillzip_lm::calibrate::{CalibrationOptions, CalibrationSource, SkillCalibration, calibrate};
use skillzip_lm::checkpoint::{Checkpoint, LinearKind, TensorRole, tensor_specs};
use skillzip_lm::compress::SkillSource;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;
use skillzip_lm::save::{SaveOptions, save_checkpoint};

use super::{Values, param_values, tokens};

/// The final norm, the one non-linear tensor a fixture fine-tune can change.
pub const NORM: &str = "model.norm.weight";

/// A base model, fine-tunes of it and each fine-tune's calibration (from the base).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: LlamaConfig,
    pub base: Checkpoint,
    pub base_values: Values,
    pub names: Vec<String>,
    pub tuned: Vec<Checkpoint>,
    pub tuned_values: Vec<Values>,
    pub cals: Vec<SkillCalibration>,
}

/// `scale · U·V / √rank` (`out × in`, row-major) plus `noise`-sized Gaussian noise.
pub fn low_rank(
    out: usize,
    inp: usize,
    rank: usize,
    scale: f32,
    noise: f32,
    seed: u64,
) -> Vec<f32> {
    let mut rng = skillzip_core::seeded_rng(seed);
    let n = Normal::new(0.0f32, 1.0).unwrap();
    let u: Vec<f32> = (0..out * rank).map(|_| n.sample(&mut rng)).collect();
    let v: Vec<f32> = (0..rank * inp).map(|_| n.sample(&mut rng)).collect();
    let s = scale / (rank as f32).sqrt();
    (0..out * inp)
        .map(|idx| {
            let (o, i) = (idx / inp, idx % inp);
            let lr: f32 = (0..rank).map(|j| u[o * rank + j] * v[j * inp + i]).sum();
            s * lr + noise * n.sample(&mut rng)
        })
        .collect()
}

pub fn save_values(dir: &Path, config: &LlamaConfig, values: &Values) -> Checkpoint {
    save_checkpoint(dir, config, SaveOptions::default(), &[], |name, _| {
        Ok(values[name].1.clone())
    })
    .unwrap();
    Checkpoint::open(dir).unwrap()
}

/// `skills` fine-tunes: every linear moves by a rank-2 component all skills share plus a
/// rank-2 component of its own plus noise; skill 0 also changes the final norm when
/// `norm_changed`.
pub fn fixture(skills: usize, norm_changed: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = LlamaConfig::tiny();
    let model = Llama::random(config.clone(), 11, 5.0).unwrap();
    let base_values = param_values(&model);
    let base = save_values(&dir.path().join("base"), &config, &base_values);
    let names: Vec<String> = ["arith", "caps", "chat"][..skills]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut tuned = Vec::new();
    let mut tuned_values = Vec::new();
    let mut cals = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut values = base_values.clone();
        for (t, (tensor, shape, role)) in tensor_specs(&config).into_iter().enumerate() {
            if let TensorRole::Linear(..) = role {
                let (out, inp) = (shape[0], shape[1]);
                let shared = low_rank(out, inp, 2, 0.04, 0.0, 1000 + t as u64);
                let own = low_rank(out, inp, 2, 0.04, 0.003, 77 * k as u64 + t as u64);
                for ((w, a), b) in values
                    .get_mut(&tensor)
                    .unwrap()
                    .1
                    .iter_mut()
                    .zip(shared)
                    .zip(own)
                {
                    *w += a + b;
                }
            }
        }
        if norm_changed && k == 0 {
            for (i, w) in values.get_mut(NORM).unwrap().1.iter_mut().enumerate() {
                *w += (i % 7) as f32 * 0.01 - 0.02;
            }
        }
        tuned.push(save_values(&dir.path().join(name), &config, &values));
        tuned_values.push(values);
        let prompts: Vec<Vec<u32>> = (0..7)
            .map(|i| tokens(6 + i % 4, config.vocab_size, (10 * k + i) as u32))
            .collect();
        let opts = CalibrationOptions {
            calibration_rows: 24,
            selection_rows: 12,
            heldout_rows: 12,
            seed: k as u64,
        };
        cals.push(calibrate(&base, name, &prompts, opts, &mut |_, _| {}).unwrap());
    }
    Fixture {
        dir,
        config,
        base,
        base_values,
        names,
        tuned,
        tuned_values,
        cals,
    }
}

impl Fixture {
    pub fn sources(&self) -> Vec<SkillSource<'_>> {
        (0..self.names.len())
            .map(|k| SkillSource {
                name: &self.names[k],
                checkpoint: &self.tuned[k],
                calibration: &self.cals[k] as &dyn CalibrationSource,
            })
            .collect()
    }

    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `θ_k − θ_0` of a tensor, row-major `[out, in]`.
    pub fn delta(&self, k: usize, name: &str) -> Vec<f32> {
        self.tuned_values[k][name]
            .1
            .iter()
            .zip(&self.base_values[name].1)
            .map(|(t, b)| t - b)
            .collect()
    }
}

/// `[out, in]` row-major → `C_i × C_o`.
pub fn paper(flat: &[f32], out: usize, inp: usize) -> Mat<f32> {
    Mat::from_fn(inp, out, |i, o| flat[o * inp + i])
}

pub fn linears(config: &LlamaConfig) -> Vec<(usize, LinearKind)> {
    (0..config.num_hidden_layers)
        .flat_map(|l| LinearKind::ALL.map(|k| (l, k)))
        .collect()
}
