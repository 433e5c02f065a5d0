//! Weights repacked at load into the layout the kernels in use read fastest: today the AVX-512
//! kernels' rows in lanes (`avx512/packed.rs`), which spares them the transposes that cost a
//! third to a half of their instructions at one token. The file's bytes stay mapped for
//! everything else (embedding rows, other kernel sets); a packed matrix is a second copy, in
//! anonymous memory, of the same size give or take 2 bytes per block.

use super::{ActInt, QActs, Simd};
use crate::quant::DType;
use std::ops::Range;

/// One cache line, so that no packed vector straddles two.
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `n` zeroed lines, from pages the OS hands out zeroed rather than written here (a model's
/// worth of them would take a pass of its own).
#[cfg(target_arch = "x86_64")]
fn zeroed_lines(n: usize) -> Vec<Line> {
    if n == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<Line>(n).expect("a matrix fits the address space");
    // SAFETY: the layout is not empty; the memory, zeroed, is n valid `Line`s, allocated by
    // the global allocator with `Line`'s layout, as `Vec` frees it
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut Line;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

/// A `rows × cols` weight matrix packed for one kernel set.
pub struct PackedWeights {
    // read by the x86-64 kernels only: nothing is packed elsewhere yet
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    dtype: DType,
    rows: usize,
    cols: usize,
    lines: Vec<Line>,
}

impl PackedWeights {
    /// `w` (`rows × cols` of `dtype`, in the file's layout) packed for `simd`, where its
    /// kernels read `dtype` packed; else `None`, and the file's layout serves.
    pub fn new(simd: Simd, dtype: DType, w: &[u8], rows: usize, cols: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if simd == Simd::Avx512Vnni
            && simd.available()
            && super::avx512::supports(dtype)
            && cols.is_multiple_of(dtype.block_len())
            && w.len() >= rows * dtype.row_bytes(cols)
        {
            let n = super::avx512::packed_bytes(dtype, rows, cols).div_ceil(64);
            let mut lines = zeroed_lines(n);
            // SAFETY: `Line` is 64 plain bytes, so the lines are `64 * n` bytes; the CPU has
            // AVX-512 (`simd.available()`)
            unsafe {
                let bytes = std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u8, 64 * n);
                super::avx512::pack(dtype, w, rows, cols, bytes);
            }
            return Some(PackedWeights {
                dtype,
                rows,
                cols,
                lines,
            });
        }
        let _ = (simd, dtype, w, rows, cols);
        None
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        64 * self.lines.len()
    }

    #[cfg(target_arch = "x86_64")]
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: as in `new`
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.bytes()) }
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
        super::avx512::matmul_q(w.dtype, w.as_bytes(), true, rows, acts, out, out_stride)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, rows, acts, out, out_stride);
        unreachable!("nothing is packed on this architecture")
    }
}
