//! The decoder is differentiable end to end (DESIGN.md §3: no fused candle op that drops the
//! gradient): built from `Var`s, every parameter gets a finite, non-zero gradient of the
//! next-token cross-entropy, and the gradient agrees with central finite differences.

mod common;

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor, Var};
use common::{Values, ids, param_values, tokens};
use rand_distr::{Distribution, StandardNormal};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{Llama, Logits, NoHook};

/// Mean next-token cross-entropy of `seq`, with log-softmax composed from differentiable
/// ops (the max is a constant shift, so it is detached).
fn loss(model: &Llama, seq: &[u32]) -> Tensor {
    let logits = model
        .forward(&ids(&[seq]), None, Logits::All, &mut NoHook)
        .unwrap();
    let (_, t, v) = logits.dims3().unwrap();
    let logits = logits.reshape((t, v)).unwrap().narrow(0, 0, t - 1).unwrap();
    let max = logits.max_keepdim(D::Minus1).unwrap().detach();
    let shifted = logits.broadcast_sub(&max).unwrap();
    let lse = shifted
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let log_probs = shifted.broadcast_sub(&lse).unwrap();
    let mut one_hot = vec![0f32; (t - 1) * v];
    for (i, &target) in seq[1..].iter().enumerate() {
        one_hot[i * v + target as usize] = 1.0;
    }
    let one_hot = Tensor::from_vec(one_hot, (t - 1, v), &Device::Cpu).unwrap();
    ((log_probs * one_hot).unwrap().sum_all().unwrap() * (-1.0 / (t - 1) as f64)).unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

struct Trainable {
    model: Llama,
    vars: BTreeMap<String, Var>,
}

fn trainable(config: LlamaConfig, seed: u64) -> Trainable {
    let base = Llama::random(config.clone(), seed, 10.0).unwrap();
    let vars: BTreeMap<String, Var> = base
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let params = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    Trainable {
        model: Llama::from_tensors(config, params).unwrap(),
        vars,
    }
}

#[test]
fn every_parameter_gets_a_finite_non_zero_gradient() {
    for config in [
        LlamaConfig::tiny(),
        LlamaConfig {
            tie_word_embeddings: false,
            ..LlamaConfig::tiny()
        },
    ] {
        let tr = trainable(config.clone(), 51);
        let seq = tokens(10, 96, 1);
        let l = loss(&tr.model, &seq);
        let value = scalar(&l);
        assert!(value.is_finite() && value > 0.0, "loss {value}");
        let grads = l.backward().unwrap();
        assert_eq!(tr.vars.len(), tr.model.parameters().len());
        for (name, var) in &tr.vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            assert_eq!(g.dims(), var.as_tensor().dims(), "{name}");
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{name}: non-finite gradient"
            );
            let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(norm > 1e-6, "{name}: zero gradient ({norm})");
        }
    }
}

/// A unit direction: Gaussian over `tensors` (all when empty), zero elsewhere.
fn direction(model: &Llama, tensors: &[&str], seed: u64) -> Values {
    let mut rng = skillzip_core::seeded_rng(seed);
    let mut dir: BTreeMap<_, _> = param_values(model)
        .into_iter()
        .map(|(n, (shape, data))| {
            let picked = tensors.is_empty() || tensors.contains(&n.as_str());
            let d: Vec<f32> = data
                .iter()
                .map(|_| {
                    if picked {
                        StandardNormal.sample(&mut rng)
                    } else {
                        0.0
                    }
                })
                .collect();
            (n, (shape, d))
        })
        .collect();
    let norm = dir
        .values()
        .flat_map(|(_, d)| d.iter())
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    for (_, d) in dir.values_mut() {
        d.iter_mut().for_each(|v| *v /= norm);
    }
    dir
}

/// The model at `θ + step·dir`.
fn shifted(model: &Llama, dir: &Values, step: f32) -> Llama {
    let params = model
        .parameters()
        .iter()
        .map(|(n, t)| {
            let d = Tensor::from_vec(dir[n].1.clone(), t.dims(), &Device::Cpu).unwrap();
            let t = (t.detach() + (d * step as f64).unwrap()).unwrap();
            (n.clone(), t)
        })
        .collect();
    Llama::from_tensors(model.config().clone(), params).unwrap()
}

#[test]
fn gradients_match_central_finite_differences() {
    let config = LlamaConfig::tiny();
    let tr = trainable(config, 52);
    let seq = tokens(10, 96, 2);
    let l = loss(&tr.model, &seq);
    let grads = l.backward().unwrap();
    // Step and tolerance for f32: the loss (≈ 4.6) is computed to ~1e-6 absolute, so with a
    // step of 5e-2 along a unit direction the difference quotient carries ~1e-5 of rounding
    // error, while the O(step²) truncation error stays ~1e-3 relative (a step of 0.2 is
    // already 5% off along a random direction). Agreement is asked to 2e-2 relative to the
    // directional derivative plus 2e-5 absolute (the rounding floor).
    let step = 5e-2f32;
    let cases: [(&str, &[&str]); 5] = [
        ("all parameters", &[]),
        (
            "layer 0 q/k",
            &[
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
            ],
        ),
        ("layer 1 down", &["model.layers.1.mlp.down_proj.weight"]),
        (
            "norms",
            &[
                "model.layers.0.input_layernorm.weight",
                "model.layers.1.post_attention_layernorm.weight",
                "model.norm.weight",
            ],
        ),
        ("embeddings", &["model.embed_tokens.weight"]),
    ];
    for (i, (what, tensors)) in cases.into_iter().enumerate() {
        let dir = direction(&tr.model, tensors, 100 + i as u64);
        let analytic: f64 = tr
            .vars
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
                    .zip(&dir[n].1)
                    .map(|(g, d)| *g as f64 * *d as f64)
                    .sum::<f64>()
            })
            .sum();
        let plus = scalar(&loss(&shifted(&tr.model, &dir, step), &seq)) as f64;
        let minus = scalar(&loss(&shifted(&tr.model, &dir, -step), &seq)) as f64;
        let numeric = (plus - minus) / (2.0 * step as f64);
        eprintln!("{what}: analytic {analytic:.6e}, numeric {numeric:.6e}");
        assert!(
            analytic.abs() > 1e-4,
            "{what}: directional derivative {analytic} is too small to test"
        );
        assert!(
            (numeric - analytic).abs() <= 2e-2 * analytic.abs() + 2e-5,
            "{what}: analytic {analytic} vs finite difference {numeric}"
        );
    }
}

#[test]
fn a_model_of_plain_tensors_has_no_gradient_and_dtypes_are_checked() {
    // Var-backed tensors are what make the model trainable: plain ones track nothing.
    let model = Llama::random(LlamaConfig::tiny(), 53, 1.0).unwrap();
    let l = loss(&model, &tokens(6, 96, 3));
    let grads = l.backward().unwrap();
    assert!(model.parameters().values().all(|t| grads.get(t).is_none()));
    // An f64 parameter is refused.
    let mut params = model.parameters().clone();
    let t = params["model.norm.weight"].to_dtype(DType::F64).unwrap();
    params.insert("model.norm.weight".into(), t);
    assert!(Llama::from_tensors(LlamaConfig::tiny(), params).is_err());
}
