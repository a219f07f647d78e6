//! The OpenAI-compatible request bodies: [`parse_completion`] and [`parse_chat`] turn raw
//! bytes into a validated [`GenerationRequest`] or a typed [`ApiError`] naming the field.
//! Nothing here trusts the input: sizes are bounded, every number is range-checked, and
//! fields this server cannot honour are refused rather than ignored.

use serde_json::{Map, Value};
use skillzip_lm::tokenizer::Message;

use crate::error::ApiError;

/// The model name that asks the server to pick the skill.
pub const AUTO_MODEL: &str = "auto";
/// The model name of the backbone without any skillpack.
pub const BASE_MODEL: &str = "base";
/// Why `name` cannot name a skill (the model names the server keeps for itself), if it
/// cannot.
pub fn reserved_skill_name(name: &str) -> Option<String> {
    (name == BASE_MODEL || name == AUTO_MODEL)
        .then(|| format!("a skill cannot be named {name:?} (reserved)"))
}

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// `max_tokens` of a completion that names none (OpenAI's default).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// `max_tokens` of a chat completion that names none.
pub const DEFAULT_CHAT_TOKENS: usize = 256;

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text (`/v1/completions`).
    Text(String),
    /// Token ids (`/v1/completions`; a load generator's exact prompt lengths).
    Tokens(Vec<u32>),
    /// A conversation rendered with the model's chat template (`/v1/chat/completions`).
    Chat(Vec<Message>),
}

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The `model` field: a skill name, [`BASE_MODEL`] or [`AUTO_MODEL`].
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Most new tokens; `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    /// Sampling temperature in `[0, 2]`; 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`.
    pub top_p: f32,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Strings that end generation.
    pub stop: Vec<String>,
    /// Server-sent events instead of one JSON body.
    pub stream: bool,
    /// Generate through end-of-sequence tokens (vLLM's extension; load generators use it for
    /// exact generation lengths).
    pub ignore_eos: bool,
}

/// Parses a `/v1/completions` body.
pub fn parse_completion(body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let fields = object(body)?;
    let prompt = match fields.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
            let ids = items
                .iter()
                .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| invalid("prompt", "token ids must be integers in 0..2^32"))?;
            return common(&fields, Prompt::Tokens(ids));
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::Unsupported(
                "`prompt` must be one string or one array of token ids (batches of prompts \
                 are not supported: send one request per prompt)"
                    .into(),
            ));
        }
        Some(_) => return Err(invalid("prompt", "must be a string")),
        None => return Err(invalid("prompt", "is required")),
    };
    common(&fields, Prompt::Text(prompt))
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let fields = object(body)?;
    let Some(Value::Array(items)) = fields.get("messages") else {
        return Err(invalid("messages", "is required and must be an array"));
    };
    if items.is_empty() {
        return Err(invalid("messages", "must hold at least one message"));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| format!("messages[{i}].{name}");
        let Some(m) = item.as_object() else {
            return Err(invalid(&format!("messages[{i}]"), "must be an object"));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r.to_string(),
            Some(r) => {
                return Err(invalid(
                    &field("role"),
                    &format!("{r:?} is not system, user or assistant"),
                ));
            }
            None => return Err(invalid(&field("role"), "is required and must be a string")),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => text_parts(parts, &field("content"))?,
            _ => {
                return Err(invalid(
                    &field("content"),
                    "is required and must be a string or text parts",
                ));
            }
        };
        messages.push(Message { role, content });
    }
    common(&fields, Prompt::Chat(messages))
}

/// The text of a content array of `{"type": "text", "text": ...}` parts.
fn text_parts(parts: &[Value], field: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for part in parts {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => text.push_str(t),
            _ => {
                return Err(ApiError::Unsupported(format!(
                    "{field}: only text parts are supported"
                )));
            }
        }
    }
    Ok(text)
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "the body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::InvalidRequest(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidRequest(format!("malformed JSON: {e}"))),
    }
}

fn invalid(field: &str, problem: &str) -> ApiError {
    ApiError::InvalidRequest(format!("`{field}` {problem}"))
}

/// The fields both endpoints share.
fn common(fields: &Map<String, Value>, prompt: Prompt) -> Result<GenerationRequest, ApiError> {
    let model = match fields.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(invalid("model", "must be a non-empty string")),
        None => return Err(invalid("model", "is required (a skill name, base or auto)")),
    };
    let max_tokens = match fields
        .get("max_tokens")
        .or_else(|| fields.get("max_completion_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => return Err(invalid("max_tokens", "must be a positive integer")),
        },
    };
    let temperature = number(fields, "temperature", 1.0, |t| (0.0..=2.0).contains(&t))
        .map_err(|_| invalid("temperature", "must be a number in [0, 2]"))?;
    let top_p = number(fields, "top_p", 1.0, |p| p > 0.0 && p <= 1.0)
        .map_err(|_| invalid("top_p", "must be a number in (0, 1]"))?;
    let seed = match fields.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| invalid("seed", "must be a non-negative integer"))?,
        ),
    };
    let stop = match fields.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop", "must be a string or an array of strings"))?,
        Some(_) => return Err(invalid("stop", "must be a string or an array of strings")),
    };
    if stop.len() > MAX_STOP_STRINGS
        || stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(
            "stop",
            &format!(
                "takes at most {MAX_STOP_STRINGS} non-empty strings of at most \
                 {MAX_STOP_BYTES} bytes"
            ),
        ));
    }
    let flag = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(name, "must be true or false")),
    };
    let stream = flag("stream")?;
    let ignore_eos = flag("ignore_eos")?;
    match fields.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ApiError::Unsupported(
                "`n` other than 1 is not supported".into(),
            ));
        }
    }
    for unsupported in [
        "logprobs",
        "echo",
        "best_of",
        "suffix",
        "tools",
        "logit_bias",
    ] {
        match fields.get(unsupported) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(ApiError::Unsupported(format!(
                    "`{unsupported}` is not supported"
                )));
            }
        }
    }
    Ok(GenerationRequest {
        model,
        prompt,
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed,
        stop,
        stream,
        ignore_eos,
    })
}

/// A number field: absent or null gives `default`; otherwise it must be finite and `ok`.
fn number(
    fields: &Map<String, Value>,
    name: &str,
    default: f64,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, ()> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().filter(|x| x.is_finite() && ok(*x)).ok_or(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<GenerationRequest, ApiError> {
        parse_completion(body.as_bytes())
    }

    #[test]
    fn a_completion_body_parses_with_defaults() {
        let r = completion(r#"{"model": "math", "prompt": "2 + 2 ="}"#).unwrap();
        assert_eq!(r.model, "math");
        assert_eq!(r.prompt, Prompt::Text("2 + 2 =".into()));
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_p, r.seed, r.stream),
            (None, 1.0, 1.0, None, false)
        );
        let r = completion(
            r#"{"model": "m", "prompt": ["x"], "max_tokens": 5, "temperature": 0,
                "top_p": 0.5, "seed": 7, "stop": "\n", "stream": true, "n": 1, "user": "u"}"#,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("x".into()));
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_p, r.seed, r.stream),
            (Some(5), 0.0, 0.5, Some(7), true)
        );
        assert_eq!(r.stop, ["\n"]);
        assert!(!r.ignore_eos);
        let r = completion(r#"{"model": "m", "prompt": [1, 2, 3], "ignore_eos": true}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert!(r.ignore_eos);
    }

    #[test]
    fn bad_completion_bodies_are_typed_errors_naming_the_field() {
        let cases = [
            ("", "malformed JSON"),
            ("{", "malformed JSON"),
            ("[1]", "JSON object"),
            (r#"{"prompt": "x"}"#, "`model`"),
            (r#"{"model": "", "prompt": "x"}"#, "`model`"),
            (r#"{"model": "m"}"#, "`prompt`"),
            (r#"{"model": "m", "prompt": 3}"#, "`prompt`"),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": -1}"#,
                "`max_tokens`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": 0}"#,
                "`max_tokens`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": 1.5}"#,
                "`max_tokens`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": "9"}"#,
                "`max_tokens`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "temperature": 3}"#,
                "`temperature`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "temperature": -0.1}"#,
                "`temperature`",
            ),
            (r#"{"model": "m", "prompt": "x", "top_p": 0}"#, "`top_p`"),
            (r#"{"model": "m", "prompt": "x", "seed": -3}"#, "`seed`"),
            (r#"{"model": "m", "prompt": "x", "stop": 5}"#, "`stop`"),
            (r#"{"model": "m", "prompt": "x", "stop": [""]}"#, "`stop`"),
            (
                r#"{"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]}"#,
                "`stop`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "stream": "yes"}"#,
                "`stream`",
            ),
            (
                r#"{"model": "m", "prompt": "x", "ignore_eos": 1}"#,
                "`ignore_eos`",
            ),
            (r#"{"model": "m", "prompt": [1, -2]}"#, "token ids"),
            (r#"{"model": "m", "prompt": [1, 4294967296]}"#, "token ids"),
            (r#"{"model": "m", "prompt": [0.5]}"#, "token ids"),
        ];
        for (body, needle) in cases {
            match completion(body) {
                Err(e @ ApiError::InvalidRequest(_)) => {
                    assert!(e.to_string().contains(needle), "{body}: {e}");
                    assert_eq!(e.status().as_u16(), 400);
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        for body in [
            r#"{"model": "m", "prompt": ["a", "b"]}"#,
            r#"{"model": "m", "prompt": []}"#,
            r#"{"model": "m", "prompt": [1, "b"]}"#,
            r#"{"model": "m", "prompt": "x", "n": 2}"#,
            r#"{"model": "m", "prompt": "x", "logprobs": 3}"#,
        ] {
            assert!(
                matches!(completion(body), Err(ApiError::Unsupported(_))),
                "{body}"
            );
        }
        match parse_completion(b"{\"model\": \"m\", \"prompt\": \"\xff\"}") {
            Err(ApiError::InvalidRequest(m)) => assert!(m.contains("UTF-8"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Huge numbers are range errors, not overflows.
        assert!(completion(r#"{"model": "m", "prompt": "x", "max_tokens": 1e300}"#).is_err());
        assert!(
            completion(r#"{"model": "m", "prompt": "x", "max_tokens": 18446744073709551615}"#)
                .is_ok()
        );
    }

    #[test]
    fn chat_bodies_parse_messages_and_refuse_what_is_not_text() {
        let r = parse_chat(
            br#"{"model": "base", "messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![
                Message {
                    role: "system".into(),
                    content: "Be brief.".into()
                },
                Message::user("Hi")
            ])
        );
        for (body, needle) in [
            (r#"{"model": "m"}"#, "`messages`"),
            (r#"{"model": "m", "messages": []}"#, "`messages`"),
            (r#"{"model": "m", "messages": [1]}"#, "messages[0]"),
            (
                r#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#,
                "role",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user"}]}"#,
                "content",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "text parts",
            ),
        ] {
            match parse_chat(body.as_bytes()) {
                Err(e) => assert!(e.to_string().contains(needle), "{body}: {e}"),
                Ok(r) => panic!("{body}: {r:?}"),
            }
        }
    }
}
