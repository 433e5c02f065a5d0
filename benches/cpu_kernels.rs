//! CPU matmul kernels on SmolLM2-sized (576×1536) and Llama-7B-sized (4096×4096) Q4_1 weights:
//! one-token mat-vec (decode) and an 8-token batch (prefill/verification), each kernel set ×
//! precision, one thread. Prints weight bandwidth (GB/s) and how many such mat-vecs per second.
//!
//! `cargo bench --bench cpu_kernels`

use llmcad::quant::{matmul_f32_with, matmul_q_with, quantize_row, DType, Q16Acts, Q8Acts, Simd};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn randoms(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Seconds per call: the best of several timed rounds of at least 100 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(100) {
            f();
            n += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / n as f64);
    }
    best
}

fn main() {
    let dtype = DType::Q4_1;
    let mut simds = vec![Simd::Scalar];
    if Simd::best() != Simd::Scalar {
        simds.push(Simd::best());
    }
    println!(
        "{:<10} {:<7} {:<5} {:>3} {:>10} {:>9} {:>12}",
        "shape", "kernels", "acts", "T", "us/call", "GB/s", "tokens/s"
    );
    for (rows, cols) in [(576usize, 1536usize), (4096, 4096)] {
        let w: Vec<f32> = randoms(1, rows * cols);
        let mut bytes = Vec::with_capacity(dtype.row_bytes(cols) * rows);
        for r in w.chunks_exact(cols) {
            let mut b = Vec::new();
            quantize_row(dtype, r, &mut b);
            bytes.extend(b);
        }
        let gb = bytes.len() as f64 / 1e9;
        for n_t in [1usize, 8] {
            let x = randoms(2, n_t * cols);
            let mut out = vec![0f32; n_t * rows];
            for &simd in &simds {
                for acts in ["f32", "q8", "q16"] {
                    // the activation quantization is part of the cost, as in a forward pass
                    let (mut a8, mut a16) = (Q8Acts::default(), Q16Acts::default());
                    let secs = time(|| {
                        match acts {
                            "f32" => matmul_f32_with(
                                simd,
                                dtype,
                                &bytes,
                                cols,
                                0..rows,
                                &x,
                                &mut out,
                                rows,
                            ),
                            "q8" => {
                                a8.quantize_with(simd, &x, cols);
                                matmul_q_with(
                                    simd,
                                    dtype,
                                    &bytes,
                                    cols,
                                    0..rows,
                                    &a8,
                                    &mut out,
                                    rows,
                                )
                            }
                            _ => {
                                a16.quantize_with(simd, &x, cols);
                                matmul_q_with(
                                    simd,
                                    dtype,
                                    &bytes,
                                    cols,
                                    0..rows,
                                    &a16,
                                    &mut out,
                                    rows,
                                )
                            }
                        }
                        black_box(&mut out);
                    });
                    println!(
                        "{:<10} {:<7} {:<5} {:>3} {:>10.1} {:>9.2} {:>12.0}",
                        format!("{rows}x{cols}"),
                        simd.name(),
                        acts,
                        n_t,
                        secs * 1e6,
                        gb / secs,
                        n_t as f64 / secs
                    );
                }
            }
        }
    }
}
