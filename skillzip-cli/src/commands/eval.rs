//! `skillzip eval`: how close backbone + skillpack comes to the fine-tuned model, on the
//! next-token distributions of held-out prompts.

use std::path::PathBuf;

use skillzip_format::bundle::Bundle;
use skillzip_lm::divergence::{kl_divergence, log_prob_rows};
use skillzip_lm::model::{LinearHook, Llama, NoHook};
use skillzip_lm::skillpack::bundle_model;

use crate::inputs::{
    CliResult, PromptSource, bar, name_value, open_checkpoint, tokenize, tokenizer_for,
};

/// Arguments of `skillzip eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base checkpoint the bundle was made from.
    #[arg(long)]
    pub base: PathBuf,
    /// The bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// A fine-tuned checkpoint to compare with: NAME=PATH (NAME is the bundle's skill).
    #[arg(long = "tuned", value_parser = name_value, required = true)]
    pub tuned: Vec<(String, String)>,
    #[command(flatten)]
    pub prompts: PromptSource,
}

fn log_probs(model: &Llama, ids: &[u32], hook: &mut dyn LinearHook) -> CliResult<Vec<Vec<f64>>> {
    log_prob_rows(model, ids, hook).map_err(|e| e.to_string())
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Runs the command.
pub fn run(a: Args, quiet: bool) -> CliResult<()> {
    let base = open_checkpoint(&a.base)?;
    let tok = tokenizer_for(&base, None)?;
    let prompts = a.prompts.load()?;
    let ids = tokenize(&tok, &prompts)?;
    let bundle = Bundle::open(&a.bundle).map_err(|e| e.to_string())?;
    println!(
        "| skill | positions | KL(tuned‖base) | KL(tuned‖backbone+skillpack) | KL(tuned‖shared backbone) | top-1 agree base | top-1 agree skillpack |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (skill, path) in &a.tuned {
        let tuned_ckpt = open_checkpoint(path.as_ref())?;
        let tuned = Llama::from_checkpoint(&tuned_ckpt).map_err(|e| e.to_string())?;
        let plain = Llama::from_checkpoint(&base).map_err(|e| e.to_string())?;
        let (backbone, hook) =
            bundle_model(&base, &bundle, Some(skill)).map_err(|e| e.to_string())?;
        let mut hook = hook.ok_or("no skillpack hook")?;
        let (shared, _) = bundle_model(&base, &bundle, None).map_err(|e| e.to_string())?;
        let pb = bar(ids.len() as u64, quiet);
        let (mut n, mut kl_base, mut kl_pack, mut kl_shared, mut agree_base, mut agree_pack) =
            (0usize, 0.0, 0.0, 0.0, 0usize, 0usize);
        for p in &ids {
            let t = log_probs(&tuned, p, &mut NoHook)?;
            let b = log_probs(&plain, p, &mut NoHook)?;
            let s = log_probs(&backbone, p, &mut hook)?;
            let sh = log_probs(&shared, p, &mut NoHook)?;
            for i in 0..t.len() {
                n += 1;
                kl_base += kl_divergence(&t[i], &b[i]);
                kl_pack += kl_divergence(&t[i], &s[i]);
                kl_shared += kl_divergence(&t[i], &sh[i]);
                let top = argmax(&t[i]);
                agree_base += usize::from(argmax(&b[i]) == top);
                agree_pack += usize::from(argmax(&s[i]) == top);
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let nf = n.max(1) as f64;
        println!(
            "| {skill} | {n} | {:.5} | {:.5} | {:.5} | {:.2}% | {:.2}% |",
            kl_base / nf,
            kl_pack / nf,
            kl_shared / nf,
            100.0 * agree_base as f64 / nf,
            100.0 * agree_pack as f64 / nf
        );
    }
    Ok(())
}
