//! Every block-quantized type seen as 32-element sub-blocks of small integers.
//!
//! The types differ in how they pack their bits, but each 32-element piece of a block decodes
//! to the same form:
//!
//! `value[i] = (d·sc[h])·q[i] + m + dm·mq[h]`, with `h = i / 16`,
//!
//! where `q` are small integers, `sc` integer scales per 16 elements (1 where the type has one
//! scale per block), `d` and `m` floats (the minimum `m` is 0 for symmetric types) and `mq`
//! integer minimums per 16 elements (Q2_K only, scaled by `dm`). Dequantization and the integer
//! dot kernels are written once over this form; only `sub_block` knows the layouts, and it
//! follows ggml's reference dequantization so that values come out bit for bit.
//!
//! Layouts (little-endian; ggml's `block_*` structs):
//! - `Q8_0` (32 values, 34 bytes): f16 `d`, 32 × i8; value = d·q.
//! - `Q4_0` (32, 18): f16 `d`, 16 bytes: byte j holds value j (low nibble) and j+16 (high);
//!   value = d·(q − 8).
//! - `Q4_1` (32, 20): f16 `d`, f16 `m`, nibbles as Q4_0; value = d·q + m.
//! - `Q5_0` (32, 22): f16 `d`, u32 `qh` (bit j: 5th bit of value j), nibbles as Q4_0;
//!   value = d·(q − 16).
//! - `Q5_1` (32, 24): f16 `d`, f16 `m`, `qh`, nibbles; value = d·q + m.
//! - `Q8_K` (256, 292): f32 `d`, 256 × i8, 16 × i16 sums of 16 (unused here); value = d·q.
//! - `Q4_K` (256, 144): f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and minimums for the
//!   eight sub-blocks, 128 bytes of nibbles: 64-value group g uses bytes 32g..32g+32, low
//!   nibbles for its first 32 values, high nibbles for the next; value = d·sc·q − dmin·mn.
//! - `Q5_K` (256, 176): as Q4_K with 32 bytes `qh` before the nibbles: value l of sub-block j
//!   takes bit j of `qh[l]` as its 5th bit.
//! - `Q6_K` (256, 210): 128 bytes low nibbles `ql`, 64 bytes high 2-bit pairs `qh`, 16 × i8
//!   scales (one per 16 values), f16 `d`; value = d·sc·(q − 32).
//! - `Q2_K` (256, 84): 16 bytes of 4-bit scale and 4-bit minimum per 16 values, 64 bytes of
//!   2-bit values, f16 `d`, f16 `dmin`; value = d·sc·q − dmin·mn.
//! - `Q3_K` (256, 110): 32 bytes `hmask` (3rd bit, inverted), 64 bytes of 2-bit values, 12 bytes
//!   of 6-bit scales, f16 `d`; value = d·(sc − 32)·(q − 4·!h).

use super::{read_f16, DType, QK};

/// 32 values of a block in integer form; see the module comment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SubBlock {
    pub q: [i8; QK],
    pub sc: [i16; 2],
    pub d: f32,
    pub m: f32,
    pub mq: [i8; 2],
    pub dm: f32,
}

impl SubBlock {
    /// A sub-block of scale `d` with no per-16 scales or minimums (`q` still to fill).
    pub(crate) fn new(d: f32) -> SubBlock {
        SubBlock {
            q: [0; QK],
            sc: [1; 2],
            d,
            m: 0.0,
            mq: [0; 2],
            dm: 0.0,
        }
    }

    /// The 32 values as f32, with ggml's rounding: `(d·sc)·q + m`, `dl·q − ml` for Q2_K.
    pub fn dequantize(&self, out: &mut [f32]) {
        for (h, o) in out.chunks_exact_mut(QK / 2).enumerate() {
            let dl = self.d * self.sc[h] as f32;
            let ml = self.dm * self.mq[h] as f32;
            let off = self.m + ml;
            for (v, &q) in o.iter_mut().zip(&self.q[h * QK / 2..]) {
                // no offset added when there is none: ggml's −0 stays −0
                *v = if off == 0.0 {
                    dl * q as f32
                } else {
                    dl * q as f32 + off
                };
            }
        }
    }
}

/// Sub-blocks per block of `dtype` (quantized types only).
pub fn sub_blocks(dtype: DType) -> usize {
    dtype.block_len() / QK
}

/// Sub-block `j` of the block `blk` (`dtype.block_bytes()` bytes).
pub fn sub_block(dtype: DType, blk: &[u8], j: usize) -> SubBlock {
    debug_assert_eq!(blk.len(), dtype.block_bytes());
    match dtype {
        DType::Q8_0 => {
            let mut s = SubBlock::new(read_f16(blk));
            for (q, &b) in s.q.iter_mut().zip(&blk[2..]) {
                *q = b as i8;
            }
            s
        }
        DType::Q4_0 => nibbles(SubBlock::new(read_f16(blk)), &blk[2..18], 0, -8),
        DType::Q4_1 => {
            let mut s = SubBlock::new(read_f16(blk));
            s.m = read_f16(&blk[2..]);
            nibbles(s, &blk[4..20], 0, 0)
        }
        DType::Q5_0 => nibbles(
            SubBlock::new(read_f16(blk)),
            &blk[6..22],
            u32_at(blk, 2),
            -16,
        ),
        DType::Q5_1 => {
            let mut s = SubBlock::new(read_f16(blk));
            s.m = read_f16(&blk[2..]);
            nibbles(s, &blk[8..24], u32_at(blk, 4), 0)
        }
        DType::Q8_K => {
            let mut s = SubBlock::new(f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]));
            for (q, &b) in s.q.iter_mut().zip(&blk[4 + j * QK..]) {
                *q = b as i8;
            }
            s
        }
        DType::Q4_K | DType::Q5_K => {
            let (sc, mn) = scale_min_k4(j, &blk[4..16]);
            let mut s = SubBlock::new(read_f16(blk) * sc as f32);
            s.m = -(read_f16(&blk[2..]) * mn as f32);
            let (qs, qh) = if dtype == DType::Q4_K {
                (&blk[16..144], None)
            } else {
                (&blk[48..176], Some(&blk[16..48]))
            };
            let g = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            for (l, q) in s.q.iter_mut().enumerate() {
                let nib = if j.is_multiple_of(2) {
                    g[l] & 0xf
                } else {
                    g[l] >> 4
                };
                let hi = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
                *q = (nib | hi) as i8;
            }
            s
        }
        DType::Q6_K => {
            let (n, k) = (j / 4, j % 4);
            let ql = &blk[64 * n + 32 * (k & 1)..];
            let qh = &blk[128 + 32 * n..];
            let scales = &blk[192 + 8 * n + 2 * k..];
            let mut s = SubBlock::new(read_f16(&blk[208..]));
            s.sc = [scales[0] as i8 as i16, scales[1] as i8 as i16];
            for (l, q) in s.q.iter_mut().enumerate() {
                let lo = if k < 2 { ql[l] & 0xf } else { ql[l] >> 4 };
                let hi = (qh[l] >> (2 * k)) & 3;
                *q = (lo | hi << 4) as i8 - 32;
            }
            s
        }
        DType::Q2_K => {
            let (n, k) = (j / 4, j % 4);
            let qs = &blk[16 + 32 * n..];
            let scales = &blk[8 * n + 2 * k..];
            let mut s = SubBlock::new(read_f16(&blk[80..]));
            s.dm = -read_f16(&blk[82..]);
            s.sc = [(scales[0] & 0xf) as i16, (scales[1] & 0xf) as i16];
            s.mq = [(scales[0] >> 4) as i8, (scales[1] >> 4) as i8];
            for (l, q) in s.q.iter_mut().enumerate() {
                *q = ((qs[l] >> (2 * k)) & 3) as i8;
            }
            s
        }
        DType::Q3_K => {
            let (n, k) = (j / 4, j % 4);
            let hmask = &blk[..32];
            let qs = &blk[32 + 32 * n..];
            let scales = scales_q3_k(&blk[96..108]);
            let mut s = SubBlock::new(read_f16(&blk[108..]));
            s.sc = [
                scales[8 * n + 2 * k] as i16 - 32,
                scales[8 * n + 2 * k + 1] as i16 - 32,
            ];
            let bit = 1u8 << (4 * n + k);
            for (l, q) in s.q.iter_mut().enumerate() {
                let low = ((qs[l] >> (2 * k)) & 3) as i8;
                *q = low - if hmask[l] & bit != 0 { 0 } else { 4 };
            }
            s
        }
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("{dtype} has no sub-blocks"),
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Fills `s.q` from 16 bytes of nibbles (byte j: value j low, value j+16 high), a 5th bit from
/// `qh` (bit i for value i; 0 for 4-bit types) and an offset.
fn nibbles(mut s: SubBlock, qs: &[u8], qh: u32, offset: i8) -> SubBlock {
    for (j, &byte) in qs[..QK / 2].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        s.q[j] = ((byte & 0xf) as u32 | h0) as i8 + offset;
        s.q[j + QK / 2] = ((byte >> 4) as u32 | h1) as i8 + offset;
    }
    s
}

/// Scale and minimum of sub-block `j` (0..8) from Q4_K/Q5_K's 12 packed bytes: 6 bits each,
/// sub-blocks 4..8 keep their low 4 bits in bytes 8..12 and their top 2 bits in the top bits of
/// bytes 0..8.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q3_K's sixteen 6-bit scales (before subtracting 32) from its 12 packed bytes: low 4 bits of
/// scales 0..8 in the low nibbles of bytes 0..8, of scales 8..16 in their high nibbles, and the
/// top 2 bits of scale i in bits 2·(i/4).. of byte 8 + i % 4.
pub(crate) fn scales_q3_k(q: &[u8]) -> [u8; 16] {
    let mut s = [0u8; 16];
    for (i, v) in s.iter_mut().enumerate() {
        let low = if i < 8 { q[i] & 0xf } else { q[i - 8] >> 4 };
        let high = (q[8 + i % 4] >> (2 * (i / 4))) & 3;
        *v = low | high << 4;
    }
    s
}

/// Byte offsets of the f16 scales and minimums in a block of `dtype` (see the layouts above):
/// the only bytes of a block that can hold a NaN or an infinity (Q8_K's f32 `d` is apart).
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q8_K | DType::F32 | DType::F16 | DType::BF16 => &[],
    }
}

/// The index of the first block of `src` whose scale or minimum is a NaN or an infinity.
pub fn first_non_finite_block(dtype: DType, src: &[u8]) -> Option<usize> {
    let mut blocks = src.chunks_exact(dtype.block_bytes());
    if dtype == DType::Q8_K {
        return blocks
            .map(|b| u32_at(b, 0))
            .position(super::f32_bits_non_finite);
    }
    let fields = f16_fields(dtype);
    blocks.position(|b| {
        fields
            .iter()
            .any(|&o| super::f16_bits_non_finite(u16::from_le_bytes([b[o], b[o + 1]])))
    })
}

/// Converts whole blocks of `dtype` to f32, exactly as ggml's reference dequantization does.
pub fn dequantize_blocks(dtype: DType, src: &[u8], out: &mut [f32]) {
    let bb = dtype.block_bytes();
    let per = sub_blocks(dtype);
    for (o, blk) in out
        .chunks_exact_mut(dtype.block_len())
        .zip(src.chunks_exact(bb))
    {
        for (j, oj) in o.chunks_exact_mut(QK).enumerate().take(per) {
            sub_block(dtype, blk, j).dequantize(oj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q3_K's scale unpacking against ggml's word-wise formulation (kmask1/kmask2).
    #[test]
    fn q3_k_scales_match_the_word_wise_unpacking() {
        let mut seed = 7u32;
        for _ in 0..200 {
            let mut q = [0u8; 12];
            for b in &mut q {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                *b = (seed >> 24) as u8;
            }
            let mut aux = [0u32; 4];
            for (i, a) in aux.iter_mut().take(3).enumerate() {
                *a = u32_at(&q, 4 * i);
            }
            let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let tmp = aux[2];
            aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
            aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
            aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
            aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
            let want: Vec<u8> = aux.iter().flat_map(|a| a.to_le_bytes()).collect();
            assert_eq!(scales_q3_k(&q).to_vec(), want);
        }
    }
}
