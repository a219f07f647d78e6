//! `skillzip calibrate`: the base model over one skill's prompts → calibration statistics.

use std::path::PathBuf;
use std::time::Instant;

use skillzip_lm::calibrate::{CalibrationOptions, calibrate};

use crate::inputs::{CliResult, PromptSource, bar, open_checkpoint, tokenize, tokenizer_for};

/// Arguments of `skillzip calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base checkpoint (GGUF file, safetensors file or directory).
    #[arg(long)]
    pub base: PathBuf,
    /// The skill's name.
    #[arg(long)]
    pub skill: String,
    #[command(flatten)]
    pub prompts: PromptSource,
    /// Where to write the statistics (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Reservoir rows per linear input for the calibration split.
    #[arg(long, default_value_t = 512)]
    pub calibration_rows: usize,
    /// Reservoir rows per linear input for the selection and held-out splits.
    #[arg(long, default_value_t = 256)]
    pub eval_rows: usize,
    /// Seed of the reservoirs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs the command.
pub fn run(a: Args, quiet: bool) -> CliResult<()> {
    let start = Instant::now();
    let base = open_checkpoint(&a.base)?;
    let tok = tokenizer_for(&base, None)?;
    let ids = tokenize(&tok, &a.prompts.load()?)?;
    let tokens: usize = ids.iter().map(Vec::len).sum();
    eprintln!(
        "calibrating skill {} on {} prompts ({tokens} tokens), block by block",
        a.skill,
        ids.len()
    );
    let pb = bar(base.config().num_hidden_layers as u64, quiet);
    let opts = CalibrationOptions {
        calibration_rows: a.calibration_rows,
        selection_rows: a.eval_rows,
        heldout_rows: a.eval_rows,
        seed: a.seed,
    };
    let stats = calibrate(&base, &a.skill, &ids, opts, &mut |done, _| {
        pb.set_position(done as u64)
    })
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let bytes = stats.save(&a.out).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} ({bytes} bytes, {} sites) in {:.1} s",
        a.out.display(),
        stats.sites.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
