//! Helpers shared by the boundary tests: logits comparison, a hand-written GGUF v3 writer,
//! ggml's reference Q8_0/Q4_1 quantizers, safetensors written by hand, and (`fixture`) a
//! tiny base model with fine-tunes and calibrations on disk.
//!
//! Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod fixture;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use half::f16;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{LinearHook, Llama, Logits, NoHook};

/// `[batch, tokens]` ids as a tensor.
pub fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

/// A fixed pseudo-random token sequence below `vocab`.
pub fn tokens(n: usize, vocab: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + salt * 11 + 5) % vocab as u32)
        .collect()
}

/// Logits `[batch, tokens, vocab]` of a full forward pass, flattened.
pub fn logits_all(model: &Llama, rows: &[&[u32]]) -> Vec<f32> {
    logits_with(model, rows, &mut NoHook)
}

/// Same as [`logits_all`] with a hook.
pub fn logits_with(model: &Llama, rows: &[&[u32]], hook: &mut dyn LinearHook) -> Vec<f32> {
    model
        .forward(&ids(rows), None, Logits::All, hook)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts `|a − b| ≤ tol·max(1, |b|)` elementwise, naming the first offender.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let err = (x - y).abs();
        assert!(
            err <= tol * y.abs().max(1.0),
            "{what}: element {i}: {x} vs {y} (|diff| {err} > {tol}·max(1,|b|))"
        );
    }
}

/// Asserts bit equality, naming the first offender.
pub fn assert_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: element {i}: {x} vs {y} are not bit-identical"
        );
    }
}

/// A tensor's values, row-major.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Tensors by name as (shape, row-major values).
pub type Values = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A model's parameters as plain vectors.
pub fn param_values(model: &Llama) -> Values {
    model
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), (t.dims().to_vec(), values(t))))
        .collect()
}

/// Rebuilds a model of `config` from plain vectors.
pub fn model_from_values(config: &LlamaConfig, params: &Values) -> Llama {
    let tensors = params
        .iter()
        .map(|(n, (shape, data))| {
            (
                n.clone(),
                Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    Llama::from_tensors(config.clone(), tensors).unwrap()
}

// ---------------------------------------------------------------------------------------------
// GGUF v3, written by hand (ggml's gguf.c layout).

/// A metadata value of the GGUF writer.
#[derive(Debug, Clone)]
pub enum Meta {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

/// ggml type ids.
pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q8_0: u32 = 8;

/// One tensor for the GGUF writer: shape outermost first (HF order), encoded data.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_meta(b: &mut Vec<u8>, v: &Meta) {
    let ty = |b: &mut Vec<u8>, t: u32| b.extend_from_slice(&t.to_le_bytes());
    match v {
        Meta::U32(x) => {
            ty(b, 4);
            b.extend_from_slice(&x.to_le_bytes());
        }
        Meta::I32(x) => {
            ty(b, 5);
            b.extend_from_slice(&x.to_le_bytes());
        }
        Meta::F32(x) => {
            ty(b, 6);
            b.extend_from_slice(&x.to_le_bytes());
        }
        Meta::Bool(x) => {
            ty(b, 7);
            b.push(*x as u8);
        }
        Meta::Str(s) => {
            ty(b, 8);
            put_str(b, s);
        }
        Meta::StrArray(items) => {
            ty(b, 9);
            ty(b, 8);
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(b, s);
            }
        }
        Meta::I32Array(items) => {
            ty(b, 9);
            ty(b, 5);
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// The bytes of a GGUF v3 file (alignment 32) and the offset where its data section starts.
pub fn write_gguf(meta: &[(&str, Meta)], tensors: &[GgufTensor]) -> (Vec<u8>, usize) {
    const ALIGN: usize = 32;
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        put_meta(&mut b, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            b.extend_from_slice(&(d as u64).to_le_bytes());
        }
        b.extend_from_slice(&t.ggml_type.to_le_bytes());
        b.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    while b.len() % ALIGN != 0 {
        b.push(0);
    }
    let data_start = b.len();
    for (i, t) in tensors.iter().enumerate() {
        b.extend_from_slice(&t.data);
        if i + 1 < tensors.len() {
            while (b.len() - data_start) % ALIGN != 0 {
                b.push(0);
            }
        }
    }
    (b, data_start)
}

/// convert_hf_to_gguf's permutation of a query/key weight `[rows, cols]` with `heads` heads:
/// `w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn permute_qk(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = Vec::with_capacity(w.len());
    // Output index (h, j, t) in C order reads input index (h, t, j).
    for h in 0..heads {
        for j in 0..hd / 2 {
            for t in 0..2 {
                let src = h * hd + t * (hd / 2) + j;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub fn encode_f32(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn encode_f16(data: &[f32]) -> Vec<u8> {
    data.iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// ggml's `quantize_row_q8_0_ref`; returns the blocks and their dequantized values
/// (`q·d` with `d` widened from f16).
pub fn quantize_q8_0(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(x.len() % 32, 0);
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d16 = f16::from_f32(d);
        bytes.extend_from_slice(&d16.to_le_bytes());
        for v in blk {
            let q = (v * id).round() as i8;
            bytes.push(q as u8);
            deq.push(q as f32 * d16.to_f32());
        }
    }
    (bytes, deq)
}

/// ggml's `quantize_row_q4_1_ref`; returns the blocks and their dequantized values
/// (`q·d + m` with `d`, `m` widened from f16).
pub fn quantize_q4_1(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(x.len() % 32, 0);
    let mut bytes = Vec::new();
    let mut deq = Vec::new();
    for blk in x.chunks_exact(32) {
        let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
        let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (d16, m16) = (f16::from_f32(d), f16::from_f32(min));
        bytes.extend_from_slice(&d16.to_le_bytes());
        bytes.extend_from_slice(&m16.to_le_bytes());
        let code = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
        let codes: Vec<u8> = blk.iter().map(|v| code(*v)).collect();
        for j in 0..16 {
            bytes.push(codes[j] | (codes[j + 16] << 4));
        }
        let (d, m) = (d16.to_f32(), m16.to_f32());
        deq.extend(codes.iter().map(|&q| q as f32 * d + m));
    }
    (bytes, deq)
}

/// The llama.cpp name of an HF tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, module) = rest.split_once('.').unwrap();
    let leaf = match module {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{leaf}.weight")
}

/// A 96-token byte-level BPE vocabulary with two merges (`h i`, `Ġ hi`) and ChatML
/// control tokens 0..3, padded or cut to `vocab` tokens.
pub fn tokenizer_meta(vocab: usize) -> Vec<(&'static str, Meta)> {
    let mut tokens: Vec<String> = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "Ġ",
        "hi",
        "Ġhi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut c = b'!';
    while tokens.len() < vocab {
        tokens.push((c as char).to_string());
        c += 1;
    }
    tokens.truncate(vocab);
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| if i < 3 { 3 } else { 1 })
        .collect();
    vec![
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Meta::StrArray(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32Array(types)),
        (
            "tokenizer.ggml.merges",
            Meta::StrArray(vec!["h i".into(), "Ġ hi".into()]),
        ),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        (
            "tokenizer.chat_template",
            Meta::Str(
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}".into(),
            ),
        ),
    ]
}

/// The `llama.*` metadata of a configuration, as llama.cpp writes it (u32 counts, f32 floats).
pub fn llama_meta(c: &LlamaConfig) -> Vec<(&'static str, Meta)> {
    vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("general.name", Meta::Str("tiny".into())),
        ("llama.block_count", Meta::U32(c.num_hidden_layers as u32)),
        (
            "llama.context_length",
            Meta::U32(c.max_position_embeddings as u32),
        ),
        ("llama.embedding_length", Meta::U32(c.hidden_size as u32)),
        (
            "llama.feed_forward_length",
            Meta::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count",
            Meta::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            Meta::U32(c.num_key_value_heads as u32),
        ),
        ("llama.rope.freq_base", Meta::F32(c.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.dimension_count", Meta::U32(c.head_dim() as u32)),
    ]
}

/// How one tensor is stored in a GGUF written by [`gguf_of`].
pub type Quantize = fn(&str) -> u32;

/// A GGUF of `model` (HF layout) in llama.cpp's layout: llama.cpp names, q/k rows permuted,
/// each tensor stored as `quantize(hf_name)` says. Returns the file bytes and the HF-layout
/// values the file holds once dequantized (the model the GGUF must reproduce).
pub fn gguf_of(model: &Llama, quantize: Quantize) -> (Vec<u8>, Values) {
    let c = model.config();
    let mut tensors = Vec::new();
    let mut expected = BTreeMap::new();
    for (name, (shape, data)) in param_values(model) {
        let ty = quantize(&name);
        let heads = if name.ends_with("q_proj.weight") {
            Some(c.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(c.num_key_value_heads)
        } else {
            None
        };
        let rows = shape[0];
        let (bytes, deq) = match ty {
            GGML_F32 => (encode_f32(&data), data.clone()),
            GGML_F16 => (
                encode_f16(&data),
                data.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
            ),
            GGML_Q8_0 => quantize_q8_0(&data),
            GGML_Q4_1 => quantize_q4_1(&data),
            other => panic!("ggml type {other}"),
        };
        // Row-wise quantization commutes with the row permutation, so the file holds the
        // permuted rows of the quantized tensor.
        let file_bytes = match heads {
            Some(h) => {
                let row_bytes = bytes.len() / rows;
                let as_rows: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                let order = permute_qk(&as_rows, rows, 1, h);
                order
                    .iter()
                    .flat_map(|&r| {
                        let r = r as usize;
                        bytes[r * row_bytes..(r + 1) * row_bytes].iter().copied()
                    })
                    .collect()
            }
            None => bytes,
        };
        tensors.push(GgufTensor {
            name: gguf_name(&name),
            shape: shape.clone(),
            ggml_type: ty,
            data: file_bytes,
        });
        expected.insert(name, (shape, deq));
    }
    let mut meta = llama_meta(c);
    meta.extend(tokenizer_meta(c.vocab_size));
    (write_gguf(&meta, &tensors).0, expected)
}

// ---------------------------------------------------------------------------------------------
// Safetensors written by hand.

/// One tensor for [`write_safetensors`]: name, safetensors dtype, shape, raw bytes.
pub type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Writes `tensors` to `path` with the `safetensors` crate.
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A model's parameters as F32 [`RawTensor`]s.
pub fn raw_f32(model: &Llama) -> Vec<RawTensor> {
    param_values(model)
        .into_iter()
        .map(|(n, (shape, data))| (n, safetensors::Dtype::F32, shape, encode_f32(&data)))
        .collect()
}

/// Writes `config.json` for `config` into `dir`.
pub fn write_config(dir: &Path, config: &LlamaConfig) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config.to_hf_json()).unwrap(),
    )
    .unwrap();
}

/// GGUF writer metadata as the values the GGUF reader returns (what `Tokenizer::from_gguf`
/// takes): unsigned → `U64`, signed → `I64`, floats → `F64`.
pub fn meta_values(meta: &[(&str, Meta)]) -> BTreeMap<String, skillzip_lm::gguf::Value> {
    use skillzip_lm::gguf::Value;
    let value = |m: &Meta| match m {
        Meta::U32(x) => Value::U64(*x as u64),
        Meta::I32(x) => Value::I64(*x as i64),
        Meta::F32(x) => Value::F64(*x as f64),
        Meta::Bool(x) => Value::Bool(*x),
        Meta::Str(s) => Value::String(s.clone()),
        Meta::StrArray(v) => Value::Array(v.iter().map(|s| Value::String(s.clone())).collect()),
        Meta::I32Array(v) => Value::Array(v.iter().map(|x| Value::I64(*x as i64)).collect()),
    };
    meta.iter()
        .map(|(k, v)| (k.to_string(), value(v)))
        .collect()
}
