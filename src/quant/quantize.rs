//! f32 → block formats, with llama.cpp's reference rounding so that quantize-on-load gives the
//! same blocks as llama.cpp's own quantizer.

use super::{DType, QK};
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
    for blk in x.chunks_exact(QK) {
        let max = blk
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(out, d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..QK / 2).map(|j| q(blk[j]) | (q(blk[j + QK / 2]) << 4)));
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
            quantize_row(dtype, &[0.0; 32], &mut bytes);
            let mut y = [1f32; 32];
            dequantize_row(dtype, &bytes, &mut y);
            assert_eq!(y, [0.0; 32], "{dtype}");
        }
    }
}
