//! Building the engine's [`Backbone`] from a base checkpoint and an optional bundle: one
//! backbone with skillpacks, or the separate-models baseline.

use std::path::Path;

use skillzip_format::BackboneHasher;
use skillzip_format::bundle::Bundle;
use skillzip_format::skillpack::Skillpack;
use skillzip_harness::router::Router;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::model::Llama;
use skillzip_lm::skillpack::{SkillpackSet, bundle_model};
use skillzip_lm::tokenizer::Tokenizer;

use crate::api::reserved_skill_name;
use crate::engine::{Backbone, Weights};
use crate::error::{Error, Result};
use crate::store::{ModelStore, weight_bytes};

/// A loaded backbone and what the server needs to know about it.
pub struct Loaded {
    /// The engine's model, tokenizer and skillpacks.
    pub backbone: Backbone,
    /// The skills loaded, in slot order.
    pub skills: Vec<String>,
    /// The hash of the backbone's weights (what every skillpack must name).
    pub backbone_hash: String,
}

/// The base model plus the bundle's shared backbone delta, with every skillpack of the
/// bundle loaded and the bundle's router (checked against the model's width and skills). The
/// backbone's weights are hashed and must match the bundle's manifest (a bundle made from
/// another base is refused); each skillpack is checked against the manifest by
/// [`Bundle::skillpack`].
pub fn backbone(base: &Path, bundle: Option<&Path>) -> Result<Loaded> {
    shared(open(base, bundle)?, bundle.unwrap_or(base))
}

/// The separate-models baseline over the same base and bundle as [`backbone`]: every skill's
/// merged full model written under `store` ([`ModelStore::create`]), at most `budget` bytes
/// of weights resident. The default budget is what the shared backbone needs: the backbone
/// plus every skillpack. No router: the baseline serves named skills and the base.
pub fn separate_models(
    base: &Path,
    bundle: Option<&Path>,
    store: &Path,
    budget: Option<u64>,
    progress: impl FnMut(&str),
) -> Result<Loaded> {
    separate(open(base, bundle)?, store, budget, progress)
}

/// One backbone serving every skillpack of `parts` (`source` names where they came from in
/// errors).
pub fn shared(parts: Parts, source: &Path) -> Result<Loaded> {
    check_names(&parts.packs, source)?;
    let mut skills = SkillpackSet::new(parts.model.config());
    for pack in &parts.packs {
        skills.insert(pack).map_err(|e| {
            Error::Config(format!(
                "{}: skill {}: {e}",
                source.display(),
                pack.meta.skill
            ))
        })?;
    }
    Ok(Loaded {
        skills: parts.packs.iter().map(|p| p.meta.skill.clone()).collect(),
        backbone: Backbone {
            weights: Weights::Shared {
                model: parts.model,
                skills,
            },
            tokenizer: parts.tokenizer,
            router: parts.router,
        },
        backbone_hash: parts.backbone_hash,
    })
}

/// The separate-models baseline of `parts` (see [`separate_models`]).
pub fn separate(
    parts: Parts,
    store: &Path,
    budget: Option<u64>,
    progress: impl FnMut(&str),
) -> Result<Loaded> {
    check_names(&parts.packs, store)?;
    let shared_bytes = weight_bytes(&parts.model)
        + parts
            .packs
            .iter()
            .flat_map(|p| p.layers.values())
            .map(|e| e.layer.storage_bytes() as u64)
            .sum::<u64>();
    let store = ModelStore::create(
        store,
        parts.model,
        &parts.packs,
        budget.unwrap_or(shared_bytes),
        progress,
    )?;
    Ok(Loaded {
        skills: store.skills().to_vec(),
        backbone: Backbone {
            weights: Weights::Separate(store),
            tokenizer: parts.tokenizer,
            router: None,
        },
        backbone_hash: parts.backbone_hash,
    })
}

/// Refuses a skillpack named like a reserved model (`base`, `auto`).
fn check_names(packs: &[Skillpack], source: &Path) -> Result<()> {
    match packs
        .iter()
        .find_map(|p| reserved_skill_name(&p.meta.skill))
    {
        Some(why) => Err(Error::Config(format!("{}: {why}", source.display()))),
        None => Ok(()),
    }
}

/// What a server is built from: a backbone (base plus any shared delta), its tokenizer and
/// hash, skillpacks and an optional router. [`open`] reads them from files; benches may
/// assemble them in memory.
pub struct Parts {
    /// The backbone.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// [`backbone_hash`] of `model`.
    pub backbone_hash: String,
    /// The skillpacks, in slot order.
    pub packs: Vec<Skillpack>,
    /// The learned router, if any.
    pub router: Option<Router>,
}

/// A base checkpoint and an optional bundle, opened and checked against each other.
pub fn open(base: &Path, bundle: Option<&Path>) -> Result<Parts> {
    let ckpt = Checkpoint::open(base)?;
    let tokenizer = Tokenizer::of_checkpoint(&ckpt)?;
    let config = ckpt.config().clone();
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Config(format!(
            "{}: the tokenizer has {} tokens, the model {}",
            base.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let Some(dir) = bundle else {
        let model = Llama::from_checkpoint(&ckpt)?;
        return Ok(Parts {
            backbone_hash: backbone_hash(&model)?,
            model,
            tokenizer,
            packs: Vec::new(),
            router: None,
        });
    };
    let bundle = Bundle::open(dir)?;
    let (model, _) = bundle_model(&ckpt, &bundle, None)?;
    let hash = backbone_hash(&model)?;
    let expected = &bundle.manifest().base.backbone_hash;
    if &hash != expected {
        return Err(Error::Config(format!(
            "{}: the bundle was made for backbone {expected}; {} plus its backbone delta is \
             {hash} (another base model?)",
            dir.display(),
            base.display()
        )));
    }
    let mut packs = Vec::new();
    for entry in &bundle.manifest().skillpacks {
        if let Some(why) = reserved_skill_name(&entry.name) {
            return Err(Error::Config(format!("{}: {why}", dir.display())));
        }
        packs.push(bundle.skillpack(&entry.name)?);
    }
    let names: Vec<&String> = packs.iter().map(|p| &p.meta.skill).collect();
    let mut router = None;
    if let Some(bytes) = bundle.router_bytes()? {
        let label = format!("{}: router", dir.display());
        let r =
            Router::from_json_bytes(&bytes).map_err(|e| Error::Config(format!("{label}: {e}")))?;
        if r.dim() != config.hidden_size {
            return Err(Error::Config(format!(
                "{label}: features of width {}, the model's hidden size is {}",
                r.dim(),
                config.hidden_size
            )));
        }
        if let Some(missing) = r.skills().iter().find(|s| !names.contains(s)) {
            return Err(Error::Config(format!(
                "{label}: routes to skill {missing}, which the bundle does not hold"
            )));
        }
        router = Some(r);
    }
    Ok(Parts {
        model,
        tokenizer,
        backbone_hash: hash,
        packs,
        router,
    })
}

/// The backbone hash of a model's weights (f32, HF names), as `skillzip compress` records it.
pub fn backbone_hash(model: &Llama) -> Result<String> {
    let mut hasher = BackboneHasher::new();
    for (name, tensor) in model.parameters() {
        let values: Vec<f32> = tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(skillzip_lm::Error::from)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.add(name, "F32", tensor.dims(), &bytes)?;
    }
    Ok(hasher.finish())
}
