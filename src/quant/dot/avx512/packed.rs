//! The weights repacked at load for these kernels: each block of 16 rows stored as the kernels
//! read it, rows in lanes, so that decoding loads vectors instead of transposing 16 rows
//! (`lanes4`, `lanes8`), and a pass reads one sequential stream instead of 16 interleaved ones.
//!
//! A block's bytes first get 2 bytes of padding where the type needs them for its fields to
//! start on dwords (its *image*: Q8_0 and Q4_0 after their f16 scale, Q5_0 after its fifth
//! bits, Q6_K at the end). Then, for the rows `16g..16g + 16` and block i of each row, the 16
//! images are stored dword by dword: dword k of row r at `64k + 4r`. The groups follow each
//! other, their blocks in order; rows past the matrix's end are zeros.

use super::{block_bytes, lanes8, per_block, Rows, G};
use crate::quant::{DType, QK};
use std::arch::x86_64::*;

/// Where the image of a `dtype` block has its 2 bytes of padding (beyond the block: none).
pub(super) const fn pad_at(dtype: DType) -> usize {
    match dtype {
        DType::Q8_0 | DType::Q4_0 => 2,
        DType::Q5_0 => 6,
        DType::Q6_K => 210,
        _ => usize::MAX,
    }
}

/// Bytes of one block's image.
pub(super) const fn image_bytes(dtype: DType) -> usize {
    block_bytes(dtype).next_multiple_of(4)
}

/// Bytes of a `rows × cols` matrix of `dtype` packed.
pub fn bytes(dtype: DType, rows: usize, cols: usize) -> usize {
    rows.next_multiple_of(G) * cols / QK / per_block(dtype) * image_bytes(dtype)
}

/// Packs the `rows × cols` matrix `w` of `dtype` (in the file's layout) into `out`, which
/// holds `bytes(dtype, rows, cols)`, with the kernels' own transposes.
///
/// # Safety
/// The CPU has AVX-512 F (`super::available()`).
#[target_feature(enable = "avx512f")]
pub unsafe fn pack(dtype: DType, w: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    let (bb, ib) = (block_bytes(dtype), image_bytes(dtype));
    let blocks = cols / QK / per_block(dtype);
    let len = bytes(dtype, rows, cols);
    assert!(w.len() >= rows * blocks * bb && out.len() >= len);
    let cut = pad_at(dtype).min(bb);
    // 16 images side by side, wide enough for `lanes8` to read past the last dword
    const WIDE: usize = 256;
    let mut images = [[0u8; WIDE]; G];
    for (g, group) in out[..len].chunks_exact_mut(G * blocks * ib).enumerate() {
        for (i, packed) in group.chunks_exact_mut(G * ib).enumerate() {
            for (r, image) in images.iter_mut().enumerate() {
                let row = G * g + r;
                if row < rows {
                    let raw = &w[(row * blocks + i) * bb..][..bb];
                    image[..cut].copy_from_slice(&raw[..cut]);
                    image[cut + 2..bb + 2].copy_from_slice(&raw[cut..]);
                } else {
                    image[..ib].fill(0);
                }
            }
            let p = Rows::<false> {
                p: std::array::from_fn(|r| images[r].as_ptr()),
                pad_at: usize::MAX,
                next_group: 0,
            };
            // dword k of the 16 images, as one vector, at 64k
            for k in (0..ib / 4).step_by(8) {
                let v = lanes8(&p, 4 * k);
                for (j, x) in v.iter().take(ib / 4 - k).enumerate() {
                    _mm512_storeu_si512(packed.as_mut_ptr().add(64 * (k + j)) as *mut _, *x);
                }
            }
        }
    }
}
