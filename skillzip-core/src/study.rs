//! The built-in fidelity study: SkillZip, its ablations and every baseline side by side on the
//! deterministic synthetic case of [`crate::synth`] (DESIGN.md §4.7 metrics on held-out rows).
//! The `skillzip demo` command prints it; real deltas replace the synthetic case later.

use faer::{Mat, MatRef};

use crate::Result;
use crate::baselines::{BitDelta, DeltaCoMe, Factored};
use crate::compress::{
    BitConfig, CalibrationData, CompressConfig, ScaleMode, WeightQuantizer, compress_skills,
};
use crate::gptq::GptqConfig;
use crate::merge::{MaskSource, MergeConfig, MergeMethod, ModelParams};
use crate::metrics::{DeltaApprox, Fidelity, evaluate};
use crate::svd::SvdMethod;
use crate::synth::{ActivationModel, SkillDeltas, Splits};

/// The synthetic case: shapes, spectrum and activation structure.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyCase {
    /// Input channels `C_i`.
    pub c_in: usize,
    /// Output channels `C_o`.
    pub c_out: usize,
    /// Number of skills sharing a component.
    pub skills: usize,
    /// Power-law exponent of the singular values (`σ_i ∝ (i+1)^-decay`).
    pub decay: f64,
    /// Scale of the component all skills share, relative to each skill's own part.
    pub shared_weight: f64,
    /// Latent dimension of the correlated activations.
    pub latent: usize,
    /// Number of stable outlier channels.
    pub outliers: usize,
    /// Gain of the outlier channels.
    pub outlier_gain: f32,
    /// Rows in the calibration, selection and held-out splits.
    pub splits: (usize, usize, usize),
    /// Seed of everything.
    pub seed: u64,
}

impl StudyCase {
    /// The default built-in case: SmolLM2-135M `down_proj` shape (1536 → 576), three skills,
    /// `σ_i ∝ (i+1)^-0.5` (a quarter of the energy lies beyond rank 48 of 576), 16 outlier
    /// channels at ×50, 2048/256/512 rows.
    pub fn builtin() -> Self {
        Self {
            c_in: 1536,
            c_out: 576,
            skills: 3,
            decay: 0.5,
            shared_weight: 1.0,
            latent: 96,
            outliers: 16,
            outlier_gain: 50.0,
            splits: (2048, 256, 512),
            seed: 2026,
        }
    }

    /// A small case for tests (fast in debug builds).
    pub fn small() -> Self {
        Self {
            c_in: 256,
            c_out: 192,
            latent: 32,
            outliers: 4,
            splits: (512, 128, 128),
            ..Self::builtin()
        }
    }
}

/// One row of the study table (errors averaged over the skills).
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRow {
    /// Method and switches, e.g. `SkillZip X8A8B8 −rotate`.
    pub method: String,
    /// Rank where the method has one.
    pub rank: Option<usize>,
    /// Fidelity averaged over skills (bytes are per skill).
    pub fidelity: Fidelity,
}

/// A method applied on top of a shared component that lives in the backbone:
/// `Ŷ = X·Δ_shared + inner(X)`. Its bytes are those of `inner` (the shared component is merged into the
/// backbone once, for all skills).
struct WithShared<'a> {
    shared: MatRef<'a, f32>,
    inner: &'a dyn DeltaApprox,
}

impl DeltaApprox for WithShared<'_> {
    fn apply(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        Ok(x * self.shared + self.inner.apply(x)?)
    }
    fn weight(&self) -> Mat<f32> {
        self.shared + self.inner.weight()
    }
    fn storage_bytes(&self) -> usize {
        self.inner.storage_bytes()
    }
}

fn mean(rows: &[Fidelity]) -> Fidelity {
    let n = rows.len() as f64;
    Fidelity {
        rel_output_error: rows.iter().map(|f| f.rel_output_error).sum::<f64>() / n,
        rel_weight_error: rows.iter().map(|f| f.rel_weight_error).sum::<f64>() / n,
        bytes: rows[0].bytes,
        bits_per_param: rows[0].bits_per_param,
        compression_ratio: rows[0].compression_ratio,
    }
}

/// Runs the study; `progress` receives one line per method.
pub fn run(case: &StudyCase, progress: &mut dyn FnMut(&str)) -> Result<Vec<StudyRow>> {
    let (ci, co) = (case.c_in, case.c_out);
    let deltas = SkillDeltas::generate(
        ci,
        co,
        case.skills,
        case.decay,
        case.shared_weight,
        case.seed,
    )
    .deltas;
    let model = ActivationModel::new(
        ci,
        case.latent,
        case.outliers,
        case.outlier_gain,
        case.seed ^ 0xa5,
    );
    // One set of splits per skill, as each skill calibrates on its own prompts.
    let splits: Vec<Splits> = (0..case.skills)
        .map(|k| Splits::draw(&model, case.splits, case.seed.wrapping_add(100 + k as u64)))
        .collect();
    let merge_cfg = MergeConfig::new(
        MergeMethod::TaskArithmetic,
        vec![ModelParams::new(1.0 / case.skills as f64); case.skills],
    );
    let masks = MaskSource::Seeded(case.seed);
    let delta_refs: Vec<MatRef<'_, f32>> = deltas.iter().map(|d| d.as_ref()).collect();
    let data: Vec<CalibrationData<'_>> = splits
        .iter()
        .map(|s| CalibrationData {
            calibration: s.calibration.as_ref(),
            selection: s.selection.as_ref(),
        })
        .collect();
    let references: Vec<Mat<f32>> = (0..case.skills)
        .map(|k| &splits[k].heldout * &deltas[k])
        .collect();

    // Equal bytes: BitDelta's footprint sets the budget for the rank of the others.
    let bitdelta_bytes = (ci * co).div_ceil(8) + 4;
    let full = CompressConfig {
        seed: case.seed,
        ..CompressConfig::skillzip(1)
    };
    let rank = full.rank_for_bytes(ci, co, bitdelta_bytes);
    let mut rows = Vec::new();
    let mut push = |method: String,
                    rank: Option<usize>,
                    per_skill: Vec<Fidelity>,
                    progress: &mut dyn FnMut(&str)| {
        let f = mean(&per_skill);
        progress(&format!(
            "{method:<34} rel. output error {:.4}",
            f.rel_output_error
        ));
        rows.push(StudyRow {
            method,
            rank,
            fidelity: f,
        });
    };

    let skillzip_variants: Vec<(String, CompressConfig, bool)> = {
        let at = |rank: usize| CompressConfig {
            rank,
            ..full.clone()
        };
        let base = at(rank);
        let int4_rank = CompressConfig {
            bits: BitConfig::X8A4B4,
            ..full.clone()
        }
        .rank_for_bytes(ci, co, bitdelta_bytes);
        vec![
            ("SkillZip X8A8B8".into(), base.clone(), true),
            (
                "SkillZip X8A8B8 -rotate".into(),
                CompressConfig {
                    rotate: false,
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X8A8B8 -smooth".into(),
                CompressConfig {
                    smooth: false,
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X8A8B8 -smooth -rotate".into(),
                CompressConfig {
                    smooth: false,
                    rotate: false,
                    ..base.clone()
                },
                true,
            ),
            ("SkillZip X8A8B8 -merge".into(), base.clone(), false),
            (
                "SkillZip X8A8B8 RTN".into(),
                CompressConfig {
                    weights: WeightQuantizer::Rtn,
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X8A8B8 static trunc.".into(),
                CompressConfig {
                    truncation: ScaleMode::Static { percentile: 99.9 },
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X8A4B4".into(),
                CompressConfig {
                    bits: BitConfig::X8A4B4,
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X4A4B8".into(),
                CompressConfig {
                    bits: BitConfig::X4A4B8,
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X4A4B4".into(),
                CompressConfig {
                    bits: BitConfig::X4A4B4,
                    ..base.clone()
                },
                true,
            ),
            (
                "SkillZip X8A4B4 (equal bytes)".into(),
                CompressConfig {
                    bits: BitConfig::X8A4B4,
                    rank: int4_rank,
                    ..full.clone()
                },
                true,
            ),
        ]
    };
    for (name, cfg, merged) in skillzip_variants {
        let merge = merged.then_some((&merge_cfg, &masks));
        let packed = compress_skills(&delta_refs, &data, merge, &cfg)?;
        let per_skill = packed
            .skills
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let (heldout, reference) =
                    (splits[k].heldout.as_ref(), Some(references[k].as_ref()));
                match &packed.shared {
                    Some(shared) => evaluate(
                        &WithShared {
                            shared: shared.as_ref(),
                            inner: &c.layer,
                        },
                        deltas[k].as_ref(),
                        heldout,
                        reference,
                    ),
                    None => evaluate(&c.layer, deltas[k].as_ref(), heldout, reference),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        push(name, Some(cfg.rank), per_skill, progress);
    }

    // Baselines compress each full delta, as their papers do.
    let svd = SvdMethod::Auto { seed: case.seed };
    let eval_each = |fit: &dyn Fn(usize) -> Result<Box<dyn DeltaApprox>>| -> Result<Vec<Fidelity>> {
        (0..case.skills)
            .map(|k| {
                evaluate(
                    fit(k)?.as_ref(),
                    deltas[k].as_ref(),
                    splits[k].heldout.as_ref(),
                    Some(references[k].as_ref()),
                )
            })
            .collect()
    };
    push(
        "BitDelta".into(),
        None,
        eval_each(&|k| Ok(Box::new(BitDelta::fit(deltas[k].as_ref(), None)?)))?,
        progress,
    );
    push(
        "BitDelta (scale distilled)".into(),
        None,
        eval_each(&|k| {
            Ok(Box::new(BitDelta::fit(
                deltas[k].as_ref(),
                Some(splits[k].calibration.as_ref()),
            )?))
        })?,
        progress,
    );
    let svd_rank = (bitdelta_bytes / (2 * (ci + co))).max(1);
    push(
        "SVD-16 X16A16B16 (equal bytes)".into(),
        Some(svd_rank),
        eval_each(&|k| {
            Ok(Box::new(Factored::svd16(
                deltas[k].as_ref(),
                svd_rank,
                svd,
            )?))
        })?,
        progress,
    );
    push(
        "SVD-16 X16A16B16 (SkillZip's rank)".into(),
        Some(rank),
        eval_each(&|k| Ok(Box::new(Factored::svd16(deltas[k].as_ref(), rank, svd)?)))?,
        progress,
    );
    push(
        "ASVD fp16 (equal bytes)".into(),
        Some(svd_rank),
        eval_each(&|k| {
            Ok(Box::new(Factored::asvd(
                deltas[k].as_ref(),
                splits[k].calibration.as_ref(),
                svd_rank,
                0.5,
                svd,
            )?))
        })?,
        progress,
    );
    let come_rank = (1..=ci.min(co))
        .take_while(|&r| delta_come_bytes(ci, co, r) <= bitdelta_bytes)
        .last()
        .unwrap_or(1);
    push(
        "Delta-CoMe 8/3/2-bit (equal bytes)".into(),
        Some(come_rank),
        eval_each(&|k| {
            Ok(Box::new(DeltaCoMe::fit(
                deltas[k].as_ref(),
                splits[k].calibration.as_ref(),
                &DeltaCoMe::default_groups(come_rank),
                &GptqConfig::default(),
                svd,
            )?))
        })?,
        progress,
    );
    Ok(rows)
}

/// Bytes of [`DeltaCoMe`] with the default groups at total `rank` (codes bit-packed per group,
/// f32 scales per output channel of each factor).
pub fn delta_come_bytes(c_in: usize, c_out: usize, rank: usize) -> usize {
    DeltaCoMe::default_groups(rank)
        .iter()
        .map(|g| {
            let b = g.bits.bits() as usize;
            let packed = |n: usize| {
                if b == 4 {
                    n.div_ceil(2)
                } else {
                    (n * b).div_ceil(8)
                }
            };
            packed(g.rank * c_in) + 4 * g.rank + packed(c_out * g.rank) + 4 * c_out
        })
        .sum()
}

/// The paper's orderings checked on a study table: `(statement, holds)`.
pub fn orderings(rows: &[StudyRow]) -> Vec<(String, bool)> {
    let err = |name: &str| {
        rows.iter()
            .find(|r| r.method == name)
            .map(|r| r.fidelity.rel_output_error)
    };
    let mut out = Vec::new();
    let mut check = |a: &str, b: &str| {
        if let (Some(x), Some(y)) = (err(a), err(b)) {
            out.push((format!("{a} ({x:.4}) < {b} ({y:.4})"), x < y));
        }
    };
    check("SkillZip X8A8B8", "SkillZip X8A8B8 -rotate");
    check("SkillZip X8A8B8 -rotate", "SkillZip X8A8B8 -smooth -rotate");
    check("SkillZip X8A8B8", "SkillZip X8A8B8 -smooth");
    check("SkillZip X8A8B8", "SkillZip X4A4B4");
    check("SkillZip X8A8B8", "BitDelta");
    check("SkillZip X8A8B8", "SVD-16 X16A16B16 (equal bytes)");
    check("SkillZip X8A8B8", "SkillZip X8A8B8 -merge");
    out
}
