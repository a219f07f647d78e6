//! Model merging of task vectors with **mergekit 0.1.5** semantics (DESIGN.md §4, step 1).
//!
//! A task vector is one tensor's delta `Δ_k = θ_k − θ_0`, given here as a flat `f32` slice; all
//! `K` task vectors of a call have the same length. Every method is mergekit's "generalized
//! task arithmetic" with three ingredients:
//!
//! 1. **Sparsification** of each `Δ_k` on its own ([`Sparsification`], [`sparsify`]), with the
//!    model's `density` (fraction kept), `gamma` (breadcrumbs) or `epsilon` (DELLA), and an
//!    optional rescale of the kept values ([`RescaleMode`]).
//! 2. **Weighting**: `δ_k = w_k · Δ_k` (sparsified).
//! 3. **Sign consensus** (TIES-style, [`Consensus`]): per element an elected sign — with
//!    [`Consensus::Sum`] the sign of `Σ_k δ_k`, a zero sum electing `+` — and only the `δ_k`
//!    whose sign equals it take part (a zero `δ_k` never does). Then
//!    `merged = Σ_k δ_k·m_k`, divided by `Σ_k w_k·m_k` when `normalize` (a zero divisor counts
//!    as 1), times `lambda`. Without consensus every `δ_k` takes part and the divisor is
//!    `Σ_k w_k` (counted as 1 when `|Σ w| < 1e-8`).
//!
//! | method ([`MergeMethod`]) | sparsification | consensus | normalize | rescale |
//! |---|---|---|---|---|
//! | `task_arithmetic` | none | none | false | false |
//! | `ties` | magnitude (top-k) | sum | true | false |
//! | `dare_linear` | random (Bernoulli) | none | false | true |
//! | `dare_ties` | random (Bernoulli) | sum | false | true |
//! | `breadcrumbs` | magnitude outliers | none | false | false |
//! | `breadcrumbs_ties` | magnitude outliers | sum | false | false |
//! | `della` | DELLA magprune | sum | true | true |
//! | `della_linear` | DELLA magprune | none | false | true |
//!
//! (defaults from mergekit 0.1.5 `merge_methods/registry.py`; [`MergeConfig::new`] applies
//! them and every field can be overridden.)
//!
//! Random masks (DARE, DELLA) come from a [`MaskSource`]: drawn from a seed with
//! [`crate::seeded_rng`], or given by the caller so tests can compare against hand-computed
//! vectors. [`extract_shared`] splits `K` deltas into the shared component `Merge(Δ_1..Δ_K)`
//! and the residuals `Δ_k − shared` (DESIGN.md §4 step 1).
//!
//! Arithmetic: selections compare `|Δ|` in `f32`; sums, ratios and the final combination are
//! evaluated per element in `f64` and rounded to `f32` once. mergekit works in the
//! checkpoint's dtype, so results agree with it to that dtype's rounding. Where mergekit sorts
//! with torch's (unstable) `argsort`, exact ties in `|Δ|` are broken here as a stable sort
//! does: by the lower index first.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rand::RngExt;

use crate::SeededRng;
use crate::error::{Error, Result, ensure_shape};

/// A sum of weights or norms below this counts as zero (mergekit's thresholds).
const LINEAR_DIVISOR_EPS: f64 = 1e-8;
/// Norms below this disable the L1 rescale (mergekit `rescaled_masked_tensor`, `eps`).
const RESCALE_EPS: f64 = 1e-7;

/// The merge methods of mergekit 0.1.5 built on generalized task arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MergeMethod {
    /// `task_arithmetic`: weighted sum of the task vectors (Ilharco et al., 2212.04089).
    TaskArithmetic,
    /// `ties`: magnitude top-k, sign election by sum, normalized (Yadav et al., 2306.01708).
    Ties,
    /// `dare_linear`: Bernoulli drop with rescale, weighted sum (Yu et al., 2311.03099).
    DareLinear,
    /// `dare_ties`: Bernoulli drop with rescale, then TIES sign consensus.
    DareTies,
    /// `breadcrumbs`: drop the largest `gamma` and the smallest magnitudes (2312.06795).
    Breadcrumbs,
    /// `breadcrumbs_ties`: breadcrumbs sparsification with TIES sign consensus.
    BreadcrumbsTies,
    /// `della`: magnitude-ranked keep probabilities, TIES consensus (Deep et al., 2406.11617).
    Della,
    /// `della_linear`: DELLA sparsification, weighted sum.
    DellaLinear,
}

impl MergeMethod {
    /// Every method, in the order of mergekit's registry.
    pub const ALL: [MergeMethod; 8] = [
        MergeMethod::TaskArithmetic,
        MergeMethod::Ties,
        MergeMethod::DareTies,
        MergeMethod::DareLinear,
        MergeMethod::Breadcrumbs,
        MergeMethod::BreadcrumbsTies,
        MergeMethod::Della,
        MergeMethod::DellaLinear,
    ];

    /// The mergekit name (`merge_method:` in a mergekit YAML).
    pub const fn name(self) -> &'static str {
        match self {
            MergeMethod::TaskArithmetic => "task_arithmetic",
            MergeMethod::Ties => "ties",
            MergeMethod::DareLinear => "dare_linear",
            MergeMethod::DareTies => "dare_ties",
            MergeMethod::Breadcrumbs => "breadcrumbs",
            MergeMethod::BreadcrumbsTies => "breadcrumbs_ties",
            MergeMethod::Della => "della",
            MergeMethod::DellaLinear => "della_linear",
        }
    }

    /// How each task vector is sparsified (`None`: kept whole).
    pub const fn sparsification(self) -> Option<Sparsification> {
        match self {
            MergeMethod::TaskArithmetic => None,
            MergeMethod::Ties => Some(Sparsification::Magnitude),
            MergeMethod::DareLinear | MergeMethod::DareTies => Some(Sparsification::Random),
            MergeMethod::Breadcrumbs | MergeMethod::BreadcrumbsTies => {
                Some(Sparsification::MagnitudeOutliers)
            }
            MergeMethod::Della | MergeMethod::DellaLinear => Some(Sparsification::DellaMagprune),
        }
    }

    /// The sign consensus the method uses by default (`None`: plain weighted sum).
    pub const fn consensus(self) -> Option<Consensus> {
        match self {
            MergeMethod::Ties
            | MergeMethod::DareTies
            | MergeMethod::BreadcrumbsTies
            | MergeMethod::Della => Some(Consensus::Sum),
            MergeMethod::TaskArithmetic
            | MergeMethod::DareLinear
            | MergeMethod::Breadcrumbs
            | MergeMethod::DellaLinear => None,
        }
    }

    /// mergekit's default for `normalize`: true for `ties` and `della` only.
    pub const fn default_normalize(self) -> bool {
        matches!(self, MergeMethod::Ties | MergeMethod::Della)
    }

    /// mergekit's default for `rescale`: true for the random methods (DARE, DELLA).
    pub const fn default_rescale(self) -> bool {
        matches!(
            self,
            MergeMethod::DareLinear
                | MergeMethod::DareTies
                | MergeMethod::Della
                | MergeMethod::DellaLinear
        )
    }
}

impl fmt::Display for MergeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MergeMethod {
    type Err = Error;

    /// Parses a mergekit method name; unknown names give [`Error::InvalidConfig`].
    fn from_str(s: &str) -> Result<Self> {
        MergeMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::InvalidConfig(format!("unknown merge method {s:?}")))
    }
}

/// How one task vector is sparsified (mergekit `SparsificationMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sparsification {
    /// Keep the `k = max(1, ⌊density·n⌋)` largest magnitudes (TIES trim).
    Magnitude,
    /// Keep each element independently with probability `density` (DARE).
    Random,
    /// Breadcrumbs: with `target = ⌊density·n⌋`, `top = ⌊gamma·n⌋` and
    /// `bottom = max(0, n − target − top)`, sort magnitudes ascending and keep sorted positions
    /// `bottom .. bottom + target` (the `top` largest are removed as outliers; when they cannot
    /// all be removed without going below `target`, fewer are).
    MagnitudeOutliers,
    /// DELLA MagPrune: within each row, rank the magnitudes `r = 1..m` ascending and keep each
    /// element with probability `p = (density − ε) + 2ε·(r − 1)/(m − 1)`, which requires
    /// `0 < density − ε` and `density + ε < 1`.
    DellaMagprune,
}

/// How the TIES sign of an element is elected (mergekit `ConsensusMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consensus {
    /// The sign of `Σ_k w_k·Δ_k` (the TIES paper; a zero sum elects `+`).
    Sum,
    /// The sign of `Σ_k sign(w_k·Δ_k)` (a plain vote; a tie elects `+`).
    Count,
}

/// What `rescale = true` does to the values a sparsifier kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RescaleMode {
    /// mergekit 0.1.5 (and DESIGN.md's default): multiply the kept values by
    /// `‖Δ‖₁ / ‖Δ ⊙ mask‖₁` over the whole tensor, unless either norm is below `1e-7`.
    #[default]
    L1,
    /// The DARE paper's form: divide each kept value by its keep probability — `density` for
    /// DARE and the deterministic sparsifiers, the element's own `p` for DELLA. (mergekit
    /// before 0.1.x divided by `density`.)
    InverseDensity,
}

/// Per-model parameters (mergekit's non-base parameters of one input model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelParams {
    /// `weight`: the multiplier of this model's task vector (required in mergekit; any finite
    /// value, negative included).
    pub weight: f64,
    /// `density`: the fraction of the task vector kept, in `[0, 1]` (default 1: nothing is
    /// dropped). With `density ≥ 1` a sparsifier returns the task vector unchanged; with 0 it
    /// returns zeros.
    pub density: f64,
    /// `gamma` (breadcrumbs): the fraction of largest magnitudes removed, in `[0, 1]`
    /// (default 0.01).
    pub gamma: f64,
    /// `epsilon` (DELLA): half-width of the keep-probability band around `density`
    /// (default 0.15).
    pub epsilon: f64,
}

impl ModelParams {
    /// A model with the given `weight` and mergekit's defaults for the rest (`density` 1,
    /// `gamma` 0.01, `epsilon` 0.15).
    pub const fn new(weight: f64) -> Self {
        Self {
            weight,
            density: 1.0,
            gamma: 0.01,
            epsilon: 0.15,
        }
    }

    /// Sets `density`.
    pub const fn with_density(mut self, density: f64) -> Self {
        self.density = density;
        self
    }

    /// Sets `gamma`.
    pub const fn with_gamma(mut self, gamma: f64) -> Self {
        self.gamma = gamma;
        self
    }

    /// Sets `epsilon`.
    pub const fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Checks that every field is finite and in range; `model` names the model in errors.
    fn validate(&self, model: usize) -> Result<()> {
        let bad = |what: &str, v: f64, range: &str| {
            Err(Error::InvalidConfig(format!(
                "model {model}: {what} = {v} is not {range}"
            )))
        };
        if !self.weight.is_finite() {
            return bad("weight", self.weight, "finite");
        }
        if !(0.0..=1.0).contains(&self.density) {
            return bad("density", self.density, "in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.gamma) {
            return bad("gamma", self.gamma, "in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            return bad("epsilon", self.epsilon, "in [0, 1]");
        }
        Ok(())
    }
}

/// One merge: the method, the per-model parameters and the shared parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeConfig {
    /// The method; it fixes the sparsification.
    pub method: MergeMethod,
    /// One entry per task vector, in the same order.
    pub models: Vec<ModelParams>,
    /// Sign consensus (default: the method's; `None` is a plain weighted sum).
    pub consensus: Option<Consensus>,
    /// `normalize`: divide by the sum of the participating weights.
    pub normalize: bool,
    /// `rescale`: rescale the values a sparsifier kept, as `rescale_mode` says.
    pub rescale: bool,
    /// How `rescale` rescales (default [`RescaleMode::L1`], as mergekit 0.1.5).
    pub rescale_mode: RescaleMode,
    /// `lambda`: final multiplier of the merged task vector (default 1).
    pub lambda: f64,
    /// Row length for DELLA's magnitude ranks. mergekit ranks along dim 1, i.e. within each
    /// row of a 2-D weight: pass the row length of the flattened tensor (`in` for an HF
    /// `[out, in]` weight) to match it. `None` ranks the whole slice as one row, as mergekit
    /// does for a 1-D tensor. Other methods ignore it.
    pub row_len: Option<usize>,
}

impl MergeConfig {
    /// A config with mergekit 0.1.5's defaults for `method`: its consensus, `normalize` and
    /// `rescale` defaults, L1 rescale, `lambda` 1, whole-slice DELLA ranks.
    pub fn new(method: MergeMethod, models: Vec<ModelParams>) -> Self {
        Self {
            method,
            models,
            consensus: method.consensus(),
            normalize: method.default_normalize(),
            rescale: method.default_rescale(),
            rescale_mode: RescaleMode::L1,
            lambda: 1.0,
            row_len: None,
        }
    }

    /// Sets `normalize`.
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    /// Sets `rescale`.
    pub fn with_rescale(mut self, rescale: bool) -> Self {
        self.rescale = rescale;
        self
    }

    /// Sets how `rescale` rescales.
    pub fn with_rescale_mode(mut self, mode: RescaleMode) -> Self {
        self.rescale_mode = mode;
        self
    }

    /// Sets `lambda`.
    pub fn with_lambda(mut self, lambda: f64) -> Self {
        self.lambda = lambda;
        self
    }

    /// Sets the sign consensus.
    pub fn with_consensus(mut self, consensus: Option<Consensus>) -> Self {
        self.consensus = consensus;
        self
    }

    /// Sets the DELLA rank row length.
    pub fn with_row_len(mut self, row_len: Option<usize>) -> Self {
        self.row_len = row_len;
        self
    }

    /// The rescale applied by the sparsifiers, if any.
    fn rescale_mode(&self) -> Option<RescaleMode> {
        self.rescale.then_some(self.rescale_mode)
    }
}

/// Where the random keep-masks of DARE and DELLA come from.
///
/// Deterministic sparsifiers (magnitude, breadcrumbs) and `task_arithmetic` do not use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskSource {
    /// Drawn from one [`crate::seeded_rng`] stream: model 0's mask first, element by element
    /// (element `i` kept when a uniform `f64` in `[0, 1)` is below its keep probability), then
    /// model 1's, and so on. A model whose sparsifier returns early (`density` 0 or ≥ 1) draws
    /// nothing.
    Seeded(u64),
    /// Given masks, one per model, each as long as the task vectors (`true` = kept). A model
    /// with `density ≥ 1` is still kept whole and one with `density` 0 still becomes zeros, as
    /// in mergekit. [`merge`] checks their shape whatever the method.
    Given(Vec<Vec<bool>>),
}

/// The keep decisions of one random sparsification.
#[derive(Debug)]
pub enum Keep<'a> {
    /// Draw them from this generator (see [`MaskSource::Seeded`] for the order).
    Draw(&'a mut SeededRng),
    /// Use these (`true` = kept); must be as long as the task vector.
    Given(&'a [bool]),
}

/// Merges `K` task vectors of one tensor into one (mergekit's merged delta, without the base).
///
/// `deltas[k]` goes with `config.models[k]`; all deltas must have the same non-zero length.
/// Errors: [`Error::Empty`] for no deltas or zero-length deltas, [`Error::ShapeMismatch`] for
/// ragged deltas, a parameter count other than `K` or masks of the wrong shape,
/// [`Error::NonFinite`] for NaN/Inf (the index is row-major over the `K × n` stack; `what` is
/// `"merged task vector"` when the result overflows `f32`) and
/// [`Error::InvalidConfig`] for out-of-range parameters.
pub fn merge<D: AsRef<[f32]>>(
    deltas: &[D],
    config: &MergeConfig,
    masks: &MaskSource,
) -> Result<Vec<f32>> {
    let n = validate(deltas, config, masks)?;
    // Unused (but harmless) when the masks are given.
    let mut rng = crate::seeded_rng(match masks {
        MaskSource::Seeded(seed) => *seed,
        MaskSource::Given(_) => 0,
    });

    // 1. Sparsify each task vector on its own.
    let sparse: Vec<Cow<'_, [f32]>> = deltas
        .iter()
        .enumerate()
        .map(|(k, delta)| {
            let delta = delta.as_ref();
            let Some(method) = config.method.sparsification() else {
                return Cow::Borrowed(delta);
            };
            let keep = match masks {
                MaskSource::Seeded(_) => Keep::Draw(&mut rng),
                MaskSource::Given(given) => Keep::Given(&given[k]),
            };
            let params = &config.models[k];
            Cow::Owned(sparsify_unchecked(
                delta,
                method,
                params,
                config.rescale_mode(),
                config.row_len.unwrap_or(n),
                keep,
            ))
        })
        .collect();

    // 2 and 3. Weight, elect signs, combine; per element in f64.
    let weights: Vec<f64> = config.models.iter().map(|m| m.weight).collect();
    let weight_sum: f64 = weights.iter().sum();
    let linear_divisor = if weight_sum.abs() < LINEAR_DIVISOR_EPS {
        1.0
    } else {
        weight_sum
    };
    let mut weighted = vec![0.0f64; deltas.len()];
    let merged = (0..n)
        .map(|i| {
            for ((wd, w), s) in weighted.iter_mut().zip(&weights).zip(&sparse) {
                // An f32 times an f32 is exact in f64.
                *wd = w * f64::from(s[i]);
            }
            let (mixed, divisor) = match config.consensus {
                None => (weighted.iter().sum::<f64>(), linear_divisor),
                Some(consensus) => {
                    let elected = elected_sign(&weighted, consensus);
                    let (mut mixed, mut divisor) = (0.0f64, 0.0f64);
                    for (wd, w) in weighted.iter().zip(&weights) {
                        if sign(*wd) == elected {
                            mixed += wd;
                            divisor += w;
                        }
                    }
                    (mixed, if divisor == 0.0 { 1.0 } else { divisor })
                }
            };
            let normalized = if config.normalize {
                mixed / divisor
            } else {
                mixed
            };
            (normalized * config.lambda) as f32
        })
        .collect::<Vec<f32>>();
    // Finite inputs can still overflow f32 (huge weights, a tiny TIES divisor).
    crate::error::ensure_finite("merged task vector", &merged)?;
    Ok(merged)
}

/// Splits `K` task vectors of one tensor into a shared component and residuals (DESIGN.md §4
/// step 1): `shared = merge(deltas)` and `residuals[k] = deltas[k] − shared` (one `f32`
/// subtraction per element). Errors as [`merge`].
pub fn extract_shared<D: AsRef<[f32]>>(
    deltas: &[D],
    config: &MergeConfig,
    masks: &MaskSource,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let shared = merge(deltas, config, masks)?;
    let residuals = deltas
        .iter()
        .map(|d| d.as_ref().iter().zip(&shared).map(|(d, s)| d - s).collect())
        .collect();
    Ok((shared, residuals))
}

/// Sparsifies one task vector (mergekit `sparsify`), before any weighting.
///
/// `rescale = None` keeps the surviving values as they are. `row_len` is the DELLA rank row
/// length (`None`: the whole slice); `keep` supplies the random decisions of
/// [`Sparsification::Random`] and [`Sparsification::DellaMagprune`] and is ignored otherwise.
/// Errors: [`Error::Empty`], [`Error::NonFinite`], [`Error::InvalidConfig`] (parameters out of
/// range, a DELLA band outside `(0, 1)`, a row length that does not divide the length) and
/// [`Error::ShapeMismatch`] (a given mask of another length, for the random sparsifiers).
pub fn sparsify(
    delta: &[f32],
    method: Sparsification,
    params: &ModelParams,
    rescale: Option<RescaleMode>,
    row_len: Option<usize>,
    keep: Keep<'_>,
) -> Result<Vec<f32>> {
    let n = delta.len();
    if n == 0 {
        return Err(Error::Empty("task vector"));
    }
    crate::error::ensure_finite("task vector", delta)?;
    params.validate(0)?;
    let row_len = validate_row_len(row_len, n)?;
    if method == Sparsification::DellaMagprune {
        validate_della_band(params, 0)?;
    }
    let random = matches!(
        method,
        Sparsification::Random | Sparsification::DellaMagprune
    );
    if let (true, Keep::Given(mask)) = (random, &keep) {
        ensure_shape("keep mask", (n, 1), (mask.len(), 1))?;
    }
    Ok(sparsify_unchecked(
        delta, method, params, rescale, row_len, keep,
    ))
}

/// DELLA's keep probability of every element (mergekit `della_magprune`): within each row of
/// `row_len` elements (`None`: the whole slice), magnitudes ranked `r = 1..m` ascending (exact
/// ties: lower index first) give `p = (density − ε) + 2ε·(r − 1)/(m − 1)`, computed in `f64`
/// (and used so by the sparsifier) and returned rounded to `f32`. A row of one element gets
/// `p = density` (mergekit divides 0 by 0 there). `density ≥ 1` gives all ones and `density` 0
/// all zeros (nothing is drawn then).
pub fn della_keep_probabilities(
    delta: &[f32],
    density: f64,
    epsilon: f64,
    row_len: Option<usize>,
) -> Result<Vec<f32>> {
    let n = delta.len();
    if n == 0 {
        return Err(Error::Empty("task vector"));
    }
    crate::error::ensure_finite("task vector", delta)?;
    let params = ModelParams::new(1.0)
        .with_density(density)
        .with_epsilon(epsilon);
    params.validate(0)?;
    validate_della_band(&params, 0)?;
    let row_len = validate_row_len(row_len, n)?;
    Ok(if density >= 1.0 {
        vec![1.0; n]
    } else if density <= 0.0 {
        vec![0.0; n]
    } else {
        della_probabilities(delta, density, epsilon, row_len)
            .into_iter()
            .map(|p| p as f32)
            .collect()
    })
}

/// Checks everything [`merge`] needs and returns the task-vector length.
fn validate<D: AsRef<[f32]>>(
    deltas: &[D],
    config: &MergeConfig,
    masks: &MaskSource,
) -> Result<usize> {
    let k = deltas.len();
    let Some(first) = deltas.first() else {
        return Err(Error::Empty("task vectors"));
    };
    let n = first.as_ref().len();
    if n == 0 {
        return Err(Error::Empty("task vector"));
    }
    ensure_shape("model parameters", (k, 1), (config.models.len(), 1))?;
    for (m, delta) in deltas.iter().enumerate() {
        let delta = delta.as_ref();
        ensure_shape("task vector", (1, n), (1, delta.len()))?;
        if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "task vectors",
                index: m * n + i,
            });
        }
    }
    for (m, params) in config.models.iter().enumerate() {
        params.validate(m)?;
        if config.method.sparsification() == Some(Sparsification::DellaMagprune) {
            validate_della_band(params, m)?;
        }
    }
    if !config.lambda.is_finite() {
        return Err(Error::InvalidConfig(format!(
            "lambda = {} is not finite",
            config.lambda
        )));
    }
    validate_row_len(config.row_len, n)?;
    if let MaskSource::Given(given) = masks {
        ensure_shape("keep masks", (k, n), (given.len(), n))?;
        for mask in given {
            ensure_shape("keep masks", (k, n), (k, mask.len()))?;
        }
    }
    Ok(n)
}

/// The row length DELLA ranks within: `row_len` or `n`; it must divide `n`.
fn validate_row_len(row_len: Option<usize>, n: usize) -> Result<usize> {
    match row_len {
        None => Ok(n),
        Some(r) if r > 0 && n.is_multiple_of(r) => Ok(r),
        Some(r) => Err(Error::InvalidConfig(format!(
            "DELLA row length {r} does not divide the task-vector length {n}"
        ))),
    }
}

/// mergekit raises unless `density ± epsilon` lies in `(0, 1)` (checked only when
/// `0 < density < 1`, where the band is used).
fn validate_della_band(params: &ModelParams, model: usize) -> Result<()> {
    let (d, e) = (params.density, params.epsilon);
    if d > 0.0 && d < 1.0 && (d - e <= 0.0 || d + e >= 1.0) {
        return Err(Error::InvalidConfig(format!(
            "model {model}: DELLA needs density ± epsilon in (0, 1), got density {d}, epsilon {e}"
        )));
    }
    Ok(())
}

/// [`sparsify`] on validated input; `row_len` already resolved.
fn sparsify_unchecked(
    delta: &[f32],
    method: Sparsification,
    params: &ModelParams,
    rescale: Option<RescaleMode>,
    row_len: usize,
    keep: Keep<'_>,
) -> Vec<f32> {
    let n = delta.len();
    let density = params.density;
    if density >= 1.0 {
        return delta.to_vec();
    }
    if density <= 0.0 {
        return vec![0.0; n];
    }
    // The keep probability of each element: `density` except for DELLA.
    let probabilities = match method {
        Sparsification::DellaMagprune => {
            della_probabilities(delta, density, params.epsilon, row_len)
        }
        _ => vec![density; n],
    };
    let mask: Vec<bool> = match method {
        Sparsification::Magnitude => {
            // mergekit: k = max(1, int(density · n)), argsort(|Δ|, descending)[:k].
            let k = ((density * n as f64) as usize).max(1);
            let order = magnitude_order(delta, true);
            indices_to_mask(n, &order[..k])
        }
        Sparsification::MagnitudeOutliers => {
            let target = (density * n as f64) as usize;
            let top = (params.gamma * n as f64) as usize;
            let bottom = n.saturating_sub(target + top);
            let order = magnitude_order(delta, false);
            indices_to_mask(n, &order[bottom..bottom + target])
        }
        Sparsification::Random | Sparsification::DellaMagprune => match keep {
            Keep::Given(given) => given.to_vec(),
            Keep::Draw(rng) => probabilities
                .iter()
                .map(|&p| rng.random::<f64>() < p)
                .collect(),
        },
    };
    apply_mask(delta, &mask, &probabilities, rescale)
}

/// Indices sorted by `|Δ|` (descending or ascending); a stable sort, so exact ties keep the
/// lower index first.
fn magnitude_order(delta: &[f32], descending: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..delta.len()).collect();
    if descending {
        order.sort_by(|&a, &b| delta[b].abs().total_cmp(&delta[a].abs()));
    } else {
        order.sort_by(|&a, &b| delta[a].abs().total_cmp(&delta[b].abs()));
    }
    order
}

fn indices_to_mask(n: usize, kept: &[usize]) -> Vec<bool> {
    let mut mask = vec![false; n];
    for &i in kept {
        mask[i] = true;
    }
    mask
}

/// DELLA keep probabilities on validated input with `0 < density < 1`.
fn della_probabilities(delta: &[f32], density: f64, epsilon: f64, row_len: usize) -> Vec<f64> {
    let mut probabilities = vec![0.0f64; delta.len()];
    for (row, out) in delta.chunks(row_len).zip(probabilities.chunks_mut(row_len)) {
        let m = row.len();
        if m == 1 {
            out[0] = density;
            continue;
        }
        for (rank0, &i) in magnitude_order(row, false).iter().enumerate() {
            let rank_norm = rank0 as f64 / (m - 1) as f64;
            out[i] = (density - epsilon) + rank_norm * 2.0 * epsilon;
        }
    }
    probabilities
}

/// `Δ ⊙ mask`, rescaled as `rescale` says (mergekit `rescaled_masked_tensor` for L1).
fn apply_mask(
    delta: &[f32],
    mask: &[bool],
    probabilities: &[f64],
    rescale: Option<RescaleMode>,
) -> Vec<f32> {
    let masked = delta
        .iter()
        .zip(mask)
        .map(|(&v, &keep)| if keep { v } else { 0.0 });
    match rescale {
        None => masked.collect(),
        Some(RescaleMode::InverseDensity) => masked
            .zip(probabilities)
            .map(|(v, &p)| (f64::from(v) / p) as f32)
            .collect(),
        Some(RescaleMode::L1) => {
            let masked: Vec<f32> = masked.collect();
            let before: f64 = delta.iter().map(|&v| f64::from(v).abs()).sum();
            let after: f64 = masked.iter().map(|&v| f64::from(v).abs()).sum();
            if before < RESCALE_EPS || after < RESCALE_EPS {
                return masked;
            }
            let ratio = before / after;
            masked
                .iter()
                .map(|&v| (f64::from(v) * ratio) as f32)
                .collect()
        }
    }
}

/// `torch.sign`: −1, 0 or +1.
fn sign(v: f64) -> i8 {
    if v > 0.0 {
        1
    } else if v < 0.0 {
        -1
    } else {
        0
    }
}

/// The elected sign (±1) of one element from its weighted deltas; a zero total elects `+`.
fn elected_sign(weighted: &[f64], consensus: Consensus) -> i8 {
    let total: f64 = match consensus {
        Consensus::Sum => weighted.iter().sum(),
        Consensus::Count => weighted.iter().map(|&v| f64::from(sign(v))).sum(),
    };
    if total >= 0.0 { 1 } else { -1 }
}
