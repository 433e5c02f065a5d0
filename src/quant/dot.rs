//! Dot products of one weight row with one activation row: the inner loop of every CPU matmul.
//!
//! Two paths:
//! - `dot_f32`: exact path, weights dequantized on the fly, f32 activations, f32 accumulation.
//! - `dot_q8`: fast path for block-quantized weights, as llama.cpp does it: activations are
//!   quantized to 8 bits per block of 32 (`Q8Acts`), each block's products are summed exactly
//!   in integers, and only the per-block scale products are floating point.
//!
//! A dot's result depends only on its two rows, never on which other rows are computed with
//! it, so batched passes (tree verification, prefill) give bit-identical results to one-token
//! passes.

use super::{read_f16, DType, QK};

/// A matrix of activations (rows × cols) quantized to Q8 blocks: for block b of a row,
/// `qs[b*32..]` are the values, `d[b]` the scale and `s[b] = d[b]·Σq` (Q4_1 needs the sum
/// to apply the weights' per-block minimum).
#[derive(Default)]
pub struct Q8Acts {
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// One row of `Q8Acts`.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

impl Q8Acts {
    /// Quantizes `x` (rows of `cols` values, `cols` a multiple of 32), reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols % QK == 0 && x.len() % cols == 0);
        self.cols = cols;
        let blocks = x.len() / QK;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.qs[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }

    pub fn rows(&self) -> usize {
        if self.cols == 0 {
            0
        } else {
            self.qs.len() / self.cols
        }
    }

    pub fn row(&self, r: usize) -> Q8Row<'_> {
        let nb = self.cols / QK;
        Q8Row {
            qs: &self.qs[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

/// Dot product of a block-quantized weight row (Q8_0, Q4_0 or Q4_1) with a Q8 activation row.
pub fn dot_q8(dtype: DType, w: &[u8], a: Q8Row<'_>) -> f32 {
    match dtype {
        DType::Q8_0 => dot_q8_0_q8(w, a),
        DType::Q4_0 => dot_q4_0_q8(w, a),
        DType::Q4_1 => dot_q4_1_q8(w, a),
        DType::F32 | DType::F16 | DType::BF16 => {
            unreachable!("float weights use the f32 path")
        }
    }
}

fn dot_q8_0_q8(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        let isum: i32 = blk[2..]
            .iter()
            .zip(qa)
            .map(|(&qw, &qa)| (qw as i8) as i32 * qa as i32)
            .sum();
        acc += read_f16(blk) * a.d[b] * isum as f32;
    }
    acc
}

fn dot_q4_0_q8(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        let mut isum = 0i32;
        for (j, &byte) in blk[2..].iter().enumerate() {
            isum += ((byte & 0x0f) as i32 - 8) * qa[j] as i32;
            isum += ((byte >> 4) as i32 - 8) * qa[j + 16] as i32;
        }
        acc += read_f16(blk) * a.d[b] * isum as f32;
    }
    acc
}

fn dot_q4_1_q8(w: &[u8], a: Q8Row<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let qa = &a.qs[b * QK..(b + 1) * QK];
        let mut isum = 0i32;
        for (j, &byte) in blk[4..].iter().enumerate() {
            isum += (byte & 0x0f) as i32 * qa[j] as i32;
            isum += (byte >> 4) as i32 * qa[j + 16] as i32;
        }
        acc += read_f16(blk) * a.d[b] * isum as f32 + read_f16(&blk[2..]) * a.s[b];
    }
    acc
}

/// Exact-path dot product: any weight type, dequantized on the fly, times f32 activations.
pub fn dot_f32(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    let mut tmp = [0f32; QK];
    let bl = dtype.block_len().max(QK);
    let mut acc = 0f32;
    for (wc, xc) in w.chunks(dtype.row_bytes(bl)).zip(x.chunks(bl)) {
        let t = &mut tmp[..xc.len()];
        super::dequantize_row(dtype, wc, t);
        acc += t.iter().zip(xc).map(|(a, b)| a * b).sum::<f32>();
    }
    acc
}

/// `out[t * out_stride + (r - rows.start)] = dot(W[r], A[t])` for every activation row t and
/// weight row r in `rows` (block-quantized weights, Q8 activations).
pub fn matmul_q8(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    acts: &Q8Acts,
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype.row_bytes(cols);
    for r in rows.clone() {
        let wr = &w[r * rb..(r + 1) * rb];
        for t in 0..acts.rows() {
            out[t * out_stride + r - rows.start] = dot_q8(dtype, wr, acts.row(t));
        }
    }
}

/// As `matmul_q8`, for f32 activations `x` (rows of `cols`) and any weight type.
pub fn matmul_f32(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    x: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype.row_bytes(cols);
    for r in rows.clone() {
        let wr = &w[r * rb..(r + 1) * rb];
        for (t, xr) in x.chunks_exact(cols).enumerate() {
            out[t * out_stride + r - rows.start] = dot_f32(dtype, wr, xr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize_row, quantize_row};
    use super::*;

    /// A small deterministic generator so the test needs no extra crate.
    fn randoms(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Both paths against an f64 reference computed from the dequantized weights (and, for
    /// the Q8 path, the dequantized activations, so only summation error remains).
    #[test]
    fn dots_match_f64_reference() {
        for (seed, cols) in [(1u64, 32usize), (2, 96), (3, 576), (4, 1536), (5, 4096)] {
            let w = randoms(seed, cols);
            let x = randoms(seed + 100, cols);
            let mut acts = Q8Acts::default();
            acts.quantize(&x, cols);
            let xq: Vec<f64> = (0..cols)
                .map(|i| acts.row(0).qs[i] as f64 * acts.row(0).d[i / QK] as f64)
                .collect();
            for dtype in DType::ALL {
                let mut bytes = Vec::new();
                quantize_row(dtype, &w, &mut bytes);
                let mut wd = vec![0f32; cols];
                dequantize_row(dtype, &bytes, &mut wd);
                let exact: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let norm: f64 = wd
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let got = dot_f32(dtype, &bytes, &x) as f64;
                assert!(
                    (got - exact).abs() <= 1e-6 * norm,
                    "{dtype} f32 path: {got} vs {exact}"
                );
                if dtype.is_quantized() {
                    let exact_q: f64 = wd.iter().zip(&xq).map(|(a, b)| *a as f64 * b).sum();
                    let got = dot_q8(dtype, &bytes, acts.row(0)) as f64;
                    assert!(
                        (got - exact_q).abs() <= 1e-5 * norm,
                        "{dtype} q8 path: {got} vs {exact_q}"
                    );
                }
            }
        }
    }
}
