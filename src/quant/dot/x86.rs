//! AVX2 + FMA + F16C kernels (x86-64).
//!
//! Register tiling: up to `R = 4` weight rows × `T = 2` activation rows per step, so each
//! decoded weight block is reused by every activation row of the tile and each activation block
//! by every weight row. Every (weight row, activation row) pair has its own accumulator and goes
//! through exactly the same sequence of operations whatever the tile shape, so a dot's result
//! never depends on its neighbours (batch size, row range, threads).

use super::QActs;
use crate::quant::{DType, QK};
use std::arch::x86_64::*;
use std::ops::Range;

const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;
const F32: u8 = 3;
const F16: u8 = 4;
const BF16: u8 = 5;
// Types decoded through their 32-value sub-blocks (`tile_sub`).
const Q5_0: u8 = 6;
const Q5_1: u8 = 7;
const Q8_K: u8 = 8;
const Q4_K: u8 = 9;
const Q5_K: u8 = 10;
const Q6_K: u8 = 11;
const Q2_K: u8 = 12;
const Q3_K: u8 = 13;

/// Weight rows per tile.
const TR: usize = 4;
/// Activation rows per tile.
const TT: usize = 2;

/// Bytes of 32 elements of kind `K` (of a whole block for the sub-block kinds).
const fn blk_bytes(k: u8) -> usize {
    match k {
        Q8_0 => 34,
        Q4_0 => 18,
        Q4_1 => 20,
        F32 => 128,
        F16 | BF16 => 64,
        Q5_0 => 22,
        Q5_1 => 24,
        Q8_K => 292,
        Q4_K => 144,
        Q5_K => 176,
        Q6_K => 210,
        Q2_K => 84,
        _ => 110,
    }
}

/// Sub-blocks of 32 per block of kind `K`.
const fn per_block(k: u8) -> usize {
    match k {
        Q8_K | Q4_K | Q5_K | Q6_K | Q2_K | Q3_K => 8,
        _ => 1,
    }
}

pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Fixed-order horizontal sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 32 integer weights of a quantized block as i8, in element order
/// (Q8_0: −128..127, Q4_0: −8..7, Q4_1: 0..15).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn wq<const K: u8>(p: *const u8) -> __m256i {
    if K == Q8_0 {
        _mm256_loadu_si256(p.add(2) as *const __m256i)
    } else {
        let off = if K == Q4_0 { 2 } else { 4 };
        let tmp = _mm_loadu_si128(p.add(off) as *const __m128i);
        let b = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp),
            _mm256_set1_epi8(0x0f),
        );
        if K == Q4_0 {
            _mm256_sub_epi8(b, _mm256_set1_epi8(8))
        } else {
            b
        }
    }
}

/// Eight i32 partial sums of `w · a` for one block of i8 activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn isum8<const K: u8>(qw: __m256i, qa: __m256i) -> __m256i {
    let dot = if K == Q4_1 {
        _mm256_maddubs_epi16(qw, qa)
    } else {
        _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw))
    };
    _mm256_madd_epi16(dot, _mm256_set1_epi16(1))
}

/// The 32 integer weights of a quantized block widened to i16: elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn wq16<const K: u8>(p: *const u8) -> [__m256i; 2] {
    if K == Q8_0 {
        [
            _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2) as *const __m128i)),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18) as *const __m128i)),
        ]
    } else {
        let off = if K == Q4_0 { 2 } else { 4 };
        // byte j holds element j (low nibble) and element j + 16 (high nibble)
        let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(off) as *const __m128i));
        let lo = _mm256_and_si256(b, _mm256_set1_epi16(0x0f));
        let hi = _mm256_srli_epi16(b, 4);
        if K == Q4_0 {
            let eight = _mm256_set1_epi16(8);
            [_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight)]
        } else {
            [lo, hi]
        }
    }
}

/// Eight i32 partial sums of `w · a` for one block of i16 activations (`alo`: elements 0..16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn isum16(w: [__m256i; 2], alo: __m256i, ahi: __m256i) -> __m256i {
    _mm256_add_epi32(_mm256_madd_epi16(w[0], alo), _mm256_madd_epi16(w[1], ahi))
}

/// The f16 at byte `off` of each of the `R` (at most 4) blocks, as f32 lanes 0..R.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_lanes<const R: usize>(p: [*const u8; R], off: usize) -> __m128 {
    let h = |r: usize| (p[r].add(off) as *const u16).read_unaligned() as i32;
    let mut v = _mm_cvtsi32_si128(h(0));
    if R > 1 {
        v = _mm_insert_epi16::<1>(v, h(1));
    }
    if R > 2 {
        v = _mm_insert_epi16::<2>(v, h(2));
    }
    if R > 3 {
        v = _mm_insert_epi16::<3>(v, h(3));
    }
    _mm_cvtph_ps(v)
}

/// Lane `r` (0..4) of `v` in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn splat_lane(v: __m128, r: usize) -> __m256 {
    if r == 0 {
        _mm256_broadcastss_ps(v)
    } else {
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_set1_epi32(r as i32))
    }
}

/// Activation rows of a tile: quantized values, scales and scaled sums.
struct ARows<const T: usize> {
    q: [*const u8; T],
    d: [*const f32; T],
    s: [*const f32; T],
}

/// `out[r][t] = dot(W[r], A[t])` for block-quantized weights and 8-bit (`WIDE = false`) or
/// 16-bit activations.
///
/// The scales of the tile's (up to 4) weight rows travel together in the lanes of one vector;
/// lane r only ever meets row r, so a row's result is the same in every tile shape.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q<const K: u8, const WIDE: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    ahead: usize,
    a: &ARows<T>,
    nb: usize,
) -> [[f32; T]; R] {
    const { assert!(R <= 4) };
    if K >= Q5_0 {
        return tile_sub::<K, WIDE, R, T>(w, ahead, a, nb);
    }
    let bb = blk_bytes(K);
    let qbytes = if WIDE { 2 * QK } else { QK };
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut ms = [_mm_setzero_ps(); T];
    for b in 0..nb {
        let p = w.map(|wr| wr.add(b * bb));
        prefetch_ahead(&p, ahead, bb);
        let dw = f16_lanes(p, 0);
        let mw = if K == Q4_1 {
            f16_lanes(p, 2)
        } else {
            _mm_setzero_ps()
        };
        for t in 0..T {
            let dd = _mm_mul_ps(dw, _mm_set1_ps(*a.d[t].add(b)));
            let qp = a.q[t].add(b * qbytes);
            if WIDE {
                let alo = _mm256_loadu_si256(qp as *const __m256i);
                let ahi = _mm256_loadu_si256(qp.add(32) as *const __m256i);
                for r in 0..R {
                    let i = _mm256_cvtepi32_ps(isum16(wq16::<K>(p[r]), alo, ahi));
                    acc[r][t] = _mm256_fmadd_ps(splat_lane(dd, r), i, acc[r][t]);
                }
            } else {
                let qa = _mm256_loadu_si256(qp as *const __m256i);
                for r in 0..R {
                    let i = _mm256_cvtepi32_ps(isum8::<K>(wq::<K>(p[r]), qa));
                    acc[r][t] = _mm256_fmadd_ps(splat_lane(dd, r), i, acc[r][t]);
                }
            }
            if K == Q4_1 {
                ms[t] = _mm_add_ps(ms[t], _mm_mul_ps(mw, _mm_set1_ps(*a.s[t].add(b))));
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for t in 0..T {
        let mut m = [0f32; 4];
        _mm_storeu_ps(m.as_mut_ptr(), ms[t]);
        for r in 0..R {
            out[r][t] = hsum(acc[r][t]) + m[r];
        }
    }
    out
}

/// What a block of kind `K` says about all its sub-blocks (`value = d·w + m + dm·mq` in the
/// integer form of `quant::blocks`): lane j of `d` and `m` belongs to sub-block j (lane 0 only
/// for the one-sub-block kinds, the other lanes 0).
struct Header {
    d: __m256,
    m: __m256,
    dm: f32,
    /// Q3_K's sixteen 6-bit scales (before subtracting 32).
    sc3: [u8; 16],
}

/// The header of the block at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn header<const K: u8>(p: *const u8) -> Header {
    let lane0 = |v: f32| _mm256_castps128_ps256(_mm_set_ss(v));
    let mut h = Header {
        d: _mm256_set1_ps(0.0),
        m: _mm256_setzero_ps(),
        dm: 0.0,
        sc3: [0; 16],
    };
    match K {
        Q5_0 => h.d = lane0(f16_at(p)),
        Q5_1 => {
            h.d = lane0(f16_at(p));
            h.m = lane0(f16_at(p.add(2)));
        }
        Q8_K => h.d = _mm256_set1_ps((p as *const f32).read_unaligned()),
        Q4_K | Q5_K => {
            // ggml's unpacking of the 6-bit scales (bytes 0..8) and minimums (8..16)
            let q = p.add(4) as *const u32;
            let (q0, q1, q2) = (
                q.read_unaligned(),
                q.add(1).read_unaligned(),
                q.add(2).read_unaligned(),
            );
            let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
            let scales = [q0 & k1, (q2 & k2) | (((q0 >> 6) & k3) << 4)];
            let mins = [q1 & k1, ((q2 >> 4) & k2) | (((q1 >> 6) & k3) << 4)];
            let lanes = |v: [u32; 2]| {
                let b = _mm_set_epi32(0, 0, v[1] as i32, v[0] as i32);
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
            };
            h.d = _mm256_mul_ps(_mm256_set1_ps(f16_at(p)), lanes(scales));
            let dmin = _mm256_set1_ps(f16_at(p.add(2)));
            h.m = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dmin, lanes(mins)));
        }
        Q6_K => h.d = _mm256_set1_ps(f16_at(p.add(208))),
        Q2_K => {
            h.d = _mm256_set1_ps(f16_at(p.add(80)));
            h.dm = -f16_at(p.add(82));
        }
        _ => {
            h.d = _mm256_set1_ps(f16_at(p.add(108)));
            h.sc3 = crate::quant::blocks::scales_q3_k(std::slice::from_raw_parts(p.add(96), 12));
        }
    }
    h
}

/// `v` (32 bytes of u8 or i8 values, element order) widened to two i16 vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen<const SIGNED: bool>(v: __m256i) -> [__m256i; 2] {
    let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    if SIGNED {
        [_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)]
    } else {
        [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)]
    }
}

/// The `bits`-wide field at bit `shift` of each of the 32 bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bit_field(p: *const u8, shift: u32, mask: u8) -> __m256i {
    let v = _mm256_loadu_si256(p as *const __m256i);
    let v = _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32));
    _mm256_and_si256(v, _mm256_set1_epi8(mask as i8))
}

/// 0xff in each byte of the 32 at `p` whose bit `bit` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bit_mask(p: *const u8, bit: u32) -> __m256i {
    let b = _mm256_set1_epi8((1u8 << bit) as i8);
    let v = _mm256_and_si256(_mm256_loadu_si256(p as *const __m256i), b);
    _mm256_cmpeq_epi8(v, b)
}

/// 16 in element i of 32 where bit i of `qh` is set, else 0 (Q5_0/Q5_1's fifth bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qh_bits(qh: u32) -> __m256i {
    // byte i of the shuffle picks the byte of qh that holds bit i
    let bytes = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// The 32 codes (0..31) of the Q5_0 / Q5_1 block at `p` as bytes, element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn five_bit_codes<const K: u8>(p: *const u8) -> __m256i {
    let (qh, nib) = if K == Q5_0 { (2, 6) } else { (4, 8) };
    let nib = _mm_loadu_si128(p.add(nib) as *const __m128i);
    let q = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(nib, 4), nib),
        _mm256_set1_epi8(0x0f),
    );
    _mm256_or_si256(q, qh_bits((p.add(qh) as *const u32).read_unaligned()))
}

/// Sub-block `j` of the Q6_K block at `p`: its 32 values (−32..31) as bytes, element order,
/// and where the integer scales of its two halves of 16 are.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_codes(p: *const u8, j: usize) -> (__m256i, *const i8) {
    let (n, k) = (j / 4, j % 4);
    let lo = bit_field(p.add(64 * n + 32 * (k & 1)), 4 * (k as u32 / 2), 0x0f);
    let hi = bit_field(p.add(128 + 32 * n), 2 * k as u32, 3);
    let q = _mm256_sub_epi8(
        _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)),
        _mm256_set1_epi8(32),
    );
    (q, p.add(192 + 8 * n + 2 * k) as *const i8)
}

/// Two i16 vectors times the integer scales of their 16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale16(w: [__m256i; 2], sc: [i16; 2]) -> [__m256i; 2] {
    [
        _mm256_mullo_epi16(w[0], _mm256_set1_epi16(sc[0])),
        _mm256_mullo_epi16(w[1], _mm256_set1_epi16(sc[1])),
    ]
}

/// The integer weights of sub-block `j` of the block at `p` as i16 (elements 0..16, 16..32)
/// with the per-16 integer scales multiplied in, and Q2_K's per-16 minimums as i16 lanes;
/// decoded as `quant::blocks::sub_block` does. Products with 16-bit activations stay inside i32
/// lanes: |w| ≤ 4096 (Q6_K).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quants<const K: u8>(p: *const u8, j: usize, h: &Header) -> ([__m256i; 2], [__m256i; 2]) {
    let zero = [_mm256_setzero_si256(); 2];
    match K {
        Q5_0 | Q5_1 => {
            let q = five_bit_codes::<K>(p);
            if K == Q5_0 {
                (
                    widen::<true>(_mm256_sub_epi8(q, _mm256_set1_epi8(16))),
                    zero,
                )
            } else {
                (widen::<false>(q), zero)
            }
        }
        Q8_K => (
            widen::<true>(_mm256_loadu_si256(p.add(4 + 32 * j) as *const __m256i)),
            zero,
        ),
        Q4_K | Q5_K => {
            let qs = if K == Q4_K { 16 } else { 48 };
            let mut q = bit_field(p.add(qs + 32 * (j / 2)), 4 * (j as u32 % 2), 0x0f);
            if K == Q5_K {
                let hb = bit_mask(p.add(16), j as u32);
                q = _mm256_or_si256(q, _mm256_and_si256(hb, _mm256_set1_epi8(16)));
            }
            (widen::<false>(q), zero)
        }
        Q6_K => {
            let (q, sc) = q6_k_codes(p, j);
            (
                scale16(widen::<true>(q), [*sc as i16, *sc.add(1) as i16]),
                zero,
            )
        }
        Q2_K => {
            let (n, k) = (j / 4, j % 4);
            let q = bit_field(p.add(16 + 32 * n), 2 * k as u32, 3);
            let sc = [*p.add(8 * n + 2 * k), *p.add(8 * n + 2 * k + 1)];
            (
                scale16(widen::<false>(q), sc.map(|v| (v & 0xf) as i16)),
                sc.map(|v| _mm256_set1_epi16((v >> 4) as i16)),
            )
        }
        _ => {
            // Q3_K: values whose (inverted) high bit is clear lose 4
            let (n, k) = (j / 4, j % 4);
            let low = bit_field(p.add(32 + 32 * n), 2 * k as u32, 3);
            let hb = bit_mask(p, (4 * n + k) as u32);
            let q = _mm256_sub_epi8(low, _mm256_andnot_si256(hb, _mm256_set1_epi8(4)));
            let sc = [
                h.sc3[8 * n + 2 * k] as i16 - 32,
                h.sc3[8 * n + 2 * k + 1] as i16 - 32,
            ];
            (scale16(widen::<true>(q), sc), zero)
        }
    }
}

/// Kinds whose codes meet 8-bit activations as bytes (`maddubs`, 32 values per product)
/// instead of being widened to i16 with them: the real pair's types.
const fn byte_codes(k: u8) -> bool {
    matches!(k, Q5_0 | Q4_K | Q6_K)
}

/// Sub-block `j` of the block at `p` for 8-bit activations (kinds with `byte_codes`): its 32
/// codes as bytes in element order (Q4_K: 0..15; Q5_0: 0..31, its offset of 16 left to the
/// caller; Q6_K: −32..31), and the integer scale of each 16 values as i16 lanes (lanes 0..8
/// for values 0..16; 1 where the scales are in the header's).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn code_bytes<const K: u8>(p: *const u8, j: usize) -> (__m256i, __m256i) {
    let ones = _mm256_set1_epi16(1);
    match K {
        Q5_0 => (five_bit_codes::<K>(p), ones),
        Q4_K => (
            bit_field(p.add(16 + 32 * (j / 2)), 4 * (j as u32 % 2), 0x0f),
            ones,
        ),
        _ => {
            let (q, sc) = q6_k_codes(p, j);
            let scales = _mm256_set_m128i(
                _mm_set1_epi16(*sc.add(1) as i16),
                _mm_set1_epi16(*sc as i16),
            );
            (q, scales)
        }
    }
}

/// Eight i32 partial sums of codes `c` with scales `sc` (from `code_bytes`) times 32 8-bit
/// activations `a`. Q6_K's signed codes go through `maddubs` as |c| and a·sign(c), as in
/// `isum8`; no pair sum saturates (|c| ≤ 32, |a| ≤ 127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn isum_bytes<const K: u8>(c: __m256i, sc: __m256i, a: __m256i) -> __m256i {
    let pairs = if K == Q6_K {
        _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(a, c))
    } else {
        _mm256_maddubs_epi16(c, a)
    };
    _mm256_madd_epi16(pairs, sc)
}

/// As `tile_q`, for the types decoded through sub-blocks. Per block, each weight row's header
/// is decoded once and its scales meet the activation scales of all its sub-blocks in one
/// vector product; per sub-block, the i16 weights (for 8-bit activations and `byte_codes`
/// kinds, the codes as bytes) meet every activation row of the tile. Per (row, activation
/// row) the same operations run in every tile shape.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_sub<const K: u8, const WIDE: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    ahead: usize,
    a: &ARows<T>,
    nb: usize,
) -> [[f32; T]; R] {
    let (bb, per) = (blk_bytes(K), per_block(K));
    let qbytes = if WIDE { 2 * QK } else { QK };
    let has_min = K == Q5_1 || K == Q4_K || K == Q5_K;
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut ms = [[_mm256_setzero_ps(); T]; R];
    for i in 0..nb / per {
        let p = w.map(|wr| wr.add(i * bb));
        prefetch_ahead(&p, ahead, bb);
        let hdr = p.map(|p| header::<K>(p));
        // activation scales (and scaled sums) of the block's sub-blocks, lane j for sub-block j
        let lanes = |v: *const f32| {
            if per == 8 {
                _mm256_loadu_ps(v.add(8 * i))
            } else {
                _mm256_set1_ps(*v.add(i))
            }
        };
        let mut dd = [[_mm256_setzero_ps(); T]; R];
        for t in 0..T {
            let (da, sa) = (lanes(a.d[t]), lanes(a.s[t]));
            for r in 0..R {
                dd[r][t] = _mm256_mul_ps(hdr[r].d, da);
                if has_min {
                    ms[r][t] = _mm256_fmadd_ps(hdr[r].m, sa, ms[r][t]);
                }
            }
        }
        for j in 0..per {
            let b = i * per + j;
            if !WIDE && byte_codes(K) {
                let mut codes = [(_mm256_setzero_si256(), _mm256_setzero_si256()); R];
                for (r, c) in codes.iter_mut().enumerate() {
                    *c = code_bytes::<K>(p[r], j);
                }
                for t in 0..T {
                    let qa = _mm256_loadu_si256(a.q[t].add(b * qbytes) as *const __m256i);
                    // Q5_0's offset: Σ(c − 16)·a = Σc·a − 16·Σa, with Σa in the same lanes
                    let offset = if K == Q5_0 {
                        let ones = _mm256_set1_epi16(1);
                        let sums = _mm256_maddubs_epi16(_mm256_set1_epi8(1), qa);
                        _mm256_slli_epi32::<4>(_mm256_madd_epi16(sums, ones))
                    } else {
                        _mm256_setzero_si256()
                    };
                    for (r, &(c, sc)) in codes.iter().enumerate() {
                        let isum = _mm256_sub_epi32(isum_bytes::<K>(c, sc, qa), offset);
                        let scale = splat_lane8(dd[r][t], j);
                        acc[r][t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[r][t]);
                    }
                }
                continue;
            }
            let wq: [_; R] = std::array::from_fn(|r| quants::<K>(p[r], j, &hdr[r]));
            for t in 0..T {
                let qp = a.q[t].add(b * qbytes);
                let act = if WIDE {
                    [
                        _mm256_loadu_si256(qp as *const __m256i),
                        _mm256_loadu_si256(qp.add(32) as *const __m256i),
                    ]
                } else {
                    widen::<true>(_mm256_loadu_si256(qp as *const __m256i))
                };
                for r in 0..R {
                    let (wv, mq) = &wq[r];
                    let isum = _mm256_add_epi32(
                        _mm256_madd_epi16(wv[0], act[0]),
                        _mm256_madd_epi16(wv[1], act[1]),
                    );
                    let scale = splat_lane8(dd[r][t], j);
                    acc[r][t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[r][t]);
                    if K == Q2_K {
                        let m = _mm256_add_epi32(
                            _mm256_madd_epi16(mq[0], act[0]),
                            _mm256_madd_epi16(mq[1], act[1]),
                        );
                        let dm = _mm256_set1_ps(hdr[r].dm * *a.d[t].add(b));
                        acc[r][t] = _mm256_fmadd_ps(dm, _mm256_cvtepi32_ps(m), acc[r][t]);
                    }
                }
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum(acc[r][t]) + if has_min { hsum(ms[r][t]) } else { 0.0 };
        }
    }
    out
}

/// Lane `j` (0..8) of `v` in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn splat_lane8(v: __m256, j: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j as i32))
}

/// 32 weights of kind `K` at `p` as f32, exactly as `dequantize_row` computes them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32<const K: u8>(p: *const u8) -> [__m256; 4] {
    match K {
        F32 => {
            let f = p as *const f32;
            [
                _mm256_loadu_ps(f),
                _mm256_loadu_ps(f.add(8)),
                _mm256_loadu_ps(f.add(16)),
                _mm256_loadu_ps(f.add(24)),
            ]
        }
        F16 => {
            let h = p as *const __m128i;
            [
                _mm256_cvtph_ps(_mm_loadu_si128(h)),
                _mm256_cvtph_ps(_mm_loadu_si128(h.add(1))),
                _mm256_cvtph_ps(_mm_loadu_si128(h.add(2))),
                _mm256_cvtph_ps(_mm_loadu_si128(h.add(3))),
            ]
        }
        BF16 => {
            let h = p as *const __m128i;
            let cv =
                |v: __m128i| _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
            [
                cv(_mm_loadu_si128(h)),
                cv(_mm_loadu_si128(h.add(1))),
                cv(_mm_loadu_si128(h.add(2))),
                cv(_mm_loadu_si128(h.add(3))),
            ]
        }
        _ => {
            let q = wq::<K>(p);
            let d = _mm256_set1_ps(f16_at(p));
            let lo = _mm256_castsi256_si128(q);
            let hi = _mm256_extracti128_si256(q, 1);
            let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
            let mut out = [_mm256_setzero_ps(); 4];
            for (o, part) in out.iter_mut().zip(parts) {
                let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part)));
                *o = if K == Q4_1 {
                    _mm256_add_ps(v, _mm256_set1_ps(f16_at(p.add(2))))
                } else {
                    v
                };
            }
            out
        }
    }
}

/// The 32 weights of sub-block `b` of the row at `row` as f32, through the reference decoder
/// (the exact path's rounding is `dequantize_row`'s).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_sub<const K: u8>(row: *const u8, b: usize) -> [__m256; 4] {
    let dtype = match K {
        Q5_0 => DType::Q5_0,
        Q5_1 => DType::Q5_1,
        Q8_K => DType::Q8_K,
        Q4_K => DType::Q4_K,
        Q5_K => DType::Q5_K,
        Q6_K => DType::Q6_K,
        Q2_K => DType::Q2_K,
        _ => DType::Q3_K,
    };
    let (bb, per) = (blk_bytes(K), per_block(K));
    let blk = std::slice::from_raw_parts(row.add(b / per * bb), bb);
    let mut v = [0f32; QK];
    crate::quant::sub_block(dtype, blk, b % per).dequantize(&mut v);
    let f = v.as_ptr();
    [0, 8, 16, 24].map(|o| _mm256_loadu_ps(f.add(o)))
}

/// One weight of float kind `K` (for row tails shorter than 32).
#[inline]
unsafe fn float_at<const K: u8>(p: *const u8, i: usize) -> f32 {
    match K {
        F32 => (p as *const f32).add(i).read_unaligned(),
        F16 => half::f16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32(),
        _ => half::bf16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32(),
    }
}

/// `out[r][t] = dot(W[r], x[t])` on the exact path (weights dequantized, f32 products).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_f<const K: u8, const R: usize, const T: usize>(
    w: [*const u8; R],
    x: [*const f32; T],
    cols: usize,
) -> [[f32; T]; R] {
    let bb = blk_bytes(K);
    let nb = cols / QK;
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wv = if K >= Q5_0 {
                load_sub::<K>(w[r], b)
            } else {
                load32::<K>(w[r].add(b * bb))
            };
            for t in 0..T {
                let xp = x[t].add(b * QK);
                let p01 = _mm256_fmadd_ps(
                    wv[1],
                    _mm256_loadu_ps(xp.add(8)),
                    _mm256_mul_ps(wv[0], _mm256_loadu_ps(xp)),
                );
                let p23 = _mm256_fmadd_ps(
                    wv[3],
                    _mm256_loadu_ps(xp.add(24)),
                    _mm256_mul_ps(wv[2], _mm256_loadu_ps(xp.add(16))),
                );
                acc[r][t] = _mm256_add_ps(acc[r][t], _mm256_add_ps(p01, p23));
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut tail = 0f32;
            for i in nb * QK..cols {
                tail += float_at::<K>(w[r], i) * *x[t].add(i);
            }
            out[r][t] = hsum(acc[r][t]) + tail;
        }
    }
    out
}

/// How far ahead a single-row pass asks for its rows.
const ROWS_AHEAD: usize = 2;

/// Asks for the bytes `ahead` past the blocks of `bb` bytes at `p` (one per row) to be
/// brought into the cache, each line once as a stream of blocks is read: the lines that start
/// within those bytes (none where `ahead` is 0). Asking for a whole tile's rows at once stalled
/// the core until memory answered, so that memory time and compute time added up.
#[inline(always)]
fn prefetch_ahead<const R: usize>(p: &[*const u8; R], ahead: usize, bb: usize) {
    if ahead == 0 {
        return;
    }
    for &row in p {
        let far = row.wrapping_add(ahead);
        let first = (far as usize).next_multiple_of(64) - far as usize;
        for o in (first..bb).step_by(64) {
            // SAFETY: a prefetch never faults, whatever the address
            unsafe { _mm_prefetch::<_MM_HINT_T0>(far.wrapping_add(o) as *const i8) };
        }
    }
}

/// Runs `tile(row0, t0)` over all rows and activation rows in tiles of up to `TR × TT`
/// (`one_row`: tiles of a single weight row).
#[inline(always)]
fn for_tiles(
    rows: Range<usize>,
    n_t: usize,
    one_row: bool,
    mut t4x2: impl FnMut(usize, usize),
    mut t4x1: impl FnMut(usize, usize),
    mut t1x2: impl FnMut(usize, usize),
    mut t1x1: impl FnMut(usize, usize),
) {
    let mut r = rows.start;
    while r < rows.end {
        let full = !one_row && r + TR <= rows.end;
        let mut t = 0;
        while t + TT <= n_t {
            if full {
                t4x2(r, t)
            } else {
                t1x2(r, t)
            }
            t += TT;
        }
        if t < n_t {
            if full {
                t4x1(r, t)
            } else {
                t1x1(r, t)
            }
        }
        r += if full { TR } else { 1 };
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matmul_q_k<const K: u8, const WIDE: bool, Q>(
    w: &[u8],
    rb: usize,
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    let cols = acts.cols;
    let nb = cols / QK;
    let qsz = std::mem::size_of::<Q>();
    let base = rows.start;
    let wp = w.as_ptr();
    let qp = acts.qs.as_ptr() as *const u8;
    let (dp, sp) = (acts.d.as_ptr(), acts.s.as_ptr());
    let op = out.as_mut_ptr();
    let arows = |t0: usize| -> ARows<TT> {
        let ts = [t0, (t0 + 1).min(acts.rows() - 1)];
        ARows {
            q: ts.map(|t| qp.add(t * cols * qsz)),
            d: ts.map(|t| dp.add(t * nb)),
            s: ts.map(|t| sp.add(t * nb)),
        }
    };
    let a1 = |t0: usize| -> ARows<1> {
        ARows {
            q: [qp.add(t0 * cols * qsz)],
            d: [dp.add(t0 * nb)],
            s: [sp.add(t0 * nb)],
        }
    };
    let store = |r0: usize, t0: usize, res: &[f32], rr: usize, tt: usize| {
        for r in 0..rr {
            for t in 0..tt {
                *op.add((t0 + t) * out_stride + r0 + r - base) = res[r * tt + t];
            }
        }
    };
    let wr = |r0: usize| -> [*const u8; TR] { [0, 1, 2, 3].map(|i| wp.add((r0 + i) * rb)) };
    // the rows of a tile are separate short streams, which the hardware prefetchers follow
    // poorly: each row asks for the same bytes of its row in the tile after next
    let tile_ahead = 2 * TR * rb;
    // A single activation row has nothing to share between weight rows but its loads, and on
    // long rows (the output head, the FFN down projection) four interleaved streams run at half
    // the bandwidth of one sequential stream (measured on Zen 3): there, one row at a time.
    let one_row = acts.rows() == 1 && rb >= 512;
    for_tiles(
        rows.clone(),
        acts.rows(),
        one_row,
        |r, t| {
            store(
                r,
                t,
                tile_q::<K, WIDE, TR, TT>(wr(r), tile_ahead, &arows(t), nb).as_flattened(),
                TR,
                TT,
            )
        },
        |r, t| {
            store(
                r,
                t,
                tile_q::<K, WIDE, TR, 1>(wr(r), tile_ahead, &a1(t), nb).as_flattened(),
                TR,
                1,
            )
        },
        |r, t| {
            store(
                r,
                t,
                tile_q::<K, WIDE, 1, TT>([wp.add(r * rb)], 0, &arows(t), nb).as_flattened(),
                1,
                TT,
            )
        },
        |r, t| {
            let ahead = if one_row { ROWS_AHEAD * rb } else { 0 };
            store(
                r,
                t,
                tile_q::<K, WIDE, 1, 1>([wp.add(r * rb)], ahead, &a1(t), nb).as_flattened(),
                1,
                1,
            )
        },
    );
}

/// `out[t * out_stride + r - rows.start] = dot(W[r], A[t])` with 8- or 16-bit activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`available()`); `w` holds every row in `rows`.
pub unsafe fn matmul_q<const WIDE: bool, Q>(
    dtype: DType,
    w: &[u8],
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype.row_bytes(acts.cols);
    assert!(w.len() >= rows.end * rb);
    assert!(acts.rows() == 0 || out.len() >= (acts.rows() - 1) * out_stride + rows.len());
    match dtype {
        DType::Q8_0 => matmul_q_k::<Q8_0, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q4_0 => matmul_q_k::<Q4_0, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q4_1 => matmul_q_k::<Q4_1, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q5_0 => matmul_q_k::<Q5_0, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q5_1 => matmul_q_k::<Q5_1, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q8_K => matmul_q_k::<Q8_K, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q4_K => matmul_q_k::<Q4_K, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q5_K => matmul_q_k::<Q5_K, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q6_K => matmul_q_k::<Q6_K, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q2_K => matmul_q_k::<Q2_K, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::Q3_K => matmul_q_k::<Q3_K, WIDE, Q>(w, rb, rows, acts, out, out_stride),
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("float weights use the f32 path"),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matmul_f32_k<const K: u8>(
    w: &[u8],
    rb: usize,
    cols: usize,
    rows: Range<usize>,
    x: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let n_t = x.len() / cols;
    let base = rows.start;
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let op = out.as_mut_ptr();
    let store = |r0: usize, t0: usize, res: &[f32], rr: usize, tt: usize| {
        for r in 0..rr {
            for t in 0..tt {
                *op.add((t0 + t) * out_stride + r0 + r - base) = res[r * tt + t];
            }
        }
    };
    let wr = |r0: usize| -> [*const u8; TR] { [0, 1, 2, 3].map(|i| wp.add((r0 + i) * rb)) };
    let x2 = |t0: usize| -> [*const f32; TT] { [xp.add(t0 * cols), xp.add((t0 + 1) * cols)] };
    for_tiles(
        rows.clone(),
        n_t,
        false,
        |r, t| {
            store(
                r,
                t,
                tile_f::<K, TR, TT>(wr(r), x2(t), cols).as_flattened(),
                TR,
                TT,
            )
        },
        |r, t| {
            store(
                r,
                t,
                tile_f::<K, TR, 1>(wr(r), [xp.add(t * cols)], cols).as_flattened(),
                TR,
                1,
            )
        },
        |r, t| {
            store(
                r,
                t,
                tile_f::<K, 1, TT>([wp.add(r * rb)], x2(t), cols).as_flattened(),
                1,
                TT,
            )
        },
        |r, t| {
            store(
                r,
                t,
                tile_f::<K, 1, 1>([wp.add(r * rb)], [xp.add(t * cols)], cols).as_flattened(),
                1,
                1,
            )
        },
    );
}

/// As `matmul_q`, on the exact path: any weight type times f32 activations `x`.
///
/// # Safety
/// As `matmul_q`; `cols` must be a multiple of 32 for quantized weights.
pub unsafe fn matmul_f32(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    x: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype.row_bytes(cols);
    let n_t = x.len() / cols;
    assert!(w.len() >= rows.end * rb && x.len() == n_t * cols);
    assert!(n_t == 0 || out.len() >= (n_t - 1) * out_stride + rows.len());
    match dtype {
        DType::F32 => matmul_f32_k::<F32>(w, rb, cols, rows, x, out, out_stride),
        DType::F16 => matmul_f32_k::<F16>(w, rb, cols, rows, x, out, out_stride),
        DType::BF16 => matmul_f32_k::<BF16>(w, rb, cols, rows, x, out, out_stride),
        DType::Q8_0 => matmul_f32_k::<Q8_0>(w, rb, cols, rows, x, out, out_stride),
        DType::Q4_0 => matmul_f32_k::<Q4_0>(w, rb, cols, rows, x, out, out_stride),
        DType::Q4_1 => matmul_f32_k::<Q4_1>(w, rb, cols, rows, x, out, out_stride),
        DType::Q5_0 => matmul_f32_k::<Q5_0>(w, rb, cols, rows, x, out, out_stride),
        DType::Q5_1 => matmul_f32_k::<Q5_1>(w, rb, cols, rows, x, out, out_stride),
        DType::Q8_K => matmul_f32_k::<Q8_K>(w, rb, cols, rows, x, out, out_stride),
        DType::Q4_K => matmul_f32_k::<Q4_K>(w, rb, cols, rows, x, out, out_stride),
        DType::Q5_K => matmul_f32_k::<Q5_K>(w, rb, cols, rows, x, out, out_stride),
        DType::Q6_K => matmul_f32_k::<Q6_K>(w, rb, cols, rows, x, out, out_stride),
        DType::Q2_K => matmul_f32_k::<Q2_K>(w, rb, cols, rows, x, out, out_stride),
        DType::Q3_K => matmul_f32_k::<Q3_K>(w, rb, cols, rows, x, out, out_stride),
    }
}

/// Quantizes blocks of 32 values to i8 (`WIDE = false`, |q| ≤ 127) or i16 (|q| ≤ 32767),
/// bit-identical to the scalar version (same scale arithmetic, round half to even).
///
/// # Safety
/// As `matmul_q`; `qs` holds `x.len()` values of the chosen width, `d` and `s` a value per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize<const WIDE: bool>(x: &[f32], qs: *mut u8, d: &mut [f32], s: &mut [f32]) {
    let qmax = if WIDE { 32767.0f32 } else { 127.0 };
    let sign = _mm256_set1_ps(-0.0);
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let p = xb.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let dd = amax / qmax;
        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let i = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v, idv),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
        let isum = _mm_cvtsi128_si32(s4);
        // packs interleaves 128-bit lanes; the permutes restore element order
        let p01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i[0], i[1]), 0b11_01_10_00);
        let p23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i[2], i[3]), 0b11_01_10_00);
        if WIDE {
            let o = qs.add(b * QK * 2) as *mut __m256i;
            _mm256_storeu_si256(o, p01);
            _mm256_storeu_si256(o.add(1), p23);
        } else {
            let q = _mm256_permute4x64_epi64(_mm256_packs_epi16(p01, p23), 0b11_01_10_00);
            _mm256_storeu_si256(qs.add(b * QK) as *mut __m256i, q);
        }
        d[b] = dd;
        s[b] = dd * isum as f32;
    }
}
