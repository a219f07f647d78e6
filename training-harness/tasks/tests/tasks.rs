//! Task generators: determinism, split disjointness, ids, references, answer balance.

use std::collections::{HashMap, HashSet};

use skillzip_tasks::sandbox::SandboxLimits;
use skillzip_tasks::task::{MATH_FORMAT, MAX_LEVEL};
use skillzip_tasks::{Check, Constraint, Domain, Sandbox, Split, Task, generate, verify};

/// How many tasks per split the disjointness test draws: code levels hold fewer problems.
fn disjointness_count(domain: Domain) -> usize {
    match domain {
        Domain::Code => 300,
        _ => 500,
    }
}

#[test]
fn domain_names_parse_display_and_serialise_alike() {
    let names: Vec<&str> = Domain::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names, ["math", "ifeval", "mc", "code"]);
    for domain in Domain::ALL {
        assert_eq!(Domain::parse(domain.name()), Some(domain));
        assert_eq!(domain.to_string(), domain.name());
        let json = serde_json::to_string(&domain).unwrap();
        assert_eq!(json, format!("\"{}\"", domain.name()));
        assert_eq!(serde_json::from_str::<Domain>(&json).unwrap(), domain);
    }
    assert_eq!(Domain::parse("Instructions"), Some(Domain::Instructions));
    assert_eq!(Domain::parse("choice"), Some(Domain::Choice));
    assert_eq!(Domain::parse("poetry"), None);
    assert_eq!(Split::HeldOut.to_string(), "heldout");
}

#[test]
fn generation_is_deterministic_per_seed() {
    for domain in Domain::ALL {
        for level in 1..=MAX_LEVEL {
            let a = generate(domain, level, Split::Train, 40, 11);
            let b = generate(domain, level, Split::Train, 40, 11);
            assert_eq!(a, b, "{domain} L{level}");
            let c = generate(domain, level, Split::Train, 40, 12);
            assert_ne!(a, c, "{domain} L{level}: another seed gave the same tasks");
        }
    }
}

#[test]
fn splits_are_disjoint_and_free_of_duplicates() {
    for domain in Domain::ALL {
        let count = disjointness_count(domain);
        for level in 1..=MAX_LEVEL {
            let train = generate(domain, level, Split::Train, count, 5);
            let held_out = generate(domain, level, Split::HeldOut, count, 5);
            // A held-out set drawn with another seed must not meet the train set either: the
            // partition depends on the problem, not on the seed.
            let other_seed = generate(domain, level, Split::HeldOut, count, 99);
            for (name, tasks) in [("train", &train), ("held-out", &held_out)] {
                assert_eq!(
                    tasks.len(),
                    count,
                    "{domain} L{level} {name}: too few tasks"
                );
                let prompts: HashSet<&str> = tasks.iter().map(|t| t.prompt.as_str()).collect();
                assert_eq!(
                    prompts.len(),
                    count,
                    "{domain} L{level} {name}: repeated prompt"
                );
            }
            let train_prompts: HashSet<&str> = train.iter().map(|t| t.prompt.as_str()).collect();
            for task in held_out.iter().chain(&other_seed) {
                assert!(
                    !train_prompts.contains(task.prompt.as_str()),
                    "{domain} L{level}: {:?} is in both splits",
                    task.prompt
                );
            }
        }
    }
}

#[test]
fn ids_are_unique_and_name_domain_level_split_and_index() {
    for domain in Domain::ALL {
        for level in 1..=MAX_LEVEL {
            for split in [Split::Train, Split::HeldOut] {
                let tasks = generate(domain, level, split, 30, 2);
                let ids: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
                assert_eq!(ids.len(), tasks.len());
                for (i, task) in tasks.iter().enumerate() {
                    assert_eq!(task.id, format!("{domain}-L{level}-{split}-{i:04}"));
                    assert_eq!(task.domain, domain);
                }
            }
        }
    }
    assert_eq!(
        generate(Domain::Math, 3, Split::Train, 1, 0)[0].id,
        "math-L3-train-0000"
    );
    assert_eq!(
        generate(Domain::Choice, 2, Split::HeldOut, 8, 0)[7].id,
        "mc-L2-heldout-0007"
    );
}

#[test]
fn out_of_range_levels_are_clamped() {
    assert_eq!(
        generate(Domain::Math, 0, Split::Train, 5, 3),
        generate(Domain::Math, 1, Split::Train, 5, 3)
    );
    assert_eq!(
        generate(Domain::Code, 200, Split::Train, 5, 3),
        generate(Domain::Code, MAX_LEVEL, Split::Train, 5, 3)
    );
    assert!(generate(Domain::Math, 1, Split::Train, 0, 3).is_empty());
}

#[test]
fn every_non_code_reference_response_verifies() {
    for domain in [Domain::Math, Domain::Instructions, Domain::Choice] {
        for level in 1..=MAX_LEVEL {
            for split in [Split::Train, Split::HeldOut] {
                for task in generate(domain, level, split, 200, 8) {
                    let reference = task
                        .reference_response()
                        .unwrap_or_else(|| panic!("{}: no reference", task.id));
                    let verdict = verify(&task, &reference, None);
                    assert!(
                        verdict.helpful,
                        "{}: reference {reference:?} judged harmful: {}",
                        task.id, verdict.reason
                    );
                }
            }
        }
    }
}

#[test]
fn every_code_task_has_a_reference_and_it_passes_in_the_sandbox() {
    let sandbox = match Sandbox::new(SandboxLimits::default()) {
        Ok(sandbox) => Some(sandbox),
        Err(e) => {
            println!("skipped: sandbox unavailable: {e}");
            None
        }
    };
    for level in 1..=MAX_LEVEL {
        for split in [Split::Train, Split::HeldOut] {
            let tasks = generate(Domain::Code, level, split, 150, 4);
            for (i, task) in tasks.iter().enumerate() {
                let reference = task
                    .reference_response()
                    .unwrap_or_else(|| panic!("{}: no reference", task.id));
                assert!(reference.starts_with("```python\ndef "), "{reference}");
                let Check::Code { function, tests } = &task.check else {
                    panic!("{}: not a code check", task.id);
                };
                assert!(reference.contains(&format!("def {function}(")));
                assert!(
                    (3..=5).contains(&tests.len()),
                    "{}: {} tests",
                    task.id,
                    tests.len()
                );
                assert!(tests.iter().all(|t| t.starts_with("assert ")));
                // Running every task would take minutes; every fifth covers every template.
                if let Some(sandbox) = &sandbox
                    && i % 5 == 0
                {
                    let verdict = verify(task, &reference, Some(sandbox));
                    assert!(verdict.helpful, "{}: {}", task.id, verdict.reason);
                }
            }
        }
    }
}

#[test]
fn user_code_tasks_have_no_reference() {
    let task = Task {
        id: "x".into(),
        domain: Domain::Code,
        prompt: "Write a Python function `f(x)` that returns x.".into(),
        check: Check::Code {
            function: "f".into(),
            tests: vec!["assert f(1) == 1".into()],
        },
    };
    assert_eq!(task.reference_response(), None);
}

#[test]
fn choice_answers_are_spread_evenly_over_positions() {
    for level in 1..=MAX_LEVEL {
        let mut by_options: HashMap<usize, Vec<usize>> = HashMap::new();
        for task in generate(Domain::Choice, level, Split::Train, 3000, 21) {
            let Check::Choice {
                answer, options, ..
            } = task.check
            else {
                panic!("{}: not a choice check", task.id);
            };
            let counts = by_options
                .entry(options)
                .or_insert_with(|| vec![0; options]);
            counts[(answer as u8 - b'A') as usize] += 1;
        }
        for (options, counts) in by_options {
            let total: usize = counts.iter().sum();
            if total < 200 {
                continue;
            }
            let expected = total as f64 / options as f64;
            for (position, &count) in counts.iter().enumerate() {
                // Binomial spread is about sqrt(expected); 5 standard deviations never trip
                // by chance, while a fixed position would.
                let allowed = 5.0 * expected.sqrt();
                assert!(
                    (count as f64 - expected).abs() <= allowed,
                    "mc L{level}, {options} options: position {position} has {count} of {total}"
                );
            }
        }
    }
}

#[test]
fn levels_raise_the_number_of_constraints_and_options() {
    let constraint_counts = |level| -> HashSet<usize> {
        generate(Domain::Instructions, level, Split::Train, 100, 1)
            .iter()
            .map(|t| match &t.check {
                Check::Constraints { constraints } => constraints.len(),
                other => panic!("not constraints: {other:?}"),
            })
            .collect()
    };
    assert_eq!(constraint_counts(1), HashSet::from([1]));
    assert_eq!(constraint_counts(2), HashSet::from([1]));
    assert_eq!(constraint_counts(3), HashSet::from([2]));
    assert_eq!(constraint_counts(4), HashSet::from([3]));

    let option_counts = |level| -> HashSet<usize> {
        generate(Domain::Choice, level, Split::Train, 200, 1)
            .iter()
            .map(|t| match t.check {
                Check::Choice { options, .. } => options,
                ref other => panic!("not choice: {other:?}"),
            })
            .collect()
    };
    assert_eq!(option_counts(1), HashSet::from([2]));
    assert_eq!(option_counts(2), HashSet::from([3]));
    assert_eq!(option_counts(3), HashSet::from([3, 4]));
    assert_eq!(option_counts(4), HashSet::from([4]));
}

#[test]
fn prompts_are_short_and_state_the_answer_format() {
    for domain in Domain::ALL {
        for level in 1..=MAX_LEVEL {
            for task in generate(domain, level, Split::Train, 100, 6) {
                let words = task.prompt.split_whitespace().count();
                // About 80 tokens: English runs at ~1.3 tokens a word.
                assert!(words <= 65, "{}: {words} words: {}", task.id, task.prompt);
                let format_stated = match domain {
                    Domain::Math => task
                        .prompt
                        .contains("\"The answer is\" followed by the result"),
                    Domain::Choice => task.prompt.contains("\"Answer:\""),
                    Domain::Code => task.prompt.contains("```python"),
                    Domain::Instructions => task.prompt.starts_with("Write "),
                };
                assert!(format_stated, "{}: {}", task.id, task.prompt);
            }
        }
    }
}

#[test]
fn instruction_prompts_state_every_constraint_they_check() {
    for level in 1..=MAX_LEVEL {
        for task in generate(Domain::Instructions, level, Split::HeldOut, 100, 9) {
            let Check::Constraints { constraints } = &task.check else {
                panic!("{}: not constraints", task.id);
            };
            for constraint in constraints {
                assert!(
                    task.prompt.contains(&constraint.instruction()),
                    "{}: {:?} not stated in {:?}",
                    task.id,
                    constraint,
                    task.prompt
                );
            }
        }
    }
}

#[test]
fn math_answers_are_positive_integers() {
    for level in 1..=MAX_LEVEL {
        for task in generate(Domain::Math, level, Split::Train, 300, 13) {
            let Check::Number { answer } = task.check else {
                panic!("{}: not a number check", task.id);
            };
            assert!(answer >= 1, "{}: answer {answer}", task.id);
        }
    }
}

#[test]
fn generation_budgets_suit_the_domain_and_constraints() {
    let math = &generate(Domain::Math, 1, Split::Train, 1, 0)[0];
    let choice = &generate(Domain::Choice, 1, Split::Train, 1, 0)[0];
    let code = &generate(Domain::Code, 1, Split::Train, 1, 0)[0];
    assert!(choice.max_new_tokens() <= 32);
    assert!((48..=128).contains(&math.max_new_tokens()));
    assert!(code.max_new_tokens() >= math.max_new_tokens());
    let long = Task {
        id: "long".into(),
        domain: Domain::Instructions,
        prompt: "Write about rain. Answer with at least 200 words.".into(),
        check: Check::Constraints {
            constraints: vec![Constraint::WordsAtLeast { count: 200 }],
        },
    };
    assert!(long.max_new_tokens() >= 400);
}

#[test]
fn tasks_round_trip_through_json_with_tagged_checks() {
    for domain in Domain::ALL {
        for task in generate(domain, MAX_LEVEL, Split::Train, 20, 3) {
            let json = serde_json::to_string(&task).unwrap();
            let back: Task = serde_json::from_str(&json).unwrap();
            assert_eq!(back, task);
        }
    }
    let number = serde_json::to_value(Check::Number { answer: 7 }).unwrap();
    assert_eq!(number, serde_json::json!({"type": "number", "answer": 7}));
    let constraints = serde_json::to_value(Check::Constraints {
        constraints: vec![
            Constraint::NoCommas,
            Constraint::KeywordAtLeast {
                word: "rain".into(),
                times: 2,
            },
        ],
    })
    .unwrap();
    assert_eq!(
        constraints,
        serde_json::json!({"type": "constraints", "constraints": [
            {"type": "no_commas"},
            {"type": "keyword_at_least", "word": "rain", "times": 2}
        ]})
    );
    let typo = r#"{"type": "number", "answer": 7, "answr": 8}"#;
    assert!(serde_json::from_str::<Check>(typo).is_err());
}

#[test]
fn malformed_checks_are_reported() {
    let bad = [
        Check::Choice {
            answer: 'E',
            options: 4,
            texts: vec![],
        },
        Check::Choice {
            answer: 'A',
            options: 1,
            texts: vec![],
        },
        Check::Choice {
            answer: 'a',
            options: 4,
            texts: vec![],
        },
        Check::Choice {
            answer: 'A',
            options: 3,
            texts: vec!["one".into(), "two".into()],
        },
        Check::Code {
            function: "not a name".into(),
            tests: vec!["assert True".into()],
        },
        Check::Code {
            function: "f".into(),
            tests: vec![],
        },
        Check::Constraints {
            constraints: vec![],
        },
        Check::Constraints {
            constraints: vec![Constraint::WordsAtMost { count: 0 }],
        },
        Check::Exact {
            answer: "  ".into(),
        },
    ];
    for check in bad {
        assert!(check.validate().is_err(), "{check:?} passed validation");
    }
    assert!(
        Check::Choice {
            answer: 'D',
            options: 4,
            texts: vec![],
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn math_level_one_is_one_small_addition_or_subtraction() {
    for split in [Split::Train, Split::HeldOut] {
        for task in generate(Domain::Math, 1, split, 300, 31) {
            let Check::Number { answer } = task.check else {
                panic!("{}: not a number check", task.id);
            };
            let question = task
                .prompt
                .strip_suffix(MATH_FORMAT)
                .expect("every math prompt ends with the format");
            let numbers: Vec<i64> = question
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse().unwrap())
                .collect();
            let [x, y] = numbers[..] else {
                panic!("{}: not two numbers: {question}", task.id);
            };
            assert!((2..=9).contains(&x) && (2..=9).contains(&y), "{}", task.id);
            assert!(
                answer == x + y || (answer == x - y && answer >= 1),
                "{}: {answer} from {x} and {y}",
                task.id
            );
            assert!(question.split_whitespace().count() <= 25, "{question}");
        }
    }
}

#[test]
fn math_level_one_holds_enough_problems_per_split() {
    for split in [Split::Train, Split::HeldOut] {
        let all = generate(Domain::Math, 1, split, 5000, 1);
        // 12 adding templates × 64 pairs + 12 subtracting templates × 28 pairs = 1104 problems.
        assert!(
            (500..=604).contains(&all.len()),
            "{split}: {} problems",
            all.len()
        );
        println!("math L1 {split}: {} problems", all.len());
        // The split's problems are fixed by their keys, so another seed exhausts as many.
        assert_eq!(generate(Domain::Math, 1, split, 5000, 2).len(), all.len());
    }
}
