//! Weight types and their block layouts (the GGML ones llmcad reads), conversion to and from
//! f32, and the dot-product kernels the CPU backend multiplies with. `blocks` describes every
//! quantized layout and decodes it to one integer form the kernels share.

mod blocks;
mod dot;
mod quantize;

pub use blocks::{sub_block, sub_blocks, SubBlock};
#[cfg(test)]
pub(crate) use dot::testing;
pub use dot::{
    dot_f32, dot_q16, dot_q8, matmul_f32, matmul_f32_with, matmul_packed, matmul_q16, matmul_q8,
    matmul_q_with, ActInt, PackedWeights, Q16Acts, Q16Row, Q8Acts, Q8Row, QActs, QRow, Simd,
};
pub use quantize::{quantize_q4_0, quantize_q4_1, quantize_q8_0, quantize_row};

use crate::error::{format_err, Result};
use half::{bf16, f16};

/// Elements per quantization block of the legacy types, per sub-block of the K-quants, and per
/// block of quantized activations.
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// The element types a weight tensor may have (GGML's names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
}

impl DType {
    pub const ALL: [DType; 14] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
    ];

    /// Elements per block (1 for the float types).
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => QK,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => {
                QK_K
            }
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q2_K => 84,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
            DType::Q8_K => 292,
        }
    }

    /// The K-quants (super-blocks of 256 with per-sub-block scales).
    pub fn is_k_quant(self) -> bool {
        self.block_len() == QK_K
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of a row of `cols` elements; `cols` must be a multiple of the block length
    /// (checked when tensors are loaded).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// Bytes of `n` elements, or an error when `n` does not fill whole blocks.
    pub fn bytes_for(self, n: usize, what: &str) -> Result<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return Err(format_err!(
                "{what}: {n} elements is not a multiple of the {} block size {}",
                self.name(),
                self.block_len()
            ));
        }
        Ok(self.row_bytes(n))
    }

    /// Bits per weight, for reports.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_len() as f64
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q2_K => "Q2_K",
            DType::Q3_K => "Q3_K",
            DType::Q4_K => "Q4_K",
            DType::Q5_K => "Q5_K",
            DType::Q6_K => "Q6_K",
            DType::Q8_K => "Q8_K",
        }
    }

    /// Every type's name, comma-separated, for messages.
    pub fn names() -> String {
        DType::ALL.map(DType::name).join(", ")
    }

    /// Parses the name of a block type that weights can be quantized to (`--quantize`,
    /// `--draft-quantize`, the C ABI's `quantize`).
    pub fn parse_quantized(s: &str) -> std::result::Result<DType, String> {
        s.parse::<DType>()
            .ok()
            .filter(|d| d.is_quantized())
            .ok_or_else(|| format!("{s}: expected a quantized type such as q8_0, q4_0 or q4_1"))
    }

    /// The GGML type id used in GGUF files.
    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::Q8_K => 15,
            DType::BF16 => 30,
        }
    }

    /// Maps a GGML type id to a supported type; `Err` carries the type's GGML name (or its
    /// number) so the caller can say which tensor has it.
    pub fn from_ggml_id(id: u32) -> Result<DType, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.ggml_id() == id)
            .ok_or_else(|| ggml_type_name(id))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown type '{s}' (expected one of {})", DType::names()))
    }
}

/// GGML's names for the types llmcad does not read, for error messages.
fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    match NAMES.get(id as usize) {
        Some(name) => format!("{name} (GGML type {id})"),
        None => format!("unknown GGML type {id}"),
    }
}

#[inline]
pub(crate) fn read_f16(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// An f32's bits with an all-ones exponent: a NaN or an infinity.
fn f32_bits_non_finite(bits: u32) -> bool {
    bits & 0x7f80_0000 == 0x7f80_0000
}

fn f16_bits_non_finite(bits: u16) -> bool {
    bits & 0x7c00 == 0x7c00
}

/// The index of the first value of `src` (whole blocks of `dtype`) that is a NaN or an
/// infinity; for a block type, the first value of the first block whose scale or minimum is.
/// Only the bits are read, so a scan costs little more than touching the bytes.
pub fn first_non_finite(dtype: DType, src: &[u8]) -> Option<usize> {
    let u16s = || {
        src.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    match dtype {
        DType::F32 => src
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .position(f32_bits_non_finite),
        DType::F16 => u16s().position(f16_bits_non_finite),
        DType::BF16 => u16s().position(|h| f32_bits_non_finite((h as u32) << 16)),
        _ => blocks::first_non_finite_block(dtype, src).map(|b| b * dtype.block_len()),
    }
}

/// Converts one row (`out.len()` elements) of `dtype` stored in `src` to f32.
pub fn dequantize_row(dtype: DType, src: &[u8], out: &mut [f32]) {
    let n = out.len();
    debug_assert_eq!(src.len(), dtype.row_bytes(n));
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = read_f16(b);
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        _ => blocks::dequantize_blocks(dtype, src, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    /// A NaN planted anywhere in a block is found exactly when it reaches the dequantized
    /// values (so the scan knows where every type keeps its float fields), and names the value.
    #[test]
    fn non_finite_scan_finds_exactly_what_dequantization_would_spread() {
        let nan16 = 0x7e00u16.to_le_bytes();
        let nan32 = 0x7fc0_0000u32.to_le_bytes();
        for dtype in DType::ALL {
            let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
            let clean = vec![0u8; 3 * bb];
            assert_eq!(first_non_finite(dtype, &clean), None, "{dtype}");
            for plant in [&nan16[..], &nan32[..]] {
                for at in (bb..2 * bb + 1 - plant.len()).step_by(2) {
                    let mut bytes = clean.clone();
                    bytes[at..at + plant.len()].copy_from_slice(plant);
                    let mut values = vec![0f32; 3 * bl];
                    dequantize_row(dtype, &bytes, &mut values);
                    let spread = values.iter().position(|v| !v.is_finite());
                    let found = first_non_finite(dtype, &bytes);
                    match dtype {
                        // a float tensor names the very value
                        DType::F32 | DType::F16 | DType::BF16 => assert_eq!(found, spread),
                        _ => assert_eq!(found, spread.map(|i| i / bl * bl), "{dtype} at {at}"),
                    }
                }
            }
        }
    }

    #[test]
    fn only_quantized_types_parse_as_quantization_targets() {
        assert_eq!(DType::parse_quantized("q4_0"), Ok(DType::Q4_0));
        assert_eq!(DType::parse_quantized("Q8_0"), Ok(DType::Q8_0));
        for bad in ["f16", "f32", "q9_9", ""] {
            let e = DType::parse_quantized(bad).unwrap_err();
            assert!(e.starts_with(bad) && e.contains("q4_0"), "{e}");
        }
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut blk = Vec::from(f16_bytes(0.5));
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0f32; 32];
        dequantize_row(DType::Q8_0, &blk, &mut out);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, 0.5 * (i as f32 - 16.0));
        }
    }

    #[test]
    fn q4_0_block_by_hand() {
        // byte j = (hi << 4) | lo with lo = j, hi = 15 - j
        let mut blk = Vec::from(f16_bytes(2.0));
        blk.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let mut out = [0f32; 32];
        dequantize_row(DType::Q4_0, &blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 2.0 * ((15 - j) as f32 - 8.0));
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        let mut blk = Vec::from(f16_bytes(0.25));
        blk.extend(f16_bytes(-1.5));
        blk.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
        let mut out = [0f32; 32];
        dequantize_row(DType::Q4_1, &blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.25 * (15 - j) as f32 - 1.5);
            assert_eq!(out[j + 16], 0.25 * j as f32 - 1.5);
        }
    }

    #[test]
    fn float_types_by_hand() {
        let vals = [1.0f32, -2.5, 0.0, 65504.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals.iter().flat_map(|v| f16_bytes(*v)).collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let mut out = [0f32; 4];
        dequantize_row(DType::F32, &f32b, &mut out);
        assert_eq!(out, vals);
        dequantize_row(DType::F16, &f16b, &mut out);
        assert_eq!(out, vals);
        dequantize_row(DType::BF16, &bf16b, &mut out);
        assert_eq!(out, [1.0, -2.5, 0.0, 65536.0]); // 65504 rounds to 2^16 in bf16
    }

    #[test]
    fn unknown_ggml_types_are_named() {
        assert_eq!(
            DType::from_ggml_id(20).unwrap_err(),
            "IQ4_NL (GGML type 20)"
        );
        assert_eq!(
            DType::from_ggml_id(999).unwrap_err(),
            "unknown GGML type 999"
        );
        for d in DType::ALL {
            assert_eq!(DType::from_ggml_id(d.ggml_id()), Ok(d));
        }
    }
}
