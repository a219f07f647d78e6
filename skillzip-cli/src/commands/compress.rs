//! `skillzip compress`: base + named fine-tunes + calibration → bundle, with a per-layer
//! fidelity report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use skillzip_core::compress::{BitConfig, CompressConfig, WeightQuantizer};
use skillzip_core::merge::{MergeConfig, MergeMethod, ModelParams};
use skillzip_format::dense::DenseDtype;
use skillzip_lm::calibrate::{CalibrationFile, CalibrationSource};
use skillzip_lm::checkpoint::LinearKind;
use skillzip_lm::compress::{
    CompressReport, DensePolicy, Event, ModelCompressOptions, RankPolicy, SkillSource,
    compress_model,
};

use crate::inputs::{CliResult, bar, name_value, open_checkpoint};

/// Merge options shared by `compress` (the shared component) and `merge`.
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// Merge method (mergekit name): task_arithmetic, ties, dare_linear, dare_ties,
    /// breadcrumbs, breadcrumbs_ties, della, della_linear.
    #[arg(long = "merge", id = "merge", value_name = "METHOD")]
    pub merge_method: Option<String>,
    /// Per-model weights, comma-separated (default 1/K each).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<f64>,
    /// Fraction of each task vector kept by sparsifying methods.
    #[arg(long, default_value_t = 1.0)]
    pub density: f64,
    /// Final scale λ of the merged delta.
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// Seed of random masks (DARE, DELLA).
    #[arg(long, default_value_t = 0)]
    pub merge_seed: u64,
}

impl MergeArgs {
    /// The merge configuration for `k` models, or `None` without `--merge`.
    pub fn config(&self, k: usize) -> CliResult<Option<MergeConfig>> {
        let Some(name) = &self.merge_method else {
            return Ok(None);
        };
        let method = MergeMethod::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| format!("--merge {name}: unknown method"))?;
        let weights = if self.weights.is_empty() {
            vec![1.0 / k as f64; k]
        } else if self.weights.len() == k {
            self.weights.clone()
        } else {
            return Err(format!(
                "--weights has {} values for {k} models",
                self.weights.len()
            ));
        };
        let models = weights
            .into_iter()
            .map(|w| ModelParams::new(w).with_density(self.density))
            .collect();
        Ok(Some(
            MergeConfig::new(method, models).with_lambda(self.lambda),
        ))
    }
}

/// Arguments of `skillzip compress`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base checkpoint.
    #[arg(long)]
    pub base: PathBuf,
    /// A fine-tuned checkpoint: NAME=PATH (repeat per skill).
    #[arg(long = "tuned", value_parser = name_value, required = true)]
    pub tuned: Vec<(String, String)>,
    /// Calibration statistics from `skillzip calibrate`: NAME=FILE (one per skill).
    #[arg(long = "calibration", value_parser = name_value, required = true)]
    pub calibration: Vec<(String, String)>,
    /// The bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Quantization grids: X8A8B8, X8A4B4, X4A4B8 or X4A4B4.
    #[arg(long, default_value = "X8A8B8")]
    pub method: String,
    /// Grids for one kind of linear, overriding --method: LEAF=METHOD, e.g.
    /// `down_proj=X8A4B4` (repeatable; leaves: q_proj k_proj v_proj o_proj gate_proj up_proj
    /// down_proj).
    #[arg(long = "method-for", value_parser = name_value)]
    pub method_for: Vec<(String, String)>,
    /// Storage type of the shared backbone delta: F32 (exact), BF16 or F16.
    #[arg(long, default_value = "F32")]
    pub backbone_dtype: String,
    /// Fixed rank for every layer.
    #[arg(long, conflicts_with_all = ["energy", "budget_bytes"])]
    pub rank: Option<usize>,
    /// Rank keeping this fraction of each residual's energy.
    #[arg(long, conflicts_with = "budget_bytes")]
    pub energy: Option<f64>,
    /// Byte budget per skillpack for the linear layers.
    #[arg(long)]
    pub budget_bytes: Option<u64>,
    /// Turn smoothing off.
    #[arg(long)]
    pub no_smooth: bool,
    /// Turn rotation off.
    #[arg(long)]
    pub no_rotate: bool,
    /// Rotation candidates.
    #[arg(long, default_value_t = 10)]
    pub rotations: usize,
    /// Round-to-nearest weights instead of GPTQ.
    #[arg(long)]
    pub rtn: bool,
    /// Non-linear parameters: `skillpack` (dense fp16 in each skillpack) or `backbone`.
    #[arg(long, default_value = "skillpack")]
    pub dense: String,
    /// Seed of rotations and randomized SVDs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub merge: MergeArgs,
    /// Write the per-layer fidelity table here (markdown) besides printing a summary.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

fn bits(method: &str) -> CliResult<BitConfig> {
    BitConfig::from_label(method)
        .ok_or_else(|| format!("--method {method}: expected X8A8B8, X8A4B4, X4A4B8 or X4A4B4"))
}

/// Runs the command.
pub fn run(a: Args, quiet: bool) -> CliResult<()> {
    let start = Instant::now();
    let base = open_checkpoint(&a.base)?;
    let tuned = a
        .tuned
        .iter()
        .map(|(n, p)| Ok((n.clone(), open_checkpoint(p.as_ref())?)))
        .collect::<CliResult<Vec<_>>>()?;
    // Memory-mapped and read one site at a time, so a large model's statistics never sit in
    // memory at once.
    let calibration: BTreeMap<String, CalibrationFile> = a
        .calibration
        .iter()
        .map(|(n, p)| {
            let c = CalibrationFile::open(p.as_ref()).map_err(|e| e.to_string())?;
            if c.skill() != n {
                return Err(format!(
                    "{p}: holds statistics of skill {}, not {n}",
                    c.skill()
                ));
            }
            Ok((n.clone(), c))
        })
        .collect::<CliResult<_>>()?;
    let skills = tuned
        .iter()
        .map(|(name, ckpt)| {
            let calibration = calibration
                .get(name)
                .ok_or_else(|| format!("skill {name}: no --calibration {name}=FILE"))?;
            Ok(SkillSource {
                name,
                checkpoint: ckpt,
                calibration,
            })
        })
        .collect::<CliResult<Vec<_>>>()?;
    let mut layer = CompressConfig::skillzip(1);
    layer.bits = bits(&a.method)?;
    layer.smooth = !a.no_smooth;
    layer.rotate = !a.no_rotate;
    layer.rotation_candidates = a.rotations;
    layer.seed = a.seed;
    if a.rtn {
        layer.weights = WeightQuantizer::Rtn;
    }
    let policy = match (a.rank, a.energy, a.budget_bytes) {
        (Some(r), _, _) => RankPolicy::Fixed(r),
        (_, Some(e), _) => RankPolicy::Energy(e),
        (_, _, Some(b)) => RankPolicy::Budget { bytes: b },
        _ => RankPolicy::Fixed(32),
    };
    let mut opts = ModelCompressOptions::new(layer, policy);
    opts.merge = a.merge.config(skills.len())?;
    opts.merge_seed = a.merge.merge_seed;
    opts.dense = match a.dense.as_str() {
        "skillpack" => DensePolicy::Skillpack(DenseDtype::F16),
        "backbone" => DensePolicy::Backbone,
        other => return Err(format!("--dense {other}: expected skillpack or backbone")),
    };
    for (leaf, method) in &a.method_for {
        let kind = LinearKind::ALL
            .into_iter()
            .find(|k| k.leaf() == leaf)
            .ok_or_else(|| format!("--method-for {leaf}: not a linear leaf name"))?;
        opts.bits_by_kind.insert(kind, bits(method)?);
    }
    opts.backbone_dtype = DenseDtype::from_name(&a.backbone_dtype).ok_or_else(|| {
        format!(
            "--backbone-dtype {}: expected F32, BF16 or F16",
            a.backbone_dtype
        )
    })?;
    eprintln!(
        "compressing {} skill(s) against {} with {} ({:?}, merge {})",
        skills.len(),
        base.label(),
        a.method,
        opts.policy,
        a.merge.merge_method.as_deref().unwrap_or("off")
    );
    let pb = bar(0, quiet);
    let report = compress_model(&base, &skills, &opts, &a.out, &mut |ev| match ev {
        Event::Tensor { index, total, name } => {
            pb.set_length(*total as u64);
            pb.set_position(*index as u64);
            pb.set_message(name.clone());
        }
        Event::Layer(r) => {
            if quiet {
                eprintln!(
                    "  {} [{}] rank {} err {:.4}",
                    r.module, r.skill, r.rank, r.rel_output_error
                );
            }
        }
    })
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    print_summary(&report, seconds);
    if let Some(path) = &a.report {
        write_report(path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("per-layer report: {}", path.display());
    }
    Ok(())
}

fn print_summary(report: &CompressReport, seconds: f64) {
    println!("| skill | layers | bytes | mean rel. output error | max | mean rank |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (skill, file, bytes) in &report.skillpacks {
        let rows: Vec<_> = report.layers.iter().filter(|l| &l.skill == skill).collect();
        let n = rows.len().max(1) as f64;
        let mean = rows.iter().map(|l| l.rel_output_error).sum::<f64>() / n;
        let max = rows.iter().map(|l| l.rel_output_error).fold(0.0, f64::max);
        let rank = rows.iter().map(|l| l.rank as f64).sum::<f64>() / n;
        println!(
            "| {skill} ({file}) | {} | {bytes} | {mean:.4} | {max:.4} | {rank:.1} |",
            rows.len()
        );
    }
    if let Some(b) = report.backbone_delta_bytes {
        println!("backbone delta: {b} bytes");
    }
    for (skill, tensor, rel) in &report.dropped {
        println!(
            "merged into the backbone, residual dropped: {skill} {tensor} (‖r‖/‖Δ‖ = {rel:.4})"
        );
    }
    println!(
        "time {seconds:.1} s, peak RSS {}",
        skillzip_harness::weave::peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
}

fn write_report(path: &std::path::Path, report: &CompressReport) -> std::io::Result<()> {
    let mut out = Vec::new();
    writeln!(
        out,
        "| layer | skill | rank | bytes | α | held-out rel. output error | rel. weight error | held-out rows | seconds |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for l in &report.layers {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {} | {:.2} |",
            l.module,
            l.skill,
            l.rank,
            l.bytes,
            l.alpha.map_or("-".into(), |a| a.to_string()),
            l.rel_output_error,
            l.rel_weight_error,
            l.heldout_rows,
            l.seconds
        )?;
    }
    std::fs::write(path, out)
}
