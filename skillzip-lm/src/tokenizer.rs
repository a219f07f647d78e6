//! [`Tokenizer`]: a byte-level BPE tokenizer built from GGUF metadata (or read from an HF
//! `tokenizer.json`), and [`ChatTemplate`]: the chat formats this crate can apply.
//!
//! GGUF stores the vocabulary (`tokenizer.ggml.tokens`), the merges (`tokenizer.ggml.merges`,
//! `"a b"` strings), token types (3 = control, added as special tokens) and the pre-tokenizer
//! name (`tokenizer.ggml.pre`). The pre-tokenizers here reproduce llama.cpp's regexes for the
//! names they accept; `scripts/verify_smollm2.py` checks the ids against llama.cpp's tokenizer.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::error::{Error, Result};
use crate::gguf::Value;

/// The GGUF token type of control tokens (`<|im_start|>`, …).
const TOKEN_TYPE_CONTROL: u64 = 3;
/// The GGUF token type of user-defined tokens (also matched whole in text).
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// A tokenizer plus the special ids generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    chat: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("chat", &self.chat)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// The tokenizer of a checkpoint: its GGUF metadata, or the `tokenizer.json` (with
    /// `tokenizer_config.json`) beside a safetensors checkpoint.
    pub fn of_checkpoint(ckpt: &crate::checkpoint::Checkpoint) -> Result<Self> {
        if let Some(meta) = ckpt.gguf_metadata() {
            return Self::from_gguf(meta)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", ckpt.label())));
        }
        match ckpt.directory() {
            Some(dir) if dir.join("tokenizer.json").exists() => Self::from_hf_dir(&dir),
            _ => Err(Error::Tokenizer(format!(
                "{}: no tokenizer (neither GGUF metadata nor tokenizer.json)",
                ckpt.label()
            ))),
        }
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.model` must be `gpt2`, i.e.
    /// byte-level BPE).
    pub fn from_gguf(meta: &BTreeMap<String, Value>) -> Result<Self> {
        let get = |k: &str| meta.get(k);
        let model = get("tokenizer.ggml.model").and_then(Value::as_str);
        if model != Some("gpt2") {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            get(k)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Tokenizer(format!("{k} is missing")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::Tokenizer(format!("{k} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} has no space")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<u64> = match get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(Error::Tokenizer("the vocabulary repeats a token".into()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            // llama.cpp: "\p{N}" then the GPT-2 regex.
            "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])),
            "gpt2" | "default" => PreTokenizerWrapper::ByteLevel(byte_level),
            other => {
                return Err(Error::Tokenizer(format!(
                    "pre-tokenizer {other:?} is not supported (smollm, gpt2)"
                )));
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(tok, t)| AddedToken::from(tok.clone(), *t == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |k: &str| {
            get(k)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let chat = match get("tokenizer.chat_template").and_then(Value::as_str) {
            Some(t) => Some(ChatTemplate::recognise(t)?),
            None => None,
        };
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat,
        })
    }

    /// Reads an HF `tokenizer.json`; special ids and the chat template come from
    /// `tokenizer_config.json` beside it when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read(&config_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", config_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let special = |k: &str| {
            let v = config.get(k)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let chat = match config.get("chat_template").and_then(|v| v.as_str()) {
            Some(t) => Some(ChatTemplate::recognise(t)?),
            None => None,
        };
        Ok(Self {
            bos: special("bos_token"),
            eos: special("eos_token"),
            add_bos: config
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            inner,
            chat,
        })
    }

    /// Token ids of `text`. Special-token text (`<|im_start|>`) maps to its id; a BOS is
    /// prepended when the model asks for one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids` (special tokens skipped when `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The end-of-sequence id, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The model's chat template, if it has a recognised one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The ids that end an assistant turn: EOS and, for ChatML, `<|im_end|>`.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos.into_iter().collect();
        if let Some(ChatTemplate::ChatMl { .. }) = self.chat
            && let Some(id) = self.token_id("<|im_end|>")
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        ids
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// The chat formats this crate applies. Templates are Jinja programs; rather than run
/// arbitrary Jinja, the crate recognises the templates it knows and renders them natively
/// (an unknown template is a typed error, never a silent guess).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n…<|im_end|>\n`), as SmolLM2 and Qwen use it.
    ChatMl {
        /// The system prompt inserted when the conversation has none.
        default_system: Option<String>,
    },
}

impl ChatTemplate {
    /// Recognises a Jinja chat template's format.
    pub fn recognise(template: &str) -> Result<Self> {
        if template.contains("<|im_start|>") && template.contains("<|im_end|>") {
            let marker = "<|im_start|>system\n";
            let default_system = if template.contains("messages[0]['role'] != 'system'") {
                template
                    .split_once(marker)
                    .and_then(|(_, rest)| rest.split_once("<|im_end|>").map(|(s, _)| s.to_string()))
            } else {
                None
            };
            return Ok(Self::ChatMl { default_system });
        }
        let head: String = template.chars().take(80).collect();
        Err(Error::ChatTemplate(format!(
            "unrecognised template starting {head:?} (only ChatML is rendered natively)"
        )))
    }

    /// Renders `messages`, followed by the assistant header when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        match self {
            Self::ChatMl { default_system } => {
                let mut out = String::new();
                if let Some(sys) = default_system
                    && messages.first().is_none_or(|m| m.role != "system")
                {
                    out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    out.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_like_the_jinja_template() {
        let t = ChatTemplate::recognise(SMOLLM2_TEMPLATE).unwrap();
        assert_eq!(
            t.render(&[Message::user("Hi")], true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = [
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message::user("Hi"),
        ];
        assert_eq!(
            t.render(&with_system, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
        assert!(matches!(
            ChatTemplate::recognise("{{ bos_token }}[INST]"),
            Err(Error::ChatTemplate(_))
        ));
    }

    fn tiny_meta() -> BTreeMap<String, Value> {
        let s = |v: &str| Value::String(v.into());
        let tokens = [
            "<|endoftext|>",
            "<|im_start|>",
            "h",
            "i",
            "Ġ",
            "hi",
            "Ġhi",
            "1",
            "2",
        ];
        let mut m = BTreeMap::new();
        m.insert("tokenizer.ggml.model".into(), s("gpt2"));
        m.insert("tokenizer.ggml.pre".into(), s("smollm"));
        m.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        );
        m.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..tokens.len())
                    .map(|i| Value::U64(if i < 2 { 3 } else { 1 }))
                    .collect(),
            ),
        );
        m.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![s("h i"), s("Ġ hi")]),
        );
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U64(0));
        m
    }

    #[test]
    fn gguf_tokenizer_merges_splits_digits_and_keeps_specials() {
        let t = Tokenizer::from_gguf(&tiny_meta()).unwrap();
        assert_eq!(t.encode("hi hi").unwrap(), vec![5, 6]);
        assert_eq!(t.encode("<|im_start|>hi12").unwrap(), vec![1, 5, 7, 8]);
        assert_eq!(t.decode(&[5, 6], false).unwrap(), "hi hi");
        assert_eq!(t.eos(), Some(0));
    }
}
