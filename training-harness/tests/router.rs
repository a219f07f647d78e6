//! The learned router: its gradient against finite differences, separable clusters, JSON
//! round trip and rejection of damaged files, features from a tiny model, typed errors.

mod common;

use common::{chat_tokenizer, tiny_model};
use rand::RngExt;
use rand_distr::StandardNormal;
use skillzip_core::seeded_rng;
use skillzip_harness::Error;
use skillzip_harness::router::{
    Router, RouterConfig, loss_and_gradient, prompt_features, routing_accuracy,
};

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("skill{i}")).collect()
}

fn gaussian(rng: &mut skillzip_core::SeededRng) -> f64 {
    rng.sample(StandardNormal)
}

/// `per_class` points per class around `k` well separated centres in `d` dimensions.
fn clusters(
    k: usize,
    d: usize,
    per_class: usize,
    seed: u64,
    centres_seed: u64,
) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut c_rng = seeded_rng(centres_seed);
    let centres: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..d).map(|_| 10.0 * gaussian(&mut c_rng)).collect())
        .collect();
    let mut rng = seeded_rng(seed);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..per_class {
        for (c, centre) in centres.iter().enumerate() {
            // A large constant offset and scale on some features: standardisation must cope.
            features.push(
                centre
                    .iter()
                    .enumerate()
                    .map(|(j, m)| ((m + 0.5 * gaussian(&mut rng)) * (1 + j) as f64 + 1e3) as f32)
                    .collect(),
            );
            labels.push(c);
        }
    }
    (features, labels)
}

#[test]
fn gradient_matches_central_differences() {
    let (n, d, k, l2) = (7, 5, 3, 0.1);
    let mut rng = seeded_rng(11);
    let z: Vec<f64> = (0..n * d).map(|_| gaussian(&mut rng)).collect();
    let labels: Vec<usize> = (0..n).map(|i| (i * 2 + 1) % k).collect();
    let w: Vec<f64> = (0..k * d).map(|_| 0.7 * gaussian(&mut rng)).collect();
    let b: Vec<f64> = (0..k).map(|_| 0.7 * gaussian(&mut rng)).collect();
    let (loss, gw, gb) = loss_and_gradient(&z, d, &labels, &w, &b, l2).unwrap();

    // The loss itself, computed naively.
    let mut naive = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        let logits: Vec<f64> = (0..k)
            .map(|c| b[c] + (0..d).map(|j| w[c * d + j] * z[i * d + j]).sum::<f64>())
            .collect();
        let sum_exp: f64 = logits.iter().map(|l| l.exp()).sum();
        naive += sum_exp.ln() - logits[y];
    }
    naive = naive / n as f64 + 0.5 * l2 * w.iter().map(|x| x * x).sum::<f64>();
    assert!((loss - naive).abs() < 1e-12, "{loss} vs {naive}");

    let h = 1e-6;
    let f = |w: &[f64], b: &[f64]| loss_and_gradient(&z, d, &labels, w, b, l2).unwrap().0;
    for i in 0..k * d {
        let (mut plus, mut minus) = (w.clone(), w.clone());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (f(&plus, &b) - f(&minus, &b)) / (2.0 * h);
        assert!(
            (numeric - gw[i]).abs() < 1e-7 * (1.0 + numeric.abs()),
            "dW[{i}]: analytic {} numeric {numeric}",
            gw[i]
        );
    }
    for i in 0..k {
        let (mut plus, mut minus) = (b.clone(), b.clone());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (f(&w, &plus) - f(&w, &minus)) / (2.0 * h);
        assert!(
            (numeric - gb[i]).abs() < 1e-7 * (1.0 + numeric.abs()),
            "db[{i}]: analytic {} numeric {numeric}",
            gb[i]
        );
    }

    // Bad shapes are typed errors, not panics.
    assert!(matches!(
        loss_and_gradient(&z[1..], d, &labels, &w, &b, l2),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        loss_and_gradient(&z, d, &[0, 1, 2, 3, 0, 0, 0], &w, &b, l2),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn separable_clusters_are_routed_perfectly() {
    let (k, d) = (3, 8);
    let (train_x, train_y) = clusters(k, d, 30, 1, 7);
    let (held_x, held_y) = clusters(k, d, 30, 2, 7);
    let cfg = RouterConfig::default();
    let router = Router::train(&train_x, &train_y, names(k), &cfg).unwrap();
    assert_eq!(router.skills(), names(k).as_slice());
    assert_eq!(router.dim(), d);

    let (train_acc, confusion) = routing_accuracy(&router, &train_x, &train_y).unwrap();
    assert_eq!(train_acc, 1.0);
    assert_eq!(confusion.len(), k);
    for (i, row) in confusion.iter().enumerate() {
        assert_eq!(row.len(), k);
        for (j, &c) in row.iter().enumerate() {
            assert_eq!(c, if i == j { 30 } else { 0 }, "confusion {confusion:?}");
        }
    }
    let (held_acc, _) = routing_accuracy(&router, &held_x, &held_y).unwrap();
    assert_eq!(held_acc, 1.0);

    // Training lowered the cross-entropy well below the uniform router's ln 3.
    let ce: f64 = train_x
        .iter()
        .zip(&train_y)
        .map(|(x, &y)| -router.probabilities(x).unwrap()[y].ln())
        .sum::<f64>()
        / train_x.len() as f64;
    assert!(ce < 0.1, "training cross-entropy {ce}");

    // Deterministic: the same inputs give the same router, bit for bit; the seed is unused.
    let again = Router::train(
        &train_x,
        &train_y,
        names(k),
        &RouterConfig { seed: 99, ..cfg },
    )
    .unwrap();
    assert_eq!(again, router);

    // Probabilities are finite and sum to 1, even far outside the training range.
    let mut mixed = vec![1e30f32; d];
    for v in mixed.iter_mut().step_by(2) {
        *v = -1e30;
    }
    for x in [
        vec![1e30f32; d],
        vec![-1e30f32; d],
        mixed,
        vec![f32::MAX; d],
        vec![0.0; d],
        held_x[0].clone(),
    ] {
        let p = router.probabilities(&x).unwrap();
        assert_eq!(p.len(), k);
        assert!(p.iter().all(|v| v.is_finite() && *v >= 0.0), "{p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
        let r = router.route(&x).unwrap();
        assert!(p.iter().all(|&q| q <= p[r]));
    }

    // Wrong widths and non-finite features are typed errors.
    for x in [vec![0.0; d - 1], vec![0.0; d + 1], vec![]] {
        assert!(matches!(
            router.probabilities(&x),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(router.route(&x), Err(Error::InvalidInput(_))));
    }
    let mut nan = held_x[0].clone();
    nan[3] = f32::NAN;
    assert!(matches!(
        router.probabilities(&nan),
        Err(Error::InvalidInput(_))
    ));
    // routing_accuracy's own errors.
    assert!(matches!(
        routing_accuracy(&router, &[], &[]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        routing_accuracy(&router, &held_x, &held_y[1..]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        routing_accuracy(&router, &held_x[..1], &[3]),
        Err(Error::InvalidInput(_))
    ));
}

fn small_router() -> Router {
    let (x, y) = clusters(3, 4, 5, 3, 4);
    Router::train(&x, &y, names(3), &RouterConfig::default()).unwrap()
}

/// The router's JSON with `edit` applied to its value.
fn edited(router: &Router, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&router.to_json_bytes().unwrap()).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn json_round_trip_and_rejections() {
    let router = small_router();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.json");
    router.save(&path).unwrap();
    let loaded = Router::load(&path).unwrap();
    assert_eq!(loaded, router);
    let (x, _) = clusters(3, 4, 5, 9, 4);
    for f in &x {
        assert_eq!(
            loaded.probabilities(f).unwrap(),
            router.probabilities(f).unwrap()
        );
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(Router::from_json_bytes(&bytes).unwrap(), router);
    // Deserialising through serde directly validates too.
    assert!(serde_json::from_slice::<Router>(&edited(&router, |v| v["bias"] = serde_json::json!([0.0]))).is_err());

    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "weight length",
            edited(&router, |v| {
                v["weights"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "extra weight",
            edited(&router, |v| {
                v["weights"].as_array_mut().unwrap().push(0.5.into());
            }),
        ),
        (
            "inv_std length",
            edited(&router, |v| {
                v["inv_std"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "bias length",
            edited(&router, |v| {
                v["bias"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "non-finite (overflows f32)",
            edited(&router, |v| v["weights"][2] = serde_json::json!(1e39)),
        ),
        (
            "null value",
            edited(&router, |v| v["mean"][0] = serde_json::Value::Null),
        ),
        (
            "duplicate skills",
            edited(&router, |v| v["skills"][2] = "skill0".into()),
        ),
        (
            "empty skills",
            edited(&router, |v| {
                v["skills"] = serde_json::json!([]);
                v["weights"] = serde_json::json!([]);
                v["bias"] = serde_json::json!([]);
            }),
        ),
        (
            "empty skill name",
            edited(&router, |v| v["skills"][1] = "".into()),
        ),
        (
            "inv_std zero",
            edited(&router, |v| v["inv_std"][1] = 0.0.into()),
        ),
        (
            "inv_std negative",
            edited(&router, |v| v["inv_std"][0] = (-1.0).into()),
        ),
        (
            "no features",
            edited(&router, |v| {
                v["mean"] = serde_json::json!([]);
                v["inv_std"] = serde_json::json!([]);
                v["weights"] = serde_json::json!([]);
            }),
        ),
        ("unknown field", edited(&router, |v| v["extra"] = 1.into())),
        (
            "missing field",
            edited(&router, |v| {
                v.as_object_mut().unwrap().remove("bias");
            }),
        ),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty file", Vec::new()),
        ("not json", b"\xff\xfe garbage".to_vec()),
    ];
    for (what, b) in bad {
        match Router::from_json_bytes(&b) {
            Err(Error::Corrupt { what: msg, .. }) => eprintln!("{what}: {msg}"),
            other => panic!("{what}: expected a Corrupt error, got {other:?}"),
        }
    }
    // load names the file; a missing file is an I/O error.
    std::fs::write(&path, &bytes[..10]).unwrap();
    match Router::load(&path) {
        Err(Error::Corrupt { file, .. }) => assert!(file.ends_with("router.json")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Router::load(&dir.path().join("missing.json")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn prompt_features_of_tiny_model() {
    let model = tiny_model(3, 1.0);
    let dir = tempfile::tempdir().unwrap();
    let tok = chat_tokenizer(dir.path());
    let d = model.config().hidden_size;
    let prompts = ["The answer is 4 .", "def return A", "B C D 7 8 9 . The"];
    let mut calls = Vec::new();
    let all = prompt_features(&model, &tok, &prompts, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(all.len(), 3);
    for f in &all {
        assert_eq!(f.len(), d);
        assert!(f.iter().all(|v| v.is_finite()));
    }
    assert_ne!(all[0], all[1]);
    // A prompt's features do not depend on its neighbours in the call.
    let alone = prompt_features(&model, &tok, &prompts[1..2], &mut |_, _| {}).unwrap();
    assert_eq!(alone[0], all[1]);
    let reordered =
        prompt_features(&model, &tok, &[prompts[2], prompts[0]], &mut |_, _| {}).unwrap();
    assert_eq!(reordered[0], all[2]);
    assert_eq!(reordered[1], all[0]);
    assert!(
        prompt_features(&model, &tok, &[], &mut |_, _| {})
            .unwrap()
            .is_empty()
    );
    // The features are the mean of the last hidden states over the rendered prompt.
    let ids = skillzip_harness::selfgen::encode_prompt(&tok, prompts[0]).unwrap();
    let n = ids.len();
    let t = candle_core::Tensor::from_vec(ids, (1, n), &candle_core::Device::Cpu).unwrap();
    let h: Vec<Vec<f32>> = model
        .hidden_states(&t, None, &mut skillzip_lm::model::NoHook)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for j in 0..d {
        let m = h.iter().map(|r| f64::from(r[j])).sum::<f64>() / n as f64;
        assert!((f64::from(all[0][j]) - m).abs() <= 1e-6 * (1.0 + m.abs()));
    }
}

#[test]
fn train_rejects_bad_inputs() {
    let (x, y) = clusters(3, 4, 3, 5, 6);
    let cfg = RouterConfig::default();
    let invalid = |r: skillzip_harness::Result<Router>, what: &str| match r {
        Err(Error::InvalidInput(msg)) => eprintln!("{what}: {msg}"),
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    };
    invalid(Router::train(&[], &[], names(3), &cfg), "empty");
    invalid(
        Router::train(&[vec![], vec![]], &[0, 1], names(3), &cfg),
        "zero width",
    );
    let mut ragged = x.clone();
    ragged[4].pop();
    invalid(Router::train(&ragged, &y, names(3), &cfg), "ragged");
    invalid(Router::train(&x, &y[1..], names(3), &cfg), "label count");
    let mut out_of_range = y.clone();
    out_of_range[2] = 3;
    invalid(
        Router::train(&x, &out_of_range, names(3), &cfg),
        "label out of range",
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut nonfinite = x.clone();
        nonfinite[1][2] = bad;
        invalid(Router::train(&nonfinite, &y, names(3), &cfg), "non-finite");
    }
    let zeros = vec![0; x.len()];
    invalid(Router::train(&x, &zeros, names(1), &cfg), "one skill");
    invalid(Router::train(&x, &zeros, vec![], &cfg), "no skills");
    invalid(
        Router::train(&x, &y, vec!["a".into(), "b".into(), "a".into()], &cfg),
        "duplicate skills",
    );
    invalid(
        Router::train(&x, &y, vec!["a".into(), "".into(), "c".into()], &cfg),
        "empty skill name",
    );
    for bad in [
        RouterConfig {
            epochs: 0,
            ..cfg.clone()
        },
        RouterConfig {
            learning_rate: 0.0,
            ..cfg.clone()
        },
        RouterConfig {
            learning_rate: f64::NAN,
            ..cfg.clone()
        },
        RouterConfig {
            l2: -1.0,
            ..cfg.clone()
        },
        RouterConfig {
            l2: f64::INFINITY,
            ..cfg.clone()
        },
    ] {
        invalid(Router::train(&x, &y, names(3), &bad), "settings");
    }
    // Constant and huge features train fine (std floor; f64 statistics).
    let constant: Vec<Vec<f32>> = x
        .iter()
        .map(|f| vec![f[0], 1e30, -3.5, f[1] * 1e30])
        .collect();
    let r = Router::train(&constant, &y, names(3), &cfg).unwrap();
    for f in &constant {
        let p = r.probabilities(f).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
