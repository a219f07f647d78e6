//! Users' JSONL task files: good inputs, every malformed case, and no panics.

use std::io::Write;

use proptest::prelude::*;
use skillzip_tasks::jsonl::{MAX_INPUT_BYTES, MAX_LINE_BYTES, MAX_TASKS};
use skillzip_tasks::{
    Check, Constraint, Domain, JsonlError, Task, generate, parse_jsonl, read_jsonl, verify,
};

#[test]
fn good_file_with_every_form() {
    let text = concat!(
        "\u{feff}{\"prompt\": \"What is 2 + 2?\", \"answer\": \"4\"}\r\n",
        "\n",
        "{\"prompt\": \"What is 10 - 3?\", \"answer\": 7}\n",
        "{\"prompt\": \"Capital of France?\", \"answer\": \"Paris\", \"domain\": \"mc\"}\n",
        "{\"prompt\": \"Half of 3?\", \"answer\": 1.5}\n",
        "   \n",
        "{\"prompt\": \"Describe rain.\", \"id\": \"rain-1\", \"domain\": \"instructions\", ",
        "\"check\": {\"type\": \"constraints\", \"constraints\": [{\"type\": \"lowercase\"}, ",
        "{\"type\": \"words_at_most\", \"count\": 20}]}}\n",
        "{\"prompt\": \"Pick one.\\nA) x\\nB) y\", \"domain\": \"mc\", ",
        "\"check\": {\"type\": \"choice\", \"answer\": \"B\", \"options\": 2}}\n",
        "{\"prompt\": \"Write double(x).\", \"domain\": \"code\", ",
        "\"check\": {\"type\": \"code\", \"function\": \"double\", \"tests\": [\"assert double(2) == 4\"]}}\n",
        "{\"prompt\": \"How many?\", \"check\": {\"type\": \"number\", \"answer\": -3}}",
    );
    let tasks = parse_jsonl(text, Domain::Math).unwrap();
    let summary: Vec<(&str, Domain, &Check)> = tasks
        .iter()
        .map(|t| (t.id.as_str(), t.domain, &t.check))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("math-user-0001", Domain::Math, &Check::Number { answer: 4 }),
            ("math-user-0002", Domain::Math, &Check::Number { answer: 7 }),
            (
                "mc-user-0001",
                Domain::Choice,
                &Check::Exact {
                    answer: "Paris".into()
                }
            ),
            (
                "math-user-0003",
                Domain::Math,
                &Check::Exact {
                    answer: "1.5".into()
                }
            ),
            (
                "rain-1",
                Domain::Instructions,
                &Check::Constraints {
                    constraints: vec![Constraint::Lowercase, Constraint::WordsAtMost { count: 20 }]
                }
            ),
            (
                "mc-user-0002",
                Domain::Choice,
                &Check::Choice {
                    answer: 'B',
                    options: 2,
                    texts: vec![],
                }
            ),
            (
                "code-user-0001",
                Domain::Code,
                &Check::Code {
                    function: "double".into(),
                    tests: vec!["assert double(2) == 4".into()]
                }
            ),
            (
                "math-user-0004",
                Domain::Math,
                &Check::Number { answer: -3 }
            ),
        ]
    );
    assert_eq!(tasks[0].prompt, "What is 2 + 2?");
    assert_eq!(tasks[5].prompt, "Pick one.\nA) x\nB) y");
    assert!(verify(&tasks[0], "The answer is 4.", None).helpful);
    assert!(verify(&tasks[2], "paris", None).helpful);
}

#[test]
fn generated_tasks_round_trip_through_the_full_form() {
    let mut text = String::new();
    let mut originals: Vec<Task> = Vec::new();
    for domain in Domain::ALL {
        for task in generate(domain, 4, skillzip_tasks::Split::Train, 5, 1) {
            text.push_str(&serde_json::to_string(&task).unwrap());
            text.push('\n');
            originals.push(task);
        }
    }
    assert_eq!(parse_jsonl(&text, Domain::Math).unwrap(), originals);
}

fn error_of(text: &str) -> JsonlError {
    match parse_jsonl(text, Domain::Math) {
        Ok(tasks) => panic!("{text:?} parsed into {tasks:?}"),
        Err(e) => e,
    }
}

const GOOD: &str = r#"{"prompt": "p", "answer": "1"}"#;

#[test]
fn every_malformed_line_is_a_typed_error_with_its_line() {
    /// (input, the line the error names, whether the error is the expected kind)
    type Case = (String, usize, fn(&JsonlError) -> bool);
    let cases: Vec<Case> = vec![
        ("not json".into(), 1, |e| {
            matches!(e, JsonlError::Syntax { .. })
        }),
        (format!("{GOOD}\n{{\"prompt\": \"p\", "), 2, |e| {
            matches!(e, JsonlError::Syntax { .. })
        }),
        ("\n\n[1, 2]".into(), 3, |e| {
            matches!(
                e,
                JsonlError::NotAnObject {
                    found: "an array",
                    ..
                }
            )
        }),
        ("\"text\"".into(), 1, |e| {
            matches!(
                e,
                JsonlError::NotAnObject {
                    found: "a string",
                    ..
                }
            )
        }),
        (r#"{"answer": "4"}"#.into(), 1, |e| {
            matches!(
                e,
                JsonlError::MissingField {
                    field: "prompt",
                    ..
                }
            )
        }),
        (r#"{"prompt": 5, "answer": "4"}"#.into(), 1, |e| {
            matches!(
                e,
                JsonlError::InvalidField {
                    field: "prompt",
                    ..
                }
            )
        }),
        (r#"{"prompt": "  ", "answer": "4"}"#.into(), 1, |e| {
            matches!(
                e,
                JsonlError::InvalidField {
                    field: "prompt",
                    ..
                }
            )
        }),
        (format!("{GOOD}\n{{\"prompt\": \"x\"}}"), 2, |e| {
            matches!(e, JsonlError::MissingCheck { .. })
        }),
        (
            r#"{"prompt": "x", "answer": "4", "check": {"type": "number", "answer": 4}}"#.into(),
            1,
            |e| matches!(e, JsonlError::ConflictingChecks { .. }),
        ),
        (
            r#"{"prompt": "x", "check": {"type": "nope"}}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidCheck { .. }),
        ),
        (
            r#"{"prompt": "x", "check": {"type": "number", "answer": "4"}}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidCheck { .. }),
        ),
        (
            r#"{"prompt": "x", "check": {"type": "number", "answer": 4, "extra": 1}}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidCheck { .. }),
        ),
        (
            r#"{"prompt": "x", "check": {"type": "choice", "answer": "E", "options": 4}}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidCheck { .. }),
        ),
        (
            r#"{"prompt": "x", "check": {"type": "constraints", "constraints": []}}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidCheck { .. }),
        ),
        (
            r#"{"prompt": "x", "check": {"type": "code", "function": "f", "tests": []}}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidCheck { .. }),
        ),
        (
            r#"{"prompt": "x", "answer": "4", "domain": "poetry"}"#.into(),
            1,
            |e| matches!(e, JsonlError::UnknownDomain { name, .. } if name == "poetry"),
        ),
        (
            r#"{"prompt": "x", "answer": "4", "domain": 3}"#.into(),
            1,
            |e| {
                matches!(
                    e,
                    JsonlError::InvalidField {
                        field: "domain",
                        ..
                    }
                )
            },
        ),
        (
            r#"{"prompt": "x", "answer": "4", "promt": "y"}"#.into(),
            1,
            |e| matches!(e, JsonlError::UnknownField { field, .. } if field == "promt"),
        ),
        (r#"{"prompt": "x", "answer": " "}"#.into(), 1, |e| {
            matches!(
                e,
                JsonlError::InvalidField {
                    field: "answer",
                    ..
                }
            )
        }),
        (r#"{"prompt": "x", "answer": [1]}"#.into(), 1, |e| {
            matches!(
                e,
                JsonlError::InvalidField {
                    field: "answer",
                    ..
                }
            )
        }),
        (r#"{"prompt": "x", "answer": null}"#.into(), 1, |e| {
            matches!(
                e,
                JsonlError::InvalidField {
                    field: "answer",
                    ..
                }
            )
        }),
        (
            r#"{"prompt": "x", "answer": "4", "id": 7}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidField { field: "id", .. }),
        ),
        (
            r#"{"prompt": "x", "answer": "4", "id": ""}"#.into(),
            1,
            |e| matches!(e, JsonlError::InvalidField { field: "id", .. }),
        ),
        (
            format!(
                r#"{{"prompt": "x", "answer": "4", "id": "{}"}}"#,
                "i".repeat(200)
            ),
            1,
            |e| matches!(e, JsonlError::InvalidField { field: "id", .. }),
        ),
        (
            concat!(
                r#"{"prompt": "x", "answer": "4", "id": "a"}"#,
                "\n\n",
                r#"{"prompt": "y", "answer": "5", "id": "a"}"#
            )
            .into(),
            3,
            |e| matches!(e, JsonlError::DuplicateId { first_line: 1, .. }),
        ),
        (
            // An explicit id may not take the id another line was given automatically.
            concat!(
                r#"{"prompt": "x", "answer": "4"}"#,
                "\n",
                r#"{"prompt": "y", "answer": "5", "id": "math-user-0001"}"#
            )
            .into(),
            2,
            |e| matches!(e, JsonlError::DuplicateId { first_line: 1, .. }),
        ),
        (
            format!(
                "{GOOD}\n{GOOD}\n{{\"prompt\": \"{}\", \"answer\": 1}}",
                "x".repeat(MAX_LINE_BYTES)
            ),
            3,
            |e| matches!(e, JsonlError::LineTooLong { .. }),
        ),
    ];
    for (text, line, is_expected) in cases {
        let error = error_of(&text);
        assert!(is_expected(&error), "{:.80?}: unexpected {error:?}", text);
        assert_eq!(error.line(), Some(line), "{:.80?}: {error}", text);
        assert!(
            error.to_string().starts_with(&format!("line {line}: ")),
            "{error}"
        );
    }
}

#[test]
fn empty_inputs_are_an_error() {
    for text in ["", "\n", "  \n\t\n", "\u{feff}"] {
        assert!(matches!(error_of(text), JsonlError::Empty), "{text:?}");
    }
}

#[test]
fn the_task_count_is_capped() {
    let mut text = String::with_capacity((GOOD.len() + 1) * (MAX_TASKS + 1));
    for _ in 0..=MAX_TASKS {
        text.push_str(r#"{"prompt":"p","answer":1}"#);
        text.push('\n');
    }
    let error = error_of(&text);
    assert!(
        matches!(error, JsonlError::TooManyTasks { .. }),
        "{error:?}"
    );
    assert_eq!(error.line(), Some(MAX_TASKS + 1));
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let text = " ".repeat(MAX_INPUT_BYTES as usize + 1);
    assert!(matches!(error_of(&text), JsonlError::TooLarge { .. }));
}

#[test]
fn read_jsonl_reads_files_and_reports_file_errors() {
    let dir = tempfile::tempdir().unwrap();

    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, format!("{GOOD}\n\n{GOOD}\n")).unwrap();
    let tasks = read_jsonl(&good, Domain::Instructions).unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1].id, "ifeval-user-0002");

    let missing = dir.path().join("missing.jsonl");
    let error = read_jsonl(&missing, Domain::Math).unwrap_err();
    assert!(matches!(&error, JsonlError::Io { path, .. } if path == &missing));
    assert_eq!(error.line(), None);

    let binary = dir.path().join("binary.jsonl");
    let mut bytes = format!("{GOOD}\n{GOOD}\n").into_bytes();
    bytes.extend_from_slice(b"{\"prompt\": \"\xff\xfe\", \"answer\": 1}\n");
    std::fs::write(&binary, bytes).unwrap();
    let error = read_jsonl(&binary, Domain::Math).unwrap_err();
    assert!(
        matches!(error, JsonlError::NotUtf8 { line: 3 }),
        "{error:?}"
    );

    // A sparse file one byte over the limit: rejected without trusting its reported size.
    let huge = dir.path().join("huge.jsonl");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(MAX_INPUT_BYTES + 1).unwrap();
    drop(file);
    assert!(matches!(
        read_jsonl(&huge, Domain::Math),
        Err(JsonlError::TooLarge { .. })
    ));

    let bad = dir.path().join("bad.jsonl");
    let mut file = std::fs::File::create(&bad).unwrap();
    writeln!(file, "{GOOD}").unwrap();
    writeln!(file, "{{\"prompt\": \"x\", \"anser\": 1}}").unwrap();
    drop(file);
    let error = read_jsonl(&bad, Domain::Math).unwrap_err();
    assert!(
        matches!(error, JsonlError::UnknownField { line: 2, .. }),
        "{error:?}"
    );
}

/// JSON-ish values that often come close to valid tasks.
fn near_task_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("prompt".to_string()),
        Just("answer".to_string()),
        Just("check".to_string()),
        Just("id".to_string()),
        Just("domain".to_string()),
        "[a-z]{1,6}",
    ];
    let value = prop_oneof![
        Just("\"4\"".to_string()),
        Just("4".to_string()),
        Just("-1e400".to_string()),
        Just("null".to_string()),
        Just("\"mc\"".to_string()),
        Just(r#"{"type": "choice", "answer": "Z", "options": 30}"#.to_string()),
        Just(
            r#"{"type": "constraints", "constraints": [{"type": "paragraphs", "count": 0}]}"#
                .to_string()
        ),
        Just(r#"{"type": "code", "function": "f", "tests": ["assert f()"]}"#.to_string()),
        "\"[ -~]{0,12}\"",
        "[\\[\\]{}\":,0-9a-z ]{0,16}",
    ];
    prop::collection::vec((key, value), 0..5).prop_map(|fields| {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = parse_jsonl(&text, Domain::Math);
    }

    #[test]
    fn json_like_text_never_panics(text in "[\\[\\]{}\":,\\\\\n a-z0-9.-]{0,300}") {
        let _ = parse_jsonl(&text, Domain::Code);
    }

    #[test]
    fn near_valid_lines_parse_or_fail_with_their_line(
        lines in prop::collection::vec(near_task_line(), 1..6)
    ) {
        let text = lines.join("\n");
        match parse_jsonl(&text, Domain::Choice) {
            Ok(tasks) => {
                prop_assert_eq!(tasks.len(), lines.len());
                for task in &tasks {
                    prop_assert!(task.check.validate().is_ok());
                    // Whatever the user gave, verifying a response must not panic.
                    let _ = verify(task, "Answer: A. The answer is 4.", None);
                    let _ = task.reference_response();
                }
            }
            Err(error) => {
                let line = error.line();
                prop_assert!(line.is_some_and(|l| l >= 1 && l <= lines.len()), "{:?}", error);
            }
        }
    }
}
