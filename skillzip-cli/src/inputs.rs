//! What several commands read: checkpoints with their tokenizer, prompt sets, progress bars.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::finetune::SftTask;
use skillzip_lm::tokenizer::{Message, Tokenizer};

/// Errors of the CLI are one line of text.
pub type CliResult<T> = Result<T, String>;

/// Opens a checkpoint, naming it in the error.
pub fn open_checkpoint(path: &Path) -> CliResult<Checkpoint> {
    Checkpoint::open(path).map_err(|e| e.to_string())
}

/// The tokenizer of a checkpoint: GGUF metadata, or `tokenizer.json` beside a safetensors
/// checkpoint; `fallback` (another checkpoint, usually the base) when the directory has none.
pub fn tokenizer_for(ckpt: &Checkpoint, fallback: Option<&Checkpoint>) -> CliResult<Tokenizer> {
    match (Tokenizer::of_checkpoint(ckpt), fallback) {
        (Ok(tok), _) => Ok(tok),
        (Err(_), Some(f)) if ckpt.gguf_metadata().is_none() => tokenizer_for(f, None),
        (Err(e), _) => Err(e.to_string()),
    }
}

/// A prompt: raw text, or a chat turn with an optional response.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Tokenized as is.
    Text(String),
    /// Rendered with the chat template; the response (if any) follows the assistant header.
    Chat {
        /// The user's message.
        prompt: String,
        /// The assistant's answer.
        response: Option<String>,
    },
}

/// Where prompts come from.
#[derive(clap::Args, Debug, Clone)]
pub struct PromptSource {
    /// JSONL file: one object per line with `text`, or `prompt` and optionally `response`.
    #[arg(long, value_name = "FILE", conflicts_with = "task")]
    pub prompts: Option<PathBuf>,
    /// A built-in task instead: `arith` or `caps`.
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
    /// How many built-in prompts.
    #[arg(long, default_value_t = 60)]
    pub count: usize,
    /// Seed of the built-in prompts.
    #[arg(long, default_value_t = 1)]
    pub prompt_seed: u64,
}

impl PromptSource {
    /// Reads or generates the prompts.
    pub fn load(&self) -> CliResult<Vec<Prompt>> {
        match (&self.prompts, &self.task) {
            (Some(path), _) => read_jsonl(path),
            (None, Some(task)) => {
                let task = SftTask::parse(task)
                    .ok_or_else(|| format!("--task {task}: expected arith or caps"))?;
                Ok(task
                    .examples(self.count, self.prompt_seed)
                    .into_iter()
                    .map(|(p, r)| Prompt::Chat {
                        prompt: p,
                        response: Some(r),
                    })
                    .collect())
            }
            (None, None) => Err("give --prompts FILE or --task arith|caps".into()),
        }
    }
}

fn read_jsonl(path: &Path) -> CliResult<Vec<Prompt>> {
    let label = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{label}: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{label}: line {}: not JSON: {e}", i + 1))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        out.push(match (field("text"), field("prompt")) {
            (Some(t), None) => Prompt::Text(t),
            (None, Some(p)) => Prompt::Chat {
                prompt: p,
                response: field("response"),
            },
            _ => {
                return Err(format!(
                    "{label}: line {}: needs a string `text` or `prompt` (not both)",
                    i + 1
                ));
            }
        });
    }
    if out.is_empty() {
        return Err(format!("{label}: no prompts"));
    }
    Ok(out)
}

/// Token ids of each prompt.
pub fn tokenize(tok: &Tokenizer, prompts: &[Prompt]) -> CliResult<Vec<Vec<u32>>> {
    prompts
        .iter()
        .map(|p| {
            let text = match p {
                Prompt::Text(t) => t.clone(),
                Prompt::Chat { prompt, response } => {
                    let template = tok
                        .chat_template()
                        .ok_or("the model has no chat template; use `text` prompts")?;
                    // A response is the assistant's finished turn, in the template's own form.
                    let user = Message::user(prompt.clone());
                    match response {
                        Some(r) => template.render(&[user, Message::assistant(r.clone())], false),
                        None => template.render(&[user], true),
                    }
                }
            };
            tok.encode(&text).map_err(|e| e.to_string())
        })
        .collect()
}

/// A progress bar on stderr (hidden when `quiet` or stderr is not a terminal).
pub fn bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Parses `NAME=VALUE`.
pub fn name_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}
