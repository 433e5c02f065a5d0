//! Attention over the KV cache, where every query has its own position and its own view of
//! the batch: it sees the whole committed prefix plus the batch nodes the mask allows (for a
//! token tree: its ancestors), less the keys outside the layer's window. Keys are visited in slot
//! order, so a node's result is the same floating-point computation whether it is verified in a
//! tree or decoded on its own.

use super::ops::{softcap, softmax};
use super::pool::{SharedMut, ThreadPool};
use crate::model::LayerAttention;

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
    // a job per token and KV head, for the query heads that share it: each cached key and value
    // is read once for them all, where a job per head read them once per head (and once per
    // thread from memory, when a long context overflows the caches); a group's heads are split
    // only where there would be fewer jobs than threads
    let parts = (1..=group)
        .find(|&d| group.is_multiple_of(d) && n_tokens * shape.n_kv_heads * d >= pool.n_threads())
        .unwrap_or(group);
    let per_job = group / parts;
    let jobs = n_tokens * shape.n_kv_heads * parts;
    let out = SharedMut::new(out);
    pool.for_each_item(jobs, |(scores, slots): &mut (Vec<f32>, Vec<usize>), job| {
        let i = job / (shape.n_kv_heads * parts);
        // heads h0.. of this job share KV head g
        let h0 = job % (shape.n_kv_heads * parts) * per_job;
        let g = h0 / group;
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
        let heads = i * q_dim + h0 * hd..i * q_dim + (h0 + per_job) * hd;
        let qs = &q[heads.clone()];
        let n = slots.len();
        // scores[h·n + k]: the job's query head h against slot k
        scores.clear();
        scores.resize(per_job * n, 0.0);
        for (k, &s) in slots.iter().enumerate() {
            let key = &k_cache[s * kv_dim + g * hd..s * kv_dim + (g + 1) * hd];
            for (h, qh) in qs.chunks_exact(hd).enumerate() {
                scores[h * n + k] = dot(qh, key) * shape.scale;
            }
        }
        for head_scores in scores.chunks_exact_mut(n.max(1)) {
            if let Some(cap) = shape.softcap {
                softcap(head_scores, cap);
            }
            softmax(head_scores);
        }
        // SAFETY: each job owns its query heads' slice of the output
        let o = unsafe { out.slice(heads) };
        o.fill(0.0);
        for (k, &s) in slots.iter().enumerate() {
            let vh = &v_cache[s * kv_dim + g * hd..s * kv_dim + (g + 1) * hd];
            for (h, oh) in o.chunks_exact_mut(hd).enumerate() {
                let p = scores[h * n + k];
                for (a, &b) in oh.iter_mut().zip(vh) {
                    *a += p * b;
                }
            }
        }
    });
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

    fn randoms(seed: u32, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// One query head over the slots it sees, one step at a time (as attention was once
    /// computed: a job per head).
    fn reference_head(
        shape: &LayerAttention,
        qh: &[f32],
        keys: &Keys<'_>,
        g: usize,
        slots: &[usize],
    ) -> Vec<f32> {
        let (hd, kv_dim) = (shape.head_dim, shape.n_kv_heads * shape.head_dim);
        let row = |c: &[f32], s: usize| c[s * kv_dim + g * hd..][..hd].to_vec();
        let mut scores: Vec<f32> = slots
            .iter()
            .map(|&s| dot(qh, &row(keys.k, s)) * shape.scale)
            .collect();
        if let Some(cap) = shape.softcap {
            softcap(&mut scores, cap);
        }
        softmax(&mut scores);
        let mut o = vec![0f32; hd];
        for (&s, &p) in slots.iter().zip(&scores) {
            for (a, b) in o.iter_mut().zip(row(keys.v, s)) {
                *a += p * b;
            }
        }
        o
    }

    /// Every query head gets the bits of its own plain computation, with the heads of a KV head
    /// done together (or split, for one token and fewer KV heads than threads), over 1..3
    /// threads, a causal batch or a tree, a window and a soft cap.
    #[test]
    fn grouped_heads_give_each_head_its_own_bits() {
        let base = 11usize;
        // a tree: 0 → 1 → 2, and 0 → 3
        let all_lists = [vec![0], vec![0, 1], vec![0, 1, 2], vec![0, 3]];
        let cases = [(9, 3, 64), (12, 2, 16), (4, 4, 8), (8, 1, 32)];
        for ((n_heads, n_kv_heads, hd), n) in cases.into_iter().flat_map(|c| [(c, 1), (c, 4)]) {
            let lists = &all_lists[..n];
            for (window, softcap, tree) in [(None, None, false), (Some(6), Some(5.0), true)] {
                let shape = LayerAttention {
                    n_heads,
                    n_kv_heads,
                    head_dim: hd,
                    scale: 0.125,
                    softcap,
                    window,
                };
                let kv_dim = n_kv_heads * hd;
                let (k, v) = (
                    randoms(1, (base + n) * kv_dim),
                    randoms(2, (base + n) * kv_dim),
                );
                let batch_positions = if tree {
                    [11, 12, 13, 12]
                } else {
                    [11, 12, 13, 14]
                };
                let positions: Vec<usize> = (0..base)
                    .chain(batch_positions[..n].iter().copied())
                    .collect();
                let keys = Keys {
                    k: &k,
                    v: &v,
                    positions: &positions,
                };
                let q = randoms(3, n * n_heads * hd);
                let q_pos = &positions[base..];
                let vis = if tree {
                    Visibility::Lists(lists)
                } else {
                    Visibility::Causal
                };
                for threads in 1..=3 {
                    let pool = ThreadPool::new(threads).unwrap();
                    let mut out = vec![f32::NAN; q.len()];
                    attend(
                        &pool,
                        &shape,
                        &q,
                        q_pos,
                        &keys,
                        base,
                        &Prefix::All,
                        &vis,
                        &mut out,
                    );
                    for i in 0..n {
                        let mut slots: Vec<usize> = (0..base).collect();
                        match &vis {
                            Visibility::Causal => slots.extend(base..=base + i),
                            Visibility::Lists(l) => slots.extend(l[i].iter().map(|j| base + j)),
                        }
                        if let Some(w) = window {
                            slots.retain(|&s| q_pos[i].abs_diff(positions[s]) < w);
                        }
                        for h in 0..n_heads {
                            let at = (i * n_heads + h) * hd;
                            let qh = &q[at..at + hd];
                            let want = reference_head(
                                &shape,
                                qh,
                                &keys,
                                h / (n_heads / n_kv_heads),
                                &slots,
                            );
                            let got = &out[at..at + hd];
                            assert!(
                                got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "heads {n_heads}/{n_kv_heads} n={n} tree={tree} threads={threads} token {i} head {h}"
                            );
                        }
                    }
                }
            }
        }
    }
}
