//! Fixtures shared by the integration tests: real compressed layers and small skillpacks.
#![allow(dead_code)]

use std::collections::BTreeMap;

use faer::Mat;
use serde_json::json;
use skillzip_core::compress::{
    BitConfig, CalibrationData, CompressConfig, Compressed, ScaleMode, compress,
};
use skillzip_core::layer::{CompressedLayer, Truncation};
use skillzip_core::quant::{ActScale, Bits};
use skillzip_core::seeded_rng;
use skillzip_core::synth::{ActivationModel, RandomLayer, Splits, power_law_matrix, random_layer};
use skillzip_format::{
    BaseModel, DenseDtype, DenseTensor, LayerEntry, LayerReport, Skillpack, SkillpackMeta,
};

pub const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn meta(skill: &str) -> SkillpackMeta {
    let config = json!({"method": "X8A8B8", "seed": 7, "policy": {"rank": "fixed", "r": 4},
                        "big": u64::MAX, "frac": 0.1});
    SkillpackMeta {
        skill: skill.into(),
        base: BaseModel {
            architecture: "llama".into(),
            backbone_hash: HASH.into(),
        },
        config: config.as_object().unwrap().clone(),
    }
}

/// A real compressed layer of a `c_in × c_out` power-law delta.
pub fn compressed(c_in: usize, c_out: usize, cfg: &CompressConfig, seed: u64) -> Compressed {
    let delta: Mat<f32> = power_law_matrix(c_in, c_out, 0.5, 1.0, seed);
    let model = ActivationModel::new(c_in, 8, 2, 30.0, seed + 1);
    let splits = Splits::draw(&model, (96, 32, 8), seed + 2);
    let data = CalibrationData {
        calibration: splits.calibration.as_ref(),
        selection: splits.selection.as_ref(),
    };
    compress(delta.as_ref(), &data, cfg).expect("compress")
}

pub fn cfg(rank: usize, bits: BitConfig, smooth: bool, static_modes: bool) -> CompressConfig {
    let mode = if static_modes {
        ScaleMode::Static { percentile: 99.0 }
    } else {
        ScaleMode::Dynamic
    };
    CompressConfig {
        bits,
        smooth,
        rotation_candidates: 2,
        activation: mode,
        truncation: mode,
        ..CompressConfig::skillzip(rank)
    }
}

pub fn random(spec: &RandomLayer, seed: u64) -> CompressedLayer {
    random_layer(spec, &mut seeded_rng(seed)).expect("random layer")
}

pub fn spec(c_in: usize, rank: usize, c_out: usize, a: Bits, b: Bits) -> RandomLayer {
    RandomLayer {
        a_bits: a,
        b_bits: b,
        ..RandomLayer::x8a8b8(c_in, rank, c_out)
    }
}

/// A small skillpack: an INT8 layer with static modes (M near u64::MAX), an INT4 layer with
/// odd C_i and odd R and no smoothing, a per-tensor-B layer, and F16/F32/BF16 dense tensors.
pub fn small_pack() -> Skillpack {
    let mut pack = Skillpack::new(meta("math"));
    let l0 = random(
        &RandomLayer {
            act_scale: ActScale::Static { amax: 3.25 },
            truncation: Truncation::Static { m: u64::MAX - 1 },
            ..RandomLayer::x8a8b8(12, 3, 10)
        },
        1,
    );
    let l1 = random(
        &RandomLayer {
            smoothing: false,
            ..spec(9, 5, 7, Bits::Int4, Bits::Int4)
        },
        2,
    );
    let l2 = random(
        &RandomLayer {
            b_per_channel: false,
            act_bits: Bits::Int4,
            ..spec(8, 2, 6, Bits::Int4, Bits::Int8)
        },
        3,
    );
    pack.layers.insert(
        "model.layers.0.mlp.down_proj".into(),
        LayerEntry {
            layer: l0,
            report: Some(LayerReport {
                alpha: Some(0.35),
                rel_output_error: Some(0.125),
                rel_weight_error: Some(1.0 / 3.0),
                bytes: Some(123),
            }),
        },
    );
    pack.layers.insert(
        "model.layers.0.self_attn.q_proj".into(),
        LayerEntry {
            layer: l1,
            report: Some(LayerReport::default()),
        },
    );
    pack.layers.insert(
        "model.layers.1.self_attn.q_proj".into(),
        LayerEntry {
            layer: l2,
            report: None,
        },
    );
    pack.dense.insert(
        "model.norm.weight".into(),
        DenseTensor::new(vec![4], vec![1.0, -0.5, 0.25, 65504.0], DenseDtype::F16).unwrap(),
    );
    pack.dense.insert(
        "lm_head.bias".into(),
        DenseTensor::new(
            vec![2, 3],
            vec![0.1, 0.2, -0.3, 1e-30, 3e38, 0.0],
            DenseDtype::F32,
        )
        .unwrap(),
    );
    pack.dense.insert(
        "model.embed_tokens.weight".into(),
        DenseTensor::new(
            vec![2, 2],
            vec![1.5, -2.0, 0.0078125, 17179869184.0],
            DenseDtype::BF16,
        )
        .unwrap(),
    );
    pack
}

pub fn dense_map(pack: &Skillpack) -> BTreeMap<String, DenseTensor> {
    pack.dense.clone()
}

/// The header JSON of a safetensors file and the offset of its data section.
pub fn header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// The byte range of a tensor's data in the file.
pub fn tensor_range(bytes: &[u8], tensor: &str) -> (usize, usize) {
    let (h, data) = header(bytes);
    let off = h[tensor]["data_offsets"].as_array().unwrap();
    (
        data + off[0].as_u64().unwrap() as usize,
        data + off[1].as_u64().unwrap() as usize,
    )
}

/// `(stored, recomputed)` checksum of a skillpack, recomputed from the stream the crate
/// documents, independently of its code.
pub fn documented_checksum(bytes: &[u8]) -> (String, String) {
    use sha2::{Digest, Sha256};
    let (header, data_start) = header(bytes);
    let data = &bytes[data_start..];
    let meta_text = header["__metadata__"]["skillzip"].as_str().unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(meta_text).unwrap();
    let stored = meta.as_object_mut().unwrap().remove("checksum").unwrap();
    let mut names: Vec<&String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .collect();
    names.sort();
    let lp = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let mut h = Sha256::new();
    h.update(b"skillzip.skillpack.checksum.v1\0");
    h.update((names.len() as u64).to_le_bytes());
    for name in names {
        let info = &header[name];
        lp(&mut h, name.as_bytes());
        lp(&mut h, info["dtype"].as_str().unwrap().as_bytes());
        let shape = info["shape"].as_array().unwrap();
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update(d.as_u64().unwrap().to_le_bytes());
        }
        let off = info["data_offsets"].as_array().unwrap();
        let (s, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        lp(&mut h, &data[s..e]);
    }
    // serde_json's default map is sorted and `to_string` is compact: the canonical form for
    // this metadata (no floats that print differently).
    lp(&mut h, serde_json::to_string(&meta).unwrap().as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (
        stored.as_str().unwrap().to_string(),
        format!("sha256:{hex}"),
    )
}

/// Rewrites the stored checksum (same length) to match the content.
pub fn fix_checksum(bytes: &mut [u8]) {
    let (stored, computed) = documented_checksum(bytes);
    let pos = bytes
        .windows(stored.len())
        .position(|w| w == stored.as_bytes())
        .unwrap();
    bytes[pos..pos + computed.len()].copy_from_slice(computed.as_bytes());
}

/// A tensor as `rebuild` edits it.
pub type RawTensor = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Re-assembles a skillpack file after editing its `skillzip` metadata JSON, its other
/// `__metadata__` keys and its tensors, then fixes the checksum (if one is present) so only
/// the validation under test can object.
pub fn rebuild(
    bytes: &[u8],
    edit_meta: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    edit_extra: impl FnOnce(&mut std::collections::HashMap<String, String>),
    edit_tensors: impl FnOnce(&mut BTreeMap<String, RawTensor>),
) -> Vec<u8> {
    let (h, data_start) = header(bytes);
    let mut tensors: BTreeMap<String, RawTensor> = BTreeMap::new();
    let mut extra = std::collections::HashMap::new();
    for (name, info) in h.as_object().unwrap() {
        if name == "__metadata__" {
            for (k, v) in info.as_object().unwrap() {
                extra.insert(k.clone(), v.as_str().unwrap().to_string());
            }
            continue;
        }
        let dtype: safetensors::Dtype = serde_json::from_value(info["dtype"].clone()).unwrap();
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).unwrap();
        let off = info["data_offsets"].as_array().unwrap();
        let (s, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        tensors.insert(
            name.clone(),
            (dtype, shape, bytes[data_start + s..data_start + e].to_vec()),
        );
    }
    let mut meta: serde_json::Value = serde_json::from_str(&extra["skillzip"]).unwrap();
    let checksum_before = meta.get("checksum").cloned();
    edit_meta(meta.as_object_mut().unwrap());
    // An edit of the checksum itself is the point of the test: keep it.
    let fix = checksum_before.is_some() && meta.get("checksum") == checksum_before.as_ref();
    extra.insert("skillzip".into(), serde_json::to_string(&meta).unwrap());
    edit_extra(&mut extra);
    edit_tensors(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let has_skillzip = extra.contains_key("skillzip");
    let mut out = safetensors::serialize(views, Some(extra)).unwrap();
    if fix && has_skillzip {
        fix_checksum(&mut out);
    }
    out
}
