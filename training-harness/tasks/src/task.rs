//! Skill tasks: prompts together with what their verifier needs, and seeded generators.
//!
//! A [`Task`] is one prompt of one skill [`Domain`] with a [`Check`]: the data the rule-based
//! verifier in [`crate::verify`](mod@crate::verify) needs to judge a response. [`generate`]
//! draws tasks of a domain at a difficulty level, 1 (trivial) to [`MAX_LEVEL`] (hard for a 135M-parameter
//! model), so a harness can pick the level at which the base model's success rate is neither
//! zero nor saturated:
//!
//! | domain | level 1 | level 2 | level 3 | level 4 |
//! |---|---|---|---|---|
//! | `math` | one addition or subtraction of numbers 2 to 9 | two steps | multiplication and division | three or more steps |
//! | `ifeval` | one easy constraint | one harder constraint | two constraints | three, one of them structural |
//! | `mc` | two options | three options | four options | four options, multi-step reasoning |
//! | `code` | one-line functions | loops over lists and strings | conditions and string logic | small algorithms |
//!
//! Every prompt tells the model its answer format ("then write "The answer is" followed by the
//! result", "Reply with "Answer:" and the letter", "in a ```python code block") and is short,
//! because generation runs on a CPU.
//!
//! ## Train / held-out disjointness
//!
//! Every draft task has a *canonical key*: the content that makes it a different problem. For
//! math it is the template and its numbers (not the names and objects), for instructions the
//! topic and the set of constraints (not the wording of the request), for multiple choice the
//! question and the *set* of options (not their order), for code the whole prompt. A stable
//! hash of the key decides the key's split once and for all: [`generate`] draws from a stream
//! seeded by (seed, domain, level, split) and keeps only drafts whose key hashes to the wanted
//! split, so train and held-out tasks never share a problem, for any seeds. Drafts whose key was
//! already taken are skipped too, so a split never repeats a problem.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use skillzip_core::SeededRng;

/// The hardest difficulty level of every domain (levels run from 1 to this).
pub const MAX_LEVEL: u8 = 4;

/// A skill: the kind of task, which decides the generator, verifier and generation budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Domain {
    /// Grade-school math word problems with integer answers (GSM8K style).
    #[serde(rename = "math")]
    Math,
    /// Writing requests with verifiable constraints (IFEval style).
    #[serde(rename = "ifeval", alias = "instructions")]
    Instructions,
    /// Multiple-choice reasoning answered with a letter.
    #[serde(rename = "mc", alias = "choice")]
    Choice,
    /// Small Python functions checked by unit tests.
    #[serde(rename = "code")]
    Code,
}

impl Domain {
    /// Every domain, in a fixed order.
    pub const ALL: [Domain; 4] = [
        Domain::Math,
        Domain::Instructions,
        Domain::Choice,
        Domain::Code,
    ];

    /// The short name used in ids, files and reports: `math`, `ifeval`, `mc`, `code`.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Math => "math",
            Domain::Instructions => "ifeval",
            Domain::Choice => "mc",
            Domain::Code => "code",
        }
    }

    /// Parses a name (or the aliases `instructions` and `choice`), ignoring ASCII case.
    pub fn parse(name: &str) -> Option<Domain> {
        match name.trim().to_ascii_lowercase().as_str() {
            "math" => Some(Domain::Math),
            "ifeval" | "instructions" => Some(Domain::Instructions),
            "mc" | "choice" => Some(Domain::Choice),
            "code" => Some(Domain::Code),
            _ => None,
        }
    }

    /// How many tokens a response to a task of this domain may take: room for a short worked
    /// answer, not for rambling, because every token is generated on a CPU.
    pub fn max_new_tokens(self) -> usize {
        match self {
            Domain::Math => 80,
            Domain::Instructions => 96,
            Domain::Choice => 24,
            Domain::Code => 128,
        }
    }

    fn index(self) -> u64 {
        match self {
            Domain::Math => 0,
            Domain::Instructions => 1,
            Domain::Choice => 2,
            Domain::Code => 3,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which side of the train / held-out partition a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    /// Tasks the model generates on and is trained on.
    #[serde(rename = "train")]
    Train,
    /// Tasks only ever used for evaluation.
    #[serde(rename = "heldout")]
    HeldOut,
}

impl Split {
    /// `train` or `heldout`, as used in task ids.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::HeldOut => "heldout",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One prompt of one skill and what its verifier needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id, e.g. `math-L2-train-0007` for generated tasks.
    pub id: String,
    /// The skill.
    pub domain: Domain,
    /// The user's message given to the model.
    pub prompt: String,
    /// What a response must satisfy.
    pub check: Check,
}

/// What a response must satisfy; the verifier's input besides the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// The response's final number must equal `answer`.
    Number {
        /// The correct answer.
        answer: i64,
    },
    /// The response must meet every constraint.
    Constraints {
        /// The constraints, in the order the prompt states them.
        constraints: Vec<Constraint>,
    },
    /// The response must pick the option `answer` (a letter `A`, `B`, …) of `options`.
    Choice {
        /// The correct letter.
        answer: char,
        /// How many options the prompt lists (2 to 26).
        options: usize,
        /// The options' texts in letter order (`texts[0]` is option `A`'s), or empty where
        /// unknown. When a response names no option letter, the verifier looks for these texts
        /// instead; JSON without the field reads as empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        texts: Vec<String>,
    },
    /// The response's Python code must pass the assert lines `tests`.
    Code {
        /// The name of the function the prompt asks for.
        function: String,
        /// Python `assert` statements run after the response's code.
        tests: Vec<String>,
    },
    /// The response (or what follows its "answer:" / "the answer is") must equal `answer`,
    /// ignoring case, surrounding whitespace, quotes and a final period.
    Exact {
        /// The expected answer text.
        answer: String,
    },
}

impl Check {
    /// Whether the check can be met at all: a reason when it is malformed (for example an
    /// answer letter beyond the options, no tests, an empty constraint list).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Check::Number { .. } => Ok(()),
            Check::Constraints { constraints } => {
                if constraints.is_empty() {
                    return Err("no constraints".into());
                }
                constraints.iter().try_for_each(Constraint::validate)
            }
            Check::Choice {
                answer,
                options,
                texts,
            } => {
                if !(2..=26).contains(options) {
                    return Err(format!("options must be 2 to 26, found {options}"));
                }
                if !texts.is_empty() && texts.len() != *options {
                    return Err(format!(
                        "{} option texts for {options} options",
                        texts.len()
                    ));
                }
                match letter_index(*answer) {
                    Some(i) if i < *options => Ok(()),
                    _ => Err(format!(
                        "answer {answer:?} is not one of the letters A to {}",
                        option_letter(options - 1)
                    )),
                }
            }
            Check::Code { function, tests } => {
                if !is_python_identifier(function) {
                    return Err(format!("{function:?} is not a Python function name"));
                }
                if tests.is_empty() || tests.iter().any(|t| t.trim().is_empty()) {
                    return Err("tests must be a non-empty list of non-empty lines".into());
                }
                Ok(())
            }
            Check::Exact { answer } => {
                if answer.trim().is_empty() {
                    Err("empty answer".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A verifiable constraint on a written response, in the spirit of IFEval's instructions.
///
/// [`Constraint::instruction`] renders the sentence the prompt uses, so prompt and check can't
/// disagree; the checks live in [`crate::verify`](mod@crate::verify) (`Constraint::check`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// No capital letters, and at least one letter.
    Lowercase,
    /// No lowercase letters, and at least one letter.
    Uppercase,
    /// No `,` anywhere.
    NoCommas,
    /// At least `count` words (whitespace-separated tokens containing a letter or digit).
    WordsAtLeast {
        /// The fewest words allowed.
        count: usize,
    },
    /// At most `count` words.
    WordsAtMost {
        /// The most words allowed.
        count: usize,
    },
    /// At least `count` sentences (text ending at `.`, `!` or `?`).
    SentencesAtLeast {
        /// The fewest sentences allowed.
        count: usize,
    },
    /// At most `count` sentences.
    SentencesAtMost {
        /// The most sentences allowed.
        count: usize,
    },
    /// Exactly `count` paragraphs, separated by blank lines or by `***` dividers.
    Paragraphs {
        /// The number of paragraphs.
        count: usize,
    },
    /// `word` (a word or phrase, matched as whole words ignoring case) at least `times` times.
    KeywordAtLeast {
        /// The word or phrase.
        word: String,
        /// The fewest occurrences allowed.
        times: usize,
    },
    /// `word` (matched as whole words ignoring case) must not appear.
    ForbiddenWord {
        /// The word or phrase.
        word: String,
    },
    /// The response, less leading whitespace, starts with `text` (ignoring case).
    StartsWith {
        /// The opening.
        text: String,
    },
    /// The response, less trailing whitespace, ends with `text` (ignoring case).
    EndsWith {
        /// The closing phrase.
        text: String,
    },
    /// The whole response is JSON, optionally inside a ```` ```json ```` fence.
    Json,
    /// The whole response is wrapped in double quotation marks.
    QuotedWhole,
    /// A title wrapped in double angular brackets, like `<<my title>>`.
    Title,
    /// Exactly `count` markdown bullet points (lines starting with `* ` or `-`).
    BulletPoints {
        /// The number of bullet points.
        count: usize,
    },
    /// A postscript starting with `P.S.`.
    Postscript,
}

impl Constraint {
    /// The constraint's identifier in reasons and JSON (`no_commas`, `words_at_most`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Constraint::Lowercase => "lowercase",
            Constraint::Uppercase => "uppercase",
            Constraint::NoCommas => "no_commas",
            Constraint::WordsAtLeast { .. } => "words_at_least",
            Constraint::WordsAtMost { .. } => "words_at_most",
            Constraint::SentencesAtLeast { .. } => "sentences_at_least",
            Constraint::SentencesAtMost { .. } => "sentences_at_most",
            Constraint::Paragraphs { .. } => "paragraphs",
            Constraint::KeywordAtLeast { .. } => "keyword_at_least",
            Constraint::ForbiddenWord { .. } => "forbidden_word",
            Constraint::StartsWith { .. } => "starts_with",
            Constraint::EndsWith { .. } => "ends_with",
            Constraint::Json => "json",
            Constraint::QuotedWhole => "quoted_whole",
            Constraint::Title => "title",
            Constraint::BulletPoints { .. } => "bullet_points",
            Constraint::Postscript => "postscript",
        }
    }

    /// The sentence a prompt uses to ask for this constraint.
    pub fn instruction(&self) -> String {
        match self {
            Constraint::Lowercase => {
                "Your entire response must be in lowercase letters, with no capital letters.".into()
            }
            Constraint::Uppercase => {
                "Your entire response must be in capital letters, with no lowercase letters.".into()
            }
            Constraint::NoCommas => "Do not use any commas in your response.".into(),
            Constraint::WordsAtLeast { count } => format!("Answer with at least {count} words."),
            Constraint::WordsAtMost { count } => format!("Answer with at most {count} words."),
            Constraint::SentencesAtLeast { count } => {
                format!("Write at least {count} {}.", plural(*count, "sentence"))
            }
            Constraint::SentencesAtMost { count } => {
                format!("Write at most {count} {}.", plural(*count, "sentence"))
            }
            Constraint::Paragraphs { count } => format!(
                "Write exactly {count} {} separated by a blank line.",
                plural(*count, "paragraph")
            ),
            Constraint::KeywordAtLeast { word, times: 1 } => {
                format!("Include the word \"{word}\".")
            }
            Constraint::KeywordAtLeast { word, times } => {
                format!("Use the word \"{word}\" at least {times} times.")
            }
            Constraint::ForbiddenWord { word } => format!("Do not use the word \"{word}\"."),
            Constraint::StartsWith { text } => format!("Start your response with \"{text}\"."),
            Constraint::EndsWith { text } => {
                format!("End your response with the exact phrase \"{text}\".")
            }
            Constraint::Json => "Wrap your entire response in JSON format.".into(),
            Constraint::QuotedWhole => {
                "Wrap your entire response in double quotation marks.".into()
            }
            Constraint::Title => {
                "Give your response a title wrapped in double angular brackets, like <<my title>>."
                    .into()
            }
            Constraint::BulletPoints { count } => format!(
                "Use exactly {count} markdown bullet {}, each line starting with \"* \".",
                plural(*count, "point")
            ),
            Constraint::Postscript => {
                "At the end of your response, add a postscript starting with P.S.".into()
            }
        }
    }

    /// Whether the constraint can be met: counts at least 1 (2 for paragraphs), non-empty words.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |count: usize| {
            if count == 0 {
                Err(format!("{}: count must be at least 1", self.name()))
            } else {
                Ok(())
            }
        };
        let non_empty = |text: &str| {
            if text.trim().is_empty() {
                Err(format!("{}: empty text", self.name()))
            } else {
                Ok(())
            }
        };
        match self {
            Constraint::WordsAtLeast { count }
            | Constraint::WordsAtMost { count }
            | Constraint::SentencesAtLeast { count }
            | Constraint::SentencesAtMost { count }
            | Constraint::Paragraphs { count }
            | Constraint::BulletPoints { count } => positive(*count),
            Constraint::KeywordAtLeast { word, times } => {
                positive(*times)?;
                non_empty(word)
            }
            Constraint::ForbiddenWord { word } => non_empty(word),
            Constraint::StartsWith { text } | Constraint::EndsWith { text } => non_empty(text),
            Constraint::Lowercase
            | Constraint::Uppercase
            | Constraint::NoCommas
            | Constraint::Json
            | Constraint::QuotedWhole
            | Constraint::Title
            | Constraint::Postscript => Ok(()),
        }
    }

    /// Constraints of one group contradict or duplicate each other, so a generated task takes
    /// at most one of each.
    fn group(&self) -> &'static str {
        match self {
            Constraint::Lowercase | Constraint::Uppercase => "case",
            Constraint::NoCommas => "commas",
            Constraint::WordsAtLeast { .. } | Constraint::WordsAtMost { .. } => "words",
            Constraint::SentencesAtLeast { .. } | Constraint::SentencesAtMost { .. } => "sentences",
            Constraint::Json
            | Constraint::QuotedWhole
            | Constraint::Paragraphs { .. }
            | Constraint::BulletPoints { .. } => "layout",
            Constraint::StartsWith { .. }
            | Constraint::EndsWith { .. }
            | Constraint::Title
            | Constraint::Postscript => "edges",
            Constraint::KeywordAtLeast { .. } => "keyword",
            Constraint::ForbiddenWord { .. } => "forbidden",
        }
    }

    /// Whether a generated task may ask for both: different groups, and no pair that fights
    /// over the same characters (a JSON or quoted response can't also start with a phrase, and
    /// sentence counts in JSON or bullet lists are not what a writer would mean).
    fn combines_with(&self, other: &Constraint) -> bool {
        let one_way = |a: &Constraint, b: &Constraint| match a {
            Constraint::Json | Constraint::QuotedWhole => b.group() != "edges",
            Constraint::BulletPoints { .. } => b.group() != "sentences",
            _ => true,
        };
        let json_sentences = matches!(self, Constraint::Json) && other.group() == "sentences"
            || matches!(other, Constraint::Json) && self.group() == "sentences";
        self.group() != other.group()
            && one_way(self, other)
            && one_way(other, self)
            && !json_sentences
    }
}

impl Task {
    /// A response the verifier accepts, for tests and for an optional supervised warm start:
    /// `The answer is N.` for math, `Answer: X` for multiple choice, a composed text meeting
    /// every constraint for instructions, the reference solution in a ```` ```python ```` block
    /// for generated code tasks, the answer itself for exact checks. `None` where none is
    /// known: user code tasks, constraint sets no composed text meets, malformed checks.
    pub fn reference_response(&self) -> Option<String> {
        match &self.check {
            Check::Number { answer } => Some(format!("The answer is {answer}.")),
            Check::Exact { answer } => Some(answer.trim().to_string()),
            Check::Choice { answer, .. } => {
                self.check.validate().ok()?;
                Some(format!("Answer: {answer}"))
            }
            Check::Constraints { constraints } => {
                self.check.validate().ok()?;
                compose_reference(topic_of(&self.prompt), constraints)
            }
            Check::Code { .. } => code_solutions()
                .get(&self.prompt)
                .map(|solution| format!("```python\n{solution}\n```")),
        }
    }

    /// The generation budget for this task: the domain's, raised where a word-count constraint
    /// needs more room (about two tokens a word), at most 1024.
    pub fn max_new_tokens(&self) -> usize {
        let base = self.domain.max_new_tokens();
        let needed = match &self.check {
            Check::Constraints { constraints } => constraints
                .iter()
                .filter_map(|c| match c {
                    Constraint::WordsAtLeast { count } => Some(count.saturating_mul(2) + 32),
                    _ => None,
                })
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        base.max(needed).min(1024)
    }
}

/// Draws `count` tasks of `domain` at difficulty `level` for `split`, deterministically from
/// `seed`.
///
/// Levels below 1 are read as 1 and above [`MAX_LEVEL`] as [`MAX_LEVEL`]. Ids are
/// `{domain}-L{level}-{split}-{index:04}`. Train and held-out tasks never share a problem (see
/// the module documentation) and a split never repeats one. A level holds finitely many
/// problems (per split, at least about 400 for every domain and level, thousands for most):
/// when its split is exhausted, fewer than `count` tasks come back.
pub fn generate(domain: Domain, level: u8, split: Split, count: usize, seed: u64) -> Vec<Task> {
    let level = level.clamp(1, MAX_LEVEL);
    let mut rng = skillzip_core::seeded_rng(stream_seed(seed, domain, level, split));
    let mut keys = HashSet::new();
    let mut prompts = HashSet::new();
    let mut tasks = Vec::with_capacity(count.min(1 << 16));
    // Rejections (other split, repeats) are expected; a long run of nothing but rejections
    // means this level's split is exhausted.
    let patience = count.saturating_mul(20).clamp(20_000, 2_000_000);
    let mut misses = 0usize;
    while tasks.len() < count && misses < patience {
        let draft = draw(domain, level, &mut rng);
        if split_of_key(domain, level, &draft.key) != split
            || keys.contains(&draft.key)
            || prompts.contains(&draft.prompt)
        {
            misses += 1;
            continue;
        }
        misses = 0;
        keys.insert(draft.key);
        prompts.insert(draft.prompt.clone());
        tasks.push(Task {
            id: format!(
                "{}-L{level}-{}-{:04}",
                domain.name(),
                split.name(),
                tasks.len()
            ),
            domain,
            prompt: draft.prompt,
            check: draft.check,
        });
    }
    tasks
}

/// One drawn task before its split is known.
struct Draft {
    key: String,
    prompt: String,
    check: Check,
}

fn draw(domain: Domain, level: u8, rng: &mut SeededRng) -> Draft {
    match domain {
        Domain::Math => draw_math(level, rng),
        Domain::Instructions => draw_instructions(level, rng),
        Domain::Choice => draw_choice(level, rng),
        Domain::Code => draw_code(level, rng),
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds and splits
// ---------------------------------------------------------------------------------------------

/// SplitMix64's finaliser: every input bit affects every output bit.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn stream_seed(seed: u64, domain: Domain, level: u8, split: Split) -> u64 {
    let split_bit = match split {
        Split::Train => 0,
        Split::HeldOut => 1,
    };
    mix64(seed ^ mix64((domain.index() << 16) | (u64::from(level) << 8) | split_bit))
}

/// The split a canonical key belongs to. FNV-1a rather than std's hasher because the
/// partition must not change with the Rust version.
fn split_of_key(domain: Domain, level: u8, key: &str) -> Split {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let tagged = format!("{}/{level}/{key}", domain.name());
    for byte in tagged.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    if mix64(hash) & 1 == 0 {
        Split::Train
    } else {
        Split::HeldOut
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn pick<'a, T>(rng: &mut SeededRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// `n` different items of `items` (n ≤ len), in random order.
fn pick_distinct<'a, T>(rng: &mut SeededRng, items: &'a [T], n: usize) -> Vec<&'a T> {
    let mut indices: Vec<usize> = (0..items.len()).collect();
    shuffle(rng, &mut indices);
    indices.into_iter().take(n).map(|i| &items[i]).collect()
}

/// Fisher–Yates, written out so the order depends only on the rng stream.
fn shuffle<T>(rng: &mut SeededRng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The letter of option `index` (0 → `A`).
pub(crate) fn option_letter(index: usize) -> char {
    char::from(b'A' + (index % 26) as u8)
}

/// The option index of an upper-case letter.
pub(crate) fn letter_index(letter: char) -> Option<usize> {
    letter
        .is_ascii_uppercase()
        .then(|| (letter as u8 - b'A') as usize)
}

fn is_python_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Math
// ---------------------------------------------------------------------------------------------

const NAMES: [&str; 30] = [
    "Ava", "Ben", "Chloe", "Daniel", "Emma", "Finn", "Grace", "Henry", "Isla", "Jack", "Kara",
    "Leo", "Mia", "Noah", "Olivia", "Omar", "Priya", "Ravi", "Sofia", "Tom", "Uma", "Victor",
    "Wen", "Yusuf", "Zoe", "Lena", "Mateo", "Aisha", "Kenji", "Nora",
];

const OBJECTS: [&str; 15] = [
    "apples", "marbles", "stickers", "books", "cookies", "pencils", "coins", "stamps", "shells",
    "cards", "balloons", "crayons", "oranges", "toy cars", "beads",
];

/// (singular, plural) containers.
const CONTAINERS: [(&str, &str); 4] = [
    ("bag", "bags"),
    ("box", "boxes"),
    ("pack", "packs"),
    ("jar", "jars"),
];

/// (singular, plural) things with a price.
const ITEMS: [(&str, &str); 5] = [
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("sandwich", "sandwiches"),
    ("ticket", "tickets"),
    ("toy", "toys"),
];

/// The answer format every math prompt ends with. SmolLM2-135M answers "Explain briefly,
/// then end with …" by stating a number first and computing after; asked to "solve it step by
/// step, then write "The answer is N."" it rambles past its token budget and often copies the
/// placeholder ("The answer is N."). Shown one calculation as an example it writes its own
/// and then the sentence (level 1, 48 held-out tasks, greedy: 38 of 48 answers state "The
/// answer is" and a number, against 10 of 48 with the step-by-step wording, at 27 % vs 25 %
/// correct; its answers are also 22 % shorter).
pub const MATH_FORMAT: &str = "Answer with one calculation, such as \"4 + 3 = 7\", then write \"The answer is\" followed by the result.";

/// A math problem: template number, the numbers that make it this problem, text and answer.
struct MathProblem {
    template: u8,
    numbers: Vec<i64>,
    text: String,
    answer: i64,
}

fn draw_math(level: u8, rng: &mut SeededRng) -> Draft {
    let names = pick_distinct(rng, &NAMES, 3);
    let people = [*names[0], *names[1], *names[2]];
    let object = *pick(rng, &OBJECTS);
    let problem = match level {
        1 => math_one_step(rng, people, object),
        2 => math_two_steps(rng, people, object),
        3 => math_multiply_divide(rng, people, object),
        _ => math_many_steps(rng, people, object),
    };
    Draft {
        // Names and objects are only the surface: the same numbers in the same template are the
        // same problem, so they must fall on one side of the split.
        key: format!("{}:{:?}", problem.template, problem.numbers),
        prompt: format!("{} {MATH_FORMAT}", problem.text),
        check: Check::Number {
            answer: problem.answer,
        },
    }
}

/// Level 1: one addition or one subtraction of two numbers from 2 to 9 (a subtraction's answer
/// is at least 1), in short templates. Names and objects are surface, so the level holds
/// `MATH_ADD_TEMPLATES` × 64 sums plus `MATH_SUB_TEMPLATES` × 28 differences: about 1,100
/// problems, some 550 per split.
fn math_one_step(rng: &mut SeededRng, [a, b, _]: [&str; 3], obj: &str) -> MathProblem {
    let template = rng.random_range(0..MATH_ADD_TEMPLATES + MATH_SUB_TEMPLATES);
    let (x, y) = if template < MATH_ADD_TEMPLATES {
        (rng.random_range(2..=9i64), rng.random_range(2..=9i64))
    } else {
        let x = rng.random_range(3..=9i64);
        (x, rng.random_range(2..x))
    };
    let text = match template {
        0 => {
            format!("{a} has {x} {obj}. {a} gets {y} more {obj}. How many {obj} does {a} have now?")
        }
        1 => format!(
            "{a} has {x} {obj} and {b} has {y} {obj}. How many {obj} do they have in total?"
        ),
        2 => format!(
            "{a} has {x} {obj}. {b} gives {a} {y} more {obj}. How many {obj} does {a} have now?"
        ),
        3 => format!(
            "There are {x} {obj} in a box. {a} puts in {y} more {obj}. How many {obj} are in the box now?"
        ),
        4 => format!(
            "{a} found {x} {obj} in the morning and {y} {obj} in the afternoon. How many {obj} did {a} find?"
        ),
        5 => {
            format!("{a} buys {x} {obj}. Then {a} buys {y} more {obj}. How many {obj} did {a} buy?")
        }
        6 => format!(
            "There are {x} {obj} on a table. {a} adds {y} {obj}. How many {obj} are on the table now?"
        ),
        7 => format!("{a} has {x} big {obj} and {y} small {obj}. How many {obj} does {a} have?"),
        8 => format!(
            "{a} counts {x} {obj}. Then {a} counts {y} more {obj}. How many {obj} did {a} count?"
        ),
        9 => {
            format!("{a} had {x} {obj}. {b} gave {a} {y} {obj}. How many {obj} does {a} have now?")
        }
        10 => format!(
            "{a} saw {x} {obj} on Monday and {y} {obj} on Tuesday. How many {obj} did {a} see?"
        ),
        11 => format!(
            "{a} has {x} {obj} in one bag and {y} {obj} in another bag. How many {obj} does {a} have?"
        ),
        12 => format!(
            "{a} has {x} {obj}. {a} gives {y} {obj} to {b}. How many {obj} does {a} have left?"
        ),
        13 => format!("{a} had {x} {obj} and lost {y} of them. How many {obj} does {a} have now?"),
        14 => format!(
            "There are {x} {obj} in a box. {a} takes {y} out. How many {obj} are left in the box?"
        ),
        15 => format!(
            "{a} has {x} {obj}. {b} has {y} {obj}. How many more {obj} does {a} have than {b}?"
        ),
        16 => format!("{a} bought {x} {obj} and used {y} of them. How many {obj} are left?"),
        17 => format!(
            "There are {x} {obj} on a table. {a} takes {y} away. How many {obj} are on the table now?"
        ),
        18 => format!("{a} had {x} {obj}. {a} sold {y} {obj}. How many {obj} does {a} have now?"),
        19 => format!(
            "{a} has {x} {obj}. {b} has {y} {obj}. How many fewer {obj} does {b} have than {a}?"
        ),
        20 => format!("{a} had {x} {obj} and gave away {y}. How many {obj} does {a} have left?"),
        21 => format!("{a} needs {x} {obj} and has {y}. How many more {obj} does {a} need?"),
        22 => format!(
            "{a} had {x} {obj}. {b} borrowed {y} of them. How many {obj} does {a} have now?"
        ),
        _ => format!(
            "{a} has {x} {obj} and puts {y} of them in a bag. How many {obj} are not in the bag?"
        ),
    };
    let answer = if template < MATH_ADD_TEMPLATES {
        x + y
    } else {
        x - y
    };
    MathProblem {
        template,
        numbers: vec![x, y],
        text,
        answer,
    }
}

/// Level-1 math templates that add (numbered from 0).
const MATH_ADD_TEMPLATES: u8 = 12;
/// Level-1 math templates that subtract (numbered after the adding ones).
const MATH_SUB_TEMPLATES: u8 = 12;

fn math_two_steps(rng: &mut SeededRng, [a, b, _]: [&str; 3], obj: &str) -> MathProblem {
    let template = rng.random_range(0..6u8);
    let x = rng.random_range(5..=50i64);
    let y = rng.random_range(2..=30i64);
    let (text, numbers, answer) = match template {
        0 => {
            let z = rng.random_range(1..x + y);
            (
                format!(
                    "{a} has {x} {obj}. {a} buys {y} more and then gives {z} to {b}. How many {obj} does {a} have now?"
                ),
                vec![x, y, z],
                x + y - z,
            )
        }
        1 => {
            let z = rng.random_range(1..x + y);
            (
                format!(
                    "{a} picked {x} {obj} on Monday and {y} on Tuesday. {a} gave away {z} of them. How many {obj} does {a} have left?"
                ),
                vec![x, y, z],
                x + y - z,
            )
        }
        2 => {
            let z = rng.random_range(2..=30i64);
            (
                format!(
                    "A shelf holds {x} {obj}. {a} puts {y} more on it and {b} puts {z} more. How many {obj} are on the shelf now?"
                ),
                vec![x, y, z],
                x + y + z,
            )
        }
        3 => {
            let y = rng.random_range(1..x);
            (
                format!(
                    "{a} has {x} {obj}. {b} has {y} fewer {obj} than {a}. How many {obj} do they have together?"
                ),
                vec![x, y],
                x + (x - y),
            )
        }
        4 => {
            let y = rng.random_range(1..x);
            let z = rng.random_range(2..=30i64);
            (
                format!(
                    "{a} had {x} {obj}. {a} lost {y} of them and then found {z} more. How many {obj} does {a} have now?"
                ),
                vec![x, y, z],
                x - y + z,
            )
        }
        _ => (
            format!(
                "{a} has {x} {obj}. {b} has {y} more {obj} than {a}. How many {obj} do they have together?"
            ),
            vec![x, y],
            x + (x + y),
        ),
    };
    MathProblem {
        template,
        numbers,
        text,
        answer,
    }
}

fn math_multiply_divide(rng: &mut SeededRng, [a, b, _]: [&str; 3], obj: &str) -> MathProblem {
    let template = rng.random_range(0..6u8);
    let (container, containers) = *pick(rng, &CONTAINERS);
    let (text, numbers, answer) = match template {
        0 => {
            let (n, per) = (rng.random_range(2..=12i64), rng.random_range(2..=12i64));
            (
                format!(
                    "{a} buys {n} {containers} of {obj}. Each {container} has {per} {obj}. How many {obj} does {a} have?"
                ),
                vec![n, per],
                n * per,
            )
        }
        1 => {
            let (friends, each) = (rng.random_range(2..=10i64), rng.random_range(2..=15i64));
            let total = friends * each;
            (
                format!(
                    "{a} has {total} {obj} and shares them equally among {friends} friends. How many {obj} does each friend get?"
                ),
                vec![total, friends],
                each,
            )
        }
        2 => {
            let (n, per) = (rng.random_range(2..=10i64), rng.random_range(2..=12i64));
            let given = rng.random_range(1..n * per);
            (
                format!(
                    "{a} buys {n} {containers} with {per} {obj} in each and gives {given} {obj} to {b}. How many {obj} does {a} have left?"
                ),
                vec![n, per, given],
                n * per - given,
            )
        }
        3 => {
            let (item, items) = *pick(rng, &ITEMS);
            let (price, n) = (rng.random_range(2..=9i64), rng.random_range(2..=6i64));
            let bills: Vec<i64> = [20, 50, 100]
                .into_iter()
                .filter(|&m| m > price * n)
                .collect();
            let paid = *pick(rng, &bills);
            (
                format!(
                    "A {item} costs ${price}. {a} buys {n} {items} and pays with a ${paid} bill. How many dollars of change does {a} get?"
                ),
                vec![price, n, paid],
                paid - price * n,
            )
        }
        4 => {
            let (pages, days, extra) = (
                rng.random_range(3..=20i64),
                rng.random_range(2..=7i64),
                rng.random_range(2..=30i64),
            );
            (
                format!(
                    "{a} reads {pages} pages every day for {days} days and then reads {extra} more pages. How many pages does {a} read in total?"
                ),
                vec![pages, days, extra],
                pages * days + extra,
            )
        }
        _ => {
            let (per, filled) = (rng.random_range(2..=12i64), rng.random_range(2..=12i64));
            let total = per * filled;
            (
                format!(
                    "{a} has {total} {obj} and puts them into {containers} of {per}. How many {containers} does {a} fill?"
                ),
                vec![total, per],
                filled,
            )
        }
    };
    MathProblem {
        template,
        numbers,
        text,
        answer,
    }
}

fn math_many_steps(rng: &mut SeededRng, [a, b, c]: [&str; 3], obj: &str) -> MathProblem {
    let template = rng.random_range(0..6u8);
    let (text, numbers, answer) = match template {
        0 => {
            let (_, containers) = *pick(rng, &CONTAINERS);
            let (n, per, friends) = (
                rng.random_range(3..=8i64),
                rng.random_range(3..=12i64),
                rng.random_range(2..=6i64),
            );
            let total = n * per;
            let each = rng.random_range(1..=(total - 1) / friends);
            let given = total - friends * each;
            (
                format!(
                    "{a} buys {n} {containers} of {obj} with {per} in each. {a} gives {given} {obj} to {b} and shares the rest equally among {friends} friends. How many {obj} does each friend get?"
                ),
                vec![n, per, given, friends],
                each,
            )
        }
        1 => {
            let (days, sold) = (rng.random_range(2..=7i64), rng.random_range(2..=9i64));
            let start = sold * days + rng.random_range(1..=40i64);
            let delivered = rng.random_range(5..=50i64);
            (
                format!(
                    "A shop has {start} {obj}. It sells {sold} {obj} each day for {days} days and then gets {delivered} more. How many {obj} does the shop have now?"
                ),
                vec![start, sold, days, delivered],
                start - sold * days + delivered,
            )
        }
        2 => {
            let (wage, hours, days) = (
                rng.random_range(8..=20i64),
                rng.random_range(2..=8i64),
                rng.random_range(2..=6i64),
            );
            let earned = wage * hours * days;
            let spent = rng.random_range(1..earned);
            (
                format!(
                    "{a} earns ${wage} an hour and works {hours} hours a day for {days} days. Then {a} spends ${spent}. How many dollars does {a} have left?"
                ),
                vec![wage, hours, days, spent],
                earned - spent,
            )
        }
        3 => {
            let x = rng.random_range(3..=25i64);
            let fewer = rng.random_range(1..2 * x);
            (
                format!(
                    "{a} has {x} {obj}. {b} has twice as many as {a}, and {c} has {fewer} fewer than {b}. How many {obj} do the three of them have together?"
                ),
                vec![x, fewer],
                x + 2 * x + (2 * x - fewer),
            )
        }
        4 => {
            let adult = rng.random_range(8..=20i64);
            let child = rng.random_range(3..adult);
            let (adults, children) = (rng.random_range(1..=3i64), rng.random_range(1..=4i64));
            let cost = adults * adult + children * child;
            let bills: Vec<i64> = [50, 100, 200].into_iter().filter(|&m| m > cost).collect();
            let paid = *pick(rng, &bills);
            (
                format!(
                    "Adult tickets cost ${adult} and child tickets cost ${child}. A family buys {adults} adult and {children} child tickets and pays with ${paid}. How many dollars of change do they get?"
                ),
                vec![adult, child, adults, children, paid],
                paid - cost,
            )
        }
        _ => {
            let (trays, per, box_size) = (
                rng.random_range(2..=6i64),
                rng.random_range(6..=12i64),
                rng.random_range(2..=6i64),
            );
            let baked = trays * per;
            // Leave a remainder of 1..=box_size eaten cookies so the rest fills whole boxes.
            let eaten = match baked % box_size {
                0 => box_size,
                r => r,
            };
            (
                format!(
                    "{a} bakes {trays} trays of {per} cookies. {a} eats {eaten} and packs the rest into boxes of {box_size}. How many boxes does {a} fill?"
                ),
                vec![trays, per, box_size],
                (baked - eaten) / box_size,
            )
        }
    };
    MathProblem {
        template,
        numbers,
        text,
        answer,
    }
}

// ---------------------------------------------------------------------------------------------
// Instructions
// ---------------------------------------------------------------------------------------------

const TOPICS: [&str; 60] = [
    "the ocean",
    "a rainy day",
    "your favorite season",
    "learning to cook",
    "city life",
    "the moon",
    "a walk in the park",
    "trains",
    "coffee",
    "a small village",
    "winter mornings",
    "robots",
    "gardening",
    "the library",
    "bicycles",
    "the desert",
    "mountains",
    "birds",
    "a birthday party",
    "the first day of school",
    "a lost umbrella",
    "summer holidays",
    "your hometown",
    "a favorite book",
    "old photographs",
    "the night sky",
    "a busy market",
    "learning a new language",
    "a river",
    "snow",
    "a thunderstorm",
    "tea",
    "a long train ride",
    "the beach",
    "a museum visit",
    "an old tree",
    "a school trip",
    "a favorite meal",
    "playing chess",
    "a family dinner",
    "your best friend",
    "the wind",
    "autumn leaves",
    "a candle",
    "a bakery",
    "the zoo",
    "a football match",
    "paper planes",
    "a lighthouse",
    "the stars",
    "a picnic",
    "fishing",
    "a farm",
    "a bridge",
    "the rain",
    "clouds",
    "a mountain hike",
    "cats",
    "dogs",
    "a quiet evening",
];

const REQUESTS: [&str; 5] = [
    "a short note",
    "a short paragraph",
    "a brief description",
    "a short message to a friend",
    "a short blog post",
];

/// Nouns to include; none appears in the filler sentences below, so the count is exact.
const KEYWORDS: [&str; 14] = [
    "light",
    "change",
    "color",
    "water",
    "music",
    "energy",
    "patience",
    "nature",
    "freedom",
    "peace",
    "silence",
    "history",
    "kindness",
    "adventure",
];

/// Words to avoid; none appears in any topic, filler sentence, opening or closing phrase.
const FORBIDDEN: [&str; 11] = [
    "very",
    "really",
    "thing",
    "nice",
    "good",
    "bad",
    "great",
    "just",
    "stuff",
    "amazing",
    "beautiful",
];

const OPENINGS: [&str; 6] = [
    "In my view",
    "I think",
    "To me",
    "Honestly",
    "Simply put",
    "From where I stand",
];

const CLOSINGS: [&str; 5] = [
    "Is there anything else I can help with?",
    "Thank you for reading.",
    "That is all for now.",
    "Let me know what you think.",
    "See you soon.",
];

/// Sentences about `{topic}` used to build reference responses; no commas, keywords or
/// forbidden words, and no verb that would have to agree with the topic.
const FILLERS: [&str; 10] = [
    "I like to think about {topic}.",
    "There is a lot to learn from {topic}.",
    "Many people have a story about {topic}.",
    "It reminds me to slow down and look around.",
    "Small moments like these can mean a lot.",
    "I hope this note gives you a clear picture.",
    "Every day brings something new to notice.",
    "It is easy to enjoy when you take your time.",
    "Some of my best memories are tied to it.",
    "I would like to share more about it soon.",
];

/// Sentences carrying a keyword once each.
const KEYWORD_SENTENCES: [&str; 4] = [
    "I often think about {word}.",
    "{Word} is part of it too.",
    "There is {word} in it.",
    "{Word} makes it special.",
];

/// Easy constraints (level 1, and the extra one at levels 3 and 4).
fn easy_constraint(rng: &mut SeededRng) -> Constraint {
    match rng.random_range(0..7u8) {
        0 => Constraint::WordsAtMost {
            count: 20 + 5 * rng.random_range(0..=4usize),
        },
        1 => Constraint::WordsAtLeast {
            count: 10 + 5 * rng.random_range(0..=2usize),
        },
        2 => Constraint::Lowercase,
        3 => Constraint::KeywordAtLeast {
            word: pick(rng, &KEYWORDS).to_string(),
            times: 1,
        },
        4 => Constraint::ForbiddenWord {
            word: pick(rng, &FORBIDDEN).to_string(),
        },
        5 => Constraint::StartsWith {
            text: pick(rng, &OPENINGS).to_string(),
        },
        _ => Constraint::NoCommas,
    }
}

/// Medium constraints (level 2, and one of those at levels 3 and 4).
fn medium_constraint(rng: &mut SeededRng) -> Constraint {
    match rng.random_range(0..10u8) {
        0 => Constraint::Uppercase,
        1 => Constraint::EndsWith {
            text: pick(rng, &CLOSINGS).to_string(),
        },
        2 => Constraint::QuotedWhole,
        3 => Constraint::Title,
        4 => Constraint::Postscript,
        5 => Constraint::KeywordAtLeast {
            word: pick(rng, &KEYWORDS).to_string(),
            times: 2,
        },
        6 => Constraint::SentencesAtMost {
            count: rng.random_range(2..=3),
        },
        7 => Constraint::SentencesAtLeast {
            count: rng.random_range(3..=4),
        },
        8 => Constraint::WordsAtMost {
            count: 12 + rng.random_range(0..=3usize),
        },
        _ => Constraint::WordsAtLeast {
            count: 30 + 5 * rng.random_range(0..=2usize),
        },
    }
}

/// Hard constraints (one at level 4).
fn hard_constraint(rng: &mut SeededRng) -> Constraint {
    match rng.random_range(0..5u8) {
        0 => Constraint::Paragraphs {
            count: rng.random_range(2..=3),
        },
        1 => Constraint::BulletPoints {
            count: rng.random_range(2..=4),
        },
        2 => Constraint::Json,
        3 => Constraint::KeywordAtLeast {
            word: pick(rng, &KEYWORDS).to_string(),
            times: 3,
        },
        _ => Constraint::SentencesAtLeast {
            count: rng.random_range(5..=6),
        },
    }
}

fn draw_instructions(level: u8, rng: &mut SeededRng) -> Draft {
    type Tier = fn(&mut SeededRng) -> Constraint;
    let tiers: &[Tier] = match level {
        1 => &[easy_constraint],
        2 => &[medium_constraint],
        3 => &[medium_constraint, easy_constraint],
        _ => &[hard_constraint, medium_constraint, easy_constraint],
    };
    // Incompatible draws are redrawn; a few hundred tries never run out in practice, and the
    // fallback keeps the function total.
    for _ in 0..1000 {
        let topic = *pick(rng, &TOPICS);
        let request = *pick(rng, &REQUESTS);
        let mut constraints: Vec<Constraint> = tiers.iter().map(|tier| tier(rng)).collect();
        let compatible = constraints
            .iter()
            .enumerate()
            .all(|(i, a)| constraints[i + 1..].iter().all(|b| a.combines_with(b)));
        let keyword_in_topic = constraints.iter().any(|c| match c {
            Constraint::KeywordAtLeast { word, .. } => topic.split(' ').any(|w| w == word),
            _ => false,
        });
        if !compatible || keyword_in_topic {
            continue;
        }
        shuffle(rng, &mut constraints);
        if compose_reference(topic, &constraints).is_none() {
            continue;
        }
        return instruction_draft(request, topic, constraints);
    }
    instruction_draft(
        REQUESTS[0],
        TOPICS[0],
        vec![Constraint::WordsAtLeast { count: 5 }],
    )
}

fn instruction_draft(request: &str, topic: &str, constraints: Vec<Constraint>) -> Draft {
    let instructions: Vec<String> = constraints.iter().map(Constraint::instruction).collect();
    let mut sorted = instructions.clone();
    sorted.sort();
    Draft {
        // The request's wording and the constraints' order are surface: same topic and same
        // constraint set is the same task.
        key: format!("{topic}|{}", sorted.join("|")),
        prompt: format!("Write {request} about {topic}. {}", instructions.join(" ")),
        check: Check::Constraints { constraints },
    }
}

/// The topic of a prompt of the form "Write … about TOPIC. …", or a neutral stand-in.
fn topic_of(prompt: &str) -> &str {
    const FALLBACK: &str = "this topic";
    let Some(start) = prompt.find(" about ") else {
        return FALLBACK;
    };
    let rest = &prompt[start + " about ".len()..];
    let topic = rest
        .split(['.', '\n', '?', '!'])
        .next()
        .unwrap_or("")
        .trim();
    let plain = topic
        .chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || c == '\'' || c == '-');
    if topic.is_empty() || !plain || topic.split_whitespace().count() > 6 {
        FALLBACK
    } else {
        topic
    }
}

/// A response about `topic` meeting every constraint, or `None` when the composition below
/// doesn't manage (contradictory or too tight constraints).
fn compose_reference(topic: &str, constraints: &[Constraint]) -> Option<String> {
    // Opening with a sentence about the topic reads better, but tight word or sentence limits
    // may only leave room for the required keyword sentences.
    [true, false].into_iter().find_map(|lead_with_topic| {
        let text = compose_once(topic, constraints, lead_with_topic);
        constraints
            .iter()
            .all(|c| c.check(&text).is_ok())
            .then_some(text)
    })
}

fn compose_once(topic: &str, constraints: &[Constraint], lead_with_topic: bool) -> String {
    let fill = |template: &str| template.replace("{topic}", topic);
    let mut sentences: Vec<String> = Vec::new();
    let mut next_filler = 0;
    if lead_with_topic {
        sentences.push(fill(FILLERS[0]));
        next_filler = 1;
    }
    for constraint in constraints {
        if let Constraint::KeywordAtLeast { word, times } = constraint {
            for i in 0..*times {
                let template = KEYWORD_SENTENCES[i % KEYWORD_SENTENCES.len()];
                sentences.push(
                    template
                        .replace("{Word}", &capitalize(word))
                        .replace("{word}", word),
                );
            }
        }
    }
    let units = constraints
        .iter()
        .map(|c| match c {
            Constraint::Paragraphs { count } | Constraint::BulletPoints { count } => *count,
            _ => 1,
        })
        .max()
        .unwrap_or(1);
    let lower_bounds: Vec<&Constraint> = constraints
        .iter()
        .filter(|c| {
            matches!(
                c,
                Constraint::WordsAtLeast { .. } | Constraint::SentencesAtLeast { .. }
            )
        })
        .collect();
    loop {
        let text = layout(topic, &sentences, constraints);
        let enough = !sentences.is_empty()
            && sentences.len() >= units
            && lower_bounds.iter().all(|c| c.check(&text).is_ok());
        if enough || next_filler >= FILLERS.len() {
            return text;
        }
        sentences.push(fill(FILLERS[next_filler]));
        next_filler += 1;
    }
}

/// Arranges sentences as the layout constraints ask, then applies the wrapping and case ones.
fn layout(topic: &str, sentences: &[String], constraints: &[Constraint]) -> String {
    let mut sentences = sentences.to_vec();
    let mut bullets = 0;
    let mut paragraphs = 1;
    for constraint in constraints {
        match constraint {
            Constraint::StartsWith { text } => {
                if let Some(first) = sentences.first_mut() {
                    // Keep "I" capitalised; lower anything else so the opening reads as one
                    // sentence.
                    let joined = if first.starts_with("I ") {
                        first.clone()
                    } else {
                        let mut chars = first.chars();
                        chars
                            .next()
                            .map(|c| c.to_lowercase().chain(chars).collect())
                            .unwrap_or_default()
                    };
                    *first = format!("{text} {joined}");
                }
            }
            Constraint::EndsWith { text } => sentences.push(text.clone()),
            Constraint::BulletPoints { count } => bullets = *count,
            Constraint::Paragraphs { count } => paragraphs = *count,
            _ => {}
        }
    }
    let groups = bullets.max(paragraphs).max(1);
    let grouped: Vec<String> = split_evenly(&sentences, groups)
        .into_iter()
        .map(|group| group.join(" "))
        .collect();
    let mut text = if bullets > 0 {
        grouped
            .iter()
            .map(|g| format!("* {g}"))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        grouped.join("\n\n")
    };
    if constraints.contains(&Constraint::Title) {
        let title: Vec<String> = topic.split(' ').map(capitalize).collect();
        // A single newline keeps the title inside the first paragraph.
        text = format!("<<{}>>\n{text}", title.join(" "));
    }
    if constraints.contains(&Constraint::Postscript) {
        text.push_str("\nP.S. I will write again soon.");
    }
    if constraints.contains(&Constraint::Json) {
        let value = serde_json::json!({ "text": text });
        text = serde_json::to_string_pretty(&value).unwrap_or_default();
    }
    if constraints.contains(&Constraint::QuotedWhole) {
        text = format!("\"{text}\"");
    }
    if constraints.contains(&Constraint::Lowercase) {
        text = text.to_lowercase();
    } else if constraints.contains(&Constraint::Uppercase) {
        text = text.to_uppercase();
    }
    text
}

/// `items` in `groups` consecutive runs whose sizes differ by at most one (empty runs when
/// there are fewer items than groups).
fn split_evenly(items: &[String], groups: usize) -> Vec<&[String]> {
    let base = items.len() / groups;
    let extra = items.len() % groups;
    let mut runs = Vec::with_capacity(groups);
    let mut start = 0;
    for g in 0..groups {
        let len = base + usize::from(g < extra);
        runs.push(&items[start..start + len]);
        start += len;
    }
    runs
}

// ---------------------------------------------------------------------------------------------
// Multiple choice
// ---------------------------------------------------------------------------------------------

const CHOICE_FORMAT: &str = "Reply with \"Answer:\" and the letter of the correct option.";

/// A question with its correct option and distractors, before the options are shuffled.
struct ChoiceItem {
    kind: &'static str,
    question: String,
    correct: String,
    distractors: Vec<String>,
}

const CATEGORIES: [(&str, [&str; 10]); 9] = [
    (
        "a fruit",
        [
            "apple",
            "banana",
            "grape",
            "mango",
            "pear",
            "fig",
            "melon",
            "strawberry",
            "pineapple",
            "coconut",
        ],
    ),
    (
        "an animal",
        [
            "dog", "cat", "horse", "lion", "tiger", "rabbit", "elephant", "zebra", "monkey", "goat",
        ],
    ),
    (
        "a color",
        [
            "red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white", "gray",
        ],
    ),
    (
        "a vehicle",
        [
            "car", "bus", "train", "bicycle", "truck", "boat", "airplane", "tractor", "scooter",
            "ship",
        ],
    ),
    (
        "a piece of furniture",
        [
            "chair", "table", "sofa", "bed", "desk", "shelf", "stool", "wardrobe", "bench",
            "dresser",
        ],
    ),
    (
        "a musical instrument",
        [
            "piano", "guitar", "violin", "drum", "flute", "trumpet", "harp", "cello", "banjo",
            "clarinet",
        ],
    ),
    (
        "a vegetable",
        [
            "carrot", "potato", "onion", "cabbage", "spinach", "lettuce", "broccoli", "celery",
            "radish", "leek",
        ],
    ),
    (
        "a body part",
        [
            "hand", "foot", "knee", "elbow", "nose", "ear", "shoulder", "finger", "ankle", "chin",
        ],
    ),
    (
        "a tool",
        [
            "hammer",
            "saw",
            "wrench",
            "drill",
            "screwdriver",
            "shovel",
            "rake",
            "pliers",
            "chisel",
            "axe",
        ],
    ),
];

/// Pairs whose opposite is unambiguous among all the words listed here.
const OPPOSITES: [(&str, &str); 37] = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("wet", "dry"),
    ("young", "old"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("loud", "quiet"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("push", "pull"),
    ("buy", "sell"),
    ("win", "lose"),
    ("inside", "outside"),
    ("left", "right"),
    ("true", "false"),
    ("always", "never"),
    ("first", "last"),
    ("sweet", "sour"),
    ("north", "south"),
    ("east", "west"),
    ("before", "after"),
    ("give", "take"),
    ("laugh", "cry"),
    ("smooth", "rough"),
    ("remember", "forget"),
    ("awake", "asleep"),
    ("cheap", "expensive"),
    ("day", "night"),
    ("heavy", "light"),
    ("wide", "narrow"),
    ("deep", "shallow"),
];

/// Made-up words, so logic questions can't be answered from world knowledge.
const NONSENSE: [&str; 16] = [
    "glorp", "zink", "blick", "mimp", "dap", "wug", "fep", "borp", "nurb", "plim", "trab", "vesk",
    "quon", "smeb", "drell", "kib",
];

const ADJECTIVES: [&str; 10] = [
    "blue", "green", "red", "yellow", "purple", "tall", "small", "fast", "loud", "soft",
];

/// (comparative, top superlative, bottom superlative) for ordering puzzles.
const RELATIONS: [(&str, &str, &str); 4] = [
    ("taller", "tallest", "shortest"),
    ("older", "oldest", "youngest"),
    ("faster", "fastest", "slowest"),
    ("heavier", "heaviest", "lightest"),
];

fn draw_choice(level: u8, rng: &mut SeededRng) -> Draft {
    type Kind = fn(&mut SeededRng) -> ChoiceItem;
    let kinds: &[Kind] = match level {
        1 => &[
            |r| compare_numbers(r, 2, 1, 20),
            |r| category_member(r, 2),
            |r| opposite(r, 2),
            |r| arithmetic_choice(r, 1),
            |r| sequence_choice(r, 1),
        ],
        2 => &[
            |r| compare_numbers(r, 3, 1, 99),
            |r| category_member(r, 3),
            |r| opposite(r, 3),
            |r| arithmetic_choice(r, 2),
            |r| sequence_choice(r, 2),
        ],
        3 => &[
            |r| compare_numbers(r, 4, 100, 999),
            category_outsider,
            |r| arithmetic_choice(r, 3),
            |r| sequence_choice(r, 3),
            |r| ordering(r, 3),
            syllogism_property,
        ],
        _ => &[
            compare_products,
            syllogism_chain,
            |r| ordering(r, 4),
            |r| sequence_choice(r, 4),
            |r| arithmetic_choice(r, 4),
            category_outsider,
        ],
    };
    let item = pick(rng, kinds)(rng);
    let mut options = item.distractors;
    shuffle(rng, &mut options);
    let position = rng.random_range(0..=options.len());
    options.insert(position, item.correct);
    let mut sorted = options.clone();
    sorted.sort();
    let listed: Vec<String> = options
        .iter()
        .enumerate()
        .map(|(i, option)| format!("{}) {option}", option_letter(i)))
        .collect();
    Draft {
        // The options' order is surface: it must not let one question appear in both splits.
        key: format!("{}|{}|{}", item.kind, item.question, sorted.join("|")),
        prompt: format!("{}\n{}\n{CHOICE_FORMAT}", item.question, listed.join("\n")),
        check: Check::Choice {
            answer: option_letter(position),
            options: options.len(),
            texts: options,
        },
    }
}

/// `n` different integers in `lo..=hi`.
fn distinct_numbers(rng: &mut SeededRng, n: usize, lo: i64, hi: i64) -> Vec<i64> {
    let mut numbers: Vec<i64> = Vec::with_capacity(n);
    while numbers.len() < n {
        let x = rng.random_range(lo..=hi);
        if !numbers.contains(&x) {
            numbers.push(x);
        }
    }
    numbers
}

/// Up to `n` different candidates that differ from `correct`, in candidate order.
fn distinct_distractors(correct: i64, candidates: &[i64], n: usize) -> Vec<String> {
    let mut chosen: Vec<i64> = Vec::with_capacity(n);
    for &c in candidates {
        if c != correct && c >= 0 && !chosen.contains(&c) && chosen.len() < n {
            chosen.push(c);
        }
    }
    chosen.iter().map(i64::to_string).collect()
}

fn compare_numbers(rng: &mut SeededRng, n: usize, lo: i64, hi: i64) -> ChoiceItem {
    // Three-digit numbers share their hundreds digit so that the tens and units decide.
    let numbers = if lo >= 100 {
        let hundreds = rng.random_range(1..=9i64) * 100;
        distinct_numbers(rng, n, 0, 99)
            .into_iter()
            .map(|x| hundreds + x)
            .collect()
    } else {
        distinct_numbers(rng, n, lo, hi)
    };
    let largest = rng.random::<bool>();
    let question = match (n, largest) {
        (2, true) => "Which number is larger?",
        (2, false) => "Which number is smaller?",
        (_, true) => "Which number is the largest?",
        (_, false) => "Which number is the smallest?",
    };
    let correct = if largest {
        numbers.iter().max()
    } else {
        numbers.iter().min()
    }
    .copied()
    .unwrap_or_default();
    ChoiceItem {
        kind: "compare",
        question: question.into(),
        correct: correct.to_string(),
        distractors: numbers
            .iter()
            .filter(|&&x| x != correct)
            .map(i64::to_string)
            .collect(),
    }
}

fn compare_products(rng: &mut SeededRng) -> ChoiceItem {
    let mut products: Vec<(i64, i64)> = Vec::with_capacity(4);
    while products.len() < 4 {
        let (a, b) = (rng.random_range(2..=12i64), rng.random_range(2..=12i64));
        if products.iter().all(|&(x, y)| x * y != a * b) {
            products.push((a, b));
        }
    }
    let largest = rng.random::<bool>();
    let best = if largest {
        products.iter().max_by_key(|(a, b)| a * b)
    } else {
        products.iter().min_by_key(|(a, b)| a * b)
    }
    .copied()
    .unwrap_or_default();
    let show = |(a, b): (i64, i64)| format!("{a} × {b}");
    ChoiceItem {
        kind: "products",
        question: format!(
            "Which product is the {}?",
            if largest { "largest" } else { "smallest" }
        ),
        correct: show(best),
        distractors: products
            .iter()
            .filter(|&&p| p != best)
            .map(|&p| show(p))
            .collect(),
    }
}

fn category_member(rng: &mut SeededRng, n: usize) -> ChoiceItem {
    let category = rng.random_range(0..CATEGORIES.len());
    let (label, members) = CATEGORIES[category];
    let correct = *pick(rng, &members);
    let mut distractors: Vec<String> = Vec::with_capacity(n - 1);
    while distractors.len() < n - 1 {
        let other = rng.random_range(0..CATEGORIES.len());
        let word = *pick(rng, &CATEGORIES[other].1);
        if other != category && !distractors.iter().any(|d| d == word) {
            distractors.push(word.to_string());
        }
    }
    ChoiceItem {
        kind: "category",
        question: format!("Which of these is {label}?"),
        correct: correct.to_string(),
        distractors,
    }
}

fn category_outsider(rng: &mut SeededRng) -> ChoiceItem {
    let category = rng.random_range(0..CATEGORIES.len());
    let (label, members) = CATEGORIES[category];
    let other = (category + rng.random_range(1..CATEGORIES.len())) % CATEGORIES.len();
    let outsider = *pick(rng, &CATEGORIES[other].1);
    ChoiceItem {
        kind: "outsider",
        question: format!("Which of these is not {label}?"),
        correct: outsider.to_string(),
        distractors: pick_distinct(rng, &members, 3)
            .into_iter()
            .map(|w| w.to_string())
            .collect(),
    }
}

fn opposite(rng: &mut SeededRng, n: usize) -> ChoiceItem {
    let pair = rng.random_range(0..OPPOSITES.len());
    let (word, answer) = if rng.random::<bool>() {
        OPPOSITES[pair]
    } else {
        (OPPOSITES[pair].1, OPPOSITES[pair].0)
    };
    let mut distractors: Vec<String> = Vec::with_capacity(n - 1);
    while distractors.len() < n - 1 {
        let other = rng.random_range(0..OPPOSITES.len());
        let candidate = if rng.random::<bool>() {
            OPPOSITES[other].0
        } else {
            OPPOSITES[other].1
        };
        if other != pair && !distractors.iter().any(|d| d == candidate) {
            distractors.push(candidate.to_string());
        }
    }
    ChoiceItem {
        kind: "opposite",
        question: format!("What is the opposite of \"{word}\"?"),
        correct: answer.to_string(),
        distractors,
    }
}

fn arithmetic_choice(rng: &mut SeededRng, level: u8) -> ChoiceItem {
    let (question, answer, candidates, n) = match level {
        1 => {
            let (a, b) = (rng.random_range(1..=9i64), rng.random_range(1..=9i64));
            let s = a + b;
            let near = *pick(rng, &[s + 1, s - 1, s + 2, s - 2]);
            (format!("What is {a} + {b}?"), s, vec![near, s + 3], 1)
        }
        2 => {
            let (a, b) = (rng.random_range(10..=60i64), rng.random_range(10..=60i64));
            let (question, s) = if rng.random::<bool>() {
                (format!("What is {a} + {b}?"), a + b)
            } else {
                let (hi, lo) = (a.max(b), a.min(b));
                (format!("What is {hi} - {lo}?"), hi - lo)
            };
            let mut near = vec![s + 1, s - 1, s + 10, s - 10];
            shuffle(rng, &mut near);
            (question, s, near, 2)
        }
        3 => {
            let (a, b) = (rng.random_range(2..=12i64), rng.random_range(2..=12i64));
            let p = a * b;
            let mut near = vec![a * (b + 1), (a + 1) * b, p + 1, p - 1, a * (b - 1), a + b];
            shuffle(rng, &mut near);
            (format!("What is {a} × {b}?"), p, near, 3)
        }
        _ => {
            let (a, b, c) = (
                rng.random_range(2..=9i64),
                rng.random_range(2..=9i64),
                rng.random_range(2..=20i64),
            );
            let v = a * b + c;
            // The first candidate is the order-of-operations mistake.
            let mut rest = vec![v + 1, v - 1, a * b - c, (a + 1) * b + c, v + 10];
            shuffle(rng, &mut rest);
            let mut near = vec![a * (b + c)];
            near.extend(rest);
            (format!("What is {a} × {b} + {c}?"), v, near, 3)
        }
    };
    ChoiceItem {
        kind: "arithmetic",
        question,
        correct: answer.to_string(),
        distractors: distinct_distractors(answer, &candidates, n),
    }
}

fn sequence_choice(rng: &mut SeededRng, level: u8) -> ChoiceItem {
    let (terms, answer, candidates, n): (Vec<i64>, i64, Vec<i64>, usize) = match level {
        1 => {
            let start = rng.random_range(1..=30i64);
            let terms: Vec<i64> = (0..4).map(|i| start + i).collect();
            let next = start + 4;
            let wrong = *pick(rng, &[next + 1, next - 1, next + 2]);
            (terms, next, vec![wrong], 1)
        }
        2 => {
            let (start, step) = (rng.random_range(1..=20i64), rng.random_range(2..=10i64));
            let terms: Vec<i64> = (0..4).map(|i| start + i * step).collect();
            let next = start + 4 * step;
            let mut near = vec![next + 1, next - 1, next + step, next + 2];
            shuffle(rng, &mut near);
            (terms, next, near, 2)
        }
        3 => {
            if rng.random::<bool>() {
                let (start, ratio) = (rng.random_range(1..=6i64), rng.random_range(2..=3i64));
                let terms: Vec<i64> = (0..4).map(|i| start * ratio.pow(i)).collect();
                let last = terms[3];
                let next = last * ratio;
                let mut near = vec![last + (last - terms[2]), next + 1, next - 1, next + ratio];
                shuffle(rng, &mut near);
                (terms, next, near, 3)
            } else {
                let (start, step) = (rng.random_range(50..=99i64), rng.random_range(2..=9i64));
                let terms: Vec<i64> = (0..4).map(|i| start - i * step).collect();
                let next = start - 4 * step;
                let mut near = vec![next + 1, next - 1, next - step, terms[3] + step];
                shuffle(rng, &mut near);
                (terms, next, near, 3)
            }
        }
        _ => match rng.random_range(0..3u8) {
            0 => {
                // Differences grow by one each step.
                let (start, first) = (rng.random_range(1..=20i64), rng.random_range(1..=5i64));
                let mut terms = vec![start];
                for i in 0..4 {
                    terms.push(terms[i] + first + i as i64);
                }
                let last = terms[4];
                let next = last + first + 4;
                let mut near = vec![last + first + 3, next + 1, next - 1, next + 2];
                shuffle(rng, &mut near);
                (terms, next, near, 3)
            }
            1 => {
                let k = rng.random_range(1..=8i64);
                let terms: Vec<i64> = (k..k + 4).map(|x| x * x).collect();
                let next = (k + 4) * (k + 4);
                let last = terms[3];
                let mut near = vec![last + (last - terms[2]), next + 1, next - 1, next + 2];
                shuffle(rng, &mut near);
                (terms, next, near, 3)
            }
            _ => {
                // Alternately add `up` and subtract `down`.
                let (start, up, down) = (
                    rng.random_range(10..=30i64),
                    rng.random_range(3..=9i64),
                    rng.random_range(1..=2i64),
                );
                let mut terms = vec![start];
                for i in 0..4usize {
                    let step = if i.is_multiple_of(2) { up } else { -down };
                    terms.push(terms[i] + step);
                }
                let next = terms[4] + up;
                let mut near = vec![terms[4] - down, next + 1, next - 1, next + down];
                shuffle(rng, &mut near);
                (terms, next, near, 3)
            }
        },
    };
    let shown: Vec<String> = terms.iter().map(i64::to_string).collect();
    ChoiceItem {
        kind: "sequence",
        question: format!("Which number comes next: {}, ...?", shown.join(", ")),
        correct: answer.to_string(),
        distractors: distinct_distractors(answer, &candidates, n),
    }
}

fn ordering(rng: &mut SeededRng, people: usize) -> ChoiceItem {
    let names: Vec<&str> = pick_distinct(rng, &NAMES, people)
        .into_iter()
        .copied()
        .collect();
    let (comparative, top, bottom) = *pick(rng, &RELATIONS);
    // names[0] is the most, names[last] the least.
    let mut facts: Vec<String> = names
        .windows(2)
        .map(|w| format!("{} is {comparative} than {}.", w[0], w[1]))
        .collect();
    if people > 3 {
        shuffle(rng, &mut facts);
    }
    let ask_top = rng.random::<bool>();
    let (superlative, answer) = if ask_top {
        (top, names[0])
    } else {
        (bottom, names[people - 1])
    };
    ChoiceItem {
        kind: "ordering",
        question: format!("{} Who is the {superlative}?", facts.join(" ")),
        correct: answer.to_string(),
        distractors: names
            .iter()
            .filter(|&&n| n != answer)
            .map(|n| n.to_string())
            .collect(),
    }
}

fn syllogism_property(rng: &mut SeededRng) -> ChoiceItem {
    let thing = *pick(rng, &NONSENSE);
    let name = *pick(rng, &NAMES);
    let adjectives = pick_distinct(rng, &ADJECTIVES, 2);
    let (property, other) = (*adjectives[0], *adjectives[1]);
    ChoiceItem {
        kind: "syllogism",
        question: format!("All {thing}s are {property}. {name} is a {thing}. Which must be true?"),
        correct: format!("{name} is {property}"),
        distractors: vec![
            format!("{name} is not {property}"),
            format!("{name} is {other}"),
            format!("{name} is not a {thing}"),
        ],
    }
}

fn syllogism_chain(rng: &mut SeededRng) -> ChoiceItem {
    let words = pick_distinct(rng, &NONSENSE, 3);
    let (a, b, c) = (*words[0], *words[1], *words[2]);
    ChoiceItem {
        kind: "chain",
        question: format!("All {a}s are {b}s. All {b}s are {c}s. Which must be true?"),
        correct: format!("All {a}s are {c}s"),
        distractors: vec![
            format!("All {c}s are {a}s"),
            format!("All {b}s are {a}s"),
            format!("No {a}s are {c}s"),
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// Code
// ---------------------------------------------------------------------------------------------

const CODE_FORMAT: &str = "Reply with the function in a ```python code block.";

/// One code task: the function, its description, tests and a reference solution.
struct CodeSpec {
    signature: String,
    description: String,
    tests: Vec<String>,
    solution: String,
}

impl CodeSpec {
    fn function(&self) -> &str {
        self.signature.split('(').next().unwrap_or(&self.signature)
    }

    fn prompt(&self) -> String {
        format!(
            "Write a Python function `{}` that {}. {CODE_FORMAT}",
            self.signature, self.description
        )
    }
}

/// A family of code tasks: how many variants it has and how to build variant `i`.
type CodeTemplate = (usize, fn(usize) -> CodeSpec);

fn code_templates(level: u8) -> &'static [CodeTemplate] {
    match level {
        1 => CODE_LEVEL_1,
        2 => CODE_LEVEL_2,
        3 => CODE_LEVEL_3,
        _ => CODE_LEVEL_4,
    }
}

fn draw_code(level: u8, rng: &mut SeededRng) -> Draft {
    // A template first, then one of its variants, so templates with many numeric variants
    // don't crowd out the others.
    let (variants, build) = *pick(rng, code_templates(level));
    let spec = build(rng.random_range(0..variants));
    let prompt = spec.prompt();
    Draft {
        key: prompt.clone(),
        check: Check::Code {
            function: spec.function().to_string(),
            tests: spec.tests,
        },
        prompt,
    }
}

/// Every generated code prompt's reference solution. Built once by enumerating all variants
/// (a few thousand), so a [`Task`] needs no field beyond its prompt and check.
fn code_solutions() -> &'static HashMap<String, String> {
    static SOLUTIONS: OnceLock<HashMap<String, String>> = OnceLock::new();
    SOLUTIONS.get_or_init(|| {
        let mut map = HashMap::new();
        for level in 1..=MAX_LEVEL {
            for &(variants, build) in code_templates(level) {
                for i in 0..variants {
                    let spec = build(i);
                    map.insert(spec.prompt(), spec.solution);
                }
            }
        }
        map
    })
}

fn spec(signature: &str, description: String, tests: Vec<String>, solution: &str) -> CodeSpec {
    CodeSpec {
        signature: signature.to_string(),
        description,
        tests,
        solution: solution.to_string(),
    }
}

/// A Python string literal.
fn py_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn py_list(items: &[i64]) -> String {
    let shown: Vec<String> = items.iter().map(i64::to_string).collect();
    format!("[{}]", shown.join(", "))
}

fn py_str_list(items: &[&str]) -> String {
    let shown: Vec<String> = items.iter().map(|s| py_str(s)).collect();
    format!("[{}]", shown.join(", "))
}

fn py_bool(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

/// `assert {call} == {expected}` lines.
fn asserts(cases: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    cases
        .into_iter()
        .map(|(call, expected)| format!("assert {call} == {expected}"))
        .collect()
}

/// The `i`-th pair `(a, b)` with `2 <= a < b <= 9` (28 pairs).
fn small_pair(i: usize) -> (i64, i64) {
    let mut pairs = (2..=9i64).flat_map(|a| (a + 1..=9).map(move |b| (a, b)));
    pairs.nth(i % 28).unwrap_or((2, 3))
}

fn letter(i: usize) -> char {
    char::from(b'a' + (i % 26) as u8)
}

const LETTER_SAMPLES: [&str; 4] = [
    "banana",
    "mississippi",
    "the quick brown fox jumps over the lazy dog",
    "",
];

const CODE_LEVEL_1: &[CodeTemplate] = &[
    (300, code_add_k),
    (300, code_minus_k),
    (99, code_times_k),
    (330, code_linear),
    (5, code_predicate),
    (49, code_is_multiple),
    (201, code_is_above),
    (3, code_two_numbers),
    (2, code_case),
    (8, code_greet),
    (7, code_power),
    (3, code_string_basics),
    (19, code_repeat),
    (2, code_halves),
];

fn code_add_k(i: usize) -> CodeSpec {
    let k = i as i64 + 1;
    spec(
        "add_k(x)",
        format!("returns x plus {k}"),
        asserts([0, 5, -3].map(|x| (format!("add_k({x})"), (x + k).to_string()))),
        &format!("def add_k(x):\n    return x + {k}"),
    )
}

fn code_minus_k(i: usize) -> CodeSpec {
    let k = i as i64 + 1;
    spec(
        "minus_k(x)",
        format!("returns x minus {k}"),
        asserts([0, 100, k].map(|x| (format!("minus_k({x})"), (x - k).to_string()))),
        &format!("def minus_k(x):\n    return x - {k}"),
    )
}

fn code_times_k(i: usize) -> CodeSpec {
    let k = i as i64 + 2;
    spec(
        "times_k(x)",
        format!("returns x multiplied by {k}"),
        asserts([0, 3, -2].map(|x| (format!("times_k({x})"), (x * k).to_string()))),
        &format!("def times_k(x):\n    return x * {k}"),
    )
}

fn code_linear(i: usize) -> CodeSpec {
    let (a, b) = (2 + (i / 30) as i64, 1 + (i % 30) as i64);
    spec(
        "linear(x)",
        format!("returns {a} times x plus {b}"),
        asserts([0, 1, -2, 10].map(|x| (format!("linear({x})"), (a * x + b).to_string()))),
        &format!("def linear(x):\n    return {a} * x + {b}"),
    )
}

fn code_predicate(i: usize) -> CodeSpec {
    type Predicate = (&'static str, &'static str, &'static str, fn(i64) -> bool);
    const PREDICATES: [Predicate; 5] = [
        ("is_even", "x is even", "x % 2 == 0", |x| {
            x.rem_euclid(2) == 0
        }),
        ("is_odd", "x is odd", "x % 2 == 1", |x| x.rem_euclid(2) == 1),
        ("is_positive", "x is greater than zero", "x > 0", |x| x > 0),
        ("is_negative", "x is less than zero", "x < 0", |x| x < 0),
        ("is_zero", "x is zero", "x == 0", |x| x == 0),
    ];
    let (name, condition, python, holds) = PREDICATES[i % PREDICATES.len()];
    spec(
        &format!("{name}(x)"),
        format!("returns True if {condition} and False otherwise"),
        asserts([4, 7, 0, -3].map(|x| (format!("{name}({x})"), py_bool(holds(x)).to_string()))),
        &format!("def {name}(x):\n    return {python}"),
    )
}

fn code_is_multiple(i: usize) -> CodeSpec {
    let k = i as i64 + 2;
    spec(
        "is_multiple(x)",
        format!("returns True if x is divisible by {k} and False otherwise"),
        asserts(
            [3 * k, 3 * k + 1, 0, k - 1]
                .map(|x| (format!("is_multiple({x})"), py_bool(x % k == 0).to_string())),
        ),
        &format!("def is_multiple(x):\n    return x % {k} == 0"),
    )
}

fn code_is_above(i: usize) -> CodeSpec {
    let k = i as i64;
    spec(
        "is_above(x)",
        format!("returns True if x is greater than {k} and False otherwise"),
        asserts(
            [k + 1, k, k - 5, k + 20]
                .map(|x| (format!("is_above({x})"), py_bool(x > k).to_string())),
        ),
        &format!("def is_above(x):\n    return x > {k}"),
    )
}

fn code_two_numbers(i: usize) -> CodeSpec {
    type Binary = (
        &'static str,
        &'static str,
        &'static str,
        fn(i64, i64) -> i64,
    );
    const FUNCTIONS: [Binary; 3] = [
        (
            "max_of_two",
            "the larger of a and b",
            "max(a, b)",
            |a, b| a.max(b),
        ),
        (
            "min_of_two",
            "the smaller of a and b",
            "min(a, b)",
            |a, b| a.min(b),
        ),
        (
            "difference",
            "the absolute difference between a and b",
            "abs(a - b)",
            |a, b| (a - b).abs(),
        ),
    ];
    let (name, what, python, f) = FUNCTIONS[i % FUNCTIONS.len()];
    spec(
        &format!("{name}(a, b)"),
        format!("returns {what}"),
        asserts(
            [(3, 7), (10, 2), (-1, -5), (4, 4)]
                .map(|(a, b)| (format!("{name}({a}, {b})"), f(a, b).to_string())),
        ),
        &format!("def {name}(a, b):\n    return {python}"),
    )
}

fn code_case(i: usize) -> CodeSpec {
    let upper = i.is_multiple_of(2);
    let (name, what, method) = if upper {
        ("shout", "upper case", "upper")
    } else {
        ("whisper", "lower case", "lower")
    };
    spec(
        &format!("{name}(s)"),
        format!("returns the string s in {what}"),
        asserts(["hello", "Hi There", ""].map(|s| {
            let expected = if upper {
                s.to_uppercase()
            } else {
                s.to_lowercase()
            };
            (format!("{name}({})", py_str(s)), py_str(&expected))
        })),
        &format!("def {name}(s):\n    return s.{method}()"),
    )
}

fn code_greet(i: usize) -> CodeSpec {
    const GREETINGS: [&str; 8] = [
        "Hello",
        "Hi",
        "Welcome",
        "Good morning",
        "Good night",
        "Hey",
        "Greetings",
        "Goodbye",
    ];
    let greeting = GREETINGS[i % GREETINGS.len()];
    spec(
        "greet(name)",
        format!(
            "returns {} followed by name and \"!\", so greet(\"Sam\") returns {}",
            py_str(&format!("{greeting}, ")),
            py_str(&format!("{greeting}, Sam!"))
        ),
        asserts(["Ann", "Bo", "Zed"].map(|n| {
            (
                format!("greet({})", py_str(n)),
                py_str(&format!("{greeting}, {n}!")),
            )
        })),
        &format!(
            "def greet(name):\n    return {} + name + \"!\"",
            py_str(&format!("{greeting}, "))
        ),
    )
}

fn code_power(i: usize) -> CodeSpec {
    let k = i as u32 + 2;
    spec(
        "power(x)",
        format!("returns x raised to the power {k}"),
        asserts([2i64, 3, 0, -1].map(|x| (format!("power({x})"), x.pow(k).to_string()))),
        &format!("def power(x):\n    return x ** {k}"),
    )
}

fn code_string_basics(i: usize) -> CodeSpec {
    let samples = ["python", "a", "hello world"];
    match i % 3 {
        0 => spec(
            "first_char(s)",
            "returns the first character of the non-empty string s".into(),
            asserts(samples.map(|s| (format!("first_char({})", py_str(s)), py_str(&s[..1])))),
            "def first_char(s):\n    return s[0]",
        ),
        1 => spec(
            "last_char(s)",
            "returns the last character of the non-empty string s".into(),
            asserts(samples.map(|s| {
                (
                    format!("last_char({})", py_str(s)),
                    py_str(&s[s.len() - 1..]),
                )
            })),
            "def last_char(s):\n    return s[-1]",
        ),
        _ => spec(
            "length(s)",
            "returns the number of characters in the string s".into(),
            asserts(
                ["python", "", "hello world"]
                    .map(|s| (format!("length({})", py_str(s)), s.len().to_string())),
            ),
            "def length(s):\n    return len(s)",
        ),
    }
}

fn code_repeat(i: usize) -> CodeSpec {
    let k = i + 2;
    spec(
        "repeat_text(s)",
        format!("returns the string s repeated {k} times"),
        asserts(
            ["ab", "", "x"].map(|s| (format!("repeat_text({})", py_str(s)), py_str(&s.repeat(k)))),
        ),
        &format!("def repeat_text(s):\n    return s * {k}"),
    )
}

fn code_halves(i: usize) -> CodeSpec {
    if i.is_multiple_of(2) {
        spec(
            "half(x)",
            "returns x divided by 2 and rounded down (integer division)".into(),
            asserts([(10, 5), (7, 3), (0, 0)].map(|(x, h)| (format!("half({x})"), h.to_string()))),
            "def half(x):\n    return x // 2",
        )
    } else {
        spec(
            "average(a, b)",
            "returns the average of the numbers a and b".into(),
            vec![
                "assert average(2, 4) == 3".into(),
                "assert average(1, 2) == 1.5".into(),
                "assert average(-2, 2) == 0".into(),
            ],
            "def average(a, b):\n    return (a + b) / 2",
        )
    }
}

const CODE_LEVEL_2: &[CodeTemplate] = &[
    (2, code_sum_product),
    (1, code_count_vowels),
    (26, code_count_letter),
    (2, code_reverse),
    (101, code_count_greater),
    (101, code_keep_greater),
    (19, code_scale_all),
    (50, code_shift_all),
    (1, code_count_words),
    (1, code_sum_to),
    (2, code_evens_odds),
    (2, code_largest_smallest),
    (7, code_join_words),
    (2, code_count_even_sum_squares),
    (20, code_first_last_k),
    (101, code_contains_k),
    (10, code_count_k),
    (10, code_remove_k),
    (19, code_multiples),
    (26, code_words_starting),
    (8, code_longer_than),
    (101, code_sum_greater),
    (210, code_count_between),
    (101, code_cap_all),
    (90, code_replace_in_list),
    (19, code_count_multiples),
    (3, code_list_stats),
    (10, code_position),
    (4, code_repeat_items),
    (8, code_count_short),
];

/// Number lists the level-2 tests run on, shifted around the template's constant.
fn sample_lists(k: i64) -> [Vec<i64>; 3] {
    [
        vec![k + 3, k, k - 2, k + 1, 50],
        vec![],
        vec![k + 5, k - 7, k + 6],
    ]
}

fn code_sum_product(i: usize) -> CodeSpec {
    let cases: [&[i64]; 4] = [&[1, 2, 3], &[], &[-4, 10], &[5]];
    if i.is_multiple_of(2) {
        spec(
            "sum_list(nums)",
            "returns the sum of the numbers in the list nums".into(),
            asserts(cases.map(|c| {
                (
                    format!("sum_list({})", py_list(c)),
                    c.iter().sum::<i64>().to_string(),
                )
            })),
            "def sum_list(nums):\n    total = 0\n    for n in nums:\n        total += n\n    return total",
        )
    } else {
        spec(
            "product_list(nums)",
            "returns the product of the numbers in the list nums, or 1 if it is empty".into(),
            asserts(cases.map(|c| {
                (
                    format!("product_list({})", py_list(c)),
                    c.iter().product::<i64>().to_string(),
                )
            })),
            "def product_list(nums):\n    result = 1\n    for n in nums:\n        result *= n\n    return result",
        )
    }
}

fn code_count_vowels(_: usize) -> CodeSpec {
    spec(
        "count_vowels(s)",
        "returns how many vowels (a, e, i, o, u) the lowercase string s contains".into(),
        asserts(["hello", "sky", "banana", ""].map(|s| {
            let n = s.chars().filter(|c| "aeiou".contains(*c)).count();
            (format!("count_vowels({})", py_str(s)), n.to_string())
        })),
        "def count_vowels(s):\n    return sum(1 for c in s if c in \"aeiou\")",
    )
}

fn code_count_letter(i: usize) -> CodeSpec {
    let c = letter(i);
    spec(
        "count_letter(s)",
        format!("returns how many times the letter '{c}' appears in the string s"),
        asserts(LETTER_SAMPLES.map(|s| {
            let n = s.chars().filter(|&x| x == c).count();
            (format!("count_letter({})", py_str(s)), n.to_string())
        })),
        &format!("def count_letter(s):\n    return s.count(\"{c}\")"),
    )
}

fn code_reverse(i: usize) -> CodeSpec {
    if i.is_multiple_of(2) {
        spec(
            "reverse_list(items)",
            "returns a new list with the elements of the list items in reverse order".into(),
            vec![
                "assert reverse_list([1, 2, 3]) == [3, 2, 1]".into(),
                "assert reverse_list([]) == []".into(),
                "assert reverse_list([\"a\", \"b\"]) == [\"b\", \"a\"]".into(),
            ],
            "def reverse_list(items):\n    return items[::-1]",
        )
    } else {
        spec(
            "reverse_string(s)",
            "returns the string s written backwards".into(),
            asserts(["hello", "", "ab c"].map(|s| {
                let r: String = s.chars().rev().collect();
                (format!("reverse_string({})", py_str(s)), py_str(&r))
            })),
            "def reverse_string(s):\n    return s[::-1]",
        )
    }
}

fn code_count_greater(i: usize) -> CodeSpec {
    let k = i as i64;
    spec(
        "count_greater(nums)",
        format!("returns how many numbers in the list nums are greater than {k}"),
        asserts(sample_lists(k).map(|l| {
            let n = l.iter().filter(|&&x| x > k).count();
            (format!("count_greater({})", py_list(&l)), n.to_string())
        })),
        &format!("def count_greater(nums):\n    return sum(1 for n in nums if n > {k})"),
    )
}

fn code_keep_greater(i: usize) -> CodeSpec {
    let k = i as i64;
    spec(
        "keep_greater(nums)",
        format!(
            "returns a list of the numbers in the list nums that are greater than {k}, in their original order"
        ),
        asserts(sample_lists(k).map(|l| {
            let kept: Vec<i64> = l.iter().copied().filter(|&x| x > k).collect();
            (format!("keep_greater({})", py_list(&l)), py_list(&kept))
        })),
        &format!("def keep_greater(nums):\n    return [n for n in nums if n > {k}]"),
    )
}

fn code_scale_all(i: usize) -> CodeSpec {
    let k = i as i64 + 2;
    spec(
        "scale_all(nums)",
        format!("returns a new list with every number in the list nums multiplied by {k}"),
        asserts([vec![1, 2, 3], vec![], vec![-4, 0]].map(|l| {
            let scaled: Vec<i64> = l.iter().map(|x| x * k).collect();
            (format!("scale_all({})", py_list(&l)), py_list(&scaled))
        })),
        &format!("def scale_all(nums):\n    return [n * {k} for n in nums]"),
    )
}

fn code_shift_all(i: usize) -> CodeSpec {
    let k = i as i64 + 1;
    spec(
        "shift_all(nums)",
        format!("returns a new list with {k} added to every number in the list nums"),
        asserts([vec![1, 2, 3], vec![], vec![-4, 0]].map(|l| {
            let shifted: Vec<i64> = l.iter().map(|x| x + k).collect();
            (format!("shift_all({})", py_list(&l)), py_list(&shifted))
        })),
        &format!("def shift_all(nums):\n    return [n + {k} for n in nums]"),
    )
}

fn code_count_words(_: usize) -> CodeSpec {
    spec(
        "count_words(s)",
        "returns the number of words in the string s, where words are separated by spaces".into(),
        asserts(["hello world", "one", "", "a b c d"].map(|s| {
            (
                format!("count_words({})", py_str(s)),
                s.split_whitespace().count().to_string(),
            )
        })),
        "def count_words(s):\n    return len(s.split())",
    )
}

fn code_sum_to(_: usize) -> CodeSpec {
    spec(
        "sum_to(n)",
        "returns the sum of the whole numbers from 1 to n".into(),
        asserts([1i64, 4, 10, 0].map(|n| (format!("sum_to({n})"), (n * (n + 1) / 2).to_string()))),
        "def sum_to(n):\n    total = 0\n    for i in range(1, n + 1):\n        total += i\n    return total",
    )
}

fn code_evens_odds(i: usize) -> CodeSpec {
    let even = i.is_multiple_of(2);
    let (name, what, test) = if even {
        ("evens", "even", "n % 2 == 0")
    } else {
        ("odds", "odd", "n % 2 == 1")
    };
    spec(
        &format!("{name}(nums)"),
        format!("returns a list of the {what} numbers in the list nums, in their original order"),
        asserts(
            [vec![1i64, 2, 3, 4, 5, 6], vec![], vec![7, 10, -3, 8]].map(|l| {
                let kept: Vec<i64> = l
                    .iter()
                    .copied()
                    .filter(|x| (x.rem_euclid(2) == 0) == even)
                    .collect();
                (format!("{name}({})", py_list(&l)), py_list(&kept))
            }),
        ),
        &format!("def {name}(nums):\n    return [n for n in nums if {test}]"),
    )
}

fn code_largest_smallest(i: usize) -> CodeSpec {
    let largest = i.is_multiple_of(2);
    let (name, what, python) = if largest {
        ("largest", "largest", "max")
    } else {
        ("smallest", "smallest", "min")
    };
    spec(
        &format!("{name}(nums)"),
        format!("returns the {what} number in the non-empty list nums"),
        asserts([vec![3, 9, 2], vec![-5], vec![-1, -8, 4, 4]].map(|l| {
            let v = if largest {
                l.iter().max()
            } else {
                l.iter().min()
            };
            (
                format!("{name}({})", py_list(&l)),
                v.copied().unwrap_or_default().to_string(),
            )
        })),
        &format!("def {name}(nums):\n    return {python}(nums)"),
    )
}

fn code_join_words(i: usize) -> CodeSpec {
    const SEPARATORS: [&str; 7] = [" ", "-", ", ", "_", "+", "/", " and "];
    let sep = SEPARATORS[i % SEPARATORS.len()];
    let cases: [&[&str]; 3] = [&["a", "b", "c"], &["solo"], &[]];
    spec(
        "join_words(words)",
        format!(
            "returns the strings in the list words joined together with {} between them",
            py_str(sep)
        ),
        asserts(cases.map(|c| {
            (
                format!("join_words({})", py_str_list(c)),
                py_str(&c.join(sep)),
            )
        })),
        &format!(
            "def join_words(words):\n    return {}.join(words)",
            py_str(sep)
        ),
    )
}

fn code_count_even_sum_squares(i: usize) -> CodeSpec {
    let cases: [&[i64]; 3] = [&[1, 2, 3, 4], &[], &[-2, 5, 6]];
    if i.is_multiple_of(2) {
        spec(
            "count_even(nums)",
            "returns how many even numbers the list nums contains".into(),
            asserts(cases.map(|c| {
                let n = c.iter().filter(|x| x.rem_euclid(2) == 0).count();
                (format!("count_even({})", py_list(c)), n.to_string())
            })),
            "def count_even(nums):\n    return sum(1 for n in nums if n % 2 == 0)",
        )
    } else {
        spec(
            "sum_squares(nums)",
            "returns the sum of the squares of the numbers in the list nums".into(),
            asserts(cases.map(|c| {
                let s: i64 = c.iter().map(|x| x * x).sum();
                (format!("sum_squares({})", py_list(c)), s.to_string())
            })),
            "def sum_squares(nums):\n    return sum(n * n for n in nums)",
        )
    }
}

fn code_first_last_k(i: usize) -> CodeSpec {
    let k = (i % 10) + 1;
    let first = i < 10;
    let (name, which, slice) = if first {
        ("first_k", "first", format!("items[:{k}]"))
    } else {
        ("last_k", "last", format!("items[-{k}:]"))
    };
    let long: Vec<i64> = (1..=12).collect();
    spec(
        &format!("{name}(items)"),
        format!(
            "returns a list of the {which} {k} elements of the list items, or all of them if there are fewer"
        ),
        asserts([long, vec![1, 2], vec![]].map(|l| {
            let taken = if first {
                l[..k.min(l.len())].to_vec()
            } else {
                l[l.len().saturating_sub(k)..].to_vec()
            };
            (format!("{name}({})", py_list(&l)), py_list(&taken))
        })),
        &format!("def {name}(items):\n    return {slice}"),
    )
}

fn code_contains_k(i: usize) -> CodeSpec {
    let k = i as i64;
    spec(
        "contains_k(nums)",
        format!("returns True if {k} is in the list nums and False otherwise"),
        asserts(sample_lists(k).map(|l| {
            (
                format!("contains_k({})", py_list(&l)),
                py_bool(l.contains(&k)).to_string(),
            )
        })),
        &format!("def contains_k(nums):\n    return {k} in nums"),
    )
}

fn code_count_k(i: usize) -> CodeSpec {
    let k = i as i64 % 10;
    spec(
        "count_k(nums)",
        format!("returns how many times {k} appears in the list nums"),
        asserts(
            [vec![1, 2, 3, 2, 1, 0, 9], vec![], vec![k, k, 5, k]].map(|l| {
                let n = l.iter().filter(|&&x| x == k).count();
                (format!("count_k({})", py_list(&l)), n.to_string())
            }),
        ),
        &format!("def count_k(nums):\n    return nums.count({k})"),
    )
}

fn code_remove_k(i: usize) -> CodeSpec {
    let k = i as i64 % 10;
    spec(
        "remove_k(nums)",
        format!(
            "returns a new list with every {k} removed from the list nums, keeping the other numbers in order"
        ),
        asserts(
            [vec![1, 2, 3, 2, 1, 0, 9], vec![], vec![k, k, 5, k]].map(|l| {
                let kept: Vec<i64> = l.iter().copied().filter(|&x| x != k).collect();
                (format!("remove_k({})", py_list(&l)), py_list(&kept))
            }),
        ),
        &format!("def remove_k(nums):\n    return [n for n in nums if n != {k}]"),
    )
}

fn code_multiples(i: usize) -> CodeSpec {
    let k = i as i64 + 2;
    spec(
        "multiples(n)",
        format!("returns a list of the first n multiples of {k}, starting with {k}"),
        asserts([3i64, 0, 1].map(|n| {
            let m: Vec<i64> = (1..=n).map(|j| j * k).collect();
            (format!("multiples({n})"), py_list(&m))
        })),
        &format!("def multiples(n):\n    return [{k} * i for i in range(1, n + 1)]"),
    )
}

fn code_words_starting(i: usize) -> CodeSpec {
    let c = letter(i);
    let words: [&[&str]; 2] = [
        &[
            "apple", "banana", "cherry", "avocado", "kiwi", "melon", "tomato", "grape", "fig",
            "lime",
        ],
        &[
            "dog", "cat", "owl", "eel", "yak", "bee", "newt", "pig", "rat", "seal", "ant", "wolf",
            "zebra", "horse", "jay", "quail", "vole", "ibis", "uakari", "xerus",
        ],
    ];
    spec(
        "words_starting(words)",
        format!("returns how many strings in the list words start with the letter '{c}'"),
        asserts(words.map(|w| {
            let n = w.iter().filter(|s| s.starts_with(c)).count();
            (format!("words_starting({})", py_str_list(w)), n.to_string())
        }))
        .into_iter()
        .chain(["assert words_starting([]) == 0".to_string()])
        .collect(),
        &format!(
            "def words_starting(words):\n    return sum(1 for w in words if w.startswith(\"{c}\"))"
        ),
    )
}

fn code_longer_than(i: usize) -> CodeSpec {
    let k = i + 1;
    let cases: [&[&str]; 3] = [
        &["a", "tree", "house", "elephant", "to"],
        &[],
        &["sun", "moon", "stars"],
    ];
    spec(
        "longer_than(words)",
        format!(
            "returns a list of the strings in the list words that have more than {k} letters, in their original order"
        ),
        asserts(cases.map(|c| {
            let kept: Vec<&str> = c.iter().copied().filter(|w| w.len() > k).collect();
            (
                format!("longer_than({})", py_str_list(c)),
                py_str_list(&kept),
            )
        })),
        &format!("def longer_than(words):\n    return [w for w in words if len(w) > {k}]"),
    )
}

fn code_sum_greater(i: usize) -> CodeSpec {
    let k = i as i64;
    spec(
        "sum_greater(nums)",
        format!("returns the sum of the numbers in the list nums that are greater than {k}"),
        asserts(sample_lists(k).map(|l| {
            let s: i64 = l.iter().filter(|&&x| x > k).sum();
            (format!("sum_greater({})", py_list(&l)), s.to_string())
        })),
        &format!("def sum_greater(nums):\n    return sum(n for n in nums if n > {k})"),
    )
}

fn code_count_between(i: usize) -> CodeSpec {
    let lo = (i / 10) as i64;
    let hi = lo + 10 * ((i % 10) as i64 + 1);
    let cases = [
        vec![lo - 1, lo, hi, hi + 1, (lo + hi) / 2],
        vec![],
        vec![hi + 5, lo + 1],
    ];
    spec(
        "count_between(nums)",
        format!("returns how many numbers in the list nums are at least {lo} and at most {hi}"),
        asserts(cases.map(|l| {
            let n = l.iter().filter(|&&x| (lo..=hi).contains(&x)).count();
            (format!("count_between({})", py_list(&l)), n.to_string())
        })),
        &format!("def count_between(nums):\n    return sum(1 for n in nums if {lo} <= n <= {hi})"),
    )
}

fn code_cap_all(i: usize) -> CodeSpec {
    let k = i as i64;
    spec(
        "cap_all(nums)",
        format!(
            "returns a new list in which every number of the list nums that is greater than {k} is replaced by {k}"
        ),
        asserts(sample_lists(k).map(|l| {
            let capped: Vec<i64> = l.iter().map(|&x| x.min(k)).collect();
            (format!("cap_all({})", py_list(&l)), py_list(&capped))
        })),
        &format!("def cap_all(nums):\n    return [min(n, {k}) for n in nums]"),
    )
}

fn code_replace_in_list(i: usize) -> CodeSpec {
    let from = (i / 9) as i64 % 10;
    let to_index = (i % 9) as i64;
    // Skip `from` itself so the 9 targets are the other digits.
    let to = if to_index >= from {
        to_index + 1
    } else {
        to_index
    };
    let cases = [vec![1, 2, 3, 2, 1, 0, 9], vec![], vec![from, from, 5]];
    spec(
        "replace_all(nums)",
        format!("returns a new list in which every {from} in the list nums is replaced by {to}"),
        asserts(cases.map(|l| {
            let replaced: Vec<i64> = l.iter().map(|&x| if x == from { to } else { x }).collect();
            (format!("replace_all({})", py_list(&l)), py_list(&replaced))
        })),
        &format!("def replace_all(nums):\n    return [{to} if n == {from} else n for n in nums]"),
    )
}

fn code_count_multiples(i: usize) -> CodeSpec {
    let k = i as i64 + 2;
    let cases = [vec![k, 2 * k, k + 1, 0, 7], vec![], vec![3 * k + 1]];
    spec(
        "count_multiples(nums)",
        format!("returns how many numbers in the list nums are divisible by {k}"),
        asserts(cases.map(|l| {
            let n = l.iter().filter(|&&x| x % k == 0).count();
            (format!("count_multiples({})", py_list(&l)), n.to_string())
        })),
        &format!("def count_multiples(nums):\n    return sum(1 for n in nums if n % {k} == 0)"),
    )
}

fn code_list_stats(i: usize) -> CodeSpec {
    match i % 3 {
        0 => spec(
            "spread(nums)",
            "returns the largest number minus the smallest number of the non-empty list nums".into(),
            asserts([vec![3i64, 9, 2], vec![5], vec![-4, 10, 0]].map(|l| {
                let spread = l.iter().max().copied().unwrap_or(0) - l.iter().min().copied().unwrap_or(0);
                (format!("spread({})", py_list(&l)), spread.to_string())
            })),
            "def spread(nums):\n    return max(nums) - min(nums)",
        ),
        1 => spec(
            "running_total(nums)",
            "returns a list whose i-th element is the sum of the first i + 1 numbers of the list nums".into(),
            asserts([vec![1i64, 2, 3], vec![], vec![5, -5, 5]].map(|l| {
                let totals: Vec<i64> = l
                    .iter()
                    .scan(0, |sum, &x| {
                        *sum += x;
                        Some(*sum)
                    })
                    .collect();
                (format!("running_total({})", py_list(&l)), py_list(&totals))
            })),
            "def running_total(nums):\n    totals = []\n    total = 0\n    for n in nums:\n        total += n\n        totals.append(total)\n    return totals",
        ),
        _ => {
            let cases: [&[&str]; 3] = [&["ab", "cde", ""], &[], &["hello"]];
            spec(
                "total_length(words)",
                "returns the total number of characters of all the strings in the list words".into(),
                asserts(cases.map(|c| {
                    let n: usize = c.iter().map(|w| w.len()).sum();
                    (format!("total_length({})", py_str_list(c)), n.to_string())
                })),
                "def total_length(words):\n    return sum(len(w) for w in words)",
            )
        }
    }
}

fn code_position(i: usize) -> CodeSpec {
    let k = i as i64 % 10;
    let cases = [vec![1, 2, 3, 2, 1, 0, 9], vec![], vec![5, k, k]];
    spec(
        "position(nums)",
        format!("returns the index of the first {k} in the list nums, or -1 if there is none"),
        asserts(cases.map(|l| {
            let at = l.iter().position(|&x| x == k).map_or(-1, |p| p as i64);
            (format!("position({})", py_list(&l)), at.to_string())
        })),
        &format!(
            "def position(nums):\n    for i, n in enumerate(nums):\n        if n == {k}:\n            return i\n    return -1"
        ),
    )
}

fn code_repeat_items(i: usize) -> CodeSpec {
    let k = i % 4 + 2;
    spec(
        "repeat_items(items)",
        format!(
            "returns a new list in which every element of the list items appears {k} times in a row"
        ),
        asserts([vec![1i64, 2], vec![], vec![7]].map(|l| {
            let repeated: Vec<i64> = l.iter().flat_map(|&x| std::iter::repeat_n(x, k)).collect();
            (format!("repeat_items({})", py_list(&l)), py_list(&repeated))
        })),
        &format!("def repeat_items(items):\n    return [x for x in items for _ in range({k})]"),
    )
}

fn code_count_short(i: usize) -> CodeSpec {
    let k = i % 8 + 1;
    let cases: [&[&str]; 3] = [
        &["a", "tree", "house", "elephant", "to"],
        &[],
        &["sun", "moon", "stars"],
    ];
    spec(
        "count_short(words)",
        format!("returns how many strings in the list words have at most {k} letters"),
        asserts(cases.map(|c| {
            let n = c.iter().filter(|w| w.len() <= k).count();
            (format!("count_short({})", py_str_list(c)), n.to_string())
        })),
        &format!("def count_short(words):\n    return sum(1 for w in words if len(w) <= {k})"),
    )
}

const CODE_LEVEL_3: &[CodeTemplate] = &[
    (28, code_fizzbuzz),
    (3, code_sequences),
    (61, code_grade),
    (1, code_sign),
    (210, code_clamp),
    (3, code_string_rules),
    (6, code_number_rules),
    (900, code_ticket_price),
    (650, code_replace_letter),
    (1, code_is_palindrome),
    (64, code_temperature),
    (176, code_letter_grade),
    (21, code_close),
    (6, code_mask),
    (3, code_small_rules),
];

fn code_fizzbuzz(i: usize) -> CodeSpec {
    let (a, b) = small_pair(i);
    let expected = |n: i64| match (n % a == 0, n % b == 0) {
        (true, true) => "FizzBuzz".to_string(),
        (true, false) => "Fizz".to_string(),
        (false, true) => "Buzz".to_string(),
        (false, false) => n.to_string(),
    };
    spec(
        "fizzbuzz(n)",
        format!(
            "returns \"FizzBuzz\" if n is divisible by both {a} and {b}, \"Fizz\" if only by {a}, \"Buzz\" if only by {b}, and otherwise n as a string"
        ),
        asserts([a * b, a, b, 1].map(|n| (format!("fizzbuzz({n})"), py_str(&expected(n))))),
        &format!(
            "def fizzbuzz(n):\n    if n % {a} == 0 and n % {b} == 0:\n        return \"FizzBuzz\"\n    if n % {a} == 0:\n        return \"Fizz\"\n    if n % {b} == 0:\n        return \"Buzz\"\n    return str(n)"
        ),
    )
}

fn code_is_palindrome(_: usize) -> CodeSpec {
    spec(
        "is_palindrome(s)",
        "returns True if the string s reads the same forwards and backwards and False otherwise"
            .into(),
        asserts(["racecar", "hello", "", "abba", "ab"].map(|s| {
            let r: String = s.chars().rev().collect();
            (
                format!("is_palindrome({})", py_str(s)),
                py_bool(r == s).to_string(),
            )
        })),
        "def is_palindrome(s):\n    return s == s[::-1]",
    )
}

fn code_sequences(i: usize) -> CodeSpec {
    match i % 3 {
        0 => spec(
            "factorial(n)",
            "returns the product of the whole numbers from 1 to n, where factorial(0) is 1".into(),
            asserts(
                [(0, 1), (1, 1), (5, 120), (6, 720)]
                    .map(|(n, f)| (format!("factorial({n})"), f.to_string())),
            ),
            "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
        ),
        1 => spec(
            "fibonacci(n)",
            "returns the n-th Fibonacci number, where fibonacci(0) is 0 and fibonacci(1) is 1"
                .into(),
            asserts(
                [(0, 0), (1, 1), (2, 1), (7, 13), (10, 55)]
                    .map(|(n, f)| (format!("fibonacci({n})"), f.to_string())),
            ),
            "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        ),
        _ => spec(
            "sum_digits_to(n)",
            "returns the sum of all the digits of the numbers from 1 to n".into(),
            asserts(
                [(1, 1), (9, 45), (10, 46), (12, 51)]
                    .map(|(n, s)| (format!("sum_digits_to({n})"), s.to_string())),
            ),
            "def sum_digits_to(n):\n    return sum(int(d) for i in range(1, n + 1) for d in str(i))",
        ),
    }
}

fn code_grade(i: usize) -> CodeSpec {
    let k = i as i64 + 30;
    spec(
        "grade(score)",
        format!("returns \"pass\" if score is at least {k} and \"fail\" otherwise"),
        asserts([k, k - 1, 100, 0].map(|s| {
            (
                format!("grade({s})"),
                py_str(if s >= k { "pass" } else { "fail" }),
            )
        })),
        &format!(
            "def grade(score):\n    if score >= {k}:\n        return \"pass\"\n    return \"fail\""
        ),
    )
}

fn code_sign(_: usize) -> CodeSpec {
    spec(
        "sign(x)",
        "returns \"positive\" if x is greater than 0, \"negative\" if it is less than 0, and \"zero\" otherwise".into(),
        asserts([(5, "positive"), (-2, "negative"), (0, "zero")].map(|(x, s)| (format!("sign({x})"), py_str(s)))),
        "def sign(x):\n    if x > 0:\n        return \"positive\"\n    if x < 0:\n        return \"negative\"\n    return \"zero\"",
    )
}

fn code_clamp(i: usize) -> CodeSpec {
    let lo = (i / 10) as i64;
    let hi = lo + 10 * ((i % 10) as i64 + 1);
    let mid = (lo + hi) / 2;
    spec(
        "clamp(x)",
        format!(
            "returns {lo} if x is less than {lo}, {hi} if x is greater than {hi}, and x otherwise"
        ),
        asserts(
            [lo - 5, hi + 3, mid, lo].map(|x| (format!("clamp({x})"), x.clamp(lo, hi).to_string())),
        ),
        &format!(
            "def clamp(x):\n    if x < {lo}:\n        return {lo}\n    if x > {hi}:\n        return {hi}\n    return x"
        ),
    )
}

fn code_string_rules(i: usize) -> CodeSpec {
    match i % 3 {
        0 => spec(
            "count_upper(s)",
            "returns how many upper-case letters the string s contains".into(),
            asserts(["Hello World", "abc", "ABC", ""].map(|s| {
                let n = s.chars().filter(char::is_ascii_uppercase).count();
                (format!("count_upper({})", py_str(s)), n.to_string())
            })),
            "def count_upper(s):\n    return sum(1 for c in s if c.isupper())",
        ),
        1 => spec(
            "remove_vowels(s)",
            "returns the string s with every lowercase vowel (a, e, i, o, u) removed".into(),
            asserts(["hello", "sky", "banana", ""].map(|s| {
                let kept: String = s.chars().filter(|c| !"aeiou".contains(*c)).collect();
                (format!("remove_vowels({})", py_str(s)), py_str(&kept))
            })),
            "def remove_vowels(s):\n    return \"\".join(c for c in s if c not in \"aeiou\")",
        ),
        _ => spec(
            "capitalize_words(s)",
            "returns the string s with the first letter of every word in upper case, where words are separated by single spaces".into(),
            asserts([("hello world", "Hello World"), ("a b", "A B"), ("python", "Python")].map(|(s, t)| {
                (format!("capitalize_words({})", py_str(s)), py_str(t))
            })),
            "def capitalize_words(s):\n    return \" \".join(w[:1].upper() + w[1:] for w in s.split(\" \"))",
        ),
    }
}

fn code_number_rules(i: usize) -> CodeSpec {
    match i % 6 {
        0 => spec(
            "is_leap_year(year)",
            "returns True if year is a leap year in the Gregorian calendar and False otherwise"
                .into(),
            asserts(
                [(2000, true), (1900, false), (2024, true), (2023, false)]
                    .map(|(y, l)| (format!("is_leap_year({y})"), py_bool(l).to_string())),
            ),
            "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
        ),
        1 => spec(
            "digit_sum(n)",
            "returns the sum of the digits of the non-negative integer n".into(),
            asserts(
                [(0, 0), (123, 6), (9999, 36)]
                    .map(|(n, s)| (format!("digit_sum({n})"), s.to_string())),
            ),
            "def digit_sum(n):\n    return sum(int(d) for d in str(n))",
        ),
        2 => spec(
            "count_digits(n)",
            "returns how many digits the non-negative integer n has".into(),
            asserts(
                [(0, 1), (7, 1), (10, 2), (12345, 5)]
                    .map(|(n, d)| (format!("count_digits({n})"), d.to_string())),
            ),
            "def count_digits(n):\n    return len(str(n))",
        ),
        3 => spec(
            "is_prime(n)",
            "returns True if n is a prime number and False otherwise".into(),
            asserts(
                [(2, true), (1, false), (9, false), (13, true), (0, false)]
                    .map(|(n, p)| (format!("is_prime({n})"), py_bool(p).to_string())),
            ),
            "def is_prime(n):\n    if n < 2:\n        return False\n    for d in range(2, int(n ** 0.5) + 1):\n        if n % d == 0:\n            return False\n    return True",
        ),
        4 => spec(
            "gcd(a, b)",
            "returns the greatest common divisor of the positive integers a and b".into(),
            asserts(
                [((12, 18), 6), ((7, 5), 1), ((10, 100), 10)]
                    .map(|((a, b), g)| (format!("gcd({a}, {b})"), g.to_string())),
            ),
            "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
        ),
        _ => spec(
            "max_of_three(a, b, c)",
            "returns the largest of the numbers a, b and c".into(),
            asserts(
                [((1, 2, 3), 3), ((9, 4, 7), 9), ((-1, -5, -3), -1)]
                    .map(|((a, b, c), m)| (format!("max_of_three({a}, {b}, {c})"), m.to_string())),
            ),
            "def max_of_three(a, b, c):\n    return max(a, b, c)",
        ),
    }
}

fn code_ticket_price(i: usize) -> CodeSpec {
    let age_limit = 10 + (i / 100) as i64;
    let child = 1 + ((i / 10) % 10) as i64;
    let adult = child + 1 + (i % 10) as i64;
    spec(
        "ticket_price(age)",
        format!("returns {child} if age is less than {age_limit} and {adult} otherwise"),
        asserts([age_limit - 1, age_limit, 0, 70].map(|age| {
            let price = if age < age_limit { child } else { adult };
            (format!("ticket_price({age})"), price.to_string())
        })),
        &format!(
            "def ticket_price(age):\n    if age < {age_limit}:\n        return {child}\n    return {adult}"
        ),
    )
}

fn code_replace_letter(i: usize) -> CodeSpec {
    let from = letter(i / 25);
    let to_index = i % 25;
    // Skip `from` itself so the 25 targets are the other letters.
    let to = letter(if to_index >= (i / 25) % 26 {
        to_index + 1
    } else {
        to_index
    });
    spec(
        "replace_letter(s)",
        format!("returns the string s with every '{from}' replaced by '{to}'"),
        asserts(LETTER_SAMPLES.map(|s| {
            (
                format!("replace_letter({})", py_str(s)),
                py_str(&s.replace(from, &to.to_string())),
            )
        })),
        &format!("def replace_letter(s):\n    return s.replace(\"{from}\", \"{to}\")"),
    )
}

const CODE_LEVEL_4: &[CodeTemplate] = &[
    (25, code_caesar),
    (9, code_rotate_left),
    (5, code_chunks),
    (59, code_count_pairs),
    (28, code_sum_multiples),
    (9, code_list_algorithms),
    (9, code_string_algorithms),
    (676, code_count_pattern),
    (28, code_fizzbuzz_list),
    (8, code_to_base),
    (8, code_every_kth),
    (4, code_window_sums),
    (9, code_rotate_right),
    (9, code_is_power),
    (9, code_digits_over),
];

fn code_caesar(i: usize) -> CodeSpec {
    let k = i as u8 % 25 + 1;
    let shift = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    char::from(b'a' + (c as u8 - b'a' + k) % 26)
                } else {
                    c
                }
            })
            .collect()
    };
    spec(
        "caesar(s)",
        format!(
            "returns s with every lowercase letter moved {k} places forward in the alphabet, wrapping from z to a, and other characters unchanged"
        ),
        asserts(
            ["abc", "xyz", "hello, world!"]
                .map(|s| (format!("caesar({})", py_str(s)), py_str(&shift(s)))),
        ),
        &format!(
            "def caesar(s):\n    out = \"\"\n    for c in s:\n        if \"a\" <= c <= \"z\":\n            out += chr((ord(c) - ord(\"a\") + {k}) % 26 + ord(\"a\"))\n        else:\n            out += c\n    return out"
        ),
    )
}

fn code_rotate_left(i: usize) -> CodeSpec {
    let k = i % 9 + 1;
    spec(
        "rotate_left(items)",
        format!(
            "returns a new list with the elements of the non-empty list items rotated {k} places to the left, wrapping around"
        ),
        asserts([vec![1i64, 2, 3, 4, 5], vec![8, 9], vec![7]].map(|l| {
            let mut r = l.clone();
            r.rotate_left(k % l.len());
            (format!("rotate_left({})", py_list(&l)), py_list(&r))
        })),
        &format!(
            "def rotate_left(items):\n    k = {k} % len(items)\n    return items[k:] + items[:k]"
        ),
    )
}

fn code_chunks(i: usize) -> CodeSpec {
    let k = i % 5 + 2;
    let items: Vec<i64> = (1..=7).collect();
    let pieces: Vec<String> = items.chunks(k).map(py_list).collect();
    spec(
        "chunks(items)",
        format!(
            "returns a list of consecutive pieces of the list items with {k} elements each, where the last piece may be shorter"
        ),
        vec![
            format!(
                "assert chunks({}) == [{}]",
                py_list(&items),
                pieces.join(", ")
            ),
            "assert chunks([]) == []".into(),
            format!(
                "assert chunks({}) == [{}]",
                py_list(&items[..k]),
                py_list(&items[..k])
            ),
        ],
        &format!(
            "def chunks(items):\n    return [items[i:i + {k}] for i in range(0, len(items), {k})]"
        ),
    )
}

fn code_count_pairs(i: usize) -> CodeSpec {
    let k = i as i64 % 59 + 2;
    let count = |l: &[i64]| {
        (0..l.len())
            .flat_map(|a| (a + 1..l.len()).map(move |b| (a, b)))
            .filter(|&(a, b)| l[a] + l[b] == k)
            .count()
    };
    let cases: [Vec<i64>; 3] = [
        vec![1, 5, 3, 7, 9, 2, 8, 5, 10, 15, 6, 12],
        vec![],
        vec![k / 2, k - k / 2, k / 2, 1],
    ];
    spec(
        "count_pairs(nums)",
        format!(
            "returns how many pairs of positions i < j in the list nums have nums[i] + nums[j] equal to {k}"
        ),
        asserts(cases.map(|l| {
            (
                format!("count_pairs({})", py_list(&l)),
                count(&l).to_string(),
            )
        })),
        &format!(
            "def count_pairs(nums):\n    count = 0\n    for i in range(len(nums)):\n        for j in range(i + 1, len(nums)):\n            if nums[i] + nums[j] == {k}:\n                count += 1\n    return count"
        ),
    )
}

fn code_sum_multiples(i: usize) -> CodeSpec {
    let (a, b) = small_pair(i);
    let sum = |n: i64| (1..n).filter(|x| x % a == 0 || x % b == 0).sum::<i64>();
    spec(
        "sum_multiples(n)",
        format!(
            "returns the sum of all positive numbers below n that are divisible by {a} or by {b}"
        ),
        asserts([10i64, 20, 1].map(|n| (format!("sum_multiples({n})"), sum(n).to_string()))),
        &format!(
            "def sum_multiples(n):\n    return sum(x for x in range(1, n) if x % {a} == 0 or x % {b} == 0)"
        ),
    )
}

fn code_list_algorithms(i: usize) -> CodeSpec {
    match i % 9 {
        0 => spec(
            "second_largest(nums)",
            "returns the second largest distinct number in the list nums, which has at least two distinct numbers".into(),
            vec![
                "assert second_largest([1, 2, 3]) == 2".into(),
                "assert second_largest([5, 5, 4]) == 4".into(),
                "assert second_largest([10, -1, 10, 7]) == 7".into(),
            ],
            "def second_largest(nums):\n    return sorted(set(nums))[-2]",
        ),
        1 => spec(
            "flatten(lists)",
            "returns one list with all the elements of the lists in the list lists, in order".into(),
            vec![
                "assert flatten([[1, 2], [3], []]) == [1, 2, 3]".into(),
                "assert flatten([]) == []".into(),
                "assert flatten([[\"a\"], [\"b\", \"c\"]]) == [\"a\", \"b\", \"c\"]".into(),
            ],
            "def flatten(lists):\n    return [x for inner in lists for x in inner]",
        ),
        2 => spec(
            "unique(items)",
            "returns the list items without duplicates, keeping the first occurrence of each element in order".into(),
            vec![
                "assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]".into(),
                "assert unique([]) == []".into(),
                "assert unique([\"a\", \"a\"]) == [\"a\"]".into(),
            ],
            "def unique(items):\n    seen = []\n    for x in items:\n        if x not in seen:\n            seen.append(x)\n    return seen",
        ),
        3 => spec(
            "merge_sorted(a, b)",
            "returns one sorted list with all the numbers of the sorted lists a and b".into(),
            vec![
                "assert merge_sorted([1, 4, 9], [2, 3, 10]) == [1, 2, 3, 4, 9, 10]".into(),
                "assert merge_sorted([], [1]) == [1]".into(),
                "assert merge_sorted([2, 2], [2]) == [2, 2, 2]".into(),
            ],
            "def merge_sorted(a, b):\n    return sorted(a + b)",
        ),
        4 => spec(
            "collatz_steps(n)",
            "returns how many steps it takes to reach 1 from the positive integer n, where each step halves n if it is even and otherwise replaces it with 3 * n + 1".into(),
            asserts([(1, 0), (2, 1), (6, 8), (7, 16)].map(|(n, s)| (format!("collatz_steps({n})"), s.to_string()))),
            "def collatz_steps(n):\n    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n    return steps",
        ),
        5 => spec(
            "count_primes(n)",
            "returns how many prime numbers are smaller than n".into(),
            asserts([(10, 4), (2, 0), (20, 8), (0, 0)].map(|(n, c)| (format!("count_primes({n})"), c.to_string()))),
            "def count_primes(n):\n    count = 0\n    for x in range(2, n):\n        if all(x % d != 0 for d in range(2, int(x ** 0.5) + 1)):\n            count += 1\n    return count",
        ),
        6 => spec(
            "reverse_digits(n)",
            "returns the number whose digits are those of the non-negative integer n in reverse order".into(),
            asserts([(123, 321), (100, 1), (0, 0), (7, 7)].map(|(n, r)| (format!("reverse_digits({n})"), r.to_string()))),
            "def reverse_digits(n):\n    return int(str(n)[::-1])",
        ),
        7 => spec(
            "digital_root(n)",
            "returns the digital root of the non-negative integer n: add up its digits again and again until one digit is left".into(),
            asserts([(0, 0), (16, 7), (942, 6), (9, 9)].map(|(n, r)| (format!("digital_root({n})"), r.to_string()))),
            "def digital_root(n):\n    while n >= 10:\n        n = sum(int(d) for d in str(n))\n    return n",
        ),
        _ => spec(
            "to_binary(n)",
            "returns the binary digits of the non-negative integer n as a string, so to_binary(5) returns \"101\"".into(),
            asserts([(0, "0"), (5, "101"), (8, "1000"), (255, "11111111")].map(|(n, b)| {
                (format!("to_binary({n})"), py_str(b))
            })),
            "def to_binary(n):\n    return bin(n)[2:]",
        ),
    }
}

fn code_string_algorithms(i: usize) -> CodeSpec {
    match i % 9 {
        0 => spec(
            "run_length(s)",
            "returns the run-length encoding of the string s, where each run of one character becomes the character followed by the run's length, so \"aaabcc\" becomes \"a3b1c2\"".into(),
            asserts([("aaabcc", "a3b1c2"), ("", ""), ("x", "x1"), ("aabbbb", "a2b4")].map(|(s, e)| {
                (format!("run_length({})", py_str(s)), py_str(e))
            })),
            "def run_length(s):\n    out = \"\"\n    i = 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out += s[i] + str(j - i)\n        i = j\n    return out",
        ),
        1 => spec(
            "is_anagram(a, b)",
            "returns True if the strings a and b contain exactly the same characters the same number of times and False otherwise".into(),
            asserts([(("listen", "silent"), true), (("abc", "abd"), false), (("aab", "abb"), false), (("", ""), true)].map(|((a, b), r)| {
                (format!("is_anagram({}, {})", py_str(a), py_str(b)), py_bool(r).to_string())
            })),
            "def is_anagram(a, b):\n    return sorted(a) == sorted(b)",
        ),
        2 => spec(
            "word_counts(s)",
            "returns a dictionary that maps each word of the string s (words are separated by spaces) to how many times it appears".into(),
            vec![
                "assert word_counts(\"a b a\") == {\"a\": 2, \"b\": 1}".into(),
                "assert word_counts(\"\") == {}".into(),
                "assert word_counts(\"hi\") == {\"hi\": 1}".into(),
            ],
            "def word_counts(s):\n    counts = {}\n    for w in s.split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
        ),
        3 => spec(
            "most_common(s)",
            "returns the character that appears most often in the non-empty string s, and on a tie the one that appears first in s".into(),
            asserts([("hello", "l"), ("abcab", "a"), ("zzyy", "z"), ("x", "x")].map(|(s, c)| {
                (format!("most_common({})", py_str(s)), py_str(c))
            })),
            "def most_common(s):\n    best = s[0]\n    for c in s:\n        if s.count(c) > s.count(best):\n            best = c\n    return best",
        ),
        4 => spec(
            "balanced(s)",
            "returns True if every opening parenthesis in the string s has a matching closing parenthesis after it, in the right order, and False otherwise".into(),
            asserts([("(())", true), ("(()", false), (")(", false), ("a(b)c", true), ("", true)].map(|(s, r)| {
                (format!("balanced({})", py_str(s)), py_bool(r).to_string())
            })),
            "def balanced(s):\n    depth = 0\n    for c in s:\n        if c == \"(\":\n            depth += 1\n        elif c == \")\":\n            depth -= 1\n            if depth < 0:\n                return False\n    return depth == 0",
        ),
        5 => spec(
            "to_roman(n)",
            "returns the Roman numeral for the integer n, where 1 <= n <= 3999, so to_roman(14) returns \"XIV\"".into(),
            asserts([(1, "I"), (4, "IV"), (9, "IX"), (58, "LVIII"), (1994, "MCMXCIV")].map(|(n, r)| {
                (format!("to_roman({n})"), py_str(r))
            })),
            "def to_roman(n):\n    values = [(1000, \"M\"), (900, \"CM\"), (500, \"D\"), (400, \"CD\"), (100, \"C\"), (90, \"XC\"), (50, \"L\"), (40, \"XL\"), (10, \"X\"), (9, \"IX\"), (5, \"V\"), (4, \"IV\"), (1, \"I\")]\n    out = \"\"\n    for value, numeral in values:\n        while n >= value:\n            out += numeral\n            n -= value\n    return out",
        ),
        6 => spec(
            "count_vowel_words(s)",
            "returns how many words of the string s (separated by spaces) start with a vowel (a, e, i, o or u, in either case)".into(),
            asserts([("An apple is on the table", 4), ("", 0), ("sky", 0), ("Under umbrellas", 2)].map(|(s, n)| {
                (format!("count_vowel_words({})", py_str(s)), n.to_string())
            })),
            "def count_vowel_words(s):\n    return sum(1 for w in s.split() if w[0].lower() in \"aeiou\")",
        ),
        7 => spec(
            "longest_word(s)",
            "returns the longest word of the non-empty string s (words are separated by spaces), and on a tie the first one".into(),
            asserts([("the quick brown fox", "quick"), ("a bb cc", "bb"), ("hello", "hello")].map(|(s, w)| {
                (format!("longest_word({})", py_str(s)), py_str(w))
            })),
            "def longest_word(s):\n    best = \"\"\n    for w in s.split():\n        if len(w) > len(best):\n            best = w\n    return best",
        ),
        _ => spec(
            "acronym(s)",
            "returns the first letters of the words of the string s (separated by spaces) joined together in upper case, so acronym(\"portable network graphics\") returns \"PNG\"".into(),
            asserts([("portable network graphics", "PNG"), ("as soon as possible", "ASAP"), ("", "")].map(|(s, a)| {
                (format!("acronym({})", py_str(s)), py_str(a))
            })),
            "def acronym(s):\n    return \"\".join(w[0].upper() for w in s.split())",
        ),
    }
}

fn code_count_pattern(i: usize) -> CodeSpec {
    let (first, second) = (letter(i / 26), letter(i % 26));
    let pattern: String = [first, second].iter().collect();
    let count = |s: &str| {
        let chars: Vec<char> = s.chars().collect();
        chars
            .windows(2)
            .filter(|w| w[0] == first && w[1] == second)
            .count()
    };
    let samples = [
        format!("{pattern}{pattern}"),
        format!("{first}{first}{second}{second}{first}"),
        "banana".to_string(),
        String::new(),
    ];
    spec(
        "count_pattern(s)",
        format!(
            "returns how many times the two-letter string {} appears in the string s, counting overlapping matches",
            py_str(&pattern)
        ),
        asserts(samples.iter().map(|s| {
            (
                format!("count_pattern({})", py_str(s)),
                count(s).to_string(),
            )
        })),
        &format!(
            "def count_pattern(s):\n    return sum(1 for i in range(len(s) - 1) if s[i:i + 2] == {})",
            py_str(&pattern)
        ),
    )
}

fn code_fizzbuzz_list(i: usize) -> CodeSpec {
    let (a, b) = small_pair(i);
    let word = |n: i64| match (n % a == 0, n % b == 0) {
        (true, true) => "FizzBuzz".to_string(),
        (true, false) => "Fizz".to_string(),
        (false, true) => "Buzz".to_string(),
        (false, false) => n.to_string(),
    };
    let list = |n: i64| {
        let words: Vec<String> = (1..=n).map(word).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        py_str_list(&refs)
    };
    spec(
        "fizzbuzz_list(n)",
        format!(
            "returns a list with, for each number from 1 to n, \"FizzBuzz\" if it is divisible by both {a} and {b}, \"Fizz\" if only by {a}, \"Buzz\" if only by {b}, and otherwise the number as a string"
        ),
        asserts([a * b, 0, 1].map(|n| (format!("fizzbuzz_list({n})"), list(n)))),
        &format!(
            "def fizzbuzz_list(n):\n    out = []\n    for x in range(1, n + 1):\n        if x % {a} == 0 and x % {b} == 0:\n            out.append(\"FizzBuzz\")\n        elif x % {a} == 0:\n            out.append(\"Fizz\")\n        elif x % {b} == 0:\n            out.append(\"Buzz\")\n        else:\n            out.append(str(x))\n    return out"
        ),
    )
}

fn code_to_base(i: usize) -> CodeSpec {
    let k = (i % 8) as u32 + 2;
    let digits = |mut n: u32| {
        if n == 0 {
            return "0".to_string();
        }
        let mut out = Vec::new();
        while n > 0 {
            out.push(char::from_digit(n % k, k).unwrap_or('?'));
            n /= k;
        }
        out.iter().rev().collect::<String>()
    };
    spec(
        "to_base(n)",
        format!(
            "returns the digits of the non-negative integer n written in base {k}, as a string, so to_base(0) returns \"0\""
        ),
        asserts(
            [0, k - 1, k, 100, k * k + 1].map(|n| (format!("to_base({n})"), py_str(&digits(n)))),
        ),
        &format!(
            "def to_base(n):\n    if n == 0:\n        return \"0\"\n    out = \"\"\n    while n > 0:\n        out = str(n % {k}) + out\n        n //= {k}\n    return out"
        ),
    )
}

fn code_every_kth(i: usize) -> CodeSpec {
    let k = i % 8 + 2;
    let items: Vec<i64> = (1..=20).collect();
    spec(
        "every_kth(items)",
        format!(
            "returns a list of the elements of the list items at positions 0, {k}, {} and so on",
            2 * k
        ),
        asserts([items, vec![], vec![4, 5]].map(|l| {
            let picked: Vec<i64> = l.iter().copied().step_by(k).collect();
            (format!("every_kth({})", py_list(&l)), py_list(&picked))
        })),
        &format!("def every_kth(items):\n    return items[::{k}]"),
    )
}

fn code_window_sums(i: usize) -> CodeSpec {
    let k = i % 4 + 2;
    spec(
        "window_sums(nums)",
        format!(
            "returns a list of the sums of every {k} consecutive numbers in the list nums, from left to right"
        ),
        asserts(
            [vec![1i64, 2, 3, 4, 5, 6], vec![], vec![5, -5, 10, 0, 1]].map(|l| {
                let sums: Vec<i64> = l.windows(k).map(|w| w.iter().sum()).collect();
                (format!("window_sums({})", py_list(&l)), py_list(&sums))
            }),
        ),
        &format!(
            "def window_sums(nums):\n    return [sum(nums[i:i + {k}]) for i in range(len(nums) - {k} + 1)]"
        ),
    )
}

fn code_rotate_right(i: usize) -> CodeSpec {
    let k = i % 9 + 1;
    spec(
        "rotate_right(items)",
        format!(
            "returns a new list with the elements of the non-empty list items rotated {k} places to the right, wrapping around"
        ),
        asserts([vec![1i64, 2, 3, 4, 5], vec![8, 9], vec![7]].map(|l| {
            let mut r = l.clone();
            r.rotate_right(k % l.len());
            (format!("rotate_right({})", py_list(&l)), py_list(&r))
        })),
        &format!(
            "def rotate_right(items):\n    k = {k} % len(items)\n    return items[len(items) - k:] + items[:len(items) - k]"
        ),
    )
}

fn code_is_power(i: usize) -> CodeSpec {
    let k = (i % 9) as i64 + 2;
    let is_power = |mut n: i64| {
        while n > 1 && n % k == 0 {
            n /= k;
        }
        n == 1
    };
    spec(
        "is_power(n)",
        format!(
            "returns True if the positive integer n is a power of {k} (1, {k}, {}, and so on) and False otherwise",
            k * k
        ),
        asserts(
            [1, k, k * k * k, k + 1, 2 * k * k]
                .map(|n| (format!("is_power({n})"), py_bool(is_power(n)).to_string())),
        ),
        &format!(
            "def is_power(n):\n    while n > 1 and n % {k} == 0:\n        n //= {k}\n    return n == 1"
        ),
    )
}

fn code_digits_over(i: usize) -> CodeSpec {
    let k = (i % 9) as u32;
    let count = |n: u64| {
        n.to_string()
            .chars()
            .filter(|c| c.to_digit(10).is_some_and(|d| d > k))
            .count()
    };
    spec(
        "digits_over(n)",
        format!("returns how many digits of the non-negative integer n are greater than {k}"),
        asserts(
            [0u64, 123456789, 9090, 5].map(|n| (format!("digits_over({n})"), count(n).to_string())),
        ),
        &format!("def digits_over(n):\n    return sum(1 for d in str(n) if int(d) > {k})"),
    )
}

fn code_temperature(i: usize) -> CodeSpec {
    let low = (i / 4) as i64;
    let high = low + 5 * ((i % 4) as i64 + 1);
    let word = |t: i64| {
        if t < low {
            "cold"
        } else if t > high {
            "hot"
        } else {
            "mild"
        }
    };
    spec(
        "temperature(t)",
        format!(
            "returns \"cold\" if t is below {low}, \"hot\" if t is above {high}, and \"mild\" otherwise"
        ),
        asserts(
            [low - 1, high + 1, low, high].map(|t| (format!("temperature({t})"), py_str(word(t)))),
        ),
        &format!(
            "def temperature(t):\n    if t < {low}:\n        return \"cold\"\n    if t > {high}:\n        return \"hot\"\n    return \"mild\""
        ),
    )
}

fn code_letter_grade(i: usize) -> CodeSpec {
    let top = 80 + (i / 11) as i64;
    let middle = top - 5 - (i % 11) as i64;
    let grade = |score: i64| {
        if score >= top {
            "A"
        } else if score >= middle {
            "B"
        } else {
            "C"
        }
    };
    spec(
        "letter_grade(score)",
        format!(
            "returns \"A\" if score is at least {top}, \"B\" if it is at least {middle}, and \"C\" otherwise"
        ),
        asserts(
            [top, top - 1, middle, middle - 1, 100]
                .map(|s| (format!("letter_grade({s})"), py_str(grade(s)))),
        ),
        &format!(
            "def letter_grade(score):\n    if score >= {top}:\n        return \"A\"\n    if score >= {middle}:\n        return \"B\"\n    return \"C\""
        ),
    )
}

fn code_close(i: usize) -> CodeSpec {
    let k = (i % 21) as i64;
    spec(
        "close(a, b)",
        format!("returns True if the numbers a and b differ by at most {k} and False otherwise"),
        asserts(
            [(10, 10 + k), (10, 11 + k), (10 + k, 10), (0, -k - 1)].map(|(a, b)| {
                (
                    format!("close({a}, {b})"),
                    py_bool((a - b).abs() <= k).to_string(),
                )
            }),
        ),
        &format!("def close(a, b):\n    return abs(a - b) <= {k}"),
    )
}

fn code_mask(i: usize) -> CodeSpec {
    let k = i % 6 + 1;
    let mask = |s: &str| {
        let hidden = s.len().saturating_sub(k);
        format!("{}{}", "#".repeat(hidden), &s[hidden..])
    };
    spec(
        "mask(s)",
        format!("returns the string s with every character except the last {k} replaced by \"#\""),
        asserts(
            ["1234567890", "ab", ""].map(|s| (format!("mask({})", py_str(s)), py_str(&mask(s)))),
        ),
        &format!(
            "def mask(s):\n    hidden = max(len(s) - {k}, 0)\n    return \"#\" * hidden + s[hidden:]"
        ),
    )
}

fn code_small_rules(i: usize) -> CodeSpec {
    match i % 3 {
        0 => spec(
            "number_word(n)",
            "returns the English word for the digit n (0 to 9), such as \"three\" for 3".into(),
            asserts([(0, "zero"), (3, "three"), (9, "nine"), (7, "seven")].map(|(n, w)| (format!("number_word({n})"), py_str(w)))),
            "def number_word(n):\n    words = [\"zero\", \"one\", \"two\", \"three\", \"four\", \"five\", \"six\", \"seven\", \"eight\", \"nine\"]\n    return words[n]",
        ),
        1 => spec(
            "triangle_type(a, b, c)",
            "returns \"equilateral\" if the three side lengths a, b and c are all equal, \"isosceles\" if exactly two are equal, and \"scalene\" otherwise".into(),
            asserts([((3, 3, 3), "equilateral"), ((3, 4, 3), "isosceles"), ((5, 5, 8), "isosceles"), ((3, 4, 5), "scalene")].map(|((a, b, c), t)| {
                (format!("triangle_type({a}, {b}, {c})"), py_str(t))
            })),
            "def triangle_type(a, b, c):\n    if a == b == c:\n        return \"equilateral\"\n    if a == b or b == c or a == c:\n        return \"isosceles\"\n    return \"scalene\"",
        ),
        _ => spec(
            "middle(s)",
            "returns the middle character of the string s, whose length is odd".into(),
            asserts([("abc", "b"), ("x", "x"), ("hello", "l")].map(|(s, m)| (format!("middle({})", py_str(s)), py_str(m)))),
            "def middle(s):\n    return s[len(s) // 2]",
        ),
    }
}
