//! `llmcad generate`: stream a continuation of a prompt.

use super::EngineArgs;
use anyhow::{bail, Context};
use clap::Args;
use llmcad::engine::{Engine, GenerateRequest, Prompt};
use llmcad::generate::GenerateOptions;
use llmcad::sampling::SamplingParams;
use llmcad::spec::SpecStats;
use llmcad::tokenizer::ChatMessage;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt text (special tokens such as <|im_start|> are recognised).
    #[arg(short = 'p', long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file ("-": standard input).
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
    /// Print one JSON object (ids, text, stats) instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Where the prompt comes from; a file is opened before the model loads so that a wrong path
/// fails at once.
enum PromptSource {
    Text(String),
    Read { name: String, from: Box<dyn Read> },
}

impl PromptSource {
    fn open(a: &GenerateArgs) -> anyhow::Result<Self> {
        Ok(match (&a.prompt, &a.file) {
            (Some(p), None) => PromptSource::Text(p.clone()),
            (None, Some(f)) if f.as_os_str() == "-" => PromptSource::Read {
                name: "standard input".into(),
                from: Box::new(std::io::stdin()),
            },
            (None, Some(f)) => PromptSource::Read {
                name: f.display().to_string(),
                from: Box::new(
                    std::fs::File::open(f).with_context(|| format!("reading {}", f.display()))?,
                ),
            },
            _ => bail!("give a prompt with -p TEXT or -f FILE"),
        })
    }

    /// The prompt, reading at most what `engine`'s context can hold: no token stands for more
    /// than the vocabulary's longest text, so more bytes cannot fit, and an endless input
    /// (`/dev/zero`) must not fill the memory.
    fn read(self, engine: &Engine) -> anyhow::Result<String> {
        let (name, from) = match self {
            PromptSource::Text(t) => return Ok(t),
            PromptSource::Read { name, from } => (name, from),
        };
        let context = engine.context_size();
        let limit = context.saturating_mul(engine.tokenizer().max_token_bytes()) as u64;
        let mut bytes = Vec::new();
        from.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {name}"))?;
        if bytes.len() as u64 > limit {
            bail!(
                "{name} holds more than {limit} bytes, more than a context of {context} tokens can \
                 hold; shorten the prompt (or raise --ctx-size)"
            );
        }
        String::from_utf8(bytes).with_context(|| format!("{name} is not UTF-8 text"))
    }
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let prompt_source = PromptSource::open(&a)?;
    let mut engine = a.engine.load()?;
    let prompt_text = prompt_source.read(&engine)?;
    let prompt = if a.chat {
        engine.model().require_chat_template().context("--chat")?;
        Prompt::Chat(vec![ChatMessage::new("user", prompt_text)])
    } else {
        Prompt::Text(prompt_text)
    };
    let request = GenerateRequest {
        prompt,
        options: GenerateOptions {
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
        },
        reset: false,
    };

    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let mut streamed = Vec::new();
    let result = engine.generate(&request, &mut |ev| {
        streamed.extend(ev.id);
        if a.json || ev.text.is_empty() {
            return true;
        }
        match stdout
            .write_all(ev.text.as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    });
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            if a.json && !streamed.is_empty() {
                // what was generated before the failure is still an answer: keep it
                let text = engine.tokenizer().decode(&streamed)?;
                let json = serde_json::json!({
                    "tokens": streamed,
                    "text": text,
                    "stop": match e {
                        llmcad::Error::ContextOverflow { .. } => "length",
                        _ => "error",
                    },
                    "error": e.to_string(),
                });
                writeln!(stdout, "{json}").context("writing to stdout")?;
            }
            return Err(flag_hint(e));
        }
    };
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::from(e).context("writing to stdout"));
        }
    }
    let s = &out.stats;
    let stop_ids = &engine.model().config.special.stop;
    if a.json {
        let json = serde_json::json!({
            "prompt_tokens": out.prompt,
            "tokens": out.tokens,
            "text": engine.tokenizer().decode(text_tokens(&out.tokens, stop_ids))?,
            "stop": out.stop.as_str(),
            "stats": {
                "prompt_ms": s.prompt_ms(),
                "decode_ms": s.decode_ms(),
                "tokens_per_s": s.tokens_per_s(),
                "prompt_tokens_per_s": s.prompt_tokens_per_s(),
                "device": engine.device_name(),
                "cpu_kernels": llmcad::quant::Simd::active().name(),
            }
        });
        let mut json = json;
        if let Some(streaming) = engine.device_stats() {
            json["stats"]["streaming"] = streaming;
        }
        if let Some(sp) = &out.spec {
            spec_json(&mut json["stats"], sp, s.target_passes, s.decode_ms());
        }
        writeln!(stdout, "{json}").context("writing to stdout")?;
    } else {
        writeln!(stdout)
            .and_then(|_| stdout.flush())
            .context("writing to stdout")?;
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
        if let Some(sp) = &out.spec {
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

/// A context overflow named in the library's terms, with the options that change it.
fn flag_hint(e: llmcad::Error) -> anyhow::Error {
    match e {
        llmcad::Error::ContextOverflow { .. } => {
            anyhow::anyhow!("{e} (-n sets the new tokens, --ctx-size the context)")
        }
        e => e.into(),
    }
}

/// The generated tokens without the stop token that ended them (not part of the text).
fn text_tokens<'a>(tokens: &'a [u32], stop_ids: &[u32]) -> &'a [u32] {
    match tokens.split_last() {
        Some((last, rest)) if stop_ids.contains(last) => rest,
        _ => tokens,
    }
}

/// Adds the speculation fields to `--json` stats.
pub fn spec_json(stats: &mut serde_json::Value, sp: &SpecStats, passes: usize, decode_ms: f64) {
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
        "pass_ms_by_nodes": sp.pass_times.as_ref().map(|c| c.points()),
        "overlap_drafted": sp.overlap_drafted,
        "plain_rounds": sp.plain_rounds,
        "catch_up_tokens": sp.catch_up_tokens,
        "catch_up_ms": sp.catch_up_time.as_secs_f64() * 1e3,
        "overlap_kept": sp.overlap_kept,
        "overlap_dropped": sp.overlap_drafted - sp.overlap_kept,
    });
    if let (Some(dst), serde_json::Value::Object(src)) = (stats.as_object_mut(), extra) {
        dst.extend(src);
    }
}
