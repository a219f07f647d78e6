//! Self-generation judges every sample with the task's verifier, is reproducible and
//! independent of batching; preference pairs are distinct helpful × harmful combinations;
//! the accuracy interval is the Wilson interval.

mod common;

use common::{chat_tokenizer, tiny_model};
use skillzip_harness::eval::{Accuracy, Paired, accuracy_of, evaluate};
use skillzip_harness::selfgen::{Generated, Sample, answer_tasks, encode_prompt, preference_pairs};
use skillzip_lm::generate::Sampling;
use skillzip_lm::model::NoHook;
use skillzip_tasks::task::generate;
use skillzip_tasks::{Domain, Split, Verdict, verify};

fn sampling(seed: u64) -> Sampling {
    Sampling::Sample {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed,
    }
}

#[test]
fn samples_are_judged_reproducible_and_independent_of_batching() {
    let dir = tempfile::tempdir().unwrap();
    let tok = chat_tokenizer(dir.path());
    let model = tiny_model(31, 20.0);
    let tasks: Vec<_> = generate(Domain::Choice, 1, Split::Train, 3, 5)
        .into_iter()
        .chain(generate(Domain::Math, 1, Split::Train, 2, 5))
        .collect();
    let run = |per_batch, seed| {
        answer_tasks(
            &model,
            &tok,
            &tasks,
            3,
            sampling(seed),
            per_batch,
            None,
            &mut NoHook,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let a = run(2, 9);
    assert_eq!(a.len(), tasks.len());
    for (g, task) in a.iter().zip(&tasks) {
        assert_eq!(&g.task, task);
        assert_eq!(g.prompt, encode_prompt(&tok, &task.prompt).unwrap());
        assert_eq!(g.samples.len(), 3);
        for s in &g.samples {
            assert_eq!(s.verdict, verify(task, &s.text, None), "{}", s.text);
            assert!(!s.ids.is_empty() && s.ids.len() <= task.max_new_tokens() + 1);
            // Finished answers, and only they, end with the end-of-turn token.
            let eot = tok.stop_ids()[0];
            assert_eq!(s.finished, s.ids.last() == Some(&eot), "{:?}", s.ids);
        }
    }
    let texts = |g: &[Generated]| -> Vec<Vec<Vec<u32>>> {
        g.iter()
            .map(|g| g.samples.iter().map(|s| s.ids.clone()).collect())
            .collect()
    };
    assert_eq!(texts(&a), texts(&run(2, 9)), "same seed, same samples");
    assert_eq!(
        texts(&a),
        texts(&run(5, 9)),
        "batching does not change a row's seed"
    );
    assert_ne!(texts(&a), texts(&run(2, 10)));
    // Copies of a prompt are different samples.
    assert!(a.iter().any(|g| g.samples[0].ids != g.samples[1].ids));
    // The tiny model both stops and runs out of budget on these tasks, so both cases are seen.
    let finished: Vec<bool> = a
        .iter()
        .flat_map(|g| g.samples.iter().map(|s| s.finished))
        .collect();
    assert!(
        finished.contains(&true) && finished.contains(&false),
        "{finished:?}"
    );

    let (acc, greedy) =
        evaluate(&model, &tok, &tasks, 2, None, &mut NoHook, &mut |_, _| {}).unwrap();
    assert_eq!(acc, accuracy_of(&greedy));
    assert_eq!(acc.total, tasks.len());
    assert!(greedy.iter().all(|g| g.samples.len() == 1));
}

fn sample(text: &str, ids: Vec<u32>, helpful: bool) -> Sample {
    Sample {
        text: text.into(),
        ids,
        verdict: if helpful {
            Verdict::helpful("ok")
        } else {
            Verdict::harmful("no")
        },
        finished: true,
    }
}

#[test]
fn pairs_are_distinct_helpful_harmful_combinations() {
    let task = generate(Domain::Math, 1, Split::Train, 1, 1).remove(0);
    let mixed = Generated {
        task: task.clone(),
        prompt: vec![1, 2, 3],
        samples: vec![
            sample("good a", vec![10], true),
            sample("bad a", vec![20], false),
            sample("good b", vec![11], true),
            sample("bad a again", vec![20], false),
            sample("bad b", vec![21], false),
            sample("", vec![], false),
        ],
    };
    let only_good = Generated {
        task,
        prompt: vec![4],
        samples: vec![
            sample("good", vec![12], true),
            sample("good", vec![13], true),
        ],
    };
    let all = preference_pairs(&[mixed.clone(), only_good.clone()], 100);
    // 2 distinct helpful × 2 distinct non-empty harmful; nothing from the all-helpful prompt.
    assert_eq!(all.len(), 4);
    let mut combos: Vec<(u32, u32)> = all.iter().map(|p| (p.chosen[0], p.rejected[0])).collect();
    combos.sort();
    assert_eq!(combos, vec![(10, 20), (10, 21), (11, 20), (11, 21)]);
    assert!(all.iter().all(|p| p.prompt == vec![1, 2, 3]));
    // A cap takes every helpful answer once before reusing one.
    let two = preference_pairs(&[mixed], 2);
    assert_eq!(two.len(), 2);
    assert_ne!(two[0].chosen, two[1].chosen);
    assert!(preference_pairs(&[only_good], 5).is_empty());
}

#[test]
fn the_interval_is_wilson_s() {
    let cases = [
        (0, 10, 0.0, 0.277_5),
        (5, 10, 0.236_6, 0.763_4),
        (10, 10, 0.722_5, 1.0),
        (30, 100, 0.218_9, 0.395_9),
    ];
    for (correct, total, lo, hi) in cases {
        let (l, h) = Accuracy { correct, total }.wilson95();
        assert!(
            (l - lo).abs() < 5e-4 && (h - hi).abs() < 5e-4,
            "{correct}/{total}: {l} {h}"
        );
    }
    assert_eq!(
        Accuracy {
            correct: 0,
            total: 0
        }
        .wilson95(),
        (0.0, 1.0)
    );
    assert_eq!(
        Accuracy {
            correct: 3,
            total: 4
        }
        .to_string(),
        "75.0% [30.1, 95.4] (n=4)"
    );
}

#[test]
fn the_difference_interval_is_newcombe_s() {
    // Newcombe (1998), Statistics in Medicine 17, Table II, method 10.
    let cases = [
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
        ((6, 7), (2, 7), 0.0582, 0.8062),
        ((5, 56), (0, 29), -0.0381, 0.1926),
    ];
    for ((c1, n1), (c2, n2), lo, hi) in cases {
        let a = Accuracy {
            correct: c1,
            total: n1,
        };
        let b = Accuracy {
            correct: c2,
            total: n2,
        };
        let (l, h) = a.difference95(&b);
        assert!(
            (l - lo).abs() < 5e-4 && (h - hi).abs() < 5e-4,
            "{c1}/{n1} − {c2}/{n2}: {l} {h}"
        );
        // Swapping the samples mirrors the interval.
        let (l2, h2) = b.difference95(&a);
        assert!((l2 + h).abs() < 1e-12 && (h2 + l).abs() < 1e-12);
    }
}

#[test]
fn the_paired_difference_interval_is_newcombe_s() {
    // (both, first only, second only, neither) → interval of first − second. Worked examples of
    // Fagerland, Lydersen & Laake (2014/2017, the paired 2×2 table: airway hyper-responsiveness
    // before/after transplantation; complete response before/after consolidation), Newcombe's
    // own (1998, n = 36), a positively correlated table and perfect agreement; values from an
    // f64 transcription of Newcombe's method 10 with his continuity-corrected φ.
    let cases = [
        ((1, 1, 7, 12), -0.5069, -0.0256),
        ((59, 6, 16, 80), -0.1186, -0.0046),
        ((12, 2, 1, 21), -0.0786, 0.1332),
        ((10, 15, 5, 20), 0.0258, 0.3569),
        ((20, 0, 0, 28), -0.0412, 0.0412),
    ];
    for ((both, first_only, second_only, neither), lo, hi) in cases {
        let p = Paired {
            both,
            first_only,
            second_only,
            neither,
        };
        let (l, h) = p.difference95();
        assert!(
            (l - lo).abs() < 5e-4 && (h - hi).abs() < 5e-4,
            "{p:?}: {l} {h}"
        );
        // Swapping the configurations mirrors the interval.
        let swapped = Paired {
            first_only: second_only,
            second_only: first_only,
            ..p
        };
        let (l2, h2) = swapped.difference95();
        assert!((l2 + h).abs() < 1e-12 && (h2 + l).abs() < 1e-12);
        // Agreement (ad ≥ bc) can only narrow the independent-samples interval of the margins.
        let independent = p.first().difference95(&p.second());
        if both * neither >= first_only * second_only {
            assert!(l >= independent.0 - 1e-12 && h <= independent.1 + 1e-12);
        }
    }
    // Counting from verdict lists.
    let first = [true, true, false, false, true];
    let second = [true, false, true, false, false];
    let p = Paired::of(&first, &second).unwrap();
    assert_eq!(
        (p.both, p.first_only, p.second_only, p.neither),
        (1, 2, 1, 1)
    );
    assert_eq!(p.first().correct, 3);
    assert_eq!(p.second().correct, 2);
    assert!(Paired::of(&first, &second[..4]).is_none());
    // Uncorrelated-looking tables (ad − bc ≤ n/2) get no credit: exactly the independent form.
    let q = Paired {
        both: 5,
        first_only: 5,
        second_only: 5,
        neither: 5,
    };
    assert_eq!(q.difference95(), q.first().difference95(&q.second()));
}
