//! The base model's greedy accuracy per skill and difficulty level on held-out tasks: the
//! numbers behind each skill's default level (the harness needs a base rate between 20 % and
//! 70 %: with no helpful samples there is nothing to learn, with only helpful ones no pairs).
//!
//!     cargo run --release -p skillzip-harness --example base_rates -- MODEL.gguf [TASKS] [DOMAINS]

use skillzip_harness::eval::evaluate;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::model::{Llama, NoHook};
use skillzip_lm::tokenizer::Tokenizer;
use skillzip_tasks::task::generate;
use skillzip_tasks::{Domain, Sandbox, SandboxLimits, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: base_rates MODEL.gguf [TASKS] [DOMAINS]")?;
    let count: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(24);
    let domains: Vec<Domain> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|d| Domain::parse(d).ok_or(format!("unknown domain {d}")))
            .collect::<Result<_, _>>()?,
        None => Domain::ALL.to_vec(),
    };
    let ckpt = Checkpoint::open(&path)?;
    let tok = Tokenizer::from_gguf(ckpt.gguf_metadata().ok_or("a GGUF file is needed")?)?;
    let model = Llama::from_checkpoint(&ckpt)?;
    let sandbox = Sandbox::new(SandboxLimits::default()).ok();
    println!("| skill | level | base accuracy (greedy, held-out) | seconds |");
    println!("|---|---|---|---|");
    for domain in domains {
        for level in 1..=4u8 {
            let tasks = generate(domain, level, Split::HeldOut, count, 1);
            let start = std::time::Instant::now();
            let (acc, answers) = evaluate(
                &model,
                &tok,
                &tasks,
                24,
                sandbox.as_ref(),
                &mut NoHook,
                &mut |_, _| {},
            )?;
            println!(
                "| {domain} | {level} | {acc} | {:.0} |",
                start.elapsed().as_secs_f64()
            );
            if std::env::var_os("SHOW").is_some() {
                for g in answers.iter().take(3) {
                    let s = &g.samples[0];
                    eprintln!(
                        "--- {}\n>>> {}\n[{}] {}",
                        g.task.prompt, s.text, s.verdict.helpful, s.verdict.reason
                    );
                }
            }
        }
    }
    Ok(())
}
