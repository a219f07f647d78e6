//! [`Llama`]: a Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU) on candle, CPU, f32.
//!
//! Every operation is one that candle differentiates (DESIGN.md §3): RMSNorm is composed from
//! `sqr`/`mean`/`sqrt`, softmax is the generic `exp`/`sum` form, RoPE is `rotate_half` by
//! `narrow`/`cat`. Candle's fused `rms_norm`, `softmax_last_dim` and `rope` pass no gradient,
//! so they are not used. Logits come back for every position.
//!
//! Weights are stored in HF layout and names (`[out, in]`, `model.layers.3.mlp.down_proj.weight`).
//! A model built from [`candle_core::Var`]-backed tensors ([`Llama::from_tensors`]) is trainable.
//!
//! Every linear layer calls a [`LinearHook`] with its input rows: [`LinearHook::observe`]
//! captures activations for calibration, [`LinearHook::extra`] adds a skillpack's output
//! `X̂·Â·B̂` to the backbone's `X·W`.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor};

use crate::checkpoint::{Checkpoint, LinearKind, TensorRole, tensor_specs};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// Called by every linear layer of every block during a forward pass.
pub trait LinearHook {
    /// Sees the input rows `x` (`[rows, in]`, f32) of linear `kind` in block `layer`.
    fn observe(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<()> {
        let _ = (layer, kind, x);
        Ok(())
    }

    /// An extra output `[rows, out]` to add to `x·Wᵀ` (a skillpack's delta), or `None`.
    fn extra(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<Option<Tensor>> {
        let _ = (layer, kind, x);
        Ok(None)
    }
}

/// The hook that does nothing: the plain backbone.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHook;

impl LinearHook for NoHook {}

/// Which positions' logits a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[batch, tokens, vocab]` (training, evaluation, calibration).
    All,
    /// Only the last position: `[batch, 1, vocab]` (generation).
    Last,
}

/// One block's cached keys and values, once it has run.
type CachedKeys = Option<(Tensor, Tensor)>;

/// Keys and values of the positions seen so far, per block.
///
/// The cache is an inference tool: it stores keys and values detached from autograd.
///
/// A batch of prompts of different lengths is run left-padded: row `b` starts with
/// `left_pad[b]` filler tokens that no real position attends to. RoPE scores depend only on
/// the distance between positions, so a padded row computes what it would alone (to f32
/// rounding).
///
/// A *continuous* cache ([`KvCache::continuous`], a server's batch) also numbers each row's
/// positions from its own first real token, so rows can join ([`KvCache::join`]) and leave
/// ([`KvCache::retain_rows`]) while the others decode: a joining row is left-padded to the
/// batch's length (or the batch to the row's) with filler that no position attends to, and
/// filler every row has in common is dropped again.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<CachedKeys>,
    len: usize,
    left_pad: Option<Vec<usize>>,
    /// Row `b`'s token at slot `s` sits at position `s − left_pad[b]` (not `s`).
    row_positions: bool,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache for a left-padded batch: row `b`'s first `left_pad[b]` tokens are filler.
    pub fn with_left_padding(left_pad: Vec<usize>) -> Self {
        Self {
            left_pad: Some(left_pad),
            ..Self::default()
        }
    }

    /// An empty continuous-batching cache: no rows until [`KvCache::join`] adds prefilled
    /// ones.
    pub fn continuous() -> Self {
        Self::with_row_padding(Vec::new())
    }

    /// An empty cache for a left-padded batch whose rows number their positions from their
    /// own first real token (the prefill of several rows that will join a continuous cache).
    pub fn with_row_padding(left_pad: Vec<usize>) -> Self {
        Self {
            left_pad: Some(left_pad),
            row_positions: true,
            ..Self::default()
        }
    }

    /// Positions cached (slots: the longest row's length, filler included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Filler tokens at the start of each row, if the batch is padded.
    pub fn left_padding(&self) -> Option<&[usize]> {
        self.left_pad.as_deref()
    }

    /// Keeps only batch rows `rows` (in that order), e.g. when some sequences have finished.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.is_empty() {
            return Err(Error::InvalidInput(
                "a cache must keep at least one row".into(),
            ));
        }
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &Device::Cpu,
        )?;
        for (k, v) in self.layers.iter_mut().flatten() {
            let batch = k.dim(0)?;
            if let Some(bad) = rows.iter().find(|&&r| r >= batch) {
                return Err(Error::InvalidInput(format!(
                    "row {bad} is outside a batch of {batch}"
                )));
            }
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        if let Some(pad) = &mut self.left_pad {
            *pad = rows
                .iter()
                .map(|&r| pad.get(r).copied().unwrap_or(0))
                .collect();
        }
        if self.row_positions {
            self.trim()?;
        }
        Ok(())
    }

    /// Batch rows held: `None` for an unpadded cache (its rows are those of its first call).
    pub fn rows(&self) -> Option<usize> {
        self.left_pad.as_ref().map(Vec::len)
    }

    /// Adds the rows of `other` (prefilled alone or as a [`KvCache::with_row_padding`] batch)
    /// after this continuous cache's rows; the shorter side is left-padded to the longer.
    /// Row `r` of `other` becomes row `rows + r`. On error this cache is unchanged.
    pub fn join(&mut self, other: KvCache) -> Result<()> {
        if !self.row_positions {
            return Err(Error::InvalidInput(
                "only a continuous cache (KvCache::continuous) takes joining rows".into(),
            ));
        }
        let incoming = other.batch_rows()?;
        let other_pad = match (&other.left_pad, other.row_positions) {
            (None, _) => vec![0; incoming],
            (Some(pad), true) => pad.clone(),
            // Keys of a shared-position padded batch were rotated at slot positions, which a
            // continuous cache would read as positions shifted by the row's padding.
            (Some(pad), false) if pad.iter().all(|&p| p == 0) => pad.clone(),
            (Some(_), false) => {
                return Err(Error::InvalidInput(
                    "a left-padded cache joins a continuous one only if made by \
                     KvCache::with_row_padding"
                        .into(),
                ));
            }
        };
        let mine = self.left_pad.clone().unwrap_or_default();
        if mine.is_empty() {
            *self = KvCache {
                left_pad: Some(other_pad),
                row_positions: true,
                ..other
            };
            return self.trim();
        }
        if other.layers.len() != self.layers.len() {
            return Err(Error::InvalidInput(format!(
                "a cache of {} blocks cannot join one of {}",
                other.layers.len(),
                self.layers.len()
            )));
        }
        let len = self.len.max(other.len);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (a, b) in self.layers.iter().zip(&other.layers) {
            let (Some((ak, av)), Some((bk, bv))) = (a, b) else {
                return Err(Error::InvalidInput("a cache block holds no keys".into()));
            };
            let k = Tensor::cat(
                &[
                    &pad_slots(ak, len - self.len)?,
                    &pad_slots(bk, len - other.len)?,
                ],
                0,
            )?;
            let v = Tensor::cat(
                &[
                    &pad_slots(av, len - self.len)?,
                    &pad_slots(bv, len - other.len)?,
                ],
                0,
            )?;
            layers.push(Some((k.contiguous()?, v.contiguous()?)));
        }
        let mut pads: Vec<usize> = mine.iter().map(|p| p + len - self.len).collect();
        pads.extend(other_pad.iter().map(|p| p + len - other.len));
        self.layers = layers;
        self.len = len;
        self.left_pad = Some(pads);
        self.trim()
    }

    /// Rows of a cache that has run at least once.
    fn batch_rows(&self) -> Result<usize> {
        match self.layers.first() {
            Some(Some((k, _))) if self.len > 0 => Ok(k.dim(0)?),
            _ => Err(Error::InvalidInput(
                "an empty cache has no rows to join".into(),
            )),
        }
    }

    /// Drops the filler slots that every row starts with (a continuous cache only: its
    /// positions do not move with the slots).
    fn trim(&mut self) -> Result<()> {
        let Some(pads) = &mut self.left_pad else {
            return Ok(());
        };
        let common = pads.iter().copied().min().unwrap_or(0).min(self.len);
        if common == 0 {
            return Ok(());
        }
        // Contiguous copies: the attention GEMMs refuse a strided view of the slots.
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, common, self.len - common)?.contiguous()?;
            *v = v.narrow(2, common, self.len - common)?.contiguous()?;
        }
        pads.iter_mut().for_each(|p| *p -= common);
        self.len -= common;
        Ok(())
    }
}

/// `n` zero slots (filler no position attends to) before a cached `[batch, heads, slots, hd]`.
fn pad_slots(t: &Tensor, n: usize) -> Result<Tensor> {
    if n == 0 {
        return Ok(t.clone());
    }
    let (b, h, _, hd) = t.dims4()?;
    let zeros = Tensor::zeros((b, h, n, hd), t.dtype(), t.device())?;
    Ok(Tensor::cat(&[&zeros, t], 2)?)
}

/// One decoder block's weights. Loadable alone ([`Block::load`]) so that a model too large
/// for memory can be run block by block ([`crate::calibrate`]).
pub struct Block {
    layer: usize,
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// q, k, v, o, gate, up, down in [`LinearKind::ALL`] order, each `[out, in]`.
    linears: [Tensor; 7],
}

/// The position tables and mask a block needs for one call: tokens at positions
/// `past..past + tokens`.
pub struct Positions {
    cos: Tensor,
    sin: Tensor,
    /// `[1 or batch, 1, tokens, past + tokens]`, added to the attention scores.
    mask: Tensor,
}

impl Positions {
    /// Tables for `tokens` new positions after `past` cached ones.
    pub fn new(config: &LlamaConfig, past: usize, tokens: usize) -> Result<Self> {
        Self::padded(config, past, tokens, None)
    }

    /// Tables for a left-padded batch: no real position of row `b` attends to its first
    /// `left_pad[b]` (filler) positions.
    pub fn padded(
        config: &LlamaConfig,
        past: usize,
        tokens: usize,
        left_pad: Option<&[usize]>,
    ) -> Result<Self> {
        let (cos, sin) = rope_tables(config, past + tokens)?;
        Ok(Self {
            cos: cos.narrow(0, past, tokens)?,
            sin: sin.narrow(0, past, tokens)?,
            mask: causal_mask(tokens, past, left_pad)?,
        })
    }

    /// Tables for a left-padded batch whose row `b` numbers its positions from its first real
    /// token: slot `past + i` is position `past + i − left_pad[b]` (filler: position 0).
    pub fn per_row(
        config: &LlamaConfig,
        past: usize,
        tokens: usize,
        left_pad: &[usize],
    ) -> Result<Self> {
        let (cos, sin) = rope_tables(config, past + tokens)?;
        let positions: Vec<u32> = left_pad
            .iter()
            .flat_map(|&pad| (past..past + tokens).map(move |s| s.saturating_sub(pad) as u32))
            .collect();
        let index = Tensor::from_vec(positions, left_pad.len() * tokens, &Device::Cpu)?;
        let rows = (left_pad.len(), 1, tokens, config.head_dim());
        Ok(Self {
            cos: cos.index_select(&index, 0)?.reshape(rows)?,
            sin: sin.index_select(&index, 0)?.reshape(rows)?,
            mask: causal_mask(tokens, past, Some(left_pad))?,
        })
    }
}

impl Block {
    /// Loads block `layer` from a checkpoint.
    pub fn load(ckpt: &Checkpoint, layer: usize) -> Result<Self> {
        let config = ckpt.config();
        let prefix = format!("model.layers.{layer}.");
        let mut params = BTreeMap::new();
        for (name, shape, _) in tensor_specs(config) {
            if name.starts_with(&prefix) {
                let t = ckpt.load_expected(&name, &shape)?;
                params.insert(name, Tensor::from_vec(t.data, shape, &Device::Cpu)?);
            }
        }
        Ok(Self::from_params(&params, layer))
    }

    fn from_params(params: &BTreeMap<String, Tensor>, l: usize) -> Self {
        let take = |name: &str| params[name].clone();
        Block {
            layer: l,
            input_norm: take(&format!("model.layers.{l}.input_layernorm.weight")),
            post_attention_norm: take(&format!("model.layers.{l}.post_attention_layernorm.weight")),
            linears: LinearKind::ALL.map(|k| take(&format!("{}.weight", k.module_name(l)))),
        }
    }

    /// Runs the block on hidden states `x` (`[batch, tokens, d]`).
    pub fn forward(
        &self,
        config: &LlamaConfig,
        x: &Tensor,
        pos: &Positions,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        hook: &mut dyn LinearHook,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let mut parts = [BlockPart {
            shape: (b, t),
            pos,
            kv,
        }];
        let y = self.forward_rows(config, &x.reshape((b * t, d))?, &mut parts, hook)?;
        Ok(y.reshape((b, t, d))?)
    }

    /// Runs the block on the rows `x` (`[rows, d]`) of several parts, part after part and
    /// each batch-major: every linear once over all rows, attention per part on its own
    /// positions and cache.
    fn forward_rows(
        &self,
        config: &LlamaConfig,
        x: &Tensor,
        parts: &mut [BlockPart<'_>],
        hook: &mut dyn LinearHook,
    ) -> Result<Tensor> {
        let l = self.layer;
        let c = config;
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let d = c.hidden_size;
        let h = rms_norm(x, &self.input_norm, c.rms_norm_eps)?;
        let [wq, wk, wv, wo, wg, wu, wd] = &self.linears;
        let q_rows = linear(&h, wq, l, LinearKind::Q, hook)?;
        let k_rows = linear(&h, wk, l, LinearKind::K, hook)?;
        let v_rows = linear(&h, wv, l, LinearKind::V, hook)?;
        let mut outputs = Vec::with_capacity(parts.len());
        let mut offset = 0;
        for part in parts.iter_mut() {
            let (b, t) = part.shape;
            // (A narrow over all rows and a cat of one tensor are free in candle: the
            // one-part call, e.g. training, copies nothing more than before.)
            let split = |y: &Tensor, n: usize| -> Result<Tensor> {
                Ok(y.narrow(0, offset, b * t)?
                    .reshape((b, t, n, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = rope(&split(&q_rows, heads)?, &part.pos.cos, &part.pos.sin)?;
            let mut k = rope(&split(&k_rows, kv_heads)?, &part.pos.cos, &part.pos.sin)?;
            let mut v = split(&v_rows, kv_heads)?;
            if let Some(slot) = part.kv.as_mut() {
                if let Some((pk, pv)) = slot.as_ref() {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                // Detached: cached keys would otherwise hold every earlier step's autograd
                // graph when a trainable (Var-backed) model generates, which grew
                // self-generation to tens of GB. Nothing differentiates through a cache.
                **slot = Some((k.detach(), v.detach()));
            }
            // Grouped-query attention without copying keys: the `rep` query heads that share
            // a key/value head are stacked as `rep·t` rows against it (heads are kv-major).
            let rep = heads / kv_heads;
            let s = k.dim(2)?;
            let q = q.reshape((b, kv_heads, rep * t, hd))?;
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
            let scores = scores
                .reshape((b, heads, t, s))?
                .broadcast_add(&part.pos.mask)?;
            let att = softmax_last(&scores)?.reshape((b, kv_heads, rep * t, s))?;
            outputs.push(
                att.matmul(&v)?
                    .reshape((b, heads, t, hd))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b * t, d))?,
            );
            offset += b * t;
        }
        let o = Tensor::cat(&outputs, 0)?;
        let x = (x + linear(&o, wo, l, LinearKind::O, hook)?)?;
        let h = rms_norm(&x, &self.post_attention_norm, c.rms_norm_eps)?;
        let gate = candle_nn::ops::silu(&linear(&h, wg, l, LinearKind::Gate, hook)?)?;
        let up = linear(&h, wu, l, LinearKind::Up, hook)?;
        let down = linear(&(gate * up)?, wd, l, LinearKind::Down, hook)?;
        Ok((x + down)?)
    }
}

/// One part's view of a block call: its `(batch, tokens)`, positions and cached keys.
struct BlockPart<'a> {
    shape: (usize, usize),
    pos: &'a Positions,
    kv: Option<&'a mut CachedKeys>,
}

/// One part of a [`Llama::forward_parts`] pass: token ids after what its cache holds.
pub struct Part<'a> {
    /// Token ids `[batch, tokens]` (u32).
    pub ids: &'a Tensor,
    /// The cache the part's keys and values extend.
    pub cache: &'a mut KvCache,
}

/// A Llama-family decoder.
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    params: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Llama {
    /// Builds a model from tensors under their HF names (see [`tensor_specs`]); each must
    /// have exactly the shape the configuration implies. Var-backed tensors make it trainable.
    pub fn from_tensors(config: LlamaConfig, params: BTreeMap<String, Tensor>) -> Result<Self> {
        config.validate("model")?;
        let specs = tensor_specs(&config);
        for (name, shape, _) in &specs {
            let t = params.get(name).ok_or_else(|| Error::MissingTensor {
                file: "model".into(),
                tensor: name.clone(),
            })?;
            if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                return Err(Error::TensorShape {
                    file: "model".into(),
                    tensor: format!("{name} ({:?})", t.dtype()),
                    expected: shape.clone(),
                    got: t.dims().to_vec(),
                });
            }
        }
        if let Some(extra) = params
            .keys()
            .find(|k| !specs.iter().any(|(n, _, _)| n == *k))
        {
            return Err(Error::InvalidInput(format!(
                "tensor {extra} is not part of a {}-layer Llama",
                config.num_hidden_layers
            )));
        }
        let take = |name: &str| params[name].clone();
        let blocks = (0..config.num_hidden_layers)
            .map(|l| Block::from_params(&params, l))
            .collect();
        let embed = take("model.embed_tokens.weight");
        let lm_head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            take("lm_head.weight")
        };
        let norm = take("model.norm.weight");
        Ok(Self {
            embed,
            blocks,
            norm,
            lm_head,
            params,
            config,
        })
    }

    /// Loads every tensor of a checkpoint (GGUF dequantized to f32).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let config = ckpt.config().clone();
        let mut params = BTreeMap::new();
        for (name, shape, _) in tensor_specs(&config) {
            let t = ckpt.load_expected(&name, &shape)?;
            params.insert(name, Tensor::from_vec(t.data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(config, params)
    }

    /// A randomly initialised model (normal weights of std `0.02`·`scale`, unit norms), for tests.
    pub fn random(config: LlamaConfig, seed: u64, scale: f32) -> Result<Self> {
        use rand_distr::{Distribution, Normal};
        let mut rng = skillzip_core::seeded_rng(seed);
        let normal = Normal::new(0.0f32, 0.02 * scale)
            .map_err(|e| Error::InvalidInput(format!("scale {scale}: {e}")))?;
        let mut params = BTreeMap::new();
        for (name, shape, role) in tensor_specs(&config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = match role {
                TensorRole::Norm => (0..n).map(|_| 1.0 + normal.sample(&mut rng)).collect(),
                _ => (0..n).map(|_| normal.sample(&mut rng)).collect(),
            };
            params.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(config, params)
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Every parameter under its HF name.
    pub fn parameters(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    /// The weight `[out, in]` of one linear layer.
    pub fn linear_weight(&self, layer: usize, kind: LinearKind) -> Option<&Tensor> {
        let i = LinearKind::ALL.iter().position(|k| *k == kind)?;
        self.blocks.get(layer).map(|b| &b.linears[i])
    }

    /// Runs the decoder over `ids` (`[batch, tokens]`, u32) placed after the cached positions,
    /// appending to `cache` when given. Returns logits `[batch, tokens or 1, vocab]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        logits: Logits,
        hook: &mut dyn LinearHook,
    ) -> Result<Tensor> {
        let x = self.hidden_states(ids, cache, hook)?;
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.narrow(1, x.dim(1)? - 1, 1)?,
        };
        head_logits(&self.config, &x, &self.norm, &self.lm_head)
    }

    /// Logits `[rows, vocab]` of hidden states `[rows, d]` taken from
    /// [`Llama::hidden_states`]: the final norm and the LM head. Training computes the head
    /// only at the positions its loss reads (the head is a `vocab × d` GEMM per position).
    pub fn logits_of(&self, hidden_rows: &Tensor) -> Result<Tensor> {
        let (rows, d) = hidden_rows.dims2()?;
        let x = hidden_rows.reshape((1, rows, d))?;
        Ok(head_logits(&self.config, &x, &self.norm, &self.lm_head)?.squeeze(0)?)
    }

    /// The last block's output `[batch, tokens, d]`, before the final norm: what
    /// [`Llama::forward`] feeds the LM head, and the features a router reads.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        hook: &mut dyn LinearHook,
    ) -> Result<Tensor> {
        let mut out = self.hidden_parts(&mut [(ids, cache)], hook)?;
        Ok(out.swap_remove(0))
    }

    /// Runs several parts — e.g. a continuous batch's decode step and new prompts' prefills —
    /// in one pass: each weight is applied once to all the parts' token rows (the hook sees
    /// them part after part, each part batch-major), while attention runs per part on its own
    /// cache. Returns each part's last-position logits `[batch, vocab]`. Each part computes
    /// what it computes alone, to the rounding of the larger GEMMs.
    pub fn forward_parts(
        &self,
        parts: &mut [Part<'_>],
        hook: &mut dyn LinearHook,
    ) -> Result<Vec<Tensor>> {
        let mut inputs: Vec<(&Tensor, Option<&mut KvCache>)> = parts
            .iter_mut()
            .map(|p| (p.ids, Some(&mut *p.cache)))
            .collect();
        let hidden = self.hidden_parts(&mut inputs, hook)?;
        let last: Vec<Tensor> = hidden
            .iter()
            .map(|x| Ok(x.narrow(1, x.dim(1)? - 1, 1)?))
            .collect::<Result<_>>()?;
        let x = Tensor::cat(&last, 0)?;
        let logits = head_logits(&self.config, &x, &self.norm, &self.lm_head)?.squeeze(1)?;
        let mut out = Vec::with_capacity(last.len());
        let mut row = 0;
        for x in &last {
            let b = x.dim(0)?;
            out.push(logits.narrow(0, row, b)?);
            row += b;
        }
        Ok(out)
    }

    /// The last block's output of each part (`[batch, tokens, d]`), all parts in one pass.
    fn hidden_parts(
        &self,
        parts: &mut [(&Tensor, Option<&mut KvCache>)],
        hook: &mut dyn LinearHook,
    ) -> Result<Vec<Tensor>> {
        if parts.is_empty() {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        let d = self.config.hidden_size;
        let mut shapes = Vec::with_capacity(parts.len());
        let mut positions = Vec::with_capacity(parts.len());
        let mut rows = Vec::with_capacity(parts.len());
        for (ids, cache) in parts.iter_mut() {
            let (batch, tokens) = ids.dims2()?;
            let cache = cache.as_deref_mut();
            positions.push(self.positions(ids, cache.as_deref(), batch, tokens)?);
            if let Some(c) = cache
                && c.layers.len() != self.blocks.len()
            {
                c.layers = vec![None; self.blocks.len()];
            }
            rows.push(self.embed(ids)?.reshape((batch * tokens, d))?);
            shapes.push((batch, tokens));
        }
        let mut x = Tensor::cat(&rows, 0)?;
        // A step that fails part-way (a hook error) must not leave some blocks' keys extended.
        let saved: Vec<Option<Vec<CachedKeys>>> = parts
            .iter()
            .map(|(_, c)| c.as_deref().map(|c| c.layers.clone()))
            .collect();
        for (l, block) in self.blocks.iter().enumerate() {
            let mut block_parts: Vec<BlockPart<'_>> = parts
                .iter_mut()
                .zip(&shapes)
                .zip(&positions)
                .map(|(((_, cache), &shape), pos)| BlockPart {
                    shape,
                    pos,
                    kv: cache.as_deref_mut().map(|c| &mut c.layers[l]),
                })
                .collect();
            match block.forward_rows(&self.config, &x, &mut block_parts, hook) {
                Ok(y) => x = y,
                Err(e) => {
                    drop(block_parts);
                    for ((_, cache), saved) in parts.iter_mut().zip(saved) {
                        if let (Some(c), Some(saved)) = (cache.as_deref_mut(), saved) {
                            c.layers = saved;
                        }
                    }
                    return Err(e);
                }
            }
        }
        let mut out = Vec::with_capacity(parts.len());
        let mut row = 0;
        for ((_, cache), &(batch, tokens)) in parts.iter_mut().zip(&shapes) {
            if let Some(c) = cache.as_deref_mut() {
                c.len += tokens;
            }
            out.push(
                x.narrow(0, row, batch * tokens)?
                    .reshape((batch, tokens, d))?,
            );
            row += batch * tokens;
        }
        Ok(out)
    }

    /// Checks `ids` (`[batch, tokens]`) against the model and `cache` and builds their
    /// position tables.
    fn positions(
        &self,
        ids: &Tensor,
        cache: Option<&KvCache>,
        batch: usize,
        tokens: usize,
    ) -> Result<Positions> {
        let past = cache.map_or(0, |c| c.len);
        let left_pad = cache.and_then(|c| c.left_pad.clone());
        let row_positions = cache.is_some_and(|c| c.row_positions);
        if let Some(pad) = &left_pad
            && pad.len() != batch
        {
            return Err(Error::InvalidInput(format!(
                "the cache is padded for {} rows, the batch has {batch}",
                pad.len()
            )));
        }
        if tokens == 0 {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        if past + tokens > self.config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "{} positions exceed the model's {}",
                past + tokens,
                self.config.max_position_embeddings
            )));
        }
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= self.config.vocab_size {
            return Err(Error::InvalidInput(format!(
                "token id {max_id} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        match &left_pad {
            Some(pad) if row_positions => Positions::per_row(&self.config, past, tokens, pad),
            _ => Positions::padded(&self.config, past, tokens, left_pad.as_deref()),
        }
    }

    /// The token embeddings of `ids` (`[batch, tokens]`): `[batch, tokens, d]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            batch,
            tokens,
            self.config.hidden_size,
        ))?)
    }
}

/// Final norm and LM head: `[batch, tokens, d]` → `[batch, tokens, vocab]`.
pub fn head_logits(
    config: &LlamaConfig,
    x: &Tensor,
    norm: &Tensor,
    lm_head: &Tensor,
) -> Result<Tensor> {
    let h = rms_norm(x, norm, config.rms_norm_eps)?;
    let (b, t, d) = h.dims3()?;
    let out = h.reshape((b * t, d))?.matmul(&lm_head.t()?)?;
    Ok(out.reshape((b, t, config.vocab_size))?)
}

/// `x·Wᵀ` (+ the hook's extra output) for rows `x` `[rows, in]`.
fn linear(
    x: &Tensor,
    w: &Tensor,
    layer: usize,
    kind: LinearKind,
    hook: &mut dyn LinearHook,
) -> Result<Tensor> {
    hook.observe(layer, kind, x)?;
    let y = x.matmul(&w.t()?)?;
    match hook.extra(layer, kind, x)? {
        Some(extra) => Ok((y + extra)?),
        None => Ok(y),
    }
}

/// RMSNorm over the last dimension, composed from differentiable ops.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// Softmax over the last dimension in the differentiable generic form.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// HF RoPE on `[batch, heads, tokens, head_dim]` with `rotate_half`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// `[n, head_dim]` cos/sin tables for positions `0..n`, `θ_j = pos / base^(2j/hd)`, both
/// halves repeated (HF's `rotate_half` convention).
fn rope_tables(c: &LlamaConfig, n: usize) -> Result<(Tensor, Tensor)> {
    let hd = c.head_dim();
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    let inv_freq: Vec<f64> = (0..hd / 2)
        .map(|j| 1.0 / c.rope_theta.powf(2.0 * j as f64 / hd as f64))
        .collect();
    for pos in 0..n {
        for _half in 0..2 {
            for f in &inv_freq {
                let a = pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, hd), &Device::Cpu)?,
        Tensor::from_vec(sin, (n, hd), &Device::Cpu)?,
    ))
}

/// `[rows, 1, tokens, past + tokens]`: 0 where query `i` (at position `past + i`) may attend,
/// −∞ after it and, for a real position of a left-padded row, on the row's filler. Filler
/// positions attend causally among themselves so that no softmax row is empty (−∞ everywhere
/// would give NaN, and NaN keys poison even masked scores).
fn causal_mask(tokens: usize, past: usize, left_pad: Option<&[usize]>) -> Result<Tensor> {
    let s = past + tokens;
    let no_pad = [0usize];
    let pads = left_pad.unwrap_or(&no_pad);
    let mut data = Vec::with_capacity(pads.len() * tokens * s);
    for &pad in pads {
        for i in 0..tokens {
            let query = past + i;
            data.extend((0..s).map(|j| {
                let hidden = j > query || (query >= pad && j < pad);
                if hidden { f32::NEG_INFINITY } else { 0.0 }
            }));
        }
    }
    Ok(Tensor::from_vec(
        data,
        (pads.len(), 1, tokens, s),
        &Device::Cpu,
    )?)
}
