//! f32 → block formats. Q8_0, Q4_0 and Q4_1 follow llama.cpp's reference rounding, so that
//! quantize-on-load gives the same blocks as llama.cpp's own quantizer. The 5-bit and K types
//! round each value to the nearest level of plainly chosen scales (no search for the best
//! scales, as llama.cpp's quantizer does): they serve tests and tiny models, and real files come
//! quantized.

use super::{DType, QK, QK_K};
use half::{bf16, f16};

fn push_f16(out: &mut Vec<u8>, x: f32) {
    out.extend_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
}

/// Appends `x` (a multiple of 32 values) as Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(out, d);
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

/// Appends `x` as Q4_0 blocks (the value of largest magnitude maps to −8).
pub fn quantize_q4_0(x: &[f32], out: &mut Vec<u8>) {
    out.reserve(x.len() / QK * DType::Q4_0.block_bytes());
    for blk in x.chunks_exact(QK) {
        let d = signed_max(blk) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(out, d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        // a fixed-size loop the compiler vectorises (drafters are requantized at load)
        let qs: [u8; QK / 2] = std::array::from_fn(|j| q(blk[j]) | (q(blk[j + QK / 2]) << 4));
        out.extend_from_slice(&qs);
    }
}

/// Appends `x` as Q4_1 blocks (scale and minimum per block).
pub fn quantize_q4_1(x: &[f32], out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK) {
        let (min, max) = blk
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(out, d);
        push_f16(out, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        out.extend((0..QK / 2).map(|j| q(blk[j]) | (q(blk[j + QK / 2]) << 4)));
    }
}

/// Scale and offset that map `blk` onto the levels `0..=levels` (`min` is at most 0).
fn affine(blk: &[f32], levels: f32) -> (f32, f32) {
    let (min, max) = blk
        .iter()
        .fold((0f32, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    ((max.max(min) - min) / levels, min)
}

/// The value of largest magnitude in `x`, with its sign: the first such value, and +0 when all
/// are zero.
fn signed_max(x: &[f32]) -> f32 {
    // the magnitude first (a reduction that vectorises), then where it is
    let amax = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

fn nearest(v: f32, lo: i32, hi: i32) -> i32 {
    (v.round() as i32).clamp(lo, hi)
}

/// Q5_0 / Q5_1: 5-bit values, nibbles as Q4_0 plus a word of 5th bits.
fn quantize_q5(x: &[f32], with_min: bool, out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK) {
        let (d, min) = if with_min {
            let (min, max) = blk
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            ((max - min) / 31.0, min)
        } else {
            (signed_max(blk) / -16.0, 0.0)
        };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(out, d);
        if with_min {
            push_f16(out, min);
        }
        let offset = if with_min { 0 } else { 16 };
        let q: Vec<u32> = blk
            .iter()
            .map(|&v| nearest((v - min) * id + offset as f32, 0, 31) as u32)
            .collect();
        let qh = q
            .iter()
            .enumerate()
            .fold(0u32, |h, (i, &v)| h | ((v >> 4) << i));
        out.extend_from_slice(&qh.to_le_bytes());
        out.extend((0..QK / 2).map(|j| (q[j] & 0xf) as u8 | ((q[j + QK / 2] & 0xf) << 4) as u8));
    }
}

/// Q8_K: one f32 scale per 256 values, and the sums of each 16.
fn quantize_q8_k(x: &[f32], out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK_K) {
        let max = signed_max(blk);
        let d = max / -127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: Vec<i32> = blk.iter().map(|&v| nearest(v * id, -128, 127)).collect();
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(q.iter().map(|&v| v as i8 as u8));
        for s in q.chunks_exact(16) {
            out.extend_from_slice(&(s.iter().sum::<i32>() as i16).to_le_bytes());
        }
    }
}

/// Q4_K / Q5_K: per sub-block of 32 a scale and a minimum, both 6-bit multiples of the
/// super-block's `d` and `dmin`.
fn quantize_q45_k(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let levels = ((1 << bits) - 1) as f32;
    for blk in x.chunks_exact(QK_K) {
        let sub: Vec<(f32, f32)> = blk.chunks_exact(QK).map(|b| affine(b, levels)).collect();
        let max_scale = sub.iter().fold(0f32, |m, s| m.max(s.0));
        let max_min = sub.iter().fold(0f32, |m, s| m.max(-s.1));
        let d = half::f16::from_f32(max_scale / 63.0).to_f32();
        let dmin = half::f16::from_f32(max_min / 63.0).to_f32();
        let sc: Vec<u8> = sub
            .iter()
            .map(|s| {
                if d > 0.0 {
                    nearest(s.0 / d, 0, 63) as u8
                } else {
                    0
                }
            })
            .collect();
        let mn: Vec<u8> = sub
            .iter()
            .map(|s| {
                if dmin > 0.0 {
                    nearest(-s.1 / dmin, 0, 63) as u8
                } else {
                    0
                }
            })
            .collect();
        let mut scales = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                scales[j] = sc[j];
                scales[j + 4] = mn[j];
            } else {
                scales[j + 4] = (sc[j] & 0xf) | ((mn[j] & 0xf) << 4);
                scales[j - 4] |= (sc[j] >> 4) << 6;
                scales[j] |= (mn[j] >> 4) << 6;
            }
        }
        let q: Vec<u8> = blk
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (dl, ml) = (d * sc[i / QK] as f32, dmin * mn[i / QK] as f32);
                if dl > 0.0 {
                    nearest((v + ml) / dl, 0, levels as i32) as u8
                } else {
                    0
                }
            })
            .collect();
        push_f16(out, d);
        push_f16(out, dmin);
        out.extend_from_slice(&scales);
        if bits == 5 {
            let mut qh = [0u8; 32];
            for (i, &v) in q.iter().enumerate() {
                qh[i % QK] |= (v >> 4) << (i / QK);
            }
            out.extend_from_slice(&qh);
        }
        for g in q.chunks_exact(2 * QK) {
            out.extend((0..QK).map(|l| (g[l] & 0xf) | ((g[l + QK] & 0xf) << 4)));
        }
    }
}

/// Integer scales per 16 values for the types whose scales are small integer multiples of the
/// super-block's `d`: the scale of each 16 values from `scale_of`, then `d` such that the largest
/// maps to `sc_max`. Returns `(d, scales)`.
fn scales16(blk: &[f32], scale_of: impl Fn(&[f32]) -> f32, sc_max: i32) -> (f32, Vec<i32>) {
    let s: Vec<f32> = blk.chunks_exact(16).map(scale_of).collect();
    let max = signed_max(&s);
    let d = half::f16::from_f32(max / sc_max as f32).to_f32();
    let sc = s
        .iter()
        .map(|&v| {
            if d != 0.0 {
                nearest(v / d, -sc_max, sc_max)
            } else {
                0
            }
        })
        .collect();
    (d, sc)
}

/// The level nearest to `v` given the scale `dl` of its 16 values.
fn level(v: f32, dl: f32, lo: i32, hi: i32) -> i32 {
    if dl != 0.0 {
        nearest(v / dl, lo, hi)
    } else {
        0
    }
}

/// Q6_K: values −32..31, an i8 scale per 16 values.
fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK_K) {
        let (d, sc) = scales16(blk, |b| signed_max(b) / -32.0, 127);
        let q: Vec<u8> = blk
            .iter()
            .enumerate()
            .map(|(i, &v)| (level(v, d * sc[i / 16] as f32, -32, 31) + 32) as u8)
            .collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for n in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    let v = q[128 * n + 32 * k + l];
                    ql[64 * n + 32 * (k & 1) + l] |= (v & 0xf) << (4 * (k / 2));
                    qh[32 * n + l] |= (v >> 4) << (2 * k);
                }
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|&s| s as i8 as u8));
        push_f16(out, d);
    }
}

/// Places the 2-bit values of a Q2_K/Q3_K super-block: value 32k + l of each half n at bits
/// 2k of byte 32n + l.
fn pack_2bit(q: &[u8]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for (i, &v) in q.iter().enumerate() {
        let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
        qs[32 * n + l] |= (v & 3) << (2 * k);
    }
    qs
}

/// Q2_K: values 0..3, a 4-bit scale and a 4-bit minimum per 16 values.
fn quantize_q2_k(x: &[f32], out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK_K) {
        let sub: Vec<(f32, f32)> = blk.chunks_exact(16).map(|b| affine(b, 3.0)).collect();
        let max_scale = sub.iter().fold(0f32, |m, s| m.max(s.0));
        let max_min = sub.iter().fold(0f32, |m, s| m.max(-s.1));
        let d = half::f16::from_f32(max_scale / 15.0).to_f32();
        let dmin = half::f16::from_f32(max_min / 15.0).to_f32();
        let sc: Vec<i32> = sub.iter().map(|s| level(s.0, d, 0, 15)).collect();
        let mn: Vec<i32> = sub.iter().map(|s| level(-s.1, dmin, 0, 15)).collect();
        let q: Vec<u8> = blk
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (dl, ml) = (d * sc[i / 16] as f32, dmin * mn[i / 16] as f32);
                level(v + ml, dl, 0, 3) as u8
            })
            .collect();
        out.extend(sc.iter().zip(&mn).map(|(&s, &m)| (s | m << 4) as u8));
        out.extend_from_slice(&pack_2bit(&q));
        push_f16(out, d);
        push_f16(out, dmin);
    }
}

/// Q3_K: values −4..3 (two low bits and an inverted high bit), a 6-bit scale per 16 values.
fn quantize_q3_k(x: &[f32], out: &mut Vec<u8>) {
    for blk in x.chunks_exact(QK_K) {
        let (d, sc) = scales16(blk, |b| signed_max(b) / -4.0, 31);
        let q: Vec<u8> = blk
            .iter()
            .enumerate()
            .map(|(i, &v)| (level(v, d * sc[i / 16] as f32, -4, 3) + 4) as u8)
            .collect();
        let mut hmask = [0u8; 32];
        for (i, &v) in q.iter().enumerate() {
            hmask[i % 32] |= (v >> 2) << (i / 32);
        }
        let mut scales = [0u8; 12];
        for (i, &s) in sc.iter().enumerate() {
            let s = (s + 32) as u8;
            scales[i % 8] |= (s & 0xf) << (4 * (i / 8));
            scales[8 + i % 4] |= (s >> 4) << (2 * (i / 4));
        }
        out.extend_from_slice(&hmask);
        out.extend_from_slice(&pack_2bit(&q));
        out.extend_from_slice(&scales);
        push_f16(out, d);
    }
}

/// Appends `x` in any supported type (quantized types need whole blocks).
pub fn quantize_row(dtype: DType, x: &[f32], out: &mut Vec<u8>) {
    match dtype {
        DType::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => x.iter().for_each(|&v| push_f16(out, v)),
        DType::BF16 => out.extend(
            x.iter()
                .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()),
        ),
        DType::Q8_0 => quantize_q8_0(x, out),
        DType::Q4_0 => quantize_q4_0(x, out),
        DType::Q4_1 => quantize_q4_1(x, out),
        DType::Q5_0 => quantize_q5(x, false, out),
        DType::Q5_1 => quantize_q5(x, true, out),
        DType::Q2_K => quantize_q2_k(x, out),
        DType::Q3_K => quantize_q3_k(x, out),
        DType::Q4_K => quantize_q45_k(x, 4, out),
        DType::Q5_K => quantize_q45_k(x, 5, out),
        DType::Q6_K => quantize_q6_k(x, out),
        DType::Q8_K => quantize_q8_k(x, out),
    }
}

#[cfg(test)]
mod tests {
    use super::super::dequantize_row;
    use super::*;

    /// Round trip error per element is bounded by half a quantization step.
    #[test]
    fn round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 7919 % 263) as f32 / 263.0 - 0.4) * 3.0)
            .collect();
        for dtype in DType::ALL {
            let mut bytes = Vec::new();
            quantize_row(dtype, &x, &mut bytes);
            assert_eq!(bytes.len(), dtype.row_bytes(x.len()));
            let mut y = vec![0f32; x.len()];
            dequantize_row(dtype, &bytes, &mut y);
            for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
                let (lo, hi) = blk_x
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let amax = lo.abs().max(hi.abs());
                let step = match dtype {
                    DType::F32 => 0.0,
                    DType::F16 => amax / 1024.0,
                    DType::BF16 => amax / 128.0,
                    DType::Q8_0 => amax / 127.0,
                    DType::Q4_0 => amax / 8.0,
                    DType::Q4_1 => (hi - lo) / 15.0,
                    DType::Q5_0 => amax / 16.0,
                    DType::Q5_1 => (hi - lo) / 31.0,
                    DType::Q8_K => amax / 127.0,
                    // the K types also round their scales to a few bits: up to a whole step
                    DType::Q2_K => 2.0 * (hi - lo.min(0.0)) / 3.0,
                    DType::Q3_K => 2.0 * amax / 4.0,
                    DType::Q4_K => 2.0 * (hi - lo.min(0.0)) / 15.0,
                    DType::Q5_K => 2.0 * (hi - lo.min(0.0)) / 31.0,
                    DType::Q6_K => 2.0 * amax / 32.0,
                };
                for (a, b) in blk_x.iter().zip(blk_y) {
                    // f16-stored scales add a little on top of the half step
                    assert!(
                        (a - b).abs() <= step * 0.5 + amax * 2e-3,
                        "{dtype}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        for dtype in DType::ALL {
            let mut bytes = Vec::new();
            quantize_row(dtype, &[0.0; 256], &mut bytes);
            let mut y = [1f32; 256];
            dequantize_row(dtype, &bytes, &mut y);
            assert_eq!(y, [0.0; 256], "{dtype}");
        }
    }
}
