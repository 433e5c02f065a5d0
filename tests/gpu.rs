//! The GPU backend against the exact CPU path on tiny models, tree verification against
//! one-path-at-a-time decoding, and KV compaction. No adapter fails these tests (CI installs
//! Lavapipe: `apt install mesa-vulkan-drivers`) unless LLMCAD_SKIP_GPU=1.

mod common;

use common::{rel_err, scratch_dir, tiny_f32};
use llmcad::backend::{Backend, Batch, Logits, Rows, Want};
use llmcad::cpu::{CpuBackend, CpuOptions, Precision};
use llmcad::format::{gguf::GgufFile, hf_dir::HfDir, safetensors};
use llmcad::gpu::{DeviceOptions, GpuBackend, GpuOptions};
use llmcad::model::weights::{Naming, WeightLoader};
use llmcad::model::{Arch, ModelConfig, ModelWeights, RopeLayout};
use llmcad::quant::DType;
use llmcad::sampling::SamplerRng;
use llmcad::synthetic::{write_tiny, TinySpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Config and weights of a model file, without its tokenizer (the GPU needs none).
struct Model {
    config: ModelConfig,
    weights: Arc<ModelWeights>,
}

fn load(path: &Path) -> Model {
    let (config, tensors, naming) = if path.is_dir() {
        let hf = HfDir::open(path).unwrap();
        let config = ModelConfig::from_hf(&hf.config).unwrap();
        (
            config,
            safetensors::read_dir(path).unwrap(),
            Naming::HuggingFace,
        )
    } else {
        let g = GgufFile::open(path).unwrap();
        (ModelConfig::from_gguf(&g).unwrap(), g.tensors, Naming::Gguf)
    };
    let weights = WeightLoader::new(tensors, naming, &config)
        .load(&|_, _| {})
        .unwrap();
    Model {
        config,
        weights: Arc::new(weights),
    }
}

fn cpu(m: &Model, precision: Precision, threads: usize) -> CpuBackend {
    CpuBackend::new(
        m.config.clone(),
        m.weights.clone(),
        &CpuOptions {
            threads,
            precision,
            context: m.config.max_context,
        },
    )
    .unwrap()
}

const CONTEXT: usize = 192;

fn opts(f16: bool, subgroups: bool, max_binding: Option<u64>) -> GpuOptions {
    GpuOptions {
        context: CONTEXT,
        device: DeviceOptions {
            f16,
            subgroups,
            max_binding,
            ..DeviceOptions::default()
        },
        weight_budget: None,
        io_bandwidth: None,
        upload: Default::default(),
        ring_depth: None,
    }
}

/// The GPU backend for `m`, or `None` when there is no GPU and LLMCAD_SKIP_GPU=1.
fn gpu(m: &Model, o: &GpuOptions) -> Option<GpuBackend> {
    common::gpu_backend(&m.config, &m.weights, o)
}

fn tiny(name: &str, spec: &TinySpec, dtype: DType) -> (PathBuf, PathBuf) {
    // HF directories hold float tensors only
    let hf = if dtype.is_quantized() {
        DType::BF16
    } else {
        dtype
    };
    let t = write_tiny(scratch_dir(), name, spec, dtype, hf).unwrap();
    (t.gguf, t.hf_dir)
}

fn dense_rows(l: &Logits) -> Vec<f32> {
    match l {
        Logits::Dense { data, .. } => data.clone(),
        Logits::TopK { .. } => panic!("expected dense logits"),
    }
}

const PROMPT: [u32; 11] = [1, 40, 77, 300, 5, 120, 2, 1, 260, 33, 9];

/// Prefill in two chunks, then three single-token steps: every row on both backends.
fn compare_with_cpu(m: &Model, o: &GpuOptions, what: &str) {
    let Some(mut g) = gpu(m, o) else { return };
    let mut c = cpu(m, Precision::F32, 2);
    let steps: [&[u32]; 5] = [&PROMPT[..7], &PROMPT[7..], &[44], &[45], &[46]];
    for s in steps {
        let batch = Batch::chain(s, c.kv_len());
        let want = c.forward(&batch, Want::ALL_FULL).unwrap();
        let got = g.forward(&batch, Want::ALL_FULL).unwrap();
        let e = rel_err(&dense_rows(&got), &dense_rows(&want));
        assert!(e < 1e-4, "{what}: rel err {e} at kv {}", c.kv_len());
        assert_eq!(g.kv_len(), c.kv_len());
    }
}

#[test]
fn gpu_matches_cpu_on_tiny_models() {
    let default = TinySpec::default();
    let qwen = TinySpec {
        arch: Arch::Qwen2,
        seed: 4,
        ..Default::default()
    };
    let untied = TinySpec {
        tied: false,
        n_kv_heads: 1,
        seed: 5,
        ..Default::default()
    };
    let wide = wide_spec(6);
    let wide_qwen = TinySpec {
        arch: Arch::Qwen2,
        ..wide_spec(8)
    };
    for (name, spec, dtype) in [
        ("gpu-f32", &default, DType::F32),
        ("gpu-q8", &default, DType::Q8_0),
        ("gpu-q4_1", &default, DType::Q4_1),
        ("gpu-qwen2-q4_0", &qwen, DType::Q4_0),
        ("gpu-untied-f16", &untied, DType::F16),
        ("gpu-q5_0", &default, DType::Q5_0),
        ("gpu-wide-q4_k", &wide, DType::Q4_K),
        ("gpu-wide-qwen2-q6_k", &wide_qwen, DType::Q6_K),
    ] {
        let (gguf, hf) = tiny(name, spec, dtype);
        // every matrix of the file has the type (none fell back to F32)
        let mats = load(&gguf)
            .weights
            .matrices()
            .iter()
            .map(|m| m.dtype)
            .collect::<Vec<_>>();
        assert!(mats.iter().all(|&d| d == dtype), "{name}: {mats:?}");
        for path in [gguf, hf] {
            let m = load(&path);
            let layout = m.config.rope.layout;
            compare_with_cpu(
                &m,
                &opts(true, true, None),
                &format!("{name} {layout:?} {}", path.display()),
            );
        }
    }
    // both RoPE layouts were covered: GGUF llama is interleaved, HF and qwen2 half-split
    let m = load(&tiny("gpu-f32", &default, DType::F32).0);
    assert_eq!(m.config.rope.layout, RopeLayout::Interleaved);
}

/// A model whose matrices have 256 or 512 columns, so that every one of them can take a K-quant
/// (smaller rows take the 32-wide type llama.cpp falls back to).
fn wide_spec(seed: u64) -> TinySpec {
    TinySpec {
        n_layers: 2,
        hidden: 256,
        ffn: 512,
        head_dim: 64,
        seed,
        ..Default::default()
    }
}

#[test]
fn gpu_without_f16_and_subgroups_matches_cpu() {
    let spec = TinySpec {
        seed: 7,
        ..Default::default()
    };
    let (gguf, _) = tiny("gpu-nofeat-f16", &spec, DType::F16);
    compare_with_cpu(&load(&gguf), &opts(false, false, None), "no f16/subgroups");
    let (gguf, _) = tiny("gpu-nofeat-q4_1", &spec, DType::Q4_1);
    compare_with_cpu(&load(&gguf), &opts(false, false, None), "no f16/subgroups");
    let (gguf, _) = tiny("gpu-nofeat-q5_k", &wide_spec(9), DType::Q5_K);
    compare_with_cpu(&load(&gguf), &opts(false, false, None), "no f16/subgroups");
}

/// A tiny binding limit splits every matrix (and the embedding table) into many bindings:
/// same logits, bit for bit.
#[test]
fn split_bindings_give_identical_logits() {
    let (gguf, _) = tiny("gpu-split-q8", &TinySpec::default(), DType::Q8_0);
    let m = load(&gguf);
    let Some(mut a) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    let mut b = gpu(&m, &opts(true, true, Some(1024))).unwrap();
    let matrices = 1 + 7 * m.config.n_layers;
    assert_eq!(a.weight_bindings(), matrices);
    assert!(
        b.weight_bindings() > 5 * matrices,
        "{}",
        b.weight_bindings()
    );
    let batch = Batch::chain(&PROMPT, 0);
    let la = dense_rows(&a.forward(&batch, Want::ALL_FULL).unwrap());
    let lb = dense_rows(&b.forward(&batch, Want::ALL_FULL).unwrap());
    assert_eq!(la, lb);
}

fn random_tree(rng: &mut SamplerRng, n: usize, vocab: usize) -> (Vec<u32>, Vec<Option<usize>>) {
    let parents = (0..n)
        .map(|i| {
            if i == 0 || rng.uniform() < 0.1 {
                None
            } else {
                Some((rng.uniform() * i as f64) as usize)
            }
        })
        .collect();
    let tokens = (0..n)
        .map(|_| (rng.uniform() * vocab as f64) as u32)
        .collect();
    (tokens, parents)
}

/// Verifying a whole tree in one pass gives every node the logits of decoding its root path
/// on its own; the top-k readback matches the dense rows.
#[test]
fn tree_verification_matches_path_decoding() {
    let (gguf, _) = tiny("gpu-tree-q4_1", &TinySpec::default(), DType::Q4_1);
    let m = load(&gguf);
    let Some(mut g) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    let vocab = m.config.vocab;
    let mut rng = SamplerRng::new(21);
    let prefix = &PROMPT[..6];
    for n in [16, 41, 64] {
        let (tokens, parents) = random_tree(&mut rng, n, vocab);
        g.kv_truncate(0);
        g.forward(&Batch::chain(prefix, 0), Want::LAST_FULL)
            .unwrap();
        let batch = Batch::tree(&tokens, &parents, prefix.len());
        let tree = dense_rows(&g.forward(&batch, Want::ALL_FULL).unwrap());
        assert_eq!(g.kv_len(), prefix.len() + n);
        // the same pass with a top-k readback
        g.kv_truncate(prefix.len());
        let top = g
            .forward(
                &batch,
                Want {
                    rows: Rows::All,
                    top_k: Some(5),
                },
            )
            .unwrap();
        for i in (0..n).step_by(5) {
            let path: Vec<u32> = batch.visible(i).iter().map(|&j| tokens[j]).collect();
            g.kv_truncate(prefix.len());
            let alone = g
                .forward(&Batch::chain(&path, prefix.len()), Want::LAST_FULL)
                .unwrap();
            let row = &tree[i * vocab..(i + 1) * vocab];
            assert_eq!(row, alone.dense(0).unwrap(), "n={n} node {i}: tree != path");
            let want = Logits::Dense {
                vocab,
                data: row.to_vec(),
            }
            .into_top_k(5);
            assert_eq!(
                top.candidates(i),
                want.candidates(0),
                "n={n} node {i} top-k"
            );
        }
    }
}

/// Verify a tree, keep one branch with kv_compact, continue: same logits as decoding that
/// branch straight.
#[test]
fn kv_compact_then_decode_equals_straight_decoding() {
    let (gguf, _) = tiny("gpu-compact-f32", &TinySpec::default(), DType::F32);
    let m = load(&gguf);
    let Some(mut g) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    let prefix = &PROMPT[..5];
    // 0 ─ 1 ─ 3 ─ 5
    //   └ 2 ─ 4
    let tokens = [50u32, 61, 62, 73, 74, 85];
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(3)];
    g.forward(&Batch::chain(prefix, 0), Want::LAST_FULL)
        .unwrap();
    g.forward(
        &Batch::tree(&tokens, &parents, prefix.len()),
        Want::ALL_FULL,
    )
    .unwrap();
    g.kv_compact(prefix.len(), &[0, 2, 4]).unwrap();
    assert_eq!(g.kv_len(), prefix.len() + 3);
    let next = [90u32, 91];
    let after = g
        .forward(&Batch::chain(&next, g.kv_len()), Want::ALL_FULL)
        .unwrap();

    let mut straight: Vec<u32> = prefix.to_vec();
    straight.extend([50, 62, 74]);
    g.kv_truncate(0);
    g.forward(&Batch::chain(&straight, 0), Want::LAST_FULL)
        .unwrap();
    let want = g
        .forward(&Batch::chain(&next, straight.len()), Want::ALL_FULL)
        .unwrap();
    assert_eq!(dense_rows(&after), dense_rows(&want));
    // and the CPU agrees
    let mut c = cpu(&m, Precision::F32, 2);
    c.forward(&Batch::chain(&straight, 0), Want::LAST_FULL)
        .unwrap();
    let cl = c
        .forward(&Batch::chain(&next, straight.len()), Want::ALL_FULL)
        .unwrap();
    assert!(rel_err(&dense_rows(&after), &dense_rows(&cl)) < 1e-4);
}

#[test]
fn bad_batches_and_overflow_are_errors() {
    let m = load(&tiny_f32().gguf);
    let Some(mut g) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    let vocab = m.config.vocab as u32;
    assert!(g
        .forward(&Batch::chain(&[vocab], 0), Want::LAST_FULL)
        .is_err());
    assert!(g.forward(&Batch::chain(&[], 0), Want::LAST_FULL).is_err());
    let long = vec![1u32; CONTEXT + 1];
    assert!(matches!(
        g.forward(&Batch::chain(&long, 0), Want::LAST_FULL),
        Err(llmcad::Error::ContextOverflow { .. })
    ));
    assert_eq!(g.kv_len(), 0);
    assert!(g.kv_compact(0, &[3]).is_err());
    assert!(g.device_name().starts_with("gpu: "));
}

/// The real SmolLM2 (Q4_1): GPU logits near the exact CPU path, and greedy decoding gives the
/// reference continuation.
#[test]
fn real_model_matches_cpu_and_reference() {
    let Some(path) = common::real_model() else {
        return;
    };
    let m = load(&path);
    let Some(mut g) = gpu(
        &m,
        &GpuOptions {
            context: 256,
            ..GpuOptions::for_model(&m.config)
        },
    ) else {
        return;
    };
    let refs = common::references(common::SMOLLM2_REFERENCES);
    let r = &refs[0];
    let mut c = cpu(&m, Precision::F32, 2);
    let batch = Batch::chain(&r.prompt_ids, 0);
    let want = c.forward(&batch, Want::LAST_FULL).unwrap();
    let t = std::time::Instant::now();
    let got = g.forward(&batch, Want::LAST_FULL).unwrap();
    eprintln!(
        "real model: {}-token prefill on {} in {:?}",
        r.prompt_ids.len(),
        g.device_name(),
        t.elapsed()
    );
    let e = rel_err(&dense_rows(&got), &dense_rows(&want));
    assert!(e < 1e-4, "rel err {e}");
    // greedy continuation with top-1 readback
    let mut out = vec![got.argmax(0)];
    while out.len() < r.output_ids.len() {
        let step = Batch::chain(&out[out.len() - 1..], g.kv_len());
        let l = g
            .forward(
                &step,
                Want {
                    rows: Rows::Last,
                    top_k: Some(1),
                },
            )
            .unwrap();
        out.push(l.argmax(0));
    }
    assert_eq!(out, r.output_ids);
}

/// The cost curve runs every size and leaves the cache as it found it.
#[test]
fn pass_cost_curve_measures_every_size() {
    let m = load(&tiny_f32().gguf);
    let Some(mut g) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    g.forward(&Batch::chain(&PROMPT, 0), Want::LAST_FULL)
        .unwrap();
    let before = g
        .forward(&Batch::chain(&[7], PROMPT.len()), Want::LAST_FULL)
        .unwrap();
    g.kv_truncate(PROMPT.len());
    let ns = [1, 2, 4, 8, 9, 16, 32, 64];
    let curve = g.pass_cost_curve(&ns, 4, 1).unwrap(); // 4 < kv_len: measured at kv_len
    assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), ns);
    assert!(curve.iter().all(|c| c.1.as_nanos() > 0));
    assert_eq!(g.kv_len(), PROMPT.len());
    let after = g
        .forward(&Batch::chain(&[7], PROMPT.len()), Want::LAST_FULL)
        .unwrap();
    assert_eq!(dense_rows(&before), dense_rows(&after));
    eprintln!("tiny model pass cost: {curve:?}");
}

/// A prefill longer than one 64-token matmul tile, then a batch with a dense mask.
#[test]
fn long_prefill_and_dense_mask_match_cpu() {
    let m = load(&tiny("gpu-long-q8", &TinySpec::default(), DType::Q8_0).0);
    let Some(mut g) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    let mut c = cpu(&m, Precision::F32, 2);
    let long: Vec<u32> = (0..150).map(|i| (i * 37 % 300) as u32).collect();
    let batch = Batch::chain(&long, 0);
    let a = g.forward(&batch, Want::ALL_FULL).unwrap();
    let b = c.forward(&batch, Want::ALL_FULL).unwrap();
    let e = rel_err(&dense_rows(&a), &dense_rows(&b));
    assert!(e < 1e-4, "long prefill: {e}");
    let dense = Batch {
        tokens: vec![5, 6, 7, 8],
        positions: vec![150, 151, 151, 152],
        mask: llmcad::backend::BatchMask::Dense(vec![vec![0], vec![0, 1], vec![2], vec![0, 2, 3]]),
        cache: llmcad::backend::CacheView::All,
    };
    let a = g.forward(&dense, Want::ALL_FULL).unwrap();
    let b = c.forward(&dense, Want::ALL_FULL).unwrap();
    let e = rel_err(&dense_rows(&a), &dense_rows(&b));
    assert!(e < 1e-4, "dense mask: {e}");
}

/// The GPU declares what it runs: its top-k readback holds 64 candidates, so sampling that
/// needs more asks it for every logit and draws from the same distribution as the CPU; and it
/// cannot draft, which speculation refuses before any pass.
#[test]
fn callers_ask_the_gpu_only_what_it_declares() {
    let m = load(&tiny_f32().gguf);
    let Some(mut g) = gpu(&m, &opts(false, false, None)) else {
        return;
    };
    let caps = g.capabilities();
    assert!(!caps.speculative_cache);
    assert_eq!(caps.top_k_for(Some(100)), None);
    let gen = llmcad::generate::GenerateOptions {
        max_tokens: 48,
        ignore_eos: true,
        // hot enough that the tokens past the 64th carry real probability
        sampling: llmcad::sampling::SamplingParams {
            temperature: 8.0,
            top_k: 100,
            seed: 7,
            ..Default::default()
        },
        ..Default::default()
    };
    let run = |b: &mut dyn Backend| {
        llmcad::generate::generate(b, &PROMPT, &[], &gen, &mut |_| true)
            .unwrap()
            .tokens
    };
    let on_gpu = run(&mut g);
    assert_eq!(on_gpu, run(&mut cpu(&m, Precision::F32, 2)));

    let mut target = cpu(&m, Precision::F32, 2);
    let mut drafter = gpu(&m, &opts(false, false, None)).unwrap();
    let err = llmcad::spec::generate_speculative(
        &mut target,
        &mut drafter,
        &PROMPT,
        &[],
        &gen,
        &Default::default(),
        &mut |_| true,
    )
    .err()
    .expect("a GPU drafter is refused")
    .to_string();
    assert!(err.contains("cannot draft"), "{err}");
    assert_eq!(drafter.kv_len(), 0, "refused before any pass");
}

/// Profiling times every dispatch on its own without changing a bit of the logits, and counts
/// the model's kernels: two norms per layer and the final one, one attention per layer.
#[test]
fn profiled_passes_give_the_same_logits_and_count_every_kernel() {
    let m = load(&tiny_f32().gguf);
    let Some(mut g) = gpu(&m, &opts(true, true, None)) else {
        return;
    };
    let layers = m.config.n_layers;
    let batch = Batch::chain(&PROMPT, 0);
    let plain = dense_rows(&g.forward(&batch, Want::ALL_FULL).unwrap());
    if !g.set_profiling(true) {
        eprintln!("NOTICE: no GPU timestamps on this adapter: nothing to profile");
        return;
    }
    g.kv_truncate(0);
    let profiled = dense_rows(&g.forward(&batch, Want::ALL_FULL).unwrap());
    assert_eq!(profiled, plain);
    let profile = g.take_profile();
    let count = |name: &str| -> usize {
        profile
            .iter()
            .filter(|k| k.kernel.starts_with(name))
            .map(|k| k.dispatches)
            .sum()
    };
    assert_eq!(count("RmsNorm"), 2 * layers + 1, "{profile:?}");
    assert_eq!(count("Attention"), layers, "{profile:?}");
    assert!(
        count("Matvec") + count("Matmul") >= 7 * layers,
        "{profile:?}"
    );
    assert!(profile.iter().all(|k| k.dispatches > 0));
    assert!(profile.iter().map(|k| k.time).sum::<std::time::Duration>() > Default::default());
    assert!(profile.windows(2).all(|w| w[0].time >= w[1].time));
    // once off, nothing more is gathered
    g.set_profiling(false);
    g.kv_truncate(0);
    g.forward(&batch, Want::ALL_FULL).unwrap();
    assert!(g.take_profile().is_empty());
}
