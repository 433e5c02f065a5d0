//! Portable reference kernels: one (weight row, activation row) dot at a time, in a plain
//! sequential order. The SIMD kernels are checked against these.

use super::super::{dequantize_row, sub_block, sub_blocks, DType, SubBlock, QK};
use super::QRow;

/// The integer sums of one sub-block against 32 quantized activations: `Σ sc[h]·q·a` and, for
/// Q2_K's integer minimums, `Σ mq[h]·a` (i64: Q6_K's scaled products overflow i32 with 16-bit
/// activations).
#[inline]
pub fn sub_block_isums<Q: Copy + Into<i32>>(s: &SubBlock, qa: &[Q]) -> (i64, i64) {
    let (mut isum, mut msum) = (0i64, 0i64);
    for h in 0..2 {
        let (mut qh, mut ah) = (0i64, 0i64);
        let half = h * QK / 2..(h + 1) * QK / 2;
        for (&q, &a) in s.q[half.clone()].iter().zip(&qa[half]) {
            let a: i32 = a.into();
            qh += q as i64 * a as i64;
            ah += a as i64;
        }
        isum += s.sc[h] as i64 * qh;
        msum += s.mq[h] as i64 * ah;
    }
    (isum, msum)
}

/// Adds one sub-block's share of a dot to `acc`, from its integer sums and its activation
/// block (scale `d_a`, scaled sum `s_a`): `d·d_a·Σ`, then `m·s_a`, then `dm·d_a·Σmq`.
#[inline]
pub fn add_sub_block(acc: &mut f32, s: &SubBlock, isum: i64, msum: i64, d_a: f32, s_a: f32) {
    *acc += s.d * d_a * isum as f32;
    if s.m != 0.0 {
        *acc += s.m * s_a;
    }
    if s.dm != 0.0 {
        *acc += s.dm * d_a * msum as f32;
    }
}

/// Dot product of a block-quantized weight row with a block-quantized activation row (8- or
/// 16-bit activations): integer sums per sub-block of 32, then its scales (`add_sub_block`),
/// accumulated in order.
pub fn dot_q<Q: Copy + Into<i32>>(dtype: DType, w: &[u8], a: QRow<'_, Q>) -> f32 {
    let per = sub_blocks(dtype);
    let mut acc = 0f32;
    for (i, blk) in w.chunks_exact(dtype.block_bytes()).enumerate() {
        for j in 0..per {
            let b = i * per + j;
            let s = sub_block(dtype, blk, j);
            let (isum, msum) = sub_block_isums(&s, &a.qs[b * QK..(b + 1) * QK]);
            add_sub_block(&mut acc, &s, isum, msum, a.d[b], a.s[b]);
        }
    }
    acc
}

/// Exact-path dot product: any weight type, dequantized on the fly, times f32 activations.
pub fn dot_f32(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    let mut tmp = [0f32; super::super::QK_K];
    let bl = dtype.block_len().max(QK);
    let mut acc = 0f32;
    for (wc, xc) in w.chunks(dtype.row_bytes(bl)).zip(x.chunks(bl)) {
        let t = &mut tmp[..xc.len()];
        dequantize_row(dtype, wc, t);
        acc += t.iter().zip(xc).map(|(a, b)| a * b).sum::<f32>();
    }
    acc
}

/// Quantizes one block of 32 values to integers in `[-qmax, qmax]` (round half to even, as
/// the SIMD versions do); returns `(d, Σq)`.
pub fn quantize_block<Q: Copy>(
    xb: &[f32],
    qmax: f32,
    out: &mut [Q],
    conv: impl Fn(f32) -> Q,
) -> (f32, i32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / qmax;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in out.iter_mut().zip(xb) {
        let r = (v * id).round_ties_even();
        sum += r as i32;
        *q = conv(r);
    }
    (d, sum)
}
