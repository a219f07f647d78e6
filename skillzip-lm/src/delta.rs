//! Weight deltas `Δ = θ_tuned − θ_base`, streamed one tensor at a time.
//!
//! [`DeltaReader::new`] checks that two checkpoints describe the same architecture (every
//! configuration field, every tensor name and shape) before anything is subtracted, with an
//! error naming the field or tensor and both files. [`DeltaReader::next_delta`] then reads one
//! tensor from each and returns their difference, so memory stays at two tensors.

use crate::checkpoint::{Checkpoint, F32Tensor, TensorRole, tensor_specs};
use crate::error::{Error, Result};

/// One tensor's base value and delta.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDelta {
    /// HF name.
    pub name: String,
    /// What the tensor is (a linear weight or not: DESIGN §4.8).
    pub role: TensorRole,
    /// The base tensor.
    pub base: F32Tensor,
    /// `tuned − base`, same shape.
    pub delta: Vec<f32>,
}

/// Streams the deltas of one fine-tuned checkpoint against its base.
#[derive(Debug)]
pub struct DeltaReader<'a> {
    base: &'a Checkpoint,
    tuned: &'a Checkpoint,
    specs: Vec<(String, Vec<usize>, TensorRole)>,
    next: usize,
}

/// Checks that `tuned` has `base`'s architecture: configuration and every tensor's presence.
pub fn check_same_architecture(base: &Checkpoint, tuned: &Checkpoint) -> Result<()> {
    let (a, b) = (base.config(), tuned.config());
    let fields = [
        ("vocab_size", a.vocab_size, b.vocab_size),
        ("hidden_size", a.hidden_size, b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size,
            b.intermediate_size,
        ),
        (
            "num_hidden_layers",
            a.num_hidden_layers,
            b.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            a.num_attention_heads,
            b.num_attention_heads,
        ),
        (
            "num_key_value_heads",
            a.num_key_value_heads,
            b.num_key_value_heads,
        ),
        (
            "tie_word_embeddings",
            a.tie_word_embeddings as usize,
            b.tie_word_embeddings as usize,
        ),
    ];
    for (field, x, y) in fields {
        if x != y {
            return Err(Error::ArchitectureMismatch {
                what: format!(
                    "{field} differs: {x} in {} but {y} in {}",
                    base.label(),
                    tuned.label()
                ),
            });
        }
    }
    // Compared as the f32 the model computes with: GGUF stores these as f32, HF configs as
    // decimal text, so the same model can carry 1e-5 and 9.99999974e-6.
    for (field, x, y) in [
        ("rms_norm_eps", a.rms_norm_eps, b.rms_norm_eps),
        ("rope_theta", a.rope_theta, b.rope_theta),
    ] {
        if x as f32 != y as f32 {
            return Err(Error::ArchitectureMismatch {
                what: format!(
                    "{field} differs: {x} in {} but {y} in {}",
                    base.label(),
                    tuned.label()
                ),
            });
        }
    }
    for (name, _, _) in tensor_specs(a) {
        for ckpt in [base, tuned] {
            if !ckpt.contains(&name) {
                return Err(Error::MissingTensor {
                    file: ckpt.label().to_string(),
                    tensor: name.clone(),
                });
            }
        }
    }
    Ok(())
}

impl<'a> DeltaReader<'a> {
    /// Checks the two checkpoints ([`check_same_architecture`]) and prepares to stream.
    pub fn new(base: &'a Checkpoint, tuned: &'a Checkpoint) -> Result<Self> {
        check_same_architecture(base, tuned)?;
        Ok(Self {
            base,
            tuned,
            specs: tensor_specs(base.config()),
            next: 0,
        })
    }

    /// How many tensors the stream yields.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether the stream yields nothing (never, for a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The next tensor's delta, or `None` at the end.
    pub fn next_delta(&mut self) -> Option<Result<TensorDelta>> {
        let (name, shape, role) = self.specs.get(self.next)?.clone();
        self.next += 1;
        Some(self.read(name, shape, role))
    }

    fn read(&self, name: String, shape: Vec<usize>, role: TensorRole) -> Result<TensorDelta> {
        let base = self.base.load_expected(&name, &shape)?;
        let tuned = self.tuned.load_expected(&name, &shape)?;
        let delta = tuned
            .data
            .iter()
            .zip(&base.data)
            .map(|(t, b)| t - b)
            .collect();
        Ok(TensorDelta {
            name,
            role,
            base,
            delta,
        })
    }
}

impl Iterator for DeltaReader<'_> {
    type Item = Result<TensorDelta>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_delta()
    }
}
