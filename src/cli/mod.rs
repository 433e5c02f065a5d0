//! Subcommands, with llama.cpp's option names where they exist.

mod generate;
mod info;

use clap::{Args, Parser, Subcommand};
use llmcad::cpu::Precision;
use llmcad::model::{LoadOptions, Model};
use llmcad::quant::DType;
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
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(a) => generate::run(a),
        Command::Info(a) => info::run(a),
    }
}

/// Options for loading a model, shared by every subcommand.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Quantize float weights while loading (q8_0 or q4_0; Hugging Face models).
    #[arg(long, value_parser = parse_quant)]
    pub quantize: Option<DType>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Model> {
        Ok(Model::load(
            &self.model,
            &LoadOptions {
                quantize: self.quantize,
                progress: true,
            },
        )?)
    }
}

fn parse_quant(s: &str) -> Result<DType, String> {
    let d: DType = s.parse()?;
    if d.is_quantized() {
        Ok(d)
    } else {
        Err(format!("{s}: --quantize takes q8_0, q4_0 or q4_1"))
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
    /// Multiply in f32 with dequantized weights instead of 8-bit activations (slower, exact).
    #[arg(long)]
    pub f32_activations: bool,
}

impl RunArgs {
    pub fn precision(&self) -> Precision {
        if self.f32_activations {
            Precision::F32
        } else {
            Precision::Q8Activations
        }
    }
}
