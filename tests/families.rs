//! Every supported model family against an independent reference: the tiny random models in
//! tests/models/ (made by `tests/models/make_tiny_models.py` with Hugging Face `transformers`,
//! and converted to GGUF by llama.cpp's own `convert_hf_to_gguf.py`). For each family and both
//! file formats: the logits of every prompt position match transformers', greedy decoding gives
//! its tokens, the GPU gives the CPU's, and speculation with the family's tiny drafter is
//! lossless.

mod common;

use common::*;
use llmcad::backend::{Backend, Batch, Logits, Rows, Want};
use llmcad::cpu::{CpuBackend, CpuOptions, Precision};
use llmcad::generate::GenerateOptions;
use llmcad::model::Model;
use llmcad::spec::generate_speculative;
use llmcad::tokenizer::ChatMessage;
use serde::Deserialize;
use std::path::PathBuf;

/// Largest difference allowed between llmcad's logits and transformers' (both float32 over
/// float32 weights; the reference is rounded to 6 significant digits), relative to the largest
/// reference logit of the row and at least 1.
const LOGIT_TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    /// Text whose encoding by the family's Hugging Face tokenizer is `prompt_ids` (with BOS
    /// first where the family adds one).
    #[serde(default)]
    prompt_text: String,
    prompt_ids: Vec<u32>,
    /// One row per prompt position.
    logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
}

fn dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/models")
        .join(family)
}

fn reference(family: &str) -> Reference {
    let path = dir(family).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The KV cache the references are compared at. Phi-3's LongRoPE uses its short factors for a
/// context within the original 32 tokens, which is what the reference (32 tokens) ran with;
/// `phi3_long_factors` checks the long ones.
fn context(family: &str) -> usize {
    if family == "phi3" {
        32
    } else {
        64
    }
}

fn cpu_at(m: &Model, context: usize) -> CpuBackend {
    let opts = CpuOptions {
        threads: 2,
        precision: Precision::default(),
        context,
    };
    CpuBackend::new(m.config.clone(), m.weights.clone(), &opts).unwrap()
}

/// The family's target from its GGUF and from its Hugging Face directory.
fn targets(family: &str) -> [Model; 2] {
    [
        load(&dir(family).join("target.gguf")),
        load(&dir(family).join("target")),
    ]
}

fn prompt_logits(b: &mut dyn Backend, prompt: &[u32]) -> Vec<f32> {
    let want = Want {
        rows: Rows::All,
        top_k: None,
    };
    match b.forward(&Batch::chain(prompt, 0), want).unwrap() {
        Logits::Dense { data, .. } => data,
        other => panic!("dense logits expected, got {other:?}"),
    }
}

/// Checks every row of `got` against the reference; returns the largest relative difference.
fn compare_logits(what: &str, got: &[f32], r: &Reference) -> f32 {
    let vocab = r.logits[0].len();
    assert_eq!(got.len(), r.logits.len() * vocab, "{what}");
    let mut worst = 0f32;
    for (pos, (row, want)) in got.chunks_exact(vocab).zip(&r.logits).enumerate() {
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = row
            .iter()
            .zip(want)
            .map(|(g, w)| {
                if g.is_finite() {
                    (g - w).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0f32, f32::max)
            / scale;
        assert!(
            diff <= LOGIT_TOLERANCE,
            "{what}: position {pos} differs from transformers by {diff:e} (relative)"
        );
        worst = worst.max(diff);
    }
    worst
}

fn greedy(b: &mut dyn Backend, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    llmcad::generate::generate(b, prompt, &[], &opts, &mut |_| true)
        .unwrap()
        .tokens
}

/// The family's tokenizer, from the GGUF's vocabulary and from tokenizer.json, encodes the
/// reference prompt as transformers does, and its chat template renders a turn.
fn tokenizes_like_transformers(family: &str) {
    let r = reference(family);
    for m in targets(family) {
        let ids = m.encode_prompt(&r.prompt_text).unwrap();
        assert_eq!(
            ids, r.prompt_ids,
            "{family} ({:?}): {:?}",
            m.format, r.prompt_text
        );
        let turn = [ChatMessage::new("user", "Hello there")];
        let chat = m
            .require_chat_template()
            .unwrap()
            .render(&turn, true)
            .unwrap();
        assert!(
            chat.contains("Hello there") && chat.len() > "Hello there".len() + 8,
            "{family} ({:?}): {chat:?}",
            m.format
        );
    }
}

/// Logits and greedy tokens on the CPU, from both formats, at every activation precision the
/// float32 weights take (they all multiply in f32).
fn matches_transformers_on_the_cpu(family: &str) {
    let r = reference(family);
    for m in targets(family) {
        let what = format!("{family} ({:?})", m.format);
        let mut b = cpu_at(&m, context(family));
        let worst = compare_logits(&what, &prompt_logits(&mut b, &r.prompt_ids), &r);
        eprintln!("{what}: largest relative logit difference {worst:e}");
        let mut b = cpu_at(&m, context(family));
        let tokens = greedy(&mut b, &r.prompt_ids, r.greedy_ids.len());
        assert_eq!(tokens, r.greedy_ids, "{what}: greedy tokens");
    }
}

/// The GPU gives the reference's logits and greedy tokens (tests/run.sh runs this again under
/// WebGPU's default limits).
fn matches_transformers_on_the_gpu(family: &str) {
    let r = reference(family);
    for m in targets(family) {
        let what = format!("{family} ({:?}) on the GPU", m.format);
        let Some(mut g) = gpu_target(&m, context(family)) else {
            return;
        };
        compare_logits(&what, &prompt_logits(&mut g, &r.prompt_ids), &r);
        let mut g = gpu_target(&m, context(family)).unwrap();
        let tokens = greedy(&mut g, &r.prompt_ids, r.greedy_ids.len());
        assert_eq!(tokens, r.greedy_ids, "{what}: greedy tokens");
    }
}

/// Tree and chain speculation with the family's one-layer drafter give the target-only tokens,
/// with the target on the CPU and on the GPU (whose cache keeps what verification accepts).
fn speculation_is_lossless(family: &str) {
    let r = reference(family);
    let t = load(&dir(family).join("target.gguf"));
    let d = load(&dir(family).join("draft.gguf"));
    assert!(llmcad::spec::check_pair(&t, &d).unwrap().is_empty());
    let n = 24;
    let want = greedy(&mut cpu(&t, Precision::default(), 1), &r.prompt_ids, n);
    let opts = GenerateOptions {
        max_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    for spec in tree_and_chain() {
        let mut targets: Vec<(&str, Box<dyn Backend>)> =
            vec![("cpu", Box::new(cpu(&t, Precision::default(), 2)))];
        if let Some(g) = gpu_target(&t, t.config.max_context) {
            targets.push(("gpu", Box::new(g)));
        }
        for (device, mut tb) in targets {
            let mut db = cpu(&d, Precision::default(), 1);
            let out = generate_speculative(
                tb.as_mut(),
                &mut db,
                &r.prompt_ids,
                &[],
                &opts,
                &spec,
                &mut |_| true,
            )
            .unwrap();
            assert_eq!(
                out.generation.tokens, want,
                "{family} with {spec:?}, target on the {device}"
            );
        }
    }
}

macro_rules! family_tests {
    ($($family:ident),*) => {$(
        mod $family {
            #[test]
            fn matches_transformers_on_the_cpu() {
                super::matches_transformers_on_the_cpu(stringify!($family));
            }

            #[test]
            fn matches_transformers_on_the_gpu() {
                super::matches_transformers_on_the_gpu(stringify!($family));
            }

            #[test]
            fn tokenizes_like_transformers() {
                super::tokenizes_like_transformers(stringify!($family));
            }

            #[test]
            fn speculation_is_lossless() {
                super::speculation_is_lossless(stringify!($family));
            }
        }
    )*};
}

family_tests!(llama3, qwen2, qwen3, phi3, gemma2, gemma3);

/// Past its original context Phi-3 rotates with LongRoPE's long factors, for every position
/// (as llama.cpp does; transformers switches per call, so its reference forced them).
#[test]
fn phi3_long_factors() {
    #[derive(Deserialize)]
    struct Long {
        prompt_ids: Vec<u32>,
        prompt_logits_long_factors: Vec<Vec<f32>>,
        greedy_ids_long_factors: Vec<u32>,
    }
    let text = std::fs::read_to_string(dir("phi3").join("reference_long.json")).unwrap();
    let long: Long = serde_json::from_str(&text).unwrap();
    let r = Reference {
        prompt_text: String::new(),
        prompt_ids: long.prompt_ids,
        logits: long.prompt_logits_long_factors,
        greedy_ids: long.greedy_ids_long_factors,
    };
    for m in targets("phi3") {
        let what = format!("phi3 ({:?}), long factors", m.format);
        let mut b = cpu_at(&m, 64);
        compare_logits(&what, &prompt_logits(&mut b, &r.prompt_ids), &r);
        let tokens = greedy(&mut cpu_at(&m, 64), &r.prompt_ids, r.greedy_ids.len());
        assert_eq!(tokens, r.greedy_ids, "{what}: greedy tokens");
    }
}

/// An architecture llmcad does not run is refused at load time, naming it, from either format:
/// here the gemma2 fixture relabelled as Mamba 2 (a GGUF architecture llama.cpp knows).
#[test]
fn unsupported_architectures_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = std::fs::read(dir("gemma2").join("target.gguf")).unwrap();
    let relabelled = replace_all(&gguf, b"gemma2", b"mamba2");
    let gguf_path = tmp.path().join("mamba2.gguf");
    std::fs::write(&gguf_path, relabelled).unwrap();
    let hf_dir = tmp.path().join("mamba2");
    std::fs::create_dir(&hf_dir).unwrap();
    for f in std::fs::read_dir(dir("gemma2").join("target")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, hf_dir.join(f.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(hf_dir.join("config.json")).unwrap();
    let config = config.replace("Gemma2ForCausalLM", "Mamba2ForCausalLM");
    std::fs::write(hf_dir.join("config.json"), config).unwrap();
    for (path, name) in [(gguf_path, "\"mamba2\""), (hf_dir, "\"Mamba2ForCausalLM\"")] {
        let err = Model::load(&path, &Default::default())
            .err()
            .unwrap_or_else(|| panic!("{} loaded", path.display()))
            .to_string();
        assert!(
            err.contains(name) && err.contains("llmcad runs"),
            "{}: {err}",
            path.display()
        );
    }
}

fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

/// Gemma 2 soft-caps its logits: a head restricted to some tokens (FR-Spec's drafter) caps the
/// logits it computes and leaves the others at -∞, which capping would have made finite.
#[test]
fn a_restricted_head_soft_caps_only_its_tokens() {
    let m = load(&dir("gemma2").join("target.gguf"));
    assert!(m.config.final_softcap.is_some());
    let r = reference("gemma2");
    let vocab = m.config.vocab;
    let full = prompt_logits(&mut cpu_at(&m, 64), &r.prompt_ids);
    let mut b = cpu_at(&m, 64);
    let ids: Vec<u32> = (0..vocab as u32).step_by(3).collect();
    assert!(b.restrict_vocab(&ids));
    let some = prompt_logits(&mut b, &r.prompt_ids);
    for (i, (f, s)) in full.iter().zip(&some).enumerate() {
        if (i % vocab).is_multiple_of(3) {
            assert_eq!(f, s, "logit {i}");
        } else {
            assert_eq!(*s, f32::NEG_INFINITY, "logit {i}");
        }
    }
}
