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
//! alone without drafting, and now and then a probe speculates for a few rounds
//! ([`PROBE_ROUNDS`]) to see whether that changed. The choice compares measured times per
//! emitted token, so it costs little more than the probes. A probe's rounds are judged on their
//! own: the rounds that lost came from another stretch of the text. Each is expected to lose
//! what the speculative rounds lost over plain ones, and the drafter first catches up on the
//! tokens it skipped (at most [`CATCH_UP_WINDOW`] of them). It probes once that costs at most
//! [`PROBE_SHARE`] of the plain time since the last probe and of the plain time still to come
//! (twice as long a wait after each probe that lost), so that probes which keep losing cannot
//! make decoding measurably slower than plain decoding, while a verifier waiting on storage,
//! whose speculative rounds cost hardly more than plain ones, keeps trying its drafter every few
//! rounds. The catch-up does not count against the speculative rounds it measures.
//!
//! The verifier's pass time is learned from the passes decoding runs anyway ([`PassTimes`]):
//! no pass is spent on measuring. Until a second size has been seen, a pass is assumed to cost
//! a one-node pass plus a quarter of one per extra node; past the largest size seen, the slope
//! measured up to it continues. The drafter's time per pass is learned alongside. What was
//! learned can be kept between processes (the engine stores it per pair of models and how they
//! run: device, kernels, threads); the first pass of a size seen in this process replaces a kept
//! value, so a stale one is gone after a round. Kept times that say drafting cannot pay at all
//! are believed from the first round, so that a new process on a compute-bound CPU spends no
//! trial rounds, but for [`KEPT_VETO_RUNS`] generations in a row at most: then one generation
//! tries again and measures for itself.
//!
//! Acceptance and speculative time per token are ratios of decayed sums over rounds, and plain
//! rounds take over only after a few speculative ones: a single round is a coin toss, and a
//! rejected first tree must not end speculation where extra nodes are nearly free. The time per
//! token remembers about ten rounds ([`SPEED_KEEP`]), acceptance about five: acceptance sizes the
//! next tree, while the time decides whether to speculate at all, where a few unlucky rounds in
//! a row are common and a wrong switch to plain rounds costs until the next probe.

use super::drafter::{CatchUp, Growth, CATCH_UP_WINDOW};
use crate::backend::{Backend, Batch, Want};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// A probe's expected cost over a plain round may be at most this share of the plain rounds'
/// time since the last probe, and of their time over the tokens left to generate.
const PROBE_SHARE: f64 = 1.0 / 32.0;

/// Speculative rounds a probe runs before it is judged: one round is a coin toss.
const PROBE_ROUNDS: usize = 3;

/// Each probe that lost doubles the wait for the next, up to this factor.
const MAX_PROBE_BACKOFF: f64 = 16.0;

/// Speculation measured faster than plain rounds comes back only where its gain over the tokens
/// left is this many times the drafter's catch-up: the gain is an estimate from a few noisy
/// rounds, and flapping between the two modes pays the catch-up every time.
const RETURN_MARGIN: f64 = 2.0;

/// Measured pass time (ms) of a backend vs the number of nodes in the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct CostCurve {
    pub points: Vec<(usize, f64)>,
}

impl CostCurve {
    /// Times one pass per size over the backend's current prefix (best of `repeats`), leaving
    /// the cache as it was (for benchmarks; decoding learns from its own passes). Sizes that do
    /// not fit the free context are skipped, and measuring stops once a pass costs `max_cost`
    /// one-node passes (infinite: every size that fits).
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

/// Until measured, each node past the first is taken to cost this share of a one-node pass:
/// above what memory-bound verifiers cost (nearly nothing), below a compute-bound one's (a whole
/// pass), so that trees start small but still grow enough to be measured.
const PRIOR_NODE_SHARE: f64 = 0.25;

/// Past the largest size seen, each node is taken to cost at least this share of a one-node
/// pass, however flat the sizes seen were.
const MIN_NODE_SHARE: f64 = 1.0 / 64.0;

/// Speculative rounds to see before concluding that plain rounds are faster: one round that
/// drew a rejection is too little evidence against speculation, and the first words of an
/// answer are often its least predictable (with the real pair, "List five tips for staying
/// focused": 0, 1 and 1 tokens accepted in the first three rounds, 2–4 a round later). Measured
/// with the real pair, 12 chat prompts × 128 tokens alternated (BENCHMARKS.md, stop 31): at 3
/// rounds 1.12× and 1.18× target-only, at 6 rounds 1.22× and 1.19×, at 8 rounds 1.22×. Where
/// speculation never pays, each extra round costs about a drafter pass or two.
const MIN_SPECULATIVE_ROUNDS: usize = 6;

/// How often a drafter's most confident token is accepted, at best: a node whose drafting and
/// verification cost more than this share of a plain round per token cannot pay.
const BEST_ACCEPTANCE: f64 = 0.8;

/// Generations in a row that kept times alone may keep from drafting: the next one tries
/// speculation again, so that a kept curve too steep cannot rule it out for good.
const KEPT_VETO_RUNS: u32 = 8;

/// What passes cost, learned from real passes: the verifier's pass time (ms) against the nodes
/// in the pass, and the drafter's time per drafting pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PassTimes {
    /// Nodes → pass ms (a moving average of the passes seen).
    points: BTreeMap<usize, f64>,
    /// The drafter's ms per drafting pass (a moving average), once it has drafted.
    #[serde(default)]
    draft_ms: Option<f64>,
    /// Generations in a row in which the kept times alone ruled drafting out.
    #[serde(default)]
    vetoed_runs: u32,
    /// Sizes seen in this process; a size not in it holds a value from an earlier one.
    #[serde(skip)]
    fresh: BTreeSet<usize>,
    /// Whether `draft_ms` was measured in this process.
    #[serde(skip)]
    draft_fresh: bool,
    /// Whether the kept times ruled drafting out in this generation.
    #[serde(skip)]
    vetoed: bool,
    /// What a node costs (the cheapest node of any kept size, plus one drafter pass) as a share
    /// of a one-node pass, by the kept times alone: taken before this process's passes mix in,
    /// so that its noise does not move a verdict that the kept times give on their own.
    #[serde(skip)]
    kept_node_share: Option<f64>,
    /// The part of every pass spent reading streamed weights (ms), when the verifier streams.
    #[serde(skip)]
    io_ms: Option<f64>,
}

impl PassTimes {
    const WEIGHT: f64 = 0.3;

    /// Times learned elsewhere (another process, or a measured curve).
    pub fn from_points(points: impl IntoIterator<Item = (usize, f64)>) -> Self {
        PassTimes {
            points: points
                .into_iter()
                .filter(|&(n, ms)| n > 0 && ms.is_finite() && ms > 0.0)
                .collect(),
            ..PassTimes::default()
        }
    }

    /// Whether a one-node pass time is known (speculation needs it to weigh a tree).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Tells how much of every pass goes to reading streamed weights: nodes cost only in the
    /// rest of the pass, so until a second size is seen the prior charges them a share of that.
    pub fn set_streamed_io(&mut self, io_ms: Option<f64>) {
        self.io_ms = io_ms.filter(|ms| ms.is_finite() && *ms > 0.0);
    }

    /// Folds in one pass of `n` nodes that took `ms`.
    pub fn observe(&mut self, n: usize, ms: f64) {
        if n == 0 || !ms.is_finite() || ms <= 0.0 {
            return;
        }
        let v = self.points.entry(n).or_insert(ms);
        if self.fresh.insert(n) {
            *v = ms;
        } else {
            *v += Self::WEIGHT * (ms - *v);
        }
    }

    /// The expected pass time for `n` nodes: interpolated between the sizes seen, and past the
    /// largest one, [`PRIOR_NODE_SHARE`] of a one-node pass per extra node (0 when nothing has
    /// been seen). Kept times count only where they are below what this process's own passes
    /// suggest, so that a kept curve too steep cannot stop the trees that would show it wrong.
    pub fn ms(&self, n: usize) -> f64 {
        let all = estimate(&self.points, n, self.io_ms);
        if self.fresh.is_empty() || self.fresh.len() == self.points.len() {
            return all;
        }
        let fresh: BTreeMap<usize, f64> =
            self.fresh.iter().map(|&k| (k, self.points[&k])).collect();
        all.min(estimate(&fresh, n, self.io_ms))
    }

    /// The sizes seen and their times.
    pub fn points(&self) -> Vec<(usize, f64)> {
        self.points.iter().map(|(&n, &t)| (n, t)).collect()
    }

    /// Folds in the drafter's time per pass of one drafting round.
    pub fn observe_draft(&mut self, ms_per_pass: f64) {
        if !ms_per_pass.is_finite() || ms_per_pass < 0.0 {
            return;
        }
        self.draft_ms = Some(match (self.draft_ms, self.draft_fresh) {
            (Some(v), true) => v + Ema::WEIGHT * (ms_per_pass - v),
            _ => ms_per_pass,
        });
        self.draft_fresh = true;
    }

    /// The drafter's time per pass: measured in this process, else kept, else 0.
    pub fn draft_ms(&self) -> f64 {
        self.draft_ms.unwrap_or(0.0)
    }

    /// Whether even a token accepted as often as any drafted token ([`BEST_ACCEPTANCE`]) would
    /// cost more to draft (one drafter pass) and verify (one more node) than it saves of
    /// `plain` ms (a plain round's time per token). Told by this process's own passes; by the
    /// kept times as well, unless they have ruled drafting out for [`KEPT_VETO_RUNS`]
    /// generations in a row.
    fn hopeless(&mut self, plain: f64) -> bool {
        let fresh_draft = if self.draft_fresh {
            self.draft_ms()
        } else {
            0.0
        };
        if self.ms(2) - self.ms(1) + fresh_draft >= BEST_ACCEPTANCE * plain {
            return true;
        }
        let veto = self.vetoed_runs < KEPT_VETO_RUNS
            && self
                .kept_node_share
                .is_some_and(|share| share >= BEST_ACCEPTANCE);
        self.vetoed |= veto;
        veto
    }

    /// Reads the kept times' verdict on nodes ([`PassTimes::kept_node_share`]), once, before
    /// this process has measured anything.
    fn judge_kept(&mut self) {
        if self.fresh.is_empty() && !self.draft_fresh && self.kept_node_share.is_none() {
            let one = estimate(&self.points, 1, self.io_ms);
            // the cheapest node any kept size shows: noise only ever lengthens a pass, and one
            // slow pass kept at one size must not rule drafting out for generations
            let node = self
                .points
                .range(2..)
                .map(|(&n, &ms)| (ms - one) / (n - 1) as f64)
                .reduce(f64::min)
                .unwrap_or_else(|| estimate(&self.points, 2, self.io_ms) - one);
            self.kept_node_share = (one > 0.0).then(|| (node + self.draft_ms()) / one);
        }
    }

    /// Closes a generation's account of the kept times: a generation that verified a tree
    /// has measured the curve itself, one that the kept times kept from drafting adds to
    /// their run of vetoes.
    pub fn end_generation(&mut self) {
        if self.fresh.iter().any(|&n| n > 1) {
            self.vetoed_runs = 0;
        } else if self.vetoed {
            self.vetoed_runs += 1;
        }
        self.vetoed = false;
    }
}

/// `PassTimes::ms` over `points`, for a verifier that spends `io_ms` of each pass reading
/// streamed weights.
fn estimate(points: &BTreeMap<usize, f64>, n: usize, io_ms: Option<f64>) -> f64 {
    let below = points.range(..=n).next_back();
    let above = points.range(n..).next();
    let one = match (points.get(&1), points.first_key_value()) {
        (Some(&v), _) => v,
        (None, Some((&k, &v))) => v / (1.0 + PRIOR_NODE_SHARE * (k - 1) as f64),
        (None, None) => return 0.0,
    };
    // past the largest size seen, its chord from one node (floored: a flat start says little
    // about how soon a compute-bound verifier turns steep); until a second size is seen, the prior
    let (&largest, &at_largest) = points.last_key_value().expect("points is not empty");
    let floor = MIN_NODE_SHARE * one;
    let slope = if largest > 1 {
        ((at_largest - one) / (largest - 1) as f64).max(floor)
    } else {
        // a pass waiting on storage adds its nodes' compute under the wait
        (PRIOR_NODE_SHARE * (one - io_ms.unwrap_or(0.0)).max(0.0)).max(floor)
    };
    match (below, above) {
        (Some((&n0, &t0)), Some((&n1, &t1))) if n1 > n0 => {
            t0 + (t1 - t0) * (n - n0) as f64 / (n1 - n0) as f64
        }
        (Some((_, &t)), Some(_)) => t,
        (Some((&n0, &t0)), None) => t0 + slope * (n - n0) as f64,
        (None, Some((&n1, &t1))) => (t1 - slope * (n1 - n) as f64).max(one.min(t1)),
        (None, None) => unreachable!("points is not empty"),
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

/// A ratio of exponentially decayed sums, such as accepted tokens over drafted confidence: a
/// round counts by its size, and one unlucky round moves the ratio instead of setting it.
#[derive(Clone, Copy, Debug)]
struct DecayedRatio {
    num: f64,
    den: f64,
    rounds: usize,
    /// The share of the sums each new round keeps.
    keep: f64,
}

/// The calibration of confidences keeps this share at each round (about five rounds' memory).
const CALIBRATION_KEEP: f64 = 0.8;

/// The time per token of speculative rounds keeps this share at each round (about ten rounds'
/// memory). With five (the real pair, "a short story about a robot"), a run of five unlucky
/// rounds switched to plain rounds for good, where the 29 speculative rounds before had taken
/// 23.5 ms per token against 28 for a plain round (BENCHMARKS.md, stop 32).
const SPEED_KEEP: f64 = 0.9;

impl DecayedRatio {
    fn new(keep: f64) -> Self {
        DecayedRatio {
            num: 0.0,
            den: 0.0,
            rounds: 0,
            keep,
        }
    }

    /// Starts at `value` as if `weight` units of the denominator had been seen.
    fn with_prior(value: f64, weight: f64, keep: f64) -> Self {
        DecayedRatio {
            num: value * weight,
            den: weight,
            ..DecayedRatio::new(keep)
        }
    }

    fn push(&mut self, num: f64, den: f64) {
        self.num = self.keep * self.num + num;
        self.den = self.keep * self.den + den;
        self.rounds += 1;
    }

    fn get(&self) -> Option<f64> {
        (self.den > 0.0).then(|| self.num / self.den)
    }
}

/// The running estimates the growth rule needs.
#[derive(Clone, Debug)]
pub struct CostModel {
    verify: PassTimes,
    /// The drafter's catch-up on tokens it skipped, per token.
    catch_up_ms_per_token: Ema,
    /// Accepted tokens per unit of drafted path confidence.
    calibration: DecayedRatio,
    /// ms per emitted token of speculative rounds and of plain (target-only) rounds.
    ms_per_token: DecayedRatio,
    /// Tokens emitted per speculative round.
    emitted_per_round: DecayedRatio,
    /// Speculative rounds to see before judging them (more at first than for a probe).
    judge_after: usize,
    plain_ms_per_token: Ema,
    /// Rounds since the drafter last ran (each left it a token to catch up on).
    plain_rounds: usize,
    /// How many times its cost the next probe waits for (doubled after each lost probe).
    probe_backoff: f64,
}

impl CostModel {
    pub fn new(mut verify: PassTimes) -> Self {
        verify.judge_kept();
        CostModel {
            verify,
            catch_up_ms_per_token: Ema { value: None },
            // confidences taken at face value until verifications say otherwise
            calibration: DecayedRatio::with_prior(1.0, 2.0, CALIBRATION_KEEP),
            ms_per_token: DecayedRatio::new(SPEED_KEEP),
            emitted_per_round: DecayedRatio::new(SPEED_KEEP),
            judge_after: MIN_SPECULATIVE_ROUNDS,
            plain_ms_per_token: Ema { value: None },
            plain_rounds: 0,
            probe_backoff: 1.0,
        }
    }

    /// The pass times learned by the end of a generation, for the next one to start from.
    pub fn into_pass_times(mut self) -> PassTimes {
        self.verify.end_generation();
        self.verify
    }

    /// Tells how much of each verification pass goes to reading streamed weights.
    pub fn set_streamed_io(&mut self, io_ms: Option<f64>) {
        self.verify.set_streamed_io(io_ms);
    }

    /// Learns from one verification pass over `nodes` nodes.
    pub fn record_pass(&mut self, nodes: usize, ms: f64) {
        self.verify.observe(nodes, ms);
    }

    /// Should a tree of `nodes` nodes take one more step at confidence `conf`?
    pub fn worth_growing(&self, nodes: usize, conf: f32, step: Growth) -> bool {
        let draft_ms = self.verify.draft_ms();
        let per_token = self
            .ms_per_token
            .get()
            .unwrap_or(self.verify.ms(1) + draft_ms)
            .max(1e-6);
        let gain = self.calibration.get().unwrap_or(1.0) * conf as f64 * per_token;
        let drafting = match step {
            Growth::Expand => draft_ms,
            Growth::Leaf => 0.0,
        };
        let cost = self.verify.ms(nodes + 1) - self.verify.ms(nodes) + drafting;
        gain > cost
    }

    /// Should the next round draft at all, with `remaining` tokens left to generate? Not before
    /// a one-node pass has been timed (the first round is a plain one, unless times were kept
    /// from before), nor where even a token accepted as often as the likeliest drafted tokens
    /// would cost more to draft and verify than it saves (`PassTimes::hopeless`). Then yes for
    /// the first [`MIN_SPECULATIVE_ROUNDS`] (or a probe's [`PROBE_ROUNDS`]), and while
    /// speculative rounds are at least as fast per token as plain ones (a plain round costs a
    /// one-node pass until measured), by enough to pay for the drafter's catch-up over the tokens
    /// left ([`RETURN_MARGIN`]); otherwise as a probe, once the plain time waited covers its
    /// expected cost ([`PROBE_SHARE`]).
    pub fn should_draft(&mut self, remaining: usize) -> bool {
        if self.verify.is_empty() {
            return false;
        }
        let plain = self.plain_ms_per_token.get_or(self.verify.ms(1));
        let spec = self.ms_per_token.get();
        // every round since the drafter last ran left it a token to catch up on
        let catch_up =
            self.catch_up_ms_per_token.get_or(0.0) * self.plain_rounds.min(CATCH_UP_WINDOW) as f64;
        let draft = if self.verify.hopeless(plain) {
            false
        } else if self.ms_per_token.rounds < self.judge_after {
            true
        } else if let Some(s) = spec.filter(|&s| s <= plain) {
            let pays = (plain - s) * remaining as f64 >= RETURN_MARGIN * catch_up;
            if pays {
                self.probe_backoff = 1.0;
            }
            pays
        } else {
            // each of a probe's rounds is expected to lose what speculative rounds lost over
            // plain ones
            let per_round = self.emitted_per_round.get().unwrap_or(1.0);
            let lost = (spec.unwrap_or(plain) - plain).max(0.0) * per_round;
            let loss = PROBE_ROUNDS as f64 * lost + catch_up;
            let waited = self.plain_rounds + 1;
            let probe =
                self.probe_backoff * loss <= PROBE_SHARE * plain * waited.min(remaining) as f64;
            if probe {
                self.probe_backoff = (2.0 * self.probe_backoff).min(MAX_PROBE_BACKOFF);
                // the rounds that lost came from another stretch of the text
                self.ms_per_token = DecayedRatio::new(SPEED_KEEP);
                self.emitted_per_round = DecayedRatio::new(SPEED_KEEP);
                self.judge_after = PROBE_ROUNDS;
            }
            probe
        };
        if draft {
            self.plain_rounds = 0;
        } else {
            self.plain_rounds += 1;
        }
        draft
    }

    /// Learns from a round that verified the target's token alone, without drafting.
    pub fn record_plain(&mut self, ms: f64) {
        self.plain_ms_per_token.push(ms);
    }

    /// Learns from one round: drafting time and passes, the summed confidence of the drafted
    /// nodes, how many were accepted, and the round's total time and emitted tokens. The
    /// drafter's catch-up on skipped tokens (part of its drafting time) is learned apart.
    pub fn record(&mut self, round: &RoundCost) {
        let one_off = round.catch_up.ms;
        if round.catch_up.tokens > 0 {
            self.catch_up_ms_per_token
                .push(one_off / round.catch_up.tokens as f64);
        }
        if round.draft_passes > 0 {
            self.verify
                .observe_draft((round.draft_ms - one_off).max(0.0) / round.draft_passes as f64);
        }
        if round.drafted_conf > 0.0 {
            self.calibration
                .push(round.accepted as f64, round.drafted_conf);
        }
        if round.emitted > 0 {
            self.ms_per_token
                .push((round.total_ms - one_off).max(0.0), round.emitted as f64);
            self.emitted_per_round.push(round.emitted as f64, 1.0);
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
    pub catch_up: CatchUp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(points: &[(usize, f64)]) -> PassTimes {
        PassTimes::from_points(points.iter().copied())
    }

    #[test]
    fn pass_times_interpolate_and_extrapolate_with_the_prior() {
        let t = times(&[(1, 10.0), (8, 10.0), (16, 26.0)]);
        assert_eq!(t.ms(4), 10.0);
        assert_eq!(t.ms(12), 18.0);
        // past the largest size seen: the slope from one node to it
        assert_eq!(t.ms(24), 26.0 + 8.0 * 16.0 / 15.0);
        // ... at least a 64th of a one-node pass per node
        assert_eq!(
            times(&[(1, 10.0), (8, 10.0)]).ms(12),
            10.0 + 4.0 * 10.0 / 64.0
        );
        // one size seen: a quarter of a one-node pass per node
        assert_eq!(times(&[(1, 10.0)]).ms(5), 10.0 + 4.0 * 2.5);
        // ... of the part that does not wait on streamed weights (at least a 64th of the pass)
        let mut streamed = times(&[(1, 10.0)]);
        streamed.set_streamed_io(Some(6.0));
        assert_eq!(streamed.ms(5), 10.0 + 4.0 * 1.0);
        streamed.set_streamed_io(Some(9.9));
        assert_eq!(streamed.ms(5), 10.0 + 4.0 * 10.0 / 64.0);
        assert_eq!(PassTimes::default().ms(8), 0.0);
    }

    #[test]
    fn a_fresh_pass_replaces_a_kept_time_then_averages() {
        let mut t = times(&[(1, 10.0), (8, 1.0)]);
        t.observe(8, 40.0);
        assert_eq!(t.ms(8), 40.0, "a kept value goes at the first real pass");
        t.observe(8, 50.0);
        assert_eq!(t.ms(8), 43.0);
        t.observe(8, f64::NAN);
        assert_eq!(t.ms(8), 43.0);
    }

    #[test]
    fn flat_costs_grow_and_steep_costs_stop() {
        let flat = CostModel::new(times(&[(1, 10.0), (64, 10.5)]));
        assert!(flat.worth_growing(8, 0.05, Growth::Expand));
        // every node costs 3 ms, a token is worth 10 ms: grow while confidence > 0.3
        let steep = CostModel::new(times(&[(1, 10.0), (64, 199.0)]));
        assert!(steep.worth_growing(8, 0.4, Growth::Expand));
        assert!(!steep.worth_growing(8, 0.2, Growth::Leaf));
    }

    #[test]
    fn calibration_follows_outcomes() {
        let mut m = CostModel::new(times(&[(1, 10.0), (64, 200.0)]));
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
                catch_up: CatchUp::default(),
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
            catch_up: CatchUp::default(),
        }
    }

    /// Decodes `rounds` rounds (numbered from 1) with `remaining` tokens left before the
    /// first: a round that drafts costs `speculative`, one that does not `plain_ms`. Returns
    /// the rounds that drafted.
    fn decode_rounds(
        m: &mut CostModel,
        rounds: usize,
        remaining: usize,
        speculative: &RoundCost,
        plain_ms: f64,
    ) -> Vec<usize> {
        (1..=rounds)
            .filter(|&i| {
                let draft = m.should_draft(remaining.saturating_sub(i));
                match draft {
                    true => m.record(speculative),
                    false => m.record_plain(plain_ms),
                }
                draft
            })
            .collect()
    }

    /// Speculation that lost: 15.5 ms per token against 10 ms plain rounds.
    fn lost() -> CostModel {
        let mut m = CostModel::new(times(&[(1, 10.0), (64, 200.0)]));
        for _ in 0..MIN_SPECULATIVE_ROUNDS {
            assert!(m.should_draft(usize::MAX), "speculation is tried first");
            m.record(&round(31.0, 2));
        }
        m
    }

    #[test]
    fn speculation_pauses_while_plain_rounds_are_faster() {
        // plain rounds, with probes that come less often while they keep losing. Each of a
        // probe's 3 rounds is expected to lose 5.5 ms on each of its 2 tokens; it waits until
        // 32 times that is plain time waited (106 rounds of 10 ms), then twice as long.
        let drafts = decode_rounds(&mut lost(), 330, usize::MAX, &round(31.0, 2), 10.0);
        assert_eq!(PROBE_ROUNDS, 3);
        assert_eq!(drafts, [106, 107, 108, 108 + 212, 108 + 213, 108 + 214]);
        // a probe finds speculation paying again, and it stays
        let drafts = decode_rounds(&mut lost(), 200, usize::MAX, &round(20.0, 4), 10.0);
        assert_eq!(drafts, (106..=200).collect::<Vec<_>>());
    }

    /// The rounds that lost came from another stretch of the text: a probe whose rounds are a
    /// little faster than plain ones brings speculation back, though mixed with the rounds
    /// before they would still be slower.
    #[test]
    fn a_probe_is_judged_on_its_own_rounds() {
        let drafts = decode_rounds(&mut lost(), 200, usize::MAX, &round(27.0, 3), 10.0);
        assert_eq!(drafts, (106..=200).collect::<Vec<_>>());
    }

    /// Speculation that lost, measured after a catch-up costing `catch_up_ms` per token, with
    /// plain rounds of 10 ms.
    fn lost_after_catching_up(catch_up_ms: f64) -> CostModel {
        let mut m = CostModel::new(times(&[(1, 10.0), (64, 200.0)]));
        for i in 0..MIN_SPECULATIVE_ROUNDS {
            assert!(m.should_draft(usize::MAX));
            let tokens = if i == 0 { 40 } else { 0 };
            let catch_up = catch_up_ms * tokens as f64;
            m.record(&RoundCost {
                catch_up: CatchUp {
                    tokens,
                    ms: catch_up,
                },
                ..round(31.0 + catch_up, 2)
            });
        }
        m.record_plain(10.0);
        m
    }

    /// A probe first runs the drafter over what it skipped: probes wait until that, with what
    /// the speculative rounds lost, is a small share of the plain time since the last one, and
    /// of the plain time left.
    #[test]
    fn probes_wait_until_their_catch_up_is_cheap() {
        let probes = |catch_up_ms: f64, remaining: usize| -> Vec<usize> {
            let mut m = lost_after_catching_up(catch_up_ms);
            decode_rounds(&mut m, 450, remaining, &round(31.0, 2), 10.0)
        };
        // free: what the rounds lost alone (33 ms), as in the test above
        assert_eq!(probes(0.0, 1000), [106, 107, 108, 320, 321, 322]);
        // a tenth of a plain round per token: the 32 tokens of the window cost 32 ms, with the
        // 33 ms lost a 32nd of the plain time only after 208 plain rounds, then after 416
        assert_eq!(CATCH_UP_WINDOW, 32);
        assert_eq!(probes(1.0, 1000), [208, 209, 210]);
        // ... and not when fewer tokens than that are left to use what it finds
        assert_eq!(probes(1.0, 200), Vec::<usize>::new());
        // as dear as a plain round per token: never
        assert_eq!(probes(10.0, 1000), Vec::<usize>::new());
    }

    /// A verifier waiting on storage (2.5 s a pass, nodes nearly free) keeps trying its drafter
    /// after three rounds that accepted nothing: such a round costs hardly more than a plain
    /// one, and one accepted token is worth a whole pass.
    #[test]
    fn cheap_speculative_rounds_are_probed_often() {
        let mut m = CostModel::new(times(&[(1, 2500.0), (4, 2530.0)]));
        for _ in 0..MIN_SPECULATIVE_ROUNDS {
            assert!(m.should_draft(usize::MAX));
            m.record(&round(2550.0, 1));
        }
        m.record_plain(2500.0);
        // 50 ms lost a round, 150 ms a probe, 78 ms of budget per plain round: a probe after
        // 1 plain round, then after 3 (then 7)
        let probes = decode_rounds(&mut m, 16, 32, &round(2550.0, 1), 2500.0);
        assert_eq!(probes, [2, 3, 4, 8, 9, 10]);
    }

    /// Plain rounds turning slower than speculation bring it back only where what it gains
    /// over the tokens left pays for the drafter's catch-up.
    #[test]
    fn speculation_returns_when_its_gain_pays_for_the_catch_up() {
        let back_after = |remaining: usize| {
            let mut m = lost_after_catching_up(10.0);
            assert!((0..10).all(|_| !m.should_draft(usize::MAX)));
            // plain rounds now about 23 ms per token, speculation 15: 8 ms per token against
            // 100 ms of catching up on 10 tokens, twice
            (0..5).for_each(|_| m.record_plain(30.0));
            m.should_draft(remaining)
        };
        assert!(back_after(1000));
        assert!(!back_after(10));
    }

    /// The catch-up is the price of a probe, not of speculation: a probe whose speculative
    /// round is fast brings speculation back however long its catch-up took.
    #[test]
    fn a_probe_is_judged_without_its_catch_up() {
        // the first probe comes after 106 plain rounds (see the tests above)
        let mut m = lost_after_catching_up(0.0);
        assert!((1..106).all(|_| !m.should_draft(usize::MAX)));
        assert!(m.should_draft(usize::MAX));
        for tokens in [16, 0, 0] {
            m.record(&RoundCost {
                catch_up: CatchUp {
                    tokens,
                    ms: 1000.0 * tokens as f64,
                },
                ..round(12.0 + 1000.0 * tokens as f64, 4)
            });
        }
        assert!((0..4).all(|_| m.should_draft(usize::MAX)));
    }

    /// The times a new process starts from: what the engine keeps of `times`.
    fn kept(times: PassTimes) -> PassTimes {
        serde_json::from_str(&serde_json::to_string(&times).unwrap()).unwrap()
    }

    /// A verifier whose second node costs as much as a plain round per token (a compute-bound
    /// CPU) gets no drafts at all, not even trial rounds: kept times say so from the first
    /// round, for [`KEPT_VETO_RUNS`] generations in a row at most; the next generation tries
    /// again, and then its own passes say so. A node that would pay only if always accepted
    /// does not count as paying.
    #[test]
    fn no_round_drafts_where_even_the_likeliest_token_cannot_pay() {
        let mut m = CostModel::new(times(&[(1, 10.0), (2, 18.5)]));
        m.record_pass(1, 10.0);
        assert!(
            (0..100).all(|_| !m.should_draft(usize::MAX)),
            "85% of a round"
        );

        let mut times = PassTimes::from_points([(1, 10.0), (2, 20.0)]);
        for run in 0..KEPT_VETO_RUNS {
            let mut m = CostModel::new(kept(times));
            for _ in 0..100 {
                assert!(!m.should_draft(usize::MAX), "generation {run}");
                m.record_pass(1, 10.0);
                m.record_plain(10.0);
            }
            times = m.into_pass_times();
        }
        let mut m = CostModel::new(kept(times));
        m.record_pass(1, 10.0);
        // measured now: the prior's quarter of a pass per node until a second size is seen
        assert!(m.should_draft(usize::MAX), "the vetoes ran out");
        m.record_pass(2, 20.0);
        assert!((0..100).all(|_| !m.should_draft(usize::MAX)));
        m.record_pass(2, 12.0);
        m.record_pass(2, 12.0);
        assert!(m.should_draft(usize::MAX));
        // a generation that measured the curve itself restarts the count
        let mut m = CostModel::new(kept(m.into_pass_times()));
        m.record_pass(1, 10.0);
        m.record_pass(2, 20.0);
        assert_eq!(kept(m.into_pass_times()).vetoed_runs, 0);
    }

    /// Noise only lengthens passes: one slow pass kept at 2 nodes does not rule drafting out
    /// in the generations after it where other kept sizes show cheap nodes; a curve steep at
    /// every size still does.
    #[test]
    fn one_slow_kept_pass_does_not_veto_drafting() {
        let mut m = CostModel::new(kept(times(&[(1, 5.0), (2, 20.0), (3, 6.0), (4, 6.5)])));
        m.record_pass(1, 5.0);
        assert!(m.should_draft(usize::MAX));
        let mut m = CostModel::new(kept(times(&[(1, 5.0), (2, 20.0), (3, 14.0)])));
        m.record_pass(1, 5.0);
        assert!((0..100).all(|_| !m.should_draft(usize::MAX)));
    }

    /// The drafter's time per pass counts from the first round of a new process: a drafter
    /// pass as slow as a plain round rules drafting out even where extra nodes are free.
    #[test]
    fn a_kept_drafter_time_counts_from_the_first_round() {
        let mut m = CostModel::new(times(&[(1, 10.0), (2, 10.5)]));
        m.record_pass(1, 10.0);
        assert!(m.should_draft(usize::MAX));
        m.record(&RoundCost {
            draft_ms: 30.0,
            draft_passes: 3,
            ..round(40.0, 2)
        });
        let mut m = CostModel::new(kept(m.into_pass_times()));
        assert!(!m.should_draft(usize::MAX));
        m.record_pass(1, 10.0);
        assert!(!m.should_draft(usize::MAX));
    }

    /// Where extra nodes are nearly free (a verifier waiting on streamed weights), a first tree
    /// that the target rejects must not end speculation: it once set the calibration to 0
    /// for good, and the rounds after it drafted nothing.
    #[test]
    fn one_rejected_tree_does_not_end_speculation() {
        let mut m = CostModel::new(times(&[(1, 2400.0), (3, 2450.0)]));
        assert!(m.should_draft(usize::MAX));
        m.record(&RoundCost {
            draft_ms: 20.0,
            draft_passes: 2,
            drafted_conf: 1.2,
            accepted: 0,
            total_ms: 2470.0,
            emitted: 1,
            catch_up: CatchUp::default(),
        });
        m.record_plain(2400.0);
        assert!(m.should_draft(usize::MAX));
        assert!(m.worth_growing(3, 0.5, Growth::Expand));
    }

    #[test]
    fn nothing_known_means_a_plain_round_first() {
        let mut m = CostModel::new(PassTimes::default());
        assert!(!m.should_draft(usize::MAX));
        m.record_pass(1, 50.0);
        assert!(m.should_draft(usize::MAX));
    }

    /// Decoding simulated round by round against a verifier whose real pass time is `truth`,
    /// starting from the times `start`: a drafter whose nodes have confidence 0.9, 0.85, ...
    /// and are accepted while it stays above 0.6, `draft_ms` per drafted node. Returns the ms
    /// per emitted token of each round, and the times learned.
    fn simulate(
        start: PassTimes,
        truth: impl Fn(usize) -> f64,
        draft_ms: f64,
        rounds: usize,
    ) -> (Vec<f64>, PassTimes) {
        let mut m = CostModel::new(start);
        let per_token = (0..rounds)
            .map(|_| {
                if !m.should_draft(usize::MAX) {
                    let ms = truth(1);
                    m.record_pass(1, ms);
                    m.record_plain(ms);
                    return ms;
                }
                let mut nodes = 1;
                let mut confs = Vec::new();
                while nodes < 16 {
                    let conf = 0.9 - 0.05 * confs.len() as f32;
                    if !m.worth_growing(nodes, conf, Growth::Expand) {
                        break;
                    }
                    confs.push(conf);
                    nodes += 1;
                }
                let accepted = confs.iter().take_while(|&&c| c > 0.6).count();
                let pass = truth(nodes);
                let total = draft_ms * confs.len() as f64 + pass;
                m.record_pass(nodes, pass);
                m.record(&RoundCost {
                    draft_ms: draft_ms * confs.len() as f64,
                    draft_passes: confs.len(),
                    drafted_conf: confs.iter().map(|&c| c as f64).sum(),
                    accepted,
                    total_ms: total,
                    emitted: accepted + 1,
                    catch_up: CatchUp::default(),
                });
                total / (accepted + 1) as f64
            })
            .collect();
        (per_token, m.into_pass_times())
    }

    /// A deliberately wrong curve costs a few rounds at most: told that extra nodes are free
    /// when each costs a whole pass (a compute-bound verifier), decoding is back to the plain
    /// rounds' speed within a few rounds; told that they cost a whole pass when they are nearly
    /// free, it decodes at the plain speed and finds the trees that pay once the kept curve's
    /// vetoes run out ([`KEPT_VETO_RUNS`] generations).
    #[test]
    fn a_wrong_curve_is_unlearned_within_a_few_rounds() {
        let steep = |n: usize| 100.0 * n as f64;
        let flat = |n: usize| 100.0 + 2.0 * (n - 1) as f64;
        // free nodes claimed, whole passes real: a slow speculative round or two, then plain
        // rounds (and rare probes) at the plain speed
        let (per_token, _) = simulate(times(&[(1, 100.0), (64, 101.0)]), steep, 20.0, 200);
        let slow: Vec<usize> = (0..per_token.len())
            .filter(|&i| per_token[i] > 100.0 * 1.01)
            .collect();
        let late_slow = slow.iter().filter(|&&i| i >= 4).count();
        assert!(slow.len() <= 12 && late_slow <= 8, "slow rounds: {slow:?}");
        let total: f64 = per_token.iter().sum();
        assert!(
            total <= 200.0 * 100.0 * 1.15,
            "{total} ms against {} plain",
            200.0 * 100.0
        );
        // whole passes claimed, nearly free nodes real: plain speed, then speculation wins
        // after a few rounds of the first generation not vetoed
        let mut start = times(&[(1, 100.0), (64, 6400.0)]);
        for _ in 0..KEPT_VETO_RUNS {
            let (per_token, learned) = simulate(kept(start), flat, 5.0, 60);
            assert!(per_token.iter().all(|&ms| ms == 100.0), "{per_token:?}");
            start = learned;
        }
        let (per_token, _) = simulate(kept(start), flat, 5.0, 60);
        let late: f64 = per_token[10..].iter().sum::<f64>() / 50.0;
        assert!(
            late < 100.0 * 0.6,
            "{late} ms per token, plain is 100: {per_token:?}"
        );
    }
}
