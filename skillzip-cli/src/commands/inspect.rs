//! `skillzip inspect`: what a skillpack or a bundle holds.

use std::path::Path;

use skillzip_format::bundle::Bundle;
use skillzip_format::skillpack::{Skillpack, read_skillpack};

use crate::inputs::CliResult;

/// Runs the command.
pub fn run(path: &Path, layers: bool) -> CliResult<()> {
    if path.is_dir() {
        let bundle = Bundle::open(path).map_err(|e| e.to_string())?;
        let m = bundle.manifest();
        println!("bundle {}", path.display());
        println!(
            "  base: {} (backbone {}), from {}",
            m.base.architecture, m.base.backbone_hash, m.base.source
        );
        match &m.backbone_delta {
            Some(f) => println!("  backbone delta: {} ({} bytes)", f.file, f.bytes),
            None => println!("  backbone delta: none"),
        }
        for s in &m.skillpacks {
            let pack = bundle.skillpack(&s.name).map_err(|e| e.to_string())?;
            println!("  skillpack {} ({}, {} bytes):", s.name, s.file, s.bytes);
            print_pack(&pack, layers, "    ");
        }
        if let Some(r) = &m.router {
            println!("  router: {} ({} bytes)", r.file, r.bytes);
        }
    } else {
        let pack = read_skillpack(path).map_err(|e| e.to_string())?;
        println!("skillpack {}", path.display());
        print_pack(&pack, layers, "  ");
    }
    Ok(())
}

fn print_pack(pack: &Skillpack, layers: bool, indent: &str) {
    let s = pack.summary();
    println!(
        "{indent}skill {}, base {} {}",
        s.skill, s.base.architecture, s.base.backbone_hash
    );
    let errors: Vec<f64> = s
        .layers
        .iter()
        .filter_map(|l| l.report.as_ref()?.rel_output_error)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = errors.iter().copied().fold(0.0, f64::max);
    let mut ranks: Vec<usize> = s.layers.iter().map(|l| l.rank).collect();
    ranks.sort_unstable();
    println!(
        "{indent}{} layers, {} bytes of factors + {} bytes dense ({:.3} bits per delta parameter); ranks {}..{} (median {})",
        s.layers.len(),
        s.layer_bytes,
        s.dense_bytes,
        s.bits_per_delta_param,
        ranks.first().copied().unwrap_or(0),
        ranks.last().copied().unwrap_or(0),
        ranks.get(ranks.len() / 2).copied().unwrap_or(0),
    );
    if !errors.is_empty() {
        println!(
            "{indent}held-out relative output error: mean {:.4}, max {:.4}",
            mean(&errors),
            max
        );
    }
    if let Some(method) = pack.meta.config.get("method") {
        println!("{indent}method {method}");
    }
    for d in &s.dense {
        println!(
            "{indent}dense {} {:?} {} ({} bytes)",
            d.name,
            d.shape,
            d.dtype.name(),
            d.bytes
        );
    }
    if layers {
        println!(
            "{indent}| layer | C_i×C_o | rank | grid | bytes | α | rel. output error | rel. weight error |"
        );
        println!("{indent}|---|---|---:|---|---:|---:|---:|---:|");
        for l in &s.layers {
            let r = l.report.clone().unwrap_or_default();
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
            println!(
                "{indent}| {} | {}×{} | {} | {} | {} | {} | {} | {} |",
                l.module,
                l.c_in,
                l.c_out,
                l.rank,
                l.method,
                l.bytes,
                r.alpha.map_or("-".to_string(), |a| format!("{a}")),
                f(r.rel_output_error),
                f(r.rel_weight_error)
            );
        }
    }
}
