//! NEON kernels (aarch64, where NEON is always present). One dot at a time: the integer block
//! sums are computed with NEON, the float arithmetic is the scalar reference's (`scalar.rs`), so
//! these kernels give the scalar kernels' bits on the quantized paths.

use super::{matmul_by_dots, scalar, QActs};
use crate::quant::{dequantize_row, read_f16, DType, QK};
use std::arch::aarch64::*;
use std::ops::Range;

/// The 32 integer weights of a quantized block as two i8x16 (elements 0..16, 16..32).
#[inline]
unsafe fn wq(dtype: DType, blk: &[u8]) -> (int8x16_t, int8x16_t) {
    match dtype {
        DType::Q8_0 => (
            vld1q_s8(blk.as_ptr().add(2) as *const i8),
            vld1q_s8(blk.as_ptr().add(18) as *const i8),
        ),
        DType::Q4_0 | DType::Q4_1 => {
            let off = if dtype == DType::Q4_0 { 2 } else { 4 };
            let b = vld1q_u8(blk.as_ptr().add(off));
            let lo = vandq_u8(b, vdupq_n_u8(0x0f));
            let hi = vshrq_n_u8(b, 4);
            if dtype == DType::Q4_0 {
                let eight = vdupq_n_u8(8);
                (
                    vreinterpretq_s8_u8(vsubq_u8(lo, eight)),
                    vreinterpretq_s8_u8(vsubq_u8(hi, eight)),
                )
            } else {
                (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
            }
        }
        _ => unreachable!("{dtype} has no NEON decoder"),
    }
}

#[inline]
unsafe fn isum8(w: int8x16_t, a: int8x16_t, acc: int32x4_t) -> int32x4_t {
    let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(a)));
    vpadalq_s16(acc, vmull_high_s8(w, a))
}

#[inline]
unsafe fn isum16(w: int8x16_t, a: *const i16, acc: int32x4_t) -> int32x4_t {
    let (wl, wh) = (vmovl_s8(vget_low_s8(w)), vmovl_high_s8(w));
    let acc = vmlal_s16(acc, vget_low_s16(wl), vld1_s16(a));
    let acc = vmlal_high_s16(acc, wl, vld1q_s16(a));
    let acc = vmlal_s16(acc, vget_low_s16(wh), vld1_s16(a.add(8)));
    vmlal_high_s16(acc, wh, vld1q_s16(a.add(8)))
}

/// Same arithmetic as `scalar::dot_q`, with NEON integer sums.
fn dot_q<Q>(dtype: DType, w: &[u8], qs: &[Q], d: &[f32], s: &[f32], wide: bool) -> f32 {
    let bb = dtype.block_bytes();
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        // SAFETY: blk is a whole block; qs holds 32 values of block b
        let isum = unsafe {
            let (wl, wh) = wq(dtype, blk);
            let z = vdupq_n_s32(0);
            let v = if wide {
                let a = qs.as_ptr().add(b * QK) as *const i16;
                isum16(wh, a.add(16), isum16(wl, a, z))
            } else {
                let a = qs.as_ptr().add(b * QK) as *const i8;
                isum8(wh, vld1q_s8(a.add(16)), isum8(wl, vld1q_s8(a), z))
            };
            vaddvq_s32(v)
        };
        acc += read_f16(blk) * d[b] * isum as f32;
        if dtype == DType::Q4_1 {
            acc += read_f16(&blk[2..]) * s[b];
        }
    }
    acc
}

pub fn matmul_q<Q: super::ActInt>(
    dtype: DType,
    w: &[u8],
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype.row_bytes(acts.cols);
    matmul_by_dots(w, rb, rows, acts.rows(), out, out_stride, |wr, t| {
        let a = acts.row(t);
        dot_q(dtype, wr, a.qs, a.d, a.s, Q::WIDE)
    });
}

/// Exact path: weights dequantized per block of 32 (as `dequantize_row`), four f32x4
/// accumulators, fixed final order; a scalar tail for float rows not a multiple of 32.
fn dot_f32(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / QK;
    let bb = dtype.row_bytes(QK);
    let mut tmp = [0f32; QK];
    // SAFETY: NEON is part of aarch64; loads stay inside `tmp` and `x`
    let mut acc = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..nb {
            dequantize_row(dtype, &w[b * bb..(b + 1) * bb], &mut tmp);
            let xp = x.as_ptr().add(b * QK);
            for (j, a) in acc.iter_mut().enumerate() {
                let lo = vmulq_f32(vld1q_f32(tmp.as_ptr().add(4 * j)), vld1q_f32(xp.add(4 * j)));
                *a = vaddq_f32(
                    *a,
                    vfmaq_f32(
                        lo,
                        vld1q_f32(tmp.as_ptr().add(16 + 4 * j)),
                        vld1q_f32(xp.add(16 + 4 * j)),
                    ),
                );
            }
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    };
    if nb * QK < x.len() {
        acc += scalar::dot_f32(dtype, &w[nb * bb..], &x[nb * QK..]);
    }
    acc
}

pub fn matmul_f32(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    x: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    matmul_by_dots(
        w,
        dtype.row_bytes(cols),
        rows,
        x.len() / cols,
        out,
        out_stride,
        |wr, t| dot_f32(dtype, wr, &x[t * cols..(t + 1) * cols]),
    );
}
