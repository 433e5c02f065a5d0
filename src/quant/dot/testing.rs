//! Random inputs for the kernel tests: raw blocks with every byte random, and activations
//! that reach the extremes of their integer range.

use super::ActInt;
use crate::quant::DType;

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }
    pub fn f16(&mut self) -> [u8; 2] {
        // finite, either sign, magnitudes 2^-24..2^4 (subnormals included), sometimes 0
        let v = self.next();
        if v.is_multiple_of(17) {
            return [0, 0];
        }
        let e = (v >> 8) % 20 + 1; // biased exponent 1..20, or subnormal below
        let bits = if v.is_multiple_of(13) {
            ((v >> 32) & 0x3ff) as u16
        } else {
            ((e as u16) << 10) | ((v >> 32) & 0x3ff) as u16
        };
        (bits | (((v >> 4) & 1) as u16) << 15).to_le_bytes()
    }
}

/// `n` values in [-1, 1) from `seed`, the same for the same seed.
pub fn randoms(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng(seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407));
    (0..n)
        .map(|_| ((rng.next() >> 24) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect()
}

/// Offsets of the f16 fields of each type's block.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random raw blocks: every byte random, the float scales finite.
pub fn random_blocks(dtype: DType, rng: &mut Rng, n: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut w: Vec<u8> = (0..n * bb).map(|_| rng.next() as u8).collect();
    for blk in w.chunks_exact_mut(bb) {
        for &off in f16_fields(dtype) {
            blk[off..off + 2].copy_from_slice(&rng.f16());
        }
        if dtype == DType::Q8_K {
            let d = (rng.next() % 2000) as f32 / 1000.0 - 1.0;
            blk[..4].copy_from_slice(&(d * 1e-3).to_le_bytes());
        }
    }
    w
}

/// Activations: random over the whole range, or saturated (every value ±qmax or the type's
/// minimum) to reach the largest integer sums.
pub fn acts<Q: ActInt>(
    rng: &mut Rng,
    n: usize,
    conv: impl Fn(i64) -> Q,
    min: i64,
    max: i64,
) -> Vec<Q> {
    let mode = rng.next() % 3;
    (0..n)
        .map(|_| {
            let r = rng.next();
            conv(match mode {
                0 => min + (r % (max - min + 1) as u64) as i64,
                1 => {
                    if r.is_multiple_of(2) {
                        min
                    } else {
                        max
                    }
                }
                _ => {
                    if r.is_multiple_of(5) {
                        max
                    } else {
                        min
                    }
                }
            })
        })
        .collect()
}
