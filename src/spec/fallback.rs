//! Self-adjusting fallback: when to stop drafting and ask the target to verify.
//!
//! While the drafter grows the tree, the tree's confidence is the best path confidence among
//! the leaves it could still extend (the product of the drafter's probabilities along a path).
//! Drafting stops as soon as that falls below the threshold α.
//!
//! The rule we use after each verification (LLMCad's idea; its prose and formula disagree, so
//! this is our reading, chosen because it keeps α a confidence level that we can compare with
//! path confidences):
//! - the target accepted a whole drafted path down to a leaf (no error): the drafter was too
//!   timid, so α ← α / 2 (draft deeper next time);
//! - the target rejected a node whose path confidence was C: errors start around C, so α moves
//!   a quarter of the way towards it in log space, α ← α^¾·C^¼: if the drafter was confidently
//!   wrong (C > α) verification comes sooner, if it failed only where it already doubted
//!   (C < α) drafting goes on a little longer next time. (Half steps, α ← √(α·C), let a drafter
//!   that is right ~45% of the time push α so high that trees shrank to 3 nodes and accepted
//!   no more than a chain; quarter steps keep them useful.)
//!
//! α stays within [`MIN_ALPHA`, `MAX_ALPHA`]. `Fixed` keeps α constant, for comparison.

use std::fmt;
use std::str::FromStr;

/// LLMCad's starting threshold.
pub const START_ALPHA: f32 = 0.01;
pub const MIN_ALPHA: f32 = 1e-4;
pub const MAX_ALPHA: f32 = 0.2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FallbackPolicy {
    Adaptive,
    Fixed(f32),
}

impl FromStr for FallbackPolicy {
    type Err = String;

    /// `adaptive` or `fixed:X` with 0 ≤ X < 1.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "adaptive" {
            return Ok(FallbackPolicy::Adaptive);
        }
        let x = s
            .strip_prefix("fixed:")
            .ok_or_else(|| format!("{s:?}: expected `adaptive` or `fixed:X`"))?;
        match x.parse::<f32>() {
            Ok(v) if (0.0..1.0).contains(&v) => Ok(FallbackPolicy::Fixed(v)),
            _ => Err(format!("{s:?}: X must be a number in [0, 1)")),
        }
    }
}

impl fmt::Display for FallbackPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackPolicy::Adaptive => write!(f, "adaptive"),
            FallbackPolicy::Fixed(x) => write!(f, "fixed:{x}"),
        }
    }
}

/// What one verification said about the drafted tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// The accepted path ended at a leaf: every drafted token on it was right.
    NoError,
    /// The target disagreed with a drafted child whose path confidence was `conf`.
    Rejected { conf: f32 },
}

/// The threshold and its history.
#[derive(Clone, Debug)]
pub struct Fallback {
    policy: FallbackPolicy,
    alpha: f32,
    trace: ThresholdTrace,
}

/// A summary of the values α took (one per verification).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThresholdTrace {
    pub first: f32,
    pub last: f32,
    pub min: f32,
    pub max: f32,
    sum_log: f64,
    pub count: usize,
}

impl ThresholdTrace {
    fn push(&mut self, a: f32) {
        if self.count == 0 {
            self.first = a;
            self.min = a;
            self.max = a;
        }
        self.last = a;
        self.min = self.min.min(a);
        self.max = self.max.max(a);
        self.sum_log += (a.max(f32::MIN_POSITIVE) as f64).ln();
        self.count += 1;
    }

    /// Geometric mean (α moves multiplicatively).
    pub fn mean(&self) -> f32 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum_log / self.count as f64).exp() as f32
        }
    }
}

impl Fallback {
    pub fn new(policy: FallbackPolicy) -> Self {
        let alpha = match policy {
            FallbackPolicy::Adaptive => START_ALPHA,
            FallbackPolicy::Fixed(x) => x,
        };
        let mut trace = ThresholdTrace::default();
        trace.push(alpha);
        Fallback {
            policy,
            alpha,
            trace,
        }
    }

    pub fn policy(&self) -> FallbackPolicy {
        self.policy
    }

    pub fn threshold(&self) -> f32 {
        self.alpha
    }

    /// Whether drafting should stop, given the best confidence among extendable paths.
    pub fn should_verify(&self, tree_confidence: f32) -> bool {
        tree_confidence < self.alpha
    }

    pub fn record(&mut self, outcome: Outcome) {
        if self.policy == FallbackPolicy::Adaptive {
            self.alpha = match outcome {
                Outcome::NoError => self.alpha / 2.0,
                Outcome::Rejected { conf } => {
                    self.alpha.powf(0.75) * conf.max(MIN_ALPHA).powf(0.25)
                }
            }
            .clamp(MIN_ALPHA, MAX_ALPHA);
        }
        self.trace.push(self.alpha);
    }

    pub fn trace(&self) -> &ThresholdTrace {
        &self.trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        assert_eq!("adaptive".parse(), Ok(FallbackPolicy::Adaptive));
        assert_eq!("fixed:0.25".parse(), Ok(FallbackPolicy::Fixed(0.25)));
        assert!("fixed:2".parse::<FallbackPolicy>().is_err());
        assert!("sometimes".parse::<FallbackPolicy>().is_err());
    }

    #[test]
    fn successes_deepen_and_confident_errors_shorten() {
        let mut f = Fallback::new(FallbackPolicy::Adaptive);
        assert_eq!(f.threshold(), START_ALPHA);
        f.record(Outcome::NoError);
        assert_eq!(f.threshold(), START_ALPHA / 2.0);
        assert!(f.should_verify(0.004) && !f.should_verify(0.006));
        f.record(Outcome::Rejected { conf: 0.5 });
        assert!((f.threshold() - 0.005f32.powf(0.75) * 0.5f32.powf(0.25)).abs() < 1e-6);
        let before = f.threshold();
        f.record(Outcome::Rejected {
            conf: before / 16.0,
        });
        assert!((f.threshold() - before / 2.0).abs() < 1e-6);
        for _ in 0..100 {
            f.record(Outcome::NoError);
        }
        assert_eq!(f.threshold(), MIN_ALPHA);
        for _ in 0..100 {
            f.record(Outcome::Rejected { conf: 1.0 });
        }
        assert_eq!(f.threshold(), MAX_ALPHA);
        let t = f.trace();
        assert_eq!(t.count, 204, "the start and every update");
        assert_eq!(
            (t.first, t.min, t.max, t.last),
            (START_ALPHA, MIN_ALPHA, MAX_ALPHA, MAX_ALPHA)
        );
    }

    #[test]
    fn fixed_never_moves() {
        let mut f = Fallback::new(FallbackPolicy::Fixed(0.1));
        f.record(Outcome::NoError);
        f.record(Outcome::Rejected { conf: 0.9 });
        assert_eq!(f.threshold(), 0.1);
        assert_eq!(f.trace().mean(), 0.1);
    }
}
