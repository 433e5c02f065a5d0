//! Hardware-aware tree sizing: grow the tree only while the next node is expected to pay for
//! itself.
//!
//! A drafted node at path confidence C is accepted with probability about `k·C`, where the
//! calibration `k` (accepted tokens / summed confidence of drafted nodes) is measured from past
//! verifications. Its cost is the extra verification time it causes (from the verifier's
//! measured pass time vs node count: flat while the verifier is memory-bound, then rising) plus
//! one drafter pass. An accepted token is worth the current time per emitted token. So the tree
//! grows while `k·C·(ms per token) > Δverify(n) + draft ms per node`; a token the drafter has
//! already proposed costs no drafting, only `Δverify(n)`.
//!
//! Speculation itself must pay too: where drafting and bigger passes cost more than they save (a
//! CPU target, whose pass over N nodes costs nearly N passes), rounds verify the target's token
//! alone without drafting, and now and then a round speculates again to see whether that
//! changed (after [`PROBE_EVERY`] plain rounds, twice as long after each probe that lost). The
//! choice compares measured times per emitted token, so it costs little more than the probes.

use super::drafter::Growth;
use crate::backend::{Backend, Batch, Want};
use crate::error::Result;
use std::time::Instant;

/// While plain rounds are faster, a round speculates anyway after this many of them; the wait
/// doubles after every probe that lost, up to `MAX_PROBE_EVERY`.
pub const PROBE_EVERY: usize = 16;
const MAX_PROBE_EVERY: usize = 256;

/// A pass over a tree that costs this many one-node passes cannot pay for itself with any
/// drafter we know (they reach 2–5 tokens per pass), so larger trees are not measured.
const MAX_USEFUL_COST: f64 = 6.0;

/// Node counts at which the verifier's pass time is measured.
pub const CURVE_SIZES: [usize; 8] = [1, 2, 4, 8, 9, 16, 32, 64];

/// Pass time (ms) of a backend vs the number of nodes in the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct CostCurve {
    pub points: Vec<(usize, f64)>,
}

impl CostCurve {
    /// Times one pass per size over the backend's current prefix (best of `repeats`), leaving
    /// the cache as it was. Sizes that do not fit the free context are skipped, and measuring
    /// stops once a pass costs [`MAX_USEFUL_COST`] one-node passes (the curve extrapolates).
    pub fn measure(backend: &mut dyn Backend, sizes: &[usize], repeats: usize) -> Result<Self> {
        Self::measure_up_to(backend, sizes, repeats, MAX_USEFUL_COST)
    }

    /// As `measure`, stopping once a pass costs `max_cost` one-node passes (infinite: every
    /// size that fits).
    pub fn measure_up_to(
        backend: &mut dyn Backend,
        sizes: &[usize],
        repeats: usize,
        max_cost: f64,
    ) -> Result<Self> {
        let base = backend.kv_len();
        let room = backend.kv_capacity() - base;
        let mut points = Vec::new();
        for &n in sizes.iter().filter(|&&n| n <= room) {
            // a fan-out under one root: every node sees the prefix and the root
            let parents: Vec<Option<usize>> = (0..n).map(|i| (i > 0).then_some(0)).collect();
            let tokens: Vec<u32> = (0..n as u32).collect();
            let batch = Batch::tree(&tokens, &parents, base);
            let mut best = f64::INFINITY;
            for _ in 0..repeats.max(1) {
                let t = Instant::now();
                backend.forward(&batch, Want::ALL_TOP1)?;
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
                backend.kv_truncate(base);
            }
            points.push((n, best));
            if best >= max_cost * points[0].1 {
                break;
            }
        }
        Ok(CostCurve { points })
    }

    /// Pass time for `n` nodes, interpolated linearly (extrapolated past the last point).
    pub fn ms(&self, n: usize) -> f64 {
        let p = &self.points;
        match p.len() {
            0 => 0.0,
            1 => p[0].1 * n as f64 / p[0].0 as f64,
            _ => {
                let i = p
                    .windows(2)
                    .position(|w| n <= w[1].0)
                    .unwrap_or(p.len() - 2);
                let ((n0, t0), (n1, t1)) = (p[i], p[i + 1]);
                t0 + (t1 - t0) * (n as f64 - n0 as f64) / (n1 - n0) as f64
            }
        }
        .max(0.0)
    }
}

/// An exponential moving average that starts at its first sample.
#[derive(Clone, Copy, Debug)]
struct Ema {
    value: Option<f64>,
}

impl Ema {
    const WEIGHT: f64 = 0.2;

    fn push(&mut self, x: f64) {
        self.value = Some(match self.value {
            None => x,
            Some(v) => v + Self::WEIGHT * (x - v),
        });
    }

    fn get_or(&self, default: f64) -> f64 {
        self.value.unwrap_or(default)
    }
}

/// The running estimates the growth rule needs.
#[derive(Clone, Debug)]
pub struct CostModel {
    verify: CostCurve,
    draft_ms_per_pass: Ema,
    calibration: Ema,
    /// ms per emitted token of speculative rounds and of plain (target-only) rounds.
    ms_per_token: Ema,
    plain_ms_per_token: Ema,
    plain_rounds: usize,
    probe_every: usize,
}

impl CostModel {
    pub fn new(verify: CostCurve) -> Self {
        CostModel {
            verify,
            draft_ms_per_pass: Ema { value: None },
            calibration: Ema { value: None },
            ms_per_token: Ema { value: None },
            plain_ms_per_token: Ema { value: None },
            plain_rounds: 0,
            probe_every: PROBE_EVERY,
        }
    }

    pub fn curve(&self) -> &CostCurve {
        &self.verify
    }

    /// Should a tree of `nodes` nodes take one more step at confidence `conf`?
    pub fn worth_growing(&self, nodes: usize, conf: f32, step: Growth) -> bool {
        let draft_ms = self.draft_ms_per_pass.get_or(0.0);
        let per_token = self
            .ms_per_token
            .get_or(self.verify.ms(1) + draft_ms)
            .max(1e-6);
        let gain = self.calibration.get_or(1.0) * conf as f64 * per_token;
        let drafting = match step {
            Growth::Expand => draft_ms,
            Growth::Leaf => 0.0,
        };
        let cost = self.verify.ms(nodes + 1) - self.verify.ms(nodes) + drafting;
        gain > cost
    }

    /// Should the next round draft at all? Yes while speculative rounds are at least as fast
    /// per token as plain ones (a plain round costs a one-node pass until measured), and as a
    /// probe now and then otherwise.
    pub fn should_draft(&mut self) -> bool {
        let plain = self.plain_ms_per_token.get_or(self.verify.ms(1));
        if self.ms_per_token.value.is_none_or(|spec| spec <= plain) {
            self.plain_rounds = 0;
            self.probe_every = PROBE_EVERY;
            return true;
        }
        self.plain_rounds += 1;
        if self.plain_rounds < self.probe_every {
            return false;
        }
        self.plain_rounds = 0;
        self.probe_every = (2 * self.probe_every).min(MAX_PROBE_EVERY);
        true
    }

    /// Learns from a round that verified the target's token alone, without drafting.
    pub fn record_plain(&mut self, ms: f64) {
        self.plain_ms_per_token.push(ms);
    }

    /// Learns from one round: drafting time and passes, the summed confidence of the drafted
    /// nodes, how many were accepted, and the round's total time and emitted tokens.
    pub fn record(&mut self, round: &RoundCost) {
        if round.draft_passes > 0 {
            self.draft_ms_per_pass
                .push(round.draft_ms / round.draft_passes as f64);
        }
        if round.drafted_conf > 0.0 {
            self.calibration
                .push(round.accepted as f64 / round.drafted_conf);
        }
        if round.emitted > 0 {
            self.ms_per_token
                .push(round.total_ms / round.emitted as f64);
        }
    }
}

pub struct RoundCost {
    pub draft_ms: f64,
    pub draft_passes: usize,
    pub drafted_conf: f64,
    pub accepted: usize,
    pub total_ms: f64,
    pub emitted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_interpolates_and_extrapolates() {
        let c = CostCurve {
            points: vec![(1, 10.0), (8, 10.0), (16, 26.0)],
        };
        assert_eq!(c.ms(4), 10.0);
        assert_eq!(c.ms(12), 18.0);
        assert_eq!(c.ms(24), 42.0);
    }

    #[test]
    fn flat_costs_grow_and_steep_costs_stop() {
        let flat = CostModel::new(CostCurve {
            points: vec![(1, 10.0), (64, 10.5)],
        });
        assert!(flat.worth_growing(8, 0.05, Growth::Expand));
        // every node costs 3 ms, a token is worth 10 ms: grow while confidence > 0.3
        let steep = CostModel::new(CostCurve {
            points: vec![(1, 10.0), (64, 199.0)],
        });
        assert!(steep.worth_growing(8, 0.4, Growth::Expand));
        assert!(!steep.worth_growing(8, 0.2, Growth::Leaf));
    }

    #[test]
    fn calibration_follows_outcomes() {
        let mut m = CostModel::new(CostCurve {
            points: vec![(1, 10.0), (64, 200.0)],
        });
        let at = |m: &CostModel| m.worth_growing(4, 0.4, Growth::Expand);
        assert!(at(&m));
        for _ in 0..30 {
            m.record(&RoundCost {
                draft_ms: 1.0,
                draft_passes: 1,
                drafted_conf: 4.0,
                accepted: 0,
                total_ms: 11.0,
                emitted: 1,
            });
        }
        assert!(!at(&m), "a drafter that is never right stops paying");
    }

    fn round(total_ms: f64, emitted: usize) -> RoundCost {
        RoundCost {
            draft_ms: 1.0,
            draft_passes: 1,
            drafted_conf: 1.0,
            accepted: emitted - 1,
            total_ms,
            emitted,
        }
    }

    #[test]
    fn speculation_pauses_while_plain_rounds_are_faster() {
        let mut m = CostModel::new(CostCurve {
            points: vec![(1, 10.0), (64, 200.0)],
        });
        assert!(m.should_draft(), "speculation is tried first");
        m.record(&round(30.0, 2));
        // 15 ms per token against a 10 ms one-node pass: plain rounds, with probes that
        // come less often while they keep losing
        let drafts: Vec<usize> = (1..=7 * PROBE_EVERY).filter(|_| m.should_draft()).collect();
        assert_eq!(drafts, [PROBE_EVERY, 3 * PROBE_EVERY, 7 * PROBE_EVERY]);
        // a probe finds speculation paying again (plain rounds measured slower)
        m.record_plain(12.0);
        for _ in 0..20 {
            m.record(&round(20.0, 4));
        }
        assert!((0..4).all(|_| m.should_draft()));
    }
}
