//! A short supervised fine-tune (SFT) of the linear layers, used to make **real** skill deltas
//! of a real model before the training harness's LN-DPO deltas exist. It is deliberately
//! small: seeded synthetic tasks ([`SftTask`]), cross-entropy on the response tokens only,
//! AdamW on every linear weight (embeddings and norms frozen, so their deltas are zero), a
//! fixed step count. What it produces is a genuine fine-tuned checkpoint, not a stand-in.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::RngExt;

use crate::checkpoint::TensorRole;
use crate::checkpoint::tensor_specs;
use crate::error::{Error, Result};
use crate::model::{Llama, Logits, NoHook};
use crate::tokenizer::{Message, Tokenizer};

/// The built-in synthetic skills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SftTask {
    /// Two- and three-digit addition and subtraction, answered "The answer is N."
    Arithmetic,
    /// Repeat a sentence in capital letters.
    Capitals,
}

impl SftTask {
    /// Parses `arith` / `caps`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "arith" | "arithmetic" => Some(Self::Arithmetic),
            "caps" | "capitals" => Some(Self::Capitals),
            _ => None,
        }
    }

    /// `count` (prompt, response) pairs from `seed`.
    pub fn examples(self, count: usize, seed: u64) -> Vec<(String, String)> {
        const WORDS: [&str; 24] = [
            "the", "river", "quiet", "mountain", "bright", "garden", "runs", "under", "old",
            "bridge", "city", "sleeps", "green", "light", "over", "small", "boat", "wind",
            "carries", "songs", "across", "winter", "fields", "morning",
        ];
        let mut rng = skillzip_core::seeded_rng(seed);
        (0..count)
            .map(|_| match self {
                Self::Arithmetic => {
                    let a = rng.random_range(10..500i64);
                    let b = rng.random_range(10..500i64);
                    if rng.random::<bool>() {
                        (
                            format!("What is {a} + {b}?"),
                            format!("The answer is {}.", a + b),
                        )
                    } else {
                        (
                            format!("What is {a} - {b}?"),
                            format!("The answer is {}.", a - b),
                        )
                    }
                }
                Self::Capitals => {
                    let n = rng.random_range(4..9usize);
                    let words: Vec<&str> = (0..n)
                        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                        .collect();
                    let s = words.join(" ");
                    (format!("Repeat in capital letters: {s}"), s.to_uppercase())
                }
            })
            .collect()
    }
}

/// Settings of [`finetune`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Seed of the example order.
    pub seed: u64,
}

impl Default for SftOptions {
    fn default() -> Self {
        Self {
            steps: 30,
            batch: 4,
            lr: 5e-5,
            seed: 0,
        }
    }
}

/// One example tokenized with the chat template: ids and the index where the response starts.
fn encode_example(tok: &Tokenizer, prompt: &str, response: &str) -> Result<(Vec<u32>, usize)> {
    let template = tok
        .chat_template()
        .ok_or_else(|| Error::ChatTemplate("the model has no chat template".into()))?;
    let head = tok.encode(&template.render(&[Message::user(prompt)], true))?;
    let mut ids = head.clone();
    ids.extend(tok.encode(response)?);
    ids.extend(tok.stop_ids().last().copied());
    Ok((ids, head.len()))
}

/// Mean cross-entropy of the response tokens of one example.
fn example_loss(model: &Llama, ids: &[u32], response_start: usize) -> Result<Tensor> {
    let n = ids.len();
    let input = Tensor::from_vec(ids[..n - 1].to_vec(), (1, n - 1), &Device::Cpu)?;
    let logits = model.forward(&input, None, Logits::All, &mut NoHook)?;
    let logits = logits.squeeze(0)?;
    // Positions predicting the response: response_start-1 .. n-2.
    let from = response_start - 1;
    let len = n - 1 - from;
    let logits = logits.narrow(0, from, len)?;
    let targets = Tensor::from_vec(ids[response_start..].to_vec(), len, &Device::Cpu)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Parameters by HF name, row-major f32.
pub type Params = BTreeMap<String, Vec<f32>>;

/// Fine-tunes the linear weights of `params` (HF names, f32) on `examples`; returns the new
/// parameters and the loss of each step. `progress(step, loss)` after each step.
pub fn finetune(
    config: &crate::config::LlamaConfig,
    params: BTreeMap<String, Vec<f32>>,
    tok: &Tokenizer,
    examples: &[(String, String)],
    opts: SftOptions,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<(Params, Vec<f32>)> {
    if examples.is_empty() || opts.steps == 0 || opts.batch == 0 {
        return Err(Error::InvalidInput(
            "fine-tune needs examples, steps and a batch".into(),
        ));
    }
    let encoded = examples
        .iter()
        .map(|(p, r)| encode_example(tok, p, r))
        .collect::<Result<Vec<_>>>()?;
    let specs = tensor_specs(config);
    let mut tensors = BTreeMap::new();
    let mut vars = Vec::new();
    for (name, shape, role) in &specs {
        let data = params.get(name).ok_or_else(|| Error::MissingTensor {
            file: "fine-tune".into(),
            tensor: name.clone(),
        })?;
        let t = Tensor::from_vec(data.clone(), shape.clone(), &Device::Cpu)?;
        if matches!(role, TensorRole::Linear(..)) {
            let v = Var::from_tensor(&t)?;
            tensors.insert(name.clone(), v.as_tensor().clone());
            vars.push((name.clone(), v));
        } else {
            tensors.insert(name.clone(), t);
        }
    }
    let model = Llama::from_tensors(config.clone(), tensors)?;
    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = skillzip_core::seeded_rng(opts.seed);
    let mut losses = Vec::with_capacity(opts.steps);
    for step in 0..opts.steps {
        let mut total: Option<Tensor> = None;
        for _ in 0..opts.batch {
            let (ids, start) = &encoded[rng.random_range(0..encoded.len())];
            let l = example_loss(&model, ids, *start)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        let loss = total
            .map(|t| t / opts.batch as f64)
            .transpose()?
            .ok_or_else(|| Error::InvalidInput("empty batch".into()))?;
        opt.backward_step(&loss)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        losses.push(value);
        progress(step + 1, value);
    }
    let mut out = params;
    for (name, v) in vars {
        out.insert(name, v.as_tensor().flatten_all()?.to_vec1()?);
    }
    Ok((out, losses))
}

/// Mean response loss of `examples` under `params` (no gradient), for before/after reports.
pub fn eval_loss(model: &Llama, tok: &Tokenizer, examples: &[(String, String)]) -> Result<f32> {
    let mut sum = 0.0;
    for (p, r) in examples {
        let (ids, start) = encode_example(tok, p, r)?;
        sum += example_loss(model, &ids, start)?.to_scalar::<f32>()?;
    }
    Ok(sum / examples.len().max(1) as f32)
}
