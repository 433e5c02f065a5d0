//! Portable reference kernels: one (weight row, activation row) dot at a time, in a plain
//! sequential order. The SIMD kernels are checked against these.

use super::super::{dequantize_row, read_f16, DType, QK};
use super::QRow;

/// Sum of `w_int · a_int` over one block, for the integer weight values of a block.
#[inline]
fn block_isum<Q: Copy + Into<i32>>(dtype: DType, blk: &[u8], qa: &[Q]) -> i32 {
    let mut isum = 0i32;
    match dtype {
        DType::Q8_0 => {
            for (&qw, &q) in blk[2..].iter().zip(qa) {
                isum += (qw as i8) as i32 * q.into();
            }
        }
        DType::Q4_0 => {
            for (j, &byte) in blk[2..].iter().enumerate() {
                isum += ((byte & 0x0f) as i32 - 8) * qa[j].into();
                isum += ((byte >> 4) as i32 - 8) * qa[j + 16].into();
            }
        }
        DType::Q4_1 => {
            for (j, &byte) in blk[4..].iter().enumerate() {
                isum += (byte & 0x0f) as i32 * qa[j].into();
                isum += (byte >> 4) as i32 * qa[j + 16].into();
            }
        }
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("float weights use the f32 path"),
    }
    isum
}

/// Dot product of a block-quantized weight row with a block-quantized activation row (8- or
/// 16-bit activations): integer sums per block, then `d_w·d_a·Σ (+ m_w·s_a for Q4_1)`.
pub fn dot_q<Q: Copy + Into<i32>>(dtype: DType, w: &[u8], a: QRow<'_, Q>) -> f32 {
    let bb = dtype.block_bytes();
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let isum = block_isum(dtype, blk, &a.qs[b * QK..(b + 1) * QK]);
        acc += read_f16(blk) * a.d[b] * isum as f32;
        if dtype == DType::Q4_1 {
            acc += read_f16(&blk[2..]) * a.s[b];
        }
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
