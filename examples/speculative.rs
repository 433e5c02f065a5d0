//! Target-only decoding against speculative decoding with token trees on one prompt: greedy
//! decoding gives the same tokens either way (speculation is exact), only the speed differs.
//!
//! ```text
//! cargo run --release --example speculative -- TARGET.gguf DRAFTER.gguf "Write a haiku."
//! ```

use anyhow::ensure;
use clap::Parser;
use llmcad::engine::{Device, Engine, EngineOptions, GenerateRequest, Output, Prompt};
use llmcad::spec::pass_store::PassStore;
use llmcad::spec::SpecOptions;
use llmcad::tokenizer::ChatMessage;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    target: PathBuf,
    /// A smaller model with the target's vocabulary.
    drafter: PathBuf,
    #[arg(default_value = "Write a short poem about the sea.")]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// cpu, gpu or auto (the target's device; the drafter runs on the CPU).
    #[arg(long, default_value = "auto")]
    device: Device,
}

fn main() -> anyhow::Result<()> {
    run(Args::parse(), &mut std::io::stdout())?;
    Ok(())
}

/// Runs both ways, prints their speeds and returns the speed-up.
fn run(args: Args, out: &mut impl Write) -> anyhow::Result<f64> {
    let generate = |spec: Option<SpecOptions>| -> anyhow::Result<Output> {
        let mut opts = EngineOptions::new(&args.target);
        opts.device = args.device;
        // both runs learn the verifier's pass times from scratch, whatever ran before
        opts.pass_store = PassStore::Off;
        if let Some(spec) = spec {
            opts = opts.with_drafter(&args.drafter, spec);
        }
        let mut engine = Engine::load(opts)?;
        let mut request = GenerateRequest::new(Prompt::Chat(vec![ChatMessage::new(
            "user",
            args.prompt.as_str(),
        )]));
        request.options.max_tokens = args.max_tokens;
        Ok(engine.generate(&request, &mut |_| true)?)
    };
    let plain = generate(None)?;
    let tree = generate(Some(SpecOptions::default()))?;
    ensure!(
        plain.tokens == tree.tokens,
        "speculation changed the answer: a bug"
    );
    let speedup = tree.stats.tokens_per_s() / plain.stats.tokens_per_s();
    writeln!(out, "{}\n", plain.text)?;
    writeln!(
        out,
        "{} tokens: target only {:.1} tokens/s, token trees {:.1} tokens/s ({:.2} tokens per target pass): {speedup:.2}x",
        plain.tokens.len(),
        plain.stats.tokens_per_s(),
        tree.stats.tokens_per_s(),
        tree.tokens.len() as f64 / tree.stats.target_passes.max(1) as f64,
    )?;
    Ok(speedup)
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_give_the_same_answer() {
        let (target, drafter) = common::tiny_pair(llmcad::quant::DType::F32);
        let args = Args {
            target,
            drafter,
            prompt: "ab ba".into(),
            max_tokens: 24,
            device: Device::Cpu,
        };
        let mut out = Vec::new();
        let speedup = run(args, &mut out).unwrap();
        assert!(speedup.is_finite() && speedup > 0.0);
        assert!(String::from_utf8_lossy(&out).contains("token trees"));
    }
}
