//! `skillzip-lm-probe`: dumps what `scripts/verify_smollm2.py` compares against independent
//! implementations (the `gguf` Python reader, llama.cpp): dequantized tensor hashes, token
//! ids, and logits at every position.
//!
//! ```text
//! skillzip-lm-probe hashes   --gguf G --out hashes.json
//! skillzip-lm-probe tokenize --gguf G --prompts prompts.json --out tokens.json
//! skillzip-lm-probe logits   --gguf G --tokens tokens.json --out logits.safetensors
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::generate::{GenerateOptions, Sampling, generate};
use skillzip_lm::model::{Llama, Logits, NoHook};
use skillzip_lm::tokenizer::{Message, Tokenizer};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skillzip-lm-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag(args: &[String], name: &str) -> BoxResult<PathBuf> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| PathBuf::from(&w[1]))
        .ok_or_else(|| format!("missing {name} PATH").into())
}

fn run() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("");
    let gguf = flag(&args, "--gguf")?;
    let out = flag(&args, "--out")?;
    let ckpt = Checkpoint::open(&gguf)?;
    match command {
        "hashes" => {
            let (header, bytes) = ckpt.gguf().ok_or("--gguf must be a GGUF file")?;
            let mut tensors = serde_json::Map::new();
            for info in &header.tensors {
                let data = header.dequantize(bytes, info)?;
                let mut h = Sha256::new();
                for v in &data {
                    h.update(v.to_le_bytes());
                }
                let dtype = info
                    .ggml_type
                    .map(|t| t.name().to_string())
                    .unwrap_or_else(|id| id.to_string());
                tensors.insert(
                    info.name.clone(),
                    serde_json::json!({
                        "shape": info.shape,
                        "dtype": dtype,
                        "sha256": format!("{:x}", h.finalize()),
                    }),
                );
            }
            write_json(&out, &serde_json::json!({ "tensors": tensors }))
        }
        "tokenize" => {
            let meta = ckpt.gguf_metadata().ok_or("--gguf must be a GGUF file")?;
            let tok = Tokenizer::from_gguf(meta)?;
            let prompts: serde_json::Value =
                serde_json::from_slice(&std::fs::read(flag(&args, "--prompts")?)?)?;
            let mut all = Vec::new();
            for p in prompts["prompts"].as_array().ok_or("prompts[] missing")? {
                let text = p["text"].as_str().ok_or("prompt text missing")?;
                let text = if p["chat"].as_bool().unwrap_or(false) {
                    let template = tok
                        .chat_template()
                        .ok_or("the model has no chat template")?;
                    template.render(&[Message::user(text)], true)
                } else {
                    text.to_string()
                };
                all.push(tok.encode(&text)?);
            }
            write_json(&out, &serde_json::json!({ "tokens": all }))
        }
        "logits" => {
            let model = Llama::from_checkpoint(&ckpt)?;
            let tokens: serde_json::Value =
                serde_json::from_slice(&std::fs::read(flag(&args, "--tokens")?)?)?;
            let mut buffers = BTreeMap::new();
            for (i, ids) in tokens["tokens"]
                .as_array()
                .ok_or("tokens[] missing")?
                .iter()
                .enumerate()
            {
                let ids: Vec<u32> = serde_json::from_value(ids.clone())?;
                let n = ids.len();
                let t = Tensor::from_vec(ids, (1, n), &Device::Cpu)?;
                let logits = model.forward(&t, None, Logits::All, &mut NoHook)?;
                let (_, n, v) = logits.dims3()?;
                let data: Vec<f32> = logits.flatten_all()?.to_vec1()?;
                let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                buffers.insert(format!("logits.{i}"), (vec![n, v], bytes));
            }
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
                .iter()
                .map(|(k, (shape, bytes))| {
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        shape.clone(),
                        bytes,
                    )
                    .map(|v| (k.clone(), v))
                })
                .collect::<Result<_, _>>()?;
            safetensors::serialize_to_file(views, None, &out)?;
            Ok(())
        }
        "chat" => {
            let meta = ckpt.gguf_metadata().ok_or("--gguf must be a GGUF file")?;
            let tok = Tokenizer::from_gguf(meta)?;
            let model = Llama::from_checkpoint(&ckpt)?;
            let prompt = std::fs::read_to_string(flag(&args, "--prompt")?)?;
            let template = tok
                .chat_template()
                .ok_or("the model has no chat template")?;
            let ids = tok.encode(&template.render(&[Message::user(prompt.trim())], true))?;
            let opts = GenerateOptions {
                max_new_tokens: 96,
                sampling: Sampling::Greedy,
                stop: tok.stop_ids(),
            };
            let start = std::time::Instant::now();
            let new = generate(&model, &ids, &opts, &mut NoHook, |_| true)?;
            let secs = start.elapsed().as_secs_f64();
            let text = tok.decode(&new, true)?;
            println!("{text}");
            write_json(
                &out,
                &serde_json::json!({ "prompt_tokens": ids.len(), "new_tokens": new.len(), "seconds": secs, "text": text }),
            )
        }
        other => Err(format!("unknown command {other:?} (hashes, tokenize, logits, chat)").into()),
    }
}

fn write_json(path: &PathBuf, v: &serde_json::Value) -> BoxResult<()> {
    std::fs::write(path, serde_json::to_vec(v)?)?;
    Ok(())
}
