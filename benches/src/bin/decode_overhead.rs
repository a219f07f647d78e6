//! What the grouped skillpack path adds to a decode step: the same batch decoded through the
//! backbone alone and through the backbone plus skillpacks (rows spread round-robin over
//! them), step for step in alternation, on a real checkpoint.
//!
//!     cargo run --release -p skillzip-benches --bin decode_overhead -- MODEL.gguf \
//!         [--skills 5] [--rank 64] [--batches 1,4,16] [--steps 24] [--prompt 64]
//!
//! The skillpacks carry random X8A8B8 factors on every linear of every block: the cost of the
//! path depends on shapes and rank, not on what the factors learned. Prints one markdown row
//! per batch size: median ms per step with and without skillpacks and the median of the
//! per-pair ratios.

use std::time::Instant;

use candle_core::{Device, Tensor};
use skillzip_benches::{decode_cache, median, random_skillpacks};
use skillzip_lm::checkpoint::{Checkpoint, LinearKind};
use skillzip_lm::model::{LinearHook, Llama, Logits, NoHook};
use skillzip_lm::skillpack::SkillpackSet;

fn main() {
    if let Err(e) = run() {
        eprintln!("decode_overhead: {e}");
        std::process::exit(1);
    }
}

struct Options {
    model: String,
    skills: usize,
    rank: usize,
    batches: Vec<usize>,
    steps: usize,
    prompt: usize,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        model: String::new(),
        skills: 5,
        rank: 64,
        batches: vec![1, 4, 16],
        steps: 24,
        prompt: 64,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--skills" => o.skills = number(value()?)?,
            "--rank" => o.rank = number(value()?)?,
            "--steps" => o.steps = number(value()?)?,
            "--prompt" => o.prompt = number(value()?)?,
            "--batches" => {
                o.batches = value()?
                    .split(',')
                    .map(|b| number(b.to_string()))
                    .collect::<Result<_, _>>()?
            }
            _ if o.model.is_empty() && !a.starts_with('-') => o.model = a,
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    if o.model.is_empty() || o.skills == 0 || o.rank == 0 || o.steps == 0 || o.prompt == 0 {
        return Err(
            "usage: decode_overhead MODEL [--skills N] [--rank R] [--batches 1,4] \
                    [--steps N] [--prompt N]"
                .into(),
        );
    }
    if o.batches.contains(&0) {
        return Err("batch sizes must be at least 1".into());
    }
    Ok(o)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let o = options()?;
    let ckpt = Checkpoint::open(&o.model)?;
    let config = ckpt.config().clone();
    let model = Llama::from_checkpoint(&ckpt)?;
    let mut set = SkillpackSet::new(&config);
    for pack in random_skillpacks(&config, o.skills, o.rank, "", 0)? {
        set.insert(&pack)?;
    }
    println!(
        "{} skillpacks of rank {} on all {} linears; prompt {} tokens; {} step pairs; {}",
        o.skills,
        o.rank,
        config.num_hidden_layers * LinearKind::ALL.len(),
        o.prompt,
        o.steps,
        o.model
    );
    println!(
        "| batch | backbone ms/step | + skillpacks ms/step | of which in the skillpack path | \
         ratio (median of pairs) |"
    );
    println!("|---|---|---|---|---|");
    for &batch in &o.batches {
        let rows: Vec<Option<usize>> = (0..batch).map(|r| Some(r % o.skills)).collect();
        let mut plain = decode_cache(&model, &rows, o.prompt, None)?;
        let mut packed = decode_cache(&model, &rows, o.prompt, Some(&mut set))?;
        set.assign_rows(&rows)?;
        let mut times = (Vec::new(), Vec::new(), Vec::new());
        let next = Tensor::from_vec(vec![42u32; batch], (batch, 1), &Device::Cpu)?;
        for _ in 0..o.steps {
            let t = Instant::now();
            model.forward(&next, Some(&mut plain), Logits::Last, &mut NoHook)?;
            times.0.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let mut timed = Timed {
                set: &mut set,
                ms: 0.0,
            };
            model.forward(&next, Some(&mut packed), Logits::Last, &mut timed)?;
            times.1.push(t.elapsed().as_secs_f64() * 1e3);
            times.2.push(timed.ms);
        }
        let mut ratios: Vec<f64> = times.1.iter().zip(&times.0).map(|(p, b)| p / b).collect();
        println!(
            "| {batch} | {:.1} | {:.1} | {:.1} | {:.3} |",
            median(&mut times.0),
            median(&mut times.1),
            median(&mut times.2),
            median(&mut ratios)
        );
    }
    Ok(())
}

/// The skillpack set, timing the calls that add its output (the rest of the step is the
/// backbone's own work plus the adds).
struct Timed<'a> {
    set: &'a mut SkillpackSet,
    ms: f64,
}

impl LinearHook for Timed<'_> {
    fn extra(
        &mut self,
        layer: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> skillzip_lm::error::Result<Option<Tensor>> {
        let t = Instant::now();
        let y = self.set.extra(layer, kind, x);
        self.ms += t.elapsed().as_secs_f64() * 1e3;
        y
    }
}
