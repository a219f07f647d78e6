//! Multiple choice answered by an option's text instead of its letter.

use skillzip_tasks::task::MAX_LEVEL;
use skillzip_tasks::verify::find_option_texts;
use skillzip_tasks::{Check, Domain, Split, Task, generate, parse_jsonl, verify};

fn choice(answer: char, texts: &[&str]) -> Task {
    Task {
        id: "test".into(),
        domain: Domain::Choice,
        prompt: "a prompt".into(),
        check: Check::Choice {
            answer,
            options: texts.len(),
            texts: texts.iter().map(|t| t.to_string()).collect(),
        },
    }
}

fn opposite_of_big() -> Task {
    choice('C', &["light", "tall", "small"])
}

#[test]
fn the_correct_option_text_without_a_letter_is_helpful() {
    let t = opposite_of_big();
    let v = verify(&t, "The correct option is \"small.\"", None);
    assert!(v.helpful, "{}", v.reason);
    assert_eq!(v.reason, "answer C (by its text \"small\") matches");
    for response in ["small", "SMALL", "It is small.", "**Small**", "'small'"] {
        assert!(verify(&t, response, None).helpful, "{response:?}");
    }
}

#[test]
fn a_wrong_option_text_is_harmful() {
    let v = verify(&opposite_of_big(), "The correct option is \"light\".", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "names option A's text \"light\", expected C");
}

#[test]
fn several_option_texts_are_harmful() {
    let v = verify(&opposite_of_big(), "It is either small or tall.", None);
    assert!(!v.helpful);
    assert_eq!(
        v.reason,
        "names several options' texts: B \"tall\", C \"small\""
    );
    // The same text twice is still one option.
    assert!(verify(&opposite_of_big(), "small, yes, small", None).helpful);
}

#[test]
fn texts_inside_longer_words_do_not_count() {
    let t = opposite_of_big();
    for response in ["smaller", "The smallest one.", "lightly", "taller than me"] {
        let v = verify(&t, response, None);
        assert!(!v.helpful, "{response:?}");
        assert_eq!(
            v.reason, "no option letter or option text found",
            "{response:?}"
        );
    }
    let numbers = choice('A', &["7", "17", "70"]);
    assert!(verify(&numbers, "The answer is 7.", None).helpful);
    assert!(verify(&numbers, "7", None).helpful);
    assert!(!verify(&numbers, "It is 17.", None).helpful);
    let v = verify(&numbers, "7.5", None);
    assert_eq!(v.reason, "no option letter or option text found");
    assert!(!verify(&numbers, "-7", None).helpful);
    assert_eq!(find_option_texts("5-7", &["7".into()]), vec![0]);
}

#[test]
fn overlapping_texts_prefer_the_longest_match() {
    let animals = choice('B', &["cat", "black cat", "cats"]);
    let v = verify(&animals, "It is the black cat.", None);
    assert!(v.helpful, "{}", v.reason);
    assert!(!verify(&animals, "The cats.", None).helpful);
    let v = verify(&animals, "A cat.", None);
    assert_eq!(v.reason, "names option A's text \"cat\", expected B");
    // Both texts in their own places: two options.
    let v = verify(&animals, "Not the cat but the black cat", None);
    assert!(
        v.reason.starts_with("names several options' texts"),
        "{}",
        v.reason
    );
    let syllogism = ["Ava is blue", "Ava is not blue", "Ava is green"];
    let t = choice('B', &syllogism);
    assert!(verify(&t, "Ava is not blue.", None).helpful);
    assert!(!verify(&t, "Ava is blue.", None).helpful);
}

#[test]
fn a_named_letter_takes_precedence_over_texts() {
    let t = opposite_of_big();
    let v = verify(&t, "Answer: A (small)", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "expected C, found A");
    let v = verify(&t, "Answer: C, light", None);
    assert!(v.helpful);
    assert_eq!(v.reason, "answer C matches");
    let v = verify(&t, "A) light\nC) small", None);
    assert_eq!(v.reason, "several options named: A, C");
}

#[test]
fn jsonl_without_texts_parses_and_judges_by_letters_only() {
    let line =
        r#"{"prompt": "Big or small?", "check": {"type": "choice", "answer": "B", "options": 2}}"#;
    let tasks = parse_jsonl(line, Domain::Choice).unwrap();
    let Check::Choice { texts, .. } = &tasks[0].check else {
        panic!("not a choice check");
    };
    assert!(texts.is_empty());
    let v = verify(&tasks[0], "small", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "no option letter found");
    assert!(verify(&tasks[0], "Answer: B", None).helpful);
    // Written back, the empty field is left out.
    let json = serde_json::to_value(&tasks[0].check).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type": "choice", "answer": "B", "options": 2})
    );
    let with_texts = r#"{"prompt": "Big or small?", "check": {"type": "choice", "answer": "B", "options": 2, "texts": ["big", "small"]}}"#;
    let tasks = parse_jsonl(with_texts, Domain::Choice).unwrap();
    assert!(verify(&tasks[0], "small", None).helpful);
    let wrong_count = r#"{"prompt": "x", "check": {"type": "choice", "answer": "B", "options": 2, "texts": ["big"]}}"#;
    assert!(parse_jsonl(wrong_count, Domain::Choice).is_err());
}

/// The text of option `letter` in a generated task's prompt line `X) text`.
fn listed_text(task: &Task, letter: char) -> String {
    let prefix = format!("{letter}) ");
    task.prompt
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{}: no option {letter}", task.id))
        .to_string()
}

#[test]
fn generated_tasks_list_their_texts_and_verify_by_text() {
    for level in 1..=MAX_LEVEL {
        for split in [Split::Train, Split::HeldOut] {
            for task in generate(Domain::Choice, level, split, 200, 17) {
                let Check::Choice {
                    answer,
                    options,
                    texts,
                } = &task.check
                else {
                    panic!("{}: not a choice check", task.id);
                };
                assert_eq!(texts.len(), *options, "{}", task.id);
                for (i, text) in texts.iter().enumerate() {
                    let letter = char::from(b'A' + i as u8);
                    assert_eq!(*text, listed_text(&task, letter), "{}", task.id);
                }
                let reference = task.reference_response().unwrap();
                assert!(verify(&task, &reference, None).helpful, "{}", task.id);

                let correct = &texts[(*answer as u8 - b'A') as usize];
                let v = verify(&task, correct, None);
                assert!(v.helpful, "{}: {correct:?}: {}", task.id, v.reason);
                let v = verify(
                    &task,
                    &format!("The correct option is \"{correct}.\""),
                    None,
                );
                assert!(v.helpful, "{}: {correct:?}: {}", task.id, v.reason);
                for (i, text) in texts.iter().enumerate() {
                    if i == (*answer as u8 - b'A') as usize {
                        continue;
                    }
                    let v = verify(&task, text, None);
                    assert!(!v.helpful, "{}: wrong text {text:?} passed", task.id);
                }
            }
        }
    }
}
