//! The rotary position table of a pass: cos/sin of every rotated pair at the batch's positions.
//! Computed once per pass on the host and shared by every layer; the GPU backend uploads it as
//! is, so both backends rotate identically.

use super::config::{RopeConfig, RopeLayout};

/// cos/sin of every rotated pair at a list of positions.
pub struct RopeTable {
    pub half: usize,
    /// `[position index][pair]`
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(rope: &RopeConfig, inv_freqs: &[f32], positions: &[usize]) -> Self {
        let half = rope.dims / 2;
        let scale = rope.attn_factor();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freqs {
                // angle in f32 like the reference implementations; cos/sin rounded from f64
                let angle = p as f32 * f;
                cos.push((angle as f64).cos() as f32 * scale);
                sin.push((angle as f64).sin() as f32 * scale);
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Rotates every head of one token's q or k vector (`heads × head_dim` values).
    pub fn apply(&self, layout: RopeLayout, token: usize, x: &mut [f32], head_dim: usize) {
        let cos = &self.cos[token * self.half..(token + 1) * self.half];
        let sin = &self.sin[token * self.half..(token + 1) * self.half];
        for head in x.chunks_exact_mut(head_dim) {
            match layout {
                RopeLayout::Interleaved => {
                    for i in 0..self.half {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * cos[i] - b * sin[i];
                        head[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeLayout::HalfSplit => {
                    // rotated dims may be fewer than the head dim; pairs are (i, i + dims/2)
                    for i in 0..self.half {
                        let (a, b) = (head[i], head[i + self.half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + self.half] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RopeScaling;

    /// Both layouts rotate the same pairs, just stored in different places: permuting a head
    /// from half-split to interleaved order commutes with the rotation.
    #[test]
    fn rope_layouts_agree_up_to_permutation() {
        let cfg = |layout| RopeConfig {
            theta: 10000.0,
            layout,
            dims: 8,
            scaling: RopeScaling::None,
        };
        let c = cfg(RopeLayout::HalfSplit);
        let table = RopeTable::new(&c, &c.inv_freqs(64), &[5]);
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut half = x.clone();
        table.apply(RopeLayout::HalfSplit, 0, &mut half, 8);
        // interleaved order: (x0, x4, x1, x5, ...)
        let perm = |v: &[f32]| (0..8).map(|j| v[(j / 2) + (j % 2) * 4]).collect::<Vec<_>>();
        let mut inter = perm(&x);
        table.apply(RopeLayout::Interleaved, 0, &mut inter, 8);
        assert_eq!(inter, perm(&half));
        // rotation preserves the norm
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&half) - n(&x)).abs() < 1e-4);
    }
}
