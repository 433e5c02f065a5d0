//! NEON kernels (aarch64, where NEON is always present). One dot at a time: the integer
//! sub-block sums are computed with NEON, the float arithmetic is the scalar reference's
//! (`scalar::add_sub_block`), so these kernels give the scalar kernels' bits on the quantized
//! paths.
//!
//! On CPUs with the ARMv8.2 dot-product extension (`dotprod`, every phone core since about
//! 2018), the products of 8-bit activations are summed with SDOT, four i8·i8 products per i32
//! lane in one instruction; the sums are the same integers, so the bits are too. 16-bit
//! activations keep the widening multiplies (SDOT takes only 8-bit operands). With the ARMv8.6
//! int8 matrix multiply (`i8mm`), passes over several tokens of 8-bit activations (tree
//! verification, prefill) take two weight rows and two tokens at a time: SMMLA gives the four
//! sums of 8 products in one instruction, again the same integers.
//!
//! Every quantized type is decoded with NEON, 32 weights (one sub-block, see `blocks.rs`) at a
//! time, into two i8x16; its scales come out as a `SubBlock` (with `q` unused) computed exactly
//! as `blocks::sub_block` computes them. The integer sums are exact and cannot overflow:
//! products are at most 128·32768 in magnitude (2^22), four of them per i32 lane and half, times
//! a scale of magnitude at most 128 for Q6_K (2^31 / 4 per half), and the lanes are reduced to
//! i64 (`vaddlvq_s32`), as the scalar reference sums in i64.

use super::super::blocks::{scale_min_k4, scales_q3_k};
use super::{matmul_by_dots, scalar, ActInt, QActs, QRow, Simd};
use crate::quant::{dequantize_row, read_f16, DType, SubBlock, QK};
use std::any::Any;
use std::arch::aarch64::*;
use std::ops::Range;

// Type codes for the const-generic kernels (one monomorphized kernel per weight type).
const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;
const Q5_0: u8 = 3;
const Q5_1: u8 = 4;
const Q2_K: u8 = 5;
const Q3_K: u8 = 6;
const Q4_K: u8 = 7;
const Q5_K: u8 = 8;
const Q6_K: u8 = 9;
const Q8_K: u8 = 10;

const fn dtype_of(t: u8) -> DType {
    match t {
        Q8_0 => DType::Q8_0,
        Q4_0 => DType::Q4_0,
        Q4_1 => DType::Q4_1,
        Q5_0 => DType::Q5_0,
        Q5_1 => DType::Q5_1,
        Q2_K => DType::Q2_K,
        Q3_K => DType::Q3_K,
        Q4_K => DType::Q4_K,
        Q5_K => DType::Q5_K,
        Q6_K => DType::Q6_K,
        _ => DType::Q8_K,
    }
}

/// Calls `$f::<CODE, ..>($args)` for the code of the quantized type `$dtype`.
macro_rules! by_type {
    ($dtype:expr, $f:ident::<_ $(, $g:tt)*>($($args:expr),*)) => {
        match $dtype {
            DType::Q8_0 => $f::<Q8_0 $(, $g)*>($($args),*),
            DType::Q4_0 => $f::<Q4_0 $(, $g)*>($($args),*),
            DType::Q4_1 => $f::<Q4_1 $(, $g)*>($($args),*),
            DType::Q5_0 => $f::<Q5_0 $(, $g)*>($($args),*),
            DType::Q5_1 => $f::<Q5_1 $(, $g)*>($($args),*),
            DType::Q2_K => $f::<Q2_K $(, $g)*>($($args),*),
            DType::Q3_K => $f::<Q3_K $(, $g)*>($($args),*),
            DType::Q4_K => $f::<Q4_K $(, $g)*>($($args),*),
            DType::Q5_K => $f::<Q5_K $(, $g)*>($($args),*),
            DType::Q6_K => $f::<Q6_K $(, $g)*>($($args),*),
            DType::Q8_K => $f::<Q8_K $(, $g)*>($($args),*),
            DType::F32 | DType::F16 | DType::BF16 => {
                unreachable!("{} is not block-quantized", $dtype)
            }
        }
    };
}

#[inline(always)]
unsafe fn ld(p: &[u8], off: usize) -> uint8x16_t {
    debug_assert!(off + 16 <= p.len());
    vld1q_u8(p.as_ptr().add(off))
}

#[inline(always)]
unsafe fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

/// 0x10 in lane i of the first (second) vector where bit i (16 + i) of `qh` is set: the 5th
/// bits of Q5_0/Q5_1.
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> (uint8x16_t, uint8x16_t) {
    const LANE_BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let m = vld1q_u8(LANE_BIT.as_ptr());
    let b = qh.to_le_bytes();
    let lo = vcombine_u8(vdup_n_u8(b[0]), vdup_n_u8(b[1]));
    let hi = vcombine_u8(vdup_n_u8(b[2]), vdup_n_u8(b[3]));
    let x10 = vdupq_n_u8(0x10);
    (
        vandq_u8(vtstq_u8(lo, m), x10),
        vandq_u8(vtstq_u8(hi, m), x10),
    )
}

/// Nibbles of Q4_0/Q4_1/Q5_0/Q5_1: byte i holds value i (low) and 16 + i (high).
#[inline(always)]
unsafe fn nibbles(blk: &[u8], off: usize) -> (uint8x16_t, uint8x16_t) {
    let b = ld(blk, off);
    (vandq_u8(b, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(b))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Sub-block `j` of the block `blk` of type code `T`: its scales, exactly as `sub_block` gives
/// them (`q` left zero), and its 32 integer weights as two i8x16 (elements 0..16, 16..32).
/// `sc3`: Q3_K's unpacked scales of this block (unused for the other types).
///
/// # Safety
/// `blk` is a whole block of the type and `j < sub_blocks`.
#[inline(always)]
unsafe fn decode<const T: u8>(
    blk: &[u8],
    j: usize,
    sc3: &[u8; 16],
) -> (SubBlock, int8x16_t, int8x16_t) {
    debug_assert_eq!(blk.len(), dtype_of(T).block_bytes());
    match T {
        Q8_0 => (
            SubBlock::new(read_f16(blk)),
            s8(ld(blk, 2)),
            s8(ld(blk, 18)),
        ),
        Q4_0 => {
            let (lo, hi) = nibbles(blk, 2);
            let eight = vdupq_n_s8(8);
            let (lo, hi) = (vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight));
            (SubBlock::new(read_f16(blk)), lo, hi)
        }
        Q4_1 => {
            let (lo, hi) = nibbles(blk, 4);
            let mut s = SubBlock::new(read_f16(blk));
            s.m = read_f16(&blk[2..]);
            (s, s8(lo), s8(hi))
        }
        Q5_0 => {
            let (lo, hi) = nibbles(blk, 6);
            let (h0, h1) = fifth_bits(u32_at(blk, 2));
            let sixteen = vdupq_n_s8(16);
            (
                SubBlock::new(read_f16(blk)),
                vsubq_s8(s8(vorrq_u8(lo, h0)), sixteen),
                vsubq_s8(s8(vorrq_u8(hi, h1)), sixteen),
            )
        }
        Q5_1 => {
            let (lo, hi) = nibbles(blk, 8);
            let (h0, h1) = fifth_bits(u32_at(blk, 4));
            let mut s = SubBlock::new(read_f16(blk));
            s.m = read_f16(&blk[2..]);
            (s, s8(vorrq_u8(lo, h0)), s8(vorrq_u8(hi, h1)))
        }
        Q8_K => {
            let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
            let off = 4 + j * QK;
            (SubBlock::new(d), s8(ld(blk, off)), s8(ld(blk, off + 16)))
        }
        Q4_K | Q5_K => {
            let (sc, mn) = scale_min_k4(j, &blk[4..16]);
            let mut s = SubBlock::new(read_f16(blk) * sc as f32);
            s.m = -(read_f16(&blk[2..]) * mn as f32);
            let base = if T == Q4_K { 16 } else { 48 } + 32 * (j / 2);
            let (g0, g1) = (ld(blk, base), ld(blk, base + 16));
            let (mut lo, mut hi) = if j.is_multiple_of(2) {
                let m = vdupq_n_u8(0x0f);
                (vandq_u8(g0, m), vandq_u8(g1, m))
            } else {
                (vshrq_n_u8::<4>(g0), vshrq_n_u8::<4>(g1))
            };
            if T == Q5_K {
                let bit = vdupq_n_u8(1 << j);
                let x10 = vdupq_n_u8(0x10);
                lo = vorrq_u8(lo, vandq_u8(vtstq_u8(ld(blk, 16), bit), x10));
                hi = vorrq_u8(hi, vandq_u8(vtstq_u8(ld(blk, 32), bit), x10));
            }
            (s, s8(lo), s8(hi))
        }
        Q6_K => {
            let (n, k) = (j / 4, j % 4);
            let scales = &blk[192 + 8 * n + 2 * k..];
            let mut s = SubBlock::new(read_f16(&blk[208..]));
            s.sc = [scales[0] as i8 as i16, scales[1] as i8 as i16];
            let ql = 64 * n + 32 * (k & 1);
            let (l0, l1) = (ld(blk, ql), ld(blk, ql + 16));
            let (l0, l1) = if k < 2 {
                let m = vdupq_n_u8(0x0f);
                (vandq_u8(l0, m), vandq_u8(l1, m))
            } else {
                (vshrq_n_u8::<4>(l0), vshrq_n_u8::<4>(l1))
            };
            // bits 2k, 2k+1 of qh moved to bits 4, 5 (a negative count shifts right)
            let shift = vdupq_n_s8(4 - 2 * k as i8);
            let m = vdupq_n_u8(0x30);
            let qh = 128 + 32 * n;
            let h0 = vandq_u8(vshlq_u8(ld(blk, qh), shift), m);
            let h1 = vandq_u8(vshlq_u8(ld(blk, qh + 16), shift), m);
            let x32 = vdupq_n_s8(32);
            (
                s,
                vsubq_s8(s8(vorrq_u8(l0, h0)), x32),
                vsubq_s8(s8(vorrq_u8(l1, h1)), x32),
            )
        }
        Q2_K => {
            let (n, k) = (j / 4, j % 4);
            let scales = &blk[8 * n + 2 * k..];
            let mut s = SubBlock::new(read_f16(&blk[80..]));
            s.dm = -read_f16(&blk[82..]);
            s.sc = [(scales[0] & 0xf) as i16, (scales[1] & 0xf) as i16];
            s.mq = [(scales[0] >> 4) as i8, (scales[1] >> 4) as i8];
            let shift = vdupq_n_s8(-2 * k as i8);
            let m = vdupq_n_u8(3);
            let qs = 16 + 32 * n;
            let q0 = vandq_u8(vshlq_u8(ld(blk, qs), shift), m);
            let q1 = vandq_u8(vshlq_u8(ld(blk, qs + 16), shift), m);
            (s, s8(q0), s8(q1))
        }
        Q3_K => {
            let (n, k) = (j / 4, j % 4);
            let mut s = SubBlock::new(read_f16(&blk[108..]));
            s.sc = [
                sc3[8 * n + 2 * k] as i16 - 32,
                sc3[8 * n + 2 * k + 1] as i16 - 32,
            ];
            let shift = vdupq_n_s8(-2 * k as i8);
            let m = vdupq_n_u8(3);
            let qs = 32 + 32 * n;
            let q0 = vandq_u8(vshlq_u8(ld(blk, qs), shift), m);
            let q1 = vandq_u8(vshlq_u8(ld(blk, qs + 16), shift), m);
            // 4 is subtracted where the hmask bit (j) is clear
            let bit = vdupq_n_u8(1 << j);
            let four = vdupq_n_u8(4);
            let o0 = vbicq_u8(four, vtstq_u8(ld(blk, 0), bit));
            let o1 = vbicq_u8(four, vtstq_u8(ld(blk, 16), bit));
            (s, vsubq_s8(s8(q0), s8(o0)), vsubq_s8(s8(q1), s8(o1)))
        }
        _ => unreachable!(),
    }
}

/// Products of 16 weights with 16 i8 activations, pairwise summed into 4 i32 lanes.
#[inline(always)]
unsafe fn prod8(w: int8x16_t, a: *const i8) -> int32x4_t {
    let a = vld1q_s8(a);
    let p = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(a)));
    vpadalq_s16(p, vmull_high_s8(w, a))
}

/// `acc` (i32x4) += an i8x16 by i8x16 instruction `$insn` (the form `insn acc.4s, w.16b,
/// a.16b`). Inline assembly because the SDOT and SMMLA intrinsics are not stable on the MSRV;
/// the functions this makes are only called (inlined) inside `#[target_feature]` functions that
/// enable their extension.
macro_rules! i8_accumulate {
    ($(#[$doc:meta])* $name:ident, $insn:literal) => {
        $(#[$doc])*
        #[inline(always)]
        unsafe fn $name(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
            let mut acc = acc;
            std::arch::asm!(
                concat!($insn, " {acc:v}.4s, {w:v}.16b, {a:v}.16b"),
                acc = inout(vreg) acc,
                w = in(vreg) w,
                a = in(vreg) a,
                options(pure, nomem, nostack, preserves_flags)
            );
            acc
        }
    };
}

i8_accumulate!(
    /// SDOT (ARMv8.2 dotprod): lane `i` of `acc` += the dot of bytes `4i..4i+4` of `w` and `a`.
    sdot,
    "sdot"
);
i8_accumulate!(
    /// SMMLA (ARMv8.6 i8mm): `acc` (2×2 i32, row-major) += `w` (2×8 i8, two weight rows) times
    /// `a` (2×8 i8, two activation rows) transposed.
    smmla,
    "smmla"
);

/// As `prod8`, with SDOT: four products per lane. Only inside dotprod functions.
#[inline(always)]
unsafe fn prod8_sdot(w: int8x16_t, a: *const i8) -> int32x4_t {
    sdot(vdupq_n_s32(0), w, vld1q_s8(a))
}

/// Products of 16 weights with 16 i16 activations summed into 4 i32 lanes.
#[inline(always)]
unsafe fn prod16(w: int8x16_t, a: *const i16) -> int32x4_t {
    let (wl, wh) = (vmovl_s8(vget_low_s8(w)), vmovl_high_s8(w));
    let (a0, a1) = (vld1q_s16(a), vld1q_s16(a.add(8)));
    let acc = vmull_s16(vget_low_s16(wl), vget_low_s16(a0));
    let acc = vmlal_high_s16(acc, wl, a0);
    let acc = vmlal_s16(acc, vget_low_s16(wh), vget_low_s16(a1));
    vmlal_high_s16(acc, wh, a1)
}

/// `scalar::sub_block_isums` with NEON: `(Σ sc[h]·q·a, Σ mq[h]·a)` over the 32 activations at
/// `a` (i8 or i16 as `Q::WIDE` says); 8-bit products with SDOT if `DOT`.
///
/// # Safety
/// `a` points at 32 activations; with `DOT`, the CPU has dotprod and the caller is compiled
/// with it.
#[inline(always)]
unsafe fn isums<const T: u8, Q: ActInt, const DOT: bool>(
    s: &SubBlock,
    w: (int8x16_t, int8x16_t),
    a: *const Q,
) -> (i64, i64) {
    let (p0, p1) = if Q::WIDE {
        let a = a as *const i16;
        (prod16(w.0, a), prod16(w.1, a.add(16)))
    } else if DOT {
        let a = a as *const i8;
        (prod8_sdot(w.0, a), prod8_sdot(w.1, a.add(16)))
    } else {
        let a = a as *const i8;
        (prod8(w.0, a), prod8(w.1, a.add(16)))
    };
    // per lane at most 4·128·32768·128 per half (Q6_K), so sc0·p0 + sc1·p1 fits i32
    let v = match T {
        Q2_K | Q3_K | Q6_K => vmlaq_n_s32(vmulq_n_s32(p0, s.sc[0] as i32), p1, s.sc[1] as i32),
        _ => vaddq_s32(p0, p1),
    };
    let isum = vaddlvq_s32(v);
    let msum = if T == Q2_K {
        let (a0, a1) = if Q::WIDE {
            let a = a as *const i16;
            (
                vaddlvq_s16(vld1q_s16(a)) + vaddlvq_s16(vld1q_s16(a.add(8))),
                vaddlvq_s16(vld1q_s16(a.add(16))) + vaddlvq_s16(vld1q_s16(a.add(24))),
            )
        } else {
            let a = a as *const i8;
            (
                vaddlvq_s8(vld1q_s8(a)) as i32,
                vaddlvq_s8(vld1q_s8(a.add(16))) as i32,
            )
        };
        s.mq[0] as i64 * a0 as i64 + s.mq[1] as i64 * a1 as i64
    } else {
        0
    };
    (isum, msum)
}

/// Same arithmetic as `scalar::dot_q`, with NEON decoding and integer sums (SDOT if `DOT`).
///
/// # Safety
/// With `DOT`, the CPU has dotprod and the caller is compiled with it (`dot_q_sdot`).
#[inline(always)]
unsafe fn dot_q<const T: u8, Q: ActInt, const DOT: bool>(
    w: &[u8],
    qs: &[Q],
    d: &[f32],
    s: &[f32],
) -> f32 {
    let dtype = dtype_of(T);
    let (bb, per) = (dtype.block_bytes(), dtype.block_len() / QK);
    let blocks = w.len() / bb;
    assert!(qs.len() >= blocks * per * QK && d.len() >= blocks * per && s.len() >= blocks * per);
    let mut acc = 0f32;
    let mut sc3 = [0u8; 16];
    for (i, blk) in w.chunks_exact(bb).enumerate() {
        if T == Q3_K {
            sc3 = scales_q3_k(&blk[96..108]);
        }
        for j in 0..per {
            let b = i * per + j;
            // blk is a whole block and j < per; qs holds the 32 values of block b
            let (sb, wl, wh) = decode::<T>(blk, j, &sc3);
            let (isum, msum) = isums::<T, Q, DOT>(&sb, (wl, wh), qs.as_ptr().add(b * QK));
            scalar::add_sub_block(&mut acc, &sb, isum, msum, d[b], s[b]);
        }
    }
    acc
}

/// The four dots of 16 weights of two rows (`w0`, `w1`) with 16 activations of two tokens
/// (`a0`, `a1`), lanes `(w0·a0, w0·a1, w1·a0, w1·a1)`: two SMMLA of 8 elements each.
#[inline(always)]
unsafe fn mm16(w0: int8x16_t, w1: int8x16_t, a0: int8x16_t, a1: int8x16_t) -> int32x4_t {
    let (w0, w1) = (vreinterpretq_s64_s8(w0), vreinterpretq_s64_s8(w1));
    let (a0, a1) = (vreinterpretq_s64_s8(a0), vreinterpretq_s64_s8(a1));
    let lo = smmla(
        vdupq_n_s32(0),
        vreinterpretq_s8_s64(vzip1q_s64(w0, w1)),
        vreinterpretq_s8_s64(vzip1q_s64(a0, a1)),
    );
    smmla(
        lo,
        vreinterpretq_s8_s64(vzip2q_s64(w0, w1)),
        vreinterpretq_s8_s64(vzip2q_s64(a0, a1)),
    )
}

/// Two weight rows times two tokens of 8-bit activations with SMMLA: `out[r][t]` is
/// `dot_q(w[r], a[t])` bit for bit (the same integer sums per sub-block, the same float steps
/// in the same order).
///
/// # Safety
/// The CPU has i8mm and dotprod.
#[target_feature(enable = "i8mm,dotprod")]
unsafe fn dot_q_2x2<const T: u8>(w: [&[u8]; 2], a: [QRow<'_, i8>; 2]) -> [[f32; 2]; 2] {
    let dtype = dtype_of(T);
    let (bb, per) = (dtype.block_bytes(), dtype.block_len() / QK);
    let blocks = w[0].len() / bb;
    let nb = blocks * per;
    assert!(w[1].len() == w[0].len());
    assert!(a
        .iter()
        .all(|a| a.qs.len() >= nb * QK && a.d.len() >= nb && a.s.len() >= nb));
    let mut acc = [[0f32; 2]; 2];
    let mut sc3 = [[0u8; 16]; 2];
    for i in 0..blocks {
        let blk = [&w[0][i * bb..(i + 1) * bb], &w[1][i * bb..(i + 1) * bb]];
        if T == Q3_K {
            sc3 = [scales_q3_k(&blk[0][96..108]), scales_q3_k(&blk[1][96..108])];
        }
        for j in 0..per {
            let b = i * per + j;
            let (s0, w0l, w0h) = decode::<T>(blk[0], j, &sc3[0]);
            let (s1, w1l, w1h) = decode::<T>(blk[1], j, &sc3[1]);
            let (p0, p1) = (a[0].qs.as_ptr().add(b * QK), a[1].qs.as_ptr().add(b * QK));
            let (a0l, a0h) = (vld1q_s8(p0), vld1q_s8(p0.add(16)));
            let (a1l, a1h) = (vld1q_s8(p1), vld1q_s8(p1.add(16)));
            let lo = mm16(w0l, w1l, a0l, a1l);
            let hi = mm16(w0h, w1h, a0h, a1h);
            // per lane at most 16·128·128 per half, times a scale of at most 128 (Q6_K): i32
            let v = match T {
                Q2_K | Q3_K | Q6_K => {
                    let sc = |h: usize| {
                        let (x, y) = (s0.sc[h] as i32, s1.sc[h] as i32);
                        vld1q_s32([x, x, y, y].as_ptr())
                    };
                    vmlaq_s32(vmulq_s32(lo, sc(0)), hi, sc(1))
                }
                _ => vaddq_s32(lo, hi),
            };
            let mut isum = [0i32; 4];
            vst1q_s32(isum.as_mut_ptr(), v);
            // Q2_K's minimums: the activation sums of each half, per token
            let halves = [
                [vaddlvq_s8(a0l) as i64, vaddlvq_s8(a0h) as i64],
                [vaddlvq_s8(a1l) as i64, vaddlvq_s8(a1h) as i64],
            ];
            for (r, s) in [&s0, &s1].into_iter().enumerate() {
                for t in 0..2 {
                    let msum = if T == Q2_K {
                        s.mq[0] as i64 * halves[t][0] + s.mq[1] as i64 * halves[t][1]
                    } else {
                        0
                    };
                    let (d, sa) = (a[t].d[b], a[t].s[b]);
                    scalar::add_sub_block(&mut acc[r][t], s, isum[2 * r + t] as i64, msum, d, sa);
                }
            }
        }
    }
    acc
}

/// The 8-bit-activation matmul with SMMLA: rows and tokens in pairs (2×2 tiles), the odd last
/// row or token with SDOT.
///
/// # Safety
/// The CPU has i8mm and dotprod.
unsafe fn matmul_q8_i8mm<const T: u8>(
    w: &[u8],
    rows: Range<usize>,
    acts: &QActs<i8>,
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype_of(T).row_bytes(acts.cols);
    let n_t = acts.rows();
    let row = |r: usize| &w[r * rb..(r + 1) * rb];
    let (r_end, t_end) = (rows.start + rows.len() / 2 * 2, n_t / 2 * 2);
    for r in (rows.start..r_end).step_by(2) {
        for t in (0..t_end).step_by(2) {
            let v = dot_q_2x2::<T>([row(r), row(r + 1)], [acts.row(t), acts.row(t + 1)]);
            for (i, vr) in v.iter().enumerate() {
                for (k, &x) in vr.iter().enumerate() {
                    out[(t + k) * out_stride + r + i - rows.start] = x;
                }
            }
        }
    }
    let sdot = |r: usize, t: usize| {
        let a = acts.row(t);
        dot_q_sdot::<T, i8>(row(r), a.qs, a.d, a.s)
    };
    for r in rows.clone() {
        let ts = if r < r_end { t_end..n_t } else { 0..n_t };
        for t in ts {
            out[t * out_stride + r - rows.start] = sdot(r, t);
        }
    }
}

/// `dot_q` compiled for dotprod: SDOT for 8-bit activations (16-bit ones as without).
///
/// # Safety
/// The CPU has dotprod.
#[target_feature(enable = "dotprod")]
unsafe fn dot_q_sdot<const T: u8, Q: ActInt>(w: &[u8], qs: &[Q], d: &[f32], s: &[f32]) -> f32 {
    dot_q::<T, Q, true>(w, qs, d, s)
}

/// The quantized-path matmul with the kernels `simd` (`Neon`, `NeonDotprod` or `NeonI8mm`,
/// available on this CPU): SMMLA tiles for passes over several tokens of 8-bit activations
/// with i8mm, SDOT dots with dotprod, NEON dots otherwise.
pub fn matmul_q<Q: ActInt>(
    simd: Simd,
    dtype: DType,
    w: &[u8],
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    by_type!(
        dtype,
        matmul_q_t::<_, Q>(simd, w, rows, acts, out, out_stride)
    )
}

fn matmul_q_t<const T: u8, Q: ActInt>(
    simd: Simd,
    w: &[u8],
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    let q8 = (acts as &dyn Any).downcast_ref::<QActs<i8>>();
    if let (Simd::NeonI8mm, Some(acts), 2..) = (simd, q8, acts.rows()) {
        // SAFETY: NeonI8mm is available only with i8mm and dotprod
        return unsafe { matmul_q8_i8mm::<T>(w, rows, acts, out, out_stride) };
    }
    let dotprod = matches!(simd, Simd::NeonDotprod | Simd::NeonI8mm);
    let rb = dtype_of(T).row_bytes(acts.cols);
    matmul_by_dots(w, rb, rows, acts.rows(), out, out_stride, |wr, t| {
        let a = acts.row(t);
        if dotprod {
            // SAFETY: the caller checked that the CPU has dotprod
            unsafe { dot_q_sdot::<T, Q>(wr, a.qs, a.d, a.s) }
        } else {
            // SAFETY: without DOT, NEON only (always present)
            unsafe { dot_q::<T, Q, false>(wr, a.qs, a.d, a.s) }
        }
    });
}

/// The whole blocks of a row (32 elements for the float and legacy types, 256 for the
/// K-quants), dequantized as `dequantize_row` does, into `out`.
fn dequantize_blocks(dtype: DType, w: &[u8], cols: usize, out: &mut Vec<f32>) {
    let bl = dtype.block_len().max(QK);
    let n = cols / bl * bl;
    out.resize(n, 0.0);
    dequantize_row(dtype, &w[..dtype.row_bytes(n)], out);
}

/// Exact path: the dot of a dequantized row `wd` (whole blocks, see [`dequantize_blocks`])
/// with `x`, four f32x4 accumulators over each 32 elements, fixed final order; a scalar tail
/// from the weight bytes `w` for float rows not a multiple of 32.
fn dot_f32(dtype: DType, w: &[u8], wd: &[f32], x: &[f32]) -> f32 {
    // SAFETY: NEON is part of aarch64; loads stay inside `wd` and `x` (a multiple of 32 long)
    let mut acc = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for c in 0..wd.len() / QK {
            let tp = wd.as_ptr().add(c * QK);
            let xp = x.as_ptr().add(c * QK);
            for (j, a) in acc.iter_mut().enumerate() {
                let lo = vmulq_f32(vld1q_f32(tp.add(4 * j)), vld1q_f32(xp.add(4 * j)));
                *a = vaddq_f32(
                    *a,
                    vfmaq_f32(
                        lo,
                        vld1q_f32(tp.add(16 + 4 * j)),
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
    if wd.len() < x.len() {
        acc += scalar::dot_f32(dtype, &w[dtype.row_bytes(wd.len())..], &x[wd.len()..]);
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
    // each row is dequantized once for all the tokens (a prompt's pass has hundreds)
    let row_bytes = dtype.row_bytes(cols);
    let mut wd = Vec::new();
    for r in rows.clone() {
        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
        dequantize_blocks(dtype, wr, cols, &mut wd);
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            out[t * out_stride + r - rows.start] = dot_f32(dtype, wr, &wd, xt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{acts, random_blocks, Rng};
    use super::*;
    use crate::quant::{sub_block, sub_blocks};

    fn quantized() -> impl Iterator<Item = DType> {
        DType::ALL.into_iter().filter(|d| d.is_quantized())
    }

    /// The NEON decoders give `sub_block`'s integers and scales bit for bit.
    #[test]
    fn neon_decode_matches_sub_block() {
        let mut rng = Rng(1);
        for dtype in quantized() {
            let w = random_blocks(dtype, &mut rng, 64);
            for blk in w.chunks_exact(dtype.block_bytes()) {
                let sc3 = if dtype == DType::Q3_K {
                    scales_q3_k(&blk[96..108])
                } else {
                    [0; 16]
                };
                for j in 0..sub_blocks(dtype) {
                    let want = sub_block(dtype, blk, j);
                    // SAFETY: whole block, j in range, stores into a 32-byte array
                    let got = unsafe {
                        let (mut s, lo, hi) = by_type!(dtype, decode::<_>(blk, j, &sc3));
                        vst1q_s8(s.q.as_mut_ptr(), lo);
                        vst1q_s8(s.q.as_mut_ptr().add(16), hi);
                        s
                    };
                    let bits = |s: &SubBlock| (s.d.to_bits(), s.m.to_bits(), s.dm.to_bits());
                    assert_eq!(
                        (got.q, got.sc, got.mq, bits(&got)),
                        (want.q, want.sc, want.mq, bits(&want)),
                        "{dtype} sub-block {j}"
                    );
                }
            }
        }
    }

    fn neon_dot<Q: ActInt>(dtype: DType, w: &[u8], a: QRow<'_, Q>) -> f32 {
        // SAFETY: NEON only
        unsafe { by_type!(dtype, dot_q::<_, Q, false>(w, a.qs, a.d, a.s)) }
    }

    /// The NEON dots give the scalar reference's bits for every quantized type, on random raw
    /// blocks and random 8- and 16-bit activations (extremes included).
    #[test]
    fn neon_dots_match_scalar_bits() {
        let mut rng = Rng(2);
        for dtype in quantized() {
            for round in 0..24 {
                let nblk = 1 + round % 5;
                let w = random_blocks(dtype, &mut rng, nblk);
                let n = nblk * dtype.block_len();
                let nb = n / QK;
                let d: Vec<f32> = (0..nb)
                    .map(|_| (rng.next() % 1000) as f32 * 1e-4 - 0.05)
                    .collect();
                let s: Vec<f32> = (0..nb)
                    .map(|_| (rng.next() % 1000) as f32 * 1e-2 - 5.0)
                    .collect();
                let a8 = acts(&mut rng, n, |v| v as i8, -128, 127);
                let a16 = acts(&mut rng, n, |v| v as i16, -32768, 32767);
                let r8 = QRow {
                    qs: &a8,
                    d: &d,
                    s: &s,
                };
                let r16 = QRow {
                    qs: &a16,
                    d: &d,
                    s: &s,
                };
                let (g, e) = (neon_dot(dtype, &w, r8), scalar::dot_q(dtype, &w, r8));
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{dtype} i8 round {round}: {g} vs {e}"
                );
                let (g, e) = (neon_dot(dtype, &w, r16), scalar::dot_q(dtype, &w, r16));
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{dtype} i16 round {round}: {g} vs {e}"
                );
            }
        }
    }

    /// The exact path over whole K-quant super-blocks agrees with the scalar reference (to
    /// rounding: the summation order differs).
    #[test]
    fn neon_f32_dots_match_scalar() {
        let mut rng = Rng(3);
        for dtype in quantized() {
            let nblk = 3;
            let w = random_blocks(dtype, &mut rng, nblk);
            let n = nblk * dtype.block_len();
            let x: Vec<f32> = (0..n)
                .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut wd = vec![0f32; n];
            dequantize_row(dtype, &w, &mut wd);
            let norm: f32 = wd.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            let (g, e) = (dot_f32(dtype, &w, &wd, &x), scalar::dot_f32(dtype, &w, &x));
            assert!(
                (g - e).abs() <= 1e-5 * norm,
                "{dtype}: {g} vs {e} (norm {norm})"
            );
        }
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        let want = match (dotprod, std::arch::is_aarch64_feature_detected!("i8mm")) {
            (true, true) => Simd::NeonI8mm,
            (true, false) => Simd::NeonDotprod,
            _ => Simd::Neon,
        };
        assert_eq!(Simd::best(), want);
    }
}
