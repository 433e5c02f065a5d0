//! Turning scores into the next token: greedy, or sampling with temperature, top-k, top-p,
//! min-p and a repetition penalty, from a seeded generator so runs are reproducible.
//!
//! Order of operations (as Hugging Face applies them): repetition penalty on the logits, then
//! temperature, top-k, softmax, top-p, min-p, renormalise. `distribution` exposes the final
//! probabilities, so speculative sampling can accept or reject against exactly the
//! distribution plain sampling draws from.

use crate::backend::{top_k, Logits};
use crate::error::{Error, Result};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k best tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of best tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the best one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// Fails unless `value` lies in `lo..=hi` (NaN never does), naming the parameter and range.
pub(crate) fn check_range(name: &str, value: f32, lo: f32, hi: f32) -> Result<()> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        let range = if hi == f32::MAX {
            format!("a finite number from {lo}")
        } else {
            format!("a number from {lo} to {hi}")
        };
        Err(Error::InvalidArgument(format!(
            "{name} is {value}; it takes {range}"
        )))
    }
}

impl SamplingParams {
    /// Fails on a parameter outside its meaningful range (NaN, a negative temperature, a
    /// probability above 1), naming it and the range.
    pub fn validate(&self) -> Result<()> {
        check_range("temperature", self.temperature, 0.0, f32::MAX)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        // a penalty of 0 would divide by zero; below 1 it favours repeats, which is allowed
        check_range(
            "repeat_penalty",
            self.repeat_penalty,
            f32::MIN_POSITIVE,
            f32::MAX,
        )
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// How many best candidates a backend must return so that sampling is exact, or `None`
    /// when the whole vocabulary is needed.
    pub fn candidates_needed(&self) -> Option<usize> {
        let penalized = if self.repeat_penalty != 1.0 {
            self.repeat_last_n
        } else {
            0
        };
        if self.is_greedy() {
            Some(1 + penalized)
        } else if self.top_k > 0 {
            // a penalty can push up to `penalized` tokens out of the best top_k
            Some(self.top_k + penalized)
        } else {
            None
        }
    }
}

/// A seeded random source for sampling and for speculative acceptance tests.
pub struct SamplerRng(Xoshiro256PlusPlus);

impl SamplerRng {
    pub fn new(seed: u64) -> Self {
        SamplerRng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An index drawn from `probs` (need not be normalised).
    pub fn pick(&mut self, probs: &[f32]) -> usize {
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let mut u = self.uniform() * total;
        for (i, &p) in probs.iter().enumerate() {
            u -= p as f64;
            if u < 0.0 {
                return i;
            }
        }
        // rounding left a sliver: take the last token with any mass
        probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
    }
}

/// Applies the repetition penalty to candidate logits.
pub fn penalize(cands: &mut [(u32, f32)], recent: &[u32], penalty: f32) {
    if penalty == 1.0 || recent.is_empty() {
        return;
    }
    for (id, l) in cands.iter_mut() {
        if recent.contains(id) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// The probability of every surviving candidate after all filters, best first.
/// `cands` are (id, logit); `recent` are the last tokens for the repetition penalty.
pub fn distribution(
    params: &SamplingParams,
    cands: &[(u32, f32)],
    recent: &[u32],
) -> Vec<(u32, f32)> {
    let mut c = cands.to_vec();
    let window = &recent[recent.len().saturating_sub(params.repeat_last_n)..];
    penalize(&mut c, window, params.repeat_penalty);
    c.retain(|(_, l)| !l.is_nan());
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if c.is_empty() {
        return c;
    }
    if params.is_greedy() {
        return vec![(c[0].0, 1.0)];
    }
    if params.top_k > 0 {
        c.truncate(params.top_k);
    }
    let max = c[0].1;
    let inv_t = 1.0 / params.temperature;
    let mut probs: Vec<f32> = c.iter().map(|(_, l)| ((l - max) * inv_t).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    let mut keep = probs.len();
    if params.top_p < 1.0 {
        let mut acc = 0f32;
        for (i, &p) in probs.iter().enumerate() {
            acc += p;
            if acc >= params.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if params.min_p > 0.0 {
        let floor = probs[0] * params.min_p;
        keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
    }
    probs.truncate(keep);
    let sum: f32 = probs.iter().sum();
    c.truncate(keep);
    c.iter()
        .zip(probs)
        .map(|(&(id, _), p)| (id, p / sum))
        .collect()
}

/// Candidates of one output row, as many as these parameters need (all of them for sampling
/// without top-k), best first.
pub fn row_candidates(params: &SamplingParams, logits: &Logits, row: usize) -> Vec<(u32, f32)> {
    match (logits.dense(row), params.candidates_needed()) {
        (Some(dense), Some(k)) => top_k(dense, k),
        _ => logits.candidates(row).0,
    }
}

/// Chooses the next token for output row `row`; greedy without a penalty is a plain argmax.
pub fn next_token(
    params: &SamplingParams,
    logits: &Logits,
    row: usize,
    recent: &[u32],
    rng: &mut SamplerRng,
) -> u32 {
    if params.is_greedy() && params.repeat_penalty == 1.0 {
        return logits.argmax(row);
    }
    sample(params, &row_candidates(params, logits, row), recent, rng)
}

/// Picks the next token from `cands` (greedy when the temperature is 0).
pub fn sample(
    params: &SamplingParams,
    cands: &[(u32, f32)],
    recent: &[u32],
    rng: &mut SamplerRng,
) -> u32 {
    let dist = distribution(params, cands, recent);
    if dist.len() == 1 {
        return dist[0].0;
    }
    let probs: Vec<f32> = dist.iter().map(|d| d.1).collect();
    dist[rng.pick(&probs)].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Vec<(u32, f32)> {
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect()
    }

    #[test]
    fn greedy_takes_the_best_and_lowest_id_on_ties() {
        let p = SamplingParams::default();
        let mut rng = SamplerRng::new(1);
        assert_eq!(sample(&p, &cands(&[0.1, 2.0, 2.0, -1.0]), &[], &mut rng), 1);
    }

    #[test]
    fn penalty_changes_the_greedy_choice() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut rng = SamplerRng::new(1);
        assert_eq!(sample(&p, &cands(&[1.0, 1.5, 0.2]), &[1], &mut rng), 0);
    }

    #[test]
    fn filters_cut_the_tail() {
        let base = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let logits = cands(&[3.0, 2.0, 1.0, 0.0, -5.0]);
        assert_eq!(distribution(&base, &logits, &[]).len(), 5);
        let k2 = SamplingParams {
            top_k: 2,
            ..base.clone()
        };
        assert_eq!(distribution(&k2, &logits, &[]).len(), 2);
        let p = SamplingParams {
            top_p: 0.9,
            ..base.clone()
        };
        // softmax of 3,2,1,0,-5 ≈ .644 .237 .087 .032 .0002 → 0.968 reached at the third
        assert_eq!(distribution(&p, &logits, &[]).len(), 3);
        let m = SamplingParams {
            min_p: 0.2,
            ..base.clone()
        };
        assert_eq!(distribution(&m, &logits, &[]).len(), 2);
        let d = distribution(&base, &logits, &[]);
        assert!((d.iter().map(|x| x.1).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let logits = cands(&[0.0, (2.0f32).ln(), (3.0f32).ln()]); // probs 1/6, 2/6, 3/6
        let mut rng = SamplerRng::new(7);
        let mut counts = [0usize; 3];
        let n = 60_000;
        for _ in 0..n {
            counts[sample(&p, &logits, &[], &mut rng) as usize] += 1;
        }
        for (c, want) in counts.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            let got = *c as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "{got} vs {want}");
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let mut a = SamplerRng::new(42);
        let mut b = SamplerRng::new(42);
        assert!((0..100).all(|_| a.uniform() == b.uniform()));
    }

    #[test]
    fn out_of_range_parameters_are_refused_with_their_range() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = [
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: f32::INFINITY,
                ..Default::default()
            },
        ];
        for p in bad {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains("it takes a"), "{p:?}: {e}");
        }
    }
}
