//! `llmcad generate`: stream a continuation of a prompt.

use super::{ModelArgs, RunArgs, SpecArgs};
use anyhow::{bail, Context};
use clap::Args;
use llmcad::cpu::{default_threads, CpuBackend, CpuOptions};
use llmcad::generate::{generate, GenerateOptions};
use llmcad::model::Model;
use llmcad::sampling::SamplingParams;
use llmcad::spec::{generate_speculative, SpecStats};
use llmcad::tokenizer::ChatMessage;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Prompt text (special tokens such as <|im_start|> are recognised).
    #[arg(short = 'p', long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(short = 's', long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Device for the model: cpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    spec: SpecArgs,
    /// Print one JSON object (ids, text, stats) instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    if a.device != "cpu" {
        bail!(
            "--device {}: this build runs models on the CPU only (--device cpu)",
            a.device
        );
    }
    let prompt_text = match (&a.prompt, &a.file) {
        (Some(p), None) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        _ => bail!("give a prompt with -p TEXT or -f FILE"),
    };
    let model = a.model.load()?;
    let text = if a.chat {
        chat_prompt(&model, &prompt_text)?
    } else {
        prompt_text
    };
    let prompt = model.encode_prompt(&text)?;

    let opts = CpuOptions {
        threads: a.run.threads.unwrap_or_else(default_threads),
        precision: a.run.precision(),
        context: a.run.ctx_size.unwrap_or(model.config.max_context),
    };
    let mut backend = CpuBackend::new(model.config.clone(), model.weights.clone(), &opts);
    let drafter = a.spec.load_drafter(&model)?;
    let gen_opts = GenerateOptions {
        max_tokens: a.n_predict,
        sampling: SamplingParams {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: a.repeat_last_n,
            seed: a.seed,
        },
        ignore_eos: a.ignore_eos,
        ..Default::default()
    };

    let mut stream = model.tokenizer.stream_skip_special();
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let mut on_token = |id| {
        if a.json {
            return true;
        }
        match stream.push(id) {
            Ok(Some(piece)) => {
                if let Err(e) = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    write_err = Some(e);
                    return false;
                }
                true
            }
            Ok(None) | Err(_) => true,
        }
    };
    let stop_ids = &model.config.special.stop;
    let (out, spec_stats) = match &drafter {
        None => (
            generate(&mut backend, &prompt, stop_ids, &gen_opts, &mut on_token)?,
            None,
        ),
        Some((d, spec)) => {
            let mut draft_backend = CpuBackend::new(
                d.config.clone(),
                d.weights.clone(),
                &CpuOptions {
                    threads: a.spec.draft_threads.unwrap_or(opts.threads),
                    ..opts.clone()
                },
            );
            let r = generate_speculative(
                &mut backend,
                &mut draft_backend,
                &prompt,
                stop_ids,
                &gen_opts,
                spec,
                &mut on_token,
            )?;
            (r.generation, Some(r.spec))
        }
    };
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    let s = &out.stats;
    if a.json {
        let json = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": out.tokens,
            "text": model.tokenizer.decode(text_tokens(&out.tokens, stop_ids))?,
            "stop": out.stop.as_str(),
            "stats": {
                "prompt_ms": s.prompt_ms(),
                "decode_ms": s.decode_ms(),
                "tokens_per_s": s.tokens_per_s(),
                "prompt_tokens_per_s": s.prompt_tokens_per_s(),
                "device": backend_name(&backend),
            }
        });
        let mut json = json;
        if let Some(sp) = &spec_stats {
            spec_json(&mut json["stats"], sp, s.target_passes, s.decode_ms());
        }
        writeln!(stdout, "{json}")?;
    } else {
        if let Some(rest) = stream.finish()? {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
        stdout.flush()?;
        eprintln!(
            "prompt: {} tokens in {:.1} ms ({:.1} tokens/s); generated {} tokens in {:.1} ms ({:.1} tokens/s); stop: {}",
            s.prompt_tokens,
            s.prompt_ms(),
            s.prompt_tokens_per_s(),
            s.generated_tokens,
            s.decode_ms(),
            s.tokens_per_s(),
            out.stop.as_str()
        );
        if let Some(sp) = &spec_stats {
            eprintln!(
                "speculation: {} target passes, {:.2} tokens per pass, {} of {} drafted tokens accepted, {:.1} nodes per tree, threshold {:.4} (mean {:.4})",
                s.target_passes,
                sp.mean_accepted_per_pass(s.target_passes),
                sp.accepted_tokens,
                sp.draft_tokens,
                sp.mean_tree_nodes(s.target_passes),
                sp.threshold.last,
                sp.threshold.mean(),
            );
        }
    }
    Ok(())
}

/// The generated tokens without the stop token that ended them (not part of the text).
fn text_tokens<'a>(tokens: &'a [u32], stop_ids: &[u32]) -> &'a [u32] {
    match tokens.split_last() {
        Some((last, rest)) if stop_ids.contains(last) => rest,
        _ => tokens,
    }
}

/// Adds the speculation fields to `--json` stats.
fn spec_json(stats: &mut serde_json::Value, sp: &SpecStats, passes: usize, decode_ms: f64) {
    let draft_ms = sp.draft_time.as_secs_f64() * 1e3;
    let verify_ms = sp.verify_time.as_secs_f64() * 1e3;
    let t = &sp.threshold;
    let extra = serde_json::json!({
        "target_passes": passes,
        "draft_tokens": sp.draft_tokens,
        "draft_passes": sp.draft_passes,
        "accepted_tokens": sp.accepted_tokens,
        "mean_accepted_per_pass": sp.mean_accepted_per_pass(passes),
        "mean_tree_nodes": sp.mean_tree_nodes(passes),
        "threshold": {"first": t.first, "last": t.last, "min": t.min, "max": t.max,
                      "geometric_mean": t.mean(), "updates": t.count},
        "draft_ms": draft_ms,
        "verify_ms": verify_ms,
        "overhead_ms": (decode_ms - draft_ms - verify_ms).max(0.0),
        "cost_curve_ms": sp.cost_curve.as_ref().map(|c| c.points.clone()),
    });
    if let (Some(dst), serde_json::Value::Object(src)) = (stats.as_object_mut(), extra) {
        dst.extend(src);
    }
}

fn backend_name(b: &CpuBackend) -> String {
    use llmcad::backend::Backend;
    b.device_name()
}

/// Renders one user message in the model's own chat template.
fn chat_prompt(model: &Model, user: &str) -> anyhow::Result<String> {
    let Some(t) = &model.chat_template else {
        bail!(
            "--chat: {} has no chat template; pass the formatted prompt with -p",
            model.name
        );
    };
    Ok(t.render(
        &[ChatMessage {
            role: "user".into(),
            content: user.to_string(),
        }],
        true,
    )?)
}
