//! `llmcad bench`: CPU prompt/decode speed per thread count and, with a drafter, every
//! speculative mode side by side over a fixed prompt set. With `--device gpu`: the verifier's
//! pass cost against its roofline (measured copy bandwidth and FMA rate), under an optional
//! weight budget with streaming, and with a drafter the LLMCad comparison (target-only,
//! chain speculation, LLMCad) plus tokens/s against the memory budget as an SVG plot.
//! Prints tables and writes JSON.

use super::{ModelArgs, RunArgs};
use anyhow::Context;
use clap::Args;
use llmcad::backend::Backend;
use llmcad::cpu::{CpuBackend, CpuOptions, Precision};
use llmcad::generate::{generate, prefill, GenerateOptions};
use llmcad::model::{LoadOptions, Model};
use llmcad::spec::cost::CostCurve;
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
    /// Where the target runs: cpu, or gpu (the wgpu verifier; CPU tables are skipped).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    device: String,
    /// GPU weight budget: bytes ("64MiB", "1.5GB") or a share of the weights ("25%"); the
    /// rest streams from the model file for every pass. Default: everything resident.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Emulated storage bandwidth for streamed weights ("500MB/s"): emulation by sleeping,
    /// not this machine's disk.
    #[arg(long)]
    io_bandwidth: Option<String>,
    /// How streamed weights are uploaded: mapped (staging ring) or write-buffer.
    #[arg(long, default_value = "mapped")]
    upload: String,
    /// Weight budgets (percent of the weights) for the GPU tokens/s-vs-budget sweep and plot
    /// (with --draft; the flag without a value skips it).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "10,25,50,100")]
    budget_sweep: Vec<f64>,
    /// Most tree nodes for the LLMCad mode on the GPU (fixed, so that the cost curve is not
    /// measured per run: 16 passes are expensive on a software GPU).
    #[arg(long, default_value_t = 32)]
    gpu_tree_nodes: usize,
    /// Tree sizes of the GPU pass table (the flag without a value skips it).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,2,4,8,9,16,32,64")]
    gpu_sizes: Vec<usize>,
    /// Repeats per size in the GPU pass table.
    #[arg(long, default_value_t = 1)]
    gpu_reps: usize,
    /// Tree sizes whose passes are profiled kernel by kernel (GPU timestamps; each dispatch
    /// timed on its own).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    gpu_profile: Vec<usize>,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let model = a.model.load()?;
    let mut report = json!({
        "model": model.name,
        "machine": machine(),
        "precision": format!("{:?}", a.run.precision()),
    });
    if a.device == "gpu" {
        let drafter = match &a.draft {
            Some(d) => {
                let drafter = Model::load(d, &LoadOptions::default())?;
                check_pair(&model, &drafter)?;
                report["drafter"] = json!(drafter.name);
                Some(drafter)
            }
            None => None,
        };
        report["gpu"] = gpu_bench::run(&a, &model, drafter.as_ref())?;
        std::fs::write(&a.json_out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", a.json_out.display()))?;
        eprintln!("results written to {}", a.json_out.display());
        return Ok(());
    }
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

fn cpu_backend(a: &BenchArgs, m: &Model, threads: usize) -> llmcad::Result<CpuBackend> {
    cpu_backend_with(a, m, threads, a.run.precision())
}

/// The drafter's backend, with the drafter's precision.
fn draft_backend(a: &BenchArgs, m: &Model, threads: usize) -> llmcad::Result<CpuBackend> {
    cpu_backend_with(a, m, threads, a.run.draft_activations)
}

fn cpu_backend_with(
    a: &BenchArgs,
    m: &Model,
    threads: usize,
    precision: Precision,
) -> llmcad::Result<CpuBackend> {
    CpuBackend::new(
        m.config.clone(),
        m.weights.clone(),
        &CpuOptions {
            threads,
            precision,
            context: a.run.ctx_size.unwrap_or(m.config.max_context),
        },
    )
}

/// The best of three reads of `buf` by `threads` threads (GB/s): the ceiling for a pass that
/// streams the model's weights once, as a one-token decode does.
fn read_bandwidth(buf: &mut [u8], threads: usize) -> f64 {
    let per = buf.len().div_ceil(threads).next_multiple_of(64);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(per) {
                s.spawn(move || {
                    // eight independent sums, so the loads and not the adds set the pace
                    let mut acc = [0u64; 8];
                    for c in part.chunks_exact(64) {
                        for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
                            *a = a.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
                        }
                    }
                    std::hint::black_box(acc);
                });
            }
        });
        best = best.min(t0.elapsed().as_secs_f64());
    }
    buf.len() as f64 / best / 1e9
}

/// Prefill and decode speed for each thread count (best of three prefills).
fn cpu_table(a: &BenchArgs, m: &Model) -> anyhow::Result<serde_json::Value> {
    let mut prompt = m.tokenizer.encode(PROMPTS)?;
    prompt.truncate(a.n_prompt.max(1));
    let kernels = llmcad::quant::Simd::active().name();
    outln!(
        "\n{} on the CPU ({:?}, {kernels} kernels)",
        m.name,
        a.run.precision()
    )?;
    outln!(
        "| threads | read ceiling GB/s | prompt tokens/s (pp{}) | decode tokens/s (tg{}) | decode weights GB/s | {} |",
        prompt.len(),
        a.n_gen,
        TREE_SIZES.map(|n| format!("pass T={n} ms")).join(" | ")
    )?;
    outln!("|---|---|---|---|---|{}", "---|".repeat(TREE_SIZES.len()))?;
    let weight_bytes = m.weights.byte_count();
    let mut buffer = vec![1u8; weight_bytes];
    let mut rows = Vec::new();
    for &t in &a.thread_counts {
        let mut b = cpu_backend(a, m, t)?;
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
        // the verifier's price for a tree: one pass over T nodes after the prompt
        b.kv_truncate(0);
        prefill(&mut b, &prompt, prompt.len(), Some(1))?;
        let curve = CostCurve::measure_up_to(&mut b, &TREE_SIZES, 3, f64::INFINITY)?;
        let ceiling = read_bandwidth(&mut buffer, t);
        let decode_gbs = weight_bytes as f64 * tg / 1e9;
        outln!(
            "| {t} | {ceiling:.1} | {pp:.1} | {tg:.1} | {decode_gbs:.1} ({:.0}%) | {} |",
            100.0 * decode_gbs / ceiling,
            tree_cells(&curve)
        )?;
        rows.push(
            json!({"threads": t, "kernels": kernels, "read_ceiling_gb_per_s": ceiling,
            "prompt_tokens_per_s": pp, "decode_tokens_per_s": tg,
            "decode_weights_gb_per_s": decode_gbs, "tree_pass_ms": curve.points}),
        );
    }
    Ok(json!(rows))
}

/// Tree sizes of the CPU table's pass-cost columns.
const TREE_SIZES: [usize; 5] = [1, 2, 4, 8, 16];

/// "ms (× the one-node pass)" per tree size.
fn tree_cells(curve: &CostCurve) -> String {
    let one = curve.ms(1);
    curve
        .points
        .iter()
        .map(|&(_, ms)| format!("{ms:.1} ({:.2}×)", ms / one))
        .collect::<Vec<_>>()
        .join(" | ")
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
        .require_chat_template()
        .context("the speculation table renders chat prompts")?;
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
    outln!(
        "\nspeculative decoding, {} prompts × {} tokens, target on the CPU ({threads} threads), drafter {}",
        prompts.len(),
        a.n_gen,
        drafter.name
    )?;
    outln!("| mode | tokens/s | speed-up | tokens per target pass | tree nodes per pass | identical to none |")?;
    outln!("|---|---|---|---|---|---|")?;
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, Vec<Vec<u32>>)> = None;
    for (name, mut spec) in spec_modes() {
        let (mut tokens, mut secs, mut passes, mut emitted, mut nodes) = (0, 0.0, 0, 0, 0);
        let mut outputs = Vec::new();
        for p in &prompts {
            let mut t = cpu_backend(a, target, threads)?;
            let g = match &mut spec {
                None => generate(&mut t, p, &[], &opts, &mut |_| true)?,
                Some(s) => {
                    let mut d = draft_backend(a, drafter, threads)?;
                    let r = generate_speculative(&mut t, &mut d, p, &[], &opts, s, &mut |_| true)?;
                    // like an engine, carry what was learned of the verifier's pass times
                    if let Some(times) = &r.spec.pass_times {
                        s.pass_times = times.clone();
                    }
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
        outln!(
            "| {name} | {tps:.1} | {:.2}x | {per_pass:.2} | {per_tree:.1} | {} |",
            tps / base.0,
            if same { "yes" } else { "NO" }
        )?;
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

/// The GPU sections: the pass table against the roofline and the LLMCad comparison.
mod gpu_bench {
    use super::{draft_backend, BenchArgs, PROMPTS};
    use anyhow::Context;
    use llmcad::backend::Backend;
    use llmcad::generate::{generate, GenerateOptions};
    use llmcad::gpu::{parse_rate, parse_size, roofline, GpuBackend, GpuOptions, StreamStats};
    use llmcad::model::Model;
    use llmcad::spec::{generate_speculative, FallbackPolicy, SpecMode, SpecOptions};
    use llmcad::tokenizer::ChatMessage;
    use serde_json::{json, Value};
    use std::path::Path;
    use std::time::Duration;

    struct Setup {
        full_bytes: u64,
        budget: Option<u64>,
        io: Option<f64>,
    }

    fn options(
        a: &BenchArgs,
        m: &Model,
        budget: Option<u64>,
        io: Option<f64>,
    ) -> anyhow::Result<GpuOptions> {
        Ok(GpuOptions {
            context: a.run.ctx_size.unwrap_or(m.config.max_context).min(1024),
            weight_budget: budget,
            io_bandwidth: io,
            upload: a.upload.parse()?,
            ..GpuOptions::for_model(&m.config)
        })
    }

    fn backend(
        a: &BenchArgs,
        m: &Model,
        budget: Option<u64>,
        io: Option<f64>,
    ) -> anyhow::Result<GpuBackend> {
        Ok(GpuBackend::new(
            m.config.clone(),
            m.weights.clone(),
            &options(a, m, budget, io)?,
        )?)
    }

    /// 2·N·(parameters of every matrix a pass multiplies) plus attention over `ctx` entries.
    fn pass_flops(m: &Model, n: usize, ctx: usize) -> f64 {
        let w = &m.weights;
        let mut params = (w.head.rows * w.head.cols) as f64;
        for l in &w.layers {
            params += l
                .matrices()
                .iter()
                .map(|m| (m.rows * m.cols) as f64)
                .sum::<f64>();
        }
        let c = &m.config;
        let attn = 4.0 * (ctx + n) as f64 * c.q_dim() as f64 * c.n_layers as f64;
        n as f64 * (2.0 * params + attn)
    }

    pub fn run(a: &BenchArgs, m: &Model, drafter: Option<&Model>) -> anyhow::Result<Value> {
        // the unconstrained backend tells the weights' GPU size (for "25%") and the ceilings
        let full = backend(a, m, None, None)?;
        let full_bytes = full.weight_plan().full_budget;
        let setup = Setup {
            full_bytes,
            budget: a
                .memory_budget
                .as_deref()
                .map(|s| parse_size(s, full_bytes))
                .transpose()?,
            io: a.io_bandwidth.as_deref().map(parse_rate).transpose()?,
        };
        outln!("\n{} on {}", m.name, full.device_name())?;
        // buffers the size of the weights, so that a large GPU's cache (an H200's 60 MB L2)
        // does not hold them, within 64..256 MiB: a phone holds the weights beside them
        let ceiling_bytes = (full_bytes as usize).clamp(64 << 20, 256 << 20);
        let read_bw = roofline::read_bandwidth(full.gpu(), ceiling_bytes, 3)?;
        let copy_bw = roofline::copy_bandwidth(full.gpu(), ceiling_bytes, 3)?;
        let fma = roofline::fma_rate(full.gpu(), 3)?;
        outln!(
            "ceilings: streaming read {:.2} GB/s, buffer copy {:.2} GB/s (bytes copied), \
             FMA {:.1} GFLOP/s (measured here)",
            read_bw / 1e9,
            copy_bw / 1e9,
            fma / 1e9
        )?;
        drop(full);
        let mut out = json!({
            "device": "gpu",
            "weights_gpu_bytes": full_bytes,
            "read_bandwidth_bytes_per_s": read_bw,
            "copy_bandwidth_bytes_per_s": copy_bw,
            "fma_flops_per_s": fma,
            "memory_budget_bytes": setup.budget,
            "io_bandwidth_bytes_per_s": setup.io,
            "io_bandwidth_is_emulated": setup.io.is_some(),
            "upload": a.upload,
        });
        out["passes"] = pass_table(a, m, &setup, read_bw, fma)?;
        if let Some(d) = drafter {
            out["llmcad"] = llmcad_table(a, m, d, &setup)?;
            if !a.budget_sweep.is_empty() {
                out["budget_sweep"] = sweep(a, m, d, &setup)?;
            }
        }
        Ok(out)
    }

    /// Issue 3: decode speed and the cost of one pass per tree size against the roofline.
    fn pass_table(
        a: &BenchArgs,
        m: &Model,
        s: &Setup,
        read_bw: f64,
        fma: f64,
    ) -> anyhow::Result<Value> {
        let mut g = backend(a, m, s.budget, s.io)?;
        let plan = g.weight_plan().clone();
        outln!(
            "weights {:.1} MiB on the GPU layout; budget {}; allocated {:.1} MiB; {} of {} layers \
             resident, head {}; {:.1} MiB streamed per pass{}",
            s.full_bytes as f64 / 1048576.0,
            s.budget.map_or("none".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / 1048576.0
            )),
            g.allocated_weight_bytes() as f64 / 1048576.0,
            plan.resident_layers.iter().filter(|r| **r).count(),
            plan.resident_layers.len(),
            if plan.head_resident {
                "resident"
            } else {
                "streamed"
            },
            plan.streamed_bytes_per_pass as f64 / 1048576.0,
            s.io.map_or(String::new(), |r| format!(
                ", emulated IO {:.0} MB/s",
                r / 1e6
            )),
        )?;
        let prompt: Vec<u32> = m.tokenizer.encode(PROMPTS)?.into_iter().take(16).collect();
        let opts = GenerateOptions {
            max_tokens: a.n_gen,
            ignore_eos: true,
            ..Default::default()
        };
        g.reset_stream_stats();
        let gen = generate(&mut g, &prompt, &[], &opts, &mut |_| true)?;
        let decode = gen.generation_tps();
        let st = g.stream_stats();
        outln!(
            "decode: {decode:.2} tokens/s (tg{}), {}",
            a.n_gen,
            st.to_json()
        )?;
        outln!("| N | pass ms | weight GB/s | GFLOP/s | roofline ms | of roofline | IO ms | compute ms | overlap |")?;
        outln!("|---|---|---|---|---|---|---|---|---|")?;
        g.kv_truncate(0);
        let prefix = 32;
        let mut rows = Vec::new();
        for &n in &a.gpu_sizes {
            if prefix + n > g.kv_capacity() {
                break;
            }
            let before = g.stream_stats();
            let (_, t) = g.pass_cost_curve(&[n], prefix, a.gpu_reps)?[0];
            let st = g.stream_stats().since(&before);
            let secs = t.as_secs_f64();
            let flops = pass_flops(m, n, prefix);
            let mut roof = (s.full_bytes as f64 / read_bw).max(flops / fma);
            if let Some(io) = s.io {
                roof = roof.max(g.weight_plan().streamed_bytes_per_pass as f64 / io);
            }
            let ms = |d: Duration| st.per_pass(d).as_secs_f64() * 1e3;
            outln!(
                "| {n} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.1} | {:.1} | {:.2} |",
                secs * 1e3,
                s.full_bytes as f64 / secs / 1e9,
                flops / secs / 1e9,
                roof * 1e3,
                roof / secs * 100.0,
                ms(st.io_time),
                ms(st.compute_time),
                st.overlap_ratio()
            )?;
            rows.push(json!({
                "nodes": n, "pass_ms": secs * 1e3,
                "weight_bytes_per_s": s.full_bytes as f64 / secs,
                "flops_per_s": flops / secs, "roofline_ms": roof * 1e3,
                "stream": st.to_json(),
            }));
        }
        let profiles = profile_table(a, &mut g, prefix)?;
        Ok(
            json!({"decode_tokens_per_s": decode, "decode_stream": st.to_json(), "sizes": rows,
            "profiles": profiles,
            "plan": {"resident_layers": plan.resident_layers.iter().filter(|r| **r).count(),
                     "layers": plan.resident_layers.len(), "head_resident": plan.head_resident,
                     "streamed_bytes_per_pass": plan.streamed_bytes_per_pass,
                     "allocated_weight_bytes": g.allocated_weight_bytes(),
                     "peak_weight_bytes": g.peak_weight_bytes()}}),
        )
    }

    /// Where a pass's GPU time goes, kernel by kernel, for each size of `--gpu-profile`.
    fn profile_table(a: &BenchArgs, g: &mut GpuBackend, prefix: usize) -> anyhow::Result<Value> {
        let mut out = Vec::new();
        for &n in &a.gpu_profile {
            if prefix + n > g.kv_capacity() {
                break;
            }
            if !g.set_profiling(true) {
                outln!("(no GPU timestamps here: no kernel profile)")?;
                break;
            }
            let before = g.stream_stats().passes;
            g.pass_cost_curve(&[n], prefix, a.gpu_reps)?;
            let passes = (g.stream_stats().passes - before).max(1) as f64;
            let kernels = g.take_profile();
            g.set_profiling(false);
            let total: f64 = kernels.iter().map(|k| k.time.as_secs_f64()).sum::<f64>() / passes;
            outln!(
                "\nkernels of a pass over {n} nodes (each dispatch timed alone): {:.2} ms",
                total * 1e3
            )?;
            outln!("| kernel | dispatches | ms | share |")?;
            outln!("|---|---|---|---|")?;
            let mut rows = Vec::new();
            for k in &kernels {
                let ms = k.time.as_secs_f64() / passes * 1e3;
                let per = k.dispatches as f64 / passes;
                outln!(
                    "| {} | {per:.0} | {ms:.3} | {:.0}% |",
                    k.kernel,
                    ms / 1e3 / total * 100.0
                )?;
                rows.push(json!({"kernel": k.kernel, "dispatches": per, "ms": ms}));
            }
            out.push(json!({"nodes": n, "ms": total * 1e3, "kernels": rows}));
        }
        Ok(json!(out))
    }

    trait Tps {
        fn generation_tps(&self) -> f64;
    }
    impl Tps for llmcad::generate::Generation {
        fn generation_tps(&self) -> f64 {
            self.stats.tokens_per_s()
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        TargetOnly,
        Chain,
        Llmcad,
    }

    impl Mode {
        const ALL: [Mode; 3] = [Mode::TargetOnly, Mode::Chain, Mode::Llmcad];
        fn name(self) -> &'static str {
            match self {
                Mode::TargetOnly => "target only",
                Mode::Chain => "chain k=4 (no overlap)",
                Mode::Llmcad => "llmcad (tree, adaptive, overlap)",
            }
        }
    }

    struct ModeResult {
        tps: f64,
        tokens: usize,
        passes: usize,
        emitted: usize,
        draft: Duration,
        decode: Duration,
        stream: StreamStats,
        outputs: Vec<Vec<u32>>,
    }

    fn prompts(a: &BenchArgs, m: &Model) -> anyhow::Result<Vec<Vec<u32>>> {
        let template = m
            .require_chat_template()
            .context("the LLMCad table renders chat prompts")?;
        Ok(PROMPTS
            .lines()
            .take(a.prompts.max(1))
            .map(|p| {
                let text = template.render(&[ChatMessage::new("user", p)], true)?;
                m.encode_prompt(&text)
            })
            .collect::<Result<_, _>>()?)
    }

    fn run_mode(
        a: &BenchArgs,
        target: &Model,
        drafter: &Model,
        mode: Mode,
        budget: Option<u64>,
        io: Option<f64>,
        prompts: &[Vec<u32>],
    ) -> anyhow::Result<ModeResult> {
        let threads = a.run.threads.unwrap_or_else(llmcad::cpu::default_threads);
        let opts = GenerateOptions {
            max_tokens: a.n_gen,
            ignore_eos: true,
            ..Default::default()
        };
        let mut g = backend(a, target, budget, io)?;
        let mut r = ModeResult {
            tps: 0.0,
            tokens: 0,
            passes: 0,
            emitted: 0,
            draft: Duration::ZERO,
            decode: Duration::ZERO,
            stream: StreamStats::default(),
            outputs: vec![],
        };
        for p in prompts {
            g.kv_truncate(0);
            let gen = match mode {
                Mode::TargetOnly => generate(&mut g, p, &[], &opts, &mut |_| true)?,
                _ => {
                    let spec = if mode == Mode::Chain {
                        SpecOptions {
                            mode: SpecMode::Chain { k: 4 },
                            overlap: llmcad::spec::Overlap::Off,
                            ..SpecOptions::default()
                        }
                    } else {
                        SpecOptions {
                            max_nodes: Some(a.gpu_tree_nodes),
                            fallback: FallbackPolicy::Adaptive,
                            overlap: llmcad::spec::Overlap::On,
                            ..SpecOptions::default()
                        }
                    };
                    let mut d = draft_backend(a, drafter, threads)?;
                    let s =
                        generate_speculative(&mut g, &mut d, p, &[], &opts, &spec, &mut |_| true)?;
                    r.emitted += s.spec.emitted_tokens;
                    r.draft += s.spec.draft_time;
                    s.generation
                }
            };
            r.tokens += gen.tokens.len().saturating_sub(1);
            r.decode += gen.stats.decode_time;
            r.passes += gen.stats.target_passes;
            if mode == Mode::TargetOnly {
                r.emitted += gen.stats.target_passes;
            }
            r.outputs.push(gen.tokens);
        }
        r.stream = g.stream_stats();
        r.tps = r.tokens as f64 / r.decode.as_secs_f64().max(1e-9);
        Ok(r)
    }

    /// Issue 5: target-only, chain speculation and LLMCad side by side under the budget.
    fn llmcad_table(a: &BenchArgs, t: &Model, d: &Model, s: &Setup) -> anyhow::Result<Value> {
        let prompts = prompts(a, t)?;
        outln!(
            "\nLLMCad on the GPU: {} prompts × {} tokens, budget {}, IO {}, drafter {} on the CPU",
            prompts.len(),
            a.n_gen,
            s.budget.map_or("none".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / 1048576.0
            )),
            s.io.map_or("unthrottled".into(), |r| format!(
                "{:.0} MB/s (emulated)",
                r / 1e6
            )),
            d.name
        )?;
        outln!("| mode | tokens/s | speed-up | tokens per pass | IO ms/pass | compute ms/pass | drafting ms/pass | overlap | identical |")?;
        outln!("|---|---|---|---|---|---|---|---|---|")?;
        let mut rows = Vec::new();
        let mut base: Option<(f64, Vec<Vec<u32>>)> = None;
        for mode in Mode::ALL {
            let r = run_mode(a, t, d, mode, s.budget, s.io, &prompts)?;
            let b = base.get_or_insert_with(|| (r.tps, r.outputs.clone()));
            let same = b.1 == r.outputs;
            let per_pass = r.emitted as f64 / r.passes.max(1) as f64;
            let st = &r.stream;
            let ms = |d: Duration| st.per_pass(d).as_secs_f64() * 1e3;
            let draft_ms = r.draft.as_secs_f64() * 1e3 / r.passes.max(1) as f64;
            outln!(
                "| {} | {:.2} | {:.2}x | {per_pass:.2} | {:.1} | {:.1} | {draft_ms:.1} | {:.2} | {} |",
                mode.name(),
                r.tps,
                r.tps / b.0,
                ms(st.io_time),
                ms(st.compute_time),
                st.overlap_ratio(),
                if same { "yes" } else { "NO" }
            )?;
            rows.push(json!({
                "mode": mode.name(), "tokens_per_s": r.tps, "speedup": r.tps / b.0,
                "tokens_per_pass": per_pass, "target_passes": r.passes,
                "drafting_ms_per_pass": draft_ms, "decode_s": r.decode.as_secs_f64(),
                "stream": st.to_json(), "identical": same,
            }));
        }
        Ok(json!(rows))
    }

    /// Tokens/s of the three modes against the weight budget; writes an SVG beside the JSON.
    fn sweep(a: &BenchArgs, t: &Model, d: &Model, s: &Setup) -> anyhow::Result<Value> {
        let prompts = prompts(a, t)?;
        let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 3];
        let mut rows = Vec::new();
        outln!(
            "\ntokens/s against the weight budget (% of {:.1} MiB)",
            s.full_bytes as f64 / 1048576.0
        )?;
        outln!("| budget | target only | chain | llmcad |")?;
        outln!("|---|---|---|---|")?;
        for &pct in &a.budget_sweep {
            let budget = (pct < 100.0).then(|| (s.full_bytes as f64 * pct / 100.0) as u64);
            let mut tps = Vec::new();
            for (i, mode) in Mode::ALL.into_iter().enumerate() {
                let r = run_mode(a, t, d, mode, budget, s.io, &prompts)?;
                series[i].push((pct, r.tps));
                tps.push(r.tps);
            }
            outln!("| {pct}% | {:.2} | {:.2} | {:.2} |", tps[0], tps[1], tps[2])?;
            rows.push(json!({"budget_percent": pct, "budget_bytes": budget,
                "target_only": tps[0], "chain": tps[1], "llmcad": tps[2]}));
        }
        let svg = a.json_out.with_extension("svg");
        plot(&svg, &series, s.io)?;
        outln!("plot written to {}", svg.display())?;
        Ok(json!({"points": rows, "plot": svg.display().to_string()}))
    }

    fn plot(path: &Path, series: &[Vec<(f64, f64)>], io: Option<f64>) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let ymax = series
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.15;
        let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let caption = match io {
            Some(r) => format!(
                "tokens/s vs GPU weight budget (emulated IO {:.0} MB/s)",
                r / 1e6
            ),
            None => "tokens/s vs GPU weight budget".to_string(),
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..105f64, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("weight budget (% of the weights)")
            .y_desc("tokens/s")
            .draw()?;
        let colors = [RED, BLUE, GREEN];
        for (i, (pts, mode)) in series.iter().zip(Mode::ALL).enumerate() {
            let c = colors[i];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(mode.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
