//! Every kernel against its CPU twin on fresh random inputs (outputs poisoned with NaN first).

use super::*;
use crate::cpu::ops;
use crate::model::recipe::Activation;
use crate::model::{LayerAttention, Matrix, RopeLayout, RopeTable};
use crate::quant::{dequantize_row, matmul_f32, quantize_row, DType};
use crate::sampling::SamplerRng;

/// Opens the test GPU. No adapter fails the test (CI installs Lavapipe) unless
/// `LLMCAD_SKIP_GPU=1`.
pub(crate) fn test_gpu(f16: bool, subgroups: bool, max_binding: Option<u64>) -> Option<Gpu> {
    let opts = DeviceOptions {
        f16,
        subgroups,
        max_binding,
        ..DeviceOptions::default()
    };
    match open(&opts) {
        Ok(ctx) => Some(Gpu::new(ctx)),
        Err(e) if std::env::var("LLMCAD_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("NOTICE: skipping a GPU test (LLMCAD_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!("{e} (set LLMCAD_SKIP_GPU=1 to skip GPU tests)"),
    }
}

fn gpu() -> Option<Gpu> {
    test_gpu(true, true, None)
}

fn randn(rng: &mut SamplerRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn nan_buffer(g: &Gpu, n: usize) -> wgpu::Buffer {
    g.upload(&vec![f32::NAN; n], "poisoned")
}

/// Random rows whose groups of 16 differ in magnitude (1/16 to 4), so that sub-block scales
/// spread over their range (uniform rows would leave every one near its maximum).
fn matrix(rng: &mut SamplerRng, dtype: DType, rows: usize, cols: usize) -> Matrix {
    let mut data = Vec::new();
    for _ in 0..rows {
        let mut row = randn(rng, cols, 1.0);
        for g in row.chunks_mut(16) {
            let f = (rng.uniform() as f32 * 6.0 - 4.0).exp2();
            g.iter_mut().for_each(|v| *v *= f);
        }
        quantize_row(dtype, &row, &mut data);
    }
    Matrix {
        name: format!("test-{dtype}"),
        dtype,
        rows,
        cols,
        data: data.into(),
    }
}

fn run_matmul(g: &Gpu, m: &GpuMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let xb = g.upload(x, "x");
    let y = nan_buffer(g, n * m.rows);
    let mut rec = Recorder::default();
    g.matmul(
        &mut rec,
        m,
        &MatmulArgs {
            x: &xb,
            x_off: 0,
            x_stride: m.cols,
            n,
            y: &y,
            y_off: 0,
            y_stride: m.rows,
            accumulate: false,
            bias: None,
        },
    )
    .unwrap();
    g.submit(rec).unwrap();
    g.read_f32(&y, n * m.rows).unwrap()
}

fn cpu_matmul(m: &Matrix, x: &[f32]) -> Vec<f32> {
    let n = x.len() / m.cols;
    let mut out = vec![0f32; n * m.rows];
    matmul_f32(m.dtype, &m.data, m.cols, 0..m.rows, x, &mut out, m.rows);
    out
}

/// Every weight type, with odd column counts (scalar kernels) and multiples of 4 (vec4); the
/// K-quants with one and several super-blocks per row.
const FORMATS: [(DType, usize); 16] = [
    (DType::F32, 75),
    (DType::F32, 132),
    (DType::F16, 75),
    (DType::F16, 96),
    (DType::BF16, 41),
    (DType::Q8_0, 96),
    (DType::Q4_0, 288),
    (DType::Q4_1, 64),
    (DType::Q5_0, 96),
    (DType::Q5_1, 160),
    (DType::Q2_K, 512),
    (DType::Q3_K, 256),
    (DType::Q4_K, 768),
    (DType::Q5_K, 256),
    (DType::Q6_K, 512),
    (DType::Q8_K, 256),
];

#[test]
fn matmul_matches_cpu_for_every_format() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(1);
    for (dtype, cols) in FORMATS {
        let m = matrix(&mut rng, dtype, 37, cols);
        let gm = GpuMatrix::upload(&g, &m).unwrap();
        for n in [1, 5, 64, 67] {
            let x = randn(&mut rng, n * cols, 1.0);
            let e = rel_err(&run_matmul(&g, &gm, &x, n), &cpu_matmul(&m, &x));
            assert!(e < 1e-5, "{dtype} n={n}: rel err {e}");
        }
    }
}

/// A matrix of more rows than one dispatch's 65535 workgroups cover (a large vocabulary's head)
/// is split into chunks: every row is computed, the last ones too.
#[test]
fn matmul_covers_rows_beyond_one_dispatch() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(12);
    let rows = 65535 * 8 + 9;
    let m = matrix(&mut rng, DType::Q8_0, rows, 32);
    let gm = GpuMatrix::upload(&g, &m).unwrap();
    for n in [1, 9] {
        let x = randn(&mut rng, n * 32, 1.0);
        let e = rel_err(&run_matmul(&g, &gm, &x, n), &cpu_matmul(&m, &x));
        assert!(e < 1e-5, "n={n}: rel err {e}");
    }
}

#[test]
fn matmul_without_f16_matches_cpu() {
    let Some(g) = test_gpu(false, false, None) else {
        return;
    };
    let mut rng = SamplerRng::new(2);
    for cols in [77, 96] {
        let m = matrix(&mut rng, DType::F16, 19, cols);
        let gm = GpuMatrix::upload(&g, &m).unwrap();
        assert_eq!(gm.format, shaders::WFormat::F16);
        let x = randn(&mut rng, 3 * cols, 1.0);
        let e = rel_err(&run_matmul(&g, &gm, &x, 3), &cpu_matmul(&m, &x));
        assert!(e < 1e-5, "rel err {e}");
    }
}

/// A token's result is the same bits for any batch size and any slot in the batch, with and
/// without subgroups (and the same bits in both: the activations are only shared differently).
#[test]
fn matmul_is_bit_identical_for_any_batch_size_and_slot() {
    let mut with_subgroups: Vec<Vec<Vec<f32>>> = Vec::new();
    for sg in [true, false] {
        let Some(g) = test_gpu(true, sg, None) else {
            return;
        };
        let mut rng = SamplerRng::new(3);
        // 320 columns: the small-N kernel; 132: the tiled kernel
        let cases = [
            (DType::Q4_K, 512),
            (DType::Q5_0, 320),
            (DType::Q4_1, 320),
            (DType::Q4_0, 320),
            (DType::Q8_0, 320),
            (DType::F16, 320),
            (DType::F32, 320),
            (DType::F32, 132),
        ];
        for (i, (dtype, cols)) in cases.into_iter().enumerate() {
            let m = matrix(&mut rng, dtype, 45, cols);
            let gm = GpuMatrix::upload(&g, &m).unwrap();
            let x = randn(&mut rng, 64 * cols, 1.0);
            let single: Vec<Vec<f32>> = (0..64)
                .map(|t| run_matmul(&g, &gm, &x[t * cols..(t + 1) * cols], 1))
                .collect();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            if sg {
                with_subgroups.push(single.clone());
            } else if cols % 32 == 0 {
                for t in 0..64 {
                    assert_eq!(
                        bits(&single[t]),
                        bits(&with_subgroups[i][t]),
                        "{dtype}: subgroups on/off"
                    );
                }
            }
            for n in [1, 2, 3, 5, 7, 8, 9, 12, 16, 33, 64] {
                // the first n tokens, and the last n tokens reversed (every token in another slot)
                let y = run_matmul(&g, &gm, &x[..n * cols], n);
                let mut rev = Vec::with_capacity(n * cols);
                for t in (64 - n..64).rev() {
                    rev.extend_from_slice(&x[t * cols..(t + 1) * cols]);
                }
                let yr = run_matmul(&g, &gm, &rev, n);
                for t in 0..n {
                    assert_eq!(
                        bits(&y[t * 45..(t + 1) * 45]),
                        bits(&single[t]),
                        "{dtype} cols={cols} subgroups={sg} n={n}"
                    );
                    let src = 63 - t;
                    assert_eq!(
                        bits(&yr[t * 45..(t + 1) * 45]),
                        bits(&single[src]),
                        "{dtype} cols={cols} subgroups={sg} n={n} slot {t}"
                    );
                }
            }
        }
    }
}

/// Bias and accumulation (residual) on every kernel and weight type, with an input offset and
/// stride: offset 4 keeps the activations vec4-aligned (the small-N kernel for whole blocks of
/// 32), offset 1 does not (the tiled kernel, scalar weight loads).
#[test]
fn matmul_adds_bias_and_accumulates() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(9);
    for ((dtype, cols), x_off) in FORMATS.into_iter().flat_map(|f| [(f, 4), (f, 1)]) {
        let (rows, n) = (70, 6);
        let m = matrix(&mut rng, dtype, rows, cols);
        let gm = GpuMatrix::upload(&g, &m).unwrap();
        // token t's input at x_off + t * stride
        let stride = cols.next_multiple_of(4) + x_off;
        let xs = randn(&mut rng, x_off + n * stride, 1.0);
        let b = randn(&mut rng, rows, 1.0);
        let y0 = randn(&mut rng, n * rows, 1.0);
        let (xb, bb, yb) = (g.upload(&xs, "x"), g.upload(&b, "b"), g.upload(&y0, "y"));
        let mut rec = Recorder::default();
        g.matmul(
            &mut rec,
            &gm,
            &MatmulArgs {
                x: &xb,
                x_off,
                x_stride: stride,
                n,
                y: &yb,
                y_off: 0,
                y_stride: rows,
                accumulate: true,
                bias: Some(&bb),
            },
        )
        .unwrap();
        g.submit(rec).unwrap();
        let got = g.read_f32(&yb, n * rows).unwrap();
        let mut x = Vec::new();
        for t in 0..n {
            x.extend_from_slice(&xs[x_off + t * stride..x_off + t * stride + cols]);
        }
        let mut want = cpu_matmul(&m, &x);
        for (i, v) in want.iter_mut().enumerate() {
            *v = y0[i] + (*v + b[i % rows]);
        }
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "{dtype} cols={cols} x_off={x_off}: rel err {e}");
    }
}

/// Matrices larger than a binding are split by rows, with the same results.
#[test]
fn matmul_and_embedding_split_large_matrices() {
    let Some(big) = gpu() else { return };
    let Some(small) = test_gpu(true, true, Some(1024)) else {
        return;
    };
    assert_eq!(small.ctx.weight_binding, 1024);
    let mut rng = SamplerRng::new(4);
    for (dtype, cols) in FORMATS {
        let m = matrix(&mut rng, dtype, 53, cols);
        let a = GpuMatrix::upload(&big, &m).unwrap();
        let b = GpuMatrix::upload(&small, &m).unwrap();
        assert_eq!(a.chunks.len(), 1);
        assert!(b.chunks.len() > 2, "{dtype}: {} chunks", b.chunks.len());
        assert!(b.chunks.iter().all(|c| c.buf.size() <= 1024));
        let x = randn(&mut rng, 3 * cols, 1.0);
        let ya = run_matmul(&big, &a, &x, 3);
        let yb = run_matmul(&small, &b, &x, 3);
        assert_eq!(ya, yb, "{dtype}");
        assert!(rel_err(&yb, &cpu_matmul(&m, &x)) < 1e-5);
        // embedding lookup from the split table
        let tokens: Vec<u32> = vec![0, 52, 17, 17, 30, 1];
        let got = run_embed(&small, &b, &tokens);
        let mut want = vec![0f32; tokens.len() * cols];
        for (t, &id) in tokens.iter().enumerate() {
            m.dequantize_row(id as usize, &mut want[t * cols..(t + 1) * cols]);
        }
        assert_eq!(got, want, "{dtype} embedding");
    }
    // a row that alone exceeds the limit is refused with a message, not a panic
    let m = matrix(&mut rng, DType::F32, 2, 512);
    assert!(GpuMatrix::upload(&small, &m).is_err());
}

fn run_embed(g: &Gpu, m: &GpuMatrix, tokens: &[u32]) -> Vec<f32> {
    let tb = g.upload(tokens, "tokens");
    let out = nan_buffer(g, tokens.len() * m.cols);
    let mut rec = Recorder::default();
    g.embed(&mut rec, m, &tb, tokens.len(), &out).unwrap();
    g.submit(rec).unwrap();
    g.read_f32(&out, tokens.len() * m.cols).unwrap()
}

#[test]
fn embedding_from_quantized_tables_is_exact() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(5);
    for (dtype, cols) in FORMATS {
        let m = matrix(&mut rng, dtype, 29, cols);
        let gm = GpuMatrix::upload(&g, &m).unwrap();
        let tokens: Vec<u32> = (0..9).map(|i| (i * 7 % 29) as u32).collect();
        let got = run_embed(&g, &gm, &tokens);
        let mut want = vec![0f32; tokens.len() * cols];
        for (t, &id) in tokens.iter().enumerate() {
            dequantize_row(
                dtype,
                m.row(id as usize),
                &mut want[t * cols..(t + 1) * cols],
            );
        }
        assert_eq!(got, want, "{dtype}");
    }
}

#[test]
fn rms_norm_matches_cpu_with_and_without_subgroups() {
    for sg in [false, true] {
        let Some(g) = test_gpu(true, sg, None) else {
            return;
        };
        let mut rng = SamplerRng::new(6);
        for cols in [1, 63, 77, 576] {
            let rows = 5;
            let x = randn(&mut rng, rows * cols, 3.0);
            let w = randn(&mut rng, cols, 1.0);
            let xb = g.upload(&x, "x");
            let wb = g.upload(&w, "w");
            let out = nan_buffer(&g, rows * cols);
            let mut rec = Recorder::default();
            // rows 1..5 only, written from offset 0
            g.rms_norm(&mut rec, &xb, cols, &wb, 1e-5, &out, 0, rows - 1, cols)
                .unwrap();
            g.submit(rec).unwrap();
            let got = g.read_f32(&out, (rows - 1) * cols).unwrap();
            let mut want = vec![0f32; (rows - 1) * cols];
            ops::rms_norm(&x[cols..], &w, 1e-5, &mut want);
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "subgroups={sg} cols={cols}: {e}");
        }
    }
}

#[test]
fn rope_matches_cpu_in_both_layouts() {
    use crate::model::{RopeConfig, RopeScaling};
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(7);
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        let (heads, hd, n) = (3, 16, 7);
        let cfg = RopeConfig {
            theta: 10000.0,
            layout,
            dims: hd,
            scaling: RopeScaling::None,
        };
        let positions: Vec<usize> = (0..n).map(|_| (rng.uniform() * 500.0) as usize).collect();
        let table = RopeTable::new(&cfg, &cfg.inv_freqs(64), &positions);
        let x = randn(&mut rng, n * heads * hd, 1.0);
        let xb = g.upload(&x, "x");
        let (cb, sb) = (g.upload(&table.cos, "cos"), g.upload(&table.sin, "sin"));
        let mut rec = Recorder::default();
        g.rope(
            &mut rec,
            &xb,
            n,
            heads,
            hd,
            table.half,
            layout == RopeLayout::HalfSplit,
            &cb,
            &sb,
        )
        .unwrap();
        g.submit(rec).unwrap();
        let got = g.read_f32(&xb, x.len()).unwrap();
        let mut want = x.clone();
        for t in 0..n {
            table.apply(
                layout,
                t,
                &mut want[t * heads * hd..(t + 1) * heads * hd],
                hd,
            );
        }
        let e = rel_err(&got, &want);
        assert!(e < 1e-6, "{layout:?}: {e}");
    }
}

#[test]
fn glu_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(8);
    let len = 1001;
    for act in [Activation::Silu, Activation::GeluTanh] {
        // wide enough for GELU's tanh to saturate
        let (a, b) = (randn(&mut rng, len, 12.0), randn(&mut rng, len, 2.0));
        let (ab, bb) = (g.upload(&a, "gate"), g.upload(&b, "up"));
        let mut rec = Recorder::default();
        g.glu(&mut rec, act, &ab, &bb, len).unwrap();
        g.submit(rec).unwrap();
        let got = g.read_f32(&ab, len).unwrap();
        let mut want = a.clone();
        ops::glu(act, &mut want, &b);
        let e = rel_err(&got, &want);
        assert!(e < 1e-6, "{act:?}: {e}");
    }
}

#[test]
fn add_scale_and_softcap_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(12);
    let len = 1001;
    let (x, y) = (randn(&mut rng, len, 40.0), randn(&mut rng, len, 3.0));
    let (xb, yb) = (g.upload(&x, "x"), g.upload(&y, "y"));
    let mut rec = Recorder::default();
    g.add(&mut rec, &xb, &yb, len).unwrap();
    g.submit(rec).unwrap();
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(g.read_f32(&xb, len).unwrap(), sum);

    let mut rec = Recorder::default();
    g.scale(&mut rec, &yb, 8.5, len).unwrap();
    g.submit(rec).unwrap();
    let scaled: Vec<f32> = y.iter().map(|v| v * 8.5).collect();
    assert_eq!(g.read_f32(&yb, len).unwrap(), scaled);

    // values far past the cap, and -inf, saturate
    let mut wide = randn(&mut rng, len, 200.0);
    wide[0] = f32::NEG_INFINITY;
    let wb = g.upload(&wide, "wide");
    let mut rec = Recorder::default();
    g.softcap(&mut rec, &wb, 30.0, len).unwrap();
    g.submit(rec).unwrap();
    let got = g.read_f32(&wb, len).unwrap();
    ops::softcap(&mut wide, 30.0);
    let e = rel_err(&got, &wide);
    assert!(e < 1e-6, "softcap: {e}");
}

/// Straightforward attention: query i sees slots 0..base and base + vis[i], less the slots
/// whose position (`pos`) is a window or more before its own.
#[allow(clippy::too_many_arguments)]
fn cpu_attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    base: usize,
    vis: &[Vec<usize>],
    pos: &[usize],
    sc: &LayerAttention,
) -> Vec<f32> {
    let (heads, kv_heads, hd) = (sc.n_heads, sc.n_kv_heads, sc.head_dim);
    let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
    let mut out = vec![0f32; vis.len() * q_dim];
    for (i, vl) in vis.iter().enumerate() {
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let slots: Vec<usize> = (0..base)
                .chain(vl.iter().map(|j| base + j))
                .filter(|&s| sc.window.is_none_or(|w| pos[base + i] - pos[s] < w))
                .collect();
            let qh = &q[i * q_dim + h * hd..][..hd];
            let mut scores: Vec<f32> = slots
                .iter()
                .map(|&s| {
                    let k = &kc[s * kv_dim + g * hd..][..hd];
                    let dot = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * sc.scale;
                    sc.softcap.map_or(dot, |c| c * (dot / c).tanh())
                })
                .collect();
            ops::softmax(&mut scores);
            for (&s, &p) in slots.iter().zip(&scores) {
                for d in 0..hd {
                    out[i * q_dim + h * hd + d] += p * vc[s * kv_dim + g * hd + d];
                }
            }
        }
    }
    out
}

fn random_parents(rng: &mut SamplerRng, n: usize) -> Vec<Option<usize>> {
    (0..n)
        .map(|i| {
            if i == 0 || rng.uniform() < 0.1 {
                None
            } else {
                Some((rng.uniform() * i as f64) as usize)
            }
        })
        .collect()
}

#[test]
fn attention_matches_cpu_over_prefix_and_tree() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(9);
    let plain = |n_heads, n_kv_heads, head_dim: usize| LayerAttention {
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
        softcap: None,
        window: None,
    };
    // Gemma's: a query scale of its own, scores capped well inside their range, and a window
    // that cuts into the prefix and into the tree
    let gemma = LayerAttention {
        scale: 0.4,
        softcap: Some(1.5),
        window: Some(20),
        ..plain(4, 2, 16)
    };
    let cases = [
        (0, 1, plain(4, 2, 16)),
        (70, 37, plain(4, 2, 16)),
        (130, 5, plain(3, 3, 40)),
        (70, 37, gemma),
    ];
    for (base, n, sc) in cases {
        let (heads, kv_heads, hd) = (sc.n_heads, sc.n_kv_heads, sc.head_dim);
        let parents = random_parents(&mut rng, n);
        let batch = Batch::tree(&vec![0; n], &parents, base);
        let vis: Vec<Vec<usize>> = (0..n).map(|i| batch.visible(i)).collect();
        let slots = base + n;
        let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
        let q = randn(&mut rng, n * q_dim, 1.0);
        let kc = randn(&mut rng, slots * kv_dim, 1.0);
        let vc = randn(&mut rng, slots * kv_dim, 1.0);
        let mut off = vec![0u32];
        let mut flat = Vec::new();
        for v in &vis {
            flat.extend(v.iter().map(|&j| j as u32));
            off.push(flat.len() as u32);
        }
        let (qb, kb, vb) = (g.upload(&q, "q"), g.upload(&kc, "k"), g.upload(&vc, "v"));
        let (ob, fb) = (g.upload(&off, "off"), g.upload(&flat, "vis"));
        let pos: Vec<usize> = (0..base).chain(batch.positions.iter().copied()).collect();
        let pos32: Vec<u32> = pos.iter().map(|&p| p as u32).collect();
        let pb = g.upload(&pos32, "positions");
        let out = nan_buffer(&g, n * q_dim);
        let mut rec = Recorder::default();
        g.attention(
            &mut rec,
            &AttentionArgs {
                q: &qb,
                k_cache: &kb,
                v_cache: &vb,
                vis_off: &ob,
                vis: &fb,
                out: &out,
                positions: &pb,
                n,
                base,
                layer: sc,
            },
        )
        .unwrap();
        g.submit(rec).unwrap();
        let got = g.read_f32(&out, n * q_dim).unwrap();
        let want = cpu_attention(&q, &kc, &vc, base, &vis, &pos, &sc);
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "heads {heads}/{kv_heads} base {base} n {n}: {e}");
    }
}

#[test]
fn kv_compaction_moves_kept_slots() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(10);
    let (kv_dim, slots, base) = (24, 40, 11);
    let cache = randn(&mut rng, slots * kv_dim, 1.0);
    let keep = [0u32, 2, 3, 7, 20, 28];
    let cb = g.upload(&cache, "cache");
    let kb = g.upload(&keep, "keep");
    let tmp = g.buffer(keep.len() * kv_dim * 4, "tmp");
    let mut rec = Recorder::default();
    g.kv_compact(&mut rec, &cb, kv_dim, base, &kb, keep.len(), &tmp)
        .unwrap();
    g.submit(rec).unwrap();
    let got = g.read_f32(&cb, slots * kv_dim).unwrap();
    let mut want = cache.clone();
    for (j, &k) in keep.iter().enumerate() {
        let src = (base + k as usize) * kv_dim;
        want.copy_within(src..src + kv_dim, (base + j) * kv_dim);
    }
    assert_eq!(
        got[..(base + keep.len()) * kv_dim],
        want[..(base + keep.len()) * kv_dim]
    );
}

#[test]
fn top_k_matches_cpu_with_ties_and_nan() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(11);
    let (rows, vocab) = (3, 1000);
    let mut logits = randn(&mut rng, rows * vocab, 5.0);
    logits[5] = 100.0;
    logits[9] = 100.0; // tie: lower id first
    logits[10] = f32::NAN;
    logits[vocab + 3] = f32::NAN;
    logits[2 * vocab..].fill(-1.0); // all tied
    let lb = g.upload(&logits, "logits");
    for k in [1, 8, 40] {
        let ids = g.buffer(rows * k * 4, "ids");
        let vals = nan_buffer(&g, rows * k);
        let mut rec = Recorder::default();
        g.top_k(&mut rec, &lb, 0, rows, vocab, k, &ids, &vals)
            .unwrap();
        g.submit(rec).unwrap();
        let gi: Vec<u32> = bytemuck::pod_collect_to_vec(
            &g.run_and_read(Recorder::default(), &ids, 0, rows * k * 4)
                .unwrap(),
        );
        let gv = g.read_f32(&vals, rows * k).unwrap();
        for r in 0..rows {
            let want = crate::backend::top_k(&logits[r * vocab..(r + 1) * vocab], k);
            let got: Vec<(u32, f32)> = (0..k).map(|j| (gi[r * k + j], gv[r * k + j])).collect();
            assert_eq!(got, want, "row {r} k {k}");
        }
    }
}

/// The streaming-read ceiling reads every word it times: the XOR of its per-invocation results
/// is the XOR of the buffer, over a length that is no multiple of the grid.
#[test]
fn read_ceiling_kernel_reads_every_word() {
    let Some(g) = gpu() else { return };
    let mut rng = SamplerRng::new(31);
    for vec4s in [1usize, 1000, 300_001] {
        let words: Vec<u32> = (0..vec4s * 4)
            .map(|_| (rng.uniform() * u32::MAX as f64) as u32)
            .collect();
        let src = g.upload(&words, "words");
        let (t, out) = roofline::stream_read(&g, &src, vec4s, 1).unwrap();
        let got = g
            .run_and_read(Recorder::default(), &out, 0, out.size() as usize)
            .unwrap();
        let got = bytemuck::pod_collect_to_vec::<u8, u32>(&got)
            .into_iter()
            .fold(0, |a, w| a ^ w);
        assert_eq!(got, words.iter().fold(0, |a, w| a ^ w), "{vec4s} words");
        assert!(t > std::time::Duration::ZERO);
    }
    for rate in [
        roofline::read_bandwidth(&g, 1 << 20, 1).unwrap(),
        roofline::copy_bandwidth(&g, 1 << 20, 1).unwrap(),
        roofline::fma_rate(&g, 1).unwrap(),
    ] {
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
    }
}
