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
    let jobs = n_tokens * shape.n_heads;
    let out = SharedMut::new(out);
    pool.for_each_item(jobs, |(scores, slots): &mut (Vec<f32>, Vec<usize>), job| {
        let (i, h) = (job / shape.n_heads, job % shape.n_heads);
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
        let qh = &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
        scores.clear();
        scores.extend(slots.iter().map(|&s| {
            dot(qh, &k_cache[s * kv_dim + g * hd..s * kv_dim + (g + 1) * hd]) * shape.scale
        }));
        if let Some(cap) = shape.softcap {
            softcap(scores, cap);
        }
        softmax(scores);
        // SAFETY: each (token, head) job owns its own head_dim slice of the output
        let o = unsafe { out.slice(i * q_dim + h * hd..i * q_dim + (h + 1) * hd) };
        o.fill(0.0);
        for (&s, &p) in slots.iter().zip(scores.iter()) {
            let vh = &v_cache[s * kv_dim + g * hd..s * kv_dim + (g + 1) * hd];
            for (a, &b) in o.iter_mut().zip(vh) {
                *a += p * b;
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
