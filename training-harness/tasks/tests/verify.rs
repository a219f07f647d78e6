//! Verifiers: answer extraction, constraint checks, perturbed responses, code in the sandbox.

use skillzip_tasks::sandbox::SandboxLimits;
use skillzip_tasks::task::MAX_LEVEL;
use skillzip_tasks::verify::{
    count_paragraphs, count_sentences, count_words, extract_choice, extract_code, extract_flexible,
    extract_strict,
};
use skillzip_tasks::{
    Check, Constraint, Domain, MathExtraction, Sandbox, Split, Task, VerifyOptions, generate,
    verify, verify_with,
};

fn task(domain: Domain, check: Check) -> Task {
    Task {
        id: "test".into(),
        domain,
        prompt: "a prompt".into(),
        check,
    }
}

fn number_task(answer: i64) -> Task {
    task(Domain::Math, Check::Number { answer })
}

fn sandbox() -> Option<Sandbox> {
    match Sandbox::new(SandboxLimits::default()) {
        Ok(sandbox) => Some(sandbox),
        Err(e) => {
            println!("skipped: sandbox unavailable: {e}");
            None
        }
    }
}

const STRICT: VerifyOptions = VerifyOptions {
    math: MathExtraction::Strict,
};
const FLEXIBLE: VerifyOptions = VerifyOptions {
    math: MathExtraction::Flexible,
};

#[test]
fn strict_and_flexible_extraction_tables() {
    // (response, strict, flexible)
    let table: &[(&str, Option<&str>, Option<&str>)] = &[
        ("The answer is 42.", Some("42"), Some("42")),
        ("The answer is 1,234.", Some("1234"), Some("1234")),
        ("the answer is $5", Some("5"), Some("5")),
        ("The answer is -7.", Some("-7"), Some("-7")),
        ("So the answer is: **12**", Some("12"), Some("12")),
        ("The answer is $1,234.56", Some("1234.56"), Some("1234.56")),
        ("#### 72", Some("72"), Some("72")),
        ("3 + 4 = 7\n#### 7", Some("7"), Some("7")),
        ("5 + 3 = 8. The answer is 8.", Some("8"), Some("8")),
        (
            "The answer is 5. No, the answer is 6.",
            Some("5"),
            Some("6"),
        ),
        ("The answer is twelve, so 12 apples.", None, Some("12")),
        ("The answer is N.", None, None),
        ("I think 5 + 3 = 8.", None, Some("8")),
        ("It costs $5", None, Some("5")),
        ("The temperature fell to -3 degrees.", None, Some("-3")),
        ("Pages 5-3 of the book", None, Some("3")),
        ("I have 12 apples and 3 pears.", None, Some("3")),
        ("Total: 2,500.00", None, Some("2500.00")),
        ("x = -4.", None, Some("-4")),
        ("No numbers here.", None, None),
        ("", None, None),
    ];
    for &(response, strict, flexible) in table {
        assert_eq!(
            extract_strict(response).as_deref(),
            strict,
            "strict on {response:?}"
        );
        assert_eq!(
            extract_flexible(response).as_deref(),
            flexible,
            "flexible on {response:?}"
        );
    }
}

#[test]
fn math_verdicts_compare_numbers_and_explain() {
    let t = number_task(1234);
    let v = verify(&t, "Adding them gives 1,234. The answer is 1,234.", None);
    assert!(v.helpful);
    assert_eq!(v.reason, "answer 1234 matches");
    assert!(verify(&t, "The answer is $1234.00.", None).helpful);

    let v = verify(&number_task(12), "5 + 8 = 13. The answer is 13.", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "expected 12, found 13");

    // Strict needs the closing sentence; flexible takes the last number.
    let bare = "5 + 3 = 8";
    assert!(verify_with(&number_task(8), bare, None, &FLEXIBLE).helpful);
    let v = verify_with(&number_task(8), bare, None, &STRICT);
    assert!(!v.helpful);
    assert_eq!(v.reason, "no \"The answer is N\" found");
    // Verify's default takes the last number when no answer is stated …
    assert!(verify(&number_task(8), bare, None).helpful);
    // … and the stated answer when there is one, whatever numbers follow it.
    let rambling = "8 + 6 = 14.\nThe answer is 14.\n\nThat is the result of the 4th step.";
    assert!(verify(&number_task(14), rambling, None).helpful);
    assert!(!verify(&number_task(4), rambling, None).helpful);
    assert!(verify_with(&number_task(4), rambling, None, &FLEXIBLE).helpful);
    let v = verify(&number_task(5), "The answer is 6. Or 5.", None);
    assert_eq!(
        (v.helpful, v.reason.as_str()),
        (false, "expected 5, found 6")
    );

    let v = verify(&number_task(8), "I am not sure.", None);
    assert_eq!((v.helpful, v.reason.as_str()), (false, "no number found"));
    assert!(verify(&number_task(-5), "It drops by 5, so -5.", None).helpful);
    assert!(!verify(&number_task(5), "The answer is 5.5.", None).helpful);
}

#[test]
fn word_sentence_and_paragraph_counts() {
    assert_eq!(count_words("Hello, world! *** 42 -"), 3);
    assert_eq!(count_words(""), 0);
    assert_eq!(count_sentences("Hi there. How are you? Fine!"), 3);
    assert_eq!(count_sentences("Pi is 3.14 today. Really"), 2);
    assert_eq!(count_sentences("Wait... what?! Yes"), 3);
    assert_eq!(count_sentences("..."), 0);
    assert_eq!(count_paragraphs("a\n\nb\n \n\nc"), Ok(3));
    assert_eq!(count_paragraphs("one line\nsame paragraph"), Ok(1));
    assert_eq!(count_paragraphs("a *** b"), Ok(2));
    assert_eq!(count_paragraphs("*** a *** b ***"), Ok(2));
    assert!(count_paragraphs("a *** *** b").is_err());
    assert_eq!(count_paragraphs(""), Ok(0));
}

#[test]
fn each_constraint_on_examples() {
    let word = |w: &str| w.to_string();
    // (constraint, responses that meet it, responses that don't)
    let table: Vec<(Constraint, Vec<&str>, Vec<&str>)> = vec![
        (
            Constraint::Lowercase,
            vec!["all small here.", "123 abc"],
            vec!["Not all small.", "123", ""],
        ),
        (
            Constraint::Uppercase,
            vec!["ALL BIG HERE.", "HELLO 42"],
            vec!["ALMOST ALL BIg", "42", ""],
        ),
        (
            Constraint::NoCommas,
            vec!["No commas at all.", ""],
            vec!["One, two", "a,b,c"],
        ),
        (
            Constraint::WordsAtLeast { count: 3 },
            vec!["one two three", "a b c d"],
            vec!["one two", "one - two ***"],
        ),
        (
            Constraint::WordsAtMost { count: 3 },
            vec!["one two three", "", "a - b ***"],
            vec!["one two three four"],
        ),
        (
            Constraint::SentencesAtLeast { count: 2 },
            vec!["One. Two.", "One! Two? Three"],
            vec!["Just one.", "3.5 is a number."],
        ),
        (
            Constraint::SentencesAtMost { count: 1 },
            vec!["Just one.", "It costs 3.50 today"],
            vec!["One. Two."],
        ),
        (
            Constraint::Paragraphs { count: 2 },
            vec!["First.\n\nSecond.", "First. *** Second.", "A\nB\n\nC"],
            vec!["Only one.", "A\n\nB\n\nC", "A *** *** B"],
        ),
        (
            Constraint::KeywordAtLeast {
                word: word("rain"),
                times: 2,
            },
            vec!["Rain, rain, go away.", "rain and RAIN"],
            vec!["rain once", "rainy raincoat rains"],
        ),
        (
            Constraint::KeywordAtLeast {
                word: word("ice cream"),
                times: 1,
            },
            vec!["I like Ice  Cream."],
            vec!["ice and cream"],
        ),
        (
            Constraint::ForbiddenWord { word: word("very") },
            vec!["It was everything.", "Every day."],
            vec!["Very nice.", "It is very, very good."],
        ),
        (
            Constraint::StartsWith {
                text: word("Dear friend"),
            },
            vec!["Dear friend, hello.", "  dear FRIEND"],
            vec!["Hello dear friend.", ""],
        ),
        (
            Constraint::EndsWith {
                text: word("See you soon."),
            },
            vec!["Bye. See you soon.", "see you soon.  \n"],
            vec!["See you soon. Bye.", "See you soon"],
        ),
        (
            Constraint::Json,
            vec![
                "{\"a\": 1}",
                "```json\n{\"a\": [1, 2]}\n```",
                "```JSON\n[]\n```",
                "  42  ",
            ],
            vec![
                "{a: 1}",
                "Here it is: {\"a\": 1}",
                "```json\n{\"a\": }\n```",
                "",
            ],
        ),
        (
            Constraint::QuotedWhole,
            vec!["\"Hello there.\"", "  \"x\"  "],
            vec!["Hello \"there\"", "\"", "'single'"],
        ),
        (
            Constraint::Title,
            vec!["<<My Day>>\nIt was fine.", "Text <<A title>> text"],
            vec!["<<>>", "<< >>", "<<split\nline>>", "No title"],
        ),
        (
            Constraint::BulletPoints { count: 2 },
            vec!["* one\n* two", "Intro\n- one\n  * two\nOutro"],
            vec!["* one", "* one\n* two\n* three", "** bold\n***\n* one"],
        ),
        (
            Constraint::Postscript,
            vec!["Bye.\nP.S. Call me.", "bye. p. s. later"],
            vec!["Bye.", "PS call me"],
        ),
    ];
    for (constraint, good, bad) in table {
        for response in good {
            assert_eq!(
                constraint.check(response),
                Ok(()),
                "{constraint:?} should accept {response:?}"
            );
        }
        for response in bad {
            assert!(
                constraint.check(response).is_err(),
                "{constraint:?} should reject {response:?}"
            );
        }
    }
}

#[test]
fn constraint_verdicts_name_the_violated_constraint() {
    let t = task(
        Domain::Instructions,
        Check::Constraints {
            constraints: vec![Constraint::NoCommas, Constraint::WordsAtMost { count: 4 }],
        },
    );
    let v = verify(&t, "Yes, it is fine.", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "constraint no_commas violated: found 1 comma");
    let v = verify(&t, "One, two, three, four, five", None);
    assert_eq!(
        v.reason,
        "constraint no_commas violated: found 4 commas; constraint words_at_most violated: found 5 words, allowed at most 4"
    );
    let v = verify(&t, "All fine here.", None);
    assert!(v.helpful);
    assert_eq!(v.reason, "all 2 constraints met");
}

/// A response that breaks `constraint` whatever else it does.
fn violation_of(constraint: &Constraint, reference: &str) -> String {
    match constraint {
        Constraint::Lowercase => format!("{reference} Extra."),
        Constraint::Uppercase => format!("{reference} extra."),
        Constraint::NoCommas => format!("{reference} Yes, indeed."),
        Constraint::WordsAtLeast { .. } => "Short.".into(),
        Constraint::WordsAtMost { count } => "word ".repeat(count + 1),
        Constraint::SentencesAtLeast { .. } => "Only one sentence here".into(),
        Constraint::SentencesAtMost { count } => "Yes. ".repeat(count + 1),
        Constraint::Paragraphs { .. } => reference.replace("\n\n", " "),
        Constraint::KeywordAtLeast { .. } => "Nothing relevant here.".into(),
        Constraint::ForbiddenWord { word } => format!("{reference} {word}"),
        Constraint::StartsWith { .. } => format!("Well. {reference}"),
        Constraint::EndsWith { .. } => format!("{reference} Bye."),
        Constraint::Json => format!("{{ {reference}"),
        Constraint::QuotedWhole => reference.trim_matches('"').to_string(),
        Constraint::Title => reference.replace("<<", "").replace(">>", ""),
        Constraint::BulletPoints { .. } => format!("{reference}\n* one more"),
        Constraint::Postscript => "No postscript at all.".into(),
    }
}

#[test]
fn perturbed_references_are_judged_harmful_with_a_reason() {
    for level in 1..=MAX_LEVEL {
        for t in generate(Domain::Math, level, Split::Train, 50, 3) {
            let Check::Number { answer } = t.check else {
                unreachable!()
            };
            let v = verify(&t, &format!("The answer is {}.", answer + 1), None);
            assert!(!v.helpful);
            assert_eq!(v.reason, format!("expected {answer}, found {}", answer + 1));
        }
        for t in generate(Domain::Choice, level, Split::Train, 50, 3) {
            let Check::Choice {
                answer, options, ..
            } = t.check
            else {
                unreachable!()
            };
            let wrong = char::from(b'A' + ((answer as u8 - b'A' + 1) % options as u8));
            let v = verify(&t, &format!("Answer: {wrong}"), None);
            assert!(!v.helpful);
            assert_eq!(v.reason, format!("expected {answer}, found {wrong}"));
        }
        for t in generate(Domain::Instructions, level, Split::Train, 50, 3) {
            let Check::Constraints { constraints } = &t.check else {
                unreachable!()
            };
            let reference = t.reference_response().unwrap();
            for constraint in constraints {
                let response = violation_of(constraint, &reference);
                let v = verify(&t, &response, None);
                assert!(!v.helpful, "{}: {response:?} passed", t.id);
                let expected = format!("constraint {} violated", constraint.name());
                assert!(v.reason.contains(&expected), "{}: {}", t.id, v.reason);
            }
        }
    }
}

#[test]
fn choice_extraction_table() {
    let good: &[(&str, char)] = &[
        ("Answer: B", 'B'),
        ("answer: b", 'B'),
        ("**Answer: A**", 'A'),
        ("The answer is C.", 'C'),
        ("The answer is (A).", 'A'),
        ("I pick (D) because it is largest.", 'D'),
        ("B) banana", 'B'),
        ("Answer: B) banana", 'B'),
        ("A. apple", 'A'),
        ("B", 'B'),
        ("c.", 'C'),
        ("I think the answer is B.", 'B'),
    ];
    for &(response, letter) in good {
        assert_eq!(extract_choice(response), Ok(letter), "{response:?}");
    }
    let bad: &[(&str, &str)] = &[
        (
            "A) apple\nB) chair\nAnswer: A",
            "several options named: A, B",
        ),
        ("Answer: B, or maybe (C)", "several options named: B, C"),
        ("I don't know.", "no option letter found"),
        ("The answer is a banana.", "no option letter found"),
        ("", "no option letter found"),
    ];
    for &(response, reason) in bad {
        assert_eq!(
            extract_choice(response),
            Err(reason.to_string()),
            "{response:?}"
        );
    }
}

#[test]
fn choice_verdicts() {
    let t = task(
        Domain::Choice,
        Check::Choice {
            answer: 'B',
            options: 3,
            texts: vec![],
        },
    );
    let v = verify(&t, "Answer: B", None);
    assert!(v.helpful);
    assert_eq!(v.reason, "answer B matches");
    let v = verify(&t, "Answer: D", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "named option D, but there are only 3 options");
    let v = verify(&t, "A) x\nB) y", None);
    assert_eq!(v.reason, "several options named: A, B");
}

#[test]
fn code_extraction_table() {
    let table: &[(&str, Option<&str>)] = &[
        (
            "```python\ndef f():\n    return 1\n```",
            Some("def f():\n    return 1"),
        ),
        (
            "Here:\n```py\ndef f(): pass\n```\nand ```python\ndef g(): pass\n```",
            Some("def f(): pass"),
        ),
        ("```\ndef f(): pass\n```", Some("def f(): pass")),
        (
            "```text\nhello\n```\n```python\ndef g(): pass\n```",
            Some("def g(): pass"),
        ),
        ("def f(x):\n    return x\n", Some("def f(x):\n    return x")),
        (
            "import math\ndef f(): pass",
            Some("import math\ndef f(): pass"),
        ),
        (
            "```python\ndef f(x):\n    return x",
            Some("def f(x):\n    return x"),
        ),
        ("Sure! The function is f.", None),
        ("```python\n```", None),
        ("", None),
    ];
    for &(response, expected) in table {
        assert_eq!(extract_code(response).as_deref(), expected, "{response:?}");
    }
}

fn code_task() -> Task {
    task(
        Domain::Code,
        Check::Code {
            function: "double".into(),
            tests: vec![
                "assert double(2) == 4".into(),
                "assert double(0) == 0".into(),
                "assert double(-3) == -6".into(),
            ],
        },
    )
}

#[test]
fn code_without_a_sandbox_or_without_code_is_harmful() {
    let t = code_task();
    let right = "```python\ndef double(x):\n    return 2 * x\n```";
    let v = verify(&t, right, None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "no sandbox available: code not run");
    let v = verify(&t, "Just multiply by two.", None);
    assert_eq!((v.helpful, v.reason.as_str()), (false, "no code found"));
}

#[test]
fn code_runs_in_the_sandbox() {
    let Some(sandbox) = sandbox() else {
        return;
    };
    let t = code_task();
    let v = verify(
        &t,
        "```python\ndef double(x):\n    return 2 * x\n```",
        Some(&sandbox),
    );
    assert!(v.helpful, "{}", v.reason);
    assert_eq!(v.reason, "all 3 tests passed");

    let v = verify(
        &t,
        "```python\ndef double(x):\n    return x + 2\n```",
        Some(&sandbox),
    );
    assert!(!v.helpful);
    assert!(
        v.reason.starts_with("tests failed: AssertionError"),
        "{}",
        v.reason
    );
    assert!(v.reason.contains("double(0) == 0"), "{}", v.reason);

    let v = verify(
        &t,
        "```python\ndef double(x)\n    return 2 * x\n```",
        Some(&sandbox),
    );
    assert!(!v.helpful);
    assert!(v.reason.contains("SyntaxError"), "{}", v.reason);

    let v = verify(
        &t,
        "```python\ndef twice(x):\n    return 2 * x\n```",
        Some(&sandbox),
    );
    assert!(v.reason.contains("NameError"), "{}", v.reason);

    let v = verify(&t, "```python\nwhile True:\n    pass\n```", Some(&sandbox));
    assert!(!v.helpful);
    assert!(v.reason.starts_with("tests failed:"), "{}", v.reason);

    // A generated task's reference passes and a broken variant of it fails.
    for level in 1..=MAX_LEVEL {
        for t in generate(Domain::Code, level, Split::HeldOut, 5, 1) {
            let reference = t.reference_response().unwrap();
            assert!(verify(&t, &reference, Some(&sandbox)).helpful, "{}", t.id);
            let Check::Code { function, .. } = &t.check else {
                unreachable!()
            };
            let broken = format!("```python\ndef {function}(*args):\n    return None\n```");
            let v = verify(&t, &broken, Some(&sandbox));
            assert!(!v.helpful, "{}", t.id);
            assert!(
                v.reason.starts_with("tests failed"),
                "{}: {}",
                t.id,
                v.reason
            );
        }
    }
}

#[test]
fn exact_answers_ignore_case_quotes_and_final_period() {
    let t = task(
        Domain::Choice,
        Check::Exact {
            answer: "Paris".into(),
        },
    );
    for response in [
        "Paris",
        "paris.",
        "\"Paris\"",
        "The answer is Paris.",
        "Answer: PARIS",
        "Let me think.\nParis",
    ] {
        let v = verify(&t, response, None);
        assert!(v.helpful, "{response:?}: {}", v.reason);
    }
    let v = verify(&t, "London", None);
    assert!(!v.helpful);
    assert_eq!(v.reason, "expected \"Paris\", found \"London\"");
    assert!(!verify(&t, "Paris or London", None).helpful);
}

#[test]
fn odd_inputs_do_not_panic() {
    let long = "9".repeat(10_000);
    let inputs = [
        "",
        "\u{0}",
        "ünïcödé ANSWER: ß",
        "The answer is",
        "####",
        "$",
        "-",
        "```",
        "``````",
        "```python",
        "(",
        ")",
        "<<",
        ">>",
        "***",
        long.as_str(),
    ];
    for domain in Domain::ALL {
        for t in generate(domain, 1, Split::Train, 2, 0) {
            for input in inputs {
                let _ = verify(&t, input, None);
            }
        }
    }
    let _ = extract_flexible(&long);
}
