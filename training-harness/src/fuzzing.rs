//! The checks behind the `trainer_checkpoint` and `router_json` fuzz targets (and their
//! corpus replay tests): the readers of a training checkpoint's files and of a router file on
//! arbitrary bytes.

use std::path::Path;

use skillzip_lm::checkpoint::{TensorRole, tensor_specs};
use skillzip_lm::config::LlamaConfig;

use crate::error::Error;
use crate::router::Router;
use crate::train::{parse_f32_tensors, parse_state};

/// The trainable tensors of [`LlamaConfig::tiny`] in checkpoint order: what the fuzzed tensor
/// file is read as.
pub fn tiny_trainable_specs() -> Vec<(String, Vec<usize>)> {
    tensor_specs(&LlamaConfig::tiny())
        .into_iter()
        .filter(|(_, _, role)| matches!(role, TensorRole::Linear(..)))
        .map(|(name, shape, _)| (name, shape))
        .collect()
}

/// Reads arbitrary bytes both as a checkpoint tensor file (for a tiny model) and as its
/// `state.json`: a typed error, or tensors of exactly the expected sizes and a state.
pub fn check_trainer_checkpoint_bytes(data: &[u8]) {
    let specs = tiny_trainable_specs();
    if let Ok(tensors) = parse_f32_tensors(data, Path::new("fuzz"), &specs) {
        assert_eq!(tensors.len(), specs.len());
        for (t, (name, shape)) in tensors.iter().zip(&specs) {
            assert_eq!(t.len(), shape.iter().product::<usize>(), "{name}");
        }
    }
    let _ = parse_state(data, Path::new("fuzz"));
}

/// Reads arbitrary bytes as a router file ([`Router::from_json_bytes`]): a typed error, or a
/// valid router (at least 2 unique non-empty skills, consistent lengths, finite values,
/// positive `inv_std`) that re-serialises and re-parses equal, and whose probabilities on
/// a few feature vectors (zeros, its own mean, huge values, values taken from the bytes) are
/// finite, sum to 1 and agree with [`Router::route`]; wrong widths and non-finite features
/// are typed errors.
pub fn check_router_bytes(data: &[u8]) {
    let Ok(router) = Router::from_json_bytes(data) else {
        return;
    };
    let k = router.skills.len();
    let d = router.mean.len();
    assert!(k >= 2 && d >= 1);
    let unique: std::collections::BTreeSet<&String> = router.skills.iter().collect();
    assert_eq!(unique.len(), k);
    assert!(router.skills.iter().all(|s| !s.is_empty()));
    assert_eq!(router.inv_std.len(), d);
    assert_eq!(router.weights.len(), k * d);
    assert_eq!(router.bias.len(), k);
    for v in [&router.mean, &router.inv_std, &router.weights, &router.bias] {
        assert!(v.iter().all(|x| x.is_finite()));
    }
    assert!(router.inv_std.iter().all(|&x| x > 0.0));

    let bytes = router.to_json_bytes().expect("a valid router serialises");
    let again = Router::from_json_bytes(&bytes).expect("a serialised router parses");
    assert_eq!(again, router);

    let from_bytes: Vec<f32> = (0..d)
        .map(|j| {
            let b = data.get(j % data.len().max(1)).copied().unwrap_or(0);
            (f32::from(b) - 128.0) * 1e3
        })
        .collect();
    for x in [
        vec![0.0; d],
        router.mean.clone(),
        vec![1e30; d],
        vec![-f32::MAX; d],
        from_bytes,
    ] {
        let p = router
            .probabilities(&x)
            .expect("finite features of the right width");
        assert_eq!(p.len(), k);
        assert!(p.iter().all(|v| v.is_finite() && *v >= 0.0), "{p:?}");
        let sum: f64 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "probabilities sum to {sum}");
        let r = router.route(&x).unwrap();
        assert!(r < k);
        let best = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // Argmax of the logits; equal to the probabilities' up to rounding in exp.
        assert!(p[r] >= best * (1.0 - 1e-9), "route {r} of {p:?}");
    }
    assert!(matches!(
        router.probabilities(&vec![0.0; d + 1]),
        Err(Error::InvalidInput(_))
    ));
    let mut nan = vec![0.0; d];
    nan[d - 1] = f32::NAN;
    assert!(matches!(
        router.probabilities(&nan),
        Err(Error::InvalidInput(_))
    ));
}
