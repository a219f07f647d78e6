//! `LinearHook` sees every linear layer's input in forward order, and an `extra` output
//! `x·Δᵀ` is the same as running the model with the weight `W + Δ`.

mod common;

use candle_core::{Device, Tensor};
use common::{assert_close, ids, logits_all, logits_with, param_values, tokens};
use skillzip_lm::checkpoint::LinearKind;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{KvCache, LinearHook, Llama, Logits};

#[derive(Default)]
struct Recorder {
    seen: Vec<(usize, LinearKind, usize, usize)>,
}

impl LinearHook for Recorder {
    fn observe(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> skillzip_lm::Result<()> {
        let (rows, cols) = x.dims2()?;
        self.seen.push((layer, kind, rows, cols));
        Ok(())
    }
}

fn expected(config: &LlamaConfig, rows: usize) -> Vec<(usize, LinearKind, usize, usize)> {
    (0..config.num_hidden_layers)
        .flat_map(|l| LinearKind::ALL.map(|k| (l, k, rows, k.shape(config).1)))
        .collect()
}

#[test]
fn observe_sees_every_linear_in_forward_order_with_its_input_rows() {
    let config = LlamaConfig {
        num_hidden_layers: 3,
        ..LlamaConfig::tiny()
    };
    let model = Llama::random(config.clone(), 41, 1.0).unwrap();
    let (a, b) = (tokens(5, 96, 1), tokens(5, 96, 2));

    let mut rec = Recorder::default();
    logits_with(&model, &[&a, &b], &mut rec);
    assert_eq!(rec.seen, expected(&config, 10));
    // Down's input is the MLP's inner width; the others take the model width.
    assert!(rec.seen.iter().any(|s| s.3 == 48) && rec.seen.iter().any(|s| s.3 == 32));

    // A cached decoding step of a batch of two feeds two rows.
    let mut cache = KvCache::new();
    let mut rec = Recorder::default();
    model
        .forward(&ids(&[&a, &b]), Some(&mut cache), Logits::Last, &mut rec)
        .unwrap();
    assert_eq!(
        rec.seen,
        expected(&config, 10),
        "Logits::Last still runs every row"
    );
    let mut rec = Recorder::default();
    model
        .forward(
            &ids(&[&[3], &[4]]),
            Some(&mut cache),
            Logits::Last,
            &mut rec,
        )
        .unwrap();
    assert_eq!(rec.seen, expected(&config, 2));
}

/// Adds `x·Δᵀ` to one linear layer.
struct AddDelta {
    layer: usize,
    kind: LinearKind,
    delta: Tensor,
    calls: usize,
}

impl LinearHook for AddDelta {
    fn extra(
        &mut self,
        layer: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> skillzip_lm::Result<Option<Tensor>> {
        if (layer, kind) != (self.layer, self.kind) {
            return Ok(None);
        }
        self.calls += 1;
        Ok(Some(x.matmul(&self.delta.t()?)?))
    }
}

fn pseudo_random(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .map(|v| v * scale)
        .collect()
}

#[test]
fn an_extra_output_equals_adding_the_delta_to_the_weight() {
    let config = LlamaConfig::tiny();
    let model = Llama::random(config.clone(), 42, 10.0).unwrap();
    let seq = tokens(7, 96, 3);
    let plain = logits_all(&model, &[&seq]);
    for (i, kind) in LinearKind::ALL.into_iter().enumerate() {
        let layer = i % config.num_hidden_layers;
        let (out, inp) = kind.shape(&config);
        let delta = pseudo_random(out * inp, i, 0.2);
        let name = format!("{}.weight", kind.module_name(layer));
        let mut params = param_values(&model);
        let w = &mut params.get_mut(&name).unwrap().1;
        for (w, d) in w.iter_mut().zip(&delta) {
            *w += d;
        }
        let merged = common::model_from_values(&config, &params);

        let mut hook = AddDelta {
            layer,
            kind,
            delta: Tensor::from_vec(delta, (out, inp), &Device::Cpu).unwrap(),
            calls: 0,
        };
        let hooked = logits_with(&model, &[&seq], &mut hook);
        assert_eq!(hook.calls, 1, "{name}");
        let want = logits_all(&merged, &[&seq]);
        assert_close(&hooked, &want, 1e-4, &name);
        // The delta matters, so the comparison is not vacuous.
        let moved = want
            .iter()
            .zip(&plain)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            moved > 1e-2,
            "{name}: the delta moved logits by only {moved}"
        );
    }
}

/// An extra output of the wrong shape or a failing hook is an error, not a panic.
struct Broken(bool);

impl LinearHook for Broken {
    fn observe(&mut self, _: usize, kind: LinearKind, _: &Tensor) -> skillzip_lm::Result<()> {
        if self.0 && kind == LinearKind::Up {
            return Err(skillzip_lm::Error::InvalidInput("hook failed".into()));
        }
        Ok(())
    }
    fn extra(
        &mut self,
        _: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> skillzip_lm::Result<Option<Tensor>> {
        if !self.0 && kind == LinearKind::V {
            let rows = x.dim(0)?;
            return Ok(Some(Tensor::zeros(
                (rows, 3),
                candle_core::DType::F32,
                x.device(),
            )?));
        }
        Ok(None)
    }
}

#[test]
fn hook_errors_propagate() {
    let model = Llama::random(LlamaConfig::tiny(), 43, 1.0).unwrap();
    let seq = tokens(4, 96, 4);
    let r = model.forward(&ids(&[&seq]), None, Logits::All, &mut Broken(true));
    assert!(
        matches!(&r, Err(skillzip_lm::Error::InvalidInput(m)) if m == "hook failed"),
        "{r:?}"
    );
    let r = model.forward(&ids(&[&seq]), None, Logits::All, &mut Broken(false));
    assert!(matches!(r, Err(skillzip_lm::Error::Candle(_))), "{r:?}");
}
