//! Running a model with a skillpack: the backbone `θ_0 + Δ_shared` (plus the skill's dense
//! deltas), and every compressed layer's `X̂·Â·B̂` added to its linear's output through the
//! fast CPU kernels ([`SkillpackHook`]).

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use skillzip_core::kernels::{Kernel, KernelScratch, PackedLayer};
use skillzip_format::bundle::Bundle;
use skillzip_format::skillpack::Skillpack;

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
        let mut layers = HashMap::new();
        for (module, entry) in &pack.layers {
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
                    tensor: module.clone(),
                    expected: vec![inp, out],
                    got: vec![entry.layer.c_in(), entry.layer.c_out()],
                });
            }
            layers.insert((l, kind), PackedLayer::new(&entry.layer));
        }
        Ok(Self {
            layers,
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
