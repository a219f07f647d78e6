//! One decode step of the server's batch on the real SmolLM2-135M-Instruct: the backbone
//! alone against the backbone plus 5 random rank-64 X8A8B8 skillpacks on every linear (rows
//! spread round-robin over them, the grouped path `serve-min` runs), at batch 1, 4 and 16
//! after a 64-token prompt. Each iteration decodes from a copy of the same cache (the copy is
//! set-up, not measured). The issue-7 target: the skillpacks add ≤ 15 % to a step.
//!
//! Needs the model (`scripts/fetch-smollm2.sh`, or `SKILLZIP_SMOLLM2_GGUF`); without it the
//! bench prints `skipped: model not present` and measures nothing. The load-test side of serving
//! (rates, latency CDFs, the separate-models baseline) is the report's serving study.

use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use skillzip_benches::{decode_cache, random_skillpacks};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::model::{LinearHook, Llama, Logits, NoHook};
use skillzip_lm::skillpack::SkillpackSet;

const SKILLS: usize = 5;
const RANK: usize = 64;
const PROMPT: usize = 64;

fn benches(c: &mut Criterion) {
    let path = skillzip_lm::smollm2_path();
    if !path.exists() {
        eprintln!("skipped: model not present ({})", path.display());
        return;
    }
    let ckpt = Checkpoint::open(&path).expect("the model opens");
    let config = ckpt.config().clone();
    let model = Llama::from_checkpoint(&ckpt).expect("the model loads");
    let mut set = SkillpackSet::new(&config);
    for pack in random_skillpacks(&config, SKILLS, RANK, "", 0).expect("random skillpacks") {
        set.insert(&pack).expect("fits the model");
    }
    for batch in [1usize, 4, 16] {
        let rows: Vec<Option<usize>> = (0..batch).map(|r| Some(r % SKILLS)).collect();
        let plain = decode_cache(&model, &rows, PROMPT, None).expect("prefill");
        let packed = decode_cache(&model, &rows, PROMPT, Some(&mut set)).expect("prefill");
        set.assign_rows(&rows).expect("rows name loaded skills");
        let next = Tensor::from_vec(vec![42u32; batch], (batch, 1), &Device::Cpu).unwrap();
        let mut group = c.benchmark_group(format!("decode_step/smollm2_b{batch}"));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(8));
        let step = |cache: &mut skillzip_lm::model::KvCache, hook: &mut dyn LinearHook| {
            model
                .forward(&next, Some(cache), Logits::Last, hook)
                .expect("decode step")
        };
        group.bench_function("backbone", |b| {
            b.iter_batched_ref(
                || plain.clone(),
                |cache| step(cache, &mut NoHook),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("backbone+{SKILLS}_skillpacks_r{RANK}"), |b| {
            b.iter_batched_ref(
                || packed.clone(),
                |cache| step(cache, &mut set),
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

criterion_group!(serving_benches, benches);
criterion_main!(serving_benches);
