//! Held-out evaluation: greedy answers to every task, judged by the verifiers, and the
//! accuracy with its 95 % Wilson score interval.

use skillzip_lm::generate::Sampling;
use skillzip_lm::model::{LinearHook, Llama};
use skillzip_lm::tokenizer::Tokenizer;
use skillzip_tasks::{Sandbox, Task};

use crate::error::Result;
use crate::selfgen::{Generated, answer_tasks};

/// Correct answers out of a number of tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    /// Tasks answered helpfully.
    pub correct: usize,
    /// Tasks asked.
    pub total: usize,
}

impl Accuracy {
    /// The fraction correct (0 when nothing was asked).
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    /// The 95 % Wilson score interval of the rate (`z = 1.96`); `(0, 1)` when nothing was
    /// asked. Unlike the normal approximation it stays inside `[0, 1]` and is honest at 0 % and
    /// 100 %, which small held-out sets hit.
    pub fn wilson95(&self) -> (f64, f64) {
        if self.total == 0 {
            return (0.0, 1.0);
        }
        let z = 1.959_963_984_540_054_f64;
        let n = self.total as f64;
        let p = self.rate();
        let denom = 1.0 + z * z / n;
        let center = (p + z * z / (2.0 * n)) / denom;
        let half = z / denom * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        ((center - half).max(0.0), (center + half).min(1.0))
    }

    /// The 95 % interval of the difference `self.rate() − other.rate()` between two
    /// independent samples: Newcombe's hybrid score interval (method 10 of Newcombe 1998),
    /// built from the two Wilson intervals. A gain is beyond noise when its lower end is
    /// above 0.
    pub fn difference95(&self, other: &Accuracy) -> (f64, f64) {
        let (p1, p2) = (self.rate(), other.rate());
        let ((l1, u1), (l2, u2)) = (self.wilson95(), other.wilson95());
        let d = p1 - p2;
        (
            d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
            d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
        )
    }
}

/// Two configurations' verdicts on the same tasks, counted by agreement: the paired 2×2 table
/// of a before/after comparison on one held-out set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Paired {
    /// Tasks both answered helpfully.
    pub both: usize,
    /// Tasks only the first answered helpfully.
    pub first_only: usize,
    /// Tasks only the second answered helpfully.
    pub second_only: usize,
    /// Tasks neither answered helpfully.
    pub neither: usize,
}

impl Paired {
    /// Counts the verdicts `first[i]` and `second[i]` of the same task `i`; `None` when the
    /// two lists differ in length (they are then not the same tasks).
    pub fn of(first: &[bool], second: &[bool]) -> Option<Self> {
        if first.len() != second.len() {
            return None;
        }
        let mut p = Self {
            both: 0,
            first_only: 0,
            second_only: 0,
            neither: 0,
        };
        for (&x, &y) in first.iter().zip(second) {
            *match (x, y) {
                (true, true) => &mut p.both,
                (true, false) => &mut p.first_only,
                (false, true) => &mut p.second_only,
                (false, false) => &mut p.neither,
            } += 1;
        }
        Some(p)
    }

    /// The tasks counted.
    pub fn total(&self) -> usize {
        self.both + self.first_only + self.second_only + self.neither
    }

    /// The first configuration's accuracy.
    pub fn first(&self) -> Accuracy {
        Accuracy {
            correct: self.both + self.first_only,
            total: self.total(),
        }
    }

    /// The second configuration's accuracy.
    pub fn second(&self) -> Accuracy {
        Accuracy {
            correct: self.both + self.second_only,
            total: self.total(),
        }
    }

    /// The 95 % interval of `first − second` for paired verdicts: Newcombe's hybrid score
    /// interval for paired proportions (method 10 of Newcombe 1998, *Improved confidence
    /// intervals for the difference between binomial proportions based on paired data*): the
    /// two Wilson intervals combined with the φ correlation of the 2×2 table (continuity
    /// corrected as Newcombe does; 0 when a margin is empty). With φ = 0 it is
    /// [`Accuracy::difference95`] of the two margins; the more the two
    /// configurations agree task by task, the narrower it gets, which is why a fine-tune
    /// compared with its base on the same tasks should be judged by this interval.
    pub fn difference95(&self) -> (f64, f64) {
        let (a, b, c, d) = (
            self.both as f64,
            self.first_only as f64,
            self.second_only as f64,
            self.neither as f64,
        );
        let (first, second) = (self.first(), self.second());
        let (p1, p2) = (first.rate(), second.rate());
        let ((l1, u1), (l2, u2)) = (first.wilson95(), second.wilson95());
        let margins = (a + b) * (c + d) * (a + c) * (b + d);
        // Newcombe's φ with his continuity correction: a positive ad − bc counts only beyond
        // n/2, so small positive correlations do not narrow the interval.
        let n = a + b + c + d;
        let agreement = a * d - b * c;
        let phi = if margins == 0.0 {
            0.0
        } else if agreement > n / 2.0 {
            (agreement - n / 2.0) / margins.sqrt()
        } else if agreement >= 0.0 {
            0.0
        } else {
            agreement / margins.sqrt()
        };
        let delta = p1 - p2;
        let spread = |x: f64, y: f64| (x * x - 2.0 * phi * x * y + y * y).max(0.0).sqrt();
        (
            (delta - spread(p1 - l1, u2 - p2)).max(-1.0),
            (delta + spread(u1 - p1, p2 - l2)).min(1.0),
        )
    }
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lo, hi) = self.wilson95();
        write!(
            f,
            "{:.1}% [{:.1}, {:.1}] (n={})",
            100.0 * self.rate(),
            100.0 * lo,
            100.0 * hi,
            self.total
        )
    }
}

/// The verdicts of `generated` counted.
pub fn accuracy_of(generated: &[Generated]) -> Accuracy {
    let mut acc = Accuracy {
        correct: 0,
        total: 0,
    };
    for s in generated.iter().flat_map(|g| &g.samples) {
        acc.total += 1;
        acc.correct += usize::from(s.verdict.helpful);
    }
    acc
}

/// Greedy answers of `model` (with `hook`, e.g. a skillpack) to `tasks`, judged; returns the
/// accuracy and every answer.
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    tasks: &[Task],
    prompts_per_batch: usize,
    sandbox: Option<&Sandbox>,
    hook: &mut dyn LinearHook,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Accuracy, Vec<Generated>)> {
    let generated = answer_tasks(
        model,
        tok,
        tasks,
        1,
        Sampling::Greedy,
        prompts_per_batch,
        sandbox,
        hook,
        progress,
    )?;
    Ok((accuracy_of(&generated), generated))
}
