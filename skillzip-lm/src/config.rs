//! [`LlamaConfig`]: the hyper-parameters of a Llama-family decoder, read from GGUF metadata or
//! an HF `config.json`, and validated before a model is built from them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// The hyper-parameters of a Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest context the positions are defined for.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the token-embedding matrix.
    pub tie_word_embeddings: bool,
}

/// The subset of an HF `config.json` this crate reads (unknown fields are ignored: HF configs
/// carry many).
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    head_dim: Option<usize>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_positions() -> usize {
    2048
}

impl LlamaConfig {
    /// Head width `d / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the values a model relies on; `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Config {
                file: file.to_string(),
                what,
            })
        };
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in sizes {
            if v == 0 || v > 1 << 24 {
                return bad(format!("{name} = {v} is out of range"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self.head_dim().is_multiple_of(2)
        {
            return bad(format!(
                "hidden_size {} is not an even head width times {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return bad(format!(
                "rms_norm_eps {} is out of range",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!("rope_theta {} is out of range", self.rope_theta));
        }
        Ok(())
    }

    /// Reads the configuration of a `llama` GGUF file.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self> {
        let label = file.label();
        let bad = |what: String| Error::Config {
            file: label.to_string(),
            what,
        };
        let arch = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("general.architecture is missing".into()))?;
        if arch != "llama" {
            return Err(bad(format!(
                "architecture {arch:?} is not supported (only llama)"
            )));
        }
        let int = |key: &str| -> Result<usize> {
            let full = format!("llama.{key}");
            file.get(&full)
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("{full} is missing or not an integer")))
        };
        let float = |key: &str, default: Option<f64>| -> Result<f64> {
            let full = format!("llama.{key}");
            match file.get(&full) {
                // GGUF stores these as f32: read 1e-5f32 as 1e-5 (its shortest decimal), the
                // value an HF config.json of the same model holds.
                Some(v) => v
                    .as_f64()
                    .map(|x| match x as f32 {
                        y if y as f64 == x => y.to_string().parse().unwrap_or(x),
                        _ => x,
                    })
                    .ok_or_else(|| bad(format!("{full} is not a number"))),
                None => default.ok_or_else(|| bad(format!("{full} is missing"))),
            }
        };
        let heads = int("attention.head_count")?;
        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| bad("tensor token_embd.weight is missing".into()))?;
        let vocab_size = match file.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => embd.shape[0],
        };
        let hidden_size = int("embedding_length")?;
        if let Some(rope_dims) = file.get("llama.rope.dimension_count")
            && rope_dims.as_u64() != Some((hidden_size / heads.max(1)) as u64)
        {
            return Err(bad(format!(
                "llama.rope.dimension_count {rope_dims:?} is not the head width (partial RoPE is not supported)"
            )));
        }
        if file.get("llama.rope.scaling.type").is_some() {
            return Err(bad("RoPE scaling is not supported".into()));
        }
        let config = Self {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: match file.get("llama.attention.head_count_kv") {
                Some(_) => int("attention.head_count_kv")?,
                None => heads,
            },
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", None)?,
            rope_theta: float("rope.freq_base", Some(10_000.0))?,
            max_position_embeddings: int("context_length")?,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
        };
        config.validate(label)?;
        Ok(config)
    }

    /// Parses an HF `config.json` of a `LlamaForCausalLM`-shaped model.
    pub fn from_hf_json(bytes: &[u8], file: &str) -> Result<Self> {
        let bad = |what: String| Error::Config {
            file: file.to_string(),
            what,
        };
        let hf: HfConfig =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a model config: {e}")))?;
        let llama_like = hf.model_type.as_deref().is_none_or(|t| t == "llama")
            || hf
                .architectures
                .iter()
                .flatten()
                .any(|a| a == "LlamaForCausalLM");
        if !llama_like {
            return Err(bad(format!(
                "model_type {:?} is not supported (only llama)",
                hf.model_type
            )));
        }
        if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad("rope_scaling is not supported".into()));
        }
        if hf.attention_bias || hf.mlp_bias {
            return Err(bad("attention or MLP biases are not supported".into()));
        }
        let config = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
        };
        if let Some(hd) = hf.head_dim
            && hd * config.num_attention_heads != config.hidden_size
        {
            return Err(bad(format!(
                "head_dim {hd} × {} heads differs from hidden_size {}",
                config.num_attention_heads, config.hidden_size
            )));
        }
        config.validate(file)?;
        Ok(config)
    }

    /// The HF `config.json` for this configuration (written next to safetensors checkpoints).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }

    /// A tiny configuration of the same architecture, for tests without the real model.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 96,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
        }
    }
}
