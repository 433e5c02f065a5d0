//! Weight streaming under a GPU memory budget: bit-identical logits and greedy output for every
//! budget (down to one that keeps no layer resident), a long stress run of random trees with
//! KV compaction against the resident backend, the budget bound on allocated bytes, and the
//! error below the minimum. No adapter fails these tests unless LLMCAD_SKIP_GPU=1.

mod common;

use common::{greedy, load, real_model, scratch_dir, tiny_pair};
use llmcad::backend::{Backend, Batch, Logits, Want};
use llmcad::generate::GenerateOptions;
use llmcad::gpu::{GpuBackend, GpuOptions, UploadMode};
use llmcad::model::Model;
use llmcad::quant::DType;
use llmcad::spec::{generate_speculative, SpecOptions};
use llmcad::synthetic::{write_tiny, TinySpec};
use llmcad::Error;
use std::path::PathBuf;

const CONTEXT: usize = 256;

fn opts(m: &Model, budget: Option<u64>) -> GpuOptions {
    GpuOptions {
        context: CONTEXT,
        weight_budget: budget,
        ..GpuOptions::for_model(&m.config)
    }
}

fn try_gpu(m: &Model, o: &GpuOptions) -> Option<llmcad::Result<GpuBackend>> {
    match GpuBackend::new(m.config.clone(), m.weights.clone(), o) {
        Err(Error::Gpu(e)) if std::env::var("LLMCAD_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("NOTICE: skipping a GPU test (LLMCAD_SKIP_GPU=1): {e}");
            None
        }
        r => Some(r),
    }
}

/// The GPU backend, or `None` when there is no GPU and LLMCAD_SKIP_GPU=1.
fn gpu(m: &Model, o: &GpuOptions) -> Option<GpuBackend> {
    common::gpu_backend(&m.config, &m.weights, o)
}

fn bits(l: &Logits) -> (Vec<u32>, Vec<u32>) {
    match l {
        Logits::Dense { data, .. } => (vec![], data.iter().map(|v| v.to_bits()).collect()),
        Logits::TopK { ids, logits, .. } => {
            (ids.clone(), logits.iter().map(|v| v.to_bits()).collect())
        }
    }
}

/// Budgets from "no layer resident" to "everything resident but the head", from the plan of
/// an unconstrained backend.
fn budgets(full: &GpuBackend) -> Vec<u64> {
    let p = full.weight_plan();
    let (min, all) = (p.min_budget, p.full_budget);
    vec![
        min,
        min + (all - min) / 3,
        min + (all - min) * 2 / 3,
        all - 1,
    ]
}

/// Prefill, a branching tree, compaction, then single steps; every output bitwise.
fn script(b: &mut dyn Backend) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut out = Vec::new();
    let prompt: Vec<u32> = (0..19).map(|i| (i * 37 + 5) % 200 + 3).collect();
    out.push(bits(
        &b.forward(&Batch::chain(&prompt, 0), Want::ALL_FULL)
            .unwrap(),
    ));
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(3), None];
    let tree = Batch::tree(&[40, 41, 42, 43, 44, 45, 46], &parents, b.kv_len());
    let base = b.kv_len();
    out.push(bits(&b.forward(&tree, Want::ALL_FULL).unwrap()));
    b.kv_compact(base, &[0, 1, 3, 5]).unwrap();
    for t in [7u32, 8, 9] {
        let l = b
            .forward(&Batch::chain(&[t], b.kv_len()), Want::ALL_TOP1)
            .unwrap();
        out.push(bits(&l));
        let l = b
            .forward(
                &Batch::chain(&[t + 1, t + 2], b.kv_len()),
                Want {
                    rows: llmcad::backend::Rows::All,
                    top_k: Some(8),
                },
            )
            .unwrap();
        out.push(bits(&l));
    }
    out
}

fn tiny_models() -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for dtype in [DType::Q4_1, DType::Q8_0, DType::F32] {
        v.push((format!("pair-{dtype}"), tiny_pair(dtype).0));
    }
    // untied head in Q4_0, and Qwen2 (q/k/v biases) in F16
    let untied = TinySpec {
        tied: false,
        n_layers: 5,
        seed: 4,
        ..TinySpec::default()
    };
    let t = write_tiny(
        scratch_dir(),
        "untied-q4_0",
        &untied,
        DType::Q4_0,
        DType::F32,
    )
    .unwrap();
    v.push(("untied-q4_0".into(), t.gguf));
    let qwen = TinySpec {
        arch: llmcad::model::Arch::Qwen2,
        seed: 9,
        ..TinySpec::default()
    };
    let t = write_tiny(scratch_dir(), "qwen-f16", &qwen, DType::F16, DType::F16).unwrap();
    v.push(("qwen-f16".into(), t.gguf));
    v
}

#[test]
fn streamed_logits_are_bit_identical_for_every_budget() {
    for (name, path) in tiny_models() {
        let m = load(&path);
        let Some(mut full) = gpu(&m, &opts(&m, None)) else {
            return;
        };
        assert!(!full.is_streaming());
        let want = script(&mut full);
        for budget in budgets(&full) {
            for upload in [UploadMode::Mapped, UploadMode::WriteBuffer] {
                let o = GpuOptions {
                    upload,
                    ..opts(&m, Some(budget))
                };
                let mut g = gpu(&m, &o).unwrap();
                assert!(g.is_streaming(), "{name}: budget {budget} streams");
                assert!(g.allocated_weight_bytes() <= budget, "{name}: over budget");
                let got = script(&mut g);
                assert!(got == want, "{name}: budget {budget} {upload:?} differs");
                assert!(g.peak_weight_bytes() <= budget);
                let st = g.stream_stats();
                assert_eq!(st.passes, 8);
                assert!(st.bytes_streamed > 0);
            }
        }
        // the smallest budget keeps no layer (and not the head) resident
        let p = full.weight_plan().clone();
        let g = gpu(&m, &opts(&m, Some(p.min_budget))).unwrap();
        let plan = g.weight_plan();
        assert!(plan.resident_layers.iter().all(|r| !r), "{name}: {plan:?}");
        assert!(
            !plan.head_resident && !plan.embed_resident,
            "{name}: {plan:?}"
        );
        assert_eq!(plan.ring_depth, 1);
    }
}

#[test]
fn greedy_and_speculative_output_match_with_a_budget() {
    let (t, d) = tiny_pair(DType::Q4_1);
    let (target, drafter) = (load(&t), load(&d));
    let Some(mut full) = gpu(&target, &opts(&target, None)) else {
        return;
    };
    let prompt = [1u32, 40, 77, 30, 5, 120, 2];
    let want = greedy(&mut full, &prompt, 24, &[]);
    for budget in budgets(&full) {
        let mut g = gpu(&target, &opts(&target, Some(budget))).unwrap();
        assert_eq!(greedy(&mut g, &prompt, 24, &[]), want, "budget {budget}");
        g.kv_truncate(0);
        let mut dr = common::cpu(&drafter, llmcad::cpu::Precision::F32, 1);
        let gen = GenerateOptions {
            max_tokens: 24,
            ..Default::default()
        };
        let r = generate_speculative(
            &mut g,
            &mut dr,
            &prompt,
            &[],
            &gen,
            &SpecOptions::default(),
            &mut |_| true,
        )
        .unwrap();
        assert_eq!(r.generation.tokens, want, "speculative, budget {budget}");
        assert!(g.peak_weight_bytes() <= budget);
    }
}

/// A small deterministic generator for the stress test.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn stress_random_trees_with_compaction_under_a_tiny_budget() {
    let (t, _) = tiny_pair(DType::Q4_1);
    let m = load(&t);
    let Some(mut full) = gpu(&m, &opts(&m, None)) else {
        return;
    };
    let min = full.weight_plan().min_budget;
    let mut g = gpu(&m, &opts(&m, Some(min))).unwrap();
    let alloc0 = g.allocated_weight_bytes();
    assert!(alloc0 <= min);
    let mut rng = Lcg(7);
    let vocab = m.config.vocab;
    let passes = 300;
    for pass in 0..passes {
        if full.kv_len() > CONTEXT - 80 {
            let keep = rng.next(20) + 1;
            full.kv_truncate(keep);
            g.kv_truncate(keep);
        }
        let n = rng.next(24) + 1;
        let parents: Vec<Option<usize>> = (0..n)
            .map(|i| {
                if i == 0 || rng.next(6) == 0 {
                    None
                } else {
                    Some(rng.next(i))
                }
            })
            .collect();
        let tokens: Vec<u32> = (0..n).map(|_| rng.next(vocab) as u32).collect();
        let base = full.kv_len();
        let batch = Batch::tree(&tokens, &parents, base);
        let want = if pass % 5 == 0 {
            Want::ALL_FULL
        } else {
            Want {
                rows: llmcad::backend::Rows::All,
                top_k: Some(4),
            }
        };
        let a = bits(&full.forward(&batch, want).unwrap());
        let b = bits(&g.forward(&batch, want).unwrap());
        assert!(a == b, "pass {pass}: streamed output differs");
        // keep a random root path (as acceptance does)
        let mut path = vec![];
        let mut cur = Some(rng.next(n));
        while let Some(c) = cur {
            path.push(c);
            cur = parents[c];
        }
        path.reverse();
        full.kv_compact(base, &path).unwrap();
        g.kv_compact(base, &path).unwrap();
        assert_eq!(
            g.allocated_weight_bytes(),
            alloc0,
            "pass {pass}: allocation grew"
        );
        assert!(g.peak_weight_bytes() <= min);
    }
    let st = g.stream_stats();
    assert_eq!(st.passes, passes);
    eprintln!("stress: {st:?}");
}

#[test]
fn a_budget_below_the_minimum_is_refused_with_the_minimum() {
    let (t, _) = tiny_pair(DType::Q4_1);
    let m = load(&t);
    let Some(full) = gpu(&m, &opts(&m, None)) else {
        return;
    };
    let min = full.weight_plan().min_budget;
    for budget in [0, 1000, min - 1] {
        match try_gpu(&m, &opts(&m, Some(budget))).unwrap() {
            Err(Error::Config(msg)) => {
                assert!(msg.contains(&format!("({min} bytes)")), "{msg}");
                assert!(msg.contains("MiB"), "{msg}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("budget {budget} below the minimum {min} was accepted"),
        }
    }
    // the minimum itself works, and a budget above everything keeps everything resident
    assert!(gpu(&m, &opts(&m, Some(min))).unwrap().is_streaming());
    let all = full.weight_plan().full_budget;
    assert!(!gpu(&m, &opts(&m, Some(all))).unwrap().is_streaming());
}

#[test]
fn emulated_bandwidth_bounds_the_read_rate() {
    let (t, _) = tiny_pair(DType::Q4_1);
    let m = load(&t);
    let Some(full) = gpu(&m, &opts(&m, None)) else {
        return;
    };
    let min = full.weight_plan().min_budget;
    let rate = 2e6; // 2 MB/s
    let o = GpuOptions {
        io_bandwidth: Some(rate),
        ..opts(&m, Some(min))
    };
    let mut g = gpu(&m, &o).unwrap();
    greedy(&mut g, &[1, 2, 3, 4], 4, &[]);
    let st = g.stream_stats();
    let floor = st.bytes_streamed as f64 / rate;
    // the gathered embedding rows are not throttled: allow for them
    assert!(
        st.io_time.as_secs_f64() >= 0.9 * floor,
        "{st:?}: {floor} s at least"
    );
    assert!(st.pass_time >= st.io_time.mul_f64(0.9));
}

#[test]
fn smollm2_streamed_matches_resident() {
    let Some(path) = real_model() else { return };
    let m = load(&path);
    let o = |b| GpuOptions {
        context: 128,
        weight_budget: b,
        ..GpuOptions::for_model(&m.config)
    };
    let Some(mut full) = gpu(&m, &o(None)) else {
        return;
    };
    let prompt = m.tokenizer.encode("The capital of France is").unwrap();
    let first_full = bits(
        &full
            .forward(&Batch::chain(&prompt, 0), Want::ALL_FULL)
            .unwrap(),
    );
    full.kv_truncate(0);
    let want = greedy(&mut full, &prompt, 3, &[]);
    let plan = full.weight_plan().clone();
    for budget in [plan.min_budget, plan.full_budget / 2] {
        let mut g = gpu(&m, &o(Some(budget))).unwrap();
        let first = bits(
            &g.forward(&Batch::chain(&prompt, 0), Want::ALL_FULL)
                .unwrap(),
        );
        assert!(
            first == first_full,
            "budget {budget}: prefill logits differ"
        );
        g.kv_truncate(0);
        assert_eq!(greedy(&mut g, &prompt, 3, &[]), want, "budget {budget}");
        assert!(g.peak_weight_bytes() <= budget);
        let st = g.stream_stats();
        eprintln!(
            "SmolLM2 budget {budget}: plan {:?}\n  stats {}",
            g.weight_plan()
                .resident_layers
                .iter()
                .filter(|r| **r)
                .count(),
            st.to_json()
        );
    }
}
