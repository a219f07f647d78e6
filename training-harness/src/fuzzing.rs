//! The checks behind the `trainer_checkpoint` fuzz target (and its corpus replay test): the
//! readers of a training checkpoint's files on arbitrary bytes.

use std::path::Path;

use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;

use crate::train::{parse_f32_tensors, parse_state};

/// The trainable tensors of [`LlamaConfig::tiny`] in checkpoint order: what the fuzzed tensor
/// file is read as.
pub fn tiny_trainable_specs() -> Vec<(String, Vec<usize>)> {
    tensor_specs(&LlamaConfig::tiny())
        .into_iter()
        .filter(|(_, _, role)| matches!(role, TensorRole::Linear(..)))
        .map(|(name, shape, _)| (name, shape))
        .collect()
}

/// Reads arbitrary bytes both as a checkpoint tensor file (for a tiny model) and as its
/// `state.json`: a typed error, or tensors of exactly the expected sizes and a state.
pub fn check_trainer_checkpoint_bytes(data: &[u8]) {
    let specs = tiny_trainable_specs();
    if let Ok(tensors) = parse_f32_tensors(data, Path::new("fuzz"), &specs) {
        assert_eq!(tensors.len(), specs.len());
        for (t, (name, shape)) in tensors.iter().zip(&specs) {
            assert_eq!(t.len(), shape.iter().product::<usize>(), "{name}");
        }
    }
    let _ = parse_state(data, Path::new("fuzz"));
}
