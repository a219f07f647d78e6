//! Calibration: run the base model over one skill's prompts and keep, per linear input, the
//! smoothing statistic `mean_t |X_{t,i}|` and bounded row reservoirs — one per split
//! (calibration, selection, held-out; DESIGN.md §4.7, disjoint by prompt).
//!
//! The model runs **block by block** ([`calibrate`]): hidden states of every prompt are kept
//! (`tokens × d` floats), one block's weights are loaded, every prompt passes through it, the
//! block is dropped and the next is loaded. Peak memory is one block plus the hidden states plus
//! the reservoirs, whatever the model's size (an 8B model in f32 is 32 GB; one of its blocks
//! is under 1 GB).
//!
//! Linear layers that read the same input share statistics: q/k/v read the attention input,
//! gate/up the MLP input ([`InputSite`]).
//!
//! The statistics are saved as a safetensors file ([`SkillCalibration::save`]) so that
//! `skillzip compress` can reuse them.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use faer::{Mat, MatRef};
use skillzip_core::smooth::ActStats;
use skillzip_format::dense::DenseDtype;

use crate::checkpoint::{Checkpoint, LinearKind};
use crate::error::{Error, Result};
use crate::model::{Block, LinearHook, Positions};

/// The distinct inputs of a block's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputSite {
    /// The normed attention input (q, k, v).
    AttnIn,
    /// The attention output (o).
    AttnOut,
    /// The normed MLP input (gate, up).
    MlpIn,
    /// The SwiGLU product (down).
    MlpMid,
}

impl InputSite {
    /// All four, in forward order.
    pub const ALL: [InputSite; 4] = [Self::AttnIn, Self::AttnOut, Self::MlpIn, Self::MlpMid];

    /// The input a linear reads.
    pub fn of(kind: LinearKind) -> Self {
        match kind {
            LinearKind::Q | LinearKind::K | LinearKind::V => Self::AttnIn,
            LinearKind::O => Self::AttnOut,
            LinearKind::Gate | LinearKind::Up => Self::MlpIn,
            LinearKind::Down => Self::MlpMid,
        }
    }

    /// A stable name used in saved files.
    pub fn name(self) -> &'static str {
        match self {
            Self::AttnIn => "attn_in",
            Self::AttnOut => "attn_out",
            Self::MlpIn => "mlp_in",
            Self::MlpMid => "mlp_mid",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The three disjoint splits of a skill's prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Smoothing statistics, Hessians, static scales.
    Calibration,
    /// Choosing α and the rotation.
    Selection,
    /// Reporting fidelity.
    HeldOut,
}

impl Split {
    /// All three.
    pub const ALL: [Split; 3] = [Self::Calibration, Self::Selection, Self::HeldOut];

    /// A stable name used in saved files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Calibration => "calibration",
            Self::Selection => "selection",
            Self::HeldOut => "heldout",
        }
    }
}

/// How much to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibrationOptions {
    /// Reservoir rows per input site for the calibration split.
    pub calibration_rows: usize,
    /// Reservoir rows per input site for the selection split.
    pub selection_rows: usize,
    /// Reservoir rows per input site for the held-out split.
    pub heldout_rows: usize,
    /// Seed of the reservoirs.
    pub seed: u64,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            calibration_rows: 512,
            selection_rows: 256,
            heldout_rows: 256,
            seed: 0,
        }
    }
}

/// One site's statistics for one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteStats {
    /// `mean_t |X_{t,i}|` over every token of the split.
    pub mean_abs: Vec<f64>,
    /// Tokens observed.
    pub tokens: u64,
    /// Up to the split's reservoir size of uniformly sampled rows (`rows × C_i`).
    pub rows: Mat<f32>,
}

/// One skill's calibration statistics: per (block, input site, split).
#[derive(Debug, Clone, PartialEq)]
pub struct SkillCalibration {
    /// The skill's name.
    pub skill: String,
    /// Statistics by (block, site, split).
    pub sites: BTreeMap<(usize, InputSite, Split), SiteStats>,
}

impl SkillCalibration {
    /// Statistics of the input of linear `kind` in block `layer` for `split`.
    pub fn get(&self, layer: usize, kind: LinearKind, split: Split) -> Option<&SiteStats> {
        self.sites.get(&(layer, InputSite::of(kind), split))
    }

    /// Writes the statistics as one safetensors file (atomic): tensors
    /// `model.layers.{l}.{site}.{split}.rows` `[rows, C_i]` and `….mean_abs` `[C_i]`, F32,
    /// with the skill and token counts in the metadata.
    pub fn save(&self, path: &Path) -> Result<u64> {
        // Streamed one site at a time: memory stays at the statistics plus one tensor.
        let mut list = Vec::with_capacity(2 * self.sites.len());
        let mut metadata = vec![
            ("format".to_string(), "skillzip.calibration".to_string()),
            ("version".to_string(), "1".to_string()),
            ("skill".to_string(), self.skill.clone()),
        ];
        let mut by_name = BTreeMap::new();
        for (&id, s) in &self.sites {
            let key = site_key(id);
            list.push((format!("{key}.rows"), vec![s.rows.nrows(), s.rows.ncols()]));
            list.push((format!("{key}.mean_abs"), vec![s.mean_abs.len()]));
            metadata.push((format!("{key}.tokens"), s.tokens.to_string()));
            by_name.insert(format!("{key}.rows"), (s, true));
            by_name.insert(format!("{key}.mean_abs"), (s, false));
        }
        let meta: Vec<(&str, &str)> = metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        crate::save::write_streamed(path, &list, DenseDtype::F32, &meta, &mut |name, _| {
            let (s, rows) = by_name[name];
            Ok(if rows {
                let (r, c) = (s.rows.nrows(), s.rows.ncols());
                (0..r)
                    .flat_map(|i| (0..c).map(move |j| (i, j)))
                    .map(|(i, j)| s.rows[(i, j)])
                    .collect()
            } else {
                s.mean_abs.iter().map(|v| *v as f32).collect()
            })
        })
    }

    /// Reads statistics written by [`SkillCalibration::save`], validating names and shapes.
    pub fn load(path: &Path) -> Result<Self> {
        let file = CalibrationFile::open(path)?;
        let mut sites = BTreeMap::new();
        for id in file.keys()? {
            let stats = file.read_site(id)?.ok_or_else(|| Error::Safetensors {
                file: file.label.clone(),
                what: format!("{} is incomplete", site_key(id)),
            })?;
            sites.insert(id, stats);
        }
        Ok(Self {
            skill: file.skill,
            sites,
        })
    }
}

/// Where [`crate::compress`] reads a skill's statistics from: in memory, or a saved file read
/// one site at a time ([`CalibrationFile`]), so compressing a large model does not hold every
/// layer's rows at once.
pub trait CalibrationSource {
    /// The skill the statistics belong to.
    fn skill(&self) -> &str;
    /// The statistics of the input of linear `kind` in block `layer` for `split`, if present.
    fn site(&self, layer: usize, kind: LinearKind, split: Split) -> Result<Option<SiteStats>>;
}

impl CalibrationSource for SkillCalibration {
    fn skill(&self) -> &str {
        &self.skill
    }

    fn site(&self, layer: usize, kind: LinearKind, split: Split) -> Result<Option<SiteStats>> {
        Ok(self.get(layer, kind, split).cloned())
    }
}

/// A saved calibration file, memory-mapped; sites are read on demand.
pub struct CalibrationFile {
    label: String,
    skill: String,
    map: memmap2::Mmap,
    header_len: usize,
    metadata: safetensors::tensor::Metadata,
}

impl std::fmt::Debug for CalibrationFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalibrationFile")
            .field("file", &self.label)
            .field("skill", &self.skill)
            .finish_non_exhaustive()
    }
}

impl CalibrationFile {
    /// Opens and validates the header of a file [`SkillCalibration::save`] wrote. The file
    /// must not change while open.
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let map = crate::checkpoint::map_file(path)?;
        let bad = |what: String| Error::Safetensors {
            file: label.clone(),
            what,
        };
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("skillzip.calibration") {
            return Err(bad(
                "not a skillzip calibration file (metadata format)".into()
            ));
        }
        let skill = meta
            .get("skill")
            .cloned()
            .ok_or_else(|| bad("metadata skill is missing".into()))?;
        for (name, info) in metadata.tensors() {
            if info.dtype != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    info.dtype
                )));
            }
        }
        Ok(Self {
            label,
            skill,
            map,
            header_len,
            metadata,
        })
    }

    /// Every (block, site, split) the file holds; a tensor that belongs to none, or a site
    /// missing its `mean_abs`, is a typed error.
    pub fn keys(&self) -> Result<Vec<(usize, InputSite, Split)>> {
        let bad = |what: String| Error::Safetensors {
            file: self.label.clone(),
            what,
        };
        let tensors = self.metadata.tensors();
        let mut keys = Vec::new();
        for name in tensors.keys() {
            let key = name
                .strip_suffix(".rows")
                .or_else(|| name.strip_suffix(".mean_abs"))
                .ok_or_else(|| bad(format!("unexpected tensor {name}")))?;
            let id = parse_site_key(key).ok_or_else(|| bad(format!("unexpected tensor {name}")))?;
            for part in ["rows", "mean_abs"] {
                if !tensors.contains_key(&format!("{key}.{part}")) {
                    return Err(bad(format!("{key}.{part} is missing")));
                }
            }
            if name.ends_with(".rows") {
                keys.push(id);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// One site's statistics (`None` when the file does not hold it).
    pub fn read_site(&self, id: (usize, InputSite, Split)) -> Result<Option<SiteStats>> {
        let key = site_key(id);
        let (Some((rs, rows)), Some((ms, mean))) = (
            self.tensor(&format!("{key}.rows"))?,
            self.tensor(&format!("{key}.mean_abs"))?,
        ) else {
            return Ok(None);
        };
        if rs.len() != 2 || ms != [rs[1]] {
            return Err(Error::Safetensors {
                file: self.label.clone(),
                what: format!("{key}: rows {rs:?} and mean_abs {ms:?} disagree"),
            });
        }
        let tokens = self
            .metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(&format!("{key}.tokens")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Safetensors {
                file: self.label.clone(),
                what: format!("{key}.tokens is missing"),
            })?;
        let (r, c) = (rs[0], rs[1]);
        Ok(Some(SiteStats {
            mean_abs: mean.iter().map(|v| *v as f64).collect(),
            tokens,
            rows: Mat::from_fn(r, c, |i, j| rows[i * c + j]),
        }))
    }

    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(info) = self.metadata.info(name) else {
            return Ok(None);
        };
        let start = 8 + self.header_len;
        let (b, e) = info.data_offsets;
        let bytes = self
            .map
            .get(start + b..start + e)
            .ok_or_else(|| Error::Safetensors {
                file: self.label.clone(),
                what: format!("tensor {name} lies outside the file"),
            })?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        crate::checkpoint::release_pages(&self.map, start + b, e - b);
        if data.len() != info.shape.iter().product::<usize>() {
            return Err(Error::Safetensors {
                file: self.label.clone(),
                what: format!("tensor {name}: byte length does not match its shape"),
            });
        }
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                file: self.label.clone(),
                tensor: name.to_string(),
                index,
            });
        }
        Ok(Some((info.shape.clone(), data)))
    }
}

impl CalibrationSource for CalibrationFile {
    fn skill(&self) -> &str {
        &self.skill
    }

    fn site(&self, layer: usize, kind: LinearKind, split: Split) -> Result<Option<SiteStats>> {
        self.read_site((layer, InputSite::of(kind), split))
    }
}

/// The tensor-name stem of one site: `model.layers.{l}.{site}.{split}`.
fn site_key((l, site, split): (usize, InputSite, Split)) -> String {
    format!("model.layers.{l}.{}.{}", site.name(), split.name())
}

/// The inverse of [`site_key`].
fn parse_site_key(key: &str) -> Option<(usize, InputSite, Split)> {
    let mut parts = key.strip_prefix("model.layers.")?.split('.');
    let l = parts.next()?.parse().ok()?;
    let site = InputSite::from_name(parts.next()?)?;
    let split_name = parts.next()?;
    let split = Split::ALL.into_iter().find(|s| s.name() == split_name)?;
    parts.next().is_none().then_some((l, site, split))
}

/// Splits prompts into the three disjoint splits by index: every 5th prompt is held out,
/// every 5th (offset 1) selects, the rest calibrate.
pub fn split_of(prompt_index: usize) -> Split {
    match prompt_index % 5 {
        0 => Split::HeldOut,
        1 => Split::Selection,
        _ => Split::Calibration,
    }
}

/// Collects statistics of one block for the prompt currently running.
struct Collector<'a> {
    layer: usize,
    split: Split,
    stats: &'a mut BTreeMap<(usize, InputSite, Split), ActStats>,
    opts: CalibrationOptions,
}

impl LinearHook for Collector<'_> {
    fn observe(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> Result<()> {
        let site = InputSite::of(kind);
        // q/k/v and gate/up read the same rows: count them once.
        if !matches!(
            kind,
            LinearKind::Q | LinearKind::O | LinearKind::Gate | LinearKind::Down
        ) {
            return Ok(());
        }
        debug_assert_eq!(layer, self.layer);
        let (rows, cols) = x.dims2()?;
        let data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let opts = self.opts;
        let split = self.split;
        let cap = match split {
            Split::Calibration => opts.calibration_rows,
            Split::Selection => opts.selection_rows,
            Split::HeldOut => opts.heldout_rows,
        };
        // A distinct reservoir seed per (block, site, split) so the samples are independent.
        let seed = opts.seed ^ ((layer as u64) << 32 | (site as u64) << 8 | split as u64);
        let stats = self
            .stats
            .entry((layer, site, split))
            .or_insert_with(|| ActStats::new(cols, cap, seed));
        stats.observe(MatRef::from_row_major_slice(&data, rows, cols))?;
        Ok(())
    }
}

/// Runs the base model over `prompts` (token ids) block by block and returns the skill's
/// statistics. `progress(block, blocks)` is called after each block.
pub fn calibrate(
    ckpt: &Checkpoint,
    skill: &str,
    prompts: &[Vec<u32>],
    opts: CalibrationOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SkillCalibration> {
    let config = ckpt.config().clone();
    if prompts.len() < 3 {
        return Err(Error::InvalidInput(format!(
            "skill {skill}: {} calibration prompts; at least 3 are needed (one per split)",
            prompts.len()
        )));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() || p.len() > config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "skill {skill}: prompt {i} has {} tokens (1..={} allowed)",
                p.len(),
                config.max_position_embeddings
            )));
        }
        if let Some(id) = p.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "skill {skill}: prompt {i} holds token id {id} outside the vocabulary"
            )));
        }
    }
    // Hidden states after the embeddings: only the embedding rows the prompts use are read.
    let embed = ckpt.load_expected(
        "model.embed_tokens.weight",
        &[config.vocab_size, config.hidden_size],
    )?;
    let d = config.hidden_size;
    let mut hidden: Vec<Tensor> = prompts
        .iter()
        .map(|p| {
            let data: Vec<f32> = p
                .iter()
                .flat_map(|&id| {
                    embed.data[id as usize * d..(id as usize + 1) * d]
                        .iter()
                        .copied()
                })
                .collect();
            Tensor::from_vec(data, (1, p.len(), d), &Device::Cpu)
        })
        .collect::<candle_core::Result<_>>()?;
    drop(embed);
    let mut stats = BTreeMap::new();
    let blocks = config.num_hidden_layers;
    for l in 0..blocks {
        let block = Block::load(ckpt, l)?;
        for (i, h) in hidden.iter_mut().enumerate() {
            let pos = Positions::new(&config, 0, h.dim(1)?)?;
            let mut collector = Collector {
                layer: l,
                split: split_of(i),
                stats: &mut stats,
                opts,
            };
            *h = block.forward(&config, h, &pos, None, &mut collector)?;
        }
        progress(l + 1, blocks);
    }
    let sites = stats
        .into_iter()
        .map(|(k, s)| {
            (
                k,
                SiteStats {
                    mean_abs: s.mean_abs(),
                    tokens: s.tokens(),
                    rows: s.reservoir(),
                },
            )
        })
        .collect();
    Ok(SkillCalibration {
        skill: skill.to_string(),
        sites,
    })
}
