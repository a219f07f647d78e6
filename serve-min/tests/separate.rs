//! The separate-models baseline: each skill's full model is the backbone with the skillpack's
//! delta merged in, models beyond the memory budget are evicted least recently used first and
//! read back on demand, and a batch never mixes models.

mod common;

use common::{Server, model, packs, tokenizer};
use serde_json::json;
use serve_min::engine::{Backbone, EngineConfig, Weights};
use serve_min::store::{ModelStore, weight_bytes};
use skillzip_lm::checkpoint::LinearKind;
use skillzip_lm::generate::{GenerateOptions, Sampling, generate};
use skillzip_lm::model::NoHook;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("serve-min-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A store of the test model and its two skills holding `models` full models at once.
fn store(dir: &std::path::Path, models: u64) -> ModelStore {
    let backbone = model();
    let budget = models * weight_bytes(&backbone);
    ModelStore::create(dir, backbone, &packs(), budget, |_| {}).unwrap()
}

#[test]
fn each_skill_is_the_backbone_with_its_delta_merged_in() {
    let dir = temp_dir("store-merge");
    let mut store = store(&dir, 1);
    assert_eq!(store.skills(), ["math", "code"]);
    let base = model();
    let math = &packs()[0];
    let slot = store.slot("math").unwrap();
    let (merged, reload) = store.activate(Some(slot)).unwrap();
    assert_eq!(reload.map(|r| r.evicted), Some(1), "the base made room");
    // `math` carries block 0's q_proj and down_proj and block 1's up_proj.
    for (layer, kind) in [
        (0, LinearKind::Q),
        (0, LinearKind::Down),
        (1, LinearKind::Up),
    ] {
        let delta = math.layers[&kind.module_name(layer)]
            .layer
            .effective_weight();
        let w = |m: &skillzip_lm::model::Llama| {
            m.linear_weight(layer, kind)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let (got, was) = (w(merged), w(&base));
        for (o, (got_row, was_row)) in got.iter().zip(&was).enumerate() {
            for (i, (g, b)) in got_row.iter().zip(was_row).enumerate() {
                assert!((g - (b + delta[(i, o)])).abs() <= 1e-5 * (1.0 + b.abs()));
            }
        }
    }
    // A linear the skillpack does not carry is the backbone's.
    assert_eq!(
        merged
            .linear_weight(1, LinearKind::K)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        base.linear_weight(1, LinearKind::K)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn models_beyond_the_budget_are_evicted_least_recently_used_first() {
    let dir = temp_dir("store-lru");
    let mut store = store(&dir, 2);
    assert_eq!(store.capacity(), 2);
    assert_eq!(store.resident_models(), [None]);
    let reloaded =
        |store: &mut ModelStore, slot| store.activate(slot).unwrap().1.map(|r| r.evicted);
    assert_eq!(reloaded(&mut store, Some(0)), Some(0));
    assert_eq!(
        reloaded(&mut store, Some(1)),
        Some(1),
        "two fit: the base goes"
    );
    assert_eq!(store.resident_models(), [Some(0), Some(1)]);
    assert_eq!(reloaded(&mut store, Some(0)), None, "resident: no reload");
    assert_eq!(reloaded(&mut store, None), Some(1));
    assert_eq!(
        store.resident_models(),
        [Some(0), None],
        "code was least recently used"
    );
    assert!(store.activate(Some(2)).is_err(), "no third skill");

    let too_small = weight_bytes(&model()) - 1;
    let err = ModelStore::create(
        &temp_dir("store-small"),
        model(),
        &packs(),
        too_small,
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("holds no full model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn separate_models_serve_one_model_per_batch_reloading_between_batches() {
    let dir = temp_dir("separate-serve");
    let store = store(&dir, 1);
    let names = store.skills().to_vec();
    let backbone = Backbone {
        weights: Weights::Separate(store),
        tokenizer: tokenizer(),
        router: None,
    };
    let config = EngineConfig::default();
    let mut server = Server::serve(config, false, backbone, names, true);
    let requests = [
        ("math", "Two plus two"),
        ("code", "def f(x):"),
        ("base", "Hello"),
        ("math", "x"),
        ("code", "Once upon a time"),
        ("base", "y"),
    ];
    let addr = server.addr;
    // Sent one by one (each queued before the next), so they wait in this order.
    let clients: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(i, &(model, prompt))| {
            let body = json!({"model": model, "prompt": prompt, "max_tokens": 12,
                              "temperature": 0})
            .to_string();
            let client = std::thread::spawn(move || {
                common::request(addr, "POST", "/v1/completions", body.as_bytes())
            });
            let start = std::time::Instant::now();
            while server.metric("requests_waiting") <= i as u64 {
                assert!(start.elapsed().as_secs() < 30, "request {i} never queued");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            client
        })
        .collect();
    server.run_engine(config);
    // What each request gives alone on its skill's merged model.
    let mut reference = self::store(&temp_dir("separate-reference"), 3);
    let tokenizer = tokenizer();
    let mut tokens = 0;
    for (client, (model, prompt)) in clients.into_iter().zip(requests) {
        let r = client.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let lm = reference.activate(reference.slot(model)).unwrap().0;
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Greedy,
            stop: tokenizer.stop_ids(),
        };
        let ids = tokenizer.encode(prompt).unwrap();
        let out = generate(lm, &ids, &opts, &mut NoHook, |_| true).unwrap();
        let want = tokenizer.decode(&out, true).unwrap();
        assert_eq!(
            r.json()["choices"][0]["text"],
            want.as_str(),
            "{model}: {prompt}"
        );
        tokens += out.len() as u64;
    }
    // One model per batch, each taking every waiting request of its model: math's two (the
    // base evicted), then code's, then the base's — three reloads. (A batch mixing models
    // would have failed its requests.)
    assert_eq!(server.metric("model_reloads_total"), 3);
    assert_eq!(server.metric("generated_tokens_total"), tokens);
    // The baseline's models are fixed: the engine refuses to unload one.
    let r = server.delete("/admin/skillpacks/math");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("fixed set of models"), "{}", r.text());
    std::fs::remove_dir_all(&dir).unwrap();
}
