//! Element-wise pieces of the forward pass: RMSNorm, RoPE, SwiGLU, softmax.

use crate::model::{RopeConfig, RopeLayout};

/// `out = x / rms(x) * weight`, row by row (rows of `weight.len()` values).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let scale = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// cos/sin of every rotated pair at a list of positions, computed once per pass and shared by
/// every layer (and uploaded as is by the GPU backend, so both backends rotate identically).
pub struct RopeTable {
    pub half: usize,
    /// `[position index][pair]`
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(rope: &RopeConfig, inv_freqs: &[f32], positions: &[usize]) -> Self {
        let half = rope.dims / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freqs {
                // angle in f32 like the reference implementations; cos/sin rounded from f64
                let angle = p as f32 * f;
                cos.push((angle as f64).cos() as f32);
                sin.push((angle as f64).sin() as f32);
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

/// `gate = silu(gate) * up`, in place.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RopeScaling;

    #[test]
    fn rms_norm_of_constant_row_is_weight() {
        let mut out = [0f32; 4];
        rms_norm(&[3.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut out);
        for (o, w) in out.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((o - w).abs() < 1e-6);
        }
    }

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
        let table = RopeTable::new(&c, &c.inv_freqs(), &[5]);
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

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0, -1000.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[3] == 0.0 && v[2] > v[1]);
    }
}
