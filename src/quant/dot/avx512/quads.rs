//! 8-bit activations on AVX-512 VNNI: four weights of a row per lane as unsigned bytes, and one
//! `vpdpbusd` per four values of 16 rows and token, its four activations broadcast from
//! memory. That is half the instructions of the 16-bit pairs the parent module multiplies, and
//! the codes need only a mask to come out of their nibbles.
//!
//! The codes go in as they are stored, unsigned (Q8_0's signed bytes are offset by 128), so the
//! offset a type subtracts from its codes is applied once per sub-block and token, as
//! offset·Σa, from the activations' integer sums. Those are the scalar reference's exact integer
//! sums, and the float steps are the parent's `add_sub_block`, so the bits are the reference's.
//!
//! 16-bit activations come here too for Q6_K at up to three tokens (`Sums`), each value
//! split into two signed bytes: twice the dots, but the codes stay the bytes that come out of
//! the weights, where the pairs kernels spend more on decoding them. From four tokens on Q6_K
//! with 16-bit activations stays with the pairs: there its weights are multiplied by their
//! scales once while decoding, where here each token's sums need the scales applied.

use super::{
    add_sub_block, block_bytes, dot_quads, dtype_of, halves_sum, lanes4, lanes8, nibble_heads,
    packed, per_block, q4_k_scales, q6_k_code, q6_k_scales, q8_0_scales, Args, Interleaved,
    NibbleHeads, Rows, G, Q4_0, Q4_K, Q5_0, Q6_K, Q8_0, TMAX,
};
use crate::quant::dot::ActInt;
use crate::quant::QK;
use std::arch::x86_64::*;

/// What the heads of a block of 16 rows say: the sub-blocks' scales `d` and minimums `m`, Q6_K's
/// integer scales of each 16 values (`sc[j][h]`), Q5_0's fifth bits (`qh`), and where the
/// nibbles of a block of 32 start (`qs`).
struct Heads {
    d: [__m512; 8],
    m: [__m512; 8],
    sc: [[__m512i; 2]; 8],
    qh: __m512i,
    qs: usize,
}

/// What type `K` subtracts from its codes as they are decoded here.
const fn offset(k: u8) -> i32 {
    match k {
        Q4_0 => 8,
        Q5_0 => 16,
        Q6_K => 32,
        Q8_0 => 128,
        _ => 0,
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn heads<const K: u8, const P: bool>(p: &Rows<P>) -> Heads {
    let mut h = Heads {
        d: [_mm512_setzero_ps(); 8],
        m: [_mm512_setzero_ps(); 8],
        sc: [[_mm512_setzero_si512(); 2]; 8],
        qh: _mm512_setzero_si512(),
        qs: 0,
    };
    match K {
        Q4_K => (h.d, h.m) = q4_k_scales(p),
        Q6_K => {
            let (d, sc) = q6_k_scales(p);
            (h.d, h.sc) = ([d; 8], sc);
        }
        Q8_0 => h.d[0] = q8_0_scales(p),
        _ => {
            let NibbleHeads { d, m, qh, qs, .. } = nibble_heads::<K, P>(p);
            (h.d[0], h.m[0], h.qh, h.qs) = (d, m, qh, qs);
        }
    }
    h
}

/// Adds the blocks at `blk + offs[r]` (Q4_K and the blocks of 32; Q6_K has `q6_k_block`) to the
/// accumulators of N tokens, whose activations start at `at`. The codes go straight from the
/// weights into the dots, never through memory, and the dots of two sub-blocks (or two halves of
/// one) form two independent chains, since one chain would wait on the dots' latency with few
/// tokens. The heads are read here, not passed in: the compiler does not inline every N, and a
/// `Heads` handed to a call was zeroed and stored for every block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block<const K: u8, const P: bool, const N: usize>(
    blk: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    let p = Rows::<P>::new::<K>(blk, offs);
    let h = &heads::<K, P>(&p);
    let nibble = _mm512_set1_epi8(0x0f);
    let zeros = [_mm512_setzero_si512(); N];
    // dword g of sub-block j, for the first token
    let a = |j: usize, g: usize| at.dword(QK / 4 * j + g);
    match K {
        Q4_K => {
            // low nibbles: sub-block 2n; high nibbles: 2n + 1
            for n in 0..4 {
                let v = lanes8(&p, 16 + 32 * n);
                let mut sums = [[_mm512_setzero_si512(); N]; 2];
                for (g, &vg) in v.iter().enumerate() {
                    let high = _mm512_srli_epi32::<4>(vg);
                    dot_quads(&mut sums[0], _mm512_and_si512(vg, nibble), a(2 * n, g));
                    dot_quads(
                        &mut sums[1],
                        _mm512_and_si512(high, nibble),
                        a(2 * n + 1, g),
                    );
                }
                finish::<K, N>(&sums[0], &zeros, 2 * n, h, at, acc);
                finish::<K, N>(&sums[1], &zeros, 2 * n + 1, h, at, acc);
            }
        }
        _ => {
            let mut c = [_mm512_setzero_si512(); 8];
            if K == Q8_0 {
                for (g, v) in lanes8(&p, 2).into_iter().enumerate() {
                    c[g] = _mm512_xor_si512(v, _mm512_set1_epi8(-128));
                }
            } else {
                // blocks of 32: low nibbles are values 0..16, high nibbles 16..32
                for (g, v) in lanes4(&p, h.qs).into_iter().enumerate() {
                    c[g] = _mm512_and_si512(v, nibble);
                    c[g + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(v), nibble);
                }
            }
            if K == Q5_0 {
                let sixteen = _mm512_set1_epi8(16);
                for (g, x) in c.iter_mut().enumerate() {
                    *x = _mm512_mask_add_epi8(*x, fifth_bits(h.qh, g), *x, sixteen);
                }
            }
            let mut chains = [[_mm512_setzero_si512(); N]; 2];
            for (g, &cg) in c.iter().enumerate() {
                dot_quads(&mut chains[g % 2], cg, a(0, g));
            }
            finish::<K, N>(&chains[0], &chains[1], 0, h, at, acc);
        }
    }
}

/// `block`, kept out of line for Q4_K: inlined into the loop over blocks, it measured slower
/// at one token (30 µs instead of 22 at 1536×1536, Zen 5), where the blocks of 32 measured
/// faster inlined at eight (88 instead of 150).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn outlined<const K: u8, const P: bool, const N: usize>(
    blk: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    block::<K, P, N>(blk, offs, at, acc)
}

/// The integer sums Σcode·a of 16 values, for 16 rows and N tokens. 16-bit activations
/// (`ActInt::WIDE`) come split into two signed bytes, a = 256·hi + lo + 128 (see `permute`),
/// and take the byte products too: Σcode·a = 256·Σcode·hi + Σcode·lo + 128·Σcode.
struct Sums<const N: usize> {
    hi: [__m512i; N],
    lo: [__m512i; N],
    codes: __m512i,
}

/// Four ones, the bytes `Sums::codes` multiplies the codes by.
static ONES: i32 = 0x0101_0101;

impl<const N: usize> Sums<N> {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn new() -> Self {
        Sums {
            hi: [_mm512_setzero_si512(); N],
            lo: [_mm512_setzero_si512(); N],
            codes: _mm512_setzero_si512(),
        }
    }

    /// Adds the codes `c` times the activations' dword `p` (from the block's first) at `at`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn add<Q: ActInt>(&mut self, c: __m512i, at: Interleaved, p: usize) {
        dot_quads(&mut self.hi, c, at.dword(p));
        if Q::WIDE {
            dot_quads(&mut self.lo, c, at.low(p));
            dot_quads(std::array::from_mut(&mut self.codes), c, &ONES);
        }
    }

    /// Each token's sums.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn total<Q: ActInt>(&self) -> [__m512i; N] {
        if !Q::WIDE {
            return self.hi;
        }
        let codes = _mm512_slli_epi32::<7>(self.codes);
        let mut total = self.hi;
        for (x, &lo) in total.iter_mut().zip(&self.lo) {
            *x = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32::<8>(*x), lo), codes);
        }
        total
    }
}

/// `$body` once for each `$i` in the list, written out. The loops over a block's dwords must
/// be unrolled, or their sums live in memory, and the compiler leaves them rolled once the
/// dots' inline assembly counts as long code.
macro_rules! unrolled {
    ($i:ident in [$($v:literal),+] $body:block) => {
        $({
            let $i: usize = $v;
            $body
        })+
    };
}

/// `block` for Q6_K: its scales cover 16 values, so dwords 0..4 and 4..8 of a sub-block are
/// summed apart.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q6_k_block<const P: bool, Q: ActInt, const N: usize>(
    blk: *const u8,
    offs: &[i32; G],
    at: Interleaved,
    acc: &mut [__m512],
) {
    let p = Rows::<P>::new::<Q6_K>(blk, offs);
    let h = &heads::<Q6_K, P>(&p);
    let six = _mm512_set1_epi8(0x3f);
    for n in 0..2 {
        let (l0, l1, hb) = (
            lanes8(&p, 64 * n),
            lanes8(&p, 64 * n + 32),
            lanes8(&p, 128 + 32 * n),
        );
        unrolled!(k in [0, 1, 2, 3] {
            let j = 4 * n + k;
            let mut halves = [Sums::<N>::new(), Sums::new()];
            unrolled!(g in [0, 1, 2, 3, 4, 5, 6, 7] {
                let c = _mm512_and_si512(q6_k_code(k, l0[g], l1[g], hb[g]), six);
                halves[g / 4].add::<Q>(c, at, QK / 4 * j + g);
            });
            let [x, y] = [halves[0].total::<Q>(), halves[1].total::<Q>()];
            finish::<Q6_K, N>(&x, &y, j, h, at, acc);
        });
    }
}

/// The float steps of sub-block j for N tokens, from each token's two integer sums: Q6_K's
/// values 0..16 (`x`) and 16..32 (`y`), whose scales differ; for the other types two parts of
/// one sum.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn finish<const K: u8, const N: usize>(
    x: &[__m512i; N],
    y: &[__m512i; N],
    j: usize,
    h: &Heads,
    at: Interleaved,
    acc: &mut [__m512],
) {
    let m_set = _mm512_cmpneq_ps_mask(h.m[j], _mm512_setzero_ps());
    for t in 0..N {
        // Σ(code − off)·a = Σcode·a − off·Σa, the activations summed per 16
        let sum16 = |half: usize| at.sum16(2 * j + half, t);
        let f = if K == Q6_K {
            let scaled = |half: usize, sum: __m512i| {
                let s = _mm512_sub_epi32(sum, _mm512_set1_epi32(offset(K) * sum16(half)));
                _mm512_mullo_epi32(h.sc[j][half], s)
            };
            halves_sum(scaled(0, x[t]), scaled(1, y[t]))
        } else {
            let mut s = _mm512_add_epi32(x[t], y[t]);
            if offset(K) != 0 {
                let off = offset(K) * (sum16(0) + sum16(1));
                s = _mm512_sub_epi32(s, _mm512_set1_epi32(off));
            }
            _mm512_cvtepi32_ps(s)
        };
        acc[t] = add_sub_block::<K>(acc[t], h.d[j], h.m[j], m_set, f, at.d(j, t), at.s(j, t));
    }
}

/// The bytes of dword g (Q5_0 values 4g..4g+4) whose fifth bit is set in their lane's `qh`:
/// byte j of a lane needs bit 4g + j, which is bit 4(g mod 2) + j of the lane's byte g / 2.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fifth_bits(qh: __m512i, g: usize) -> __mmask64 {
    // byte g / 2 of each lane, in all four of its bytes (the shuffle indexes 128-bit lanes)
    let select = _mm512_add_epi8(
        _mm512_set4_epi32(0x0c0c_0c0c, 0x0808_0808, 0x0404_0404, 0),
        _mm512_set1_epi8((g / 2) as i8),
    );
    let bytes = _mm512_shuffle_epi8(qh, select);
    let bits = (0x0804_0201u32 << (4 * (g % 2))) as i32;
    _mm512_test_epi8_mask(bytes, _mm512_set1_epi32(bits))
}

/// The most tokens one run of `block` takes. Q4_K's dots of 7 or 8 tokens measured slower than
/// two shorter runs (1536×1536 in L2, Zen 5: 6 tokens 58–63 µs, 7 101–122, 8 107–131; runs of
/// at most 6 gave 8 tokens 84–100 and 16 tokens 157–204 instead of 218–250), its sums and codes
/// no longer fitting the registers; the other types run up to 8 at once.
const fn run_max(k: u8) -> usize {
    if k == Q4_K {
        6
    } else {
        8
    }
}

/// `super::matmul_k` for 8-bit activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn matmul_k<const K: u8, const P: bool, Q: ActInt>(
    (w, rows, acts, perm, out, out_stride): Args<'_, Q>,
) {
    let dtype = dtype_of(K);
    let per = per_block(dtype);
    let n_t = acts.rows();
    let blocks = acts.cols / QK / per;
    assert!(
        !Q::WIDE || K == Q6_K && n_t < super::Q6_K_PAIRS_FROM,
        "16-bit activations come here for Q6_K at few tokens only"
    );
    row_groups!(
        (w, P, dtype, rows, n_t, blocks, out, out_stride),
        |blk, offs, i, t0, acc| {
            let at = Interleaved::new(perm, n_t, i * per, t0);
            // runs of up to `run_max` tokens, each reading and decoding the block again
            let mut t = 0;
            while t < acc.len() {
                let n = (acc.len() - t).min(run_max(K));
                let (at, acc) = (at.at_token(t), &mut acc[t..t + n]);
                macro_rules! run {
                    ($n:literal) => {
                        if K == Q6_K {
                            q6_k_block::<P, Q, $n>(blk, offs, at, acc)
                        } else if K == Q4_K {
                            outlined::<K, P, $n>(blk, offs, at, acc)
                        } else {
                            block::<K, P, $n>(blk, offs, at, acc)
                        }
                    };
                }
                by_token_count!(n, run);
                t += n;
            }
        }
    )
}
