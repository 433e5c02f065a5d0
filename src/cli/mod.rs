//! Subcommands, with llama.cpp's option names where they exist.

/// `println!` that returns a failed write (a full disk, a closed pipe) as an error instead of
/// panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        anyhow::Context::context(
            writeln!(std::io::stdout().lock(), $($arg)*),
            "writing to stdout",
        )
    }};
}

mod bench;
mod generate;
mod info;
mod progress;
#[cfg(feature = "server")]
mod serve;

use clap::{Args, Parser, Subcommand};
use llmcad::cpu::Precision;
use llmcad::engine::{Device, DraftQuantize, Engine, EngineOptions};
use llmcad::model::{LoadOptions, Model};
use llmcad::quant::DType;
use llmcad::spec::frequent::DraftVocab;
use llmcad::spec::{FallbackPolicy, Overlap, SpecMode, SpecOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "llmcad",
    version,
    about = "Fast on-device LLM inference with a drafter and a verifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Describe a model file: architecture, sizes, types, tokenizer, chat template.
    Info(info::InfoArgs),
    /// Measure CPU speed and compare speculative modes; prints tables, writes JSON.
    Bench(bench::BenchArgs),
    /// Answer the OpenAI chat and completions API over HTTP.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(a) => generate::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        #[cfg(feature = "server")]
        Command::Serve(a) => serve::run(a),
    }
}

/// Everything that loads an engine: the model, the device, the drafter and their options.
/// `generate` and `serve` share it.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Device for the target: auto (a hardware GPU, else the CPU), gpu (any wgpu adapter,
    /// software ones such as Lavapipe included) or cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    spec: SpecArgs,
    /// Memory for the target's weights on the GPU: auto (from what the OS allows), a size
    /// (64MiB, 1.5GB) or a share of the weights (25%); weights beyond it stream from the file.
    #[arg(long, default_value = "auto")]
    memory_budget: llmcad::memory::MemoryBudget,
    /// Emulate a phone's storage: streamed weights read at most this fast (500MB/s, 1.5GB/s).
    #[arg(long, value_parser = parse_rate)]
    io_bandwidth: Option<f64>,
}

impl EngineArgs {
    /// The target model's file or directory.
    #[cfg(feature = "server")]
    pub fn model_path(&self) -> &std::path::Path {
        &self.model.model
    }

    /// Loads the engine, printing its warnings on stderr.
    pub fn load(&self) -> anyhow::Result<Engine> {
        let device: Device = self.device.parse()?;
        let mut opts = EngineOptions::new(&self.model.model);
        opts.quantize = self.model.quantize;
        opts.device = device;
        opts.threads = self.run.threads;
        opts.context = self.run.ctx_size;
        opts.precision = self.run.precision();
        opts.draft_precision = self.run.draft_activations;
        let (bar, progress) = progress::load_bar();
        opts.progress = Some(progress);
        opts.memory_budget = self.memory_budget;
        opts.io_bandwidth = self.io_bandwidth;
        if let Some((drafter, spec)) = self.spec.spec_options()? {
            opts = opts.with_drafter(drafter, spec);
            opts.draft_quantize = self.spec.draft_quantize;
            opts.draft_threads = self.spec.draft_threads;
        }
        let engine = Engine::load(opts);
        bar.finish_and_clear();
        let engine = engine?;
        for w in engine.warnings() {
            eprintln!("warning: {w}");
        }
        Ok(engine)
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate = llmcad::gpu::parse_rate(s).map_err(|e| e.to_string())?;
    llmcad::gpu::check_io_bandwidth(rate).map_err(|e| e.to_string())?;
    Ok(rate)
}

/// Options for loading a model, shared by every subcommand.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Quantize weights stored with more bits per weight (float, or a larger quantized type)
    /// while loading: q8_0, q4_0 or q4_1.
    #[arg(long, value_parser = DType::parse_quantized)]
    pub quantize: Option<DType>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Model> {
        let (bar, progress) = progress::load_bar();
        let model = Model::load(
            &self.model,
            &LoadOptions {
                quantize: self.quantize,
                progress: Some(progress),
            },
        );
        bar.finish_and_clear();
        Ok(model?)
    }
}

/// Options for running a model on the CPU.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context size in tokens (default: the model's).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// How activations meet quantized weights on the CPU: q16 (default; matches the f32
    /// reference), q8 (llama.cpp's 8-bit activations, fastest prefill) or f32 (exact, slowest).
    #[arg(long, default_value = "q16")]
    pub activations: Precision,
    /// The same for the drafter: q8 (default; the fastest kernels, and the target verifies
    /// every drafted token anyway), q16 or f32.
    #[arg(long, default_value = "q8")]
    pub draft_activations: Precision,
}

impl RunArgs {
    pub fn precision(&self) -> Precision {
        self.activations
    }
}

/// Speculative decoding: a drafter model and how its drafts are shaped.
#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// Drafter model (same vocabulary as the target; GGUF or Hugging Face directory).
    #[arg(long)]
    pub draft: Option<PathBuf>,
    /// Quantize the drafter's weights that have more bits per weight while loading: auto
    /// (q4_0 for a GGUF drafter, kept in the cache directory; as stored without one), none, or
    /// q8_0, q4_0 or q4_1. Faster drafting, still lossless (the target checks every token).
    #[arg(long, default_value = "auto")]
    pub draft_quantize: DraftQuantize,
    /// tree (token trees, default with --draft), chain (vanilla speculative decoding) or none.
    #[arg(long, value_parser = ["tree", "chain", "none"])]
    pub spec: Option<String>,
    /// Drafted tokens per pass with --spec chain.
    #[arg(long, default_value_t = 4)]
    pub draft_max: usize,
    /// Most nodes per token tree, root included (default: sized by measured cost, up to 64).
    #[arg(long)]
    pub tree_nodes: Option<usize>,
    /// Most drafted tokens on one tree path.
    #[arg(long, default_value_t = 12)]
    pub tree_depth: usize,
    /// A drafter candidate besides its first choice may open a branch from this probability.
    #[arg(long, default_value_t = SpecOptions::default().branch_threshold)]
    pub branch_threshold: f32,
    /// When to stop drafting: adaptive, or fixed:X (verify when the best path confidence < X).
    #[arg(long, default_value = "adaptive")]
    pub fallback: FallbackPolicy,
    /// CPU threads for the drafter (default: --threads).
    #[arg(long)]
    pub draft_threads: Option<usize>,
    /// Keep drafting while the target verifies: auto (unless the target runs on the CPU, where
    /// both would share the cores and the memory bandwidth), on or off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub overlap: String,
    /// The drafter proposes only the N most frequent tokens (FR-Spec: its output head shrinks
    /// to N rows), by the frequency table shipped for its vocabulary, else the N lowest ids;
    /// auto: the table's own size where one matches, else all; all (or 0): every token. Exact
    /// either way.
    #[arg(long, default_value = "auto")]
    pub draft_vocab: DraftVocab,
}

impl SpecArgs {
    /// The drafter's path and the speculation options, or `None` for target-only decoding.
    pub fn spec_options(&self) -> anyhow::Result<Option<(PathBuf, SpecOptions)>> {
        let mode = match (self.spec.as_deref(), &self.draft) {
            (Some("none"), _) | (None, None) => return Ok(None),
            (Some(m), None) => anyhow::bail!("--spec {m} needs a drafter: add --draft MODEL"),
            (Some("chain"), Some(_)) => SpecMode::Chain { k: self.draft_max },
            _ => SpecMode::Tree,
        };
        if self.draft_max == 0 || self.tree_depth == 0 || self.tree_nodes == Some(0) {
            anyhow::bail!("--draft-max, --tree-depth and --tree-nodes must be at least 1");
        }
        let spec = SpecOptions {
            mode,
            fallback: self.fallback,
            max_nodes: self.tree_nodes,
            max_depth: self.tree_depth,
            branch_threshold: self.branch_threshold,
            draft_vocab: self.draft_vocab,
            overlap: match self.overlap.as_str() {
                "on" => Overlap::On,
                "off" => Overlap::Off,
                _ => Overlap::Auto,
            },
            ..SpecOptions::default()
        };
        Ok(Some((self.draft.clone().expect("checked above"), spec)))
    }
}
