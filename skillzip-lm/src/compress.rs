//! Model-level SkillZip: a base checkpoint, named fine-tunes of it and their calibration
//! statistics become a bundle (DESIGN.md §4–5).
//!
//! [`compress_model`] walks the model one tensor at a time, in checkpoint order:
//! - a **linear weight**: the skills' deltas `Δ_k` (`C_i × C_o`), the shared component
//!   `Δ_shared = Merge(Δ_1..Δ_K)` when merging is on, each residual `Δ_k − Δ_shared`
//!   compressed with `skillzip_core::compress::compress` at the rank the [`RankPolicy`] picks,
//!   and measured on the skill's held-out activations against the original `Δ_k` with the
//!   shared component applied exactly (DESIGN §4.7);
//! - **anything else** (embeddings, norms, an untied LM head): by the [`DensePolicy`] — stored
//!   dense in each skillpack whose delta is non-zero, or merged into the backbone with the
//!   residual's size reported. Never dropped silently (DESIGN §4.8).
//!
//! The shared deltas stream into the bundle's `backbone_delta.safetensors` as they are made,
//! so memory holds one tensor of each checkpoint plus the compressed layers.
//!
//! The activations come from the base model `θ_0` (calibration runs before the shared
//! component exists); the backbone the skillpacks apply to is `θ_0 + Δ_shared`, whose hash
//! the skillpacks and manifest record.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use faer::{Mat, MatRef};
use skillzip_core::compress::{BitConfig, CalibrationData, CompressConfig, compress};
use skillzip_core::merge::{MaskSource, MergeConfig, extract_shared};
use skillzip_core::metrics::relative_error;
use skillzip_core::runtime::apply_batched;
use skillzip_format::bundle::{BundleBase, Manifest, SkillpackRef, file_ref, write_manifest};
use skillzip_format::dense::{DenseDtype, DenseTensor};
use skillzip_format::digest::BackboneHasher;
use skillzip_format::skillpack::{
    BaseModel, LayerEntry, LayerReport, Skillpack, SkillpackMeta, write_skillpack,
};

use crate::calibrate::{CalibrationSource, Split};
use crate::checkpoint::{Checkpoint, LinearKind, TensorRole, tensor_specs};
use crate::delta::check_same_architecture;
use crate::error::{Error, Result};
use crate::save::write_streamed;

/// How each layer's rank is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankPolicy {
    /// The same rank everywhere (capped at `min(C_i, C_o)`).
    Fixed(usize),
    /// The smallest rank whose singular values keep this fraction `(0, 1]` of the residual's
    /// energy `Σσ²` (of the unsmoothed residual).
    Energy(f64),
    /// A byte budget per skillpack for all linear layers, shared out in proportion to each
    /// layer's `C_i·C_o`; each layer gets the largest rank whose bytes fit its share.
    Budget {
        /// Bytes per skillpack (linear layers only).
        bytes: u64,
    },
}

/// What happens to deltas of parameters that are not linear weights (DESIGN §4.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensePolicy {
    /// Each skillpack stores its own non-zero deltas densely in this type.
    Skillpack(DenseDtype),
    /// The merged delta (the merge configuration, or the mean when merging is off) goes into
    /// the backbone; each skill's residual is reported as dropped.
    Backbone,
}

/// Everything [`compress_model`] can be told.
#[derive(Debug, Clone)]
pub struct ModelCompressOptions {
    /// The per-layer method (its `rank` is replaced by the policy's).
    pub layer: CompressConfig,
    /// Rank per layer.
    pub policy: RankPolicy,
    /// Shared-component merge (`None`: no shared component).
    pub merge: Option<MergeConfig>,
    /// Seed of the merge's random masks (DARE/DELLA).
    pub merge_seed: u64,
    /// Non-linear parameters.
    pub dense: DensePolicy,
    /// Storage type of `backbone_delta.safetensors`.
    pub backbone_dtype: DenseDtype,
    /// Which linear layers get skillpack factors (the others' deltas are stored dense).
    pub kinds: Vec<LinearKind>,
    /// Per-kind quantization grids overriding `layer.bits` (e.g. INT4 weights for the MLP),
    /// the per-layer bit policy; applied before the rank policy, so a byte budget buys more
    /// rank where the grid is narrower.
    pub bits_by_kind: BTreeMap<LinearKind, BitConfig>,
}

impl ModelCompressOptions {
    /// SkillZip X8A8B8 at a fixed rank, no shared component, dense deltas in fp16.
    pub fn new(layer: CompressConfig, policy: RankPolicy) -> Self {
        Self {
            layer,
            policy,
            merge: None,
            merge_seed: 0,
            dense: DensePolicy::Skillpack(DenseDtype::F16),
            backbone_dtype: DenseDtype::F32,
            kinds: LinearKind::ALL.to_vec(),
            bits_by_kind: BTreeMap::new(),
        }
    }
}

/// One fine-tuned model to compress.
#[derive(Clone, Copy)]
pub struct SkillSource<'a> {
    /// The skill's name (letters, digits, `-`, `_`, `.`; used in file names).
    pub name: &'a str,
    /// The fine-tuned checkpoint.
    pub checkpoint: &'a Checkpoint,
    /// The skill's calibration statistics (from the base model), read one layer at a time.
    pub calibration: &'a dyn CalibrationSource,
}

/// What one skill's layer came to.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRecord {
    /// HF module name.
    pub module: String,
    /// The skill.
    pub skill: String,
    /// Rank.
    pub rank: usize,
    /// Storage bytes (scales and smoothing included).
    pub bytes: usize,
    /// The chosen α.
    pub alpha: Option<f32>,
    /// Held-out relative output error against the original delta.
    pub rel_output_error: f64,
    /// Relative weight error against the original delta.
    pub rel_weight_error: f64,
    /// Held-out rows behind the error.
    pub heldout_rows: usize,
    /// Seconds spent compressing this skill's layer.
    pub seconds: f64,
}

/// Progress of [`compress_model`].
#[derive(Debug, Clone)]
pub enum Event {
    /// Tensor `index` of `total` is being processed.
    Tensor {
        /// 0-based index.
        index: usize,
        /// Number of tensors.
        total: usize,
        /// HF name.
        name: String,
    },
    /// A skill's layer is done.
    Layer(LayerRecord),
}

/// What [`compress_model`] wrote and measured.
#[derive(Debug, Clone, Default)]
pub struct CompressReport {
    /// Every compressed layer of every skill.
    pub layers: Vec<LayerRecord>,
    /// (skill, file, bytes) of each skillpack.
    pub skillpacks: Vec<(String, String, u64)>,
    /// Bytes of `backbone_delta.safetensors`, if written.
    pub backbone_delta_bytes: Option<u64>,
    /// (skill, tensor, bytes) of dense deltas stored in skillpacks.
    pub dense: Vec<(String, String, usize)>,
    /// (skill, tensor, ‖residual‖/‖Δ‖) of non-linear residuals merged away by
    /// [`DensePolicy::Backbone`].
    pub dropped: Vec<(String, String, f64)>,
    /// The backbone hash the skillpacks carry.
    pub backbone_hash: String,
}

/// File name of the backbone delta inside a bundle.
pub const BACKBONE_DELTA_FILE: &str = "backbone_delta.safetensors";

/// A skillpack's file name inside a bundle.
pub fn skillpack_file(skill: &str) -> String {
    format!("{skill}.skillpack.safetensors")
}

fn check_skill_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "skill name {name:?}: use 1–64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// `[out, in]` row-major → `C_i × C_o` (`W = weightᵀ`).
fn paper_layout(flat: &[f32], out: usize, inp: usize) -> Mat<f32> {
    Mat::from_fn(inp, out, |i, o| flat[o * inp + i])
}

fn frobenius(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// The smallest rank keeping `fraction` of `Σσ²`.
fn energy_rank(delta: MatRef<'_, f32>, fraction: f64) -> Result<usize> {
    let s = delta
        .singular_values()
        .map_err(|e| Error::Core(skillzip_core::Error::Factorisation(format!("{e:?}"))))?;
    let total: f64 = s.iter().map(|v| (*v as f64).powi(2)).sum();
    if total == 0.0 {
        return Ok(1);
    }
    let mut acc = 0.0;
    for (i, v) in s.iter().enumerate() {
        acc += (*v as f64).powi(2);
        if acc >= fraction * total {
            return Ok(i + 1);
        }
    }
    Ok(s.len())
}

struct Walker<'a> {
    base: &'a Checkpoint,
    skills: &'a [SkillSource<'a>],
    opts: &'a ModelCompressOptions,
    specs: Vec<(String, Vec<usize>, TensorRole)>,
    next: usize,
    packs: Vec<Skillpack>,
    report: CompressReport,
    hasher: BackboneHasher,
    /// Bytes per unit of `C_i·C_o` under a budget policy.
    budget_per_param: Option<f64>,
}

impl Walker<'_> {
    /// Processes specs up to and including `name` (or all remaining when `None`); returns the
    /// shared delta of `name`.
    fn advance(
        &mut self,
        name: Option<&str>,
        progress: &mut dyn FnMut(&Event),
    ) -> Result<Option<Vec<f32>>> {
        while self.next < self.specs.len() {
            let (spec_name, shape, role) = self.specs[self.next].clone();
            progress(&Event::Tensor {
                index: self.next,
                total: self.specs.len(),
                name: spec_name.clone(),
            });
            self.next += 1;
            let shared = self.tensor(&spec_name, &shape, role, progress)?;
            if name == Some(spec_name.as_str()) {
                return Ok(Some(shared));
            }
        }
        match name {
            Some(n) => Err(Error::InvalidInput(format!(
                "tensor {n} is not in the model"
            ))),
            None => Ok(None),
        }
    }

    /// Processes one tensor; returns its shared delta (zeros when there is none).
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        role: TensorRole,
        progress: &mut dyn FnMut(&Event),
    ) -> Result<Vec<f32>> {
        let base = self.base.load_expected(name, shape)?;
        let mut deltas = Vec::with_capacity(self.skills.len());
        for s in self.skills {
            let tuned = s.checkpoint.load_expected(name, shape)?;
            deltas.push(
                tuned
                    .data
                    .iter()
                    .zip(&base.data)
                    .map(|(t, b)| t - b)
                    .collect::<Vec<f32>>(),
            );
        }
        let linear = match role {
            TensorRole::Linear(l, kind) if self.opts.kinds.contains(&kind) => Some((l, kind)),
            _ => None,
        };
        let shared = match linear {
            Some((l, kind)) => self.linear(l, kind, shape, &deltas, progress)?,
            None => self.dense(name, shape, &deltas)?,
        };
        let theta: Vec<u8> = base
            .data
            .iter()
            .zip(&shared)
            .flat_map(|(b, s)| (b + s).to_le_bytes())
            .collect();
        self.hasher.add(name, "F32", shape, &theta)?;
        Ok(shared)
    }

    fn merge_config(&self) -> MergeConfig {
        use skillzip_core::merge::{MergeMethod, ModelParams};
        self.opts.merge.clone().unwrap_or_else(|| {
            let k = self.skills.len() as f64;
            MergeConfig::new(
                MergeMethod::TaskArithmetic,
                vec![ModelParams::new(1.0 / k); self.skills.len()],
            )
        })
    }

    /// The shared delta as `backbone_delta.safetensors` stores it (rounded to
    /// `backbone_dtype`) and the residuals against it, so the backbone hash, the compressed
    /// residuals and the held-out fidelity all refer to the backbone the bundle really holds.
    fn stored_shared(
        &self,
        mut shared: Vec<f32>,
        deltas: &[Vec<f32>],
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        match self.opts.backbone_dtype {
            DenseDtype::F32 => {}
            DenseDtype::F16 => shared
                .iter_mut()
                .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            DenseDtype::BF16 => shared
                .iter_mut()
                .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        }
        let residuals = deltas
            .iter()
            .map(|d| d.iter().zip(&shared).map(|(d, s)| d - s).collect())
            .collect();
        (shared, residuals)
    }

    fn dense(&mut self, name: &str, shape: &[usize], deltas: &[Vec<f32>]) -> Result<Vec<f32>> {
        let n = shape.iter().product::<usize>();
        let nonzero: Vec<bool> = deltas.iter().map(|d| d.iter().any(|v| *v != 0.0)).collect();
        if !nonzero.contains(&true) {
            return Ok(vec![0.0; n]);
        }
        match self.opts.dense {
            DensePolicy::Skillpack(dtype) => {
                for (k, d) in deltas.iter().enumerate() {
                    if !nonzero[k] {
                        continue;
                    }
                    let t = DenseTensor::new(shape.to_vec(), d.clone(), dtype)?;
                    self.report.dense.push((
                        self.skills[k].name.to_string(),
                        name.to_string(),
                        t.storage_bytes(),
                    ));
                    self.packs[k].dense.insert(name.to_string(), t);
                }
                Ok(vec![0.0; n])
            }
            DensePolicy::Backbone => {
                let cfg = self.merge_config();
                let (shared, _) =
                    extract_shared(deltas, &cfg, &MaskSource::Seeded(self.opts.merge_seed))?;
                let (shared, residuals) = self.stored_shared(shared, deltas);
                for (k, r) in residuals.iter().enumerate() {
                    let norm = frobenius(&deltas[k]);
                    // A skill that did not change the tensor still gets the merged delta:
                    // relative to its zero delta that residual is infinite, not zero.
                    let rel = match (frobenius(r), norm) {
                        (0.0, _) => 0.0,
                        (_, 0.0) => f64::INFINITY,
                        (r, n) => r / n,
                    };
                    self.report.dropped.push((
                        self.skills[k].name.to_string(),
                        name.to_string(),
                        rel,
                    ));
                }
                Ok(shared)
            }
        }
    }

    fn linear(
        &mut self,
        l: usize,
        kind: LinearKind,
        shape: &[usize],
        deltas: &[Vec<f32>],
        progress: &mut dyn FnMut(&Event),
    ) -> Result<Vec<f32>> {
        let (out, inp) = (shape[0], shape[1]);
        let (shared, residuals) = match &self.opts.merge {
            Some(cfg) => {
                let (shared, _) =
                    extract_shared(deltas, cfg, &MaskSource::Seeded(self.opts.merge_seed))?;
                self.stored_shared(shared, deltas)
            }
            None => (vec![0.0; out * inp], deltas.to_vec()),
        };
        let shared_mat = paper_layout(&shared, out, inp);
        let module = kind.module_name(l);
        for (k, skill) in self.skills.iter().enumerate() {
            let start = Instant::now();
            let stats = |split| {
                skill
                    .calibration
                    .site(l, kind, split)?
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "skill {}: calibration has no {} rows for {module}",
                            skill.name,
                            split.name()
                        ))
                    })
                    .and_then(|s| {
                        if s.rows.ncols() == inp && s.rows.nrows() > 0 {
                            Ok(s)
                        } else {
                            Err(Error::InvalidInput(format!(
                                "skill {}: calibration rows for {module} are {}×{}, expected n×{inp}",
                                skill.name,
                                s.rows.nrows(),
                                s.rows.ncols()
                            )))
                        }
                    })
            };
            let (calib, select, heldout) = (
                stats(Split::Calibration)?,
                stats(Split::Selection)?,
                stats(Split::HeldOut)?,
            );
            let residual = paper_layout(&residuals[k], out, inp);
            let mut cfg = self.opts.layer.clone();
            if let Some(bits) = self.opts.bits_by_kind.get(&kind) {
                cfg.bits = *bits;
            }
            let max_rank = inp.min(out);
            cfg.rank = match self.opts.policy {
                RankPolicy::Fixed(r) => r.clamp(1, max_rank),
                RankPolicy::Energy(f) => energy_rank(residual.as_ref(), f)?.clamp(1, max_rank),
                RankPolicy::Budget { .. } => {
                    let share = self.budget_per_param.unwrap_or(0.0) * (inp * out) as f64;
                    cfg.rank_for_bytes(inp, out, share as usize)
                }
            };
            let data = CalibrationData {
                calibration: calib.rows.as_ref(),
                selection: select.rows.as_ref(),
            };
            let packed = compress(residual.as_ref(), &data, &cfg)?;
            // Held-out fidelity against the original delta, the shared part applied exactly.
            let original = paper_layout(&deltas[k], out, inp);
            let x = heldout.rows.as_ref();
            let reference = x * &original;
            let estimate = x * &shared_mat + apply_batched(&packed.layer, x)?;
            let rel_output_error = relative_error(reference.as_ref(), estimate.as_ref());
            let approx = &shared_mat + packed.layer.effective_weight();
            let rel_weight_error = relative_error(original.as_ref(), approx.as_ref());
            let bytes = packed.layer.storage_bytes();
            let record = LayerRecord {
                module: module.clone(),
                skill: skill.name.to_string(),
                rank: packed.layer.rank(),
                bytes,
                alpha: packed.alpha,
                rel_output_error,
                rel_weight_error,
                heldout_rows: x.nrows(),
                seconds: start.elapsed().as_secs_f64(),
            };
            progress(&Event::Layer(record.clone()));
            self.packs[k].layers.insert(
                module.clone(),
                LayerEntry {
                    layer: packed.layer,
                    report: Some(LayerReport {
                        alpha: packed.alpha,
                        rel_output_error: Some(rel_output_error),
                        rel_weight_error: Some(rel_weight_error),
                        bytes: Some(bytes as u64),
                    }),
                },
            );
            self.report.layers.push(record);
        }
        Ok(shared)
    }
}

/// Compresses every skill's delta against `base` into a bundle directory `out` (created if
/// missing): `backbone_delta.safetensors` (when merging or [`DensePolicy::Backbone`] is on),
/// one `<skill>.skillpack.safetensors` per skill, and `manifest.json` last. Every file is
/// written atomically; the manifest is renamed into place only after everything it lists.
pub fn compress_model(
    base: &Checkpoint,
    skills: &[SkillSource<'_>],
    opts: &ModelCompressOptions,
    out: &Path,
    progress: &mut dyn FnMut(&Event),
) -> Result<CompressReport> {
    if skills.is_empty() {
        return Err(Error::InvalidInput(
            "no fine-tuned models to compress".into(),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for s in skills {
        check_skill_name(s.name)?;
        if !names.insert(s.name) {
            return Err(Error::InvalidInput(format!(
                "skill {} is named twice",
                s.name
            )));
        }
        check_same_architecture(base, s.checkpoint)?;
    }
    if let Some(m) = &opts.merge
        && m.models.len() != skills.len()
    {
        return Err(Error::InvalidInput(format!(
            "the merge configuration has {} models for {} skills",
            m.models.len(),
            skills.len()
        )));
    }
    if let RankPolicy::Energy(f) = opts.policy
        && !(f > 0.0 && f <= 1.0)
    {
        return Err(Error::InvalidInput(format!(
            "energy fraction {f} is outside (0, 1]"
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config = base.config();
    let specs = tensor_specs(config);
    let linear_params: usize = specs
        .iter()
        .filter_map(|(_, shape, role)| match role {
            TensorRole::Linear(_, kind) if opts.kinds.contains(kind) => Some(shape[0] * shape[1]),
            _ => None,
        })
        .sum();
    let budget_per_param = match opts.policy {
        RankPolicy::Budget { bytes } if linear_params > 0 => {
            Some(bytes as f64 / linear_params as f64)
        }
        _ => None,
    };
    let config_json = serde_json::json!({
        "method": opts.layer.bits.label(),
        "method_by_kind": opts
            .bits_by_kind
            .iter()
            .map(|(k, b)| (k.leaf().to_string(), serde_json::Value::from(b.label())))
            .collect::<serde_json::Map<_, _>>(),
        "smooth": opts.layer.smooth,
        "rotate": opts.layer.rotate,
        "rank_policy": format!("{:?}", opts.policy),
        "merge": opts.merge.as_ref().map(|m| format!("{m:?}")),
        "dense_policy": format!("{:?}", opts.dense),
        "seed": opts.layer.seed,
    });
    let meta_config = config_json.as_object().cloned().unwrap_or_default();
    let mut walker = Walker {
        base,
        skills,
        opts,
        next: 0,
        packs: skills
            .iter()
            .map(|s| {
                Skillpack::new(SkillpackMeta {
                    skill: s.name.to_string(),
                    base: BaseModel {
                        architecture: "llama".into(),
                        backbone_hash: String::new(),
                    },
                    config: meta_config.clone(),
                })
            })
            .collect(),
        report: CompressReport::default(),
        hasher: BackboneHasher::default(),
        budget_per_param,
        specs,
    };
    let backbone_list: Vec<(String, Vec<usize>)> = walker
        .specs
        .iter()
        .filter(|(_, _, role)| match role {
            TensorRole::Linear(_, kind) if opts.kinds.contains(kind) => opts.merge.is_some(),
            _ => opts.dense == DensePolicy::Backbone,
        })
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    if !backbone_list.is_empty() {
        let path = out.join(BACKBONE_DELTA_FILE);
        let bytes = write_streamed(
            &path,
            &backbone_list,
            opts.backbone_dtype,
            &[("skillzip", "backbone_delta")],
            &mut |name, _| {
                walker
                    .advance(Some(name), progress)?
                    .ok_or_else(|| Error::InvalidInput(format!("tensor {name} was not produced")))
            },
        )?;
        walker.report.backbone_delta_bytes = Some(bytes);
    }
    walker.advance(None, progress)?;
    let backbone_hash = walker.hasher.finish();
    let mut manifest = Manifest::new(BundleBase {
        architecture: "llama".into(),
        backbone_hash: backbone_hash.clone(),
        source: base.label().to_string(),
    });
    if walker.report.backbone_delta_bytes.is_some() {
        manifest.backbone_delta = Some(file_ref(out, BACKBONE_DELTA_FILE)?);
    }
    let mut report = std::mem::take(&mut walker.report);
    for mut pack in std::mem::take(&mut walker.packs) {
        pack.meta.base.backbone_hash = backbone_hash.clone();
        let file = skillpack_file(&pack.meta.skill);
        let bytes = write_skillpack(out.join(&file), &pack)?;
        let r = file_ref(out, &file)?;
        manifest.skillpacks.push(SkillpackRef {
            name: pack.meta.skill.clone(),
            file: file.clone(),
            sha256: r.sha256,
            bytes: r.bytes,
        });
        report
            .skillpacks
            .push((pack.meta.skill.clone(), file, bytes));
    }
    write_manifest(out, &manifest)?;
    report.backbone_hash = backbone_hash;
    Ok(report)
}

/// Adds a bundle's backbone delta to base parameters (HF names, `[out, in]`), giving
/// `θ_0 + Δ_shared`; tensors the delta does not list are unchanged.
pub fn add_backbone_delta(
    params: &mut BTreeMap<String, Vec<f32>>,
    delta: &BTreeMap<String, DenseTensor>,
) -> Result<()> {
    for (name, d) in delta {
        let p = params.get_mut(name).ok_or_else(|| Error::MissingTensor {
            file: BACKBONE_DELTA_FILE.into(),
            tensor: name.clone(),
        })?;
        if p.len() != d.data.len() {
            return Err(Error::TensorShape {
                file: BACKBONE_DELTA_FILE.into(),
                tensor: name.clone(),
                expected: vec![p.len()],
                got: d.shape.clone(),
            });
        }
        for (x, y) in p.iter_mut().zip(&d.data) {
            *x += y;
        }
    }
    Ok(())
}
