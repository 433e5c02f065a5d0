//! Attention over the KV cache, where every query has its own position and its own view of
//! the batch: it sees the whole committed prefix plus the batch nodes the mask allows (for a
//! token tree: its ancestors), less the keys outside the layer's window. Keys are visited in slot
//! order, so a node's result is the same floating-point computation whether it is verified in a
//! tree or decoded on its own.

use super::ops::{softcap, softmax};
use super::pool::{SharedMut, ThreadPool};
use crate::model::LayerAttention;
#[cfg(target_arch = "x86_64")]
use crate::quant::Simd;

/// Which batch nodes a query sees, besides the prefix.
pub enum Visibility<'a> {
    /// Query i sees nodes 0..=i.
    Causal,
    /// Query i sees `lists[i]` (increasing).
    Lists(&'a [Vec<usize>]),
}

/// A layer's cache: K and V rows, and each slot's position.
pub struct Keys<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub positions: &'a [usize],
}

/// The cached slots (before the batch) each query sees.
pub enum Prefix<'a> {
    /// Slots `0..base`.
    All,
    /// Slots `0..committed` and then `extra[i]` for query i (a drafter's speculative tree).
    Partial {
        committed: usize,
        extra: &'a [Vec<usize>],
    },
}

/// `out[i]` (n_heads × head_dim) = attention of query `q[i]`, at position `q_pos[i]`, over its
/// cached slots (`prefix`) and the visible batch slots `base + j`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    pool: &ThreadPool,
    shape: &LayerAttention,
    q: &[f32],
    q_pos: &[usize],
    keys: &Keys<'_>,
    base: usize,
    prefix: &Prefix<'_>,
    vis: &Visibility<'_>,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_dim = shape.n_kv_heads * hd;
    let q_dim = shape.n_heads * hd;
    let group = shape.n_heads / shape.n_kv_heads;
    let n_tokens = q.len() / q_dim;
    let (k_cache, v_cache) = (keys.k, keys.v);
    let isa = Isa::active();
    // query heads per job: as many of a KV head's as leave two jobs per thread or more, since
    // a job reads its KV head's rows once for all its heads
    let threads = pool.n_threads();
    let per_job = (1..=group)
        .rev()
        .find(|&m| {
            group.is_multiple_of(m) && n_tokens * shape.n_kv_heads * (group / m) >= 2 * threads
        })
        .unwrap_or(1);
    let per_token = shape.n_heads / per_job;
    let out = SharedMut::new(out);
    pool.for_each_item(
        n_tokens * per_token,
        |(scores, slots): &mut (Vec<f32>, Vec<usize>), job| {
            let (i, h) = (job / per_token, job % per_token * per_job);
            let g = h / group;
            slots.clear();
            match prefix {
                Prefix::All => slots.extend(0..base),
                Prefix::Partial { committed, extra } => {
                    slots.extend(0..*committed);
                    slots.extend_from_slice(&extra[i]);
                }
            }
            match vis {
                Visibility::Causal => slots.extend(base..=base + i),
                Visibility::Lists(l) => slots.extend(l[i].iter().map(|j| base + j)),
            }
            if let Some(w) = shape.window {
                slots.retain(|&s| q_pos[i].abs_diff(keys.positions[s]) < w);
            }
            let mine = i * q_dim + h * hd..i * q_dim + (h + per_job) * hd;
            let heads = Heads {
                q: &q[mine.clone()],
                hd,
                k: &k_cache[g * hd..],
                v: &v_cache[g * hd..],
                stride: kv_dim,
                scale: shape.scale,
                softcap: shape.softcap,
            };
            // SAFETY: each job owns the output of its own heads of its token
            let o = unsafe { out.slice(mine) };
            heads.attend(isa, slots, scores, o);
        },
    );
}

/// Query heads that share a KV head, against its cached rows: `q` holds their queries side by
/// side, `hd` values each; `k` and `v` start at the KV head's columns of slot 0, and slot s's
/// row starts `s * stride` further on.
struct Heads<'a> {
    q: &'a [f32],
    hd: usize,
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    scale: f32,
    softcap: Option<f32>,
}

/// Slots every head of a job takes in turn, so that their keys and values stay in L1 from one
/// head to the next (32 slots of 128 values: 16 KB).
const SLOT_BLOCK: usize = 32;

/// The instruction sets the attention loops are compiled for. The code, and so every bit of
/// the result, is the same for each: wider registers only take more of its independent lanes
/// at once (no fused multiply-adds: Rust never contracts a product and a sum into one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest set the active kernels (`Simd::active`, which `LLMCAD_CPU_SIMD` can change)
    /// allow.
    fn active() -> Isa {
        #[cfg(target_arch = "x86_64")]
        match Simd::active() {
            Simd::Amx | Simd::Avx512Vnni => return Isa::Avx512,
            Simd::Avx2 => return Isa::Avx2,
            _ => {}
        }
        Isa::Baseline
    }

    /// Every set this CPU runs.
    #[cfg(test)]
    fn all_available() -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        let wider: Vec<Isa> = {
            let simds = Simd::all_available();
            [(Simd::Avx2, Isa::Avx2), (Simd::Avx512Vnni, Isa::Avx512)]
                .into_iter()
                .filter(|(s, _)| simds.contains(s))
                .map(|(_, isa)| isa)
                .collect()
        };
        #[cfg(not(target_arch = "x86_64"))]
        let wider = Vec::new();
        [vec![Isa::Baseline], wider].concat()
    }
}

impl Heads<'_> {
    /// Each head's `o` = softmax(q·k(s) · scale) weighted sum of v(s) over `slots`, in slot
    /// order.
    fn attend(&self, isa: Isa, slots: &[usize], scores: &mut Vec<f32>, o: &mut [f32]) {
        match isa {
            Isa::Baseline => self.run::<16>(slots, scores, o, |q, slots, out| {
                for (x, &s) in out.iter_mut().zip(slots) {
                    *x = dot(q, self.k_row(s)) * self.scale;
                }
            }),
            // SAFETY: `Isa::active` and the tests pick these only where the CPU has them
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.run_avx2(slots, scores, o) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.run_avx512(slots, scores, o) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, slots: &[usize], scores: &mut Vec<f32>, o: &mut [f32]) {
        self.run::<32>(slots, scores, o, |q, slots, out| unsafe {
            self.scores_x86(q, slots, out)
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(&self, slots: &[usize], scores: &mut Vec<f32>, o: &mut [f32]) {
        self.run::<64>(slots, scores, o, |q, slots, out| unsafe {
            self.scores_x86(q, slots, out)
        })
    }

    /// The computation, inlined into each instruction set's copy: `score(q, slots, out)` gives
    /// one head's scaled scores over some slots; the values are summed `CH` columns at a time.
    #[inline(always)]
    fn run<const CH: usize>(
        &self,
        slots: &[usize],
        scores: &mut Vec<f32>,
        o: &mut [f32],
        score: impl Fn(&[f32], &[usize], &mut [f32]),
    ) {
        let n = slots.len();
        o.fill(0.0);
        if n == 0 {
            return;
        }
        scores.clear();
        scores.resize(self.q.len() / self.hd * n, 0.0);
        let blocks = || (0..n).step_by(SLOT_BLOCK).map(|b| b..n.min(b + SLOT_BLOCK));
        for b in blocks() {
            for (qh, p) in self.q.chunks_exact(self.hd).zip(scores.chunks_exact_mut(n)) {
                score(qh, &slots[b.clone()], &mut p[b.clone()]);
            }
        }
        for p in scores.chunks_exact_mut(n) {
            if let Some(cap) = self.softcap {
                softcap(p, cap);
            }
            softmax(p);
        }
        for b in blocks() {
            for (oh, p) in o.chunks_exact_mut(self.hd).zip(scores.chunks_exact(n)) {
                self.weigh::<CH>(&slots[b.clone()], &p[b.clone()], oh);
            }
        }
    }

    /// Slot s's key row.
    #[inline(always)]
    fn k_row(&self, s: usize) -> &[f32] {
        &self.k[s * self.stride..s * self.stride + self.hd]
    }

    /// `out[i] = dot(q, k(slots[i])) · scale`, `dot`'s arithmetic in 8-lane registers, four
    /// slots at a time: one slot's sum is a chain of dependent adds, four are independent.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_x86(&self, q: &[f32], slots: &[usize], out: &mut [f32]) {
        let mut quads = slots.chunks_exact(4);
        let mut outs = out.chunks_exact_mut(4);
        for (s, x) in (&mut quads).zip(&mut outs) {
            let rows: [&[f32]; 4] = std::array::from_fn(|j| self.k_row(s[j]));
            x.copy_from_slice(&dots_x86(q, rows).map(|d| d * self.scale));
        }
        for (&s, x) in quads.remainder().iter().zip(outs.into_remainder()) {
            *x = dots_x86(q, [self.k_row(s)])[0] * self.scale;
        }
    }

    /// Adds the values of `slots` weighed by their probabilities `p` to one head's `o`, `CH`
    /// columns at a time in locals, which stay in registers (`o` itself would be loaded and
    /// stored again for every slot); each column adds the slots in order.
    #[inline(always)]
    fn weigh<const CH: usize>(&self, slots: &[usize], p: &[f32], o: &mut [f32]) {
        for (c, oc) in o.chunks_mut(CH).enumerate() {
            let at = |s: usize| s * self.stride + c * CH;
            if let Ok(oc) = <&mut [f32; CH]>::try_from(&mut *oc) {
                let mut acc = *oc;
                for (&s, &p) in slots.iter().zip(p) {
                    let vh: &[f32; CH] = self.v[at(s)..at(s) + CH].try_into().expect("CH");
                    for (a, &b) in acc.iter_mut().zip(vh) {
                        *a += p * b;
                    }
                }
                *oc = acc;
            } else {
                for (&s, &p) in slots.iter().zip(p) {
                    for (a, &b) in oc.iter_mut().zip(&self.v[at(s)..]) {
                        *a += p * b;
                    }
                }
            }
        }
    }
}

/// `dot(q, rows[j])` for each j, with the same arithmetic: lane l of a register holds partial
/// sum l.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_x86<const N: usize>(q: &[f32], rows: [&[f32]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let whole = q.len() / 8 * 8;
    assert!(rows.iter().all(|r| r.len() == q.len()));
    let mut acc = [_mm256_setzero_ps(); N];
    for c in (0..whole).step_by(8) {
        // SAFETY: c + 8 <= whole <= the length of q and of every row (asserted)
        let x = _mm256_loadu_ps(q.as_ptr().add(c));
        for (a, r) in acc.iter_mut().zip(&rows) {
            *a = _mm256_add_ps(*a, _mm256_mul_ps(x, _mm256_loadu_ps(r.as_ptr().add(c))));
        }
    }
    std::array::from_fn(|j| {
        // ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)), as `dot` adds them
        let pairs = _mm_add_ps(
            _mm256_castps256_ps128(acc[j]),
            _mm256_extractf128_ps::<1>(acc[j]),
        );
        let mut p = [0f32; 4];
        _mm_storeu_ps(p.as_mut_ptr(), pairs);
        let mut s = (p[0] + p[1]) + (p[2] + p[3]);
        for (x, y) in q[whole..].iter().zip(&rows[j][whole..]) {
            s += x * y;
        }
        s
    })
}

/// Dot product with 8 independent partial sums (vectorizes; fixed order, so deterministic).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ac.remainder().iter().zip(bc.remainder());
    // whole chunks, so no bounds checks stand in the way of vector code
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in tail {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-2, 2).
    fn randoms(seed: u64, n: usize) -> Vec<f32> {
        crate::quant::testing::randoms(seed, n)
            .into_iter()
            .map(|x| 2.0 * x)
            .collect()
    }

    /// Every instruction set gives the bits of the baseline code, which matches an f64
    /// reference head by head, for one or several heads per job, over several blocks of slots,
    /// with head sizes with and without a remainder past the register chunks.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let n_slots = 150;
        for (seed, hd, m) in [
            (1u64, 64usize, 1usize),
            (2, 128, 3),
            (3, 80, 2),
            (4, 5, 1),
            (5, 70, 6),
        ] {
            let stride = 3 * hd + 5;
            let (q, k, v) = (
                randoms(seed, m * hd),
                randoms(seed + 100, n_slots * stride),
                randoms(seed + 200, n_slots * stride),
            );
            // every other slot, and the last, in increasing order
            let slots: Vec<usize> = (0..n_slots).filter(|s| s % 2 == 0 || *s == 149).collect();
            for softcap in [None, Some(1.5)] {
                let heads = Heads {
                    q: &q,
                    hd,
                    k: &k[hd..],
                    v: &v[hd..],
                    stride,
                    scale: 0.3,
                    softcap,
                };
                let mut want = vec![f32::NAN; m * hd];
                heads.attend(Isa::Baseline, &slots, &mut Vec::new(), &mut want);
                let row = |x: &[f32], s: usize| x[hd + s * stride..][..hd].to_vec();
                for (qh, wh) in q.chunks_exact(hd).zip(want.chunks_exact(hd)) {
                    let mut scores: Vec<f64> = slots
                        .iter()
                        .map(|&s| {
                            let d: f64 = (qh.iter().zip(row(&k, s)))
                                .map(|(&a, b)| a as f64 * b as f64)
                                .sum();
                            let x = d * 0.3;
                            softcap.map_or(x, |c| c as f64 * (x / c as f64).tanh())
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    scores.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f64 = scores.iter().sum();
                    for (c, &w) in wh.iter().enumerate() {
                        let r: f64 = (slots.iter().zip(&scores))
                            .map(|(&s, p)| p / sum * row(&v, s)[c] as f64)
                            .sum();
                        assert!((w as f64 - r).abs() < 1e-5, "hd {hd} col {c}");
                    }
                }
                for isa in Isa::all_available() {
                    let mut got = vec![f32::NAN; m * hd];
                    heads.attend(isa, &slots, &mut vec![7.0; 3], &mut got);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{isa:?}, head_dim {hd}, {m} heads");
                }
            }
        }
    }
}
