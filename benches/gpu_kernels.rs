//! GPU kernel timings: streaming-read and copy bandwidth, one matmul pass per weight format and
//! batch size (time and weight bandwidth), and, with a model path argument or the fetched
//! SmolLM2, the verification-pass cost curve of the whole model.
//!
//! `cargo bench --bench gpu_kernels [-- MODEL.gguf]`; set LLMCAD_BENCH_QUICK=1 for fewer reps,
//! LLMCAD_BENCH_SHAPE=8960x1536 for another matrix (a large GPU's cache holds the default).

use llmcad::gpu::{
    open, DeviceOptions, Gpu, GpuBackend, GpuMatrix, GpuOptions, MatmulArgs, Recorder,
};
use llmcad::model::Matrix;
use llmcad::quant::{quantize_row, DType};
use std::time::{Duration, Instant};

const NS: [usize; 8] = [1, 2, 4, 8, 9, 16, 32, 64];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up (pipeline compilation, first touch)
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let quick = std::env::var("LLMCAD_BENCH_QUICK").is_ok();
    let reps = if quick { 3 } else { 7 };
    let ctx = match open(&DeviceOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no GPU: {e}");
            return;
        }
    };
    println!("device: {}", ctx.summary());
    let g = Gpu::new(ctx);

    // the memory ceilings, over buffers larger than any GPU cache
    let big = 1usize << 30;
    println!(
        "streaming read {} MiB: {:.2} GB/s; buffer copy: {:.2} GB/s (bytes copied)",
        big >> 20,
        llmcad::gpu::roofline::read_bandwidth(&g, big, reps).unwrap() / 1e9,
        llmcad::gpu::roofline::copy_bandwidth(&g, big, reps).unwrap() / 1e9
    );

    // one matmul per format and batch size
    let (rows, cols) = match std::env::var("LLMCAD_BENCH_SHAPE") {
        Ok(s) => s
            .split_once('x')
            .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
            .expect("LLMCAD_BENCH_SHAPE=ROWSxCOLS, COLS a multiple of 256"),
        Err(_) if quick => (1024, 1024),
        Err(_) => (2048, 2048),
    };
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4_K,
        DType::Q6_K,
        DType::Q8_0,
        DType::F16,
        DType::F32,
    ] {
        let mut data = Vec::new();
        let row: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6)
            .collect();
        for _ in 0..rows {
            quantize_row(dtype, &row, &mut data);
        }
        let m = Matrix {
            name: "bench".into(),
            dtype,
            rows,
            cols,
            data: data.into(),
        };
        let gm = GpuMatrix::upload(&g, &m).unwrap();
        let x = g.upload(&vec![0.5f32; 64 * cols], "x");
        let y = g.buffer(64 * rows * 4, "y");
        for n in NS {
            let t = time(reps, || {
                let mut rec = Recorder::default();
                let args = MatmulArgs {
                    x: &x,
                    x_off: 0,
                    x_stride: cols,
                    n,
                    y: &y,
                    y_off: 0,
                    y_stride: rows,
                    accumulate: false,
                    bias: None,
                };
                g.matmul(&mut rec, &gm, &args).unwrap();
                g.submit(rec).unwrap();
                g.ctx.wait().unwrap();
            });
            println!(
                "matmul {dtype:>5} {rows}x{cols} N={n:>2}: {:>9.3} ms  {:>6.2} GB/s weights",
                t.as_secs_f64() * 1e3,
                gm.byte_len() as f64 / t.as_secs_f64() / 1e9
            );
        }
    }

    // whole-model pass cost curve
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
            p.exists().then_some(p)
        });
    let Some(path) = path else {
        println!("(no model: pass a GGUF path for the pass cost curve)");
        return;
    };
    let gguf = llmcad::format::gguf::GgufFile::open(&path).unwrap();
    let cfg = llmcad::model::ModelConfig::from_gguf(&gguf).unwrap();
    let w = llmcad::model::weights::WeightLoader::new(
        gguf.tensors.clone(),
        llmcad::model::weights::Naming::Gguf,
        &cfg,
    )
    .load(&|_, _| {})
    .unwrap();
    let opts = GpuOptions {
        context: 512,
        ..GpuOptions::for_model(&cfg)
    };
    let mut be = GpuBackend::new(cfg, std::sync::Arc::new(w), &opts).unwrap();
    let ns: Vec<usize> = if quick { vec![1, 8, 64] } else { NS.to_vec() };
    for (n, t) in be
        .pass_cost_curve(&ns, 64, if quick { 1 } else { 3 })
        .unwrap()
    {
        println!(
            "model pass N={n:>2}: {:>9.3} ms  ({:.2} GB/s of {} MB weights)",
            t.as_secs_f64() * 1e3,
            be.weight_bytes() as f64 / t.as_secs_f64() / 1e9,
            be.weight_bytes() >> 20
        );
    }
}
