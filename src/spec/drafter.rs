//! The drafter: a compact model (CPU backend) that grows a token tree from the committed
//! prefix, one node expansion per pass, best path confidence first.
//!
//! Its KV cache holds the committed prefix, then one speculative slot per expanded tree node
//! (in expansion order). A node being expanded sees the prefix and its ancestors' slots only
//! (`CacheView::Speculative`), so sibling branches never leak into each other. After
//! verification the accepted nodes' slots are compacted onto the prefix and the rest dropped:
//! the drafter resynchronises without recomputing what it already drafted.

use super::tree::TokenTree;
use crate::backend::{Backend, Batch, BatchMask, CacheView, Logits, Want};
use crate::error::Result;

/// How a tree may grow.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeShape {
    /// Most nodes per tree, the root included.
    pub max_nodes: usize,
    /// Most drafted tokens on one path.
    pub max_depth: usize,
    /// A candidate other than the drafter's first choice opens a branch when its probability
    /// is at least this (LLMCad uses about 0.3). Above 1, trees are chains.
    pub branch_threshold: f32,
    /// Most children per node.
    pub max_children: usize,
}

impl TreeShape {
    pub fn chain(len: usize) -> Self {
        TreeShape {
            max_nodes: len + 1,
            max_depth: len,
            branch_threshold: f32::INFINITY,
            max_children: 1,
        }
    }
}

/// A drafted tree and where its nodes live in the drafter's cache.
pub struct Draft {
    pub tree: TokenTree,
    /// Cache slot of each node the drafter has run (expanded); `None` for leaves.
    slots: Vec<Option<usize>>,
    /// Cache slots before the speculative ones (the prefix, root included).
    committed: usize,
    /// Drafter passes this tree took.
    pub passes: usize,
}

pub struct Drafter<'m> {
    model: &'m mut dyn Backend,
    /// Committed tokens the drafter has not run yet (the prompt, an accepted leaf).
    backlog: Vec<u32>,
    prefill_chunk: usize,
}

/// Decides, before each expansion, whether the tree should keep growing:
/// `(tree so far, best confidence among expandable leaves) -> keep going`.
pub type GrowthRule<'a> = dyn FnMut(&TokenTree, f32) -> bool + 'a;

impl<'m> Drafter<'m> {
    /// `prompt`: the committed tokens the drafter must see before the first root.
    pub fn new(model: &'m mut dyn Backend, prompt: &[u32], prefill_chunk: usize) -> Self {
        Drafter {
            model,
            backlog: prompt.to_vec(),
            prefill_chunk: prefill_chunk.max(1),
        }
    }

    /// Free cache slots after the backlog and the root are in.
    pub fn room(&self) -> usize {
        self.model
            .kv_capacity()
            .saturating_sub(self.model.kv_len() + self.backlog.len() + 1)
    }

    /// Grows a tree under `root` (the target's last token) within `shape`, asking `grow`
    /// before every expansion.
    pub fn draft(&mut self, root: u32, shape: &TreeShape, grow: &mut GrowthRule) -> Result<Draft> {
        let mut pending = std::mem::take(&mut self.backlog);
        pending.push(root);
        let mut logits = None;
        let mut passes = 0;
        for part in pending.chunks(self.prefill_chunk) {
            let batch = Batch::chain(part, self.model.kv_len());
            logits = Some(self.model.forward(&batch, Want::LAST_FULL)?);
            passes += 1;
        }
        let committed = self.model.kv_len();
        let mut draft = Draft {
            tree: TokenTree::new(root),
            slots: vec![Some(committed - 1)],
            committed,
            passes,
        };
        let shape = TreeShape {
            max_nodes: shape.max_nodes.min(self.model.kv_capacity() - committed + 1),
            ..shape.clone()
        };
        add_children(&mut draft, 0, &logits.expect("the root ran"), &shape);
        while draft.tree.len() < shape.max_nodes {
            let Some(best) = best_leaf(&draft, &shape) else {
                break;
            };
            if !grow(&draft.tree, draft.tree.node(best).conf) {
                break;
            }
            let logits = self.expand(&draft, best)?;
            draft.slots[best] = Some(self.model.kv_len() - 1);
            draft.passes += 1;
            add_children(&mut draft, best, &logits, &shape);
        }
        Ok(draft)
    }

    /// Runs one drafted node over the prefix and its own ancestors.
    fn expand(&mut self, draft: &Draft, node: usize) -> Result<Logits> {
        let path = draft.tree.path(node);
        let visible = path[1..path.len() - 1]
            .iter()
            .map(|&a| draft.slots[a].expect("ancestors are expanded before their children"))
            .collect();
        let batch = Batch {
            tokens: vec![draft.tree.node(node).token],
            positions: vec![draft.committed - 1 + draft.tree.node(node).depth],
            mask: BatchMask::Causal,
            cache: CacheView::Speculative {
                committed: draft.committed,
                visible: vec![visible],
            },
        };
        self.model.forward(&batch, Want::LAST_FULL)
    }

    /// Keeps the accepted root path (node indices from the root) in the cache and drops the
    /// other drafted slots.
    pub fn commit(&mut self, draft: &Draft, path: &[usize]) -> Result<()> {
        let mut keep = Vec::new();
        for &n in &path[1..] {
            match draft.slots[n] {
                Some(s) => keep.push(s - draft.committed),
                // a leaf the drafter never ran: it runs before the next root
                None => self.backlog.push(draft.tree.node(n).token),
            }
        }
        self.model.kv_compact(draft.committed, &keep)
    }
}

/// The unexpanded node with the best confidence that may still get children.
fn best_leaf(draft: &Draft, shape: &TreeShape) -> Option<usize> {
    (0..draft.tree.len())
        .filter(|&i| draft.slots[i].is_none() && draft.tree.node(i).depth < shape.max_depth)
        .max_by(|&a, &b| draft.tree.node(a).conf.total_cmp(&draft.tree.node(b).conf))
}

/// Adds the drafter's first choice under `node`, and branches for other likely tokens.
fn add_children(draft: &mut Draft, node: usize, logits: &Logits, shape: &TreeShape) {
    draft_children(&mut draft.tree, node, logits, shape);
    draft.slots.resize(draft.tree.len(), None);
}

fn draft_children(tree: &mut TokenTree, node: usize, logits: &Logits, shape: &TreeShape) {
    if tree.node(node).depth >= shape.max_depth {
        return;
    }
    let row = logits
        .dense(0)
        .expect("the drafter returns dense logits for its last row");
    let probs = probabilities(row, shape.max_children.max(1));
    for (rank, (token, p)) in probs.into_iter().enumerate() {
        if tree.len() >= shape.max_nodes || (rank > 0 && p < shape.branch_threshold) {
            break;
        }
        tree.add_child(node, token, p);
    }
}

/// The `k` most likely tokens of a logit row with their softmax probabilities.
fn probabilities(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let best = crate::backend::top_k(row, k);
    let max = best.first().map_or(0.0, |b| b.1);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    best.into_iter()
        .map(|(t, l)| (t, (((l - max) as f64).exp() / sum) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_a_softmax() {
        let p = probabilities(&[0.0, 2.0f32.ln(), 0.0, f32::NEG_INFINITY], 2);
        assert_eq!(p[0].0, 1);
        assert!((p[0].1 - 0.5).abs() < 1e-6);
        assert!((p[1].1 - 0.25).abs() < 1e-6);
    }

    #[test]
    fn branches_open_only_above_the_threshold() {
        let shape = TreeShape {
            max_nodes: 10,
            max_depth: 4,
            branch_threshold: 0.2,
            max_children: 3,
        };
        let l = Logits::Dense {
            vocab: 4,
            data: vec![0.5f32.ln(), 3.0f32.ln(), 0.0, f32::NEG_INFINITY],
        };
        // probabilities: 1 → 0.67, 2 → 0.22, 0 → 0.11
        let mut t = TokenTree::new(9);
        draft_children(&mut t, 0, &l, &shape);
        assert_eq!(t.tokens(), [9, 1, 2]);
        let mut chain = TokenTree::new(9);
        draft_children(&mut chain, 0, &l, &TreeShape::chain(3));
        assert_eq!(chain.tokens(), [9, 1]);
    }
}
