//! The one interface between decoding strategies and a model on some device: a forward pass
//! over a batch of nodes with explicit positions and an attention mask, and KV-cache
//! bookkeeping. The CPU backend, the GPU verifier and every speculative mode meet here.

use crate::error::Result;
use crate::model::ModelConfig;

/// Which batch nodes each node attends to, in addition to the whole committed prefix.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchMask {
    /// Node i sees nodes 0..=i (a prompt chunk, a draft chain).
    Causal,
    /// Node i sees itself and its ancestors. `parents[i]` is an earlier node, or `None` for a
    /// node that continues the committed prefix directly. Nodes are in topological order.
    Tree(Vec<Option<usize>>),
    /// Any mask: `rows[i]` lists, in increasing order, the earlier-or-equal nodes node i sees.
    Dense(Vec<Vec<usize>>),
}

/// Which cached slots (written by earlier passes) each batch node attends to.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum CacheView {
    /// Every cached slot: the committed prefix (verification, plain decoding).
    #[default]
    All,
    /// Slots `0..committed` are the committed prefix, seen by every node; the slots after it
    /// hold speculative nodes (a drafter's token tree) and node i sees only `visible[i]`
    /// (absolute slot indices, increasing): its drafted ancestors.
    Speculative {
        committed: usize,
        visible: Vec<Vec<usize>>,
    },
}

/// A forward pass's input: one token per node, at an explicit position, with a mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub mask: BatchMask,
    pub cache: CacheView,
}

impl Batch {
    /// Tokens in a row, continuing a prefix of `start` tokens.
    pub fn chain(tokens: &[u32], start: usize) -> Self {
        Batch {
            tokens: tokens.to_vec(),
            positions: (start..start + tokens.len()).collect(),
            mask: BatchMask::Causal,
            cache: CacheView::All,
        }
    }

    /// A token tree over a prefix of `prefix_len` tokens: each node sits at
    /// `prefix_len + depth`, where roots have depth 0.
    pub fn tree(tokens: &[u32], parents: &[Option<usize>], prefix_len: usize) -> Self {
        assert_eq!(tokens.len(), parents.len());
        let mut positions = Vec::with_capacity(tokens.len());
        for (i, p) in parents.iter().enumerate() {
            positions.push(match *p {
                None => prefix_len,
                Some(p) => {
                    assert!(p < i, "tree nodes must be in topological order");
                    positions[p] + 1
                }
            });
        }
        Batch {
            tokens: tokens.to_vec(),
            positions,
            mask: BatchMask::Tree(parents.to_vec()),
            cache: CacheView::All,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The batch nodes node `i` attends to, in increasing order (always ends with `i`).
    pub fn visible(&self, i: usize) -> Vec<usize> {
        match &self.mask {
            BatchMask::Causal => (0..=i).collect(),
            BatchMask::Tree(parents) => {
                let mut v = vec![i];
                let mut cur = parents[i];
                while let Some(p) = cur {
                    v.push(p);
                    cur = parents[p];
                }
                v.reverse();
                v
            }
            BatchMask::Dense(rows) => rows[i].clone(),
        }
    }

    /// Checks the batch is well formed (lengths, order, mask references) for a cache that
    /// holds `cached` slots.
    pub fn validate(&self, cached: usize) -> Result<()> {
        let n = self.tokens.len();
        let bad = |m: String| Err(crate::Error::InvalidArgument(m));
        if let CacheView::Speculative { committed, visible } = &self.cache {
            if visible.len() != n || *committed > cached {
                return bad(format!(
                    "speculative cache view: {} rows for {n} tokens, {committed} committed of \
                     {cached} cached slots",
                    visible.len()
                ));
            }
            let out_of_range = |r: &Vec<usize>| {
                r.windows(2).any(|w| w[0] >= w[1])
                    || r.first().is_some_and(|&s| s < *committed)
                    || r.last().is_some_and(|&s| s >= cached)
            };
            if let Some(i) = visible.iter().position(out_of_range) {
                return bad(format!(
                    "speculative cache view of node {i} must list increasing slots in \
                     {committed}..{cached}"
                ));
            }
        }
        if self.positions.len() != n {
            return bad(format!("{} positions for {n} tokens", self.positions.len()));
        }
        match &self.mask {
            BatchMask::Causal => {}
            BatchMask::Tree(parents) => {
                if parents.len() != n {
                    return bad(format!("{} parents for {n} tokens", parents.len()));
                }
                if let Some(i) = parents
                    .iter()
                    .enumerate()
                    .position(|(i, p)| p.is_some_and(|p| p >= i))
                {
                    return bad(format!(
                        "tree node {i} has a parent that does not precede it"
                    ));
                }
            }
            BatchMask::Dense(rows) => {
                if rows.len() != n {
                    return bad(format!("{} mask rows for {n} tokens", rows.len()));
                }
                for (i, r) in rows.iter().enumerate() {
                    if r.windows(2).any(|w| w[0] >= w[1]) || r.last().is_some_and(|&j| j > i) {
                        return bad(format!(
                            "mask row {i} must be increasing and end at most at {i}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Which rows of the output a caller needs, and in what form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub rows: Rows,
    /// `None`: full logits; `Some(k)`: the k best tokens per row (a GPU reads back only these).
    pub top_k: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Only the last node (prompt prefill, plain decoding).
    Last,
    /// Every node (tree verification).
    All,
}

impl Want {
    pub const LAST_FULL: Want = Want {
        rows: Rows::Last,
        top_k: None,
    };
    /// Every row's best token only (timing passes, greedy verification).
    pub const ALL_TOP1: Want = Want {
        rows: Rows::All,
        top_k: Some(1),
    };
    pub const ALL_FULL: Want = Want {
        rows: Rows::All,
        top_k: None,
    };
}

/// Scores for the requested rows: dense logits, or the best k (id, logit) pairs per row.
#[derive(Clone, Debug)]
pub enum Logits {
    Dense {
        vocab: usize,
        data: Vec<f32>,
    },
    TopK {
        k: usize,
        ids: Vec<u32>,
        logits: Vec<f32>,
    },
}

impl Logits {
    pub fn rows(&self) -> usize {
        match self {
            Logits::Dense { vocab, data } => data.len() / vocab,
            Logits::TopK { k, ids, .. } => ids.len() / k,
        }
    }

    /// The dense logits of row `r`, when this output has them.
    pub fn dense(&self, r: usize) -> Option<&[f32]> {
        match self {
            Logits::Dense { vocab, data } => Some(&data[r * vocab..(r + 1) * vocab]),
            Logits::TopK { .. } => None,
        }
    }

    /// Keeps only the best `k` tokens of every row (what a GPU reads back).
    pub fn into_top_k(self, k: usize) -> Logits {
        match self {
            Logits::Dense { vocab, data } => {
                let k = k.min(vocab).max(1);
                let mut ids = Vec::with_capacity(data.len() / vocab * k);
                let mut logits = Vec::with_capacity(ids.capacity());
                for row in data.chunks_exact(vocab) {
                    for (id, l) in top_k(row, k) {
                        ids.push(id);
                        logits.push(l);
                    }
                }
                Logits::TopK { k, ids, logits }
            }
            top => top,
        }
    }

    /// The highest-scoring token of row `r` (lowest id on ties, on every backend).
    pub fn argmax(&self, r: usize) -> u32 {
        match self {
            Logits::Dense { .. } => argmax(self.dense(r).unwrap()),
            Logits::TopK { k, ids, .. } => ids[r * k],
        }
    }

    /// Candidates of row `r` as (id, logit), best first; `complete` when they cover the whole
    /// vocabulary.
    pub fn candidates(&self, r: usize) -> (Vec<(u32, f32)>, bool) {
        match self {
            Logits::Dense { vocab, .. } => (top_k(self.dense(r).unwrap(), *vocab), true),
            Logits::TopK { k, ids, logits } => (
                ids[r * k..(r + 1) * k]
                    .iter()
                    .copied()
                    .zip(logits[r * k..(r + 1) * k].iter().copied())
                    .collect(),
                false,
            ),
        }
    }
}

/// The `k` largest values of `row` as (index, value), best first, lower index first on ties.
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut c: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l }))
        .collect();
    let k = k.min(c.len());
    if k < c.len() {
        c.select_nth_unstable_by(k, cmp);
        c.truncate(k);
    }
    c.sort_by(cmp);
    c
}

/// Index of the largest value, the first one on ties; NaN never wins.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best_v = x;
            best = i;
        }
    }
    best as u32
}

/// What a backend runs, declared up front: callers choose what to ask of it before a pass,
/// so that no pass is refused or silently cut short. Every backend runs every `BatchMask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Batches with a `CacheView::Speculative` (a drafter growing its tree over its own
    /// cached draft nodes).
    pub speculative_cache: bool,
    /// Most candidates per row a `Want::top_k` readback holds.
    pub max_top_k: usize,
}

impl Capabilities {
    /// The readback to ask for when `needed` candidates per row are needed (`None`: all):
    /// their top-k where the backend returns that many, else every logit.
    pub fn top_k_for(&self, needed: Option<usize>) -> Option<usize> {
        needed.filter(|&k| k <= self.max_top_k)
    }
}

/// A model ready to run on some device, with its own KV cache.
pub trait Backend: Send {
    fn config(&self) -> &ModelConfig;

    fn capabilities(&self) -> Capabilities;

    /// Human-readable device description, e.g. "cpu (2 threads)".
    fn device_name(&self) -> String;

    /// Device statistics for `--json` (weight streaming: bytes per pass, IO and compute time,
    /// overlap), when the backend keeps any.
    fn stats_json(&self) -> Option<serde_json::Value> {
        None
    }

    /// Whether passes run on the CPU's cores (which a drafting thread would compete for).
    fn on_cpu(&self) -> bool {
        false
    }

    /// The time a pass spends reading streamed weights from storage, whatever its node count
    /// (ms, averaged over the passes so far); `None` when no weights stream.
    fn streamed_io_ms(&self) -> Option<f64> {
        None
    }

    /// Runs `batch`; its K/V land in cache slots `kv_len()..kv_len() + batch.len()`.
    fn forward(&mut self, batch: &Batch, want: Want) -> Result<Logits>;

    /// From now on, computes the logits of the tokens `ids` (sorted) only; the others come out
    /// as −∞ (a drafter's head restricted to frequent tokens). Returns whether this backend
    /// can; those that cannot keep the whole vocabulary.
    fn restrict_vocab(&mut self, _ids: &[u32]) -> bool {
        false
    }

    /// Committed plus pending cache entries.
    fn kv_len(&self) -> usize;

    /// Most cache entries this backend holds (its context window).
    fn kv_capacity(&self) -> usize;

    /// Keeps, of the entries from `base` on, only those at `base + keep[j]` (increasing), moving
    /// them to `base + j`, and drops the rest: accepted tree nodes become a contiguous prefix.
    fn kv_compact(&mut self, base: usize, keep: &[usize]) -> Result<()>;

    /// Drops every entry from `len` on.
    fn kv_truncate(&mut self, len: usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_positions_and_visibility() {
        // 0 ─ 1 ─ 3
        //   └ 2
        // 4 (second root)
        let b = Batch::tree(
            &[10, 11, 12, 13, 14],
            &[None, Some(0), Some(0), Some(1), None],
            7,
        );
        assert_eq!(b.positions, [7, 8, 8, 9, 7]);
        assert_eq!(b.visible(3), [0, 1, 3]);
        assert_eq!(b.visible(2), [0, 2]);
        assert_eq!(b.visible(4), [4]);
        b.validate(0).unwrap();
    }

    #[test]
    fn chain_is_causal() {
        let b = Batch::chain(&[1, 2, 3], 5);
        assert_eq!(b.positions, [5, 6, 7]);
        assert_eq!(b.visible(2), [0, 1, 2]);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let mut b = Batch::chain(&[1, 2], 0);
        b.positions.pop();
        assert!(b.validate(0).is_err());
        let b = Batch {
            tokens: vec![1, 2],
            positions: vec![0, 1],
            mask: BatchMask::Tree(vec![None, Some(1)]),
            cache: CacheView::All,
        };
        assert!(b.validate(0).is_err());
        let b = Batch {
            tokens: vec![1, 2],
            positions: vec![0, 1],
            mask: BatchMask::Dense(vec![vec![0], vec![1, 0]]),
            cache: CacheView::All,
        };
        assert!(b.validate(0).is_err());
        let view = |visible: Vec<Vec<usize>>| Batch {
            cache: CacheView::Speculative {
                committed: 4,
                visible,
            },
            ..Batch::chain(&[1, 2], 6)
        };
        view(vec![vec![4], vec![4, 5]]).validate(6).unwrap();
        for bad in [
            vec![vec![4]],
            vec![vec![3], vec![]],
            vec![vec![5, 4], vec![]],
            vec![vec![], vec![6]],
        ] {
            assert!(view(bad.clone()).validate(6).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn argmax_prefers_first_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
    }
}
