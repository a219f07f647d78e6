//! AdamW against an f64 transcription of its update rule, clipping, and the schedule's values.

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use skillzip_harness::optim::global_norm;
use skillzip_harness::{AdamW, AdamWConfig, Error, Schedule};

/// AdamW (decoupled decay, bias-corrected moments) in f64, one tensor, with the gradient
/// already scaled by the clip factor.
struct Reference {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Reference {
    fn step(&mut self, g: &[f64], lr: f64, c: &AdamWConfig) {
        self.t += 1;
        let moments = self.m.iter_mut().zip(self.v.iter_mut());
        for ((p, (m, v)), g) in self.p.iter_mut().zip(moments).zip(g) {
            *m = c.beta1 * *m + (1.0 - c.beta1) * g;
            *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
            let m_hat = *m / (1.0 - c.beta1.powi(self.t));
            let v_hat = *v / (1.0 - c.beta2.powi(self.t));
            *p -= lr * (m_hat / (v_hat.sqrt() + c.eps) + c.weight_decay * *p);
        }
    }
}

fn var(values: &[f32]) -> Var {
    Var::from_tensor(&Tensor::from_slice(values, values.len(), &Device::Cpu).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn adamw_follows_the_f64_update_rule(
        sizes in prop::collection::vec(1usize..40, 1..4),
        seed in 0u64..1000,
        weight_decay in prop_oneof![Just(0.0), 0.0f64..0.1],
        clip in prop_oneof![Just(None), (0.01f64..10.0).prop_map(Some)],
        lr in 1e-4f64..1e-1,
    ) {
        let config = AdamWConfig { weight_decay, ..AdamWConfig::default() };
        let mut rng = skillzip_core::seeded_rng(seed);
        let mut normal = || -> f32 {
            rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng)
        };
        let starts: Vec<Vec<f32>> = sizes.iter().map(|&n| (0..n).map(|_| normal()).collect()).collect();
        let vars: Vec<(String, Var)> =
            starts.iter().enumerate().map(|(i, s)| (format!("t{i}"), var(s))).collect();
        let handles: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
        let mut opt = AdamW::new(vars, config).unwrap();
        let mut refs: Vec<Reference> = starts
            .iter()
            .map(|s| Reference {
                p: s.iter().map(|v| *v as f64).collect(),
                m: vec![0.0; s.len()],
                v: vec![0.0; s.len()],
                t: 0,
            })
            .collect();
        for step in 0..5 {
            // Nasty gradients: zeros, large values, tiny values.
            let grads: Vec<Vec<f32>> = sizes
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|j| match (j + step) % 5 {
                            0 => 0.0,
                            1 => normal() * 1e3,
                            2 => normal() * 1e-6,
                            _ => normal(),
                        })
                        .collect()
                })
                .collect();
            let norm = grads
                .iter()
                .flatten()
                .map(|g| (*g as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let scale = match clip { Some(c) if norm > c => c / norm, _ => 1.0 };
            let stats = opt.step(&grads, lr, clip).unwrap();
            prop_assert!((stats.grad_norm - norm).abs() <= 1e-9 * norm.max(1.0));
            prop_assert!((stats.clip_scale - scale).abs() <= 1e-12);
            for (r, g) in refs.iter_mut().zip(&grads) {
                let g: Vec<f64> = g.iter().map(|v| *v as f64 * scale).collect();
                r.step(&g, lr, &config);
            }
        }
        prop_assert_eq!(opt.steps(), 5);
        for ((r, p), v) in refs.iter().zip(opt.parameters()).zip(&handles) {
            let in_var: Vec<f32> = v.as_tensor().to_vec1().unwrap();
            prop_assert_eq!(&in_var, p, "the variable holds the master copy");
            for (a, b) in p.iter().zip(&r.p) {
                // f32 arithmetic over 5 steps of size ≤ lr each.
                prop_assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }
    }
}

#[test]
fn the_schedule_warms_up_linearly_then_decays_along_a_cosine() {
    let s = Schedule {
        peak_lr: 1.0,
        min_lr: 0.0,
        warmup_steps: 2,
        total_steps: 10,
    };
    let want = [(0, 0.5), (1, 1.0), (2, 1.0), (6, 0.5), (10, 0.0), (50, 0.0)];
    for (step, lr) in want {
        assert!(
            (s.lr(step) - lr).abs() < 1e-12,
            "step {step}: {}",
            s.lr(step)
        );
    }
    // Halfway between peak and the middle of the decay: ½(1 + cos(π/4)).
    assert!((s.lr(4) - 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)).abs() < 1e-12);
    let no_warmup = Schedule {
        peak_lr: 2.0,
        min_lr: 0.5,
        warmup_steps: 0,
        total_steps: 4,
    };
    assert_eq!(no_warmup.lr(0), 2.0);
    assert!((no_warmup.lr(4) - 0.5).abs() < 1e-12);
}

#[test]
fn bad_steps_are_refused_and_change_nothing() {
    let v = var(&[1.0, 2.0]);
    let mut opt = AdamW::new(vec![("w".into(), v.clone())], AdamWConfig::default()).unwrap();
    let r = opt.step(&[vec![f32::NAN, 0.0]], 0.1, Some(1.0));
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let r = opt.step(&[vec![1.0]], 0.1, None);
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    assert_eq!(opt.steps(), 0);
    assert_eq!(v.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    let bad = AdamWConfig {
        beta1: 1.0,
        ..AdamWConfig::default()
    };
    assert!(AdamW::new(vec![("w".into(), v)], bad).is_err());
    assert_eq!(global_norm(&[vec![3.0], vec![4.0]]), 5.0);
}
