//! Token generation with a KV cache: greedy or sampled (temperature, top-k, top-p), seeded.

use candle_core::{Device, Tensor};
use rand::RngExt;

use crate::error::{Error, Result};
use crate::model::{KvCache, LinearHook, Llama, Logits};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id).
    Greedy,
    /// Sampled from the temperature-scaled distribution restricted to the `top_k` most likely
    /// tokens (0 = all) and then to the smallest set whose mass reaches `top_p`.
    Sample {
        /// Temperature (> 0).
        temperature: f32,
        /// Keep at most this many tokens (0 = no limit).
        top_k: usize,
        /// Keep the smallest most-likely set with at least this probability mass (≤ 1).
        top_p: f32,
        /// Seed of the sampler's generator.
        seed: u64,
    },
}

impl Sampling {
    /// The same sampling with its seed advanced by `offset` (greedy is unchanged): row `r`
    /// of a batch samples with `seed + r`.
    pub fn seed_offset(self, offset: u64) -> Self {
        match self {
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                seed,
            } => Sampling::Sample {
                temperature,
                top_k,
                top_p,
                seed: seed.wrapping_add(offset),
            },
            greedy => greedy,
        }
    }
}

/// Options of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Ids that end generation (not included in the output).
    pub stop: Vec<u32>,
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt`, calling `on_token` with each
/// new id (return `false` to stop early). Returns the new ids.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    opts: &GenerateOptions,
    hook: &mut dyn LinearHook,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::InvalidInput("empty prompt".into()));
    }
    let mut sampler = Sampler::new(opts.sampling)?;
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    let positions = model.config().max_position_embeddings;
    if prompt.len() > positions {
        return Err(Error::InvalidInput(format!(
            "prompt of {} tokens exceeds the model's {positions} positions",
            prompt.len()
        )));
    }
    // The last new token is never fed back, so it needs no position of its own.
    let room = positions + 1 - prompt.len();
    for _ in 0..opts.max_new_tokens.min(room) {
        let ids = Tensor::from_vec(input.clone(), (1, input.len()), &Device::Cpu)?;
        let logits = model.forward(&ids, Some(&mut cache), Logits::Last, hook)?;
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let next = sampler.next(&logits);
        if opts.stop.contains(&next) {
            break;
        }
        out.push(next);
        if !on_token(next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Generates continuations of several prompts at once, left-padded into one batch with
/// `pad_id` as filler. Row `r` samples with seed `seed + r` (its own [`Sampler`]); a row leaves
/// the batch when it stops or reaches `opts.max_new_tokens`, so finished rows cost nothing.
/// Greedy rows produce the tokens [`generate`] produces for the prompt alone (f32 rounding
/// aside). Returns each prompt's new ids.
pub fn generate_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    pad_id: u32,
    hook: &mut dyn LinearHook,
) -> Result<Vec<Vec<u32>>> {
    let samples = sample_batch(model, prompts, 1, opts, pad_id, hook)?;
    Ok(samples.into_iter().flatten().collect())
}

/// `copies` continuations of each prompt (self-generation's n samples per prompt): each
/// prompt is run through the model once and its cache shared by its copies. Copy `j` of
/// prompt `p` is row `p·copies + j` and samples with seed `seed + p·copies + j`, so the result
/// does not depend on how prompts are grouped into calls. Returns `[prompt][copy]` new ids.
pub fn sample_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    copies: usize,
    opts: &GenerateOptions,
    pad_id: u32,
    hook: &mut dyn LinearHook,
) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut outputs = vec![vec![Vec::new(); copies]; prompts.len()];
    if prompts.is_empty() || copies == 0 || opts.max_new_tokens == 0 {
        return Ok(outputs);
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(Error::InvalidInput("empty prompt".into()));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let positions = model.config().max_position_embeddings;
    if longest > positions {
        return Err(Error::InvalidInput(format!(
            "prompt of {longest} tokens exceeds the model's {positions} positions"
        )));
    }
    let steps = opts.max_new_tokens.min(positions + 1 - longest);
    let rows = prompts.len() * copies;
    let mut samplers = (0..rows)
        .map(|r| Sampler::new(opts.sampling.seed_offset(r as u64)))
        .collect::<Result<Vec<_>>>()?;
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut prefill: Vec<u32> = Vec::with_capacity(prompts.len() * longest);
    for (p, &pad) in prompts.iter().zip(&pads) {
        prefill.extend(std::iter::repeat_n(pad_id, pad));
        prefill.extend(p);
    }
    let mut cache = KvCache::with_left_padding(pads);
    let ids = Tensor::from_vec(prefill, (prompts.len(), longest), &Device::Cpu)?;
    let logits = model.forward(&ids, Some(&mut cache), Logits::Last, hook)?;
    let prompt_logits: Vec<Vec<f32>> = logits.squeeze(1)?.to_vec2()?;
    if copies > 1 {
        let expanded: Vec<usize> = (0..rows).map(|r| r / copies).collect();
        cache.retain_rows(&expanded)?;
    }
    // Batch row i holds sample active[i] (prompt active[i] / copies).
    let mut active: Vec<usize> = (0..rows).collect();
    let mut step_logits: Vec<Vec<f32>> = Vec::new();
    for step in 0..steps {
        let mut keep = Vec::with_capacity(active.len());
        let mut input = Vec::with_capacity(active.len());
        for (i, &row) in active.iter().enumerate() {
            let logits = if step == 0 {
                &prompt_logits[row / copies]
            } else {
                &step_logits[i]
            };
            let next = samplers[row].next(logits);
            if opts.stop.contains(&next) {
                continue;
            }
            outputs[row / copies][row % copies].push(next);
            if step + 1 < steps {
                keep.push(i);
                input.push(next);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep)?;
            active = keep.iter().map(|&i| active[i]).collect();
        }
        let ids = Tensor::from_vec(input, (active.len(), 1), &Device::Cpu)?;
        let logits = model.forward(&ids, Some(&mut cache), Logits::Last, hook)?;
        step_logits = logits.squeeze(1)?.to_vec2()?;
    }
    Ok(outputs)
}

/// Picks tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: skillzip_core::SeededRng,
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler; rejects a non-positive temperature or a `top_p` outside `(0, 1]`.
    pub fn new(sampling: Sampling) -> Result<Self> {
        let seed = match sampling {
            Sampling::Greedy => 0,
            Sampling::Sample {
                temperature,
                top_p,
                seed,
                ..
            } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(Error::InvalidInput(format!("temperature {temperature}")));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(Error::InvalidInput(format!("top_p {top_p}")));
                }
                seed
            }
        };
        Ok(Self {
            sampling,
            rng: skillzip_core::seeded_rng(seed),
            order: Vec::new(),
        })
    }

    /// The next token for one position's logits.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => {
                self.order.clear();
                self.order.extend(0..logits.len() as u32);
                // Most likely first; ties by id so the result is reproducible. With a top-k
                // only the k best need sorting (a full sort of the vocabulary per token per
                // row dominated batched sampling).
                let most_likely_first = |a: &u32, b: &u32| {
                    logits[*b as usize]
                        .total_cmp(&logits[*a as usize])
                        .then(a.cmp(b))
                };
                let k = if top_k == 0 {
                    logits.len()
                } else {
                    top_k.min(logits.len())
                };
                if k < logits.len() {
                    self.order.select_nth_unstable_by(k, most_likely_first);
                }
                self.order[..k].sort_unstable_by(most_likely_first);
                let max = logits[self.order[0] as usize] as f64;
                let weights: Vec<f64> = self.order[..k]
                    .iter()
                    .map(|&i| ((logits[i as usize] as f64 - max) / temperature as f64).exp())
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut kept = 0;
                let mut mass = 0.0;
                for w in &weights {
                    kept += 1;
                    mass += w / total;
                    if mass >= top_p as f64 {
                        break;
                    }
                }
                let kept_total: f64 = weights[..kept].iter().sum();
                let mut u = self.rng.random::<f64>() * kept_total;
                for (i, w) in weights[..kept].iter().enumerate() {
                    if u < *w {
                        return self.order[i];
                    }
                    u -= w;
                }
                self.order[kept - 1]
            }
        }
    }
}

/// Index of the largest logit (lowest index among ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_sampling_respects_top_k() {
        let logits = [0.0, 3.0, 3.0, -1.0, 2.5];
        let mut g = Sampler::new(Sampling::Greedy).unwrap();
        assert_eq!(g.next(&logits), 1);
        let mut s = Sampler::new(Sampling::Sample {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
        })
        .unwrap();
        let picks: Vec<u32> = (0..200).map(|_| s.next(&logits)).collect();
        assert!(picks.iter().all(|p| *p == 1 || *p == 2));
        assert!(picks.contains(&1) && picks.contains(&2));
        // top_p small enough keeps only the first of the tied pair.
        let mut p = Sampler::new(Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.1,
            seed: 7,
        })
        .unwrap();
        assert!((0..50).all(|_| p.next(&logits) == 1));
        assert!(
            Sampler::new(Sampling::Sample {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0
            })
            .is_err()
        );
    }
}
