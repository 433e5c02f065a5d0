//! AMX tiles (Intel Xeon since Sapphire Rapids) for passes over many tokens: prefill and large
//! trees.
//!
//! The AVX-512 kernels pay one `vpdpwssd` per token for every 32 weights and 16 rows; here one
//! tile multiply takes up to 16 tokens at once. Per sub-block of 32 values:
//! - A: the tokens' activations as bytes, one token per tile row, read in place with a stride.
//!   16-bit activations are split into a signed high byte and an unsigned low byte,
//!   `a = 256·hi + lo`, and multiplied separately.
//! - B: 16 weight rows decoded to bytes in the layout the tile multiply wants (four consecutive
//!   values of a row per dword, rows side by side), which is the layout the AVX-512 kernels'
//!   transposing loads produce anyway.
//! - C: the exact integer sums of 16 rows for each token, stored and read back one token per
//!   vector, rows in lanes, so the float steps are `avx512`'s own, and the results are the
//!   scalar reference's bits.
//!
//! The sums go through memory (two tile stores per sub-block with 16-bit activations), which
//! caps the gain: measured against the AVX-512 kernels (one thread, 16-bit activations,
//! 8960×1536), Q4_K at 16 tokens takes 0.64× the time and at 64 tokens 0.65×, Q8_0 0.74× and
//! 0.78×. Q6_K, whose scales cover 16 values and so need twice the tile work, was slower
//! everywhere and keeps the AVX-512 kernel. Below `MIN_TOKENS` the AVX-512 kernels run too.
//! Linux hands the tile registers to a process only when asked (`arch_prctl`), once.

use super::avx512::{self, add_sub_block, lanes4, lanes8, nibble_heads, q4_k_scales};
use super::avx512::{NibbleHeads, Rows, G, Q4_0, Q4_1, Q4_K, Q5_0, Q8_0};
use super::{ActInt, QActs};
use crate::quant::{DType, QK};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

/// Tokens per tile (rows of A and C).
const TILE_T: usize = 16;
/// Fewer tokens than this run on the AVX-512 kernels (measured: `cargo bench --bench
/// cpu_kernels -- amx avx512vnni`; at 8 tokens the tiles win by 5–15%).
const MIN_TOKENS: usize = 8;

pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID.(7,0).EDX: AMX-TILE is bit 24, AMX-INT8 bit 25
        let edx = __cpuid_count(7, 0).edx;
        avx512::available() && edx & (3 << 24) == 3 << 24 && request_tiles()
    })
}

/// Asks Linux for the tile registers (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tiles() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it only changes which register state the kernel saves
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tiles() -> bool {
    false
}

/// Whether `dtype` has a kernel here.
pub fn supports(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q4_K
    )
}

/// The tile configuration `ldtilecfg` loads (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Tiles: 0 and 1 the activations' high and low bytes of a sub-block (A), 2 its weights (B), 4
/// and 5 the sums with the high and low bytes (C).
impl TileConfig {
    fn new(tokens: usize) -> TileConfig {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (tile, rows, colsb) in [
            (0, tokens, QK),
            (1, tokens, QK),
            (2, QK / 4, 4 * G),
            (4, tokens, 4 * G),
            (5, tokens, 4 * G),
        ] {
            c.rows[tile] = rows as u8;
            c.colsb[tile] = colsb as u16;
        }
        c
    }
}

/// The activations of one call as the tiles read them: per token, the high bytes (`hi`, or
/// the 8-bit values themselves) and the low bytes (`lo`, 16-bit activations only) in the
/// values' order.
#[derive(Default)]
struct Split {
    hi: Vec<i8>,
    lo: Vec<u8>,
}

fn split<Q: ActInt>(acts: &QActs<Q>, out: &mut Split) {
    out.hi.clear();
    out.lo.clear();
    if Q::WIDE {
        out.hi
            .extend(acts.qs.iter().map(|&v| (v.into() >> 8) as i8));
        out.lo.extend(acts.qs.iter().map(|&v| v.into() as u8));
    } else {
        out.hi.extend(acts.qs.iter().map(|&v| v.into() as i8));
    }
}

thread_local! {
    static SPLIT: RefCell<Split> = RefCell::new(Split::default());
}

/// Weights of one block of 16 rows in B's layout: per sub-block (32 values), eight dwords of
/// four values per row, rows side by side (`4 * G` bytes per dword).
#[repr(C, align(64))]
struct Weights([[u8; 8 * 4 * G]; 8]);

/// `out[t * out_stride + r - rows.start] = dot(W[r], A[t])`.
///
/// # Safety
/// The CPU must support these kernels (`available()`); `supports(dtype)`; `w` holds every row
/// in `rows`.
pub unsafe fn matmul_q<Q: ActInt>(
    dtype: DType,
    w: &[u8],
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    if acts.rows() < MIN_TOKENS {
        return avx512::matmul_q(dtype, w, false, rows, acts, out, out_stride);
    }
    let rb = dtype.row_bytes(acts.cols);
    assert!(w.len() >= rows.end * rb);
    assert!(out.len() >= (acts.rows() - 1) * out_stride + rows.len());
    assert!(G * rb < i32::MAX as usize);
    SPLIT.with_borrow_mut(|s| {
        split(acts, s);
        let args = (w, rb, rows, acts, &*s, out, out_stride);
        macro_rules! by_width {
            ($k:expr) => {
                if Q::WIDE {
                    matmul_k::<{ $k }, true, Q>(args)
                } else {
                    matmul_k::<{ $k }, false, Q>(args)
                }
            };
        }
        match dtype {
            DType::Q8_0 => by_width!(Q8_0),
            DType::Q4_0 => by_width!(Q4_0),
            DType::Q4_1 => by_width!(Q4_1),
            DType::Q5_0 => by_width!(Q5_0),
            DType::Q4_K => by_width!(Q4_K),
            _ => unreachable!("{dtype} has no AMX kernel"),
        }
    })
}

type Args<'a, Q> = (
    &'a [u8],
    usize,
    Range<usize>,
    &'a QActs<Q>,
    &'a Split,
    &'a mut [f32],
    usize,
);

/// A C tile as stored: one token per row of 16 sums.
#[repr(C, align(64))]
struct Sums([[i32; G]; TILE_T]);

/// A batch of eight sub-blocks of 16 rows, decoded: the weights (`w`), and per sub-block the
/// scales and minimums as `avx512`'s float steps take them (`d`, `m`).
struct Batch {
    w: Weights,
    d: [__m512; 8],
    m: [__m512; 8],
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn matmul_k<const K: u8, const WIDE: bool, Q: ActInt>(
    (w, rb, rows, acts, split, out, out_stride): Args<'_, Q>,
) {
    let dtype = avx512::dtype_of(K);
    let (bb, per) = (avx512::block_bytes(dtype), avx512::per_block(dtype));
    let cols = acts.cols;
    let (nb, n_t) = (cols / QK, acts.rows());
    // blocks per batch of eight sub-blocks
    let per_batch = 8 / per;
    let wp = w.as_ptr();
    let (dp, sp) = (acts.d.as_ptr(), acts.s.as_ptr());
    let mut batch = Batch {
        w: Weights([[0; 8 * 4 * G]; 8]),
        d: [_mm512_setzero_ps(); 8],
        m: [_mm512_setzero_ps(); 8],
    };
    // the sums of every sub-block of a batch
    let mut c_hi: [Sums; 8] = std::array::from_fn(|_| Sums([[0; G]; TILE_T]));
    let mut c_lo: [Sums; 8] = std::array::from_fn(|_| Sums([[0; G]; TILE_T]));
    let mut acc = [_mm512_setzero_ps(); TILE_T];
    let mut configured = 0;
    let mut r0 = rows.start;
    while r0 < rows.end {
        let valid = G.min(rows.end - r0);
        // rows past the range repeat its last row; their results are not stored
        let offs: [i32; G] = std::array::from_fn(|i| (i.min(valid - 1) * rb) as i32);
        let group = wp.add(r0 * rb);
        for t0 in (0..n_t).step_by(TILE_T) {
            let nt = TILE_T.min(n_t - t0);
            if nt != configured {
                let cfg = TileConfig::new(nt);
                asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
                configured = nt;
            }
            acc[..nt].fill(_mm512_setzero_ps());
            let blocks = nb / per;
            for i0 in (0..blocks).step_by(per_batch) {
                let batch_blocks = per_batch.min(blocks - i0);
                for i in i0..i0 + batch_blocks {
                    // (the loads prefetch the next group of rows: `avx512::Rows`)
                    decode::<K>(group.add(i * bb), &offs, i - i0, &mut batch);
                }
                // every tile multiply of the batch first, then the float steps: the sums are
                // read back long after they were stored
                let subs = batch_blocks * per;
                for j in 0..subs {
                    let at = t0 * cols + (i0 * per + j) * QK;
                    multiply::<K, WIDE>(
                        split.hi.as_ptr().add(at),
                        split.lo.as_ptr().wrapping_add(at),
                        cols,
                        batch.w.0[j].as_ptr(),
                        &mut c_hi[j],
                        &mut c_lo[j],
                    );
                }
                for j in 0..subs {
                    let b = i0 * per + j;
                    let (d, m) = (batch.d[j], batch.m[j]);
                    let m_set = _mm512_cmpneq_ps_mask(m, _mm512_setzero_ps());
                    for (t, acc) in acc[..nt].iter_mut().enumerate() {
                        let tt = t0 + t;
                        let hi = _mm512_load_si512(c_hi[j].0[t].as_ptr() as *const _);
                        let sum = if WIDE {
                            let lo = _mm512_load_si512(c_lo[j].0[t].as_ptr() as *const _);
                            _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), lo)
                        } else {
                            hi
                        };
                        let f = _mm512_cvtepi32_ps(sum);
                        let (da, sa) = (*dp.add(tt * nb + b), *sp.add(tt * nb + b));
                        *acc = add_sub_block::<K>(*acc, d, m, m_set, f, da, sa);
                    }
                }
            }
            let mask: __mmask16 = if valid == G { !0 } else { (1 << valid) - 1 };
            for (t, a) in acc[..nt].iter().enumerate() {
                let o = out
                    .as_mut_ptr()
                    .add((t0 + t) * out_stride + r0 - rows.start);
                _mm512_mask_storeu_ps(o, mask, *a);
            }
        }
        r0 += G;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Decodes the blocks at `base + offs[i]` into `out`: a k-quant block fills the whole batch,
/// a block of 32 values its sub-block `slot`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn decode<const K: u8>(base: *const u8, offs: &[i32; G], slot: usize, out: &mut Batch) {
    let p = Rows::<false>::new::<K>(base, offs);
    let put = |v: &mut [u8; 8 * 4 * G], g: usize, x: __m512i| {
        _mm512_store_si512(v.as_mut_ptr().add(4 * G * g) as *mut _, x)
    };
    let nibble = _mm512_set1_epi8(0x0f);
    match K {
        Q4_K => {
            (out.d, out.m) = q4_k_scales(&p);
            for n in 0..4 {
                // low nibbles: sub-block 2n; high nibbles: 2n + 1
                for (g, v) in lanes8(&p, 16 + 32 * n).into_iter().enumerate() {
                    put(&mut out.w.0[2 * n], g, _mm512_and_si512(v, nibble));
                    let high = _mm512_and_si512(_mm512_srli_epi32::<4>(v), nibble);
                    put(&mut out.w.0[2 * n + 1], g, high);
                }
            }
        }
        Q8_0 => {
            out.d[slot] = avx512::q8_0_scales(&p);
            for (g, v) in lanes8(&p, 2).into_iter().enumerate() {
                put(&mut out.w.0[slot], g, v);
            }
        }
        _ => {
            let NibbleHeads { d, m, qh, qs, off } = nibble_heads::<K, false>(&p);
            (out.d[slot], out.m[slot]) = (d, m);
            for (g, v) in lanes4(&p, qs).into_iter().enumerate() {
                // low nibbles: values 4g..4g+4; high nibbles: 16 + 4g..
                for (half, nibbles) in [v, _mm512_srli_epi32::<4>(v)].into_iter().enumerate() {
                    let mut x = _mm512_and_si512(nibbles, nibble);
                    if K == Q5_0 {
                        let k = (16 * half + 4 * g) as i32;
                        x = _mm512_or_si512(
                            x,
                            fifth_bits(_mm512_srlv_epi32(qh, _mm512_set1_epi32(k))),
                        );
                    }
                    x = _mm512_sub_epi8(x, _mm512_set1_epi8(off));
                    put(&mut out.w.0[slot], 4 * half + g, x);
                }
            }
        }
    }
}

/// 16 in each byte of a dword whose value has its bit set in `x` (the fifth bits of four Q5_0
/// values as bits 0..4 of `x`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fifth_bits(x: __m512i) -> __m512i {
    let bit = |b: i32| {
        let v = _mm512_and_si512(x, _mm512_set1_epi32(1 << b));
        _mm512_sllv_epi32(v, _mm512_set1_epi32(7 * b + 4))
    };
    _mm512_or_si512(
        _mm512_or_si512(bit(0), bit(1)),
        _mm512_or_si512(bit(2), bit(3)),
    )
}

/// The exact sums of the activations' bytes at `a_hi` (and `a_lo` when `WIDE`; one token per
/// `stride` bytes) times the decoded weights of type `K` at `w` (signed for Q8_0, Q4_0 and
/// Q5_0, else unsigned): one tile multiply for each, stored to `c_hi` and `c_lo`.
#[inline(always)]
unsafe fn multiply<const K: u8, const WIDE: bool>(
    a_hi: *const i8,
    a_lo: *const u8,
    stride: usize,
    w: *const u8,
    c_hi: &mut Sums,
    c_lo: &mut Sums,
) {
    let ws = 4 * G;
    let signed_w = matches!(K, Q8_0 | Q4_0 | Q5_0);
    asm!(
        "tileloadd tmm2, [{w} + {ws}*1]",
        "tileloadd tmm0, [{a} + {s}*1]",
        "tilezero tmm4",
        w = in(reg) w,
        ws = in(reg) ws,
        a = in(reg) a_hi,
        s = in(reg) stride,
        options(nostack, readonly, preserves_flags)
    );
    // high bytes (or 8-bit activations): signed
    if signed_w {
        asm!(
            "tdpbssd tmm4, tmm0, tmm2",
            options(nostack, nomem, preserves_flags)
        );
    } else {
        asm!(
            "tdpbsud tmm4, tmm0, tmm2",
            options(nostack, nomem, preserves_flags)
        );
    }
    asm!(
        "tilestored [{c} + {cs}*1], tmm4",
        c = in(reg) c_hi.0.as_mut_ptr(),
        cs = in(reg) ws,
        options(nostack, preserves_flags)
    );
    if !WIDE {
        return;
    }
    asm!(
        "tileloadd tmm1, [{a} + {s}*1]",
        "tilezero tmm5",
        a = in(reg) a_lo,
        s = in(reg) stride,
        options(nostack, readonly, preserves_flags)
    );
    // low bytes: unsigned
    if signed_w {
        asm!(
            "tdpbusd tmm5, tmm1, tmm2",
            options(nostack, nomem, preserves_flags)
        );
    } else {
        asm!(
            "tdpbuud tmm5, tmm1, tmm2",
            options(nostack, nomem, preserves_flags)
        );
    }
    asm!(
        "tilestored [{c} + {cs}*1], tmm5",
        c = in(reg) c_lo.0.as_mut_ptr(),
        cs = in(reg) ws,
        options(nostack, preserves_flags)
    );
}
