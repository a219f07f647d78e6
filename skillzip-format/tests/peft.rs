//! PEFT LoRA export: `(lora_B · lora_A)ᵀ` is the layer's effective weight, ranks and alphas
//! in the config, what cannot be exported is reported.

mod common;

use common::{cfg, compressed, meta};
use serde_json::Value;
use skillzip_core::compress::BitConfig;
use skillzip_core::layer::CompressedLayer;
use skillzip_core::quant::Bits;
use skillzip_format::peft::{ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, lora_factors};
use skillzip_format::{
    DenseDtype, DenseTensor, LayerEntry, PeftDtype, PeftOptions, Skillpack, export_peft,
};

fn pack() -> Skillpack {
    let mut p = Skillpack::new(meta("math"));
    let layers: [(&str, usize, usize, usize, BitConfig, bool); 4] = [
        (
            "model.layers.0.mlp.down_proj",
            40,
            24,
            6,
            BitConfig::X8A8B8,
            true,
        ),
        (
            "model.layers.1.mlp.down_proj",
            40,
            24,
            6,
            BitConfig::X8A4B4,
            false,
        ),
        (
            "model.layers.0.self_attn.q_proj",
            24,
            24,
            3,
            BitConfig::X8A4B4,
            true,
        ),
        (
            "model.layers.1.self_attn.q_proj",
            23,
            17,
            6,
            BitConfig::X4A4B8,
            true,
        ),
    ];
    for (i, (name, ci, co, r, bits, smooth)) in layers.into_iter().enumerate() {
        let c = compressed(ci, co, &cfg(r, bits, smooth, false), 100 + i as u64);
        p.layers.insert(
            name.into(),
            LayerEntry {
                layer: c.layer,
                report: None,
            },
        );
    }
    // A per-tensor-B random layer too, rank 1.
    let l = common::random(
        &skillzip_core::synth::RandomLayer {
            b_per_channel: false,
            ..common::spec(5, 1, 4, Bits::Int8, Bits::Int4)
        },
        9,
    );
    p.layers.insert(
        "model.layers.2.mlp.gate_proj".into(),
        LayerEntry {
            layer: l,
            report: None,
        },
    );
    p.dense.insert(
        "model.norm.weight".into(),
        DenseTensor::new(vec![2], vec![1.0, 1.0], DenseDtype::F16).unwrap(),
    );
    p
}

fn f32s(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    match view.dtype() {
        safetensors::Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::F16 => view
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        d => panic!("unexpected dtype {d}"),
    }
}

/// `(lora_B · lora_A)ᵀ` in f64 against `effective_weight()` (f32 GEMM): within the f32
/// rounding of an `R`-term sum, bounded by `Σ_k |B_ok A_ki|`.
fn check_product(layer: &CompressedLayer, a: &[f32], b: &[f32], tol: f64) {
    let (r, ci, co) = (layer.rank(), layer.c_in(), layer.c_out());
    let w = layer.effective_weight();
    assert_eq!((w.nrows(), w.ncols()), (ci, co));
    for i in 0..ci {
        for o in 0..co {
            let (mut sum, mut mag) = (0f64, 0f64);
            for k in 0..r {
                let p = b[o * r + k] as f64 * a[k * ci + i] as f64;
                sum += p;
                mag += p.abs();
            }
            let got = w[(i, o)] as f64;
            assert!(
                (got - sum).abs() <= tol * mag + 1e-30,
                "({i}, {o}): effective {got} vs LoRA {sum} (scale {mag})"
            );
        }
    }
}

#[test]
fn export_reproduces_effective_weights_and_config() {
    let pack = pack();
    let dir = tempfile::tempdir().unwrap();
    let opts = PeftOptions {
        base_model_name_or_path: "/models/merged".into(),
        target_engine_rank_cap: Some(5),
        ..PeftOptions::default()
    };
    let report = export_peft(&pack, dir.path(), &opts).unwrap();
    assert_eq!(report.config_path, dir.path().join(ADAPTER_CONFIG_FILE));
    assert_eq!(report.not_exported, vec!["model.norm.weight".to_string()]);
    // Ranks 6, 6, 3, 6, 1: the most common is 6, which exceeds the cap of 5 three times.
    assert_eq!(report.r, 6);
    assert_eq!(report.warnings.len(), 3, "{:?}", report.warnings);
    assert!(report.warnings.iter().all(|w| w.contains("rank 6")));

    let bytes = std::fs::read(dir.path().join(ADAPTER_MODEL_FILE)).unwrap();
    assert_eq!(bytes.len() as u64, report.weights_bytes);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 2 * pack.layers.len());
    for (module, entry) in &pack.layers {
        let l = &entry.layer;
        let a = st
            .tensor(&format!("base_model.model.{module}.lora_A.weight"))
            .unwrap();
        let b = st
            .tensor(&format!("base_model.model.{module}.lora_B.weight"))
            .unwrap();
        assert_eq!(a.shape(), [l.rank(), l.c_in()]);
        assert_eq!(b.shape(), [l.c_out(), l.rank()]);
        assert_eq!(a.dtype(), safetensors::Dtype::F32);
        let (a, b) = (f32s(&a), f32s(&b));
        check_product(l, &a, &b, 1e-5);
        // lora_A is exactly s⁻¹ ⊙ (code · σ_A), lora_B exactly code · σ_B.
        let (ci, r) = (l.c_in(), l.rank());
        for k in 0..r {
            for i in 0..ci {
                let code = l.a().codes[k * ci + i] as f32 * l.a().scales[0];
                let s = l.s_inv().map_or(1.0, |s| s[i]);
                assert_eq!(a[k * ci + i].to_bits(), (s * code).to_bits());
            }
        }
        for o in 0..l.c_out() {
            for k in 0..r {
                assert_eq!(b[o * r + k], l.b().codes[o * r + k] as f32 * l.b_scale(o));
            }
        }
    }

    let cfg: Value = serde_json::from_slice(&std::fs::read(&report.config_path).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 6);
    assert_eq!(cfg["lora_alpha"], 6);
    assert_eq!(cfg["base_model_name_or_path"], "/models/merged");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["lora_dropout"], 0.0);
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["init_lora_weights"], true);
    assert!(cfg["modules_to_save"].is_null());
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["down_proj", "gate_proj", "q_proj"])
    );
    // Every layer's effective rank and alpha (pattern, else default) equals its rank, so
    // the LoRA scaling alpha / r is 1 everywhere.
    for (module, entry) in &pack.layers {
        let rank = cfg["rank_pattern"]
            .get(module)
            .map_or(cfg["r"].as_u64().unwrap(), |v| v.as_u64().unwrap());
        let alpha = cfg["alpha_pattern"]
            .get(module)
            .map_or(cfg["lora_alpha"].as_u64().unwrap(), |v| v.as_u64().unwrap());
        assert_eq!(rank as usize, entry.layer.rank(), "{module}");
        assert_eq!(alpha, rank, "{module}");
    }
    assert_eq!(cfg["rank_pattern"].as_object().unwrap().len(), 2);
}

#[test]
fn f16_export_and_default_cap() {
    let pack = pack();
    let dir = tempfile::tempdir().unwrap();
    let report = export_peft(
        &pack,
        dir.path(),
        &PeftOptions {
            dtype: PeftDtype::F16,
            ..PeftOptions::default()
        },
    )
    .unwrap();
    assert!(report.warnings.is_empty(), "vLLM's cap is 512");
    let bytes = std::fs::read(dir.path().join(ADAPTER_MODEL_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (module, entry) in &pack.layers {
        let a = st
            .tensor(&format!("base_model.model.{module}.lora_A.weight"))
            .unwrap();
        let b = st
            .tensor(&format!("base_model.model.{module}.lora_B.weight"))
            .unwrap();
        assert_eq!(a.dtype(), safetensors::Dtype::F16);
        // f16 rounding of both factors: relative 2⁻¹⁰ each.
        check_product(&entry.layer, &f32s(&a), &f32s(&b), 2e-3);
    }
}

#[test]
fn lora_factors_match_the_export_and_empty_packs_are_refused() {
    let pack = pack();
    let f = lora_factors(&pack.layers["model.layers.2.mlp.gate_proj"].layer);
    assert_eq!((f.rank, f.c_in, f.c_out), (1, 5, 4));
    let empty = Skillpack::new(meta("empty"));
    let dir = tempfile::tempdir().unwrap();
    let e = export_peft(&empty, dir.path(), &PeftOptions::default()).unwrap_err();
    assert!(
        matches!(e, skillzip_format::Error::InvalidField { .. }),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
