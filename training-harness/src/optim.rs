//! [`AdamW`] with decoupled weight decay and global-norm gradient clipping, and the
//! warm-up + cosine-decay learning-rate [`Schedule`].
//!
//! The optimizer keeps an f32 master copy of every trainable tensor and its two moments as
//! plain vectors, updates them in one fused pass per tensor (candle's tensor-op AdamW
//! allocates a dozen full-size temporaries per tensor per step), and writes the result back
//! into the model's [`Var`]s. Plain vectors also make the state trivial to checkpoint.

use candle_core::Var;
use candle_core::backprop::GradStore;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// AdamW's hyper-parameters (the learning rate comes from the [`Schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to `√v̂`.
    pub eps: f64,
    /// Decoupled weight decay (`θ ← θ − lr·λ·θ`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Linear warm-up to `peak_lr`, then cosine decay to `min_lr` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// Learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// Learning rate at (and after) `total_steps`.
    pub min_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Steps over which the rate decays.
    pub total_steps: usize,
}

impl Schedule {
    /// The rate of step `step` (0-based): `peak·(step+1)/warmup` during warm-up (so the first
    /// step moves), then `min + ½(peak − min)(1 + cos(π·p))` with `p` the fraction of the decay
    /// done, clamped to 1.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / decay as f64).min(1.0);
        self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
    /// The factor the gradient was scaled by (1 when not clipped).
    pub clip_scale: f64,
    /// The learning rate used.
    pub lr: f64,
}

/// AdamW over a set of named [`Var`]s.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    vars: Vec<Var>,
    master: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    steps: u64,
}

/// A tensor's values as f32 in row-major order.
fn values(var: &Var) -> Result<Vec<f32>> {
    Ok(var.as_tensor().flatten_all()?.to_vec1::<f32>()?)
}

impl AdamW {
    /// An optimizer for `vars` (name, variable), moments at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&config.beta1) || !(0.0..1.0).contains(&config.beta2) {
            return Err(Error::InvalidInput(format!(
                "AdamW betas {} and {} must lie in [0, 1)",
                config.beta1, config.beta2
            )));
        }
        let mut names = Vec::with_capacity(vars.len());
        let mut master = Vec::with_capacity(vars.len());
        let mut handles = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            master.push(values(&var)?);
            names.push(name);
            handles.push(var);
        }
        let zeros: Vec<Vec<f32>> = master.iter().map(|p| vec![0.0; p.len()]).collect();
        Ok(Self {
            config,
            names,
            vars: handles,
            m: zeros.clone(),
            v: zeros,
            master,
            steps: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The trainable tensors' names, in the optimizer's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The current values of the trainable tensors (the master copy), in [`AdamW::names`] order.
    pub fn parameters(&self) -> &[Vec<f32>] {
        &self.master
    }

    /// The first and second moments, in [`AdamW::names`] order.
    pub fn moments(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.m, &self.v)
    }

    /// Reads the gradient of every trainable tensor from `grads` (zero where a tensor got
    /// none), as flat f32 vectors in [`AdamW::names`] order.
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Vec<f32>>> {
        self.vars
            .iter()
            .zip(&self.master)
            .map(|(var, p)| match grads.get(var.as_tensor()) {
                Some(g) => Ok(g.flatten_all()?.to_vec1::<f32>()?),
                None => Ok(vec![0.0; p.len()]),
            })
            .collect()
    }

    /// One AdamW step with learning rate `lr` on gradients `grads` (as from
    /// [`AdamW::gradients`]), first scaled so their global L2 norm is at most `clip_norm`.
    /// Writes the new values into the variables.
    pub fn step(
        &mut self,
        grads: &[Vec<f32>],
        lr: f64,
        clip_norm: Option<f64>,
    ) -> Result<StepStats> {
        if grads.len() != self.master.len()
            || grads
                .iter()
                .zip(&self.master)
                .any(|(g, p)| g.len() != p.len())
        {
            return Err(Error::InvalidInput(
                "gradients do not match the optimizer's tensors".into(),
            ));
        }
        let grad_norm = global_norm(grads);
        if !grad_norm.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the gradient norm is {grad_norm}: refusing to step"
            )));
        }
        let clip_scale = match clip_norm {
            Some(c) if grad_norm > c => c / grad_norm,
            _ => 1.0,
        };
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let t = self.steps as i32;
        // Bias corrections folded into two constants: θ −= lr·(m/c1)/(√(v/c2) + ε) + lr·λ·θ.
        let c1 = 1.0 - beta1.powi(t);
        let c2 = 1.0 - beta2.powi(t);
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        let (scale, step_size) = (clip_scale as f32, (lr / c1) as f32);
        let (inv_c2, eps, decay) = ((1.0 / c2) as f32, eps as f32, (lr * weight_decay) as f32);
        for (i, g) in grads.iter().enumerate() {
            let (p, m, v) = (&mut self.master[i], &mut self.m[i], &mut self.v[i]);
            p.par_chunks_mut(1 << 14)
                .zip(m.par_chunks_mut(1 << 14))
                .zip(v.par_chunks_mut(1 << 14))
                .zip(g.par_chunks(1 << 14))
                .for_each(|(((p, m), v), g)| {
                    for j in 0..p.len() {
                        let gj = g[j] * scale;
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        let update = step_size * m[j] / ((v[j] * inv_c2).sqrt() + eps);
                        p[j] -= update + decay * p[j];
                    }
                });
            let var = &self.vars[i];
            let shape = var.as_tensor().shape().clone();
            var.set(&candle_core::Tensor::from_slice(
                p,
                shape,
                var.as_tensor().device(),
            )?)?;
        }
        Ok(StepStats {
            grad_norm,
            clip_scale,
            lr,
        })
    }

    /// Restores a saved state: parameters, moments (in [`AdamW::names`] order) and the step
    /// count. Shapes must match the optimizer's tensors.
    pub fn restore(
        &mut self,
        master: Vec<Vec<f32>>,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        steps: u64,
    ) -> Result<()> {
        let fits = |x: &[Vec<f32>]| {
            x.len() == self.master.len()
                && x.iter().zip(&self.master).all(|(a, b)| a.len() == b.len())
        };
        if !(fits(&master) && fits(&m) && fits(&v)) {
            return Err(Error::InvalidInput(
                "saved optimizer state does not match the model's trainable tensors".into(),
            ));
        }
        for (var, p) in self.vars.iter().zip(&master) {
            let shape = var.as_tensor().shape().clone();
            var.set(&candle_core::Tensor::from_slice(
                p,
                shape,
                var.as_tensor().device(),
            )?)?;
        }
        self.master = master;
        self.m = m;
        self.v = v;
        self.steps = steps;
        Ok(())
    }
}

/// The L2 norm of all gradients together, accumulated in f64.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads
        .par_iter()
        .map(|g| g.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}
