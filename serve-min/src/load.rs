//! Building the engine's [`Backbone`] from a base checkpoint and an optional bundle.

use std::path::Path;

use skillzip_format::BackboneHasher;
use skillzip_format::bundle::Bundle;
use skillzip_harness::router::Router;
use skillzip_lm::checkpoint::Checkpoint;
use skillzip_lm::model::Llama;
use skillzip_lm::skillpack::{SkillpackSet, bundle_model};
use skillzip_lm::tokenizer::Tokenizer;

use crate::api::reserved_skill_name;
use crate::engine::Backbone;
use crate::error::{Error, Result};

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
/// bundle loaded and the bundle's router (checked against the model's width and skills). The backbone's weights are hashed and must match the bundle's manifest
/// (a bundle made from another base is refused); each skillpack is checked against the
/// manifest by [`Bundle::skillpack`].
pub fn backbone(base: &Path, bundle: Option<&Path>) -> Result<Loaded> {
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
    let mut skills = SkillpackSet::new(&config);
    let mut names = Vec::new();
    let mut router = None;
    let (model, backbone_hash) = match bundle {
        Some(dir) => {
            let bundle = Bundle::open(dir)?;
            let (model, _) = bundle_model(&ckpt, &bundle, None)?;
            let hash = backbone_hash(&model)?;
            let expected = &bundle.manifest().base.backbone_hash;
            if &hash != expected {
                return Err(Error::Config(format!(
                    "{}: the bundle was made for backbone {expected}; {} plus its backbone \
                     delta is {hash} (another base model?)",
                    dir.display(),
                    base.display()
                )));
            }
            for entry in &bundle.manifest().skillpacks {
                if let Some(why) = reserved_skill_name(&entry.name) {
                    return Err(Error::Config(format!("{}: {why}", dir.display())));
                }
                let pack = bundle.skillpack(&entry.name)?;
                skills.insert(&pack).map_err(|e| {
                    Error::Config(format!("{}: skill {}: {e}", dir.display(), entry.name))
                })?;
                names.push(entry.name.clone());
            }
            if let Some(bytes) = bundle.router_bytes()? {
                let label = format!("{}: router", dir.display());
                let r = Router::from_json_bytes(&bytes)
                    .map_err(|e| Error::Config(format!("{label}: {e}")))?;
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
            (model, hash)
        }
        None => {
            let model = Llama::from_checkpoint(&ckpt)?;
            let hash = backbone_hash(&model)?;
            (model, hash)
        }
    };
    Ok(Loaded {
        backbone: Backbone {
            model,
            tokenizer,
            skills,
            router,
        },
        skills: names,
        backbone_hash,
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
