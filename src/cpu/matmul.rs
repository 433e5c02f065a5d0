//! Linear layers on the CPU: `y = x · Wᵀ` for a batch of activation rows, split by weight rows
//! over the thread pool. Several layers that share one input (q/k/v, gate/up) run in a single
//! parallel region, and the input is quantized once for all of them.

use super::pool::{SharedMut, ThreadPool};
use crate::model::Matrix;
use crate::quant::{
    matmul_f32, matmul_packed, matmul_q16, matmul_q8, PackedWeights, Q16Acts, Q8Acts,
};
use std::cell::RefCell;

/// How activations meet the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Block-quantized weights meet activations quantized to 8 bits (llama.cpp's way; fastest
    /// prefill, but outlier activations cost accuracy: SmolLM2 drifts from its f32 reference).
    Q8Activations,
    /// Every weight is dequantized and multiplied in f32 (exact reference path).
    F32,
    /// Block-quantized weights meet activations quantized to 16 bits per block of 32: integer
    /// products like `Q8Activations`, but activation outliers no longer flatten their block.
    /// The default: it reproduces the f32 reference at nearly the 8-bit path's decode speed.
    #[default]
    Q16Activations,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q16" => Ok(Precision::Q16Activations),
            "q8" => Ok(Precision::Q8Activations),
            "f32" => Ok(Precision::F32),
            _ => Err(format!("{s:?}: expected q16, q8 or f32")),
        }
    }
}

thread_local! {
    /// 16-bit activation buffers, lent to one `Input` at a time so decoding allocates nothing.
    static Q16_SCRATCH: RefCell<Q16Acts> = RefCell::new(Q16Acts::default());
}

/// One batch of activation rows, with its 8-bit form made on first use.
pub struct Input<'a> {
    pub x: &'a [f32],
    pub cols: usize,
    q8: Option<&'a mut Q8Acts>,
    quantized: bool,
}

impl<'a> Input<'a> {
    /// `scratch` holds the quantized copy; it is reused across calls to avoid allocations.
    pub fn new(x: &'a [f32], cols: usize, scratch: &'a mut Q8Acts) -> Self {
        Input {
            x,
            cols,
            q8: Some(scratch),
            quantized: false,
        }
    }

    pub fn rows(&self) -> usize {
        self.x.len() / self.cols
    }
}

/// A weight matrix as the kernels take it: the file's bytes, and the copy packed at load
/// where the kernels in use read one (`super::packs`).
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub matrix: &'a Matrix,
    pub packed: Option<&'a PackedWeights>,
}

impl<'a> From<&'a Matrix> for Weight<'a> {
    fn from(matrix: &'a Matrix) -> Self {
        Weight {
            matrix,
            packed: None,
        }
    }
}

/// Computes `outs[i] = input · layers[i]ᵀ` (each `rows × layer.rows`, row-major).
pub fn linear_many(
    pool: &ThreadPool,
    precision: Precision,
    input: &mut Input<'_>,
    layers: &[Weight<'_>],
    outs: &mut [&mut [f32]],
) {
    let t_rows = input.rows();
    let any_quantized = layers.iter().any(|w| w.matrix.dtype.is_quantized());
    if precision == Precision::Q8Activations && any_quantized && !input.quantized {
        let q = input.q8.as_deref_mut().expect("scratch");
        q.quantize(input.x, input.cols);
        input.quantized = true;
    }
    // the 16-bit form is made per call, in buffers borrowed from this thread's scratch
    let mut q16 = None;
    if precision == Precision::Q16Activations && any_quantized {
        let mut q = Q16_SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        q.quantize(input.x, input.cols);
        q16 = Some(q);
    }
    let q8: &Q8Acts = input.q8.as_deref().expect("scratch");
    let x = input.x;
    let cols = input.cols;
    let shared: Vec<SharedMut<f32>> = outs.iter_mut().map(|o| SharedMut::new(o)).collect();
    // one chunk of rows per thread and matrix, handed out as threads come free (a thread that
    // starts late leaves its chunk to the others; finer chunks measured slower when nothing
    // else runs); multiples of 16 rows keep threads on separate cache lines of the output
    let pieces = pool.n_threads();
    pool.for_each_item(layers.len() * pieces, |local: &mut Vec<f32>, item| {
        let (w, out) = (layers[item / pieces], &shared[item / pieces]);
        let m = w.matrix;
        debug_assert_eq!(m.cols, cols);
        let per = m.rows.div_ceil(pieces).div_ceil(16) * 16;
        let start = (item % pieces * per).min(m.rows);
        let end = (start + per).min(m.rows);
        if start == end {
            return;
        }
        let len = end - start;
        local.resize(t_rows * len, 0.0);
        // a chunk starts on a multiple of 16 rows, as packed matrices want
        let (rows, q16) = (start..end, q16.as_ref());
        if m.dtype.is_quantized() && precision == Precision::Q8Activations {
            match w.packed {
                Some(p) => matmul_packed(p, rows, q8, local, len),
                None => matmul_q8(m.dtype, &m.data, cols, rows, q8, local, len),
            }
        } else if m.dtype.is_quantized() && precision == Precision::Q16Activations {
            let q16 = q16.expect("quantized above");
            match w.packed {
                Some(p) => matmul_packed(p, rows, q16, local, len),
                None => matmul_q16(m.dtype, &m.data, cols, rows, q16, local, len),
            }
        } else {
            matmul_f32(m.dtype, &m.data, cols, start..end, x, local, len);
        }
        for t in 0..t_rows {
            // SAFETY: each chunk writes its own column range [start, end) of every row
            let dst = unsafe { out.slice(t * m.rows + start..t * m.rows + end) };
            dst.copy_from_slice(&local[t * len..(t + 1) * len]);
        }
    });
    if let Some(q) = q16 {
        Q16_SCRATCH.with(|s| *s.borrow_mut() = q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Bytes;
    use crate::quant::{quantize_row, DType};

    fn matrix(dtype: DType, rows: usize, cols: usize, seed: u32) -> Matrix {
        let mut data = Vec::new();
        for r in 0..rows {
            let w: Vec<f32> = (0..cols)
                .map(|c| (((r * 31 + c * 17) as u32 ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut b = Vec::new();
            quantize_row(dtype, &w, &mut b);
            data.extend(b);
        }
        Matrix {
            name: "w".into(),
            dtype,
            rows,
            cols,
            data: Bytes::Owned(data.into()),
        }
    }

    /// Threads split weight rows; every output must have the bits of a one-thread, one-token run,
    /// from the file's layout or the copy packed for the kernels in use.
    #[test]
    fn threads_and_batches_do_not_change_bits() {
        for dtype in DType::ALL {
            // whole blocks: 3 of 32, or 2 of the K-quants' 256
            let cols = 96usize
                .next_multiple_of(dtype.block_len())
                .max(2 * dtype.block_len());
            let x: Vec<f32> = (0..7 * cols)
                .map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 5.0)
                .collect();
            let (a, b) = (matrix(dtype, 37, cols, 1), matrix(dtype, 19, cols, 2));
            let (pa, pb) = (super::super::packs::pack(&a), super::super::packs::pack(&b));
            for precision in [
                Precision::F32,
                Precision::Q8Activations,
                Precision::Q16Activations,
            ] {
                let run = |threads: usize, packed: bool, x: &[f32]| {
                    let layers = match packed {
                        false => [(&a).into(), (&b).into()],
                        true => [
                            Weight {
                                matrix: &a,
                                packed: pa.as_ref(),
                            },
                            Weight {
                                matrix: &b,
                                packed: pb.as_ref(),
                            },
                        ],
                    };
                    let pool = ThreadPool::new(threads).unwrap();
                    let mut scratch = Q8Acts::default();
                    let mut input = Input::new(x, cols, &mut scratch);
                    let n = x.len() / cols;
                    let (mut oa, mut ob) = (vec![f32::NAN; n * a.rows], vec![f32::NAN; n * b.rows]);
                    linear_many(
                        &pool,
                        precision,
                        &mut input,
                        &layers,
                        &mut [&mut oa, &mut ob],
                    );
                    (oa, ob)
                };
                let one: Vec<_> = x.chunks_exact(cols).map(|xr| run(1, false, xr)).collect();
                for (threads, packed) in [1, 2, 3].into_iter().flat_map(|t| [(t, false), (t, true)])
                {
                    let (oa, ob) = run(threads, packed, &x);
                    for (t, (ea, eb)) in one.iter().enumerate() {
                        let same = |got: &[f32], want: &[f32]| {
                            got.iter()
                                .zip(want)
                                .all(|(g, w)| g.to_bits() == w.to_bits())
                        };
                        assert!(
                            same(&oa[t * a.rows..(t + 1) * a.rows], ea)
                                && same(&ob[t * b.rows..(t + 1) * b.rows], eb),
                            "{dtype} {precision:?} threads={threads} packed={packed} t={t}"
                        );
                        assert!(ea.iter().chain(eb).all(|v| v.is_finite()));
                    }
                }
            }
        }
    }
}
