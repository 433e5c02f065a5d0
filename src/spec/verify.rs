//! Acceptance: which root path of a verified tree the target agrees with, and the target's own
//! token after it. Every verification emits at least that one token.
//!
//! - Greedy: from the root, follow the child whose token is the target's choice at the current
//!   node; the first node without such a child ends the walk. The choice is made with the same
//!   function as target-only decoding, so the output is token for token the same.
//! - Sampling: multi-step speculative sampling over the tree (SpecInfer). Our children are
//!   chosen deterministically (most likely first), so each is a proposal whose draft
//!   distribution is a point mass; the rule "accept with min(1, p/q), else p ← norm(max(0,
//!   p − q))" then reads: accept child x with probability p(x), else set p(x) = 0, renormalise
//!   and try the next child; if all fail, sample from what is left. The emitted token at each
//!   step is distributed exactly as p, the target's distribution after all sampling filters.

use super::tree::TokenTree;
use crate::backend::Logits;
use crate::sampling::{distribution, next_token, row_candidates, SamplerRng, SamplingParams};

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Accepted node indices from the root (always starts with 0).
    pub path: Vec<usize>,
    /// The target's token after the last accepted node.
    pub next: u32,
}

impl Verdict {
    /// Tokens this verification emits: the accepted drafted tokens, then `next`.
    pub fn emitted(&self, tree: &TokenTree) -> Vec<u32> {
        let mut out: Vec<u32> = self.path[1..].iter().map(|&i| tree.node(i).token).collect();
        out.push(self.next);
        out
    }
}

/// `logits` has one row per tree node. `history` is every committed token up to and including
/// the root (for the repetition penalty).
pub fn accept(
    params: &SamplingParams,
    tree: &TokenTree,
    logits: &Logits,
    history: &[u32],
    rng: &mut SamplerRng,
) -> Verdict {
    let mut recent = history.to_vec();
    let mut path = vec![0];
    let mut cur = 0;
    loop {
        let chosen = if params.is_greedy() {
            let t = next_token(params, logits, cur, &recent, rng);
            Choice::from_token(tree, cur, t)
        } else {
            sample_over_children(params, tree, cur, logits, &recent, rng)
        };
        match chosen {
            Choice::Child(c) => {
                path.push(c);
                recent.push(tree.node(c).token);
                cur = c;
            }
            Choice::Token(next) => return Verdict { path, next },
        }
    }
}

enum Choice {
    Child(usize),
    Token(u32),
}

impl Choice {
    fn from_token(tree: &TokenTree, node: usize, t: u32) -> Choice {
        match tree.children(node).find(|&c| tree.node(c).token == t) {
            Some(c) => Choice::Child(c),
            None => Choice::Token(t),
        }
    }
}

fn sample_over_children(
    params: &SamplingParams,
    tree: &TokenTree,
    node: usize,
    logits: &Logits,
    recent: &[u32],
    rng: &mut SamplerRng,
) -> Choice {
    let mut p = distribution(params, &row_candidates(params, logits, node), recent);
    for c in tree.children(node) {
        let token = tree.node(c).token;
        let Some(at) = p.iter().position(|&(id, _)| id == token) else {
            continue; // the target gives this token no chance
        };
        let total: f64 = p.iter().map(|&(_, q)| q as f64).sum();
        if rng.uniform() * total < p[at].1 as f64 {
            return Choice::Child(c);
        }
        p.remove(at);
    }
    let probs: Vec<f32> = p.iter().map(|&(_, q)| q).collect();
    Choice::Token(p[rng.pick(&probs)].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense logits where row r prefers `best[r]` strongly.
    fn logits_preferring(best: &[u32], vocab: usize) -> Logits {
        let mut data = vec![0f32; best.len() * vocab];
        for (r, &b) in best.iter().enumerate() {
            data[r * vocab + b as usize] = 10.0;
        }
        Logits::Dense { vocab, data }
    }

    fn tree() -> TokenTree {
        // 0(root=1) ─ 1(tok 2) ─ 3(tok 4)
        //           └ 2(tok 3) ─ 4(tok 5)
        let mut t = TokenTree::new(1);
        let a = t.add_child(0, 2, 0.6);
        let b = t.add_child(0, 3, 0.3);
        t.add_child(a, 4, 0.9);
        t.add_child(b, 5, 0.9);
        t
    }

    #[test]
    fn greedy_follows_the_targets_choices() {
        let t = tree();
        let greedy = SamplingParams::default();
        let mut rng = SamplerRng::new(0);
        // target picks 3 at the root, 5 after it, then 7 after node 4
        let l = logits_preferring(&[3, 0, 5, 0, 7], 8);
        let v = accept(&greedy, &t, &l, &[1], &mut rng);
        assert_eq!(v.path, [0, 2, 4]);
        assert_eq!(v.next, 7);
        assert_eq!(v.emitted(&t), [3, 5, 7]);
        // first choice not drafted: only the target's token
        let l = logits_preferring(&[6, 0, 0, 0, 0], 8);
        let v = accept(&greedy, &t, &l, &[1], &mut rng);
        assert_eq!((v.path.as_slice(), v.next), (&[0][..], 6));
    }

    #[test]
    fn sampling_accepts_only_tokens_the_target_allows() {
        let t = tree();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        // the target never produces 2 or 3 at the root (-inf logits)
        let mut data = vec![0f32; 5 * 8];
        data[2] = f32::NEG_INFINITY;
        data[3] = f32::NEG_INFINITY;
        let l = Logits::Dense { vocab: 8, data };
        let mut rng = SamplerRng::new(9);
        for _ in 0..200 {
            let v = accept(&params, &t, &l, &[1], &mut rng);
            assert_eq!(v.path, [0]);
            assert!(v.next != 2 && v.next != 3);
        }
    }
}
