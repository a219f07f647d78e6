//! The separate-models baseline: every skill as its own full model (merged weights), kept on
//! disk and reloaded on demand within a memory budget.
//!
//! This is what serving fine-tunes costs without skillpacks, and what `serve-min bench`
//! compares against: a request can only run on its skill's own model, so requests of
//! different skills cannot share a batch, and when the models do not all fit in memory a
//! switch of skill evicts the least recently used model and reads the next one back from
//! its checkpoint (the paper's evict-and-reload policy).
//!
//! [`ModelStore::create`] writes each merged model — the backbone plus the skillpack's
//! delta `diag(s⁻¹)·Â_deqᵀ·B̂_deqᵀ` (and its dense deltas) added into the weights, f32
//! ([`merge_skillpack`]) — as a checkpoint directory under the store's directory. The base
//! (the backbone alone) is one more model of the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skillzip_format::skillpack::Skillpack;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::config::LlamaConfig;
use skillzip_lm::model::Llama;
use skillzip_lm::save::{SaveOptions, save_checkpoint};
use skillzip_lm::skillpack::merge_skillpack;

use crate::error::{Error, Result};

/// Full models by skill, at most as many resident as the memory budget holds.
pub struct ModelStore {
    config: LlamaConfig,
    /// Skill names in slot order (slot `i` is model `i + 1`; model 0 is the base).
    skills: Vec<String>,
    /// Checkpoint directory of each model.
    paths: Vec<PathBuf>,
    /// Bytes of one resident model's weights (f32).
    model_bytes: u64,
    /// Most bytes of weights resident at once.
    budget: u64,
    /// Resident models with the tick of their last use.
    resident: Vec<(usize, Llama, u64)>,
    tick: u64,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("skills", &self.skills)
            .field("model_bytes", &self.model_bytes)
            .field("budget", &self.budget)
            .field("resident", &self.resident_models())
            .finish()
    }
}

/// A model read back into memory by [`ModelStore::activate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reload {
    /// Models evicted to make room.
    pub evicted: usize,
    /// Time spent reading the model.
    pub took: Duration,
}

impl ModelStore {
    /// Writes the base model `backbone` and one merged model per skillpack under `dir`
    /// (created if missing; earlier models there are replaced) and returns the store with
    /// the base resident. `budget` is in bytes of weights; it must hold one model.
    /// `progress` is told each model as it is written.
    pub fn create(
        dir: &Path,
        backbone: Llama,
        packs: &[Skillpack],
        budget: u64,
        mut progress: impl FnMut(&str),
    ) -> Result<Self> {
        let config = backbone.config().clone();
        let model_bytes = weight_bytes(&backbone);
        if budget < model_bytes {
            return Err(Error::Config(format!(
                "a memory budget of {} MiB holds no full model ({} MiB each)",
                budget >> 20,
                model_bytes.div_ceil(1 << 20)
            )));
        }
        let base = parameters(&backbone)?;
        let mut skills = Vec::new();
        let mut paths = vec![dir.join("base")];
        progress("base");
        write_model(&paths[0], &config, base.clone())?;
        for pack in packs {
            let name = &pack.meta.skill;
            progress(name);
            let mut params = base.clone();
            merge_skillpack(&mut params, pack, &config)?;
            let path = dir.join(format!("skill-{}", skills.len()));
            write_model(&path, &config, params)?;
            skills.push(name.clone());
            paths.push(path);
        }
        Ok(Self {
            config,
            skills,
            paths,
            model_bytes,
            budget,
            resident: vec![(0, backbone, 0)],
            tick: 0,
        })
    }

    /// The models' configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The slot of skill `name`.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.skills.iter().position(|s| s == name)
    }

    /// Skill names in slot order.
    pub fn skills(&self) -> &[String] {
        &self.skills
    }

    /// Bytes of one full model's weights.
    pub fn model_bytes(&self) -> u64 {
        self.model_bytes
    }

    /// How many full models the budget holds at once.
    pub fn capacity(&self) -> usize {
        (self.budget / self.model_bytes) as usize
    }

    /// Resident models (`None`: the base, else a skill slot), least recently used first.
    pub fn resident_models(&self) -> Vec<Option<usize>> {
        let mut r: Vec<_> = self.resident.iter().map(|(m, _, t)| (*t, *m)).collect();
        r.sort();
        r.into_iter().map(|(_, m)| m.checked_sub(1)).collect()
    }

    /// The model of `slot` (`None`: the base), read back from disk when it is not resident
    /// (evicting the least recently used models to stay within the budget); says whether
    /// and how it was read.
    pub fn activate(&mut self, slot: Option<usize>) -> Result<(&Llama, Option<Reload>)> {
        let model = slot.map_or(0, |s| s + 1);
        if model >= self.paths.len() {
            return Err(Error::Config(format!("no model in slot {model}")));
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some(at) = self.resident.iter().position(|(m, _, _)| *m == model) {
            self.resident[at].2 = tick;
            return Ok((&self.resident[at].1, None));
        }
        let mut evicted = 0;
        while !self.resident.is_empty() && self.resident.len() + 1 > self.capacity() {
            let lru = (0..self.resident.len())
                .min_by_key(|&i| self.resident[i].2)
                .unwrap_or(0);
            // Dropped before the next one is read, so the budget holds during the switch.
            drop(self.resident.swap_remove(lru));
            evicted += 1;
        }
        let started = Instant::now();
        let llama = Llama::from_checkpoint(&Checkpoint::open(&self.paths[model])?)?;
        let took = started.elapsed();
        self.resident.push((model, llama, tick));
        let last = self.resident.len() - 1;
        Ok((&self.resident[last].1, Some(Reload { evicted, took })))
    }
}

/// Bytes of a model's weights as it holds them (f32).
pub fn weight_bytes(model: &Llama) -> u64 {
    model
        .parameters()
        .values()
        .map(|t| 4 * t.elem_count() as u64)
        .sum()
}

fn parameters(model: &Llama) -> Result<BTreeMap<String, Vec<f32>>> {
    model
        .parameters()
        .iter()
        .map(|(name, t)| {
            let values = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(skillzip_lm::Error::from)?;
            Ok((name.clone(), values))
        })
        .collect()
}

fn write_model(dir: &Path, config: &LlamaConfig, params: BTreeMap<String, Vec<f32>>) -> Result<()> {
    let mut params = params;
    // The writer refuses non-finite values, so a merge that overflowed is never stored.
    save_checkpoint(
        dir,
        config,
        SaveOptions::default(),
        &[("format", "pt")],
        |name, _| {
            params
                .remove(name)
                .ok_or_else(|| skillzip_lm::Error::MissingTensor {
                    file: dir.display().to_string(),
                    tensor: name.to_string(),
                })
        },
    )?;
    Ok(())
}
