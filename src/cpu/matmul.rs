//! Linear layers on the CPU: `y = x · Wᵀ` for a batch of activation rows, split by weight rows
//! over the thread pool. Several layers that share one input (q/k/v, gate/up) run in a single
//! parallel region, and the input is quantized once for all of them.

use super::pool::{SharedMut, ThreadPool};
use crate::model::Matrix;
use crate::quant::{matmul_f32, matmul_q8, Q8Acts};

/// How activations meet the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Block-quantized weights meet activations quantized to 8 bits (llama.cpp's way; fast).
    #[default]
    Q8Activations,
    /// Every weight is dequantized and multiplied in f32 (exact reference path).
    F32,
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

/// Computes `outs[i] = input · layers[i]ᵀ` (each `rows × layer.rows`, row-major).
pub fn linear_many(
    pool: &ThreadPool,
    precision: Precision,
    input: &mut Input<'_>,
    layers: &[&Matrix],
    outs: &mut [&mut [f32]],
) {
    let t_rows = input.rows();
    let needs_q8 =
        precision == Precision::Q8Activations && layers.iter().any(|m| m.dtype.is_quantized());
    if needs_q8 && !input.quantized {
        let q = input.q8.as_deref_mut().expect("scratch");
        q.quantize(input.x, input.cols);
        input.quantized = true;
    }
    let q8: &Q8Acts = input.q8.as_deref().expect("scratch");
    let x = input.x;
    let cols = input.cols;
    let shared: Vec<SharedMut<f32>> = outs.iter_mut().map(|o| SharedMut::new(o)).collect();
    pool.run(|tid| {
        let n = pool.n_threads();
        let mut local = Vec::new();
        for (m, out) in layers.iter().zip(&shared) {
            debug_assert_eq!(m.cols, cols);
            // chunks of 16 rows keep threads on separate cache lines of the output
            let per = m.rows.div_ceil(n).div_ceil(16) * 16;
            let start = (tid * per).min(m.rows);
            let end = ((tid + 1) * per).min(m.rows);
            if start == end {
                continue;
            }
            let len = end - start;
            local.resize(t_rows * len, 0.0);
            if m.dtype.is_quantized() && precision == Precision::Q8Activations {
                matmul_q8(m.dtype, &m.data, cols, start..end, q8, &mut local, len);
            } else {
                matmul_f32(m.dtype, &m.data, cols, start..end, x, &mut local, len);
            }
            for t in 0..t_rows {
                // SAFETY: each thread writes its own column range [start, end) of every row
                let dst = unsafe { out.slice(t * m.rows + start..t * m.rows + end) };
                dst.copy_from_slice(&local[t * len..(t + 1) * len]);
            }
        }
    });
}
