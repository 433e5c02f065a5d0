//! A token tree as flat arrays in topological order: node 0 is the root (the token the target
//! chose last, certain), every other node is a drafted continuation of its parent. The tree
//! gives the verifier its batch: positions `prefix + depth` and a mask where each node sees
//! its ancestors.

use crate::backend::Batch;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub token: u32,
    pub parent: Option<usize>,
    pub depth: usize,
    /// The drafter's probability of this token after its parent (1 for the root).
    pub prob: f32,
    /// Product of `prob` along the root path: the drafter's belief that the whole path is right.
    pub conf: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenTree {
    nodes: Vec<Node>,
}

impl TokenTree {
    pub fn new(root: u32) -> Self {
        TokenTree {
            nodes: vec![Node {
                token: root,
                parent: None,
                depth: 0,
                prob: 1.0,
                conf: 1.0,
            }],
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Adds `token` under `parent`, or returns the existing sibling with the same token
    /// (identical siblings are merged; the better probability is kept).
    pub fn add_child(&mut self, parent: usize, token: u32, prob: f32) -> usize {
        let same = self
            .children(parent)
            .find(|&c| self.nodes[c].token == token);
        if let Some(i) = same {
            if prob > self.nodes[i].prob {
                self.nodes[i].prob = prob;
                self.nodes[i].conf = self.nodes[parent].conf * prob;
            }
            return i;
        }
        let p = &self.nodes[parent];
        self.nodes.push(Node {
            token,
            parent: Some(parent),
            depth: p.depth + 1,
            prob,
            conf: p.conf * prob,
        });
        self.nodes.len() - 1
    }

    /// Children of node `i`, in the order they were added (most likely first when drafted).
    pub fn children(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .skip(i + 1)
            .filter(move |(_, n)| n.parent == Some(i))
            .map(|(c, _)| c)
    }

    /// Node indices from the root to `i`, inclusive.
    pub fn path(&self, i: usize) -> Vec<usize> {
        let mut p = vec![i];
        let mut cur = self.nodes[i].parent;
        while let Some(j) = cur {
            p.push(j);
            cur = self.nodes[j].parent;
        }
        p.reverse();
        p
    }

    pub fn tokens(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.token).collect()
    }

    pub fn parents(&self) -> Vec<Option<usize>> {
        self.nodes.iter().map(|n| n.parent).collect()
    }

    pub fn max_depth(&self) -> usize {
        self.nodes.iter().map(|n| n.depth).max().unwrap_or(0)
    }

    /// The verifier's batch over a committed prefix of `prefix_len` tokens.
    pub fn batch(&self, prefix_len: usize) -> Batch {
        Batch::tree(&self.tokens(), &self.parents(), prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BatchMask;

    #[test]
    fn a_single_node_is_a_one_token_batch() {
        let t = TokenTree::new(7);
        let b = t.batch(10);
        assert_eq!(b.tokens, [7]);
        assert_eq!(b.positions, [10]);
        assert_eq!(b.visible(0), [0]);
        assert_eq!(t.path(0), [0]);
        assert_eq!(t.max_depth(), 0);
    }

    #[test]
    fn a_chain_has_causal_visibility() {
        let mut t = TokenTree::new(1);
        let mut last = 0;
        for tok in 2..6 {
            last = t.add_child(last, tok, 0.5);
        }
        let b = t.batch(3);
        assert_eq!(b.positions, [3, 4, 5, 6, 7]);
        for i in 0..5 {
            assert_eq!(b.visible(i), (0..=i).collect::<Vec<_>>());
        }
        assert!((t.node(4).conf - 0.0625).abs() < 1e-7);
    }

    #[test]
    fn a_fan_out_sees_only_the_root() {
        let mut t = TokenTree::new(1);
        for tok in 10..20 {
            t.add_child(0, tok, 0.1);
        }
        let b = t.batch(0);
        assert!(b.positions[1..].iter().all(|&p| p == 1));
        for i in 1..t.len() {
            assert_eq!(b.visible(i), [0, i]);
        }
        assert_eq!(t.children(0).count(), 10);
        assert_eq!(b.mask, BatchMask::Tree(t.parents()));
    }

    #[test]
    fn identical_siblings_merge_and_paths_follow_parents() {
        let mut t = TokenTree::new(1);
        let a = t.add_child(0, 5, 0.2);
        let b = t.add_child(0, 6, 0.7);
        assert_eq!(t.add_child(0, 5, 0.4), a);
        assert_eq!(t.len(), 3);
        assert!((t.node(a).prob - 0.4).abs() < 1e-7);
        let c = t.add_child(b, 9, 0.5);
        let d = t.add_child(a, 9, 0.5);
        assert_ne!(c, d, "same token under different parents stays distinct");
        assert_eq!(t.path(c), [0, b, c]);
        assert_eq!(t.path(d), [0, a, d]);
        assert_eq!(t.batch(4).positions, [4, 5, 5, 6, 6]);
        assert_eq!(t.batch(4).visible(d), [0, a, d]);
    }
}
