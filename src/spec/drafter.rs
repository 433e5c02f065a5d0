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
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Nodes that came ready-made from drafting during the previous verification.
    pub reused: usize,
}

/// One node the drafter ran while the target was verifying: its token, its cache slot and the
/// drafter's candidates after it.
#[derive(Clone, Debug)]
struct Step {
    token: u32,
    slot: usize,
    cands: Vec<(u32, f32)>,
}

/// Drafting done while the target verified: a chain from the tree's most likely leaf `from`
/// (steps[0] runs that leaf, each later step the previous step's first choice).
pub struct Extension {
    from: usize,
    steps: Vec<Step>,
}

impl Extension {
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Work kept from an extension for the next tree: its root (the target's token, which the
/// drafter predicted) with its candidates, and the chain drafted below it.
struct Carry {
    root: u32,
    root_cands: Vec<(u32, f32)>,
    chain: Vec<Step>,
}

pub struct Drafter<'m> {
    model: &'m mut dyn Backend,
    /// Committed tokens the drafter has not run yet (the prompt, an accepted leaf).
    backlog: Vec<u32>,
    prefill_chunk: usize,
    /// Candidates kept per drafted node (enough for every branch a shape may open).
    max_children: usize,
    carry: Option<Carry>,
}

/// Decides, before each expansion, whether the tree should keep growing:
/// `(tree so far, best confidence among expandable leaves) -> keep going`.
pub type GrowthRule<'a> = dyn FnMut(&TokenTree, f32) -> bool + 'a;

impl<'m> Drafter<'m> {
    /// `prompt`: the committed tokens the drafter must see before the first root.
    pub fn new(
        model: &'m mut dyn Backend,
        prompt: &[u32],
        prefill_chunk: usize,
        max_children: usize,
    ) -> Self {
        Drafter {
            model,
            backlog: prompt.to_vec(),
            prefill_chunk: prefill_chunk.max(1),
            max_children: max_children.max(1),
            carry: None,
        }
    }

    /// Grows a tree under `root` (the target's last token) within `shape`, asking `grow`
    /// before every expansion.
    pub fn draft(&mut self, root: u32, shape: &TreeShape, grow: &mut GrowthRule) -> Result<Draft> {
        let carry = self.carry.take().filter(|c| c.root == root);
        let mut passes = 0;
        let (root_cands, chain) = match carry {
            Some(c) => (c.root_cands, c.chain),
            None => {
                let mut pending = std::mem::take(&mut self.backlog);
                pending.push(root);
                let mut logits = None;
                for part in pending.chunks(self.prefill_chunk) {
                    let batch = Batch::chain(part, self.model.kv_len());
                    logits = Some(self.model.forward(&batch, Want::LAST_FULL)?);
                    passes += 1;
                }
                (self.candidates(&logits.expect("the root ran")), Vec::new())
            }
        };
        let committed = self.model.kv_len() - chain.len();
        let mut draft = Draft {
            tree: TokenTree::new(root),
            slots: vec![Some(committed - 1)],
            committed,
            passes,
            reused: 0,
        };
        let shape = TreeShape {
            max_nodes: shape
                .max_nodes
                .min(self.model.kv_capacity() - committed + 1),
            ..shape.clone()
        };
        add_children(&mut draft, 0, &root_cands, &shape);
        // the chain drafted during the last verification is the tree's first path
        let mut at = 0;
        for step in chain {
            let Some(node) = draft
                .tree
                .children(at)
                .find(|&c| draft.tree.node(c).token == step.token)
            else {
                break;
            };
            draft.slots[node] = Some(step.slot);
            draft.reused += 1;
            add_children(&mut draft, node, &step.cands, &shape);
            at = node;
        }
        while draft.tree.len() < shape.max_nodes {
            let Some(best) = best_leaf(&draft, &shape) else {
                break;
            };
            if !grow(&draft.tree, draft.tree.node(best).conf) {
                break;
            }
            let path = draft.tree.path(best);
            let cands = self.run_node(&draft, &path)?;
            draft.slots[best] = Some(self.model.kv_len() - 1);
            draft.passes += 1;
            add_children(&mut draft, best, &cands, &shape);
        }
        Ok(draft)
    }

    /// Runs the last node of `path` over the prefix and the path's drafted slots (plus `more`
    /// slots after them), returning the drafter's candidates after it.
    fn run_node_with(
        &mut self,
        draft: &Draft,
        token: u32,
        depth: usize,
        visible: Vec<usize>,
    ) -> Result<Vec<(u32, f32)>> {
        let batch = Batch {
            tokens: vec![token],
            positions: vec![draft.committed - 1 + depth],
            mask: BatchMask::Causal,
            cache: CacheView::Speculative {
                committed: draft.committed,
                visible: vec![visible],
            },
        };
        let logits = self.model.forward(&batch, Want::LAST_FULL)?;
        Ok(self.candidates(&logits))
    }

    fn run_node(&mut self, draft: &Draft, path: &[usize]) -> Result<Vec<(u32, f32)>> {
        let node = *path.last().expect("a path has its node");
        let n = draft.tree.node(node);
        let visible = ancestor_slots(draft, path);
        self.run_node_with(draft, n.token, n.depth, visible)
    }

    fn candidates(&self, logits: &Logits) -> Vec<(u32, f32)> {
        let row = logits
            .dense(0)
            .expect("the drafter returns dense logits for its last row");
        probabilities(row, self.max_children)
    }

    /// While the target verifies `draft`, keeps drafting a chain below its most likely leaf
    /// (at most `max_steps` nodes) until `stop` is set. The work is kept by `commit` only if
    /// the target accepts that leaf.
    pub fn extend(
        &mut self,
        draft: &Draft,
        stop: &AtomicBool,
        max_steps: usize,
    ) -> Result<Extension> {
        let Some(from) = (0..draft.tree.len())
            .filter(|&i| draft.slots[i].is_none())
            .max_by(|&a, &b| draft.tree.node(a).conf.total_cmp(&draft.tree.node(b).conf))
        else {
            return Ok(Extension {
                from: 0,
                steps: Vec::new(),
            });
        };
        let path = draft.tree.path(from);
        let mut visible = ancestor_slots(draft, &path);
        let mut token = draft.tree.node(from).token;
        let mut depth = draft.tree.node(from).depth;
        let mut steps = Vec::new();
        while steps.len() < max_steps
            && !stop.load(Ordering::Acquire)
            && self.model.kv_len() < self.model.kv_capacity()
        {
            let cands = self.run_node_with(draft, token, depth, visible.clone())?;
            let slot = self.model.kv_len() - 1;
            visible.push(slot);
            let next = cands[0].0;
            steps.push(Step { token, slot, cands });
            token = next;
            depth += 1;
        }
        Ok(Extension { from, steps })
    }

    /// Keeps the accepted root path (node indices from the root) in the cache, and the part of
    /// `extension` that continues it when the target's `next` token is the one the drafter
    /// predicted; drops every other drafted slot. Returns how many extension steps were kept.
    pub fn commit(
        &mut self,
        draft: &Draft,
        path: &[usize],
        next: u32,
        extension: Option<Extension>,
    ) -> Result<usize> {
        let mut keep = Vec::new();
        let mut leaf = None;
        for &n in &path[1..] {
            match draft.slots[n] {
                Some(s) => keep.push(s - draft.committed),
                None => leaf = Some(n),
            }
        }
        let last = *path.last().expect("the root is always accepted");
        let mut kept = 0;
        match extension {
            Some(ext) if !ext.steps.is_empty() && ext.from == last && leaf == Some(last) => {
                // the leaf the drafter ran on was accepted: its slot stays
                let mut steps = ext.steps.into_iter();
                let first = steps.next().expect("not empty");
                keep.push(first.slot - draft.committed);
                kept = 1;
                leaf = None;
                let rest: Vec<Step> = steps.collect();
                if first.cands[0].0 == next && !rest.is_empty() {
                    // and the target chose what the drafter predicted: the chain carries over
                    kept += rest.len();
                    let base = draft.committed + keep.len();
                    keep.extend(rest.iter().map(|s| s.slot - draft.committed));
                    let mut chain: Vec<Step> = rest
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| Step {
                            slot: base + i,
                            ..s
                        })
                        .collect();
                    let root = chain.remove(0);
                    debug_assert_eq!(root.token, next);
                    self.carry = Some(Carry {
                        root: next,
                        root_cands: root.cands,
                        chain,
                    });
                }
            }
            _ => {}
        }
        if let Some(n) = leaf {
            // a leaf the drafter never ran: it runs before the next root
            self.backlog.push(draft.tree.node(n).token);
        }
        self.model.kv_compact(draft.committed, &keep)?;
        Ok(kept)
    }
}

/// Cache slots of the drafted nodes strictly between the root and the last node of `path`.
fn ancestor_slots(draft: &Draft, path: &[usize]) -> Vec<usize> {
    path[1..path.len() - 1]
        .iter()
        .map(|&a| draft.slots[a].expect("ancestors are expanded before their children"))
        .collect()
}

/// The unexpanded node with the best confidence that may still get children.
fn best_leaf(draft: &Draft, shape: &TreeShape) -> Option<usize> {
    (0..draft.tree.len())
        .filter(|&i| draft.slots[i].is_none() && draft.tree.node(i).depth < shape.max_depth)
        .max_by(|&a, &b| draft.tree.node(a).conf.total_cmp(&draft.tree.node(b).conf))
}

/// Adds the drafter's first choice under `node`, and branches for other likely tokens.
fn add_children(draft: &mut Draft, node: usize, cands: &[(u32, f32)], shape: &TreeShape) {
    draft_children(&mut draft.tree, node, cands, shape);
    draft.slots.resize(draft.tree.len(), None);
}

fn draft_children(tree: &mut TokenTree, node: usize, cands: &[(u32, f32)], shape: &TreeShape) {
    if tree.node(node).depth >= shape.max_depth {
        return;
    }
    for (rank, &(token, p)) in cands.iter().take(shape.max_children.max(1)).enumerate() {
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
        let l = probabilities(&[0.5f32.ln(), 3.0f32.ln(), 0.0, f32::NEG_INFINITY], 3);
        // probabilities: 1 → 0.67, 2 → 0.22, 0 → 0.11
        let mut t = TokenTree::new(9);
        draft_children(&mut t, 0, &l, &shape);
        assert_eq!(t.tokens(), [9, 1, 2]);
        let mut chain = TokenTree::new(9);
        draft_children(&mut chain, 0, &l, &TreeShape::chain(3));
        assert_eq!(chain.tokens(), [9, 1]);
    }
}
