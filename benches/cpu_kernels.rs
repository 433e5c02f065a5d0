//! CPU matmul kernels on the weight types and shapes of the real pair (Qwen2.5-Coder 1.5B:
//! 1536×1536 attention, 8960×1536 FFN up; Q4_K, Q6_K, Q8_0, Q5_0, and SmolLM2's Q4_1), one
//! thread, every kernel set this CPU runs, 16-bit and 8-bit activations, T = 1, 2, 4, 8, 16
//! and 64 (prefill) tokens per call. Each row gives µs per call, weight GB/s and the cost
//! against the first token count; the first line is the ceiling: one thread summing a buffer
//! of the same size.
//!
//! `cargo bench --bench cpu_kernels [-- TYPE... KERNELS... [dram] [t=1,8,12]]` (for example
//! `-- q4_k amx`; `t=` picks the token counts). The weights stay in the caches unless `dram`
//! is given: then each call reads the next of enough copies to overflow them, as a model's
//! decode reads its weights, so that a kernel shows whether its memory traffic overlaps its
//! compute (T=8 from DRAM near T=8 in cache) or adds to it.

use llmcad::quant::{
    matmul_packed, matmul_q_with, quantize_row, ActInt, DType, PackedWeights, Q16Acts, Q8Acts,
    QActs, Simd,
};
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

/// Seconds per call: the best of several timed rounds of at least 50 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(50) {
            f();
            n += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / n as f64);
    }
    best
}

/// Seconds to read one of `bufs` (the next each time), summing it 8 bytes at a time in 8
/// independent chains.
fn read_ceiling(bufs: &[Vec<u8>]) -> f64 {
    let mut next = bufs.iter().cycle();
    time(|| {
        let mut acc = [0u64; 8];
        for c in next.next().expect("one buffer at least").chunks_exact(64) {
            for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
                *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
            }
        }
        black_box(acc);
    })
}

/// Bytes of weight copies that overflow any cache here (the largest L3s seen are 32 MB).
const DRAM_BYTES: usize = 256 << 20;

/// All rows of `bytes` (the file's layout) or of its `packed` copy times `a`, into `out`.
#[allow(clippy::too_many_arguments)]
fn matmul<Q: ActInt>(
    simd: Simd,
    dtype: DType,
    bytes: &[u8],
    packed: Option<&PackedWeights>,
    cols: usize,
    rows: usize,
    a: &QActs<Q>,
    out: &mut [f32],
) {
    match packed {
        Some(p) => matmul_packed(p, 0..rows, a, out, rows),
        None => matmul_q_with(simd, dtype, bytes, cols, 0..rows, a, out, rows),
    }
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let types = [
        DType::Q4_K,
        DType::Q6_K,
        DType::Q8_0,
        DType::Q5_0,
        DType::Q4_1,
    ];
    let named = |name: &str| wanted.iter().any(|w| w.eq_ignore_ascii_case(name));
    let dram = named("dram");
    let token_counts: Vec<usize> = match wanted.iter().find_map(|w| w.strip_prefix("t=")) {
        Some(list) => list
            .split(',')
            .map(|n| n.parse().expect("t=N,N,...: token counts"))
            .collect(),
        None => vec![1, 2, 4, 8, 16, 64],
    };
    let simds: Vec<Simd> = Simd::all_available()
        .into_iter()
        .filter(|&s| s != Simd::Scalar)
        .collect();
    let simds: Vec<Simd> = if simds.iter().any(|s| named(s.name())) {
        simds.into_iter().filter(|s| named(s.name())).collect()
    } else {
        simds
    };
    let types: Vec<DType> = if types.iter().any(|t| named(&t.to_string())) {
        types
            .into_iter()
            .filter(|t| named(&t.to_string()))
            .collect()
    } else {
        types.to_vec()
    };
    if dram {
        println!("weights from DRAM: each call reads the next of {DRAM_BYTES} bytes of copies");
    }
    println!(
        "{:<10} {:<6} {:<11} {:<4} {:>3} {:>9} {:>7} {:>7}",
        "shape", "type", "kernels", "acts", "T", "us/call", "GB/s", "vs first"
    );
    for (rows, cols) in [(1536usize, 1536usize), (8960, 1536)] {
        for &dtype in &types {
            let w = randoms(1, rows * cols);
            let mut bytes = Vec::with_capacity(dtype.row_bytes(cols) * rows);
            for r in w.chunks_exact(cols) {
                let mut b = Vec::new();
                quantize_row(dtype, r, &mut b);
                bytes.extend(b);
            }
            let gb = bytes.len() as f64 / 1e9;
            let n_copies = if dram {
                DRAM_BYTES.div_ceil(bytes.len())
            } else {
                1
            };
            let copies = vec![bytes; n_copies];
            let ceiling = read_ceiling(&copies);
            println!(
                "{:<10} {:<6} {:<11} {:<4} {:>3} {:>9.1} {:>7.2}",
                format!("{rows}x{cols}"),
                dtype.to_string(),
                "read",
                "-",
                "-",
                ceiling * 1e6,
                gb / ceiling
            );
            for &simd in &simds {
                // the file's layout, then the copies packed at load where these kernels read one
                let packed: Option<Vec<PackedWeights>> = copies
                    .iter()
                    .map(|b| PackedWeights::new(simd, dtype, b, rows, cols))
                    .collect();
                let layouts = [Some(None), packed.as_deref().map(Some)];
                for (layout, acts) in layouts
                    .into_iter()
                    .flatten()
                    .flat_map(|l| [(l, "q16"), (l, "q8")])
                {
                    let mut first = None;
                    for &n_t in &token_counts {
                        let x = randoms(2, n_t * cols);
                        let mut out = vec![0f32; n_t * rows];
                        // the activation quantization is part of the cost, as in a forward pass
                        let (mut a8, mut a16) = (Q8Acts::default(), Q16Acts::default());
                        let mut call = 0;
                        let secs = time(|| {
                            let (bytes, packed) = (&copies[call], layout.map(|p| &p[call]));
                            call = (call + 1) % n_copies;
                            if acts == "q8" {
                                a8.quantize_with(simd, &x, cols);
                                matmul(simd, dtype, bytes, packed, cols, rows, &a8, &mut out)
                            } else {
                                a16.quantize_with(simd, &x, cols);
                                matmul(simd, dtype, bytes, packed, cols, rows, &a16, &mut out)
                            }
                            black_box(&mut out);
                        });
                        println!(
                            "{:<10} {:<6} {:<13} {:<4} {:>3} {:>9.1} {:>7.2} {:>6.2}x",
                            format!("{rows}x{cols}"),
                            dtype.to_string(),
                            format!(
                                "{}{}",
                                simd.name(),
                                if layout.is_some() { "+p" } else { "" }
                            ),
                            acts,
                            n_t,
                            secs * 1e6,
                            gb / secs,
                            secs / *first.get_or_insert(secs)
                        );
                    }
                }
            }
        }
    }
}
