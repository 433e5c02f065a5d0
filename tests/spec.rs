//! Collaborative decoding on tiny random model pairs: every speculative mode reproduces
//! target-only greedy decoding token for token, and speculative sampling keeps the target's
//! distribution.

mod common;

use common::*;
use llmcad::backend::Backend;
use llmcad::cpu::{CpuBackend, Precision};
use llmcad::generate::{generate, GenerateOptions};
use llmcad::model::{LoadOptions, Model};
use llmcad::quant::DType;
use llmcad::sampling::SamplingParams;
use llmcad::spec::cost::PassTimes;
use llmcad::spec::drafter::{Drafter, Growth, TreeShape, CATCH_UP_WINDOW};
use llmcad::spec::{
    check_pair, generate_speculative, FallbackPolicy, Overlap, SpecMode, SpecOptions, TokenTree,
};
use llmcad::synthetic::{derive_drafter, write_model, TinySpec};
use std::collections::HashMap;
use std::sync::OnceLock;

/// A target and drafters of decreasing quality (same vocabulary): the target itself, slightly
/// perturbed, fewer layers and noisy, nearly unrelated.
struct Family {
    target: Model,
    drafters: Vec<Model>,
}

fn family(dtype: DType) -> &'static Family {
    static F32: OnceLock<Family> = OnceLock::new();
    static Q8: OnceLock<Family> = OnceLock::new();
    let cell = if dtype == DType::F32 { &F32 } else { &Q8 };
    cell.get_or_init(|| {
        let spec = TinySpec {
            n_layers: 4,
            seed: 21,
            ..TinySpec::default()
        };
        let tensors = spec.tensors();
        // targets load from GGUF, drafters from HF directories (pairs may mix formats)
        let write = |name: &str, s: &TinySpec, t: &[_]| {
            let m = write_model(
                scratch_dir(),
                &format!("spec-{dtype}-{name}"),
                &s.config(),
                t,
                dtype,
                DType::F32,
            )
            .unwrap();
            if name == "target" {
                load(&m.gguf)
            } else {
                let quantize = (dtype != DType::F32).then_some(dtype);
                Model::load(
                    &m.hf_dir,
                    &LoadOptions {
                        quantize,
                        progress: None,
                    },
                )
                .unwrap()
            }
        };
        let target = write("target", &spec, &tensors);
        let drafters = [(4, 0.0), (4, 0.05), (2, 0.3), (1, 2.0)]
            .iter()
            .enumerate()
            .map(|(i, &(layers, noise))| {
                let d = derive_drafter(&tensors, layers, noise, 100 + i as u64);
                let s = TinySpec {
                    n_layers: layers,
                    ..spec.clone()
                };
                write(&format!("draft{i}"), &s, &d)
            })
            .collect();
        Family { target, drafters }
    })
}

/// `LLMCAD_SPEC_QUICK=1` (the emulated aarch64 run in tests/run.sh, where a run of this file
/// at full size takes 15 minutes): the lossless tests keep every mode and both dtypes but take
/// one prompt and one drafter per mode, and the sampling test takes fewer samples
/// (its built-in check that a wrong distribution fails still has to pass).
fn quick() -> bool {
    std::env::var("LLMCAD_SPEC_QUICK").as_deref() == Ok("1")
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 40, 50, 60],
        vec![7],
        (3..40).collect(),
        vec![200, 201, 202, 203, 204, 205, 100, 10, 11],
    ]
}

fn plain(m: &Model, prompt: &[u32], opts: &GenerateOptions) -> Vec<u32> {
    let mut b = cpu(m, Precision::default(), 2);
    generate(&mut b, prompt, &m.config.special.stop, opts, &mut |_| true)
        .unwrap()
        .tokens
}

fn spec_run(
    target: &Model,
    drafter: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    spec: &SpecOptions,
) -> llmcad::spec::SpecGeneration {
    let mut t = cpu(target, Precision::default(), 2);
    let mut d: CpuBackend = cpu(drafter, Precision::default(), 1);
    generate_speculative(
        &mut t,
        &mut d,
        prompt,
        &target.config.special.stop,
        opts,
        spec,
        &mut |_| true,
    )
    .unwrap()
}

fn modes() -> Vec<SpecOptions> {
    let tree = |nodes, depth, branch, fallback| SpecOptions {
        mode: SpecMode::Tree,
        max_nodes: nodes,
        max_depth: depth,
        branch_threshold: branch,
        fallback,
        // drafting during verification on, so that its bookkeeping is checked too
        overlap: Overlap::On,
        ..SpecOptions::default()
    };
    let mut m = vec![
        SpecOptions::default(),
        // a verifier whose one-node pass looks free and whose bigger passes cost a fortune:
        // trees of one node, and mostly rounds without drafting
        SpecOptions {
            pass_times: PassTimes::from_points([(1, 1e-9), (2, 1e9)]),
            ..tree(None, 8, 0.1, FallbackPolicy::Adaptive)
        },
        tree(Some(1), 8, 0.3, FallbackPolicy::Adaptive),
        tree(Some(2), 8, 0.3, FallbackPolicy::Fixed(0.0)),
        tree(Some(16), 6, 0.05, FallbackPolicy::Fixed(0.0)),
        tree(Some(64), 20, 0.02, FallbackPolicy::Fixed(0.0)),
        tree(Some(9), 3, 0.0, FallbackPolicy::Fixed(0.0)),
        tree(Some(32), 12, 0.3, FallbackPolicy::Fixed(0.2)),
        SpecOptions {
            overlap: Overlap::Off,
            ..tree(Some(16), 8, 0.1, FallbackPolicy::Adaptive)
        },
    ];
    for k in [1, 2, 4, 8] {
        m.push(SpecOptions {
            mode: SpecMode::Chain { k },
            ..SpecOptions::default()
        });
    }
    m
}

fn greedy_agrees(dtype: DType) {
    let f = family(dtype);
    let opts = GenerateOptions {
        max_tokens: 40,
        ignore_eos: true,
        ..Default::default()
    };
    let (mut drafted, mut accepted, mut rejected_rounds, mut plain_rounds) = (0, 0, 0, 0);
    let mut prompts = prompts();
    if quick() {
        // the longest prompt (a multi-token prefill)
        prompts = vec![prompts.swap_remove(2)];
    }
    let mut runs = 0;
    for (pi, prompt) in prompts.iter().enumerate() {
        let want = plain(&f.target, prompt, &opts);
        assert_eq!(want.len(), 40);
        for (di, d) in f.drafters.iter().enumerate() {
            for (mi, spec) in modes().into_iter().enumerate() {
                // quick: the drafters take turns over the modes
                if quick() && (mi + pi) % f.drafters.len() != di {
                    continue;
                }
                runs += 1;
                let got = spec_run(&f.target, d, prompt, &opts, &spec);
                assert_eq!(
                    got.generation.tokens, want,
                    "{dtype} drafter {di} {spec:?} prompt {prompt:?}"
                );
                let s = &got.spec;
                drafted += s.draft_tokens;
                accepted += s.accepted_tokens;
                plain_rounds += s.plain_rounds;
                if s.accepted_tokens < s.draft_tokens {
                    rejected_rounds += 1;
                }
                assert_eq!(
                    s.emitted_tokens + 1,
                    want.len(),
                    "every token but the first comes from a verification"
                );
            }
        }
    }
    // the checks above mean something only if drafts were both accepted and rejected
    assert!(
        accepted > drafted / 10,
        "{accepted} of {drafted} drafted tokens accepted"
    );
    // one run in 20 at least (more than 10 of the full 208 runs)
    assert!(
        rejected_rounds > runs / 20,
        "only {rejected_rounds} of {runs} runs saw a rejection"
    );
    assert!(
        plain_rounds > 0,
        "rounds without drafting were never checked"
    );
}

#[test]
fn greedy_speculation_is_lossless_f32() {
    greedy_agrees(DType::F32);
}

#[test]
fn greedy_speculation_is_lossless_q8_0() {
    greedy_agrees(DType::Q8_0);
}

#[test]
fn stops_at_end_of_sequence_like_the_target() {
    let f = family(DType::F32);
    let run = |stop: &[u32], ignore_eos: bool, on_token: &mut dyn FnMut(u32) -> bool| {
        let opts = GenerateOptions {
            max_tokens: 20,
            ignore_eos,
            ..Default::default()
        };
        let mut t = cpu(&f.target, Precision::default(), 1);
        let mut d = cpu(&f.drafters[0], Precision::default(), 1);
        let spec = SpecOptions::default();
        generate_speculative(&mut t, &mut d, &[5, 6], stop, &opts, &spec, on_token)
            .unwrap()
            .generation
    };
    // make every token a stop token: generation ends after the first token
    let stop: Vec<u32> = (0..f.target.config.vocab as u32).collect();
    let out = run(&stop, false, &mut |_| true);
    assert_eq!(out.tokens.len(), 1);
    assert_eq!(out.stop, llmcad::generate::StopReason::EndOfSequence);
    // a callback that stops after 3 tokens
    let mut seen = 0;
    let out = run(&[], true, &mut |_| {
        seen += 1;
        seen < 3
    });
    assert_eq!(out.tokens.len(), 3);
    assert_eq!(out.stop, llmcad::generate::StopReason::Cancelled);
}

#[test]
fn a_perfect_drafter_is_always_accepted() {
    let f = family(DType::F32);
    let opts = GenerateOptions {
        max_tokens: 41,
        ignore_eos: true,
        ..Default::default()
    };
    let spec = SpecOptions {
        mode: SpecMode::Chain { k: 4 },
        ..SpecOptions::default()
    };
    let out = spec_run(&f.target, &f.drafters[0], &[1, 2, 3], &opts, &spec);
    // 1 token from the prompt pass, then 8 passes of 4 accepted + 1 own
    assert_eq!(out.generation.stats.target_passes, 8);
    assert_eq!(out.spec.accepted_tokens, 32);
    assert_eq!(out.spec.mean_accepted_per_pass(8), 5.0);

    // a tree with a perfect drafter: what was drafted during verification gets used
    let spec = SpecOptions {
        max_nodes: Some(4),
        max_depth: 3,
        fallback: FallbackPolicy::Fixed(0.0),
        overlap: Overlap::On,
        ..SpecOptions::default()
    };
    let out = spec_run(&f.target, &f.drafters[0], &[1, 2, 3], &opts, &spec);
    assert!(out.spec.overlap_drafted > 0);
    assert!(out.spec.overlap_kept > 0, "{:?}", out.spec);
    assert_eq!(out.generation.tokens, plain(&f.target, &[1, 2, 3], &opts));
}

/// A drafter that skipped many rounds catches up on the newest `CATCH_UP_WINDOW` tokens
/// only, and still drafts from there; the prompt it catches up on in full.
#[test]
fn a_drafter_far_behind_catches_up_on_a_window() {
    let f = family(DType::F32);
    let mut backend = cpu(&f.drafters[0], Precision::default(), 1);
    let prompt: Vec<u32> = (3..43).collect();
    let mut drafter = Drafter::new(&mut backend, &prompt, 16, 2);
    let mut grow = |_: &TokenTree, _: f32, _: Growth| true;
    let shape = TreeShape::chain(2);
    let first = drafter.draft(50, &shape, &mut grow).unwrap();
    assert_eq!(first.catch_up.tokens, prompt.len());
    assert!(first.catch_up.ms > 0.0);
    assert_eq!(first.tree.len(), 3, "two drafted tokens");
    drafter.commit(&first, &[0], 51, None).unwrap();
    for token in 51..51 + CATCH_UP_WINDOW as u32 + 9 {
        let skipped = drafter.skip(token);
        drafter.commit(&skipped, &[0], token + 1, None).unwrap();
    }
    let after = drafter.draft(100, &shape, &mut grow).unwrap();
    assert_eq!(after.catch_up.tokens, CATCH_UP_WINDOW);
    assert_eq!(after.tree.len(), 3);
    drafter.commit(&after, &[0], 101, None).unwrap();
    drop(drafter);
    // the prompt, the first root, the window and the second root
    assert_eq!(backend.kv_len(), prompt.len() + 1 + CATCH_UP_WINDOW + 1);
}

/// Upper tail of the chi-square distribution at p = 0.001 (Wilson–Hilferty).
fn chi2_critical(df: usize) -> f64 {
    let d = df as f64;
    let z = 3.09;
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

/// Two-sample chi-square statistic over the joint of the first `k` tokens.
fn homogeneity(a: &HashMap<Vec<u32>, usize>, b: &HashMap<Vec<u32>, usize>) -> (f64, usize) {
    let mut keys: Vec<&Vec<u32>> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut stat = 0.0;
    for k in &keys {
        let (x, y) = (
            *a.get(*k).unwrap_or(&0) as f64,
            *b.get(*k).unwrap_or(&0) as f64,
        );
        stat += (x - y).powi(2) / (x + y);
    }
    (stat, keys.len() - 1)
}

#[test]
fn speculative_sampling_keeps_the_target_distribution() {
    let f = family(DType::F32);
    let runs = if quick() { 400 } else { 3000 };
    let opts = |seed| GenerateOptions {
        max_tokens: 3,
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 2.5,
            top_k: 4,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let spec = SpecOptions {
        max_nodes: Some(8),
        fallback: FallbackPolicy::Fixed(0.0),
        branch_threshold: 0.0,
        max_children: 2,
        ..SpecOptions::default()
    };
    let prompt = [1, 40, 50, 60];
    let mut t = cpu(&f.target, Precision::default(), 1);
    let mut plain_counts = HashMap::new();
    for seed in 0..runs {
        t.kv_truncate(0);
        let out = generate(&mut t, &prompt, &[], &opts(seed), &mut |_| true).unwrap();
        *plain_counts.entry(out.tokens[1..].to_vec()).or_insert(0) += 1;
    }
    let mut spec_counts = HashMap::new();
    let mut accepted = 0;
    // a drafter that is often but not always right, with seeds disjoint from the plain runs
    for seed in runs..2 * runs {
        let out = spec_run(&f.target, &f.drafters[1], &prompt, &opts(seed), &spec);
        accepted += out.spec.accepted_tokens;
        *spec_counts
            .entry(out.generation.tokens[1..].to_vec())
            .or_insert(0) += 1;
    }
    assert!(
        accepted > runs as usize / 2,
        "speculation must be exercised ({accepted} accepted)"
    );
    let (stat, df) = homogeneity(&plain_counts, &spec_counts);
    assert!(df >= 3, "the test needs several outcomes, got {}", df + 1);
    assert!(
        stat < chi2_critical(df),
        "chi-square {stat:.1} over {df} degrees of freedom"
    );

    // the same test rejects a sampler that is not the target's: greedy drafts taken as is
    let mut biased = HashMap::new();
    for seed in runs..2 * runs {
        let d_opts = opts(seed);
        let mut d = cpu(&f.drafters[3], Precision::default(), 1);
        let out = generate(&mut d, &prompt, &[], &d_opts, &mut |_| true).unwrap();
        *biased.entry(out.tokens[1..].to_vec()).or_insert(0) += 1;
    }
    let (stat, df) = homogeneity(&plain_counts, &biased);
    assert!(
        stat > chi2_critical(df),
        "a wrong distribution must fail ({stat:.1}, df {df})"
    );
}

#[test]
fn mismatched_pairs_are_refused() {
    let f = family(DType::F32);
    assert!(check_pair(&f.target, &f.drafters[2]).unwrap().is_empty());
    // the target itself as drafter works but earns a warning
    assert_eq!(check_pair(&f.target, &f.drafters[0]).unwrap().len(), 1);
    let spec = TinySpec {
        extra_vocab: 8,
        n_layers: 1,
        ..TinySpec::default()
    };
    let m = write_model(
        scratch_dir(),
        "spec-bigvocab",
        &spec.config(),
        &spec.tensors(),
        DType::F32,
        DType::F32,
    )
    .unwrap();
    let other = load(&m.gguf);
    let err = check_pair(&f.target, &other).unwrap_err().to_string();
    assert!(err.contains("vocabularies differ"), "{err}");
    // same vocabulary, another end-of-sequence token
    let small = TinySpec {
        n_layers: 1,
        ..TinySpec::default()
    };
    let m = write_model(
        scratch_dir(),
        "spec-eos",
        &small.config(),
        &small.tensors(),
        DType::F32,
        DType::F32,
    )
    .unwrap();
    let mut other = load(&m.gguf);
    other.config.special.eos = Some(7);
    let err = check_pair(&f.target, &other).unwrap_err().to_string();
    assert!(err.contains("EOS"), "{err}");
}

/// The GPU verifier (Lavapipe in CI) with a CPU drafter: speculation gives the GPU target's own
/// greedy tokens.
#[test]
fn greedy_speculation_is_lossless_on_the_gpu_target() {
    let f = family(DType::Q8_0);
    let opts = GenerateOptions {
        max_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let modes = [
        SpecOptions::default(),
        SpecOptions {
            max_nodes: Some(16),
            branch_threshold: 0.05,
            fallback: FallbackPolicy::Fixed(0.0),
            ..SpecOptions::default()
        },
        SpecOptions {
            mode: SpecMode::Chain { k: 4 },
            ..SpecOptions::default()
        },
    ];
    let mut accepted = 0;
    for prompt in &prompts()[..2] {
        let Some(mut t) = gpu_target(&f.target, 256) else {
            return;
        };
        let want = generate(&mut t, prompt, &[], &opts, &mut |_| true)
            .unwrap()
            .tokens;
        for d in &f.drafters[1..3] {
            for spec in &modes {
                let mut t = gpu_target(&f.target, 256).unwrap();
                let mut dr = cpu(d, Precision::default(), 1);
                let out =
                    generate_speculative(&mut t, &mut dr, prompt, &[], &opts, spec, &mut |_| true)
                        .unwrap();
                assert_eq!(out.generation.tokens, want, "{spec:?}");
                accepted += out.spec.accepted_tokens;
            }
        }
    }
    assert!(accepted > 0);
}
