//! Continuous batching changes which rows share a forward pass, never what a row computes:
//! rows that join a running batch ([`KvCache::join`]), leave it, and run through different
//! skillpacks ([`SkillpackSet`]) get the logits and greedy tokens they get alone.

mod common;

use candle_core::{Device, Tensor};
use common::{assert_close, ids, logits_with, tokens};
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_format::dense::{DenseDtype, DenseTensor};
use skillzip_format::skillpack::{LayerEntry, Skillpack};
use skillzip_lm::Error;
use skillzip_lm::checkpoint::LinearKind;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::generate::argmax;
use skillzip_lm::model::{KvCache, LinearHook, Llama, Logits, NoHook};
use skillzip_lm::skillpack::{SkillpackHook, SkillpackSet, random_skillpack};

/// A batch and a lone row sum in different GEMM shapes: agreement to f32 rounding.
const TOL: f32 = 1e-4;

fn model() -> Llama {
    // scale 20: weights of std 0.4, so attention is far from uniform and logits are O(1).
    Llama::random(LlamaConfig::tiny(), 23, 20.0).unwrap()
}

/// Last-position logits of `rows` (`[rows, 1]` new tokens) through `cache`.
fn step(
    model: &Llama,
    cache: &mut KvCache,
    next: &[u32],
    hook: &mut dyn LinearHook,
) -> Vec<Vec<f32>> {
    let ids = Tensor::from_vec(next.to_vec(), (next.len(), 1), &Device::Cpu).unwrap();
    let logits = model
        .forward(&ids, Some(cache), Logits::Last, hook)
        .unwrap();
    logits.squeeze(1).unwrap().to_vec2().unwrap()
}

/// A prompt prefilled alone: its cache and last-position logits.
fn prefill(model: &Llama, prompt: &[u32], hook: &mut dyn LinearHook) -> (KvCache, Vec<f32>) {
    let mut cache = KvCache::new();
    let logits = model
        .forward(&ids(&[prompt]), Some(&mut cache), Logits::Last, hook)
        .unwrap();
    (cache, logits.flatten_all().unwrap().to_vec1().unwrap())
}

/// Greedy decoding of one prompt alone: the logits before each of `n` new tokens.
fn alone(model: &Llama, prompt: &[u32], n: usize, hook: &mut dyn LinearHook) -> Vec<Vec<f32>> {
    let (mut cache, first) = prefill(model, prompt, hook);
    let mut out = vec![first];
    while out.len() < n {
        let next = argmax(out.last().unwrap());
        out.push(step(model, &mut cache, &[next], hook).remove(0));
    }
    out
}

/// One request in the batch: its reference logits and how far it has got.
struct Row {
    id: usize,
    reference: Vec<Vec<f32>>,
    done: usize,
}

/// Runs a schedule of joins and leaves over a continuous cache, checking every row's logits
/// at every step against the row decoded alone. `events[t]` happen before step `t`: a join
/// of prompt `i` or the leaving of prompt `i`.
fn run_schedule(
    model: &Llama,
    prompts: &[Vec<u32>],
    references: &[Vec<Vec<f32>>],
    events: &[Vec<Event>],
    hooks: &mut Hooks,
) -> usize {
    let mut cache = KvCache::continuous();
    let mut rows: Vec<Row> = Vec::new();
    let mut checked = 0;
    for (t, happening) in events.iter().enumerate() {
        for event in happening {
            match *event {
                Event::Join(i) => {
                    let (solo, first) = prefill(model, &prompts[i], hooks.alone(i));
                    assert_close(&first, &references[i][0], TOL, &format!("prefill {i}"));
                    if rows.is_empty() {
                        cache = KvCache::continuous();
                    }
                    cache.join(solo).unwrap();
                    rows.push(Row {
                        id: i,
                        reference: references[i].clone(),
                        done: 1,
                    });
                }
                Event::Leave(i) => {
                    let keep: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].id != i).collect();
                    rows.retain(|r| r.id != i);
                    if !keep.is_empty() {
                        cache.retain_rows(&keep).unwrap();
                    }
                }
            }
        }
        if rows.is_empty() {
            continue;
        }
        assert_eq!(cache.rows(), Some(rows.len()), "step {t}");
        let longest = rows.iter().map(|r| prompts[r.id].len() + r.done - 1).max();
        assert_eq!(
            Some(cache.len()),
            longest,
            "shared filler is trimmed (step {t})"
        );
        let next: Vec<u32> = rows
            .iter()
            .map(|r| argmax(&r.reference[r.done - 1]))
            .collect();
        let skills: Vec<usize> = rows.iter().map(|r| r.id).collect();
        let logits = step(model, &mut cache, &next, hooks.batch(&skills));
        for (row, got) in rows.iter_mut().zip(&logits) {
            let want = &row.reference[row.done];
            assert_close(got, want, TOL, &format!("prompt {} step {t}", row.id));
            // Same greedy token: the batch decodes what the row decodes alone.
            assert_eq!(argmax(got), argmax(want), "prompt {} step {t}", row.id);
            row.done += 1;
            checked += 1;
        }
    }
    checked
}

#[derive(Clone, Copy)]
enum Event {
    Join(usize),
    Leave(usize),
}
use Event::{Join, Leave};

/// The hooks of a schedule: the plain backbone, or a skillpack per prompt.
enum Hooks {
    Backbone(NoHook),
    Skills {
        /// Prompt `i` runs through `alone[i]` when decoded alone…
        alone: Vec<Box<dyn LinearHook>>,
        /// …and through slot `slot_of[i]` of `set` in a batch.
        slot_of: Vec<Option<usize>>,
        set: Box<SkillpackSet>,
    },
}

impl Hooks {
    fn alone(&mut self, prompt: usize) -> &mut dyn LinearHook {
        match self {
            Hooks::Backbone(hook) => hook,
            Hooks::Skills { alone, .. } => alone[prompt].as_mut(),
        }
    }

    fn batch(&mut self, prompts: &[usize]) -> &mut dyn LinearHook {
        match self {
            Hooks::Backbone(hook) => hook,
            Hooks::Skills { slot_of, set, .. } => {
                let rows: Vec<Option<usize>> = prompts.iter().map(|&p| slot_of[p]).collect();
                set.assign_rows(&rows).unwrap();
                set.as_mut()
            }
        }
    }
}

/// Joins while others decode (longer and shorter than the batch), leaves from the front,
/// the middle and the end, a batch emptied and refilled.
fn schedule() -> Vec<Vec<Event>> {
    let mut events = vec![Vec::new(); 16];
    events[0] = vec![Join(0)];
    events[2] = vec![Join(1)]; // longer than the batch: the batch is padded
    events[3] = vec![Join(2)]; // shorter: the row is padded
    events[5] = vec![Leave(0)]; // the front row leaves
    events[6] = vec![Join(3), Join(0)];
    events[8] = vec![Leave(2), Leave(1)]; // the middle and then the longest leave: trimmed
    events[10] = vec![Leave(3), Leave(0)]; // empty
    events[11] = vec![Join(2)];
    events
}

fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    [5, 11, 3, 7]
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(n, vocab, 40 + i as u32))
        .collect()
}

#[test]
fn rows_joining_and_leaving_a_batch_decode_what_they_decode_alone() {
    let model = model();
    let prompts = prompts(model.config().vocab_size);
    let references: Vec<_> = prompts
        .iter()
        .map(|p| alone(&model, p, 17, &mut NoHook))
        .collect();
    // The references are not one repeated token, so equal argmaxes mean something.
    let greedy: Vec<u32> = references[1].iter().map(|l| argmax(l)).collect();
    assert!(greedy.iter().any(|t| *t != greedy[0]), "{greedy:?}");
    let checked = run_schedule(
        &model,
        &prompts,
        &references,
        &schedule(),
        &mut Hooks::Backbone(NoHook),
    );
    // Rows present at each of the 16 steps, summed (the schedule above).
    assert_eq!(checked, 29);
}

fn pack(skill: &str, layers: &[(usize, LinearKind)], seed: u64) -> Skillpack {
    random_skillpack(
        skill,
        &LlamaConfig::tiny(),
        layers,
        4,
        &"0".repeat(64),
        seed,
    )
    .unwrap()
}

/// `math` and `code` over overlapping and disjoint layers (a linear some skills carry and
/// others do not), loaded in that order into slots 0 and 1 of a set.
fn two_skills(config: &LlamaConfig) -> ([Skillpack; 2], SkillpackSet) {
    use LinearKind::*;
    let packs = [
        pack("math", &[(0, Q), (0, Down), (1, Up)], 1),
        pack("code", &[(0, Down), (1, V), (1, O)], 2),
    ];
    let mut set = SkillpackSet::new(config);
    let slots: Vec<usize> = packs.iter().map(|p| set.insert(p).unwrap()).collect();
    assert_eq!(slots, [0, 1]);
    (packs, set)
}

#[test]
fn rows_of_different_skillpacks_in_one_batch_compute_what_each_computes_alone() {
    let model = model();
    let config = model.config().clone();
    let (packs, set) = two_skills(&config);
    assert_eq!(set.names().collect::<Vec<_>>(), ["math", "code"]);
    // Prompt i runs skill: math, code, none, math.
    let skill_of = [Some(0), Some(1), None, Some(0)];
    let mut alone: Vec<Box<dyn LinearHook>> = Vec::new();
    for s in skill_of {
        alone.push(match s {
            Some(k) => Box::new(SkillpackHook::new(&packs[k], &config).unwrap()),
            None => Box::new(NoHook),
        });
    }
    let prompts = prompts(config.vocab_size);
    let references: Vec<_> = prompts
        .iter()
        .zip(alone.iter_mut())
        .map(|(p, h)| alone_with(&model, p, h.as_mut()))
        .collect();
    // Each skillpack changes its rows' logits: a batch that ignored them would fail.
    let plain = alone_with(&model, &prompts[0], &mut NoHook);
    let moved = plain[0]
        .iter()
        .zip(&references[0][0])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 0.1,
        "the math skillpack moves logits by only {moved}"
    );
    let mut hooks = Hooks::Skills {
        alone,
        slot_of: skill_of.to_vec(),
        set: Box::new(set),
    };
    let checked = run_schedule(&model, &prompts, &references, &schedule(), &mut hooks);
    // Rows present at each of the 16 steps, summed (the schedule above).
    assert_eq!(checked, 29);
}

fn alone_with(model: &Llama, prompt: &[u32], hook: &mut dyn LinearHook) -> Vec<Vec<f32>> {
    alone(model, prompt, 17, hook)
}

#[test]
fn a_prefill_of_several_rows_joins_like_rows_prefilled_alone() {
    let model = model();
    let prompts = prompts(model.config().vocab_size);
    let (a, b) = (&prompts[0], &prompts[1]);
    let width = b.len();
    let pad = width - a.len();
    let mut flat: Vec<u32> = vec![0; pad];
    flat.extend(a);
    flat.extend(b);
    let batch = Tensor::from_vec(flat, (2, width), &Device::Cpu).unwrap();
    let mut prefilled = KvCache::with_row_padding(vec![pad, 0]);
    let first: Vec<Vec<f32>> = model
        .forward(&batch, Some(&mut prefilled), Logits::Last, &mut NoHook)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut cache = KvCache::continuous();
    let (solo, _) = prefill(&model, &prompts[2], &mut NoHook);
    cache.join(solo).unwrap();
    cache.join(prefilled).unwrap();
    assert_eq!(cache.left_padding(), Some(&[width - 3, pad, 0][..]));
    let next = [argmax(&first[0]), argmax(&first[1])];
    let r0 = alone(&model, a, 2, &mut NoHook);
    let r1 = alone(&model, b, 2, &mut NoHook);
    assert_close(&first[0], &r0[0], TOL, "padded prefill row 0");
    assert_close(&first[1], &r1[0], TOL, "padded prefill row 1");
    let (_, c_first) = prefill(&model, &prompts[2], &mut NoHook);
    let got = step(
        &model,
        &mut cache,
        &[argmax(&c_first), next[0], next[1]],
        &mut NoHook,
    );
    assert_close(&got[1], &r0[1], TOL, "row 0 after the join");
    assert_close(&got[2], &r1[1], TOL, "row 1 after the join");
}

#[test]
fn joins_that_would_misplace_positions_or_blocks_are_refused() {
    let model = model();
    let prompts = prompts(model.config().vocab_size);
    let (solo, _) = prefill(&model, &prompts[0], &mut NoHook);
    // Only a continuous cache takes rows.
    let mut plain = KvCache::new();
    assert!(matches!(
        plain.join(solo.clone()),
        Err(Error::InvalidInput(_))
    ));
    // A shared-position padded batch has keys rotated at slot positions.
    let mut padded = KvCache::with_left_padding(vec![2, 0]);
    let two = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6], (2, 3), &Device::Cpu).unwrap();
    model
        .forward(&two, Some(&mut padded), Logits::Last, &mut NoHook)
        .unwrap();
    let mut cache = KvCache::continuous();
    cache.join(solo.clone()).unwrap();
    let before = cache.left_padding().map(<[usize]>::to_vec);
    match cache.join(padded) {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains("with_row_padding"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // An empty cache has no rows; a cache of another depth has other blocks.
    assert!(cache.join(KvCache::new()).is_err());
    let shallow = Llama::random(
        LlamaConfig {
            num_hidden_layers: 1,
            ..LlamaConfig::tiny()
        },
        3,
        1.0,
    )
    .unwrap();
    let (other, _) = prefill(&shallow, &prompts[1], &mut NoHook);
    match cache.join(other) {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains("blocks"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Nothing changed on error: the cache still decodes its one row.
    assert_eq!(cache.left_padding().map(<[usize]>::to_vec), before);
    assert_eq!(step(&model, &mut cache, &[1], &mut NoHook).len(), 1);
    // A continuous cache with no rows refuses a batch.
    let mut empty = KvCache::continuous();
    assert!(
        model
            .forward(&ids(&[&[1]]), Some(&mut empty), Logits::Last, &mut NoHook)
            .is_err()
    );
}

#[test]
fn a_skillpack_set_refuses_what_it_cannot_serve() {
    let config = LlamaConfig::tiny();
    let mut set = SkillpackSet::new(&config);
    let math = pack("math", &[(0, LinearKind::Up)], 1);
    assert_eq!(set.insert(&math).unwrap(), 0);
    assert_eq!(set.layer_count("math"), Some(1));
    // The same name twice.
    assert!(matches!(set.insert(&math), Err(Error::InvalidInput(m)) if m.contains("already")));
    // Dense deltas cannot ride on a shared backbone.
    let mut dense = pack("dense", &[], 2);
    dense.dense.insert(
        "model.norm.weight".into(),
        DenseTensor::new(vec![4], vec![1.0; 4], DenseDtype::F32).unwrap(),
    );
    assert!(matches!(set.insert(&dense), Err(Error::InvalidInput(m)) if m.contains("dense")));
    // A layer that is not a linear of the model.
    let mut bad = pack("bad", &[], 3);
    let (out, inp) = LinearKind::Up.shape(&config);
    let mut rng = skillzip_core::seeded_rng(4);
    bad.layers.insert(
        "model.layers.9.mlp.up_proj".into(),
        LayerEntry {
            layer: random_layer(&RandomLayer::x8a8b8(inp, 4, out), &mut rng).unwrap(),
            report: None,
        },
    );
    assert!(set.insert(&bad).is_err());
    assert_eq!(set.names().collect::<Vec<_>>(), ["math"]);
    // Rows may name only loaded slots; a removed skill's slot is reused.
    assert!(set.assign_rows(&[Some(0), None]).is_ok());
    assert!(set.assign_rows(&[Some(1)]).is_err());
    let code = pack("code", &[(1, LinearKind::Down)], 5);
    assert_eq!(set.insert(&code).unwrap(), 1);
    assert!(set.remove("math"));
    assert!(!set.remove("math"));
    assert!(set.assign_rows(&[Some(0)]).is_err());
    assert_eq!(set.insert(&math).unwrap(), 0);
    assert_eq!(set.slot("code"), Some(1));
    // A forward pass whose rows do not match the assignment is an error, not a wrong answer.
    let model = Llama::random(config, 1, 1.0).unwrap();
    set.assign_rows(&[Some(0), Some(1), None]).unwrap();
    let two = ids(&[&[1, 2], &[3, 4]]);
    assert!(model.forward(&two, None, Logits::Last, &mut set).is_err());
    // The plain backbone when every row is unassigned equals NoHook.
    set.assign_rows(&[None, None]).unwrap();
    let a = logits_with(&model, &[&[1, 2], &[3, 4]], &mut set);
    let b = logits_with(&model, &[&[1, 2], &[3, 4]], &mut NoHook);
    assert_eq!(a, b);
}

#[test]
fn a_decode_step_and_new_prompts_in_one_pass_compute_what_each_computes_alone() {
    use skillzip_lm::model::Part;
    let model = model();
    let config = model.config().clone();
    let (packs, mut set) = two_skills(&config);
    // Prompts 0 and 1 are decoding (math, code) when 2 (no skill) and 3 (math) arrive.
    let skill_of = [Some(0), Some(1), None, Some(0)];
    let prompts = prompts(config.vocab_size);
    let references: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .zip(skill_of)
        .map(|(p, s)| match s {
            Some(k) => alone_with(
                &model,
                p,
                &mut SkillpackHook::new(&packs[k], &config).unwrap(),
            ),
            None => alone_with(&model, p, &mut NoHook),
        })
        .collect();
    let mut batch = KvCache::continuous();
    for r in 0..2 {
        set.assign_rows(&[skill_of[r]]).unwrap();
        let (cache, first) = prefill(&model, &prompts[r], &mut set);
        assert_close(&first, &references[r][0], TOL, "prefill");
        batch.join(cache).unwrap();
    }
    let mut step_of = [1usize, 1, 0, 0];
    let next = |r: usize, k: usize| argmax(&references[r][k - 1]);
    // Two decode steps of the running pair first.
    for _ in 0..2 {
        set.assign_rows(&skill_of[..2]).unwrap();
        let got = step(
            &model,
            &mut batch,
            &[next(0, step_of[0]), next(1, step_of[1])],
            &mut set,
        );
        for r in 0..2 {
            assert_close(&got[r], &references[r][step_of[r]], TOL, "decode");
            step_of[r] += 1;
        }
    }
    // One pass: the pair's decode step and both new prompts, each its own part.
    let decode_ids = ids(&[&[next(0, step_of[0])], &[next(1, step_of[1])]]);
    let (new2, new3) = (ids(&[&prompts[2]]), ids(&[&prompts[3]]));
    let (mut cache2, mut cache3) = (KvCache::new(), KvCache::new());
    let mut input_rows: Vec<Option<usize>> = skill_of[..2].to_vec();
    input_rows.extend(std::iter::repeat_n(skill_of[2], prompts[2].len()));
    input_rows.extend(std::iter::repeat_n(skill_of[3], prompts[3].len()));
    set.assign_input_rows(&input_rows).unwrap();
    let mut parts = [
        Part {
            ids: &decode_ids,
            cache: &mut batch,
        },
        Part {
            ids: &new2,
            cache: &mut cache2,
        },
        Part {
            ids: &new3,
            cache: &mut cache3,
        },
    ];
    let logits = model.forward_parts(&mut parts, &mut set).unwrap();
    let rows = |t: &Tensor| t.to_vec2::<f32>().unwrap();
    let decoded = rows(&logits[0]);
    for r in 0..2 {
        assert_close(&decoded[r], &references[r][step_of[r]], TOL, "mixed decode");
        step_of[r] += 1;
    }
    assert_close(
        &rows(&logits[1])[0],
        &references[2][0],
        TOL,
        "mixed prefill",
    );
    assert_close(
        &rows(&logits[2])[0],
        &references[3][0],
        TOL,
        "mixed prefill",
    );
    step_of[2] = 1;
    step_of[3] = 1;
    // The new rows join and all four decode on together.
    batch.join(cache2).unwrap();
    batch.join(cache3).unwrap();
    for _ in 0..4 {
        set.assign_rows(&skill_of).unwrap();
        let next_ids: Vec<u32> = (0..4).map(|r| next(r, step_of[r])).collect();
        let got = step(&model, &mut batch, &next_ids, &mut set);
        for r in 0..4 {
            assert_close(&got[r], &references[r][step_of[r]], TOL, "decode");
            step_of[r] += 1;
        }
    }
    // An input-row assignment of the wrong length is refused, not split.
    set.assign_input_rows(&[Some(0); 3]).unwrap();
    let err = model
        .forward(&ids(&[&prompts[0]]), None, Logits::Last, &mut set)
        .unwrap_err();
    assert!(err.to_string().contains("assigned"), "{err}");
}
