//! `llmcad bench`: CPU prompt/decode speed per thread count and, with a drafter, every
//! speculative mode side by side over a fixed prompt set. Prints tables and writes JSON.

use super::{ModelArgs, RunArgs};
use anyhow::Context;
use clap::Args;
use llmcad::backend::Backend;
use llmcad::cpu::{CpuBackend, CpuOptions};
use llmcad::generate::{generate, prefill, GenerateOptions};
use llmcad::model::{LoadOptions, Model};
use llmcad::spec::{check_pair, generate_speculative, FallbackPolicy, SpecMode, SpecOptions};
use llmcad::tokenizer::ChatMessage;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The fixed prompt set (twenty varied chat requests), shared with the tests.
const PROMPTS: &str = include_str!("../../benches/prompts.txt");

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Drafter: adds the speculative decoding table.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Thread counts for the CPU table.
    #[arg(long = "thread-counts", value_delimiter = ',', default_value = "1,2")]
    thread_counts: Vec<usize>,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 64)]
    n_prompt: usize,
    /// Generated tokens per measurement.
    #[arg(short = 'n', long, default_value_t = 64)]
    n_gen: usize,
    /// How many prompts of the set the speculation table runs.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench.json")]
    json_out: PathBuf,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let model = a.model.load()?;
    let mut report = json!({
        "model": model.name,
        "machine": machine(),
        "precision": format!("{:?}", a.run.precision()),
    });
    report["cpu"] = cpu_table(&a, &model)?;
    if let Some(d) = &a.draft {
        let drafter = Model::load(d, &LoadOptions::default())?;
        check_pair(&model, &drafter)?;
        report["drafter"] = json!(drafter.name);
        report["speculation"] = spec_table(&a, &model, &drafter)?;
    }
    std::fs::write(&a.json_out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.json_out.display()))?;
    eprintln!("results written to {}", a.json_out.display());
    Ok(())
}

fn cpu_backend(a: &BenchArgs, m: &Model, threads: usize) -> CpuBackend {
    CpuBackend::new(
        m.config.clone(),
        m.weights.clone(),
        &CpuOptions {
            threads,
            precision: a.run.precision(),
            context: a.run.ctx_size.unwrap_or(m.config.max_context),
        },
    )
}

/// Prefill and decode speed for each thread count (best of three prefills).
fn cpu_table(a: &BenchArgs, m: &Model) -> anyhow::Result<serde_json::Value> {
    let mut prompt = m.tokenizer.encode(PROMPTS)?;
    prompt.truncate(a.n_prompt.max(1));
    println!("\n{} on the CPU ({:?})", m.name, a.run.precision());
    println!(
        "| threads | prompt tokens/s (pp{}) | decode tokens/s (tg{}) |",
        prompt.len(),
        a.n_gen
    );
    println!("|---|---|---|");
    let mut rows = Vec::new();
    for &t in &a.thread_counts {
        let mut b = cpu_backend(a, m, t);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            b.kv_truncate(0);
            let t0 = Instant::now();
            prefill(&mut b, &prompt, prompt.len(), Some(1))?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let pp = prompt.len() as f64 / best;
        b.kv_truncate(0);
        let opts = GenerateOptions {
            max_tokens: a.n_gen,
            ignore_eos: true,
            ..Default::default()
        };
        let g = generate(&mut b, &prompt, &[], &opts, &mut |_| true)?;
        let tg = g.stats.tokens_per_s();
        println!("| {t} | {pp:.1} | {tg:.1} |");
        rows.push(json!({"threads": t, "prompt_tokens_per_s": pp, "decode_tokens_per_s": tg}));
    }
    Ok(json!(rows))
}

/// The modes the speculation table compares.
fn spec_modes() -> Vec<(String, Option<SpecOptions>)> {
    let mut modes = vec![("none".to_string(), None)];
    for k in [2, 3, 4, 6, 8] {
        let o = SpecOptions {
            mode: SpecMode::Chain { k },
            ..SpecOptions::default()
        };
        modes.push((format!("chain k={k}"), Some(o)));
    }
    let tree = |nodes, fallback| SpecOptions {
        max_nodes: nodes,
        fallback,
        ..SpecOptions::default()
    };
    modes.push((
        "tree adaptive, cost-sized".into(),
        Some(tree(None, FallbackPolicy::Adaptive)),
    ));
    modes.push((
        "tree adaptive, 32 nodes".into(),
        Some(tree(Some(32), FallbackPolicy::Adaptive)),
    ));
    for x in [0.01, 0.05, 0.2] {
        modes.push((
            format!("tree fixed:{x}, 32 nodes"),
            Some(tree(Some(32), FallbackPolicy::Fixed(x))),
        ));
    }
    modes
}

fn spec_table(a: &BenchArgs, target: &Model, drafter: &Model) -> anyhow::Result<serde_json::Value> {
    let template = target
        .chat_template
        .as_ref()
        .context("the speculation table renders chat prompts: the target needs a chat template")?;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .lines()
        .take(a.prompts)
        .map(|p| {
            let text = template.render(&[ChatMessage::new("user", p)], true)?;
            target.encode_prompt(&text)
        })
        .collect::<Result<_, _>>()?;
    let threads = a.run.threads.unwrap_or_else(llmcad::cpu::default_threads);
    let opts = GenerateOptions {
        max_tokens: a.n_gen,
        ignore_eos: true,
        ..Default::default()
    };
    println!(
        "\nspeculative decoding, {} prompts × {} tokens, target on the CPU ({threads} threads), drafter {}",
        prompts.len(),
        a.n_gen,
        drafter.name
    );
    println!("| mode | tokens/s | speed-up | tokens per target pass | tree nodes per pass | identical to none |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, Vec<Vec<u32>>)> = None;
    for (name, spec) in spec_modes() {
        let (mut tokens, mut secs, mut passes, mut emitted, mut nodes) = (0, 0.0, 0, 0, 0);
        let mut outputs = Vec::new();
        for p in &prompts {
            let mut t = cpu_backend(a, target, threads);
            let g = match &spec {
                None => generate(&mut t, p, &[], &opts, &mut |_| true)?,
                Some(s) => {
                    let mut d = cpu_backend(a, drafter, threads);
                    let r = generate_speculative(&mut t, &mut d, p, &[], &opts, s, &mut |_| true)?;
                    emitted += r.spec.emitted_tokens;
                    nodes += r.spec.tree_nodes;
                    r.generation
                }
            };
            tokens += g.tokens.len().saturating_sub(1);
            secs += g.stats.decode_time.as_secs_f64();
            passes += g.stats.target_passes;
            outputs.push(g.tokens);
        }
        let tps = tokens as f64 / secs;
        let (per_pass, per_tree) = if spec.is_some() {
            (emitted as f64 / passes as f64, nodes as f64 / passes as f64)
        } else {
            (1.0, 1.0)
        };
        let base = baseline.get_or_insert_with(|| (tps, outputs.clone()));
        let same = base.1 == outputs;
        println!(
            "| {name} | {tps:.1} | {:.2}x | {per_pass:.2} | {per_tree:.1} | {} |",
            tps / base.0,
            if same { "yes" } else { "NO" }
        );
        rows.push(json!({
            "mode": name, "tokens_per_s": tps, "speedup": tps / base.0,
            "tokens_per_pass": per_pass, "tree_nodes_per_pass": per_tree, "identical": same,
        }));
    }
    Ok(json!(rows))
}

/// The CPU model name, for the record.
fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
        + &format!(", {} threads available", llmcad::cpu::default_threads())
}
