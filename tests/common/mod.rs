//! Shared test helpers: tiny random models written once per test binary, the real SmolLM2
//! model (fetched by models/fetch-smollm2.sh) and the reference outputs.
#![allow(dead_code)]

use llmcad::backend::Backend;
use llmcad::cpu::{CpuBackend, CpuOptions, Precision};
use llmcad::model::{LoadOptions, Model};
use llmcad::quant::DType;
use llmcad::synthetic::{derive_drafter, write_model, write_tiny, TinyModel, TinySpec};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory that lives as long as the test process.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The default tiny target, F32 in both formats.
pub fn tiny_f32() -> &'static TinyModel {
    static M: OnceLock<TinyModel> = OnceLock::new();
    M.get_or_init(|| {
        write_tiny(
            scratch_dir(),
            "tiny-f32",
            &TinySpec::default(),
            DType::F32,
            DType::F32,
        )
        .unwrap()
    })
}

/// A tiny target and a drafter derived from it (same vocabulary, fewer noisy layers), GGUF.
/// Written once per process and dtype: tests run in parallel and map these files, so they must
/// never be rewritten under each other (a truncated mapping is a SIGBUS).
pub fn tiny_pair(dtype: DType) -> (PathBuf, PathBuf) {
    static PAIRS: OnceLock<std::sync::Mutex<std::collections::HashMap<DType, (PathBuf, PathBuf)>>> =
        OnceLock::new();
    let mut pairs = PAIRS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pairs
        .entry(dtype)
        .or_insert_with(|| write_pair(dtype))
        .clone()
}

fn write_pair(dtype: DType) -> (PathBuf, PathBuf) {
    let spec = TinySpec {
        n_layers: 4,
        seed: 11,
        ..TinySpec::default()
    };
    let target = spec.tensors();
    let name = format!("pair-{dtype}");
    let t = write_model(
        scratch_dir(),
        &format!("{name}-target"),
        &spec.config(),
        &target,
        dtype,
        DType::F32,
    )
    .unwrap();
    let dspec = TinySpec {
        n_layers: 1,
        ..spec.clone()
    };
    let d = derive_drafter(&target, 1, 0.3, 5);
    let d = write_model(
        scratch_dir(),
        &format!("{name}-draft"),
        &dspec.config(),
        &d,
        dtype,
        DType::F32,
    )
    .unwrap();
    (t.gguf, d.gguf)
}

pub fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

pub fn cpu(m: &Model, precision: Precision, threads: usize) -> CpuBackend {
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

/// ‖a − b‖ / ‖b‖; NaN anywhere makes it infinite so that it never passes a bound.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// The real SmolLM2 GGUF (see `cached_model`).
pub fn real_model() -> Option<PathBuf> {
    cached_model("SmolLM2-135M-Instruct.Q4_1.gguf", "models/fetch-smollm2.sh")
}

/// The real Qwen2.5-Coder pair: the 1.5B target and the 0.5B drafter (see `cached_model`).
pub fn qwen_pair() -> Option<(PathBuf, PathBuf)> {
    let fetch = "models/fetch-qwen-pair.sh";
    Some((
        cached_model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", fetch)?,
        cached_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", fetch)?,
    ))
}

/// A real model file in models/cache/. Missing → the test fails with instructions, unless
/// LLMCAD_SKIP_REAL_MODEL=1, when it prints a notice and the caller returns.
pub fn cached_model(file: &str, fetch: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/cache")
        .join(file);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("LLMCAD_SKIP_REAL_MODEL").as_deref() == Ok("1") {
        eprintln!(
            "NOTICE: skipping a real-model test: {} is missing (LLMCAD_SKIP_REAL_MODEL=1)",
            p.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run {fetch} (or set LLMCAD_SKIP_REAL_MODEL=1 to skip locally)",
        p.display()
    );
}

/// The shared folder beside the checkout (drafter, reference outputs).
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub struct Reference {
    pub kind: String,
    pub prompt: String,
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// The smallest gap between the two best candidates along the output (logits for SmolLM2,
    /// probabilities for Qwen; see the reference README).
    pub min_top2_margin: f64,
}

pub const SMOLLM2_REFERENCES: &str = "smollm2_greedy.jsonl";
pub const QWEN_REFERENCES: &str = "qwen2.5-coder-1.5b_greedy.jsonl";

/// The lines of `../shared/reference/<file>`.
pub fn references(file: &str) -> Vec<Reference> {
    let text =
        std::fs::read_to_string(shared().join("reference").join(file)).expect("reference file");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ids = |k: &str| {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            Reference {
                kind: v["kind"].as_str().unwrap_or("chat").into(),
                prompt: v["prompt"].as_str().unwrap().into(),
                prompt_text: v["prompt_text"].as_str().unwrap().into(),
                prompt_ids: ids("prompt_ids"),
                output_ids: ids("output_ids"),
                min_top2_margin: v["min_top2_margin"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The drafter as the engine runs it by default: restricted to the shipped frequency table's
/// tokens (where one matches), with the drafter's own activation precision, on 2 threads.
pub fn default_drafter(d: &Model) -> CpuBackend {
    use llmcad::spec::frequent::{draft_tokens, DraftVocab, FrequencyTable};
    let mut db = cpu(d, llmcad::engine::EngineOptions::new("").draft_precision, 2);
    let table = FrequencyTable::shipped_for(&d.tokenizer);
    if let Some(ids) = draft_tokens(&d.config, table.as_ref(), DraftVocab::Auto) {
        assert!(db.restrict_vocab(&ids));
    }
    db
}

/// A frequency table ships for the pair's vocabulary and is found for both models; what the
/// drafter keeps by default is a real restriction that keeps the stop tokens and covers more
/// than `min_share` of the target's tokens on the reference lines of `references_file` (text
/// the table was not built from).
pub fn check_shipped_frequency_table(
    target: &Model,
    drafter: &Model,
    references_file: &str,
    min_share: f64,
) {
    use llmcad::spec::frequent::{draft_tokens, DraftVocab, FrequencyTable};
    let table = FrequencyTable::shipped_for(&drafter.tokenizer).expect("a shipped table");
    assert_eq!(
        FrequencyTable::shipped_for(&target.tokenizer),
        Some(table.clone())
    );
    let vocab = drafter.config.vocab;
    let ids = draft_tokens(&drafter.config, Some(&table), DraftVocab::Auto).expect("a restriction");
    assert!(ids.len() >= table.recommended as usize && ids.len() < vocab);
    assert!(ids.iter().all(|&id| (id as usize) < vocab));
    assert!(drafter.config.special.stop.iter().all(|s| ids.contains(s)));
    let outputs: Vec<u32> = references(references_file)
        .iter()
        .flat_map(|r| r.output_ids.clone())
        .collect();
    let covered = outputs
        .iter()
        .filter(|t| ids.binary_search(t).is_ok())
        .count();
    let share = covered as f64 / outputs.len() as f64;
    eprintln!(
        "the default draft vocabulary ({} of {vocab}) covers {share:.3} of the reference tokens",
        ids.len()
    );
    assert!(share > min_share, "{share:.3}");
}

/// Greedy continuation of `prompt` for `n` tokens (stopping at a stop token).
pub fn greedy(b: &mut dyn Backend, prompt: &[u32], n: usize, stop: &[u32]) -> Vec<u32> {
    let opts = llmcad::generate::GenerateOptions {
        max_tokens: n,
        ..Default::default()
    };
    b.kv_truncate(0);
    llmcad::generate::generate(b, prompt, stop, &opts, &mut |_| true)
        .unwrap()
        .tokens
}

/// A GPU backend, or `None` when there is no adapter and LLMCAD_SKIP_GPU=1; without that
/// variable a missing GPU fails the test (CI has Lavapipe).
pub fn gpu_backend(
    cfg: &llmcad::model::ModelConfig,
    weights: &std::sync::Arc<llmcad::model::ModelWeights>,
    opts: &llmcad::gpu::GpuOptions,
) -> Option<llmcad::gpu::GpuBackend> {
    match llmcad::gpu::GpuBackend::new(cfg.clone(), weights.clone(), opts) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("LLMCAD_SKIP_GPU").as_deref() == Ok("1") => {
            eprintln!("NOTICE: skipping a GPU test (LLMCAD_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!(
            "GPU backend: {e} (install mesa-vulkan-drivers, or set LLMCAD_SKIP_GPU=1 to skip)"
        ),
    }
}

/// The GPU backend for `m` with a context of `context` tokens (see `gpu_backend`).
pub fn gpu_target(m: &Model, context: usize) -> Option<llmcad::gpu::GpuBackend> {
    let opts = llmcad::gpu::GpuOptions {
        context,
        ..llmcad::gpu::GpuOptions::for_model(&m.config)
    };
    gpu_backend(&m.config, &m.weights, &opts)
}

/// An 8-node tree and a 3-token chain: the speculative modes a short lossless check runs.
pub fn tree_and_chain() -> [llmcad::spec::SpecOptions; 2] {
    use llmcad::spec::{SpecMode, SpecOptions};
    [
        SpecOptions {
            max_nodes: Some(8),
            ..SpecOptions::default()
        },
        SpecOptions {
            mode: SpecMode::Chain { k: 3 },
            ..SpecOptions::default()
        },
    ]
}
