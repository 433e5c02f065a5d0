//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) against the independent float32 reference in
//! ../shared/reference/, and speculative decoding with the distilled drafter in
//! ../shared/models/smollm2-135m-draft/. CI fetches the model (models/fetch-smollm2.sh).

mod common;

use common::*;
use llmcad::cpu::Precision;
use llmcad::generate::GenerateOptions;
use llmcad::model::{LoadOptions, Model};
use llmcad::spec::{generate_speculative, SpecMode, SpecOptions};
use std::path::Path;
use std::sync::OnceLock;

fn target() -> Option<&'static Model> {
    static M: OnceLock<Model> = OnceLock::new();
    let path = real_model()?;
    Some(M.get_or_init(|| load(&path)))
}

fn drafter() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let p = shared().join("models/smollm2-135m-draft/smollm2-135m-draft.q8_0.gguf");
        Model::load(&p, &LoadOptions::default()).unwrap()
    })
}

/// The frequency table shipped for SmolLM2's vocabulary fits the target and its drafter (see
/// `check_shipped_frequency_table`).
#[test]
fn the_shipped_frequency_table_fits_the_pair() {
    let Some(t) = target() else { return };
    check_shipped_frequency_table(t, drafter(), SMOLLM2_REFERENCES, 0.9);
}

/// How many reference lines the reference tests run: all, or the first
/// LLMCAD_SMOLLM2_PROMPTS (the emulated aarch64 run in tests/run.sh keeps to a few).
fn reference_limit() -> usize {
    std::env::var("LLMCAD_SMOLLM2_PROMPTS")
        .map(|v| v.parse().expect("LLMCAD_SMOLLM2_PROMPTS: a number"))
        .unwrap_or(usize::MAX)
}

/// Greedy outputs per reference line with `precision`; returns how many chat lines matched.
fn run_references(m: &Model, precision: Precision) -> (usize, usize) {
    let mut b = cpu(m, precision, 2);
    let (mut chat, mut matched) = (0, 0);
    for r in references(SMOLLM2_REFERENCES)
        .into_iter()
        .take(reference_limit())
    {
        assert_eq!(
            m.encode_prompt(&r.prompt_text).unwrap(),
            r.prompt_ids,
            "{}",
            r.prompt
        );
        let got = greedy(
            &mut b,
            &r.prompt_ids,
            r.output_ids.len(),
            &m.config.special.stop,
        );
        let same = got
            .iter()
            .zip(&r.output_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let ok = got == r.output_ids;
        eprintln!(
            "{precision:?} {} {:?}: {same}/{} tokens agree{}",
            r.kind,
            r.prompt,
            r.output_ids.len(),
            if ok { "" } else { " (MISMATCH)" }
        );
        if r.kind == "chat" {
            chat += 1;
            matched += usize::from(ok);
        }
    }
    (matched, chat)
}

#[test]
fn f32_path_reproduces_every_chat_reference() {
    let Some(m) = target() else { return };
    let (matched, chat) = run_references(m, Precision::F32);
    assert!(chat >= reference_limit().min(6));
    assert_eq!(
        matched, chat,
        "the exact f32 path must match every chat line"
    );
}

#[test]
fn default_path_reproduces_the_chat_references() {
    let Some(m) = target() else { return };
    let (matched, chat) = run_references(m, Precision::default());
    assert_eq!(matched, chat, "the default path must match every chat line");
}

/// Twenty varied prompts, 128 tokens each: tree, chain and target-only give the same ids.
#[test]
fn speculation_with_the_distilled_drafter_is_lossless() {
    let Some(m) = target() else { return };
    let d = drafter();
    assert!(llmcad::spec::check_pair(m, d).unwrap().is_empty());
    let template = m
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template");
    // the benchmark's prompt set: twenty varied chat requests
    let prompts: Vec<&str> = include_str!("../benches/prompts.txt").lines().collect();
    assert_eq!(prompts.len(), 20);
    let opts = GenerateOptions {
        max_tokens: 128,
        ignore_eos: true,
        ..Default::default()
    };
    // every prompt with the default tree (cost-sized) and the chain baseline; a 32-node tree
    // (eight times a one-token pass on the CPU) on a quarter of them
    let modes = [
        SpecOptions::default(),
        SpecOptions {
            mode: SpecMode::Chain { k: 4 },
            ..SpecOptions::default()
        },
        SpecOptions {
            max_nodes: Some(32),
            ..SpecOptions::default()
        },
    ];
    // tokens emitted and target passes per mode, over the prompts every mode ran
    let mut per_mode = [(0, 0); 3];
    for (i, p) in prompts.iter().enumerate() {
        let text = template
            .render(&[llmcad::tokenizer::ChatMessage::new("user", *p)], true)
            .unwrap();
        let prompt = m.encode_prompt(&text).unwrap();
        let mut t = cpu(m, Precision::default(), 2);
        let want = llmcad::generate::generate(&mut t, &prompt, &[], &opts, &mut |_| true)
            .unwrap()
            .tokens;
        let big_tree = i % 4 == 0;
        for (mode, spec) in modes.iter().enumerate() {
            if !big_tree && spec.max_nodes.is_some() {
                continue;
            }
            let mut t = cpu(m, Precision::default(), 2);
            // the default mode with the drafter as the engine runs it (restricted, 8-bit)
            let mut dr = if mode == 0 {
                default_drafter(d)
            } else {
                cpu(d, Precision::default(), 2)
            };
            let out =
                generate_speculative(&mut t, &mut dr, &prompt, &[], &opts, spec, &mut |_| true)
                    .unwrap();
            assert_eq!(out.generation.tokens, want, "{p:?} with {spec:?}");
            if big_tree {
                per_mode[mode].0 += out.spec.emitted_tokens;
                per_mode[mode].1 += out.generation.stats.target_passes;
            }
        }
    }
    let per_pass = per_mode.map(|(e, p)| e as f64 / p as f64);
    eprintln!("tokens per target pass (cost-sized, chain k=4, 32-node tree): {per_pass:.2?}");
    // (the cost-sized default mostly skips drafting on a CPU target, where it does not pay)
    assert!(
        per_pass[1] > 1.5,
        "the distilled drafter should be accepted often ({per_pass:.2?})"
    );
    assert!(
        per_pass[2] > 1.2 * per_pass[1],
        "a 32-node tree should accept clearly more than a chain ({per_pass:.2?})"
    );
}

/// The same on the GPU verifier (Lavapipe in CI, where a SmolLM2 pass takes ~0.2–0.7 s: two
/// prompts and 24 tokens keep it to about a minute).
#[test]
fn speculation_on_the_gpu_target_is_lossless() {
    let Some(m) = target() else { return };
    let d = drafter();
    let template = m.chat_template.as_ref().unwrap();
    let opts = GenerateOptions {
        max_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let spec = SpecOptions {
        max_nodes: Some(8),
        ..SpecOptions::default()
    };
    let prompts: Vec<&str> = include_str!("../benches/prompts.txt")
        .lines()
        .take(2)
        .collect();
    for p in prompts {
        let text = template
            .render(&[llmcad::tokenizer::ChatMessage::new("user", p)], true)
            .unwrap();
        let prompt = m.encode_prompt(&text).unwrap();
        let Some(mut t) = gpu_target(m, 1024) else {
            return;
        };
        let want = llmcad::generate::generate(&mut t, &prompt, &[], &opts, &mut |_| true)
            .unwrap()
            .tokens;
        let mut t = gpu_target(m, 1024).unwrap();
        let mut dr = cpu(d, Precision::default(), 2);
        let out = generate_speculative(&mut t, &mut dr, &prompt, &[], &opts, &spec, &mut |_| true)
            .unwrap();
        assert_eq!(out.generation.tokens, want, "{p:?}");
        assert!(out.spec.accepted_tokens > 0);
    }
}

/// The committed greedy tokens of a few SmolLM2 references (generated on x86-64; see
/// `greedy_tokens_are_the_same_on_every_architecture`).
const EXPECTED_TOKENS: &str = "tests/expected/smollm2_greedy_tokens.json";

/// The activation modes that claim exactness (they reproduce the float32 reference).
const EXACT_MODES: [(&str, Precision); 2] =
    [("f32", Precision::F32), ("q16", Precision::Q16Activations)];

/// The greedy tokens of the first two chat references (up to 16 tokens), in every exact mode, equal the
/// committed ones, whichever architecture and kernel set runs this (x86-64 in CI, aarch64 under
/// qemu at two CPU levels): a kernel change that alters one architecture's rounding is caught.
/// `LLMCAD_BLESS=1` rewrites the file from this machine's output; `LLMCAD_EXACT_MODES=q16`
/// checks only those modes and `LLMCAD_SMOLLM2_PROMPTS=1` the first case of each (the f32
/// path takes minutes under emulation).
#[test]
fn greedy_tokens_are_the_same_on_every_architecture() {
    let Some(m) = target() else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXPECTED_TOKENS);
    if std::env::var("LLMCAD_BLESS").as_deref() == Ok("1") {
        let refs: Vec<_> = references(SMOLLM2_REFERENCES)
            .into_iter()
            .filter(|r| r.kind == "chat")
            .take(2)
            .collect();
        let cases: Vec<serde_json::Value> = EXACT_MODES
            .iter()
            .flat_map(|&(mode, precision)| {
                let mut b = cpu(m, precision, 2);
                refs.iter()
                    .map(|r| {
                        // few tokens: the emulated aarch64 run decodes at a few tokens/s
                        let n = r.output_ids.len().min(16);
                        let tokens = greedy(&mut b, &r.prompt_ids, n, &m.config.special.stop);
                        serde_json::json!({
                            "mode": mode,
                            "prompt": r.prompt,
                            "prompt_ids": r.prompt_ids,
                            "max_tokens": n,
                            "tokens": tokens,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "generated_on": std::env::consts::ARCH,
            "cases": cases,
        }))
        .unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text + "\n").unwrap();
    }
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect(EXPECTED_TOKENS)).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        let a = v.as_array().expect("an array of token ids");
        a.iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let cases = expected["cases"].as_array().unwrap();
    let asked = std::env::var("LLMCAD_EXACT_MODES").ok();
    for &(mode, precision) in &EXACT_MODES {
        if asked
            .as_ref()
            .is_some_and(|a| !a.split(',').any(|m| m == mode))
        {
            println!(
                "{mode}: not checked (LLMCAD_EXACT_MODES={})",
                asked.as_ref().unwrap()
            );
            continue;
        }
        let mut b = cpu(m, precision, 2);
        let mine: Vec<_> = cases.iter().filter(|c| c["mode"] == mode).collect();
        assert!(!mine.is_empty(), "{EXPECTED_TOKENS} has no {mode} case");
        let mine = &mine[..mine.len().min(reference_limit())];
        for c in mine {
            let n = c["max_tokens"].as_u64().unwrap() as usize;
            let got = greedy(&mut b, &ids(&c["prompt_ids"]), n, &m.config.special.stop);
            assert_eq!(
                got,
                ids(&c["tokens"]),
                "{mode} {} on {} ({} kernels) differs from {EXPECTED_TOKENS} (generated on {})",
                c["prompt"],
                std::env::consts::ARCH,
                llmcad::quant::Simd::active().name(),
                expected["generated_on"]
            );
        }
    }
}
