//! Self-generation: the policy answers each training prompt `n` times (sampled), every answer
//! is judged by the task's rule-based verifier, and prompts with both a helpful and a harmful
//! answer yield [`PreferencePair`]s for LN-DPO.

use rayon::prelude::*;
use skillzip_lm::generate::{GenerateOptions, Sampling, sample_batch};
use skillzip_lm::model::{LinearHook, Llama};
use skillzip_lm::tokenizer::{Message, Tokenizer};
use skillzip_tasks::{Sandbox, Task, Verdict, verify};

use crate::dpo::PreferencePair;
use crate::error::{Error, Result};

/// How samples are drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelfGenConfig {
    /// Samples per prompt (`n`).
    pub samples_per_prompt: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus mass kept.
    pub top_p: f32,
    /// Most likely tokens kept (0: all).
    pub top_k: usize,
    /// Prompts run through the model together.
    pub prompts_per_batch: usize,
    /// Most pairs made from one prompt.
    pub max_pairs_per_prompt: usize,
    /// Seed of the samplers.
    pub seed: u64,
}

impl Default for SelfGenConfig {
    fn default() -> Self {
        Self {
            samples_per_prompt: 4,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 50,
            prompts_per_batch: 16,
            max_pairs_per_prompt: 2,
            seed: 0,
        }
    }
}

/// One sampled answer and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The answer's text.
    pub text: String,
    /// The answer's token ids, ending with the end-of-turn id when the model stopped by itself.
    pub ids: Vec<u32>,
    /// The verifier's judgement.
    pub verdict: Verdict,
    /// Whether the model ended the answer itself (within the task's token budget) rather than
    /// being cut off.
    pub finished: bool,
}

/// A task with its rendered prompt and its samples.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The task.
    pub task: Task,
    /// The prompt's ids (chat template applied, ending where the answer begins).
    pub prompt: Vec<u32>,
    /// The samples, in sampling order.
    pub samples: Vec<Sample>,
}

/// The prompt as the model sees it: the chat template with a generation prompt.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    let template = tok.chat_template().ok_or_else(|| {
        Error::InvalidInput("the model has no chat template to render prompts with".into())
    })?;
    Ok(tok.encode(&template.render(&[Message::user(prompt)], true))?)
}

/// Generates and judges answers to `tasks`: `copies` per task with `sampling` (seeds follow
/// `sampling`'s seed by row), up to each task's own token budget. `progress(done, total)` after
/// each batch of prompts.
#[allow(clippy::too_many_arguments)]
pub fn answer_tasks(
    model: &Llama,
    tok: &Tokenizer,
    tasks: &[Task],
    copies: usize,
    sampling: Sampling,
    prompts_per_batch: usize,
    sandbox: Option<&Sandbox>,
    hook: &mut dyn LinearHook,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Generated>> {
    let stop = tok.stop_ids();
    let end_of_turn = stop.first().copied();
    let pad = end_of_turn.unwrap_or(0);
    let mut out = Vec::with_capacity(tasks.len());
    for (b, batch) in tasks.chunks(prompts_per_batch.max(1)).enumerate() {
        let prompts = batch
            .iter()
            .map(|t| encode_prompt(tok, &t.prompt))
            .collect::<Result<Vec<_>>>()?;
        let budget = batch.iter().map(Task::max_new_tokens).max().unwrap_or(1);
        let row0 = (b * prompts_per_batch.max(1) * copies) as u64;
        let sampling = sampling.seed_offset(row0);
        let opts = GenerateOptions {
            max_new_tokens: budget,
            sampling,
            stop: stop.clone(),
        };
        let answers = sample_batch(model, &prompts, copies, &opts, pad, hook)?;
        // Verification runs code in the sandbox: in parallel, one process per sample.
        let judged: Vec<Vec<Sample>> = batch
            .par_iter()
            .zip(answers.into_par_iter())
            .map(|(task, answers)| {
                answers
                    .into_iter()
                    .map(|mut ids| {
                        // A task's own budget may be below the batch's: cut there.
                        let limit = task.max_new_tokens();
                        let stopped = ids.len() < budget && ids.len() <= limit;
                        ids.truncate(limit);
                        let text = tok.decode(&ids, true).unwrap_or_default();
                        let verdict = verify(task, &text, sandbox);
                        if stopped && let Some(eot) = end_of_turn {
                            ids.push(eot);
                        }
                        Sample {
                            text,
                            ids,
                            verdict,
                            finished: stopped,
                        }
                    })
                    .collect()
            })
            .collect();
        for ((task, prompt), samples) in batch.iter().zip(prompts).zip(judged) {
            out.push(Generated {
                task: task.clone(),
                prompt,
                samples,
            });
        }
        progress(out.len(), tasks.len());
    }
    Ok(out)
}

/// Preference pairs from judged samples: for each prompt, helpful × harmful answers with
/// distinct token ids, in sampling order, at most `max_per_prompt` per prompt. Empty answers
/// are skipped. Helpful answers the token budget cut off are kept: dropping them was tried
/// on SmolLM2-135M math (20 pairs became 8, and the fine-tune overfitted them).
pub fn preference_pairs(generated: &[Generated], max_per_prompt: usize) -> Vec<PreferencePair> {
    let mut pairs = Vec::new();
    for g in generated {
        let distinct = |helpful: bool| {
            let mut seen = std::collections::BTreeSet::new();
            g.samples
                .iter()
                .filter(|s| s.verdict.helpful == helpful && !s.ids.is_empty())
                .filter(|s| seen.insert(s.ids.clone()))
                .collect::<Vec<_>>()
        };
        let (good, bad) = (distinct(true), distinct(false));
        if good.is_empty() || bad.is_empty() {
            continue;
        }
        let count = max_per_prompt.min(good.len() * bad.len());
        // Combination k pairs helpful i = k mod |good| with harmful (i + ⌊k/|good|⌋) mod
        // |bad|: every helpful answer is used before any is reused, and no pair repeats.
        for k in 0..count {
            let i = k % good.len();
            let w = good[i];
            let l = bad[(i + k / good.len()) % bad.len()];
            pairs.push(PreferencePair {
                prompt: g.prompt.clone(),
                chosen: w.ids.clone(),
                rejected: l.ids.clone(),
            });
        }
    }
    pairs
}
