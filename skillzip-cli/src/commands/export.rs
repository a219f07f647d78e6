//! `skillzip export --peft`: a bundle's skill as a PEFT LoRA adapter, plus the merged backbone
//! `θ_0 + Δ_shared` as its own checkpoint (an adapter without it is wrong: DESIGN §5).

use std::path::PathBuf;

use skillzip_format::bundle::Bundle;
use skillzip_format::peft::{PeftDtype, PeftOptions, export_peft};
use skillzip_lm::save::{SaveOptions, save_checkpoint};

use crate::inputs::{CliResult, open_checkpoint};

/// Arguments of `skillzip export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Export as a PEFT LoRA adapter (the only format so far).
    #[arg(long, required = true)]
    pub peft: bool,
    /// The bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The skill to export.
    #[arg(long)]
    pub skill: String,
    /// The base checkpoint the bundle was made from (for the merged backbone).
    #[arg(long)]
    pub base: PathBuf,
    /// Output directory: `adapter/` and `backbone/` are written inside.
    #[arg(long)]
    pub out: PathBuf,
    /// Highest rank the target engine accepts (vLLM: 512); larger ranks are warned about.
    #[arg(long, default_value_t = 512)]
    pub rank_cap: usize,
}

/// Runs the command.
pub fn run(a: Args) -> CliResult<()> {
    let bundle = Bundle::open(&a.bundle).map_err(|e| e.to_string())?;
    let pack = bundle.skillpack(&a.skill).map_err(|e| e.to_string())?;
    let base = open_checkpoint(&a.base)?;
    let backbone_dir = a.out.join("backbone");
    let adapter_dir = a.out.join("adapter");
    std::fs::create_dir_all(&adapter_dir).map_err(|e| format!("{}: {e}", adapter_dir.display()))?;
    let opts = PeftOptions {
        base_model_name_or_path: backbone_dir.display().to_string(),
        target_engine_rank_cap: Some(a.rank_cap),
        dtype: PeftDtype::F32,
    };
    let report = export_peft(&pack, &adapter_dir, &opts).map_err(|e| e.to_string())?;
    // The merged backbone, streamed tensor by tensor; the skill's dense deltas are part of
    // what the adapter cannot carry, so they are folded into this skill's backbone.
    let shared = bundle.backbone_delta().map_err(|e| e.to_string())?;
    let meta = [("skillzip", "merged backbone"), ("skill", a.skill.as_str())];
    save_checkpoint(
        &backbone_dir,
        base.config(),
        SaveOptions::default(),
        &meta,
        |name, shape| {
            let mut t = base.load_expected(name, shape)?.data;
            for extra in [
                shared.as_ref().and_then(|s| s.tensors.get(name)),
                pack.dense.get(name),
            ]
            .into_iter()
            .flatten()
            {
                for (x, d) in t.iter_mut().zip(&extra.data) {
                    *x += d;
                }
            }
            Ok(t)
        },
    )
    .map_err(|e| e.to_string())?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "adapter: {} (r = {}, {} modules, {} bytes); backbone: {}",
        adapter_dir.display(),
        report.r,
        report.ranks.len(),
        report.weights_bytes,
        backbone_dir.display()
    );
    if !pack.dense.is_empty() {
        println!(
            "note: {} dense tensor(s) of the skill were folded into this backbone (LoRA cannot carry them)",
            pack.dense.len()
        );
    }
    Ok(())
}
