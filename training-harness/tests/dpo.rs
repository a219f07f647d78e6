//! The LN-DPO loss equals an f64 computation from the model's full logits, its gradient
//! agrees with central finite differences, and bad batches are refused.

mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use common::{pairs, tiny_model, tokens};
use skillzip_harness::dpo::average_logps;
use skillzip_harness::{Error, LnDpo, PreferencePair};
use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{Llama, Logits, NoHook};

/// `avg_logp` of one response in f64 from a plain forward pass over the whole sequence.
fn avg_logp_f64(model: &Llama, prompt: &[u32], response: &[u32]) -> f64 {
    let full: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let ids = Tensor::from_vec(full.clone(), (1, full.len()), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model
        .forward(&ids, None, Logits::All, &mut NoHook)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut sum = 0.0;
    for (k, &target) in response.iter().enumerate() {
        let row = &logits[prompt.len() - 1 + k];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
        let lse = max
            + row
                .iter()
                .map(|v| (*v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        sum += row[target as usize] as f64 - lse;
    }
    sum / response.len() as f64
}

fn loss_f64(model: &Llama, pairs: &[PreferencePair], obj: LnDpo) -> f64 {
    pairs
        .iter()
        .map(|p| {
            let z = obj.beta
                * (avg_logp_f64(model, &p.prompt, &p.chosen)
                    - avg_logp_f64(model, &p.prompt, &p.rejected))
                - obj.gamma;
            (1.0 + (-z).exp()).ln() - obj.nll * avg_logp_f64(model, &p.prompt, &p.chosen)
        })
        .sum::<f64>()
        / pairs.len() as f64
}

#[test]
fn the_loss_equals_an_f64_computation_from_full_logits() {
    let model = tiny_model(3, 20.0);
    let pairs = pairs();
    for obj in [
        LnDpo::default(),
        LnDpo {
            beta: 0.5,
            gamma: 0.0,
            nll: 0.0,
        },
        // A large β·margin exercises the overflow-free softplus.
        LnDpo {
            beta: 400.0,
            gamma: -3.0,
            nll: 0.0,
        },
        // With the helpful response's likelihood term.
        LnDpo {
            beta: 2.0,
            gamma: 1.0,
            nll: 1.0,
        },
    ] {
        let out = obj.loss(&model, &pairs).unwrap();
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        let want = loss_f64(&model, &pairs, obj);
        assert!(got.is_finite());
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{obj:?}: loss {got} vs f64 {want}"
        );
        for (i, p) in pairs.iter().enumerate() {
            let w = avg_logp_f64(&model, &p.prompt, &p.chosen);
            let l = avg_logp_f64(&model, &p.prompt, &p.rejected);
            assert!((out.chosen[i] as f64 - w).abs() < 1e-5, "pair {i} chosen");
            assert!(
                (out.rejected[i] as f64 - l).abs() < 1e-5,
                "pair {i} rejected"
            );
        }
        let won = pairs
            .iter()
            .filter(|p| {
                avg_logp_f64(&model, &p.prompt, &p.chosen)
                    > avg_logp_f64(&model, &p.prompt, &p.rejected)
            })
            .count();
        assert_eq!(out.accuracy(), won as f64 / pairs.len() as f64);
    }
}

#[test]
fn identical_responses_cost_exactly_the_margin_term() {
    // avg_logp(y_w) = avg_logp(y_l) ⇒ L = −log σ(−γ) = log(1 + e^γ), whatever the model.
    let model = tiny_model(4, 20.0);
    let y = tokens(4, 11);
    let pair = PreferencePair {
        prompt: tokens(3, 12),
        chosen: y.clone(),
        rejected: y,
    };
    for gamma in [0.0, 1.0, 5.0] {
        let obj = LnDpo {
            beta: 2.0,
            gamma,
            nll: 0.0,
        };
        let out = obj.loss(&model, std::slice::from_ref(&pair)).unwrap();
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got - (1.0 + gamma.exp()).ln()).abs() < 1e-5,
            "γ {gamma}: {got}"
        );
    }
}

#[test]
fn batching_does_not_change_a_sequence_s_score() {
    let model = tiny_model(5, 20.0);
    let seqs = [(tokens(2, 1), tokens(9, 2)), (tokens(11, 3), tokens(1, 4))];
    let refs: Vec<(&[u32], &[u32])> = seqs.iter().map(|(p, r)| (&p[..], &r[..])).collect();
    let together: Vec<f32> = average_logps(&model, &refs).unwrap().to_vec1().unwrap();
    for (i, r) in refs.iter().enumerate() {
        let alone: Vec<f32> = average_logps(&model, &[*r]).unwrap().to_vec1().unwrap();
        assert!(
            (alone[0] - together[i]).abs() < 1e-5,
            "{i}: {alone:?} vs {together:?}"
        );
    }
}

/// A model whose linear layers are `Var`s, and the vars.
fn trainable(seed: u64) -> (Llama, BTreeMap<String, Var>) {
    let base = tiny_model(seed, 10.0);
    let mut vars = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, _, role) in tensor_specs(base.config()) {
        let t = base.parameters()[&name].clone();
        if matches!(role, TensorRole::Linear(..)) {
            let v = Var::from_tensor(&t).unwrap();
            tensors.insert(name.clone(), v.as_tensor().clone());
            vars.insert(name, v);
        } else {
            tensors.insert(name, t);
        }
    }
    (
        Llama::from_tensors(LlamaConfig::tiny(), tensors).unwrap(),
        vars,
    )
}

#[test]
fn gradients_match_central_finite_differences() {
    let (model, vars) = trainable(6);
    // With the likelihood term, so its gradient is checked too.
    let obj = LnDpo {
        nll: 0.5,
        ..LnDpo::default()
    };
    let pairs = pairs();
    let loss = obj.loss(&model, &pairs).unwrap().loss;
    let grads = loss.backward().unwrap();
    let mut rng = skillzip_core::seeded_rng(7);
    // Directions over every linear layer, and over single tensors of the first and last block.
    let cases: [&[&str]; 3] = [
        &[],
        &["model.layers.0.self_attn.k_proj.weight"],
        &["model.layers.1.mlp.up_proj.weight"],
    ];
    for tensors in cases {
        let mut dir = BTreeMap::new();
        for (name, var) in &vars {
            let n = var.as_tensor().elem_count();
            let picked = tensors.is_empty() || tensors.contains(&name.as_str());
            let d: Vec<f32> = (0..n)
                .map(|_| {
                    if picked {
                        rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng)
                    } else {
                        0.0
                    }
                })
                .collect();
            dir.insert(name.clone(), d);
        }
        let norm = dir
            .values()
            .flatten()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let analytic: f64 = vars
            .iter()
            .map(|(n, v)| {
                let g: Vec<f32> = grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                g.iter()
                    .zip(&dir[n])
                    .map(|(g, d)| *g as f64 * *d as f64 / norm)
                    .sum::<f64>()
            })
            .sum();
        // Same step/tolerance reasoning as skillzip-lm's gradient test: f32 loss rounding
        // ~1e-6, step 5e-2 along a unit direction.
        let step = 5e-2;
        let at = |s: f64| {
            let originals: Vec<(Var, Tensor)> = vars
                .iter()
                .map(|(n, v)| {
                    let t = v.as_tensor().detach().copy().unwrap();
                    let d = Tensor::from_vec(dir[n].clone(), t.dims(), &Device::Cpu).unwrap();
                    v.set(&(&t + (d * (s / norm)).unwrap()).unwrap()).unwrap();
                    (v.clone(), t)
                })
                .collect();
            let l = obj
                .loss(&model, &pairs)
                .unwrap()
                .loss
                .to_scalar::<f32>()
                .unwrap() as f64;
            for (v, t) in originals {
                v.set(&t).unwrap();
            }
            l
        };
        let numeric = (at(step) - at(-step)) / (2.0 * step);
        eprintln!("{tensors:?}: analytic {analytic:.6e}, numeric {numeric:.6e}");
        assert!(
            analytic.abs() > 1e-4,
            "{tensors:?}: derivative too small to test"
        );
        assert!(
            (numeric - analytic).abs() <= 2e-2 * analytic.abs() + 2e-5,
            "{tensors:?}: analytic {analytic} vs finite difference {numeric}"
        );
    }
}

#[test]
fn empty_batches_and_empty_responses_are_refused() {
    let model = tiny_model(8, 1.0);
    let r = LnDpo::default().loss(&model, &[]);
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let bad = PreferencePair {
        prompt: tokens(3, 1),
        chosen: vec![],
        rejected: tokens(2, 2),
    };
    let r = LnDpo::default().loss(&model, &[bad]);
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let r = average_logps(&model, &[(&[][..], &[1u32][..])]);
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
}
