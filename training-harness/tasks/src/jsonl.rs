//! Users' own tasks as JSONL: one JSON object per line.
//!
//! A line is either a full task,
//!
//! ```json
//! {"prompt": "Name a primary color.", "check": {"type": "exact", "answer": "red"}, "id": "colors-1", "domain": "mc"}
//! ```
//!
//! (`check` is a [`Check`] as serialised by this crate; `id` and `domain` are optional), or the
//! short form `{"prompt": "...", "answer": "42"}`, whose answer becomes [`Check::Number`] when it
//! is an integer and [`Check::Exact`] otherwise. Blank lines are skipped; unknown fields are
//! errors (they are usually typos). Tasks without an id get `{domain}-user-{n:04}`, numbered in
//! file order; ids must be unique.
//!
//! Nothing in the input is trusted: the input, each line and the task count are capped, every
//! failure is a [`JsonlError`] naming the line, and no input makes the parser panic.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::task::{Check, Domain, Task};

/// The largest input accepted, in bytes.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;
/// The longest line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 256 << 10;
/// The most tasks one input may hold.
pub const MAX_TASKS: usize = 100_000;
/// The longest id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Why a JSONL input was rejected. Line numbers count from 1 and include blank lines.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("input is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A line is not valid UTF-8.
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 {
        /// The line.
        line: usize,
    },
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line}: {bytes} bytes, more than the limit of {limit}")]
    LineTooLong {
        /// The line.
        line: usize,
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The input holds more than [`MAX_TASKS`] tasks.
    #[error("line {line}: more than {limit} tasks")]
    TooManyTasks {
        /// The first line over the limit.
        line: usize,
        /// The limit.
        limit: usize,
    },
    /// A line is not valid JSON.
    #[error("line {line}: invalid JSON: {message}")]
    Syntax {
        /// The line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A line is JSON but not an object.
    #[error("line {line}: expected a JSON object, found {found}")]
    NotAnObject {
        /// The line.
        line: usize,
        /// What it is instead (`array`, `string`, …).
        found: &'static str,
    },
    /// A required field is missing.
    #[error("line {line}: missing field \"{field}\"")]
    MissingField {
        /// The line.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong type or an unusable value.
    #[error("line {line}: field \"{field}\": {message}")]
    InvalidField {
        /// The line.
        line: usize,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A field this format doesn't know (usually a typo).
    #[error(
        "line {line}: unknown field \"{field}\" (expected prompt, check or answer, id, domain)"
    )]
    UnknownField {
        /// The line.
        line: usize,
        /// The field's name (at most 64 characters of it).
        field: String,
    },
    /// Neither `check` nor `answer` is given.
    #[error("line {line}: needs a \"check\" or an \"answer\"")]
    MissingCheck {
        /// The line.
        line: usize,
    },
    /// Both `check` and `answer` are given.
    #[error("line {line}: give either \"check\" or \"answer\", not both")]
    ConflictingChecks {
        /// The line.
        line: usize,
    },
    /// `check` is not a valid [`Check`] or can't be met.
    #[error("line {line}: invalid check: {message}")]
    InvalidCheck {
        /// The line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// `domain` names no [`Domain`].
    #[error("line {line}: unknown domain \"{name}\" (expected math, ifeval, mc or code)")]
    UnknownDomain {
        /// The line.
        line: usize,
        /// The name given (at most 64 characters of it).
        name: String,
    },
    /// Two tasks have the same id.
    #[error("line {line}: id \"{id}\" was already used on line {first_line}")]
    DuplicateId {
        /// The line of the second use.
        line: usize,
        /// The id.
        id: String,
        /// The line of the first use.
        first_line: usize,
    },
    /// The input has no tasks at all.
    #[error("no tasks: the input has no non-blank lines")]
    Empty,
}

impl JsonlError {
    /// The line the error is about, where there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            JsonlError::Io { .. } | JsonlError::TooLarge { .. } | JsonlError::Empty => None,
            JsonlError::NotUtf8 { line }
            | JsonlError::LineTooLong { line, .. }
            | JsonlError::TooManyTasks { line, .. }
            | JsonlError::Syntax { line, .. }
            | JsonlError::NotAnObject { line, .. }
            | JsonlError::MissingField { line, .. }
            | JsonlError::InvalidField { line, .. }
            | JsonlError::UnknownField { line, .. }
            | JsonlError::MissingCheck { line }
            | JsonlError::ConflictingChecks { line }
            | JsonlError::InvalidCheck { line, .. }
            | JsonlError::UnknownDomain { line, .. }
            | JsonlError::DuplicateId { line, .. } => Some(*line),
        }
    }
}

/// Reads tasks from a JSONL file (see the module documentation); `default_domain` applies to
/// lines without a `domain`.
pub fn read_jsonl(path: impl AsRef<Path>, default_domain: Domain) -> Result<Vec<Task>, JsonlError> {
    let path = path.as_ref();
    let io_error = |source| JsonlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    // Read one byte past the limit rather than trusting the file's reported size.
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(JsonlError::TooLarge {
            limit: MAX_INPUT_BYTES,
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| JsonlError::NotUtf8 {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;
    parse_jsonl(text, default_domain)
}

/// Parses tasks from JSONL text (see the module documentation); `default_domain` applies to
/// lines without a `domain`.
pub fn parse_jsonl(text: &str, default_domain: Domain) -> Result<Vec<Task>, JsonlError> {
    if text.len() as u64 > MAX_INPUT_BYTES {
        return Err(JsonlError::TooLarge {
            limit: MAX_INPUT_BYTES,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut tasks: Vec<Task> = Vec::new();
    // Each task's explicit id (if any) with its line, to name both lines of a duplicate.
    let mut explicit_ids: Vec<(Option<String>, usize)> = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        if raw.len() > MAX_LINE_BYTES {
            return Err(JsonlError::LineTooLong {
                line,
                bytes: raw.len(),
                limit: MAX_LINE_BYTES,
            });
        }
        let content = raw.trim();
        if content.is_empty() {
            continue;
        }
        if tasks.len() == MAX_TASKS {
            return Err(JsonlError::TooManyTasks {
                line,
                limit: MAX_TASKS,
            });
        }
        let (task, explicit_id) = parse_line(content, line, default_domain)?;
        tasks.push(task);
        explicit_ids.push((explicit_id, line));
    }
    if tasks.is_empty() {
        return Err(JsonlError::Empty);
    }
    assign_ids(&mut tasks, &explicit_ids)?;
    Ok(tasks)
}

/// Fills in missing ids and rejects duplicates (including an explicit id that collides with a
/// generated one).
fn assign_ids(
    tasks: &mut [Task],
    explicit_ids: &[(Option<String>, usize)],
) -> Result<(), JsonlError> {
    let mut counters: HashMap<Domain, usize> = HashMap::new();
    let mut first_use: HashMap<String, usize> = HashMap::new();
    for (task, (explicit, line)) in tasks.iter_mut().zip(explicit_ids) {
        let number = counters.entry(task.domain).or_insert(0);
        *number += 1;
        task.id = match explicit {
            Some(id) => id.clone(),
            None => format!("{}-user-{:04}", task.domain.name(), number),
        };
        if let Some(&first_line) = first_use.get(&task.id) {
            return Err(JsonlError::DuplicateId {
                line: *line,
                id: task.id.clone(),
                first_line,
            });
        }
        first_use.insert(task.id.clone(), *line);
    }
    Ok(())
}

/// At most 64 characters of a user-supplied name, for error messages.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One task (with an empty id) and its explicit id, if the line gives one.
fn parse_line(
    content: &str,
    line: usize,
    default_domain: Domain,
) -> Result<(Task, Option<String>), JsonlError> {
    let value: Value = serde_json::from_str(content).map_err(|e| JsonlError::Syntax {
        line,
        message: e.to_string(),
    })?;
    let Value::Object(fields) = value else {
        return Err(JsonlError::NotAnObject {
            line,
            found: json_kind(&value),
        });
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "prompt" | "check" | "answer" | "id" | "domain"))
    {
        return Err(JsonlError::UnknownField {
            line,
            field: shorten(unknown),
        });
    }
    let prompt = match fields.get("prompt") {
        None => {
            return Err(JsonlError::MissingField {
                line,
                field: "prompt",
            });
        }
        Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
        Some(Value::String(_)) => {
            return Err(JsonlError::InvalidField {
                line,
                field: "prompt",
                message: "empty".into(),
            });
        }
        Some(other) => {
            return Err(JsonlError::InvalidField {
                line,
                field: "prompt",
                message: format!("expected a string, found {}", json_kind(other)),
            });
        }
    };
    let domain = match fields.get("domain") {
        None => default_domain,
        Some(Value::String(name)) => {
            Domain::parse(name).ok_or_else(|| JsonlError::UnknownDomain {
                line,
                name: shorten(name),
            })?
        }
        Some(other) => {
            return Err(JsonlError::InvalidField {
                line,
                field: "domain",
                message: format!("expected a string, found {}", json_kind(other)),
            });
        }
    };
    let id = parse_id(&fields, line)?;
    let check = parse_check(&fields, line)?;
    let task = Task {
        id: String::new(),
        domain,
        prompt,
        check,
    };
    Ok((task, id))
}

fn parse_id(fields: &Map<String, Value>, line: usize) -> Result<Option<String>, JsonlError> {
    let invalid = |message: String| JsonlError::InvalidField {
        line,
        field: "id",
        message,
    };
    match fields.get("id") {
        None => Ok(None),
        Some(Value::String(id)) => {
            if id.trim().is_empty() {
                Err(invalid("empty".into()))
            } else if id.chars().count() > MAX_ID_CHARS {
                Err(invalid(format!("longer than {MAX_ID_CHARS} characters")))
            } else if id.chars().any(char::is_control) {
                Err(invalid("contains control characters".into()))
            } else {
                Ok(Some(id.clone()))
            }
        }
        Some(other) => Err(invalid(format!(
            "expected a string, found {}",
            json_kind(other)
        ))),
    }
}

fn parse_check(fields: &Map<String, Value>, line: usize) -> Result<Check, JsonlError> {
    let check = match (fields.get("check"), fields.get("answer")) {
        (Some(_), Some(_)) => return Err(JsonlError::ConflictingChecks { line }),
        (None, None) => return Err(JsonlError::MissingCheck { line }),
        (Some(check), None) => serde_json::from_value::<Check>(check.clone()).map_err(|e| {
            JsonlError::InvalidCheck {
                line,
                message: e.to_string(),
            }
        })?,
        (None, Some(answer)) => short_form_check(answer, line)?,
    };
    check
        .validate()
        .map_err(|message| JsonlError::InvalidCheck { line, message })?;
    Ok(check)
}

/// The check of `{"answer": …}`: an integer (or a string holding one) is a number, any other
/// string or number is an exact answer.
fn short_form_check(answer: &Value, line: usize) -> Result<Check, JsonlError> {
    match answer {
        Value::Number(n) => Ok(match n.as_i64() {
            Some(answer) => Check::Number { answer },
            None => Check::Exact {
                answer: n.to_string(),
            },
        }),
        Value::String(text) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(JsonlError::InvalidField {
                    line,
                    field: "answer",
                    message: "empty".into(),
                });
            }
            Ok(match trimmed.parse::<i64>() {
                Ok(answer) => Check::Number { answer },
                Err(_) => Check::Exact {
                    answer: trimmed.to_string(),
                },
            })
        }
        other => Err(JsonlError::InvalidField {
            line,
            field: "answer",
            message: format!("expected a string or a number, found {}", json_kind(other)),
        }),
    }
}
