//! `compress_model` turns a tiny base model and fine-tunes of it (low-rank-plus-noise deltas on
//! the linears, written as safetensors checkpoints) into a bundle: the rank policies, the
//! held-out fidelity it reports (recomputed here from the skillpacks it wrote), the shared
//! component and the backbone hash, the dense-parameter policies and its input errors.
//! `SkillpackHook` adds exactly a skillpack layer's runtime output to its own linear.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use common::fixture::{Fixture, NORM, fixture, linears, paper, save_values};
use common::{logits_all, logits_with, param_values, tokens};
use faer::Mat;
use half::f16;
use rand_distr::{Distribution, Normal};
use skillzip_core::compress::CompressConfig;
use skillzip_core::merge::{MergeConfig, MergeMethod, ModelParams};
use skillzip_core::metrics::relative_error;
use skillzip_core::runtime::{Scratch, apply, apply_batched};
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_format::bundle::Bundle;
use skillzip_format::dense::DenseDtype;
use skillzip_format::digest::backbone_hash;
use skillzip_format::skillpack::{BaseModel, LayerEntry, Skillpack, SkillpackMeta};
use skillzip_lm::Error;
use skillzip_lm::calibrate::{
    CalibrationFile, CalibrationSource, InputSite, SkillCalibration, Split,
};
use skillzip_lm::checkpoint::{LinearKind, TensorRole, tensor_specs};
use skillzip_lm::compress::{
    BACKBONE_DELTA_FILE, CompressReport, DensePolicy, ModelCompressOptions, RankPolicy,
    SkillSource, compress_model, skillpack_file,
};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{LinearHook, Llama};
use skillzip_lm::skillpack::{SkillpackHook, bundle_model};

impl Fixture {
    /// Compresses every skill of the fixture into bundle `out`.
    fn run(&self, opts: &ModelCompressOptions, out: &str) -> (CompressReport, Bundle) {
        let out = self.out(out);
        let report = compress_model(&self.base, &self.sources(), opts, &out, &mut |_| {}).unwrap();
        (report, Bundle::open(&out).unwrap())
    }
}

/// A small, quick SkillZip configuration (2 rotation candidates, 3 α values).
fn layer_cfg() -> CompressConfig {
    let mut c = CompressConfig::skillzip(1);
    c.rotation_candidates = 2;
    c.alpha_grid = vec![0.0, 0.5, 1.0];
    c
}

fn options(policy: RankPolicy) -> ModelCompressOptions {
    ModelCompressOptions::new(layer_cfg(), policy)
}

/// The backbone hash of `θ_0 + shared` (F32 bytes), `shared` by tensor name (absent: zero).
fn hash_of_backbone(f: &Fixture, shared: &BTreeMap<String, Vec<f32>>) -> String {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tensor_specs(&f.config)
        .into_iter()
        .map(|(name, shape, _)| {
            let base = &f.base_values[&name].1;
            let bytes = match shared.get(&name) {
                Some(s) => base
                    .iter()
                    .zip(s)
                    .flat_map(|(b, s)| (b + s).to_le_bytes())
                    .collect(),
                None => base.iter().flat_map(|b| b.to_le_bytes()).collect(),
            };
            (name, shape, bytes)
        })
        .collect();
    backbone_hash(
        tensors
            .iter()
            .map(|(n, s, b)| (n.as_str(), "F32", s.as_slice(), b.as_slice())),
    )
    .unwrap()
}

/// Recomputes every record of `report` from the skillpacks in `bundle`: held-out relative
/// output error against the original delta with `shared` applied exactly, weight error, bytes.
fn check_records(
    f: &Fixture,
    report: &CompressReport,
    bundle: &Bundle,
    shared: &BTreeMap<String, Vec<f32>>,
) -> Vec<f64> {
    let mut errors = Vec::new();
    assert_eq!(
        report.layers.len(),
        linears(&f.config).len() * f.names.len()
    );
    for (k, skill) in f.names.iter().enumerate() {
        let pack = bundle.skillpack(skill).unwrap();
        assert_eq!(pack.layers.len(), linears(&f.config).len(), "{skill}");
        for (l, kind) in linears(&f.config) {
            let module = kind.module_name(l);
            let tensor = format!("{module}.weight");
            let (out, inp) = kind.shape(&f.config);
            let records: Vec<_> = report
                .layers
                .iter()
                .filter(|r| r.module == module && &r.skill == skill)
                .collect();
            assert_eq!(records.len(), 1, "{skill} {module}: one record");
            let rec = records[0];
            let entry = &pack.layers[&module];
            let layer = &entry.layer;
            assert_eq!((layer.c_in(), layer.c_out()), (inp, out), "{module}");
            assert_eq!(rec.rank, layer.rank());
            assert_eq!(rec.bytes, layer.storage_bytes());
            let x = f.cals[k].get(l, kind, Split::HeldOut).unwrap().rows.clone();
            assert_eq!(rec.heldout_rows, x.nrows());
            let delta = paper(&f.delta(k, &tensor), out, inp);
            let s = shared
                .get(&tensor)
                .map(|s| paper(s, out, inp))
                .unwrap_or_else(|| Mat::zeros(inp, out));
            let reference = &x * &delta;
            let estimate = &x * &s + apply_batched(layer, x.as_ref()).unwrap();
            let want = relative_error(reference.as_ref(), estimate.as_ref());
            assert!(
                (rec.rel_output_error - want).abs() <= 1e-9 * want,
                "{skill} {module}: reported held-out error {} vs recomputed {want}",
                rec.rel_output_error
            );
            let weight = relative_error(delta.as_ref(), (&s + layer.effective_weight()).as_ref());
            assert!((rec.rel_weight_error - weight).abs() <= 1e-9 * weight);
            let stored = entry.report.as_ref().unwrap();
            assert_eq!(stored.rel_output_error, Some(rec.rel_output_error));
            assert_eq!(stored.rel_weight_error, Some(rec.rel_weight_error));
            assert_eq!(stored.bytes, Some(rec.bytes as u64));
            assert_eq!(stored.alpha, rec.alpha);
            errors.push(want);
        }
    }
    errors
}

fn check_hashes(f: &Fixture, report: &CompressReport, bundle: &Bundle, want: &str) {
    assert_eq!(report.backbone_hash, want, "report");
    assert_eq!(bundle.manifest().base.backbone_hash, want, "manifest");
    for skill in &f.names {
        let pack = bundle.skillpack(skill).unwrap();
        assert_eq!(pack.meta.base.backbone_hash, want, "skillpack {skill}");
    }
}

#[test]
fn fixed_rank_bundle_and_held_out_errors_recomputed_from_the_skillpacks() {
    let f = fixture(2, false);
    let (report, bundle) = f.run(&options(RankPolicy::Fixed(4)), "fixed");
    let out = f.out("fixed");
    assert!(out.join("manifest.json").is_file());
    assert!(
        !out.join(BACKBONE_DELTA_FILE).exists(),
        "no merge, nothing dense in the backbone"
    );
    assert!(bundle.manifest().backbone_delta.is_none());
    let names: Vec<&str> = bundle.skill_names().collect();
    assert_eq!(names, ["arith", "caps"]);
    for (skill, file, bytes) in &report.skillpacks {
        assert_eq!(file, &skillpack_file(skill));
        assert_eq!(*bytes, std::fs::metadata(out.join(file)).unwrap().len());
    }
    assert_eq!(report.skillpacks.len(), 2);
    for r in &report.layers {
        assert_eq!(r.rank, 4, "{} {}", r.skill, r.module);
    }
    let errors = check_records(&f, &report, &bundle, &BTreeMap::new());
    for e in &errors {
        assert!(
            *e < 0.5,
            "rank 4 covers the rank-4 part of each delta: error {e}"
        );
    }
    assert!(report.dense.is_empty() && report.dropped.is_empty());
    check_hashes(
        &f,
        &report,
        &bundle,
        &hash_of_backbone(&f, &BTreeMap::new()),
    );
}

/// `‖a − b‖ / ‖b‖`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn full_rank_skillpack_on_the_backbone_reproduces_the_fine_tune() {
    let f = fixture(1, false);
    let (report, bundle) = f.run(&options(RankPolicy::Fixed(1000)), "full");
    for (l, kind) in linears(&f.config) {
        let (out, inp) = kind.shape(&f.config);
        let r = report
            .layers
            .iter()
            .find(|r| r.module == kind.module_name(l))
            .unwrap();
        assert_eq!(r.rank, out.min(inp), "rank capped at min(C_i, C_o)");
    }
    let base = Llama::from_checkpoint(&f.base).unwrap();
    let tuned = Llama::from_checkpoint(&f.tuned[0]).unwrap();
    let (backbone, hook) = bundle_model(&f.base, &bundle, None).unwrap();
    assert!(hook.is_none());
    let (model, hook) = bundle_model(&f.base, &bundle, Some("arith")).unwrap();
    let mut hook = hook.unwrap();
    assert_eq!(hook.len(), linears(&f.config).len());
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| tokens(9, 96, 40 + i)).collect();
    for p in &prompts {
        let want = logits_all(&tuned, &[p]);
        let plain = logits_all(&base, &[p]);
        // No backbone delta: the backbone alone is the base model.
        assert_eq!(logits_all(&backbone, &[p]), plain);
        assert_eq!(logits_all(&model, &[p]), plain);
        let packed = logits_with(&model, &[p], &mut hook);
        let (e_pack, e_base) = (rel(&packed, &want), rel(&plain, &want));
        assert!(
            e_pack < 0.2 * e_base,
            "logit error with the skillpack {e_pack} vs the base's {e_base}"
        );
    }
}

/// The backbone delta of a bundle by tensor name.
fn backbone_delta(bundle: &Bundle) -> BTreeMap<String, Vec<f32>> {
    bundle
        .backbone_delta()
        .unwrap()
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect()
}

#[test]
fn merged_shared_component_goes_to_the_backbone_and_into_its_hash() {
    let f = fixture(2, false);
    let mut opts = options(RankPolicy::Fixed(4));
    opts.merge = Some(MergeConfig::new(
        MergeMethod::TaskArithmetic,
        vec![ModelParams::new(0.5); 2],
    ));
    for (dtype, out) in [(DenseDtype::F32, "merged"), (DenseDtype::F16, "merged16")] {
        opts.backbone_dtype = dtype;
        let (report, bundle) = f.run(&opts, out);
        assert!(f.out(out).join(BACKBONE_DELTA_FILE).is_file());
        let delta = backbone_delta(&bundle);
        let linear_names: Vec<String> = linears(&f.config)
            .iter()
            .map(|(l, k)| format!("{}.weight", k.module_name(*l)))
            .collect();
        let mut names: Vec<String> = delta.keys().cloned().collect();
        let mut want_names = linear_names.clone();
        names.sort();
        want_names.sort();
        assert_eq!(
            names, want_names,
            "{dtype:?}: the backbone delta holds the linears"
        );
        for name in &linear_names {
            let (a, b) = (f.delta(0, name), f.delta(1, name));
            for (i, s) in delta[name].iter().enumerate() {
                let mean = 0.5 * a[i] + 0.5 * b[i];
                let tol = match dtype {
                    DenseDtype::F32 => 1e-6 * (a[i].abs() + b[i].abs()),
                    _ => 1e-3 * mean.abs() + 1e-7,
                };
                assert!(
                    (s - mean).abs() <= tol,
                    "{dtype:?} {name}[{i}]: shared {s} vs mean of the deltas {mean}"
                );
            }
        }
        assert_eq!(
            report.backbone_delta_bytes,
            Some(
                std::fs::metadata(f.out(out).join(BACKBONE_DELTA_FILE))
                    .unwrap()
                    .len()
            )
        );
        // The skillpacks apply to θ_0 + Δ_shared as the bundle stores it.
        check_hashes(&f, &report, &bundle, &hash_of_backbone(&f, &delta));
        // Fidelity is against the original delta, with the stored shared part.
        let errors = check_records(&f, &report, &bundle, &delta);
        assert!(errors.iter().all(|e| *e < 0.5), "{dtype:?}: {errors:?}");
    }
}

#[test]
fn dense_deltas_are_stored_in_the_skillpack_or_merged_and_reported() {
    let f = fixture(2, true);
    let norm_delta = f.delta(0, NORM);
    assert!(norm_delta.iter().any(|v| *v != 0.0));

    // Skillpack(F16): only the changed tensor of the skill that changed it, F16-rounded.
    let (report, bundle) = f.run(&options(RankPolicy::Fixed(2)), "dense");
    let arith = bundle.skillpack("arith").unwrap();
    assert_eq!(arith.dense.keys().collect::<Vec<_>>(), [NORM]);
    let stored = &arith.dense[NORM];
    assert_eq!(stored.dtype, DenseDtype::F16);
    assert_eq!(stored.shape, [f.config.hidden_size]);
    let rounded: Vec<f32> = norm_delta
        .iter()
        .map(|v| f16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(stored.data, rounded);
    assert!(bundle.skillpack("caps").unwrap().dense.is_empty());
    assert_eq!(
        report.dense,
        [(
            "arith".to_string(),
            NORM.to_string(),
            2 * f.config.hidden_size
        )]
    );
    assert!(report.dropped.is_empty());
    assert!(bundle.manifest().backbone_delta.is_none());
    check_hashes(
        &f,
        &report,
        &bundle,
        &hash_of_backbone(&f, &BTreeMap::new()),
    );
    // Running the skill puts the rounded delta on the norm.
    let (model, _) = bundle_model(&f.base, &bundle, Some("arith")).unwrap();
    let norm = common::values(&model.parameters()[NORM]);
    let want: Vec<f32> = f.base_values[NORM]
        .1
        .iter()
        .zip(&rounded)
        .map(|(b, d)| b + d)
        .collect();
    assert_eq!(norm, want);

    // Backbone: nothing dense; the mean goes into the backbone, each residual is reported.
    let mut opts = options(RankPolicy::Fixed(2));
    opts.dense = DensePolicy::Backbone;
    let (report, bundle) = f.run(&opts, "dense-backbone");
    for skill in &f.names {
        assert!(bundle.skillpack(skill).unwrap().dense.is_empty(), "{skill}");
    }
    assert!(report.dense.is_empty());
    let delta = backbone_delta(&bundle);
    for (name, _, role) in tensor_specs(&f.config) {
        match role {
            TensorRole::Linear(..) => assert!(!delta.contains_key(&name), "{name}"),
            _ if name == NORM => {
                let half: Vec<f32> = norm_delta.iter().map(|v| v * 0.5).collect();
                common::assert_close(&delta[&name], &half, 1e-6, NORM);
            }
            _ => assert!(
                delta[&name].iter().all(|v| *v == 0.0),
                "{name} is unchanged"
            ),
        }
    }
    assert_eq!(report.dropped.len(), 2, "{:?}", report.dropped);
    let (skill, tensor, r) = &report.dropped[0];
    assert_eq!((skill.as_str(), tensor.as_str()), ("arith", NORM));
    assert!((r - 0.5).abs() < 1e-6, "arith keeps half of its delta: {r}");
    // caps never changed the norm, yet the merged backbone moves it by half of arith's
    // delta: its residual is not zero, relative to a zero delta.
    let (skill, tensor, r) = &report.dropped[1];
    assert_eq!((skill.as_str(), tensor.as_str()), ("caps", NORM));
    assert_eq!(
        *r,
        f64::INFINITY,
        "caps' residual relative to its zero delta"
    );
    check_hashes(&f, &report, &bundle, &hash_of_backbone(&f, &delta));
}

#[test]
fn a_saved_calibration_read_site_by_site_gives_the_same_bundle() {
    // What `skillzip compress` does: statistics from files, one site at a time.
    let f = fixture(2, false);
    let mut files = Vec::new();
    let mut loaded = Vec::new();
    for (k, cal) in f.cals.iter().enumerate() {
        let path = f.out(&format!("{}.calib.safetensors", f.names[k]));
        cal.save(&path).unwrap();
        files.push(CalibrationFile::open(&path).unwrap());
        loaded.push(SkillCalibration::load(&path).unwrap());
    }
    let opts = options(RankPolicy::Fixed(3));
    let sources: [Vec<&dyn CalibrationSource>; 2] = [
        files.iter().map(|c| c as &dyn CalibrationSource).collect(),
        loaded.iter().map(|c| c as &dyn CalibrationSource).collect(),
    ];
    let mut outs = Vec::new();
    for (i, cals) in sources.iter().enumerate() {
        let skills: Vec<SkillSource<'_>> = f
            .sources()
            .into_iter()
            .zip(cals)
            .map(|(s, c)| SkillSource {
                calibration: *c,
                ..s
            })
            .collect();
        let out = f.out(&format!("from-file-{i}"));
        compress_model(&f.base, &skills, &opts, &out, &mut |_| {}).unwrap();
        outs.push(out);
    }
    for file in [
        "manifest.json",
        "arith.skillpack.safetensors",
        "caps.skillpack.safetensors",
    ] {
        assert_eq!(
            std::fs::read(outs[0].join(file)).unwrap(),
            std::fs::read(outs[1].join(file)).unwrap(),
            "{file}"
        );
    }
}

fn ranks(report: &CompressReport) -> BTreeMap<(String, String), usize> {
    report
        .layers
        .iter()
        .map(|r| ((r.skill.clone(), r.module.clone()), r.rank))
        .collect()
}

#[test]
fn budget_and_energy_policies() {
    let f = fixture(1, false);
    let budget = 20_000u64;
    let (_, bundle) = f.run(&options(RankPolicy::Budget { bytes: budget }), "budget");
    let pack = bundle.skillpack("arith").unwrap();
    let total: usize = pack.layers.values().map(|e| e.layer.storage_bytes()).sum();
    assert!(
        total as u64 <= budget,
        "{total} bytes over a budget of {budget}"
    );
    assert!(
        2 * total as u64 >= budget,
        "{total} bytes use under half of {budget}"
    );

    let (high, _) = f.run(&options(RankPolicy::Energy(0.99)), "energy99");
    let (low, _) = f.run(&options(RankPolicy::Energy(0.5)), "energy50");
    let (high, low) = (ranks(&high), ranks(&low));
    assert_eq!(high.len(), linears(&f.config).len());
    for (key, r) in &high {
        assert!(
            *r >= low[key],
            "{key:?}: rank {r} at 0.99 < {} at 0.5",
            low[key]
        );
    }
    assert!(high.iter().any(|(k, r)| *r > low[k]), "{high:?} vs {low:?}");
    // Each rank is the smallest keeping the fraction of Σσ² (singular values in f64).
    for (l, kind) in linears(&f.config) {
        let (out, inp) = kind.shape(&f.config);
        let d = f.delta(0, &format!("{}.weight", kind.module_name(l)));
        let m = Mat::<f64>::from_fn(inp, out, |i, o| d[o * inp + i] as f64);
        let s = m.singular_values().unwrap();
        let total: f64 = s.iter().map(|v| v * v).sum();
        for (fraction, got) in [(0.99, &high), (0.5, &low)] {
            let mut acc = 0.0;
            let want = s
                .iter()
                .position(|v| {
                    acc += v * v;
                    acc >= fraction * total
                })
                .unwrap()
                + 1;
            let key = ("arith".to_string(), kind.module_name(l));
            assert_eq!(got[&key], want, "{key:?} at {fraction}");
        }
    }
}

/// Nothing under `out` (it may not exist).
fn assert_nothing_written(out: &Path, what: &str) {
    assert!(
        !out.join("manifest.json").exists(),
        "{what}: a manifest was written"
    );
    if out.exists() {
        let left: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
    }
}

#[test]
fn invalid_inputs_are_typed_errors_and_leave_no_bundle() {
    let f = fixture(2, false);
    let sources = f.sources();
    let opts = options(RankPolicy::Fixed(2));
    let run = |skills: &[SkillSource<'_>], opts: &ModelCompressOptions, out: &str| {
        let out = f.out(out);
        let r = compress_model(&f.base, skills, opts, &out, &mut |_| {});
        (r, out)
    };
    let renamed = |name: &'static str| SkillSource { name, ..sources[0] };
    let cases: Vec<(&str, Vec<SkillSource<'_>>)> = vec![
        ("no skills", vec![]),
        (
            "a duplicate name",
            vec![
                sources[0],
                SkillSource {
                    name: "arith",
                    ..sources[1]
                },
            ],
        ),
        ("a path as a name", vec![renamed("../x")]),
        ("an empty name", vec![renamed("")]),
        ("a hidden name", vec![renamed(".x")]),
        ("a slash", vec![renamed("a/b")]),
    ];
    for (i, (what, skills)) in cases.iter().enumerate() {
        let (r, out) = run(skills, &opts, &format!("bad{i}"));
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{what}: {r:?}");
        assert_nothing_written(&out, what);
    }
    // Merge and policy parameters.
    let mut bad = opts.clone();
    bad.merge = Some(MergeConfig::new(
        MergeMethod::TaskArithmetic,
        vec![ModelParams::new(1.0)],
    ));
    let (r, out) = run(&sources, &bad, "merge-count");
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    assert_nothing_written(&out, "merge count");
    for fraction in [0.0, 1.5, f64::NAN] {
        let (r, out) = run(&sources, &options(RankPolicy::Energy(fraction)), "energy");
        assert!(
            matches!(r, Err(Error::InvalidInput(_))),
            "{fraction}: {r:?}"
        );
        assert_nothing_written(&out, "energy fraction");
    }

    // Another architecture.
    let other_config = LlamaConfig {
        intermediate_size: 64,
        ..f.config.clone()
    };
    let other = Llama::random(other_config.clone(), 5, 1.0).unwrap();
    let other = save_values(&f.out("other-model"), &other_config, &param_values(&other));
    let (r, out) = run(
        &[SkillSource {
            checkpoint: &other,
            ..sources[1]
        }],
        &opts,
        "arch",
    );
    match r {
        Err(Error::ArchitectureMismatch { what }) => {
            assert!(what.contains("intermediate_size"), "{what}")
        }
        other => panic!("another architecture: {other:?}"),
    }
    assert_nothing_written(&out, "architecture");

    // A calibration without one site of the last block (found only when the walk gets there),
    // with and without the streamed backbone delta in progress; and rows of the wrong width.
    let mut missing = f.cals[1].clone();
    assert!(
        missing
            .sites
            .remove(&(1, InputSite::MlpMid, Split::Selection))
            .is_some()
    );
    let mut narrow = f.cals[1].clone();
    let s = narrow
        .sites
        .get_mut(&(0, InputSite::AttnOut, Split::Calibration))
        .unwrap();
    s.rows = Mat::zeros(s.rows.nrows(), 8);
    let mut merged = opts.clone();
    merged.merge = Some(MergeConfig::new(
        MergeMethod::TaskArithmetic,
        vec![ModelParams::new(0.5); 2],
    ));
    for (what, cal) in [("missing site", &missing), ("narrow rows", &narrow)] {
        for (j, o) in [&opts, &merged].into_iter().enumerate() {
            let skills = [
                sources[0],
                SkillSource {
                    calibration: cal as &dyn CalibrationSource,
                    ..sources[1]
                },
            ];
            let (r, out) = run(&skills, o, &format!("{what}-{j}"));
            match r {
                Err(Error::InvalidInput(msg)) => assert!(msg.contains("caps"), "{what}: {msg}"),
                other => panic!("{what}: {other:?}"),
            }
            assert_nothing_written(&out, what);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SkillpackHook.

fn pack_with(layers: Vec<(String, skillzip_core::layer::CompressedLayer)>) -> Skillpack {
    let mut pack = Skillpack::new(SkillpackMeta {
        skill: "s".into(),
        base: BaseModel {
            architecture: "llama".into(),
            backbone_hash: "0".repeat(64),
        },
        config: Default::default(),
    });
    for (name, layer) in layers {
        pack.layers.insert(
            name,
            LayerEntry {
                layer,
                report: None,
            },
        );
    }
    pack
}

fn layer_of(c_in: usize, c_out: usize, seed: u64) -> skillzip_core::layer::CompressedLayer {
    let mut rng = skillzip_core::seeded_rng(seed);
    random_layer(&RandomLayer::x8a8b8(c_in, 4, c_out), &mut rng).unwrap()
}

#[test]
fn a_skillpack_layer_that_is_not_a_linear_of_the_model_is_rejected() {
    let config = LlamaConfig::tiny();
    let (out, inp) = LinearKind::Down.shape(&config);
    for name in [
        "model.layers.2.mlp.down_proj",
        "model.layers.0.mlp.fc1",
        "lm_head",
        "model.layers.x.mlp.down_proj",
    ] {
        let pack = pack_with(vec![(name.to_string(), layer_of(inp, out, 1))]);
        match SkillpackHook::new(&pack, &config) {
            Err(Error::InvalidInput(msg)) => assert!(msg.contains(name), "{msg}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Transposed shape, and the shape of another linear.
    for (c_in, c_out) in [(out, inp), (inp, inp)] {
        let pack = pack_with(vec![(
            "model.layers.1.mlp.down_proj".into(),
            layer_of(c_in, c_out, 2),
        )]);
        match SkillpackHook::new(&pack, &config) {
            Err(Error::TensorShape {
                tensor,
                expected,
                got,
                ..
            }) => {
                assert_eq!(tensor, "model.layers.1.mlp.down_proj");
                assert_eq!((expected, got), (vec![inp, out], vec![c_in, c_out]));
            }
            other => panic!("{c_in}×{c_out}: {other:?}"),
        }
    }
    let empty = SkillpackHook::new(&pack_with(vec![]), &config).unwrap();
    assert!(empty.is_empty());
}

/// Adds `runtime::apply` of one layer to one linear (the reference of the hook).
struct Reference {
    at: (usize, LinearKind),
    layer: skillzip_core::layer::CompressedLayer,
    calls: usize,
}

impl LinearHook for Reference {
    fn extra(
        &mut self,
        layer: usize,
        kind: LinearKind,
        x: &Tensor,
    ) -> skillzip_lm::Result<Option<Tensor>> {
        if (layer, kind) != self.at {
            return Ok(None);
        }
        self.calls += 1;
        let (rows, _) = x.dims2()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; rows * self.layer.c_out()];
        apply(&self.layer, &xs, &mut y, &mut Scratch::default())?;
        Ok(Some(Tensor::from_vec(
            y,
            (rows, self.layer.c_out()),
            x.device(),
        )?))
    }
}

#[test]
fn a_hook_with_one_layer_adds_exactly_its_runtime_output_to_that_linear() {
    let config = LlamaConfig::tiny();
    let model = Llama::random(config.clone(), 23, 5.0).unwrap();
    let at = (1, LinearKind::Up);
    let (out, inp) = at.1.shape(&config);
    let layer = layer_of(inp, out, 9);
    let mut hook = SkillpackHook::new(
        &pack_with(vec![(at.1.module_name(at.0), layer.clone())]),
        &config,
    )
    .unwrap();
    assert_eq!(hook.len(), 1);

    // Called directly: the layer's rows get `runtime::apply` bit for bit, every other linear
    // nothing.
    let mut rng = skillzip_core::seeded_rng(4);
    let n = Normal::new(0.0f32, 1.0).unwrap();
    for (l, kind) in linears(&config) {
        let (_, width) = kind.shape(&config);
        let xs: Vec<f32> = (0..5 * width).map(|_| n.sample(&mut rng)).collect();
        let x = Tensor::from_vec(xs.clone(), (5, width), &candle_core::Device::Cpu).unwrap();
        let got = hook.extra(l, kind, &x).unwrap();
        if (l, kind) == at {
            let mut want = vec![0f32; 5 * out];
            apply(&layer, &xs, &mut want, &mut Scratch::default()).unwrap();
            common::assert_bits(&common::values(&got.unwrap()), &want, "hook output");
        } else {
            assert!(got.is_none(), "({l}, {kind:?}) got an output");
        }
    }

    // In the model: the same logits as adding `runtime::apply` to that linear only, and not
    // the backbone's.
    let seq = tokens(8, 96, 5);
    let mut reference = Reference {
        at,
        layer,
        calls: 0,
    };
    let want = logits_with(&model, &[&seq], &mut reference);
    assert_eq!(reference.calls, 1);
    let got = logits_with(&model, &[&seq], &mut hook);
    common::assert_bits(&got, &want, "logits");
    assert_ne!(got, logits_all(&model, &[&seq]));
}
