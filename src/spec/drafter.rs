//! The drafter: a compact model (CPU backend) that grows a token tree from the committed
//! prefix, best path confidence first.
//!
//! Growth is a lazy best-first search. Every node the drafter has run (expanded) offers its
//! likely next tokens as *candidates*; the tree takes the most confident candidate next, and
//! runs the drafter on a node only when that node's children could beat every candidate already
//! on offer. So a node budget goes to the most likely tokens wherever they are (a second choice
//! near the root before a tenth token deep in a chain), and once drafting stops (the fallback
//! says an error is likely) the budget can still be filled with candidates at no drafting cost.
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
use std::time::Instant;

/// How a tree may grow.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeShape {
    /// Most nodes per tree, the root included.
    pub max_nodes: usize,
    /// Most drafted tokens on one path.
    pub max_depth: usize,
    /// A candidate other than the drafter's first choice may open a branch only from this
    /// probability (which branches open is decided by path confidence, best first). Above 1,
    /// trees are chains.
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
    /// Tokens the drafter proposed under expanded nodes that are not in the tree (yet).
    offered: Vec<Candidate>,
    /// Cache slots before the speculative ones (the prefix, root included).
    committed: usize,
    /// Drafter passes this tree took.
    pub passes: usize,
    /// Nodes that came ready-made from drafting during the previous verification.
    pub reused: usize,
    /// The drafter's catch-up on the prompt and on rounds that did not draft, before this tree.
    pub catch_up: CatchUp,
}

/// The drafter's one-off work on the prompt and on the tokens of rounds that did not draft:
/// the price of starting or returning to speculation, not a cost of each speculative round.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CatchUp {
    /// Such tokens run.
    pub tokens: usize,
    /// Their share of the time of the passes that ran them.
    pub ms: f64,
}

impl CatchUp {
    /// The catch-up on `tokens` of the `run` tokens (the root among them) of passes that took
    /// `ms`, for a drafter whose passes over one node take `node_ms`: what the catch-up added to
    /// running the root alone. A pass over a few tokens costs hardly more than over one, which
    /// reads the same weights, so a share by token count would price a long catch-up by its
    /// shortest ones. Before a one-node pass has been timed, the tokens' share of `ms`.
    fn of(tokens: usize, run: usize, ms: f64, node_ms: Option<f64>) -> Self {
        let ms = match node_ms {
            _ if tokens == 0 => 0.0,
            Some(node) => (ms - node).max(0.0),
            None => ms * tokens as f64 / run as f64,
        };
        CatchUp { tokens, ms }
    }
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

/// A token the drafter proposed after `parent`, with its probability and path confidence.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    parent: usize,
    token: u32,
    prob: f32,
    conf: f32,
}

/// Work kept from an extension for the next tree: its root (the target's token, which the
/// drafter predicted) with its candidates, and the chain drafted below it.
struct Carry {
    root: u32,
    root_cands: Vec<(u32, f32)>,
    chain: Vec<Step>,
}

/// A drafter that skipped more tokens than this runs only the newest of them: it drafts across
/// a gap in its context, which costs acceptance but never exactness, and keeps returning to
/// speculation cheap.
pub const CATCH_UP_WINDOW: usize = 32;

/// The weight of each new one-node pass in the drafter's moving average of their time.
const NODE_MS_WEIGHT: f64 = 0.3;

pub struct Drafter<'m> {
    model: &'m mut dyn Backend,
    /// Committed tokens the drafter has not run yet (the prompt, an accepted leaf, the tokens
    /// of rounds that did not draft).
    backlog: Vec<u32>,
    /// How many of the backlog's tokens are the prompt's, and how many of its newest come
    /// from rounds that did not draft.
    prompt_left: usize,
    skipped: usize,
    prefill_chunk: usize,
    /// Candidates kept per drafted node (enough for every branch a shape may open).
    max_children: usize,
    carry: Option<Carry>,
    /// What a pass over one drafted node takes (ms, a moving average), once one has run.
    node_ms: Option<f64>,
}

/// What the next step of growth would cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// A drafter pass on a node, to learn its children.
    Expand,
    /// Adding a token the drafter already proposed: one more node for the verifier only.
    Leaf,
}

/// Decides before each step whether the tree should keep growing:
/// `(tree so far, path confidence of the node concerned, step) -> keep going`. Once it refuses
/// an expansion, drafting is over and only leaves are offered.
pub type GrowthRule<'a> = dyn FnMut(&TokenTree, f32, Growth) -> bool + 'a;

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
            prompt_left: prompt.len(),
            skipped: 0,
            prefill_chunk: prefill_chunk.max(1),
            max_children: max_children.max(1),
            carry: None,
            node_ms: None,
        }
    }

    /// Grows a tree under `root` (the target's last token) within `shape`, asking `grow`
    /// before every expansion.
    pub fn draft(&mut self, root: u32, shape: &TreeShape, grow: &mut GrowthRule) -> Result<Draft> {
        let carry = self.carry.take().filter(|c| c.root == root);
        let mut passes = 0;
        let mut catch_up = CatchUp::default();
        let (root_cands, chain) = match carry {
            Some(c) => (c.root_cands, c.chain),
            None => {
                let mut pending = std::mem::take(&mut self.backlog);
                if self.skipped > CATCH_UP_WINDOW {
                    pending.drain(..pending.len() - CATCH_UP_WINDOW);
                    self.skipped = CATCH_UP_WINDOW;
                    self.prompt_left = 0;
                }
                pending.push(root);
                let started = Instant::now();
                let mut logits = None;
                for part in pending.chunks(self.prefill_chunk) {
                    let batch = Batch::chain(part, self.model.kv_len());
                    logits = Some(self.model.forward(&batch, Want::LAST_FULL)?);
                    passes += 1;
                }
                let one_off = self.prompt_left + self.skipped;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                catch_up = CatchUp::of(one_off, pending.len(), ms, self.node_ms);
                self.prompt_left = 0;
                self.skipped = 0;
                (self.candidates(&logits.expect("the root ran")), Vec::new())
            }
        };
        let committed = self.model.kv_len() - chain.len();
        let mut draft = Draft {
            tree: TokenTree::new(root),
            slots: vec![Some(committed - 1)],
            offered: Vec::new(),
            committed,
            passes,
            reused: 0,
            catch_up,
        };
        let shape = TreeShape {
            max_nodes: shape
                .max_nodes
                .min(self.model.kv_capacity() - committed + 1),
            ..shape.clone()
        };
        draft.offer(0, &root_cands, &shape);
        // the chain drafted during the last verification is the tree's first path
        let mut at = 0;
        for step in chain {
            if draft.tree.len() >= shape.max_nodes {
                break;
            }
            let Some(i) = draft
                .offered
                .iter()
                .position(|c| c.parent == at && c.token == step.token)
            else {
                break;
            };
            at = draft.take(i);
            draft.slots[at] = Some(step.slot);
            draft.reused += 1;
            draft.offer(at, &step.cands, &shape);
        }
        grow_best_first(&mut draft, &shape, grow, &mut |draft, node| {
            let path = draft.tree.path(node);
            let cands = self.run_node(draft, &path)?;
            Ok((cands, self.model.kv_len() - 1))
        })?;
        Ok(draft)
    }

    /// Whether drafting during the last verification left the next tree's first path ready.
    pub fn has_carry(&self) -> bool {
        self.carry.is_some()
    }

    /// A tree of the root alone, for a round without drafting: the drafter will run the root
    /// later, with the other tokens it has not seen, in one chunk.
    /// Not for a drafter that [`Self::has_carry`]: its next tree is half drafted already.
    pub fn skip(&mut self, root: u32) -> Draft {
        debug_assert!(self.carry.is_none(), "a carried chain would be lost");
        self.backlog.push(root);
        self.skipped += 1;
        Draft {
            tree: TokenTree::new(root),
            slots: vec![None],
            offered: Vec::new(),
            committed: self.model.kv_len(),
            passes: 0,
            reused: 0,
            catch_up: CatchUp::default(),
        }
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
        let started = Instant::now();
        let logits = self.model.forward(&batch, Want::LAST_FULL)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.node_ms = Some(self.node_ms.map_or(ms, |v| v + NODE_MS_WEIGHT * (ms - v)));
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

/// Runs the drafter on a node of a draft: `(draft, node) -> (its candidates, the cache slot
/// it filled)`.
type Expand<'a> = dyn FnMut(&Draft, usize) -> Result<(Vec<(u32, f32)>, usize)> + 'a;

/// Grows `draft` best-first within `shape`.
fn grow_best_first(
    draft: &mut Draft,
    shape: &TreeShape,
    grow: &mut GrowthRule,
    expand: &mut Expand,
) -> Result<()> {
    let mut drafting = true;
    while draft.tree.len() < shape.max_nodes {
        let best = draft.best_candidate();
        let expandable = drafting.then(|| best_leaf(draft, shape)).flatten();
        match (expandable, best) {
            // the best node still missing may lie below `node`: run the drafter on it
            (Some(node), _)
                if best.is_none_or(|c| draft.tree.node(node).conf > draft.offered[c].conf) =>
            {
                if !grow(&draft.tree, draft.tree.node(node).conf, Growth::Expand) {
                    drafting = false;
                    continue;
                }
                let (cands, slot) = expand(draft, node)?;
                draft.slots[node] = Some(slot);
                draft.passes += 1;
                draft.offer(node, &cands, shape);
            }
            (_, Some(c)) => {
                if !grow(&draft.tree, draft.offered[c].conf, Growth::Leaf) {
                    break;
                }
                draft.take(c);
            }
            _ => break,
        }
    }
    Ok(())
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

impl Draft {
    /// Offers the drafter's candidates after the expanded `node`: its first choice, and other
    /// tokens likely enough to open a branch.
    fn offer(&mut self, node: usize, cands: &[(u32, f32)], shape: &TreeShape) {
        let n = self.tree.node(node);
        if n.depth >= shape.max_depth {
            return;
        }
        let conf = n.conf;
        for (rank, &(token, prob)) in cands.iter().take(shape.max_children.max(1)).enumerate() {
            if rank > 0 && prob < shape.branch_threshold {
                break;
            }
            self.offered.push(Candidate {
                parent: node,
                token,
                prob,
                conf: conf * prob,
            });
        }
    }

    /// The most confident candidate on offer.
    fn best_candidate(&self) -> Option<usize> {
        (0..self.offered.len())
            .max_by(|&a, &b| self.offered[a].conf.total_cmp(&self.offered[b].conf))
    }

    /// Moves candidate `i` into the tree; returns its node.
    fn take(&mut self, i: usize) -> usize {
        let c = self.offered.swap_remove(i);
        let node = self.tree.add_child(c.parent, c.token, c.prob);
        self.slots.resize(self.tree.len(), None);
        node
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
    fn a_catch_up_costs_what_it_added_to_the_root() {
        let of = CatchUp::of;
        assert_eq!(
            of(3, 4, 20.0, Some(8.0)),
            CatchUp {
                tokens: 3,
                ms: 12.0
            }
        );
        assert_eq!(of(3, 4, 7.0, Some(8.0)).ms, 0.0, "never below nothing");
        assert_eq!(of(0, 1, 9.0, Some(8.0)).ms, 0.0);
        // no one-node pass timed yet: the tokens' share
        assert_eq!(of(3, 4, 20.0, None).ms, 15.0);
        assert_eq!(of(0, 1, 20.0, None).ms, 0.0);
    }

    #[test]
    fn probabilities_are_a_softmax() {
        let p = probabilities(&[0.0, 2.0f32.ln(), 0.0, f32::NEG_INFINITY], 2);
        assert_eq!(p[0].0, 1);
        assert!((p[0].1 - 0.5).abs() < 1e-6);
        assert!((p[1].1 - 0.25).abs() < 1e-6);
    }

    /// A drafter that proposes, after every node, tokens `10·node+1…` with probabilities
    /// `probs` (so every path has its own tokens).
    fn fake_grow(shape: &TreeShape, probs: &[f32], grow: &mut GrowthRule) -> Draft {
        let mut draft = Draft {
            tree: TokenTree::new(0),
            slots: vec![Some(0)],
            offered: Vec::new(),
            committed: 1,
            passes: 0,
            reused: 0,
            catch_up: CatchUp::default(),
        };
        let cands = |token: u32| -> Vec<(u32, f32)> {
            (0..probs.len())
                .map(|i| (10 * token + 1 + i as u32, probs[i]))
                .collect()
        };
        draft.offer(0, &cands(0), shape);
        let mut slot = 0;
        grow_best_first(&mut draft, shape, grow, &mut |d, node| {
            slot += 1;
            Ok((cands(d.tree.node(node).token), slot))
        })
        .unwrap();
        draft
    }

    fn shape(max_nodes: usize, branch_threshold: f32) -> TreeShape {
        TreeShape {
            max_nodes,
            max_depth: 8,
            branch_threshold,
            max_children: 3,
        }
    }

    #[test]
    fn the_tree_holds_the_most_confident_nodes() {
        let probs = [0.6, 0.3, 0.1];
        let draft = fake_grow(&shape(9, 0.0), &probs, &mut |_, _, _| true);
        // every confidence any tree could hold, best first: a tree of 9 takes the best 8
        let mut all = vec![1.0f32];
        let mut level = vec![1.0f32];
        for _ in 0..4 {
            level = level.iter().flat_map(|c| probs.map(|p| c * p)).collect();
            all.extend(&level);
        }
        all.sort_by(|a, b| b.total_cmp(a));
        let mut got: Vec<f32> = draft.tree.nodes()[1..].iter().map(|n| n.conf).collect();
        got.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(got.len(), 8);
        let same = got
            .iter()
            .zip(&all[1..9])
            .all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(
            same,
            "the 8 best of every possible node: {got:?} vs {:?}",
            &all[1..9]
        );
        // a node is run only when its children could beat every token on offer
        for (i, n) in draft.tree.nodes().iter().enumerate().skip(1) {
            assert!(
                draft.slots[i].is_none() || n.conf > got[7],
                "node {i} ran needlessly"
            );
        }
    }

    #[test]
    fn branches_open_only_above_the_threshold() {
        let draft = fake_grow(&shape(20, 0.2), &[0.6, 0.3, 0.1], &mut |_, _, _| true);
        assert!(draft.tree.nodes()[1..].iter().all(|n| n.prob >= 0.3));
        let chain = fake_grow(&TreeShape::chain(3), &[0.6, 0.3, 0.1], &mut |_, _, _| true);
        assert_eq!(chain.tree.tokens(), [0, 1, 11, 111]);
        assert_eq!(chain.passes, 2);
    }

    #[test]
    fn when_drafting_stops_the_budget_fills_with_offered_tokens() {
        let mut expansions = 0;
        let draft = fake_grow(&shape(7, 0.0), &[0.5, 0.3, 0.2], &mut |_, _, step| {
            step == Growth::Leaf || {
                expansions += 1;
                expansions <= 1
            }
        });
        assert_eq!(draft.passes, 1);
        assert_eq!(
            draft.tree.len(),
            7,
            "root, its 3 children and 3 of the best one's"
        );
        assert_eq!(draft.tree.max_depth(), 2);
    }
}
