//! A GGUF written by hand in llama.cpp's layout (names, q/k rows permuted by
//! `convert_hf_to_gguf`, Q8_0/Q4_1 blocks quantized by ggml's reference rule) loads as the
//! HF-layout model it came from; the GGUF parser survives every truncation and random header
//! mutation without panicking or allocating more than a small multiple of the file.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{
    GGML_F16, GGML_F32, GGML_Q4_1, GGML_Q8_0, assert_bits, gguf_of, logits_all, model_from_values,
    param_values, tokens,
};
use rand::RngExt;
use skillzip_lm::Error;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::gguf::GgufFile;
use skillzip_lm::model::Llama;
use skillzip_lm::tokenizer::{ChatTemplate, Tokenizer};

// ---------------------------------------------------------------------------------------------
// The largest single allocation made by the current thread, to show that sizes read from a
// file are checked before anything is allocated for them.

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation_of(f: impl FnOnce()) -> usize {
    LARGEST.with(|m| m.set(0));
    f();
    LARGEST.with(|m| m.get())
}

// ---------------------------------------------------------------------------------------------

fn write_file(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn all_f32(_: &str) -> u32 {
    GGML_F32
}

/// Quantized q/k (so the unpermutation is applied to dequantized rows), v, MLP and
/// embeddings; one F16 norm; the rest F32. Only tensors whose rows are multiples of 32.
fn mixed(name: &str) -> u32 {
    match name {
        "model.layers.0.self_attn.k_proj.weight" => GGML_Q8_0,
        "model.layers.1.self_attn.q_proj.weight" => GGML_Q4_1,
        "model.layers.0.self_attn.v_proj.weight" => GGML_Q4_1,
        "model.layers.0.mlp.gate_proj.weight" => GGML_Q4_1,
        "model.layers.1.mlp.up_proj.weight" => GGML_Q8_0,
        "model.embed_tokens.weight" => GGML_Q8_0,
        "lm_head.weight" => GGML_Q4_1,
        "model.layers.1.post_attention_layernorm.weight" => GGML_F16,
        _ => GGML_F32,
    }
}

#[test]
fn an_f32_gguf_in_llama_cpp_layout_gives_the_hf_models_logits_bit_identically() {
    let model = Llama::random(LlamaConfig::tiny(), 21, 20.0).unwrap();
    let (bytes, expected) = gguf_of(&model, all_f32);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(write_file(dir.path(), &bytes)).unwrap();
    assert!(ckpt.is_gguf());

    // Equal to the HF configuration, rms_norm_eps included although GGUF stores it as f32.
    assert_eq!(ckpt.config(), &LlamaConfig::tiny());

    let loaded = Llama::from_checkpoint(&ckpt).unwrap();
    let got = param_values(&loaded);
    assert_eq!(got.len(), expected.len());
    for (name, (shape, data)) in &expected {
        assert_eq!(&got[name].0, shape, "{name}");
        assert_bits(&got[name].1, data, name);
    }
    let seq = tokens(9, 96, 1);
    assert_bits(
        &logits_all(&loaded, &[&seq]),
        &logits_all(&model, &[&seq]),
        "logits",
    );
}

#[test]
fn a_quantized_gguf_gives_the_logits_of_its_dequantized_hf_model_bit_identically() {
    let config = LlamaConfig {
        tie_word_embeddings: false,
        ..LlamaConfig::tiny()
    };
    let model = Llama::random(config.clone(), 22, 20.0).unwrap();
    let (bytes, expected) = gguf_of(&model, mixed);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(write_file(dir.path(), &bytes)).unwrap();
    assert!(!ckpt.config().tie_word_embeddings);
    let loaded = Llama::from_checkpoint(&ckpt).unwrap();
    let got = param_values(&loaded);
    for (name, (_, data)) in &expected {
        assert_bits(&got[name].1, data, name);
    }
    // The quantization really changed the weights (so the comparison is not vacuous).
    let original = param_values(&model);
    for name in ["model.layers.1.self_attn.q_proj.weight", "lm_head.weight"] {
        assert_ne!(original[name].1, expected[name].1, "{name}");
    }
    let reference = model_from_values(&config, &expected);
    let seq = tokens(9, 96, 2);
    assert_bits(
        &logits_all(&loaded, &[&seq]),
        &logits_all(&reference, &[&seq]),
        "logits",
    );
}

#[test]
fn the_gguf_tokenizer_metadata_builds_a_working_tokenizer() {
    let model = Llama::random(LlamaConfig::tiny(), 23, 1.0).unwrap();
    let (bytes, _) = gguf_of(&model, all_f32);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(write_file(dir.path(), &bytes)).unwrap();
    let tok = Tokenizer::from_gguf(ckpt.gguf_metadata().unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 96);
    // "hi" and "Ġhi" are ids 4 and 5; control tokens match whole.
    assert_eq!(tok.encode("hi hi").unwrap(), vec![4, 5]);
    assert_eq!(tok.encode("<|im_start|>hi").unwrap(), vec![1, 4]);
    assert_eq!(tok.decode(&[1, 4, 5], true).unwrap(), "hi hi");
    assert!(matches!(
        tok.chat_template(),
        Some(ChatTemplate::ChatMl { .. })
    ));
    assert_eq!(tok.stop_ids(), vec![2]);
}

#[test]
fn a_needed_tensor_of_an_unsupported_ggml_type_is_a_typed_error() {
    let model = Llama::random(LlamaConfig::tiny(), 24, 1.0).unwrap();
    let (mut bytes, _) = gguf_of(&model, all_f32);
    // Retype blk.1.ffn_down.weight as Q4_K (12): the header still parses (its length is
    // unknown), but loading the tensor fails.
    let at = type_field_of(&bytes, "blk.1.ffn_down.weight");
    bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(write_file(dir.path(), &bytes)).unwrap();
    match Llama::from_checkpoint(&ckpt) {
        Err(Error::UnsupportedGgmlType {
            tensor, ggml_type, ..
        }) => {
            assert_eq!(tensor, "blk.1.ffn_down.weight");
            assert!(ggml_type.contains("Q4_K"), "{ggml_type}");
        }
        other => panic!("expected an unsupported-type error, got {other:?}"),
    }
}

#[test]
fn a_gguf_of_another_architecture_or_with_a_missing_field_is_a_config_error() {
    let model = Llama::random(LlamaConfig::tiny(), 25, 1.0).unwrap();
    let (bytes, _) = gguf_of(&model, all_f32);
    let dir = tempfile::tempdir().unwrap();
    // "llama" → "qwen2"-like: same length so the file stays valid.
    let mut other = bytes.clone();
    let at = find(&other, b"\x05\x00\x00\x00\x00\x00\x00\x00llama").unwrap() + 8;
    other[at..at + 5].copy_from_slice(b"llamb");
    let r = Checkpoint::open(write_file(dir.path(), &other));
    assert!(
        matches!(&r, Err(Error::Config { what, .. }) if what.contains("llamb")),
        "{r:?}"
    );
    // llama.block_count → llama.block_cOunt: the key is missing.
    let mut missing = bytes.clone();
    let at = find(&missing, b"llama.block_count").unwrap();
    missing[at + 12] = b'O';
    let r = Checkpoint::open(write_file(dir.path(), &missing));
    assert!(
        matches!(&r, Err(Error::Config { what, .. }) if what.contains("llama.block_count")),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Parser robustness.

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Byte offset of the first dimension (`ne[0]`) of tensor `name`'s info.
fn dims_field_of(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    find(bytes, &key).unwrap() + key.len() + 4
}

/// Byte offset of tensor `name`'s ggml type.
fn type_field_of(bytes: &[u8], name: &str) -> usize {
    let dims = dims_field_of(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[dims - 4..dims].try_into().unwrap()) as usize;
    dims + 8 * n_dims
}

/// A small GGUF (one block, every tensor row a multiple of 32) and the length of its header
/// (where the data section starts).
fn small_gguf() -> (Vec<u8>, usize) {
    let config = LlamaConfig {
        vocab_size: 40,
        hidden_size: 32,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..LlamaConfig::tiny()
    };
    let model = Llama::random(config, 26, 1.0).unwrap();
    let (bytes, _) = gguf_of(&model, mixed);
    let file = GgufFile::parse(&bytes, "small").unwrap();
    // The writer puts nothing after the last tensor: the data section ends with the file.
    let data_len = file.tensors.iter().map(|t| t.offset + t.len).max().unwrap();
    let header_len = bytes.len() - data_len;
    (bytes, header_len)
}

/// Parses `bytes` and, when they parse, runs everything a checkpoint runs on a GGUF:
/// configuration, every tensor's dequantization, the tokenizer. Must never panic.
fn exercise(bytes: &[u8]) -> bool {
    let Ok(file) = GgufFile::parse(bytes, "mutated") else {
        return false;
    };
    let _ = LlamaConfig::from_gguf(&file);
    for t in &file.tensors {
        let _ = file.dequantize(t);
    }
    let _ = Tokenizer::from_gguf(&file.metadata);
    true
}

#[test]
fn every_truncation_is_an_error() {
    let (bytes, _) = small_gguf();
    assert!(exercise(&bytes));
    for len in 0..bytes.len() {
        match GgufFile::parse(&bytes[..len], "truncated") {
            Err(Error::Gguf { .. }) => {}
            other => panic!("truncated to {len} of {} bytes: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn random_header_mutations_never_panic_nor_allocate_much() {
    let (bytes, header_len) = small_gguf();
    let limit = 64 * bytes.len();
    let mut rng = skillzip_core::seeded_rng(0x6767_7566);
    let huge = [
        u64::MAX,
        u64::MAX / 2,
        1 << 62,
        1 << 40,
        1 << 32,
        u32::MAX as u64,
        bytes.len() as u64,
        0,
    ];
    let (mut parsed, mut rejected) = (0, 0);
    for iteration in 0..3000 {
        let mut m = bytes.clone();
        let edits = rng.random_range(1..=3);
        let mut log = Vec::new();
        for _ in 0..edits {
            if rng.random_bool(0.3) {
                let at = rng.random_range(0..header_len - 8);
                let v = huge[rng.random_range(0..huge.len())];
                m[at..at + 8].copy_from_slice(&v.to_le_bytes());
                log.push(format!("u64 {v} at {at}"));
            } else {
                let at = rng.random_range(0..header_len);
                let v: u8 = rng.random();
                m[at] = v;
                log.push(format!("byte {v} at {at}"));
            }
        }
        let mut ok = false;
        let largest = largest_allocation_of(|| {
            let r = std::panic::catch_unwind(|| exercise(&m));
            match r {
                Ok(o) => ok = o,
                Err(_) => panic!("iteration {iteration}: panicked after {log:?}"),
            }
        });
        assert!(
            largest <= limit,
            "iteration {iteration}: allocated {largest} bytes at once for a {}-byte file after {log:?}",
            bytes.len()
        );
        if ok {
            parsed += 1;
        } else {
            rejected += 1;
        }
    }
    // Both outcomes occur: the mutations reach past the first checks.
    assert!(
        parsed > 100 && rejected > 100,
        "{parsed} parsed, {rejected} rejected"
    );
}

#[test]
fn huge_counts_and_lengths_are_rejected_without_allocating() {
    let (bytes, _) = small_gguf();
    let tokens_count = find(&bytes, b"tokenizer.ggml.tokens").unwrap() + 21 + 8;
    let first_dim = dims_field_of(&bytes, "blk.0.ffn_down.weight");
    let n_dims = first_dim - 4;
    let offset = type_field_of(&bytes, "blk.0.ffn_down.weight") + 4;
    let fields: BTreeMap<&str, (usize, usize)> = [
        ("tensor count", (8, 8)),
        ("metadata count", (16, 8)),
        ("first key length", (24, 8)),
        ("token array length", (tokens_count, 8)),
        ("tensor dimension count", (n_dims, 4)),
        ("tensor dimension", (first_dim, 8)),
        ("tensor offset", (offset, 8)),
    ]
    .into_iter()
    .collect();
    for (what, (at, width)) in fields {
        for v in [u64::MAX, 1 << 62, 1 << 40, u32::MAX as u64] {
            let mut m = bytes.clone();
            m[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            let start = std::time::Instant::now();
            let mut r = None;
            let largest =
                largest_allocation_of(|| r = Some(GgufFile::parse(&m, "huge").map(|_| ())));
            let r = r.unwrap();
            assert!(matches!(r, Err(Error::Gguf { .. })), "{what} = {v}: {r:?}");
            assert!(
                largest <= 16 * bytes.len(),
                "{what} = {v}: allocated {largest}"
            );
            assert!(start.elapsed().as_secs_f64() < 1.0, "{what} = {v}: slow");
        }
    }
}
