//! Rule-based verifiers: is one response to one [`Task`] helpful?
//!
//! [`verify`] (or [`verify_with`] for non-default [`VerifyOptions`]) returns a [`Verdict`]:
//! helpful or harmful, with a short reason a person can read in a report. Per check:
//!
//! - **Number**: the answer is extracted as lm-evaluation-harness does for GSM8K, either
//!   *strictly* ([`extract_strict`]: the number after the first "The answer is" or "####") or
//!   *flexibly* ([`extract_flexible`]: the last number anywhere), then compared numerically.
//!   [`verify`] takes the stated answer when there is one and the last number otherwise
//!   ([`MathExtraction::StatedOrLast`]): a 135M model often answers right without the
//!   requested closing sentence, and a strict default would leave it nothing to learn from;
//!   but when it does state "The answer is 14." and rambles on to "the 4th step", its answer
//!   is 14, not 4. Reports can run [`verify_with`] each way.
//! - **Constraints**: every [`Constraint`] must hold ([`Constraint::check`]); the definitions
//!   follow IFEval's where it has one.
//! - **Choice**: the response must name exactly one option letter ([`extract_choice`]) and it
//!   must be the right one. A response that names no letter at all may name the option by its
//!   text instead (where the task lists its options' texts): exactly one option's text, found as
//!   whole words ignoring case ([`find_option_texts`]), and it must be the right one's.
//! - **Code**: the first Python block ([`extract_code`]) followed by the tests runs in the
//!   [`Sandbox`]; helpful iff it exits with status 0. Without a sandbox code is never run and
//!   the verdict is harmful.
//! - **Exact**: the response, or what follows its last "answer:" / "answer is", equals the
//!   answer up to case, whitespace, quotes and a final period.

use crate::sandbox::{Exit, RunOutcome, Sandbox};
use crate::task::{Check, Constraint, Task, letter_index, option_letter};

/// The judgement of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the response does what the task asks.
    pub helpful: bool,
    /// A short explanation, e.g. "expected 12, found 13".
    pub reason: String,
}

impl Verdict {
    /// A helpful verdict.
    pub fn helpful(reason: impl Into<String>) -> Self {
        Self {
            helpful: true,
            reason: reason.into(),
        }
    }

    /// A harmful verdict.
    pub fn harmful(reason: impl Into<String>) -> Self {
        Self {
            helpful: false,
            reason: reason.into(),
        }
    }
}

/// How a math answer is found in a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MathExtraction {
    /// Only the number right after "The answer is" or "####" ([`extract_strict`]).
    Strict,
    /// The last number in the response ([`extract_flexible`]).
    Flexible,
    /// The strict answer when the response states one, else the last number.
    #[default]
    StatedOrLast,
}

/// Options of [`verify_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// How math answers are extracted (the stated answer, else the last number, by default).
    pub math: MathExtraction,
}

/// Judges `response` to `task` with the default options (flexible math extraction).
pub fn verify(task: &Task, response: &str, sandbox: Option<&Sandbox>) -> Verdict {
    verify_with(task, response, sandbox, &VerifyOptions::default())
}

/// Judges `response` to `task`. `sandbox` is needed only for code tasks.
pub fn verify_with(
    task: &Task,
    response: &str,
    sandbox: Option<&Sandbox>,
    options: &VerifyOptions,
) -> Verdict {
    match &task.check {
        Check::Number { answer } => verify_number(*answer, response, options.math),
        Check::Constraints { constraints } => verify_constraints(constraints, response),
        Check::Choice {
            answer,
            options,
            texts,
        } => verify_choice(*answer, *options, texts, response),
        Check::Code { tests, .. } => verify_code(tests, response, sandbox),
        Check::Exact { answer } => verify_exact(answer, response),
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// One number written in a text: byte span and normalised form (no `$`, no thousands commas,
/// a leading `-` if negative).
struct NumberToken {
    start: usize,
    text: String,
}

/// Every number in `text`, in order. A number is digits with optional thousands commas and one
/// optional decimal part (`1,234.5`); a `$` before it is skipped and a `-` before it (or before
/// its `$`) makes it negative unless the `-` follows a letter or digit (`5-3` is a range or a
/// subtraction, not "-3"). A trailing `.` ends a sentence and is not part of the number.
fn numbers_in(text: &str) -> Vec<NumberToken> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut seen_point = false;
        while end < bytes.len() {
            let next_is_digit = bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
            match bytes[end] {
                b'0'..=b'9' => end += 1,
                b',' if next_is_digit && !seen_point => end += 1,
                b'.' if next_is_digit && !seen_point => {
                    seen_point = true;
                    end += 1;
                }
                _ => break,
            }
        }
        let mut sign_at = start;
        if sign_at > 0 && bytes[sign_at - 1] == b'$' {
            sign_at -= 1;
        }
        let negative = sign_at > 0
            && bytes[sign_at - 1] == b'-'
            && (sign_at == 1 || !bytes[sign_at - 2].is_ascii_alphanumeric());
        let digits: String = text[start..end].chars().filter(|&c| c != ',').collect();
        tokens.push(NumberToken {
            start: if negative { sign_at - 1 } else { sign_at },
            text: if negative {
                format!("-{digits}")
            } else {
                digits
            },
        });
        i = end;
    }
    tokens
}

/// The number right after the first "The answer is" (any case, optionally followed by `:`,
/// `*` or `$`) or "####" in `response`, normalised (`"The answer is $1,234."` → `"1234"`).
/// `None` when no such phrase is followed by a number.
pub fn extract_strict(response: &str) -> Option<String> {
    let lower = response.to_ascii_lowercase();
    let mut markers: Vec<(usize, usize)> = Vec::new();
    for marker in ["the answer is", "####"] {
        let mut from = 0;
        while let Some(found) = lower[from..].find(marker) {
            let at = from + found;
            markers.push((at, at + marker.len()));
            from = at + marker.len();
        }
    }
    markers.sort_unstable();
    markers.into_iter().find_map(|(_, after)| {
        let rest = response[after..].trim_start_matches([' ', '\t', ':', '*']);
        let first = numbers_in(rest).into_iter().next()?;
        // The number must come right away, after at most a sign and a dollar sign.
        rest[..first.start]
            .chars()
            .all(|c| c == '-' || c == '$')
            .then_some(first.text)
    })
}

/// The last number anywhere in `response`, normalised like [`extract_strict`]'s; `None` when
/// the response has no digits.
pub fn extract_flexible(response: &str) -> Option<String> {
    numbers_in(response).pop().map(|token| token.text)
}

/// Whether a normalised number equals `answer` (`"42"`, `"42.0"` and `"42.00"` all equal 42).
fn same_number(found: &str, answer: i64) -> bool {
    if let Ok(value) = found.parse::<i64>() {
        return value == answer;
    }
    match found.parse::<f64>() {
        Ok(value) => value.fract() == 0.0 && value == answer as f64,
        Err(_) => false,
    }
}

fn verify_number(answer: i64, response: &str, extraction: MathExtraction) -> Verdict {
    let found = match extraction {
        MathExtraction::Strict => extract_strict(response),
        MathExtraction::Flexible => extract_flexible(response),
        MathExtraction::StatedOrLast => {
            extract_strict(response).or_else(|| extract_flexible(response))
        }
    };
    match found {
        None => Verdict::harmful(match extraction {
            MathExtraction::Strict => "no \"The answer is N\" found",
            MathExtraction::Flexible | MathExtraction::StatedOrLast => "no number found",
        }),
        Some(found) if same_number(&found, answer) => {
            Verdict::helpful(format!("answer {answer} matches"))
        }
        Some(found) => Verdict::harmful(format!("expected {answer}, found {found}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Constraints
// ---------------------------------------------------------------------------------------------

/// Words as the constraints count them: whitespace-separated tokens with a letter or digit
/// (so `***`, `-` and `—` are not words).
pub fn count_words(text: &str) -> usize {
    text.split_whitespace()
        .filter(|token| token.chars().any(char::is_alphanumeric))
        .count()
}

/// Sentences as the constraints count them: pieces of text between runs of `.`, `!` and `?`
/// that contain a letter or digit. A `.` followed by a letter or digit (`3.5`, `P.S.`,
/// `e.g.`) does not end a sentence.
pub fn count_sentences(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut sentences = 0;
    let mut has_content = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut end = i;
            while end < chars.len() && matches!(chars[end], '.' | '!' | '?') {
                end += 1;
            }
            let continues_word = chars.get(end).is_some_and(|c| c.is_alphanumeric());
            if !continues_word {
                if has_content {
                    sentences += 1;
                }
                has_content = false;
            }
            i = end;
            continue;
        }
        has_content |= c.is_alphanumeric();
        i += 1;
    }
    sentences + usize::from(has_content)
}

/// Paragraphs as the constraints count them: if the text has `***` dividers, the pieces
/// between them (empty pieces at the very start or end are ignored, an empty one in between
/// is an error, as IFEval has it); otherwise runs of non-blank lines separated by blank lines.
pub fn count_paragraphs(text: &str) -> Result<usize, String> {
    if text.contains("***") {
        let pieces: Vec<&str> = text.split("***").collect();
        let last = pieces.len() - 1;
        let mut count = 0;
        for (i, piece) in pieces.iter().enumerate() {
            if !piece.trim().is_empty() {
                count += 1;
            } else if i != 0 && i != last {
                return Err("an empty paragraph between *** dividers".into());
            }
        }
        return Ok(count);
    }
    let mut count = 0;
    let mut in_paragraph = false;
    for line in text.lines() {
        let blank = line.trim().is_empty();
        if !blank && !in_paragraph {
            count += 1;
        }
        in_paragraph = !blank;
    }
    Ok(count)
}

/// Lowercase alphanumeric runs: the word sequence keywords are matched against.
fn word_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// How often the word (or phrase) `word` occurs in `text` as whole words, ignoring case.
fn occurrences(text: &str, word: &str) -> usize {
    let needle = word_tokens(word);
    if needle.is_empty() {
        return 0;
    }
    let haystack = word_tokens(text);
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle.as_slice())
        .count()
}

fn bullet_lines(text: &str) -> usize {
    text.lines()
        .filter(|line| {
            let line = line.trim_start();
            let mut chars = line.chars();
            match chars.next() {
                Some('*') => chars.next().is_some_and(|c| c != '*'),
                Some('-') => true,
                _ => false,
            }
        })
        .count()
}

fn has_title(text: &str) -> bool {
    text.lines().any(|line| {
        let Some(open) = line.find("<<") else {
            return false;
        };
        let after = &line[open + 2..];
        after
            .rfind(">>")
            .is_some_and(|close| !after[..close].trim_matches(['<', '>']).trim().is_empty())
    })
}

/// The response with an optional ```` ```json ```` (or bare ```` ``` ````) fence removed.
fn strip_json_fence(response: &str) -> &str {
    let text = response.trim();
    let text = if text.len() >= 7 && text[..7].eq_ignore_ascii_case("```json") {
        &text[7..]
    } else {
        text.strip_prefix("```").unwrap_or(text)
    };
    text.strip_suffix("```").unwrap_or(text).trim()
}

fn count_noun(count: usize, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}

/// A short prefix of `text` for messages (at most 30 characters).
fn preview(text: &str) -> String {
    let mut shown: String = text.chars().take(30).collect();
    if text.chars().count() > 30 {
        shown.push('…');
    }
    shown
}

impl Constraint {
    /// Whether `response` meets the constraint; the error says what is wrong.
    pub fn check(&self, response: &str) -> Result<(), String> {
        let at_least = |found: usize, need: usize, what: (&str, &str)| {
            if found >= need {
                Ok(())
            } else {
                Err(format!(
                    "found {}, need at least {need}",
                    count_noun(found, what.0, what.1)
                ))
            }
        };
        let at_most = |found: usize, limit: usize, what: (&str, &str)| {
            if found <= limit {
                Ok(())
            } else {
                Err(format!(
                    "found {}, allowed at most {limit}",
                    count_noun(found, what.0, what.1)
                ))
            }
        };
        const WORDS: (&str, &str) = ("word", "words");
        const SENTENCES: (&str, &str) = ("sentence", "sentences");
        match self {
            Constraint::Lowercase => {
                let capitals = response.chars().filter(|c| c.is_uppercase()).count();
                if capitals > 0 {
                    Err(format!(
                        "found {}",
                        count_noun(capitals, "capital letter", "capital letters")
                    ))
                } else if !response.chars().any(char::is_lowercase) {
                    Err("no letters".into())
                } else {
                    Ok(())
                }
            }
            Constraint::Uppercase => {
                let small = response.chars().filter(|c| c.is_lowercase()).count();
                if small > 0 {
                    Err(format!(
                        "found {}",
                        count_noun(small, "lowercase letter", "lowercase letters")
                    ))
                } else if !response.chars().any(char::is_uppercase) {
                    Err("no letters".into())
                } else {
                    Ok(())
                }
            }
            Constraint::NoCommas => match response.matches(',').count() {
                0 => Ok(()),
                n => Err(format!("found {}", count_noun(n, "comma", "commas"))),
            },
            Constraint::WordsAtLeast { count } => at_least(count_words(response), *count, WORDS),
            Constraint::WordsAtMost { count } => at_most(count_words(response), *count, WORDS),
            Constraint::SentencesAtLeast { count } => {
                at_least(count_sentences(response), *count, SENTENCES)
            }
            Constraint::SentencesAtMost { count } => {
                at_most(count_sentences(response), *count, SENTENCES)
            }
            Constraint::Paragraphs { count } => {
                let found = count_paragraphs(response)?;
                if found == *count {
                    Ok(())
                } else {
                    Err(format!(
                        "found {}, need exactly {count}",
                        count_noun(found, "paragraph", "paragraphs")
                    ))
                }
            }
            Constraint::KeywordAtLeast { word, times } => {
                let found = occurrences(response, word);
                if found >= *times {
                    Ok(())
                } else {
                    Err(format!(
                        "\"{word}\" appears {}, need at least {times}",
                        count_noun(found, "time", "times")
                    ))
                }
            }
            Constraint::ForbiddenWord { word } => match occurrences(response, word) {
                0 => Ok(()),
                n => Err(format!(
                    "\"{word}\" appears {}",
                    count_noun(n, "time", "times")
                )),
            },
            Constraint::StartsWith { text } => {
                let start = response.trim_start();
                if start
                    .to_lowercase()
                    .starts_with(&text.trim().to_lowercase())
                {
                    Ok(())
                } else {
                    Err(format!("response starts with \"{}\"", preview(start)))
                }
            }
            Constraint::EndsWith { text } => {
                if response
                    .trim_end()
                    .to_lowercase()
                    .ends_with(&text.trim().to_lowercase())
                {
                    Ok(())
                } else {
                    Err(format!("response does not end with \"{text}\""))
                }
            }
            Constraint::Json => {
                serde_json::from_str::<serde_json::Value>(strip_json_fence(response))
                    .map(|_| ())
                    .map_err(|e| format!("not valid JSON: {e}"))
            }
            Constraint::QuotedWhole => {
                let text = response.trim();
                if text.len() > 1 && text.starts_with('"') && text.ends_with('"') {
                    Ok(())
                } else {
                    Err("response is not wrapped in double quotes".into())
                }
            }
            Constraint::Title => {
                if has_title(response) {
                    Ok(())
                } else {
                    Err("no <<title>> found".into())
                }
            }
            Constraint::BulletPoints { count } => {
                let found = bullet_lines(response);
                if found == *count {
                    Ok(())
                } else {
                    Err(format!(
                        "found {}, need exactly {count}",
                        count_noun(found, "bullet point", "bullet points")
                    ))
                }
            }
            Constraint::Postscript => {
                let lower = response.to_lowercase();
                if lower.contains("p.s.") || lower.contains("p. s.") {
                    Ok(())
                } else {
                    Err("no P.S. found".into())
                }
            }
        }
    }
}

fn verify_constraints(constraints: &[Constraint], response: &str) -> Verdict {
    let violations: Vec<String> = constraints
        .iter()
        .filter_map(|c| {
            c.check(response)
                .err()
                .map(|why| format!("constraint {} violated: {why}", c.name()))
        })
        .collect();
    if violations.is_empty() {
        Verdict::helpful(match constraints {
            [only] => format!("constraint {} met", only.name()),
            all => format!("all {} constraints met", all.len()),
        })
    } else {
        Verdict::harmful(violations.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Multiple choice
// ---------------------------------------------------------------------------------------------

/// The option letter a response picks: from "Answer: B", "the answer is B", "(B)", "B)",
/// a line starting "B." or "B:", or a response that is a lone letter. Letters are upper case
/// except after "answer:" and in a lone-letter response, where `b` means `B`. A response that
/// names two different letters (say, by listing the options) picks none: the error says so.
pub fn extract_choice(response: &str) -> Result<char, String> {
    match named_letters(response).as_slice() {
        [] => Err(NO_LETTER.into()),
        [one] => Ok(*one),
        several => {
            let listed: Vec<String> = several.iter().map(char::to_string).collect();
            Err(format!("several options named: {}", listed.join(", ")))
        }
    }
}

const NO_LETTER: &str = "no option letter found";

/// The different option letters `response` names, in the order [`extract_choice`] finds them.
fn named_letters(response: &str) -> Vec<char> {
    let chars: Vec<char> = response.chars().collect();
    let mut named: Vec<char> = Vec::new();
    let mut name = |letter: char| {
        if !named.contains(&letter) {
            named.push(letter);
        }
    };
    let boundary = |at: usize| chars.get(at).is_none_or(|c| !c.is_alphanumeric());

    // "Answer: B" / "the answer is B" / "Answer: (B)".
    let lower: Vec<char> = chars.iter().map(|c| c.to_ascii_lowercase()).collect();
    let marker: Vec<char> = "answer".chars().collect();
    let mut i = 0;
    while i + marker.len() <= lower.len() {
        if lower[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        let mut j = i + marker.len();
        let skip = |j: &mut usize| {
            while *j < chars.len() && matches!(chars[*j], ' ' | '\t' | '*') {
                *j += 1;
            }
        };
        skip(&mut j);
        let mut after_colon = false;
        if chars.get(j) == Some(&':') {
            after_colon = true;
            j += 1;
        } else if lower.get(j) == Some(&'i') && lower.get(j + 1) == Some(&'s') && boundary(j + 2) {
            j += 2;
        } else {
            i += marker.len();
            continue;
        }
        skip(&mut j);
        if chars.get(j) == Some(&'(') {
            j += 1;
        }
        if let Some(&c) = chars.get(j) {
            let accepted = c.is_ascii_uppercase() || (after_colon && c.is_ascii_lowercase());
            if accepted && boundary(j + 1) {
                name(c.to_ascii_uppercase());
            }
        }
        i = j.max(i + 1);
    }

    for (k, &c) in chars.iter().enumerate() {
        if !c.is_ascii_uppercase() {
            continue;
        }
        let before = k.checked_sub(1).map(|p| chars[p]);
        let after = chars.get(k + 1).copied();
        // "(B)" anywhere, "B)" after whitespace or at the start.
        if after == Some(')')
            && (before == Some('(') || before.is_none_or(|b| b.is_whitespace() || b == '*'))
        {
            name(c);
        }
        // "B." or "B:" opening a line, followed by a space or the end.
        let line_start = chars[..k]
            .iter()
            .rev()
            .take_while(|&&p| p != '\n')
            .all(|&p| p == ' ' || p == '*' || p == '\t');
        if line_start
            && matches!(after, Some('.') | Some(':'))
            && chars.get(k + 2).is_none_or(|n| n.is_whitespace())
        {
            name(c);
        }
    }

    // A lone letter, possibly with punctuation or emphasis around it.
    let bare = response.trim().trim_matches(|c: char| {
        c.is_whitespace() || matches!(c, '.' | '*' | '(' | ')' | '"' | '\'')
    });
    let mut bare_chars = bare.chars();
    if let (Some(c), None) = (bare_chars.next(), bare_chars.next())
        && c.is_ascii_alphabetic()
    {
        name(c.to_ascii_uppercase());
    }
    named
}

/// Words for matching option texts: lowercase runs of letters and digits, where a `.` or `,`
/// between two digits stays inside the number (`7.5`, `1,000`) and a `-` right before a digit
/// that follows no letter or digit makes it negative (`-3`, but `5-3` is `5` and `3`).
fn option_words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        let digit_before = prev.is_some_and(|p| p.is_ascii_digit());
        let digit_after = next.is_some_and(|n| n.is_ascii_digit());
        let keep = c.is_alphanumeric()
            || (matches!(c, '.' | ',') && digit_before && digit_after && !word.is_empty())
            || (c == '-' && digit_after && prev.is_none_or(|p| !p.is_alphanumeric()));
        if keep {
            if c == '-' && !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The options whose texts `response` contains, as indices into `texts` in option order.
///
/// Texts match as whole words ignoring case and punctuation ("small" is not in
/// "smaller", "7" is not in "17" or "7.5" but is in "7."). Where matches overlap, as when one
/// option's text lies inside another's ("cat" in "black cat"), the longest wins and the shorter
/// is not counted; options with the same words all count.
pub fn find_option_texts(response: &str, texts: &[String]) -> Vec<usize> {
    let haystack = option_words(response);
    // (start, length, option) of every occurrence.
    let mut matches: Vec<(usize, usize, usize)> = Vec::new();
    for (option, text) in texts.iter().enumerate() {
        let needle = option_words(text);
        if needle.is_empty() || needle.len() > haystack.len() {
            continue;
        }
        for start in 0..=haystack.len() - needle.len() {
            if haystack[start..start + needle.len()] == needle[..] {
                matches.push((start, needle.len(), option));
            }
        }
    }
    matches.sort_by_key(|&(start, len, option)| (std::cmp::Reverse(len), start, option));
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let mut found: Vec<usize> = Vec::new();
    for (start, len, option) in matches {
        let overlaps = taken
            .iter()
            .any(|&(s, l)| start < s + l && s < start + len && !(s == start && l == len));
        if overlaps {
            continue;
        }
        taken.push((start, len));
        if !found.contains(&option) {
            found.push(option);
        }
    }
    found.sort_unstable();
    found
}

/// The verdict for a response that names no option letter, from the option texts it names.
fn verify_choice_by_text(answer: char, texts: &[String], response: &str) -> Verdict {
    let found = find_option_texts(response, texts);
    match found.as_slice() {
        [] => Verdict::harmful("no option letter or option text found"),
        &[one] => {
            let letter = option_letter(one);
            if letter == answer {
                Verdict::helpful(format!(
                    "answer {answer} (by its text {:?}) matches",
                    texts[one]
                ))
            } else {
                Verdict::harmful(format!(
                    "names option {letter}'s text {:?}, expected {answer}",
                    texts[one]
                ))
            }
        }
        several => {
            let listed: Vec<String> = several
                .iter()
                .map(|&i| format!("{} {:?}", option_letter(i), texts[i]))
                .collect();
            Verdict::harmful(format!(
                "names several options' texts: {}",
                listed.join(", ")
            ))
        }
    }
}

fn verify_choice(answer: char, options: usize, texts: &[String], response: &str) -> Verdict {
    match extract_choice(response) {
        Err(why) if why == NO_LETTER && !texts.is_empty() => {
            verify_choice_by_text(answer, texts, response)
        }
        Err(why) => Verdict::harmful(why),
        Ok(letter) if letter_index(letter).is_none_or(|i| i >= options) => Verdict::harmful(
            format!("named option {letter}, but there are only {options} options"),
        ),
        Ok(letter) if letter == answer => Verdict::helpful(format!("answer {answer} matches")),
        Ok(letter) => Verdict::harmful(format!("expected {answer}, found {letter}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Code
// ---------------------------------------------------------------------------------------------

/// The Python code in a response: the first ```` ```python ```` (or `py`, `python3`) block,
/// else the first fenced block, else the whole response if it starts with `def`, `import`,
/// `from`, `class` or a decorator. A block cut off before its closing fence (the generation
/// budget ran out) runs to the end of the response: the tests decide whether it is complete.
pub fn extract_code(response: &str) -> Option<String> {
    let mut blocks: Vec<(String, &str)> = Vec::new();
    let mut rest = response;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let (info, body) = match after.find('\n') {
            Some(newline) => (&after[..newline], &after[newline + 1..]),
            None => (after, ""),
        };
        let info = info.trim().to_ascii_lowercase();
        match body.find("```") {
            Some(close) => {
                blocks.push((info, &body[..close]));
                rest = &body[close + 3..];
            }
            None => {
                blocks.push((info, body));
                break;
            }
        }
    }
    let python = blocks
        .iter()
        .find(|(info, _)| matches!(info.as_str(), "python" | "py" | "python3"));
    let chosen = python.or_else(|| blocks.first()).map(|(_, code)| *code);
    let code = match chosen {
        Some(code) => code,
        None => {
            let start = response.trim_start();
            let looks_like_code = ["def ", "import ", "from ", "class ", "@"]
                .iter()
                .any(|opening| start.starts_with(opening));
            if !looks_like_code {
                return None;
            }
            response
        }
    };
    let code = code.trim_matches('\n').trim_end();
    (!code.trim().is_empty()).then(|| code.to_string())
}

/// Cuts a reason to at most 200 characters.
fn clip(reason: String) -> String {
    if reason.chars().count() <= 200 {
        return reason;
    }
    let mut clipped: String = reason.chars().take(199).collect();
    clipped.push('…');
    clipped
}

/// Why a test run failed, from its exit and standard error.
fn failure_reason(outcome: &RunOutcome) -> String {
    match outcome.exit {
        Exit::WallTimeout => format!(
            "tests failed: timed out after {:.1} s",
            outcome.wall.as_secs_f64()
        ),
        Exit::Signal(signal) => {
            let why = match signal {
                libc::SIGXCPU => " (SIGXCPU: CPU time limit)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGXFSZ => " (SIGXFSZ: file size limit)",
                _ => "",
            };
            format!("tests failed: killed by signal {signal}{why}")
        }
        Exit::Code(code) => {
            let lines: Vec<&str> = outcome
                .stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let failing_assert = lines.iter().rev().find(|l| l.starts_with("assert "));
            match (lines.last(), failing_assert) {
                (Some(last), Some(assert)) if last.starts_with("AssertionError") => {
                    clip(format!("tests failed: {last} at `{assert}`"))
                }
                (Some(last), _) => clip(format!("tests failed: {last}")),
                (None, _) => format!("tests failed: exit status {code}"),
            }
        }
    }
}

fn verify_code(tests: &[String], response: &str, sandbox: Option<&Sandbox>) -> Verdict {
    let Some(code) = extract_code(response) else {
        return Verdict::harmful("no code found");
    };
    let Some(sandbox) = sandbox else {
        return Verdict::harmful("no sandbox available: code not run");
    };
    let program = format!("{code}\n\n{}\n", tests.join("\n"));
    match sandbox.run_python(&program) {
        Err(e) => Verdict::harmful(clip(format!("sandbox error: {e}"))),
        Ok(outcome) if outcome.success() => Verdict::helpful(format!(
            "all {} passed",
            count_noun(tests.len(), "test", "tests")
        )),
        Ok(outcome) => Verdict::harmful(failure_reason(&outcome)),
    }
}

// ---------------------------------------------------------------------------------------------
// Exact answers
// ---------------------------------------------------------------------------------------------

/// Lower case, single spaces, no surrounding quotes, backticks, emphasis or final period.
fn normalise_answer(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .join(" ")
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '*' | ' '))
        .trim_end_matches('.')
        .trim()
        .to_lowercase()
}

fn verify_exact(answer: &str, response: &str) -> Verdict {
    let expected = normalise_answer(answer);
    let mut candidates = vec![normalise_answer(response)];
    let lower = response.to_lowercase();
    for marker in ["answer:", "answer is"] {
        if let Some(at) = lower.rfind(marker) {
            // `lower` may differ in byte length from `response` for non-ASCII text, so slice
            // `lower` itself: the comparison is case-insensitive anyway.
            let after = &lower[at + marker.len()..];
            candidates.push(normalise_answer(after.lines().next().unwrap_or("")));
        }
    }
    if let Some(last_line) = response.lines().rev().find(|l| !l.trim().is_empty()) {
        candidates.push(normalise_answer(last_line));
    }
    if candidates.contains(&expected) {
        Verdict::helpful(format!("answer \"{}\" matches", answer.trim()))
    } else {
        Verdict::harmful(clip(format!(
            "expected \"{}\", found \"{}\"",
            answer.trim(),
            preview(response.trim())
        )))
    }
}
