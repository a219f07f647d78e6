//! Running a model with a skillpack: the backbone `θ_0 + Δ_shared` (plus the skill's dense
//! deltas), and every compressed layer's `X̂·Â·B̂` added to its linear's output through the
//! fast CPU kernels ([`SkillpackHook`]). [`SkillpackSet`] serves several skillpacks on one
//! backbone at once: each batch row through its own (DESIGN.md §1's
//! `Output_i = X_i·W + X̂_i·Â_i·B̂_i`, tokens grouped by skill).

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use skillzip_core::kernels::{Kernel, KernelScratch, PackedLayer};
use skillzip_core::synth::{RandomLayer, random_layer};
use skillzip_format::bundle::Bundle;
use skillzip_format::skillpack::{BaseModel, LayerEntry, Skillpack, SkillpackMeta};

use crate::checkpoint::{Checkpoint, LinearKind, tensor_specs};
use crate::compress::add_backbone_delta;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::{LinearHook, Llama};

/// Adds a skillpack's compressed layers to the linears they belong to.
pub struct SkillpackHook {
    layers: HashMap<(usize, LinearKind), PackedLayer>,
    kernel: Kernel,
    scratch: KernelScratch,
}

impl std::fmt::Debug for SkillpackHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillpackHook")
            .field("layers", &self.layers.len())
            .field("isa", &self.kernel.isa())
            .finish()
    }
}

impl SkillpackHook {
    /// Packs every layer of `pack` for the fast kernels, checking each module name and shape
    /// against `config`.
    pub fn new(pack: &Skillpack, config: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            layers: pack_layers(pack, config)?,
            kernel: Kernel::detect(),
            scratch: KernelScratch::default(),
        })
    }

    /// Number of layers carried.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the skillpack carries no layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl LinearHook for SkillpackHook {
    fn extra(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(packed) = self.layers.get(&(layer, kind)) else {
            return Ok(None);
        };
        let (rows, _) = x.dims2()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; rows * packed.c_out()];
        self.kernel.apply(packed, &xs, &mut y, &mut self.scratch)?;
        Ok(Some(Tensor::from_vec(
            y,
            (rows, packed.c_out()),
            &Device::Cpu,
        )?))
    }
}

/// Every compressed layer of `pack` packed for the fast kernels, by the linear it adds to;
/// each module name and shape is checked against `config`.
fn pack_layers(
    pack: &Skillpack,
    config: &LlamaConfig,
) -> Result<HashMap<(usize, LinearKind), PackedLayer>> {
    pack.layers
        .iter()
        .map(|(module, entry)| {
            let at = target_linear(pack, module, entry, config)?;
            Ok((at, PackedLayer::new(&entry.layer)))
        })
        .collect()
}

/// The linear (block, kind) a skillpack layer named `module` adds to: the name must be a
/// linear of a `config` model and the layer's `C_i × C_o` that linear's shape.
fn target_linear(
    pack: &Skillpack,
    module: &str,
    entry: &LayerEntry,
    config: &LlamaConfig,
) -> Result<(usize, LinearKind)> {
    let (l, kind) = LinearKind::parse_module_name(module)
        .filter(|(l, _)| *l < config.num_hidden_layers)
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "skillpack {}: layer {module} is not a linear of this model",
                pack.meta.skill
            ))
        })?;
    let (out, inp) = kind.shape(config);
    if (entry.layer.c_in(), entry.layer.c_out()) != (inp, out) {
        return Err(Error::TensorShape {
            file: format!("skillpack {}", pack.meta.skill),
            tensor: module.to_string(),
            expected: vec![inp, out],
            got: vec![entry.layer.c_in(), entry.layer.c_out()],
        });
    }
    Ok((l, kind))
}

/// Merges `pack` into a `config` model's parameters (HF names, linears `[out, in]`): each
/// compressed layer's effective weight `diag(s⁻¹)·Â_deqᵀ·B̂_deqᵀ` is added to its linear's
/// weight, and every dense delta to its tensor — the skill as one full model, as the
/// separate-models serving baseline holds it. Activation quantization and truncation are not
/// part of a weight, so the merged model matches the skillpack path only to their error.
pub fn merge_skillpack(
    params: &mut BTreeMap<String, Vec<f32>>,
    pack: &Skillpack,
    config: &LlamaConfig,
) -> Result<()> {
    for (module, entry) in &pack.layers {
        let (layer, kind) = target_linear(pack, module, entry, config)?;
        let name = format!("{}.weight", kind.module_name(layer));
        let w = params.get_mut(&name).ok_or_else(|| Error::MissingTensor {
            file: format!("skillpack {}", pack.meta.skill),
            tensor: name.clone(),
        })?;
        let (_, inp) = kind.shape(config);
        // The effective weight is `C_i × C_o`; the model's linear is `[out, in]`.
        let delta = entry.layer.effective_weight();
        for (o, row) in w.chunks_mut(inp).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                *v += delta[(i, o)];
            }
        }
    }
    add_backbone_delta(params, &pack.dense)
}

/// Several skillpacks on one backbone, each batch row through its own (or none): every
/// linear's rows go through one grouped kernel call ([`Kernel::apply_grouped`], S-LoRA
/// style), so a batch mixing skills costs one backbone pass plus each skill's low-rank path
/// on its own rows.
///
/// Skillpacks live in numbered slots ([`SkillpackSet::insert`]); removing one frees its slot
/// without renumbering the others, so rows decoding with other skills are not disturbed.
pub struct SkillpackSet {
    config: LlamaConfig,
    slots: Vec<Option<SetEntry>>,
    /// Per linear: the slots carrying it and their packed layer.
    by_linear: HashMap<(usize, LinearKind), Vec<(usize, PackedLayer)>>,
    /// The slot of each batch row (`None`: the backbone alone), or of each input row when
    /// `per_input_row`.
    rows: Vec<Option<usize>>,
    per_input_row: bool,
    kernel: Kernel,
    scratch: KernelScratch,
    /// Per input row of the current call: its position in the linear's slot list.
    row_group: Vec<Option<usize>>,
}

struct SetEntry {
    name: String,
    layers: usize,
}

impl std::fmt::Debug for SkillpackSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillpackSet")
            .field("skills", &self.names().collect::<Vec<_>>())
            .field("rows", &self.rows)
            .field("isa", &self.kernel.isa())
            .finish()
    }
}

impl SkillpackSet {
    /// An empty set for models of `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        Self {
            config: config.clone(),
            slots: Vec::new(),
            by_linear: HashMap::new(),
            rows: Vec::new(),
            per_input_row: false,
            kernel: Kernel::detect(),
            scratch: KernelScratch::default(),
            row_group: Vec::new(),
        }
    }

    /// Adds `pack` under its skill name and returns its slot. Refused: a name already
    /// present, a layer that is not a linear of the model, and dense deltas (a skill's own
    /// full-size tensors cannot ride on a shared backbone; compress with the dense deltas
    /// merged into the backbone).
    pub fn insert(&mut self, pack: &Skillpack) -> Result<usize> {
        let name = &pack.meta.skill;
        if self.slot(name).is_some() {
            return Err(Error::InvalidInput(format!(
                "skillpack {name} is already loaded"
            )));
        }
        if let Some(tensor) = pack.dense.keys().next() {
            return Err(Error::InvalidInput(format!(
                "skillpack {name} carries {} dense delta(s) (e.g. {tensor}); a shared backbone \
                 serves only compressed layers: compress with dense deltas in the backbone",
                pack.dense.len()
            )));
        }
        let layers = pack_layers(pack, &self.config)?;
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(SetEntry {
            name: name.clone(),
            layers: layers.len(),
        });
        for (at, layer) in layers {
            self.by_linear.entry(at).or_default().push((slot, layer));
        }
        Ok(slot)
    }

    /// Removes skill `name`; returns whether it was loaded. Rows assigned to it must be
    /// reassigned before the next forward pass.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(slot) = self.slot(name) else {
            return false;
        };
        self.slots[slot] = None;
        for entries in self.by_linear.values_mut() {
            entries.retain(|(s, _)| *s != slot);
        }
        self.by_linear.retain(|_, entries| !entries.is_empty());
        true
    }

    /// The slot of skill `name`.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.name == name))
    }

    /// Loaded skills' names, in slot order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().flatten().map(|e| e.name.as_str())
    }

    /// Compressed layers of skill `name`.
    pub fn layer_count(&self, name: &str) -> Option<usize> {
        self.slot(name)
            .and_then(|s| self.slots[s].as_ref())
            .map(|e| e.layers)
    }

    /// Sets the skill slot of each batch row for the following forward passes (`None`: the
    /// backbone alone). Every slot must hold a skillpack. The assignment must have one entry
    /// per row of the batch those passes run: the hook sees `rows × tokens` input rows and
    /// splits them evenly, so it refuses a count that does not divide but cannot tell a batch
    /// of 2 rows of 8 tokens from one of 4 rows of 4.
    pub fn assign_rows(&mut self, rows: &[Option<usize>]) -> Result<()> {
        self.assign(rows, false)
    }

    /// Sets the skill slot of each *input row* of the following passes: one entry per token
    /// of every row of every part ([`crate::model::Llama::forward_parts`]), in the order the
    /// linears see them. Every slot must hold a skillpack.
    pub fn assign_input_rows(&mut self, rows: &[Option<usize>]) -> Result<()> {
        self.assign(rows, true)
    }

    fn assign(&mut self, rows: &[Option<usize>], per_input_row: bool) -> Result<()> {
        if let Some((row, slot)) = rows.iter().enumerate().find_map(|(r, s)| {
            s.filter(|&s| self.slots.get(s).is_none_or(Option::is_none))
                .map(|s| (r, s))
        }) {
            return Err(Error::InvalidInput(format!(
                "row {row} names skillpack slot {slot}, which holds none"
            )));
        }
        self.rows.clear();
        self.rows.extend_from_slice(rows);
        self.per_input_row = per_input_row;
        Ok(())
    }
}

impl LinearHook for SkillpackSet {
    fn extra(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(entries) = self.by_linear.get(&(layer, kind)) else {
            return Ok(None);
        };
        let (n, _) = x.dims2()?;
        let batch = self.rows.len();
        if self.per_input_row && n != batch {
            return Err(Error::InvalidInput(format!(
                "{n} input rows, {batch} assigned"
            )));
        }
        if batch == 0 || n % batch != 0 {
            return Err(Error::InvalidInput(format!(
                "{n} input rows do not split into the {batch} assigned batch rows"
            )));
        }
        let tokens = n / batch;
        self.row_group.clear();
        self.row_group.extend((0..n).map(|r| {
            self.rows[r / tokens].and_then(|slot| entries.iter().position(|(s, _)| *s == slot))
        }));
        if self.row_group.iter().all(Option::is_none) {
            return Ok(None);
        }
        let packed: Vec<&PackedLayer> = entries.iter().map(|(_, p)| p).collect();
        let c_out = packed[0].c_out();
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; n * c_out];
        self.kernel
            .apply_grouped(&packed, &self.row_group, &xs, &mut y, &mut self.scratch)?;
        Ok(Some(Tensor::from_vec(y, (n, c_out), &Device::Cpu)?))
    }
}

/// A skillpack of random X8A8B8 layers of rank `rank` on `layers` of a model of `config`,
/// naming backbone `backbone_hash` (for tests and benches: serving cost and batching
/// correctness do not depend on what a skillpack learned). Its factors are far larger than a
/// real delta's, so every layer visibly moves the model's output.
pub fn random_skillpack(
    skill: &str,
    config: &LlamaConfig,
    layers: &[(usize, LinearKind)],
    rank: usize,
    backbone_hash: &str,
    seed: u64,
) -> Result<Skillpack> {
    let mut pack = Skillpack::new(SkillpackMeta {
        skill: skill.into(),
        base: BaseModel {
            architecture: "llama".into(),
            backbone_hash: backbone_hash.into(),
        },
        config: Default::default(),
    });
    let mut rng = skillzip_core::seeded_rng(seed);
    for &(l, kind) in layers {
        let (out, inp) = kind.shape(config);
        let layer = random_layer(&RandomLayer::x8a8b8(inp, rank, out), &mut rng)?;
        pack.layers.insert(
            kind.module_name(l),
            LayerEntry {
                layer,
                report: None,
            },
        );
    }
    Ok(pack)
}

/// Loads every tensor of a checkpoint as f32 vectors under HF names.
pub fn load_params(ckpt: &Checkpoint) -> Result<BTreeMap<String, Vec<f32>>> {
    tensor_specs(ckpt.config())
        .into_iter()
        .map(|(name, shape, _)| Ok((name.clone(), ckpt.load_expected(&name, &shape)?.data)))
        .collect()
}

/// Builds a model from f32 parameter vectors.
pub fn model_from_params(
    config: &LlamaConfig,
    params: BTreeMap<String, Vec<f32>>,
) -> Result<Llama> {
    let specs = tensor_specs(config);
    let mut tensors = BTreeMap::new();
    for (name, data) in params {
        let shape = specs
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, s, _)| s.clone())
            .ok_or_else(|| Error::InvalidInput(format!("tensor {name} is not in the model")))?;
        tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    Llama::from_tensors(config.clone(), tensors)
}

/// The model a bundle's skill runs on: base `θ_0` plus the bundle's backbone delta plus the
/// skill's dense deltas (`None`: the shared backbone alone), and the hook adding the skill's
/// compressed layers. The skillpack's backbone hash is checked against the manifest.
pub fn bundle_model(
    base: &Checkpoint,
    bundle: &Bundle,
    skill: Option<&str>,
) -> Result<(Llama, Option<SkillpackHook>)> {
    let config = base.config().clone();
    let mut params = load_params(base)?;
    if let Some(delta) = bundle.backbone_delta()? {
        add_backbone_delta(&mut params, &delta.tensors)?;
    }
    let hook = match skill {
        Some(name) => {
            let pack = bundle.skillpack(name)?;
            add_backbone_delta(&mut params, &pack.dense)?;
            Some(SkillpackHook::new(&pack, &config)?)
        }
        None => None,
    };
    Ok((model_from_params(&config, params)?, hook))
}
