//! An interactive multi-turn chat in the terminal: every line typed is a user turn, and the
//! answer streams as it is generated. The conversation stays in the engine's KV caches, so a
//! turn costs only its new tokens; a drafter (same vocabulary) makes it speculative.
//!
//! ```text
//! cargo run --release --example chat -- models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example chat -- TARGET.gguf --draft DRAFTER.gguf
//! ```

use clap::Parser;
use llmcad::engine::{Device, Engine, EngineOptions, GenerateRequest, Prompt};
use llmcad::spec::SpecOptions;
use llmcad::tokenizer::ChatMessage;
use llmcad::Error;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// The model to chat with (GGUF or a Hugging Face directory).
    model: PathBuf,
    /// A drafter for speculative decoding.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Most tokens per answer.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: Device,
}

fn main() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    run(Args::parse(), stdin.lock(), &mut std::io::stdout())
}

/// Chats over `input`, one user turn per line, until it ends.
fn run(args: Args, input: impl BufRead, out: &mut impl Write) -> anyhow::Result<()> {
    let mut opts = EngineOptions::new(&args.model);
    opts.device = args.device;
    if let Some(draft) = &args.draft {
        opts = opts.with_drafter(draft, SpecOptions::default());
    }
    let mut engine = Engine::load(opts)?;
    write!(out, "> ")?;
    out.flush()?;
    for line in input.lines() {
        let mut request = GenerateRequest::new(Prompt::Chat(vec![ChatMessage::new("user", line?)]));
        request.options.max_tokens = args.max_tokens;
        let answer = |engine: &mut Engine, out: &mut dyn Write| {
            engine.generate(&request, &mut |ev| {
                out.write_all(ev.text.as_bytes()).is_ok() && out.flush().is_ok()
            })
        };
        let output = match answer(&mut engine, out) {
            Err(Error::ContextOverflow { .. }) => {
                writeln!(out, "(the conversation is full: starting a new one)")?;
                engine.reset();
                answer(&mut engine, out)?
            }
            result => result?,
        };
        writeln!(
            out,
            "\n[{} tokens, {:.1} tokens/s]",
            output.tokens.len(),
            output.stats.tokens_per_s()
        )?;
        write!(out, "> ")?;
        out.flush()?;
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chats_over_piped_turns_with_and_without_a_drafter() {
        let (target, draft) = common::tiny_pair(llmcad::quant::DType::F32);
        for draft in [None, Some(draft)] {
            let args = Args {
                model: target.clone(),
                draft,
                max_tokens: 8,
                device: Device::Cpu,
            };
            let mut out = Vec::new();
            run(args, "ab ba\nba ab\n".as_bytes(), &mut out).unwrap();
            let out = String::from_utf8_lossy(&out);
            assert_eq!(out.matches(" tokens/s]").count(), 2, "{out}");
        }
    }
}
