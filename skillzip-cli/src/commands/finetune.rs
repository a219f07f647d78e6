//! `skillzip finetune`: a short SFT of the linear layers on a built-in task, saved as a
//! safetensors checkpoint (real deltas for trying the pipeline before the training harness's
//! LN-DPO deltas exist).

use std::path::PathBuf;
use std::time::Instant;

use skillzip_lm::finetune::{SftOptions, SftTask, eval_loss, finetune};
use skillzip_lm::save::{SaveOptions, save_checkpoint};
use skillzip_lm::skillpack::{load_params, model_from_params};

use crate::inputs::{CliResult, bar, open_checkpoint, tokenizer_for};

/// Arguments of `skillzip finetune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base checkpoint.
    #[arg(long)]
    pub base: PathBuf,
    /// The task: `arith` or `caps`.
    #[arg(long)]
    pub task: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Seed of the training examples and their order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the command.
pub fn run(a: Args, quiet: bool) -> CliResult<()> {
    let start = Instant::now();
    let task = SftTask::parse(&a.task)
        .ok_or_else(|| format!("--task {}: expected arith or caps", a.task))?;
    let base = open_checkpoint(&a.base)?;
    let tok = tokenizer_for(&base, None)?;
    let config = base.config().clone();
    let params = load_params(&base).map_err(|e| e.to_string())?;
    let train = task.examples(256, a.seed);
    // Evaluation examples from another seed stream: never trained on.
    let held_out = task.examples(16, a.seed ^ 0x5eed_0ff5);
    let before = {
        let m = model_from_params(&config, params.clone()).map_err(|e| e.to_string())?;
        eval_loss(&m, &tok, &held_out).map_err(|e| e.to_string())?
    };
    let pb = bar(a.steps as u64, quiet);
    let opts = SftOptions {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
    };
    let (tuned, losses) = finetune(&config, params, &tok, &train, opts, &mut |step, loss| {
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss:.3}"));
        if quiet {
            eprintln!("  step {step}: loss {loss:.4}");
        }
    })
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let model = model_from_params(&config, tuned.clone()).map_err(|e| e.to_string())?;
    let after = eval_loss(&model, &tok, &held_out).map_err(|e| e.to_string())?;
    drop(model);
    let task_name = a.task.clone();
    let meta = [("skillzip", "sft"), ("task", task_name.as_str())];
    save_checkpoint(&a.out, &config, SaveOptions::default(), &meta, |name, _| {
        tuned
            .get(name)
            .cloned()
            .ok_or_else(|| skillzip_lm::Error::MissingTensor {
                file: "fine-tune".into(),
                tensor: name.to_string(),
            })
    })
    .map_err(|e| e.to_string())?;
    eprintln!(
        "fine-tuned {} steps × {} examples: train loss {:.3} → {:.3}; held-out response loss {before:.3} → {after:.3}; wrote {} in {:.1} s",
        a.steps,
        a.batch,
        losses.first().copied().unwrap_or(f32::NAN),
        losses.last().copied().unwrap_or(f32::NAN),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
