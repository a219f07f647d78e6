//! `calibrate` (block by block) keeps exactly the statistics a direct forward pass of the
//! whole model sees, per (block, input site, split); splits are disjoint by prompt; saved
//! statistics read back equal, whole or one site at a time, and foreign or truncated files
//! are typed errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use common::{ids, tokens};
use skillzip_lm::Error;
use skillzip_lm::calibrate::{
    CalibrationFile, CalibrationOptions, CalibrationSource, InputSite, SiteStats, SkillCalibration,
    Split, calibrate, split_of,
};
use skillzip_lm::checkpoint::{Checkpoint, LinearKind};
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::{LinearHook, Llama, Logits};
use skillzip_lm::save::{SaveOptions, save_tensors};

/// A tiny random model saved as a safetensors checkpoint in `dir`.
fn tiny_checkpoint(dir: &Path) -> Checkpoint {
    let model = Llama::random(LlamaConfig::tiny(), 17, 5.0).unwrap();
    save_tensors(
        dir,
        model.config(),
        model.parameters(),
        SaveOptions::default(),
    )
    .unwrap();
    Checkpoint::open(dir).unwrap()
}

/// Seven prompts of different lengths (splits: H S C C C H S), each over its own range of
/// token ids so that rows of different prompts differ.
fn prompts() -> Vec<Vec<u32>> {
    [5usize, 3, 8, 1, 6, 4, 7]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            tokens(n, 12, i as u32)
                .into_iter()
                .map(|t| t + 12 * i as u32)
                .collect()
        })
        .collect()
}

type Key = (usize, InputSite, Split);

/// Records the input rows of every linear, keyed by (block, site, split), per prompt.
struct Recorder {
    split: Split,
    prompt: usize,
    rows: BTreeMap<Key, Vec<(usize, Vec<f32>)>>,
    /// q/k/v (and gate/up) must read the same rows: (block, kind) → rows of the last call.
    last: BTreeMap<(usize, LinearKind), Vec<f32>>,
}

impl LinearHook for Recorder {
    fn observe(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> skillzip_lm::Result<()> {
        let (r, c) = x.dims2()?;
        let data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        self.last.insert((layer, kind), data.clone());
        if matches!(
            kind,
            LinearKind::Q | LinearKind::O | LinearKind::Gate | LinearKind::Down
        ) {
            let entry = self
                .rows
                .entry((layer, InputSite::of(kind), self.split))
                .or_default();
            entry.extend((0..r).map(|t| (self.prompt, data[t * c..(t + 1) * c].to_vec())));
        }
        Ok(())
    }
}

/// Every row each (block, site, split) sees when the whole model runs prompt by prompt,
/// with the prompt it came from.
fn direct_rows(ckpt: &Checkpoint, prompts: &[Vec<u32>]) -> BTreeMap<Key, Vec<(usize, Vec<f32>)>> {
    let model = Llama::from_checkpoint(ckpt).unwrap();
    let mut rec = Recorder {
        split: Split::Calibration,
        prompt: 0,
        rows: BTreeMap::new(),
        last: BTreeMap::new(),
    };
    for (i, p) in prompts.iter().enumerate() {
        rec.split = split_of(i);
        rec.prompt = i;
        model
            .forward(&ids(&[p]), None, Logits::All, &mut rec)
            .unwrap();
        for l in 0..model.config().num_hidden_layers {
            assert_eq!(rec.last[&(l, LinearKind::Q)], rec.last[&(l, LinearKind::K)]);
            assert_eq!(rec.last[&(l, LinearKind::Q)], rec.last[&(l, LinearKind::V)]);
            assert_eq!(
                rec.last[&(l, LinearKind::Gate)],
                rec.last[&(l, LinearKind::Up)]
            );
        }
    }
    rec.rows
}

fn bits(row: &[f32]) -> Vec<u32> {
    row.iter().map(|v| v.to_bits()).collect()
}

fn reservoir_rows(s: &SiteStats) -> Vec<Vec<u32>> {
    (0..s.rows.nrows())
        .map(|i| {
            (0..s.rows.ncols())
                .map(|j| s.rows[(i, j)].to_bits())
                .collect()
        })
        .collect()
}

fn all_keys(config: &LlamaConfig) -> Vec<Key> {
    let mut keys = Vec::new();
    for l in 0..config.num_hidden_layers {
        for site in InputSite::ALL {
            for split in Split::ALL {
                keys.push((l, site, split));
            }
        }
    }
    keys.sort();
    keys
}

fn opts(calibration: usize, selection: usize, heldout: usize) -> CalibrationOptions {
    CalibrationOptions {
        calibration_rows: calibration,
        selection_rows: selection,
        heldout_rows: heldout,
        seed: 3,
    }
}

fn cap(o: &CalibrationOptions, split: Split) -> usize {
    match split {
        Split::Calibration => o.calibration_rows,
        Split::Selection => o.selection_rows,
        Split::HeldOut => o.heldout_rows,
    }
}

#[test]
fn block_by_block_statistics_equal_a_direct_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(dir.path());
    let config = ckpt.config().clone();
    let prompts = prompts();
    let direct = direct_rows(&ckpt, &prompts);
    assert_eq!(
        direct.keys().copied().collect::<Vec<_>>(),
        all_keys(&config)
    );

    // Reservoirs larger than every split (34 tokens in all): they hold exactly every row.
    // Small reservoirs: a uniform sample of the rows, each one of them bit for bit.
    for o in [opts(1000, 1000, 1000), opts(5, 2, 3)] {
        let mut calls = Vec::new();
        let cal = calibrate(&ckpt, "arith", &prompts, o, &mut |b, n| calls.push((b, n))).unwrap();
        assert_eq!(calls, vec![(1, 2), (2, 2)], "progress after each block");
        assert_eq!(cal.skill, "arith");
        assert_eq!(
            cal.sites.keys().copied().collect::<Vec<_>>(),
            all_keys(&config)
        );
        for (key, s) in &cal.sites {
            let (l, site, split) = *key;
            let seen = &direct[key];
            let want_tokens: usize = prompts
                .iter()
                .enumerate()
                .filter(|(i, _)| split_of(*i) == split)
                .map(|(_, p)| p.len())
                .sum();
            assert_eq!(seen.len(), want_tokens, "{key:?}: rows the model saw");
            assert_eq!(s.tokens, want_tokens as u64, "{key:?}: tokens");
            let width = match site {
                InputSite::MlpMid => config.intermediate_size,
                _ => config.hidden_size,
            };
            assert_eq!(s.mean_abs.len(), width, "{key:?}");
            assert_eq!(s.rows.ncols(), width, "{key:?}");
            for (i, m) in s.mean_abs.iter().enumerate() {
                let want =
                    seen.iter().map(|(_, r)| r[i].abs() as f64).sum::<f64>() / seen.len() as f64;
                assert!(
                    (m - want).abs() <= 1e-5 * want.abs(),
                    "{key:?}: mean_abs[{i}] {m} vs direct {want}"
                );
            }
            let mut got = reservoir_rows(s);
            let mut all: Vec<Vec<u32>> = seen.iter().map(|(_, r)| bits(r)).collect();
            assert_eq!(
                got.len(),
                want_tokens.min(cap(&o, split)),
                "{key:?}: reservoir rows"
            );
            for (i, r) in got.iter().enumerate() {
                assert!(
                    all.contains(r),
                    "{key:?} (block {l}): reservoir row {i} is not a row the model saw"
                );
            }
            if cap(&o, split) >= want_tokens {
                got.sort();
                all.sort();
                assert_eq!(got, all, "{key:?}: a large reservoir holds every row once");
            }
        }
    }
}

#[test]
fn splits_are_disjoint_by_prompt() {
    // Every index is in one split; any 3 consecutive prompts from 0 cover all three.
    assert_eq!(
        [0, 1, 2].map(split_of),
        [Split::HeldOut, Split::Selection, Split::Calibration]
    );
    let count = |s: Split| (0..100).filter(|&i| split_of(i) == s).count();
    assert_eq!(count(Split::HeldOut), 20);
    assert_eq!(count(Split::Selection), 20);
    assert_eq!(count(Split::Calibration), 60);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(dir.path());
    let prompts = prompts();
    let direct = direct_rows(&ckpt, &prompts);
    let cal = calibrate(&ckpt, "s", &prompts, opts(1000, 1000, 1000), &mut |_, _| {}).unwrap();
    for ((l, site, split), s) in &cal.sites {
        // Rows of every prompt, labelled with the prompt's split: a reservoir row comes from a
        // prompt of its own split only (prompts use disjoint token ids, so rows differ).
        let mut from_other = 0;
        for other in Split::ALL.into_iter().filter(|o| o != split) {
            let rows: Vec<Vec<u32>> = direct[&(*l, *site, other)]
                .iter()
                .map(|(p, r)| {
                    assert_eq!(split_of(*p), other);
                    bits(r)
                })
                .collect();
            from_other += reservoir_rows(s)
                .iter()
                .filter(|r| rows.contains(r))
                .count();
        }
        assert_eq!(
            from_other, 0,
            "({l}, {site:?}, {split:?}) holds rows of other splits"
        );
    }
    // The three splits' tokens add up to every token.
    for l in 0..2 {
        let total: u64 = Split::ALL
            .iter()
            .map(|s| cal.sites[&(l, InputSite::AttnIn, *s)].tokens)
            .sum();
        assert_eq!(total as usize, prompts.iter().map(Vec::len).sum::<usize>());
    }

    // Exactly three prompts are enough (one per split).
    let three = calibrate(&ckpt, "s", &prompts[..3], opts(8, 8, 8), &mut |_, _| {}).unwrap();
    for split in Split::ALL {
        let i = (0..3).find(|&i| split_of(i) == split).unwrap();
        assert_eq!(
            three.sites[&(0, InputSite::AttnIn, split)].tokens,
            prompts[i].len() as u64
        );
    }
}

#[test]
fn bad_prompts_are_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(dir.path());
    let good = prompts();
    let vocab = ckpt.config().vocab_size as u32;
    let max_pos = ckpt.config().max_position_embeddings;
    let mut empty = good.clone();
    empty[4].clear();
    let mut oov = good.clone();
    oov[2][1] = vocab;
    let mut long = good.clone();
    long[1] = vec![1; max_pos + 1];
    let cases: [(&str, Vec<Vec<u32>>); 5] = [
        ("no prompts", Vec::new()),
        ("two prompts", good[..2].to_vec()),
        ("an empty prompt", empty),
        ("an out-of-vocabulary id", oov),
        ("a prompt longer than the context", long),
    ];
    for (what, p) in cases {
        let mut calls = 0;
        match calibrate(&ckpt, "s", &p, opts(4, 4, 4), &mut |_, _| calls += 1) {
            Err(Error::InvalidInput(msg)) => assert!(msg.contains("skill s"), "{what}: {msg}"),
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
        assert_eq!(calls, 0, "{what}: no block ran");
    }
}

/// `cal` with every `mean_abs` rounded to f32, as the file stores it.
fn as_stored(cal: &SkillCalibration) -> SkillCalibration {
    let mut c = cal.clone();
    for s in c.sites.values_mut() {
        for m in &mut s.mean_abs {
            *m = *m as f32 as f64;
        }
    }
    c
}

#[test]
fn saved_statistics_read_back_equal_whole_and_site_by_site() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&dir.path().join("model"));
    let cal = calibrate(&ckpt, "arith-2", &prompts(), opts(6, 3, 4), &mut |_, _| {}).unwrap();
    let path = dir.path().join("arith.calib.safetensors");
    let bytes = cal.save(&path).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());

    // The file stores F32: statistics read back equal, with mean_abs rounded to f32 once.
    let loaded = SkillCalibration::load(&path).unwrap();
    assert_eq!(loaded, as_stored(&cal));
    let again = dir.path().join("again.safetensors");
    loaded.save(&again).unwrap();
    assert_eq!(SkillCalibration::load(&again).unwrap(), loaded);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&path).unwrap()
    );

    // One site at a time, through every linear that reads it.
    let file = CalibrationFile::open(&path).unwrap();
    assert_eq!(file.skill(), "arith-2");
    let config = ckpt.config();
    for l in 0..config.num_hidden_layers {
        for kind in LinearKind::ALL {
            for split in Split::ALL {
                let want = loaded.get(l, kind, split).unwrap();
                let got = file.site(l, kind, split).unwrap().unwrap();
                assert_eq!(&got, want, "({l}, {kind:?}, {split:?})");
                assert_eq!(
                    loaded.site(l, kind, split).unwrap().as_ref(),
                    Some(want),
                    "in-memory source"
                );
            }
        }
    }
    assert!(
        file.site(config.num_hidden_layers, LinearKind::Q, Split::HeldOut)
            .unwrap()
            .is_none()
    );
}

fn is_typed_file_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Safetensors { .. } | Error::Format(_) | Error::Io { .. }
    )
}

#[test]
fn foreign_and_truncated_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&dir.path().join("model"));
    // A model checkpoint is a valid safetensors file, but not a calibration file.
    let model_file = dir.path().join("model").join("model.safetensors");
    match SkillCalibration::load(&model_file) {
        Err(Error::Safetensors { file, what }) => {
            assert!(
                file.contains("model.safetensors") && what.contains("calibration"),
                "{what}"
            );
        }
        other => panic!("a model checkpoint loaded as calibration: {other:?}"),
    }
    match CalibrationFile::open(&model_file) {
        Err(Error::Safetensors { file, what }) => {
            assert!(
                file.contains("model.safetensors") && what.contains("calibration"),
                "{what}"
            );
        }
        other => panic!("a model checkpoint opened as calibration: {other:?}"),
    }
    let missing = dir.path().join("nothing.safetensors");
    assert!(matches!(SkillCalibration::load(&missing), Err(ref e) if is_typed_file_error(e)));
    assert!(matches!(
        CalibrationFile::open(&missing),
        Err(Error::Io { .. })
    ));

    let cal = calibrate(&ckpt, "s", &prompts(), opts(6, 3, 4), &mut |_, _| {}).unwrap();
    let path = dir.path().join("s.safetensors");
    cal.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cut = dir.path().join("cut.safetensors");
    for len in [
        0,
        5,
        8,
        8 + header / 2,
        8 + header,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let whole = SkillCalibration::load(&cut);
        assert!(
            matches!(whole, Err(ref e) if is_typed_file_error(e)),
            "truncated to {len} bytes: load gave {whole:?}"
        );
        let opened = CalibrationFile::open(&cut);
        assert!(
            matches!(opened, Err(ref e) if is_typed_file_error(e)),
            "truncated to {len} bytes: open gave {opened:?}"
        );
    }
}

#[test]
fn a_site_without_its_token_count_is_an_error_both_ways() {
    // Rewrite a saved file without one `.tokens` metadata entry.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(&dir.path().join("model"));
    let cal = calibrate(&ckpt, "s", &prompts(), opts(4, 4, 4), &mut |_, _| {}).unwrap();
    let path = dir.path().join("s.safetensors");
    cal.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap();
    let dropped = "model.layers.1.mlp_mid.heldout.tokens";
    assert!(metadata.remove(dropped).is_some());
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().collect();
    let edited = dir.path().join("edited.safetensors");
    safetensors::serialize_to_file(views, Some(metadata), &edited).unwrap();

    match SkillCalibration::load(&edited) {
        Err(Error::Safetensors { what, .. }) => assert!(what.contains("tokens"), "{what}"),
        other => panic!("load without a token count: {other:?}"),
    }
    let file = CalibrationFile::open(&edited).unwrap();
    assert!(
        file.site(0, LinearKind::Down, Split::HeldOut)
            .unwrap()
            .is_some()
    );
    match file.site(1, LinearKind::Down, Split::HeldOut) {
        Err(Error::Safetensors { what, .. }) => assert!(what.contains("tokens"), "{what}"),
        other => panic!("site without a token count: {other:?}"),
    }
}
