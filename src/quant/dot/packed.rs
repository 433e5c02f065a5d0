//! Weights repacked at load into the layout the kernels in use read fastest: today the AVX-512
//! kernels' rows in lanes (`avx512/packed.rs`), which spares them the transposes that cost a
//! third to a half of their instructions at one token. A packed matrix is a copy in anonymous
//! memory, of the same size give or take 2 bytes per block; the CPU backend gives the file's
//! pages of the original back to the OS (`Bytes::release_pages`).

use super::{ActInt, QActs, Simd};
use crate::quant::DType;
use std::ops::Range;

/// A `rows × cols` weight matrix packed for one kernel set.
pub struct PackedWeights {
    // read by the x86-64 kernels only: nothing is packed elsewhere yet
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    dtype: DType,
    rows: usize,
    cols: usize,
    /// Zeroed pages of their own, aligned for the kernels' 64-byte loads. (Asking for huge
    /// pages made packing the 1.5B take 150 ms or, where the OS found none, 1.2–1.6 s instead
    /// of 0.3 s; populating the pages up front, 0.45 s.)
    map: memmap2::MmapMut,
}

impl PackedWeights {
    /// `w` (`rows × cols` of `dtype`, in the file's layout) packed for `simd`, where its
    /// kernels read `dtype` packed; else `None`, and the file's layout serves.
    pub fn new(simd: Simd, dtype: DType, w: &[u8], rows: usize, cols: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if simd == Simd::Avx512Vnni
            && simd.available()
            && super::avx512::supports(dtype)
            && cols > 0
            && cols.is_multiple_of(dtype.block_len())
            && w.len() >= rows * dtype.row_bytes(cols)
        {
            let mut map =
                memmap2::MmapMut::map_anon(super::avx512::packed_bytes(dtype, rows, cols).max(1))
                    .ok()?;
            // SAFETY: the CPU has AVX-512 (`simd.available()`)
            unsafe { super::avx512::pack(dtype, w, rows, cols, &mut map) };
            return Some(PackedWeights {
                dtype,
                rows,
                cols,
                map,
            });
        }
        let _ = (simd, dtype, w, rows, cols);
        None
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.map.len()
    }
}

/// `out[t * out_stride + (r - rows.start)] = dot(W[r], A[t])`, as `matmul_q_with` with the
/// kernels `w` was packed for; `rows.start` is a multiple of 16 (a packed group).
pub fn matmul_packed<Q: ActInt>(
    w: &PackedWeights,
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(acts.cols == w.cols && rows.end <= w.rows);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `new` packs only for AVX-512 VNNI on a CPU that has it, and only the types its
    // kernels cover; the kernel checks the slice bounds it relies on
    unsafe {
        super::avx512::matmul_q(w.dtype, &w.map, true, rows, acts, out, out_stride)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, rows, acts, out, out_stride);
        unreachable!("nothing is packed on this architecture")
    }
}
