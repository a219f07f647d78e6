//! Channel-wise smoothing (DESIGN.md §4 step 2): streaming activation statistics over
//! calibration batches and the mapping from statistics to smoothing factors.
//!
//! [`ActStats`] accumulates `mean_t |X_{t,i}|` per input channel and keeps a bounded, seeded
//! reservoir of whole rows for error evaluation. [`Smoothing::from_stats`] maps the means to
//! factors `s_i = m_i^α / gm`, where `m_i = max(mean |X_i|, ε·max_j m_j)` (ε = 1e-5) and `gm`
//! is the geometric mean of `m^α`, so the factors have geometric mean 1. The runtime multiplies
//! activations by the stored f32 vector `s⁻¹`; weights become `W_s = diag(s)·W`.
//! The per-layer choice of α from a grid happens in [`crate::compress`].

use faer::{Mat, MatRef};
use rand::RngExt;

use crate::error::{Error, Result, ensure_finite_mat, ensure_shape};
use crate::{SeededRng, seeded_rng};

/// Floor of the per-channel statistic, relative to the largest channel.
pub const SMOOTHING_EPSILON: f64 = 1e-5;

/// Default grid of smoothing exponents α searched per layer.
pub const DEFAULT_ALPHA_GRID: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Streaming per-channel activation statistics plus a bounded row reservoir.
#[derive(Debug, Clone)]
pub struct ActStats {
    channels: usize,
    sum_abs: Vec<f64>,
    tokens: u64,
    capacity: usize,
    reservoir: Vec<f32>,
    rng: SeededRng,
}

impl ActStats {
    /// Statistics for `channels` input channels keeping at most `reservoir_rows` rows
    /// (uniformly sampled, Algorithm R with the given seed).
    pub fn new(channels: usize, reservoir_rows: usize, seed: u64) -> Self {
        Self {
            channels,
            sum_abs: vec![0.0; channels],
            tokens: 0,
            capacity: reservoir_rows,
            reservoir: Vec::with_capacity(reservoir_rows.min(4096) * channels),
            rng: seeded_rng(seed),
        }
    }

    /// Adds one calibration batch `x` (`T × channels`). Rejects NaN/Inf and a wrong width;
    /// on error the statistics are unchanged.
    pub fn observe(&mut self, x: MatRef<'_, f32>) -> Result<()> {
        ensure_shape(
            "calibration batch",
            (x.nrows(), self.channels),
            (x.nrows(), x.ncols()),
        )?;
        ensure_finite_mat("calibration activations", x)?;
        for t in 0..x.nrows() {
            for (i, s) in self.sum_abs.iter_mut().enumerate() {
                *s += x[(t, i)].abs() as f64;
            }
            let seen = self.tokens;
            self.tokens += 1;
            let slot = if (seen as usize) < self.capacity {
                None
            } else {
                let j = self.rng.random_range(0..=seen);
                (j < self.capacity as u64).then_some(j as usize)
            };
            if (seen as usize) < self.capacity {
                self.reservoir.extend((0..self.channels).map(|i| x[(t, i)]));
            } else if let Some(j) = slot {
                for i in 0..self.channels {
                    self.reservoir[j * self.channels + i] = x[(t, i)];
                }
            }
        }
        Ok(())
    }

    /// Number of input channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Tokens observed so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// `mean_t |X_{t,i}|` per channel (zeros before any token).
    pub fn mean_abs(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.sum_abs.iter().map(|s| s / n).collect()
    }

    /// The reservoir rows as a `rows × channels` matrix.
    pub fn reservoir(&self) -> Mat<f32> {
        let rows = self.reservoir.len() / self.channels.max(1);
        Mat::from_fn(rows, self.channels, |t, i| {
            self.reservoir[t * self.channels + i]
        })
    }
}

/// Smoothing factors of one layer for one skill.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothing {
    /// The exponent α the factors were made with.
    pub alpha: f32,
    /// `s`, multiplied into the weight rows: `W_s = diag(s)·W`.
    pub s: Vec<f32>,
    /// `s⁻¹` as stored f32 values, multiplied into the activations at run time.
    pub s_inv: Vec<f32>,
}

impl Smoothing {
    /// Factors `s_i = m_i^α / gm` from per-channel mean absolute activations.
    ///
    /// Rejects an empty or non-finite statistic and α outside `[0, 1]`. An all-zero
    /// statistic (a channel that never fired everywhere) yields the identity.
    pub fn from_stats(mean_abs: &[f64], alpha: f32) -> Result<Self> {
        if mean_abs.is_empty() {
            return Err(Error::Empty("smoothing statistics"));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::InvalidConfig(format!(
                "smoothing alpha {alpha} is outside [0, 1]"
            )));
        }
        if let Some(index) = mean_abs.iter().position(|m| !m.is_finite() || *m < 0.0) {
            return Err(Error::NonFinite {
                what: "smoothing statistics",
                index,
            });
        }
        let max = mean_abs.iter().cloned().fold(0.0f64, f64::max);
        if max == 0.0 {
            return Ok(Self::identity(mean_abs.len()));
        }
        let floor = SMOOTHING_EPSILON * max;
        let powered: Vec<f64> = mean_abs
            .iter()
            .map(|&m| m.max(floor).powf(alpha as f64))
            .collect();
        let log_gm = powered.iter().map(|p| p.ln()).sum::<f64>() / powered.len() as f64;
        let gm = log_gm.exp();
        let s: Vec<f32> = powered.iter().map(|p| (p / gm) as f32).collect();
        let s_inv = s.iter().map(|v| 1.0 / v).collect();
        Ok(Self { alpha, s, s_inv })
    }

    /// No smoothing: every factor 1.
    pub fn identity(channels: usize) -> Self {
        Self {
            alpha: 0.0,
            s: vec![1.0; channels],
            s_inv: vec![1.0; channels],
        }
    }

    /// `W_s = diag(s)·W` for `W` of shape `channels × C_o`.
    pub fn smooth_weight(&self, w: MatRef<'_, f32>) -> Mat<f32> {
        Mat::from_fn(w.nrows(), w.ncols(), |i, j| self.s[i] * w[(i, j)])
    }

    /// `X_s = X·diag(s⁻¹)` for `X` of shape `T × channels`, multiplying by the stored `s⁻¹`.
    pub fn smooth_activations(&self, x: MatRef<'_, f32>) -> Mat<f32> {
        Mat::from_fn(x.nrows(), x.ncols(), |t, i| x[(t, i)] * self.s_inv[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_have_unit_geometric_mean_and_follow_alpha() {
        let m = [1.0, 4.0, 16.0, 0.0];
        let s = Smoothing::from_stats(&m, 0.5).unwrap();
        let log_sum: f64 = s.s.iter().map(|v| (*v as f64).ln()).sum();
        assert!(
            log_sum.abs() < 1e-5,
            "geometric mean of s is not 1: {log_sum}"
        );
        // Ratios follow m^α: sqrt(16/4) = 2.
        assert!((s.s[2] / s.s[1] - 2.0).abs() < 1e-6);
        // The zero channel is floored at ε·max before the power.
        let floored = (1e-5f64 * 16.0).sqrt() * s.s[1] as f64 / 2.0;
        assert!((s.s[3] as f64 / floored - 1.0).abs() < 1e-5);
        let s0 = Smoothing::from_stats(&m, 0.0).unwrap();
        assert!(s0.s.iter().all(|v| *v == 1.0));
    }

    #[test]
    fn stats_reject_non_finite_and_keep_state() {
        let mut st = ActStats::new(2, 4, 1);
        st.observe(Mat::from_fn(1, 2, |_, j| j as f32 + 1.0).as_ref())
            .unwrap();
        let bad = Mat::from_fn(1, 2, |_, j| if j == 1 { f32::INFINITY } else { 0.0 });
        assert!(matches!(
            st.observe(bad.as_ref()),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert_eq!(st.tokens(), 1);
        assert_eq!(st.mean_abs(), vec![1.0, 2.0]);
    }

    #[test]
    fn reservoir_is_bounded_and_seeded() {
        let x = Mat::from_fn(100, 3, |t, i| (t * 3 + i) as f32);
        let run = |seed| {
            let mut st = ActStats::new(3, 10, seed);
            for b in 0..10 {
                st.observe(x.as_ref().subrows(b * 10, 10)).unwrap();
            }
            st.reservoir()
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert_eq!(a.nrows(), 10);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Rows are whole rows of the input.
        for t in 0..10 {
            let first = a[(t, 0)] as usize;
            assert_eq!(first % 3, 0);
            assert_eq!(a[(t, 2)] as usize, first + 2);
        }
    }
}
