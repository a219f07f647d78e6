//! `skillzip merge`: mergekit-style merge of fine-tuned checkpoints into a new checkpoint,
//! streamed one tensor at a time.

use std::path::PathBuf;

use skillzip_core::merge::{MaskSource, merge};
use skillzip_lm::delta::check_same_architecture;
use skillzip_lm::save::{DenseDtype, SaveOptions, save_checkpoint};

use super::compress::MergeArgs;
use crate::inputs::{CliResult, bar, open_checkpoint};

/// Arguments of `skillzip merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base checkpoint.
    #[arg(long)]
    pub base: PathBuf,
    /// Fine-tuned checkpoints (repeat).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    #[command(flatten)]
    pub merge: MergeArgs,
    /// Output checkpoint directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage type: F32, F16 or BF16.
    #[arg(long, default_value = "F32")]
    pub dtype: String,
    /// Shard size in bytes (default: one file).
    #[arg(long)]
    pub max_shard_bytes: Option<u64>,
}

/// Runs the command.
pub fn run(a: Args, quiet: bool) -> CliResult<()> {
    let base = open_checkpoint(&a.base)?;
    let models = a
        .models
        .iter()
        .map(|p| open_checkpoint(p))
        .collect::<CliResult<Vec<_>>>()?;
    for m in &models {
        check_same_architecture(&base, m).map_err(|e| e.to_string())?;
    }
    let mut args = a.merge.clone();
    if args.merge_method.is_none() {
        args.merge_method = Some("task_arithmetic".into());
    }
    let config = args.config(models.len())?.ok_or("no merge method")?;
    let dtype = DenseDtype::from_name(&a.dtype)
        .ok_or_else(|| format!("--dtype {}: expected F32, F16 or BF16", a.dtype))?;
    let total = skillzip_lm::checkpoint::tensor_specs(base.config()).len();
    let pb = bar(total as u64, quiet);
    // Each tensor gets its own mask stream, so the result does not depend on tensor order.
    let mut index = 0u64;
    let method = args.merge_method.clone().unwrap_or_default();
    let meta = [("skillzip", "merge"), ("merge_method", method.as_str())];
    let report = save_checkpoint(
        &a.out,
        base.config(),
        SaveOptions {
            dtype,
            max_shard_bytes: a.max_shard_bytes,
        },
        &meta,
        |name, shape| {
            let b = base.load_expected(name, shape)?;
            let deltas = models
                .iter()
                .map(|m| {
                    let t = m.load_expected(name, shape)?;
                    Ok(t.data
                        .iter()
                        .zip(&b.data)
                        .map(|(x, y)| x - y)
                        .collect::<Vec<f32>>())
                })
                .collect::<skillzip_lm::Result<Vec<_>>>()?;
            let merged = merge(
                &deltas,
                &config,
                &MaskSource::Seeded(args.merge_seed ^ index),
            )?;
            index += 1;
            pb.inc(1);
            pb.set_message(name.to_string());
            Ok(b.data.iter().zip(&merged).map(|(x, d)| x + d).collect())
        },
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    println!(
        "merged {} models with {method} into {} ({} file(s), {} bytes)",
        models.len(),
        a.out.display(),
        report.files.len(),
        report.bytes
    );
    Ok(())
}
