//! AVX-512 VNNI kernels (x86-64): sixteen weight rows at a time, one row per 32-bit lane.
//!
//! With rows in lanes, a block of 16 rows is decoded into pairs of i16 weights, and every token
//! of the pass then takes one `vpdpwssd` per pair of weights for all 16 rows, its two
//! activations broadcast from memory. The float work per sub-block of 32 is also done for 16
//! rows at once. So a pass over T tokens reads the weights once, and each extra token costs
//! about one instruction per 32 weights and row. The pairs go straight into the dots of up to
//! eight tokens at a time (more tokens take further runs over the block, from L1); Q6_K's,
//! dearer to decode, are decoded once per block into `Decoded` for all the tokens.
//!
//! Each lane ends a sub-block with the exact integer sum of that row's 32 products, and the
//! floats then follow `scalar::add_sub_block` step for step, so these kernels give the scalar
//! reference's bits, at every T, row range and thread count.
//!
//! Decoding reads the 16 rows with plain loads and an in-register transpose (`lanes4`,
//! `lanes8`): a dword of 4 bytes from each row lands in its lane. Gathers did this once, and
//! cost up to a fifth of a kernel on Zen 5. Weights packed at load (`packed`: each block of 16
//! rows stored as those transposes leave it) need plain loads only, and are read as one
//! sequential stream; the kernels take both layouts (`Rows`). Every load also asks for the
//! weights the kernel will read a little later, so that memory works while the dots do.
//! The weights of a dword come out as pairs (k, k+2) and (k+1, k+3); the activations are
//! reordered once per call to match, and interleaved by token, so that the tokens of a pass
//! take their pairs at fixed displacements from one pointer (`permute`). Q6_K's weights are
//! multiplied by their scales while decoding, so that each token's sums need no further integer
//! work.
//!
//! 8-bit activations take the `quads` kernels instead: four weights per lane as bytes, one
//! `vpdpbusd` per four values, half the instructions. So does Q6_K with 16-bit activations up to
//! three tokens, each activation split into two bytes: its codes cost more to decode into pairs
//! than the extra dots cost.
//!
//! Types without a kernel here (Q5_1, Q5_K, Q8_K, Q2_K, Q3_K) keep the AVX2 kernels, whose
//! results are also the same at every T.

use super::{x86, ActInt, QActs};
use crate::quant::{DType, QK};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// The loop every kernel here shares: the rows 16 at a time, the tokens up to `TMAX` at a
/// time, the blocks of each row in order. The body adds block `$i` of the 16 rows at
/// `$blk + $offs[r]` (or packed at `$blk`, when `$packed`) to the accumulators `$acc` of
/// tokens `$t0..`, which are then stored (rows past the range repeat its last row, or are
/// packed as zeros, and are not stored). A macro, because the compiler would not inline a
/// closure this large, and each block then paid a call.
macro_rules! row_groups {
    (
        ($w:expr, $packed:expr, $dtype:expr, $rows:expr, $n_t:expr, $blocks:expr, $out:expr, $out_stride:expr),
        |$blk:ident, $offs:ident, $i:ident, $t0:ident, $acc:ident| $body:block
    ) => {{
        let (rows, n_t, blocks, out_stride) = ($rows, $n_t, $blocks, $out_stride);
        // packed: each block of 16 rows is one run of `G * bb` bytes (see `packed`)
        let bb = if $packed {
            packed::image_bytes($dtype)
        } else {
            block_bytes($dtype)
        };
        let rb = blocks * bb;
        let wp = $w.as_ptr();
        let mut accs = [_mm512_setzero_ps(); TMAX];
        let mut r0 = rows.start;
        while r0 < rows.end {
            let valid = G.min(rows.end - r0);
            let offs: [i32; G] = std::array::from_fn(|i| (i.min(valid - 1) * rb) as i32);
            let group = wp.add(r0 * rb);
            for $t0 in (0..n_t).step_by(TMAX) {
                let nt = TMAX.min(n_t - $t0);
                accs[..nt].fill(_mm512_setzero_ps());
                for $i in 0..blocks {
                    let stride = if $packed { G * bb } else { bb };
                    let ($blk, $offs, $acc) = (group.add($i * stride), &offs, &mut accs[..nt]);
                    $body
                }
                let mask: __mmask16 = if valid == G { !0 } else { (1 << valid) - 1 };
                for (t, a) in accs[..nt].iter().enumerate() {
                    let o = $out
                        .as_mut_ptr()
                        .add(($t0 + t) * out_stride + r0 - rows.start);
                    _mm512_mask_storeu_ps(o, mask, *a);
                }
            }
            r0 += G;
        }
    }};
}

/// `$run!(N)` with N the literal for `$n` tokens (1 to 8; more take 8): the kernels are
/// generic over their token count, so that each count's accumulators stay in registers.
macro_rules! by_token_count {
    ($n:expr, $run:ident) => {
        match $n {
            1 => $run!(1),
            2 => $run!(2),
            3 => $run!(3),
            4 => $run!(4),
            5 => $run!(5),
            6 => $run!(6),
            7 => $run!(7),
            _ => $run!(8),
        }
    };
}

mod packed;
mod quads;

pub(super) use packed::{bytes as packed_bytes, pack};

/// Weight rows per group: one per 32-bit lane.
pub(super) const G: usize = 16;
/// Tokens whose accumulators a group keeps at once (more are done in further sweeps).
const TMAX: usize = 64;
/// How far ahead of each vector read from packed weights the kernels prefetch, in bytes.
/// Measured on the 1.5B's pass on a Zen 5, 2 threads, median ms at one and eight tokens:
/// 2 KB 38 and 91–98, 4 KB 28–30 and 77–83, 8 KB 29–31 and 76–110, 16 KB 26–40 and 77–88.
const PACKED_AHEAD: usize = 4096;

pub fn available() -> bool {
    x86::available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether `dtype` has a kernel here.
pub fn supports(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q4_K | DType::Q6_K
    )
}

/// One Q6_K block of 16 rows, decoded: for sub-block j, `w[j][p]` holds pair p of every row's
/// i16 weights (pairs 0..8 are values 0..16, pairs 8..16 values 16..32, each pair in the order
/// `permute` gives the activations), `d` the rows' block scale.
///
/// The weights are already multiplied by their integer scale (one per 16 values) and offset,
/// which costs two operations per pair vector and none per token.
struct Decoded {
    w: [[__m512i; 16]; 8],
    d: __m512,
}

/// Tokens that take a block's pairs straight into their dots at once (the types other than
/// Q6_K, with 16-bit activations): more tokens take further runs of at most this many, as even
/// as can be, each decoding the block again from L1. Measured at 1536×1536 in L2 on a Zen 5
/// (`cargo bench --bench cpu_kernels -- q4_k q8_0 q5_0 q4_1 avx512vnni t=1,8,9,12,16,64`),
/// against decoding each block once into pairs for all the tokens (the old way from nine
/// tokens on), µs: Q4_K at 9, 12, 16 and 64 tokens 138–148, 172–185, 228–237, 960–1046
/// against 216–265, 241–263, 317, 1118–1236; Q4_1 at 12 tokens 197–217 against 231–255;
/// Q8_0 the same; Q5_0 at 12 tokens 234–252 against 204–218. Runs of 6 at most: 143–149 at
/// T=8 against 112–127, no better elsewhere.
const DIRECT_RUN: usize = 8;

/// From this many tokens on, Q6_K with 16-bit activations takes the pairs kernels, whose
/// weights carry their scales (`Decoded`); below, the quads ones, which apply the scales to each
/// token's sums but decode less, and split each activation in two bytes. With 8-bit activations
/// the quads serve every count. Measured at 1536×1536 in L2 on a Zen 5 (`cargo bench --bench
/// cpu_kernels -- q6_k`), µs at T = 3, 4, 8: 16-bit quads 105, 132–161, 229; pairs 145–151,
/// 138–144, 190–196; 8-bit quads 73–76, 87–90, 160–168 against the pairs' 145–152, 168–172,
/// 193–199 (and equal at 32 and 64).
const Q6_K_PAIRS_FROM: usize = 4;

/// Bytes of one block of `dtype`.
pub(super) const fn block_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q8_0 => 34,
        DType::Q4_0 => 18,
        DType::Q4_1 => 20,
        DType::Q5_0 => 22,
        DType::Q4_K => 144,
        _ => 210,
    }
}

/// Sub-blocks of 32 per block.
pub(super) const fn per_block(dtype: DType) -> usize {
    match dtype {
        DType::Q4_K | DType::Q6_K => 8,
        _ => 1,
    }
}

/// The 16 rows of one block, as the kernels read them: in the file's layout, row r at `p[r]`
/// (`P = false`), or packed at load (`packed`), where `p[0]` is the block and each dword of
/// the 16 rows is one 64-byte vector already.
#[derive(Clone, Copy)]
pub(super) struct Rows<const P: bool> {
    pub(super) p: [*const u8; G],
    /// Where the packed image of a block has its 2 bytes of padding (see `packed`).
    pub(super) pad_at: usize,
    /// File layout: bytes from a row's block to the same block of the row G rows on, in the
    /// next group, which each load prefetches (one stream per row would be more than the
    /// hardware prefetchers follow; one request per load, not a block's at once: `packed`).
    next_group: usize,
}

impl<const P: bool> Rows<P> {
    /// The block of type `K` at `base + offs[r]`, or (packed) at `base`.
    #[inline(always)]
    pub(super) unsafe fn new<const K: u8>(base: *const u8, offs: &[i32; G]) -> Self {
        Rows {
            p: std::array::from_fn(|i| if P { base } else { base.add(offs[i] as usize) }),
            pad_at: packed::pad_at(dtype_of(K)),
            // rows lie `offs[1]` apart (a last group of one row has no next group)
            next_group: G * offs[1] as usize,
        }
    }

    /// The packed vector of dword `off / 4` (a byte offset in the file's block), prefetching
    /// the line `PACKED_AHEAD` past it. One prefetch per line read spreads them over the
    /// block's work: issued all at once for a block, they stalled the core until memory
    /// answered, so that memory time and compute time added up (the 1.5B's pass at eight
    /// tokens took 124–136 ms that way, 70–86 ms this way; at one token 37–59 and 27–37).
    #[inline(always)]
    unsafe fn packed(&self, off: usize, g: usize) -> __m512i {
        let image = if off >= self.pad_at { off + 2 } else { off };
        debug_assert!(image % 4 == 0);
        let at = self.p[0].add(64 * (image / 4 + g));
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PACKED_AHEAD) as *const i8);
        _mm512_loadu_si512(at as *const _)
    }
}

/// Dwords `off/4 .. off/4 + 8` of each of the 16 rows, rows in lanes: vector g holds dword g
/// of every row. Packed rows are eight loads; the file's rows take eight 32-byte loads per 8
/// rows and an 8×8 transpose in each half, far cheaper than gathers.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lanes8<const P: bool>(r: &Rows<P>, off: usize) -> [__m512i; 8] {
    if P {
        return std::array::from_fn(|g| r.packed(off, g));
    }
    let (p, next) = (&r.p, r.next_group);
    let ld = |r: usize| {
        let at = p[r].add(off);
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(next) as *const i8);
        _mm256_loadu_si256(at as *const __m256i)
    };
    // z[i]: row i in the low half, row i + 8 in the high half
    let z: [__m512i; 8] =
        std::array::from_fn(|i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ld(i)), ld(i + 8)));
    let t: [__m512i; 8] = std::array::from_fn(|i| {
        let (a, b) = (z[i / 2 * 2], z[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[q] (q < 4): dwords q and q + 4 of rows 0..4 in 128-bit lanes 0/2 and 1/3; u[q + 4]: rows 4..8
    let u: [__m512i; 8] = std::array::from_fn(|i| {
        let (q, hi4) = (i % 4, 4 * (i / 4));
        let (a, b) = (t[hi4 + q / 2], t[hi4 + q / 2 + 2]);
        if q % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    let hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    std::array::from_fn(|g| {
        let q = g % 4;
        let idx = if g < 4 { lo } else { hi };
        _mm512_permutex2var_epi64(u[q], idx, u[q + 4])
    })
}

/// As `lanes8`, for dwords `off/4 .. off/4 + 4`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lanes4<const P: bool>(r: &Rows<P>, off: usize) -> [__m512i; 4] {
    if P {
        return std::array::from_fn(|g| r.packed(off, g));
    }
    let (p, next) = (&r.p, r.next_group);
    let ld = |r: usize| {
        let at = p[r].add(off);
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(next) as *const i8);
        _mm_loadu_si128(at as *const __m128i)
    };
    // z[i]: rows i, i + 4, i + 8, i + 12 in its four 128-bit lanes
    let z: [__m512i; 4] = std::array::from_fn(|i| {
        let v = _mm512_castsi128_si512(ld(i));
        let v = _mm512_inserti32x4::<1>(v, ld(i + 4));
        let v = _mm512_inserti32x4::<2>(v, ld(i + 8));
        _mm512_inserti32x4::<3>(v, ld(i + 12))
    });
    let t = [
        _mm512_unpacklo_epi32(z[0], z[1]),
        _mm512_unpackhi_epi32(z[0], z[1]),
        _mm512_unpacklo_epi32(z[2], z[3]),
        _mm512_unpackhi_epi32(z[2], z[3]),
    ];
    [
        _mm512_unpacklo_epi64(t[0], t[2]),
        _mm512_unpackhi_epi64(t[0], t[2]),
        _mm512_unpacklo_epi64(t[1], t[3]),
        _mm512_unpackhi_epi64(t[1], t[3]),
    ]
}

/// The scales d of the Q8_0 blocks at `p` (their first two bytes).
#[inline]
#[target_feature(enable = "avx512f,f16c")]
pub(super) unsafe fn q8_0_scales<const P: bool>(p: &Rows<P>) -> __m512 {
    f16s::<false>(if P { p.packed(0, 0) } else { lanes4(p, 0)[0] })
}

/// The f16 in the low (`HIGH = false`) or high half of each lane, as f32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn f16s<const HIGH: bool>(v: __m512i) -> __m512 {
    let v = if HIGH { _mm512_srli_epi32::<16>(v) } else { v };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

/// Byte `k` (0..4) of each lane, zero-extended.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn byte_u(v: __m512i, k: usize) -> __m512i {
    _mm512_and_si512(
        _mm512_srlv_epi32(v, _mm512_set1_epi32(8 * k as i32)),
        _mm512_set1_epi32(0xff),
    )
}

/// The two pairs of i16 weights in a lane whose four bytes hold values k..k+4 as low nibbles
/// (`shift = 0`) or high nibbles (`shift = 4`): ((k, k+2), (k+1, k+3)).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn nibble_pairs(v: __m512i, shift: i32) -> [__m512i; 2] {
    let mask = _mm512_set1_epi32(0x000f_000f);
    [
        _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(shift)), mask),
        _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(shift + 8)), mask),
    ]
}

/// 16 in each i16 of the pairs of `nibble_pairs` whose value has its bit set in `qh` (the
/// fifth bits of Q5_0 values k.. as bits 0..4 of `x = qh >> k`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fifth_bits(x: __m512i) -> [__m512i; 2] {
    let bit = |b: i32, to: u32| {
        let v = _mm512_and_si512(x, _mm512_set1_epi32(1 << b));
        _mm512_sllv_epi32(v, _mm512_set1_epi32(to as i32 - b))
    };
    [
        _mm512_or_si512(bit(0, 4), bit(2, 20)),
        _mm512_or_si512(bit(1, 4), bit(3, 20)),
    ]
}

/// The sub-block scales and minimums of the Q4_K blocks at `p`. Their first 16 bytes are
/// read with `lanes4`, not four gathers, which cost a fifth of the whole kernel on Zen 5.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
pub(super) unsafe fn q4_k_scales<const P: bool>(p: &Rows<P>) -> ([__m512; 8], [__m512; 8]) {
    let mut out = ([_mm512_setzero_ps(); 8], [_mm512_setzero_ps(); 8]);
    let [head, q0, q1, q2] = lanes4(p, 0);
    let (d, dmin) = (f16s::<false>(head), f16s::<true>(head));
    let (k1, k2, k3) = (
        _mm512_set1_epi32(0x3f3f_3f3f),
        _mm512_set1_epi32(0x0f0f_0f0f),
        _mm512_set1_epi32(0x0303_0303),
    );
    let and = _mm512_and_si512;
    let or = _mm512_or_si512;
    // ggml's unpacking of the 6-bit scales and minimums, sub-blocks 0..4 and 4..8
    let scales = [
        and(q0, k1),
        or(
            and(q2, k2),
            _mm512_slli_epi32::<4>(and(_mm512_srli_epi32::<6>(q0), k3)),
        ),
    ];
    let mins = [
        and(q1, k1),
        or(
            and(_mm512_srli_epi32::<4>(q2), k2),
            _mm512_slli_epi32::<4>(and(_mm512_srli_epi32::<6>(q1), k3)),
        ),
    ];
    let sign = _mm512_set1_epi32(i32::MIN);
    for j in 0..8 {
        let sc = _mm512_cvtepi32_ps(byte_u(scales[j / 4], j % 4));
        let mn = _mm512_cvtepi32_ps(byte_u(mins[j / 4], j % 4));
        out.0[j] = _mm512_mul_ps(d, sc);
        // −(dmin·mn), with the sign of a negated zero
        out.1[j] = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(_mm512_mul_ps(dmin, mn)),
            sign,
        ));
    }
    out
}

/// What the heads of Q4_0, Q4_1 or Q5_0 blocks of 16 rows say: the scale `d`, the minimum `m`
/// (Q4_1; else 0), the fifth bits `qh` (Q5_0; else 0), where the nibbles start (`qs`) and what
/// each value is offset by (`off`, subtracted).
pub(super) struct NibbleHeads {
    pub d: __m512,
    pub m: __m512,
    pub qh: __m512i,
    pub qs: usize,
    pub off: i8,
}

/// The heads of the blocks of type `K` at `p`, read with `lanes4` rather than one or two
/// gathers each (see `q4_k_scales`).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn nibble_heads<const K: u8, const P: bool>(p: &Rows<P>) -> NibbleHeads {
    let [head, next] = if P {
        [p.packed(0, 0), p.packed(0, 1)]
    } else {
        let [head, next, ..] = lanes4(p, 0);
        [head, next]
    };
    let (qs, off) = match K {
        Q4_0 => (2, 8),
        Q4_1 => (4, 0),
        _ => (6, 16),
    };
    NibbleHeads {
        d: f16s::<false>(head),
        m: if K == Q4_1 {
            f16s::<true>(head)
        } else {
            _mm512_setzero_ps()
        },
        qh: if K == Q5_0 {
            // bytes 2..6
            _mm512_or_si512(_mm512_srli_epi32::<16>(head), _mm512_slli_epi32::<16>(next))
        } else {
            _mm512_setzero_si512()
        },
        qs,
        off,
    }
}

/// Decodes the blocks of 32 values (Q8_0, Q4_0, Q4_1, Q5_0) at `base + offs[i]`: hands each
/// pair vector to `pair(p, w)` (see `Decoded`) and returns the rows' scales and minimums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn small_block<const K: u8, const P: bool>(
    base: *const u8,
    offs: &[i32; G],
    pair: &mut impl FnMut(usize, __m512i),
) -> (__m512, __m512) {
    let p = Rows::<P>::new::<K>(base, offs);
    if K == Q8_0 {
        for (g, v) in lanes8(&p, 2).into_iter().enumerate() {
            pair(2 * g, _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(v)));
            pair(2 * g + 1, _mm512_srai_epi16::<8>(v));
        }
        return (q8_0_scales(&p), _mm512_setzero_ps());
    }
    let NibbleHeads { d, m, qh, qs, off } = nibble_heads::<K, P>(&p);
    for (g, v) in lanes4(&p, qs).into_iter().enumerate() {
        // low nibbles: values 4g..4g+4; high nibbles: values 16+4g..
        for (half, mut pairs) in [nibble_pairs(v, 0), nibble_pairs(v, 4)]
            .into_iter()
            .enumerate()
        {
            if K == Q5_0 {
                let k = 16 * half + 4 * g;
                let hb = fifth_bits(_mm512_srlv_epi32(qh, _mm512_set1_epi32(k as i32)));
                pairs = [0, 1].map(|i| _mm512_or_si512(pairs[i], hb[i]));
            }
            for (i, w) in pairs.into_iter().enumerate() {
                let w = if off == 0 {
                    w
                } else {
                    _mm512_sub_epi16(w, _mm512_set1_epi16(off.into()))
                };
                pair(8 * half + 2 * g + i, w);
            }
        }
    }
    (d, m)
}

/// The blocks of 32 values for N ≤ 8 tokens: each pair vector goes straight into the dots of
/// every token, never through memory. Same integer sums and float steps as `decode` +
/// `sub_block`. `at`: where this block's activations start for the first of the N tokens
/// (see `Permuted`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn small_direct<const K: u8, const P: bool, const N: usize>(
    base: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    let mut sums = [_mm512_setzero_si512(); N];
    let (d, m) = small_block::<K, P>(base, offs, &mut |p, w| {
        dot_pairs(&mut sums, w, at.dword(p));
    });
    let m_set = _mm512_cmpneq_ps_mask(m, _mm512_setzero_ps());
    for t in 0..N {
        let f = _mm512_cvtepi32_ps(sums[t]);
        acc[t] = add_sub_block::<K>(acc[t], d, m, m_set, f, at.d(0, t), at.s(0, t));
    }
}

/// Decodes the Q6_K blocks at `base + offs[i]` into `out`, as `blocks::sub_block` does.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn decode_q6_k<const P: bool>(base: *const u8, offs: &[i32; G], out: &mut Decoded) {
    let p = Rows::<P>::new::<Q6_K>(base, offs);
    let (d, sc) = q6_k_scales(&p);
    out.d = d;
    q6_k_weights::<P>(&p, &sc, &mut out.w)
}

/// The weights of the Q6_K blocks at `p` in `Decoded`'s pairs: (code − 32)·scale, at most 32·128
/// in magnitude, an i16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q6_k_weights<const P: bool>(
    p: &Rows<P>,
    sc: &[[__m512i; 2]; 8],
    w: &mut [[__m512i; 16]; 8],
) {
    let (mask, low) = (_mm512_set1_epi32(0x003f_003f), _mm512_set1_epi32(0xffff));
    for n in 0..2 {
        let (l0, l1, hb) = (
            lanes8(p, 64 * n),
            lanes8(p, 64 * n + 32),
            lanes8(p, 128 + 32 * n),
        );
        for g in 0..8 {
            for (k, q) in q6_k_codes(l0[g], l1[g], hb[g]).into_iter().enumerate() {
                let j = 4 * n + k;
                let weight = |v: __m512i| {
                    let code = _mm512_and_si512(v, mask);
                    // pairs 0..8 hold values 0..16 of the sub-block, the rest 16..32; the
                    // scale goes into both i16 of its lane
                    let s = sc[j][g / 4];
                    let scale =
                        _mm512_or_si512(_mm512_and_si512(s, low), _mm512_slli_epi32::<16>(s));
                    _mm512_mullo_epi16(_mm512_sub_epi16(code, _mm512_set1_epi16(32)), scale)
                };
                w[j][2 * g] = weight(q);
                w[j][2 * g + 1] = weight(_mm512_srli_epi32::<8>(q));
            }
        }
    }
}

/// The Q6_K blocks at `p`: the scale `d`, and the integer scales of values 16s..16s+16 as
/// `sc[s / 2][s % 2]`, sign-extended.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
pub(super) unsafe fn q6_k_scales<const P: bool>(p: &Rows<P>) -> (__m512, [[__m512i; 2]; 8]) {
    // the f16 d sits in bytes 208..210: packed, the low half of the image's last dword; in the
    // file, the top half of the dword at 206, read with `lanes4`, not a gather (see
    // `q4_k_scales`), and not past the block
    let d = if P {
        f16s::<false>(p.packed(208, 0))
    } else {
        f16s::<true>(lanes4(p, 194)[3])
    };
    let scales = lanes4(p, 192);
    let mut sc = [[_mm512_setzero_si512(); 2]; 8];
    for (s, v) in sc.as_flattened_mut().iter_mut().enumerate() {
        // byte s, sign-extended
        *v = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(
            scales[s / 4],
            _mm512_set1_epi32(24 - 8 * (s % 4) as i32),
        ));
    }
    (d, sc)
}

/// The 6-bit codes of values 4g..4g+4 of sub-blocks 4n..4n+4 of 16 Q6_K blocks, from dword g
/// of their `ql` at bytes 64n and 64n + 32 and of their `qh` at 128 + 32n (as `lanes8` gives
/// them): `[k]` holds sub-block 4n + k, one code per byte in bits 0..6 (bits 6..8 are left for
/// the caller to clear).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q6_k_codes(l0: __m512i, l1: __m512i, hb: __m512i) -> [__m512i; 4] {
    [
        q6_k_code(0, l0, l1, hb),
        q6_k_code(1, l0, l1, hb),
        q6_k_code(2, l0, l1, hb),
        q6_k_code(3, l0, l1, hb),
    ]
}

/// Element `k` of `q6_k_codes`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q6_k_code(k: usize, l0: __m512i, l1: __m512i, hb: __m512i) -> __m512i {
    // bits 0..4 of a code from `ql`, bits 4..6 from `qh`
    let select = |lo: __m512i, hi: __m512i| {
        _mm512_ternarylogic_epi32::<0xE4>(lo, hi, _mm512_set1_epi32(0x0f0f_0f0f))
    };
    match k {
        0 => select(l0, _mm512_slli_epi32::<4>(hb)),
        1 => select(l1, _mm512_slli_epi32::<2>(hb)),
        2 => select(_mm512_srli_epi32::<4>(l0), hb),
        _ => select(_mm512_srli_epi32::<4>(l1), _mm512_srli_epi32::<2>(hb)),
    }
}

// Type codes for the const-generic kernels.
pub(super) const Q8_0: u8 = 0;
pub(super) const Q4_0: u8 = 1;
pub(super) const Q4_1: u8 = 2;
pub(super) const Q5_0: u8 = 3;
pub(super) const Q4_K: u8 = 4;
pub(super) const Q6_K: u8 = 5;

pub(super) const fn dtype_of(k: u8) -> DType {
    match k {
        Q8_0 => DType::Q8_0,
        Q4_0 => DType::Q4_0,
        Q4_1 => DType::Q4_1,
        Q5_0 => DType::Q5_0,
        Q4_K => DType::Q4_K,
        _ => DType::Q6_K,
    }
}

/// The activations of one call as dwords, in the order the kernels meet them. 16-bit ones are
/// reordered to meet `Decoded`'s pairs: per block of 32, values (0, 2, 1, 3, 4, 6, 5, 7, ...),
/// so that dword p holds the pair weight pair p meets. 8-bit ones stay in order, four values
/// per dword (`quads`). Every table is interleaved by token (`dwords[i * n_t + t]` is dword i
/// of token t), so that the tokens of a pass find their operands at fixed displacements from
/// one pointer instead of an address each. Also the sums of each 16 values (`sums`), which the
/// quads' offsets need, and each block's scale and scaled sum (`d`, `s`).
struct Permuted {
    dwords: Vec<i32>,
    /// Dwords per block of 32 values: 16 pairs or 8 quads.
    per_block: usize,
    /// Where 16-bit activations meet the quads kernels, as two bytes each (`quads`): how far
    /// past the dwords of the high bytes those of the low bytes lie, in the same order. 0 where
    /// there is one dword stream.
    low: usize,
    sums: Vec<i32>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Lays out `acts` for the pairs kernels, or (`quads`, 8-bit activations only) the quads ones.
fn permute<Q: ActInt>(acts: &QActs<Q>, out: &mut Permuted, quads: bool) {
    let (n, n_t) = (acts.qs.len(), acts.rows());
    if n == 0 {
        return;
    }
    let nb = n / QK / n_t;
    out.per_block = if quads { QK / 4 } else { QK / 2 };
    let stream = nb * n_t * out.per_block;
    out.low = if quads && Q::WIDE { stream } else { 0 };
    out.dwords.resize(stream + out.low, 0);
    out.sums.resize(n / 16, 0);
    // SAFETY: the caller checked `available()`; the buffers hold n values (i16 pairs or i8
    // quads in `dwords`) and a sum per 16
    unsafe {
        let permute = if quads {
            permute_k::<Q, true>
        } else {
            permute_k::<Q, false>
        };
        permute(
            acts.qs.as_ptr() as *const u8,
            n_t,
            nb,
            out.dwords.as_mut_ptr(),
            out.sums.as_mut_ptr(),
        )
    }
    let interleave = |from: &[f32], to: &mut Vec<f32>| {
        to.resize(from.len(), 0.0);
        for (t, row) in from.chunks_exact(nb).enumerate() {
            for (b, &v) in row.iter().enumerate() {
                to[b * n_t + t] = v;
            }
        }
    };
    interleave(&acts.d, &mut out.d);
    interleave(&acts.s, &mut out.s);
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn permute_k<Q: ActInt, const QUADS: bool>(
    qs: *const u8,
    n_t: usize,
    nb: usize,
    out: *mut i32,
    sums: *mut i32,
) {
    let order: [i16; 32] = std::array::from_fn(|i| {
        let i = i as i16;
        (i & !3) | [0, 2, 1, 3][i as usize & 3]
    });
    let idx = _mm512_loadu_si512(order.as_ptr() as *const _);
    // dword i of a block goes to dword i·n_t of its token
    let spread = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(n_t as i32),
    );
    let (per_block, lanes) = if QUADS { (QK / 4, 0xff) } else { (QK / 2, !0) };
    let low = per_block * nb * n_t;
    let store = |to: *mut i32, dwords: __m512i| {
        if n_t == 1 {
            _mm512_mask_storeu_epi32(to, lanes, dwords);
        } else {
            _mm512_mask_i32scatter_epi32::<4>(to as *mut _, lanes, spread, dwords);
        }
    };
    for i in 0..n_t * nb {
        let (t, b) = (i / nb, i % nb);
        let to = out.add(per_block * b * n_t + t);
        let v = if Q::WIDE {
            let v = _mm512_loadu_si512(qs.add(2 * QK * i) as *const _);
            if QUADS {
                // a = 256·hi + lo + 128, both signed bytes: hi = a >> 8, lo = (a & 0xff) − 128
                let bytes = |x| _mm512_castsi256_si512(_mm512_cvtepi16_epi8(x));
                store(to, bytes(_mm512_srai_epi16::<8>(v)));
                store(
                    to.add(low),
                    bytes(_mm512_xor_si512(v, _mm512_set1_epi16(0x80))),
                );
            } else {
                store(to, _mm512_permutexvar_epi16(idx, v));
            }
            v
        } else {
            let raw = _mm256_loadu_si256(qs.add(QK * i) as *const __m256i);
            let v = _mm512_cvtepi8_epi16(raw);
            store(
                to,
                if QUADS {
                    _mm512_castsi256_si512(raw)
                } else {
                    _mm512_permutexvar_epi16(idx, v)
                },
            );
            v
        };
        let pair_sums = _mm512_madd_epi16(v, _mm512_set1_epi16(1));
        *sums.add(2 * b * n_t + t) = _mm512_mask_reduce_add_epi32(0x00ff, pair_sums);
        *sums.add((2 * b + 1) * n_t + t) = _mm512_mask_reduce_add_epi32(0xff00, pair_sums);
    }
}

/// Where one block's (or sub-block's) activations start for the first of a run of tokens, in
/// the interleaved tables of `Permuted`.
#[derive(Clone, Copy)]
struct Interleaved {
    dwords: *const i32,
    /// `Permuted::low`.
    low: usize,
    sums: *const i32,
    d: *const f32,
    s: *const f32,
    n_t: usize,
}

impl Interleaved {
    /// Sub-block `b` (of 32 values) for tokens `t..` of `perm`, `n_t` tokens in all.
    #[inline(always)]
    fn new(perm: &Permuted, n_t: usize, b: usize, t: usize) -> Self {
        Interleaved {
            dwords: perm.dwords[perm.per_block * b * n_t + t..].as_ptr(),
            low: perm.low,
            sums: perm.sums[2 * b * n_t + t..].as_ptr(),
            d: perm.d[b * n_t + t..].as_ptr(),
            s: perm.s[b * n_t + t..].as_ptr(),
            n_t,
        }
    }

    /// Dword `p` from the start (of sub-block p / `per_block`), for the first token; the next
    /// tokens follow.
    #[inline(always)]
    unsafe fn dword(self, p: usize) -> *const i32 {
        self.dwords.add(p * self.n_t)
    }

    /// The low bytes' dword `p` where 16-bit activations are split in two (`Permuted::low`).
    #[inline(always)]
    unsafe fn low(self, p: usize) -> *const i32 {
        self.dword(p).add(self.low)
    }

    /// The same tables from token `t` of the run on.
    #[inline(always)]
    unsafe fn at_token(self, t: usize) -> Self {
        Interleaved {
            dwords: self.dwords.add(t),
            low: self.low,
            sums: self.sums.add(t),
            d: self.d.add(t),
            s: self.s.add(t),
            n_t: self.n_t,
        }
    }

    /// The scale of sub-block `j` from the start, for token `t` of the run.
    #[inline(always)]
    unsafe fn d(self, j: usize, t: usize) -> f32 {
        *self.d.add(j * self.n_t + t)
    }

    /// The scaled sum of sub-block `j` from the start, for token `t` of the run.
    #[inline(always)]
    unsafe fn s(self, j: usize, t: usize) -> f32 {
        *self.s.add(j * self.n_t + t)
    }

    /// The sum of values 16h..16h+16 of the first sub-block, for token `t` of the run.
    #[inline(always)]
    unsafe fn sum16(self, h: usize, t: usize) -> i32 {
        *self.sums.add(h * self.n_t + t)
    }
}

thread_local! {
    static PERMUTED: RefCell<Permuted> = const {
        RefCell::new(Permuted {
            dwords: Vec::new(),
            per_block: 0,
            low: 0,
            sums: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
        })
    };
}

/// One block's weights straight into the dots of `acc.len()` tokens, at most `DIRECT_RUN`
/// (Q4_K and the blocks of 32).
#[inline(always)]
unsafe fn direct<const K: u8, const P: bool>(
    blk: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    macro_rules! run {
        ($n:literal) => {{
            if K == Q4_K {
                q4_k_direct::<P, $n>(blk, offs, at, acc)
            } else {
                small_direct::<K, P, $n>(blk, offs, at, acc)
            }
        }};
    }
    by_token_count!(acc.len(), run)
}

/// `direct` for Q4_K, kept out of line for the runs of a pass over more than `DIRECT_RUN`
/// tokens: inlined into their loop, it measured slower at one token too (47 µs instead of 32
/// at 1536×1536, Zen 5), where the blocks of 32, with a call per block, measured faster
/// inlined (Q5_0 at 12 tokens: 241 µs outlined against 205–210).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_k_outlined<const P: bool>(
    blk: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    direct::<Q4_K, P>(blk, offs, at, acc)
}

/// What one Q6_K sub-block adds to N tokens' accumulators: the exact integer sums of 16 rows,
/// then `scalar::add_sub_block`'s float steps for each row. `at`: the sub-block's activations
/// for the first of the N tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q6_k_sub_block<const N: usize>(
    dec: &Decoded,
    j: usize,
    at: Interleaved,
    acc: &mut [__m512],
) {
    let mut halves = [[_mm512_setzero_si512(); N]; 2];
    for (h, hs) in halves.iter_mut().enumerate() {
        for (p, &wp) in dec.w[j].iter().enumerate().skip(8 * h).take(8) {
            dot_pairs(hs, wp, at.dword(p));
        }
    }
    let zero = _mm512_setzero_ps();
    for t in 0..N {
        let f = halves_sum(halves[0][t], halves[1][t]);
        acc[t] = add_sub_block::<Q6_K>(acc[t], dec.d, zero, 0, f, at.d(0, t), at.s(0, t));
    }
}

/// A Q6_K sub-block's integer sum for 16 rows, as f32, from the scaled sums of its two halves
/// (each fits i32 for activations within ±32767, as the quantizer makes them). Their sum may
/// not: through i64 where it overflows (never with real activations, so kept out of the way).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn halves_sum(x: __m512i, y: __m512i) -> __m512 {
    let isum = _mm512_add_epi32(x, y);
    let over = _mm512_cmplt_epi32_mask(
        _mm512_and_si512(_mm512_xor_si512(x, isum), _mm512_xor_si512(y, isum)),
        _mm512_setzero_si512(),
    );
    if over == 0 {
        _mm512_cvtepi32_ps(isum)
    } else {
        exact_sum(x, y)
    }
}

/// `scalar::add_sub_block` for 16 rows: `acc + (d·da)·isum`, then `+ m·sa` in the rows whose
/// minimum `m` is not 0 (`m_set`).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_sub_block<const K: u8>(
    acc: __m512,
    d: __m512,
    m: __m512,
    m_set: __mmask16,
    isum: __m512,
    da: f32,
    sa: f32,
) -> __m512 {
    let s = _mm512_add_ps(
        acc,
        _mm512_mul_ps(_mm512_mul_ps(d, _mm512_set1_ps(da)), isum),
    );
    if K == Q4_1 || K == Q4_K {
        _mm512_mask_add_ps(s, m_set, s, _mm512_mul_ps(m, _mm512_set1_ps(sa)))
    } else {
        s
    }
}

/// Q4_K for N ≤ 8 tokens: the weights go from the nibbles straight into the dots of every
/// token, never through memory. Same integer sums and float steps as `decode` + `sub_block`.
/// `at`: the activations of this block's first sub-block for the first of the N tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_k_direct<const P: bool, const N: usize>(
    base: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    let p = Rows::<P>::new::<Q4_K>(base, offs);
    let (d, m) = q4_k_scales(&p);
    for n in 0..4 {
        let v = lanes8(&p, 16 + 32 * n);
        // sums of sub-blocks 2n (low nibbles) and 2n + 1 (high nibbles)
        let mut sums = [[_mm512_setzero_si512(); N]; 2];
        for (g, &vg) in v.iter().enumerate() {
            for (h, shift) in [0, 4].into_iter().enumerate() {
                let pairs = nibble_pairs(vg, shift);
                let first = (2 * n + h) * QK / 2 + 2 * g;
                dot_pairs(&mut sums[h], pairs[0], at.dword(first));
                dot_pairs(&mut sums[h], pairs[1], at.dword(first + 1));
            }
        }
        for (h, hs) in sums.iter().enumerate() {
            let j = 2 * n + h;
            let m_set = _mm512_cmpneq_ps_mask(m[j], _mm512_setzero_ps());
            for t in 0..N {
                let f = _mm512_cvtepi32_ps(hs[t]);
                acc[t] =
                    add_sub_block::<Q4_K>(acc[t], d[j], m[j], m_set, f, at.d(j, t), at.s(j, t));
            }
        }
    }
}

/// Defines `$name(acc, w, a)`: `acc[t]` plus, per lane, the products of `w` with dword t at
/// `a` (broadcast) by `$op`, for N tokens whose dwords lie side by side: one instruction per
/// token with a memory operand at a fixed displacement. Written out because the compiler splits
/// the intrinsics into `vpmaddwd` + `vpaddd` for CPUs it does not know to have fast ones, and
/// an operand of its own per token would cost an address computation per instruction.
macro_rules! vnni_dots {
    ($(#[$doc:meta])* $name:ident, $op:literal) => {
        $(#[$doc])*
        #[inline]
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn $name<const N: usize>(acc: &mut [__m512i; N], w: __m512i, a: *const i32) {
            let mut k = 0;
            while k + 8 <= N {
                vnni_asm!($op, acc, w, a, k; x0 0 0, x1 1 4, x2 2 8, x3 3 12, x4 4 16, x5 5 20,
                    x6 6 24, x7 7 28);
                k += 8;
            }
            if k + 4 <= N {
                vnni_asm!($op, acc, w, a, k; x0 0 0, x1 1 4, x2 2 8, x3 3 12);
                k += 4;
            }
            if k + 2 <= N {
                vnni_asm!($op, acc, w, a, k; x0 0 0, x1 1 4);
                k += 2;
            }
            if k < N {
                vnni_asm!($op, acc, w, a, k; x0 0 0);
            }
        }
    };
}

/// `$op` of `$w` into `acc[$k + i]` with the dword at byte `off` past `$a + $k` (broadcast).
macro_rules! vnni_asm {
    ($op:literal, $acc:ident, $w:ident, $a:ident, $k:expr; $($x:ident $i:literal $off:literal),+) => {
        std::arch::asm!(
            $(concat!($op, " {", stringify!($x), "}, {w}, dword ptr [{a} + ",
                stringify!($off), "]{{1to16}}"),)+
            w = in(zmm_reg) $w,
            a = in(reg) $a.add($k),
            $($x = inout(zmm_reg) $acc[$k + $i],)+
            options(pure, readonly, nostack, preserves_flags)
        )
    };
}

vnni_dots!(
    /// Two i16 products per lane (`w`: pairs of i16 weights; `a`: pairs of i16 activations).
    dot_pairs,
    "vpdpwssd"
);
vnni_dots!(
    /// Four byte products per lane (`w`: unsigned bytes; `a`: four signed bytes).
    dot_quads,
    "vpdpbusd"
);

/// `f32(x + y)` per lane with the sum taken in i64.
#[cold]
#[target_feature(enable = "avx512f")]
unsafe fn exact_sum(x: __m512i, y: __m512i) -> __m512 {
    let (mut a, mut b) = ([0i32; 16], [0i32; 16]);
    _mm512_storeu_si512(a.as_mut_ptr() as *mut _, x);
    _mm512_storeu_si512(b.as_mut_ptr() as *mut _, y);
    let s: [f32; 16] = std::array::from_fn(|i| (a[i] as i64 + b[i] as i64) as f32);
    _mm512_loadu_ps(s.as_ptr())
}

/// `out[t * out_stride + r - rows.start] = dot(W[r], A[t])`.
///
/// # Safety
/// The CPU must support these kernels (`available()`); `supports(dtype)`; `w` holds every row
/// in `rows`.
pub unsafe fn matmul_q<Q: ActInt>(
    dtype: DType,
    w: &[u8],
    packed: bool,
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    let rb = dtype.row_bytes(acts.cols);
    if packed {
        assert!(
            rows.start.is_multiple_of(G),
            "packed rows start at a group of {G}"
        );
        assert!(w.len() >= packed::bytes(dtype, rows.end, acts.cols));
    } else {
        assert!(w.len() >= rows.end * rb);
    }
    assert!(acts.rows() == 0 || out.len() >= (acts.rows() - 1) * out_stride + rows.len());
    assert!(G * rb < i32::MAX as usize);
    // 8-bit activations take the quads kernels, 16-bit ones the pairs, except Q6_K below
    // `Q6_K_PAIRS_FROM` tokens
    let quads = !Q::WIDE || dtype == DType::Q6_K && acts.rows() < Q6_K_PAIRS_FROM;
    PERMUTED.with_borrow_mut(|perm| {
        permute(acts, perm, quads);
        let args = (w, rows, acts, &*perm, out, out_stride);
        macro_rules! by_type {
            ($($kernel:ident)::+, $p:literal) => {
                match dtype {
                    DType::Q8_0 => $($kernel)::+::<Q8_0, $p, Q>(args),
                    DType::Q4_0 => $($kernel)::+::<Q4_0, $p, Q>(args),
                    DType::Q4_1 => $($kernel)::+::<Q4_1, $p, Q>(args),
                    DType::Q5_0 => $($kernel)::+::<Q5_0, $p, Q>(args),
                    DType::Q4_K => $($kernel)::+::<Q4_K, $p, Q>(args),
                    DType::Q6_K => $($kernel)::+::<Q6_K, $p, Q>(args),
                    _ => unreachable!("{dtype} has no AVX-512 kernel"),
                }
            };
        }
        match (quads, packed) {
            (true, true) => by_type!(quads::matmul_k, true),
            (true, false) => by_type!(quads::matmul_k, false),
            (false, true) => by_type!(matmul_k, true),
            (false, false) => by_type!(matmul_k, false),
        }
    })
}

type Args<'a, Q> = (
    &'a [u8],
    Range<usize>,
    &'a QActs<Q>,
    &'a Permuted,
    &'a mut [f32],
    usize,
);

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn matmul_k<const K: u8, const P: bool, Q: ActInt>(
    (w, rows, acts, perm, out, out_stride): Args<'_, Q>,
) {
    let dtype = dtype_of(K);
    let per = per_block(dtype);
    let n_t = acts.rows();
    let mut dec = Decoded {
        w: [[_mm512_setzero_si512(); 16]; 8],
        d: _mm512_setzero_ps(),
    };
    let blocks = acts.cols / QK / per;
    row_groups!(
        (w, P, dtype, rows, n_t, blocks, out, out_stride),
        |blk, offs, i, t0, acc| {
            let nt = acc.len();
            if K != Q6_K {
                // the weights go straight into the dots (Q4_K and the blocks of 32), in as few
                // runs of tokens as `DIRECT_RUN` allows, as even as can be
                let at = Interleaved::new(perm, n_t, i * per, t0);
                if nt <= DIRECT_RUN {
                    direct::<K, P>(blk, offs, at, acc);
                    continue;
                }
                let runs = nt.div_ceil(DIRECT_RUN);
                let mut t = 0;
                for r in 0..runs {
                    let n = (nt - t) / (runs - r);
                    let (at, acc) = (at.at_token(t), &mut acc[t..t + n]);
                    if K == Q4_K {
                        q4_k_outlined::<P>(blk, offs, at, acc)
                    } else {
                        direct::<K, P>(blk, offs, at, acc)
                    }
                    t += n;
                }
                continue;
            }
            decode_q6_k::<P>(blk, offs, &mut dec);
            for j in 0..per {
                let b = i * per + j;
                let mut t = 0;
                while t < nt {
                    let left = nt - t;
                    let accs = &mut acc[t..];
                    let at = Interleaved::new(perm, n_t, b, t0 + t);
                    macro_rules! run {
                        ($n:literal) => {{
                            q6_k_sub_block::<$n>(&dec, j, at, accs);
                            $n
                        }};
                    }
                    t += if left >= 8 {
                        run!(8)
                    } else if left >= 4 {
                        run!(4)
                    } else if left >= 2 {
                        run!(2)
                    } else {
                        run!(1)
                    };
                }
            }
        }
    )
}
