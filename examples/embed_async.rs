//! The stream API: [`Engine::spawn`] puts the engine on a thread of its own, and every
//! generation comes back as a `futures::Stream` of token events. Any executor drives it (this
//! uses `futures`' own `block_on`; tokio works the same); dropping a stream cancels it.
//!
//! ```text
//! cargo run --release --example embed_async -- models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
//! ```

use clap::Parser;
use futures::executor::block_on;
use futures::StreamExt;
use llmcad::engine::{Device, Engine, EngineOptions, GenerateRequest, Prompt};
use llmcad::stream::StreamEvent;
use llmcad::tokenizer::ChatMessage;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    model: PathBuf,
    #[arg(default_value = "Tell me a very short story.")]
    prompt: String,
    #[arg(short = 'n', long, default_value_t = 96)]
    max_tokens: usize,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: Device,
}

fn main() -> anyhow::Result<()> {
    run(Args::parse(), &mut std::io::stdout())
}

fn run(args: Args, out: &mut impl Write) -> anyhow::Result<()> {
    let mut opts = EngineOptions::new(&args.model);
    opts.device = args.device;
    let engine = Engine::load(opts)?.spawn()?;
    let request = || {
        let mut r = GenerateRequest::new(Prompt::Chat(vec![ChatMessage::new(
            "user",
            args.prompt.as_str(),
        )]));
        r.options.max_tokens = args.max_tokens;
        r.reset = true;
        r
    };
    block_on(async {
        // a whole answer, each piece printed as it comes
        let mut answer = engine.generate(request());
        while let Some(event) = answer.next().await {
            match event? {
                StreamEvent::Token { text, .. } => {
                    write!(out, "{text}")?;
                    out.flush()?;
                }
                StreamEvent::Done(output) => writeln!(
                    out,
                    "\n[{} tokens, {:.1} tokens/s, stop: {}]",
                    output.tokens.len(),
                    output.stats.tokens_per_s(),
                    output.stop.as_str()
                )?,
            }
        }
        // only the start of another: dropping the stream after three events cancels it
        let start: Vec<_> = engine.generate(request()).take(3).collect().await;
        writeln!(out, "then {} events of a cancelled answer", start.len())?;
        anyhow::Ok(())
    })
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_an_answer_and_cancels_another() {
        let args = Args {
            model: common::tiny_f32().gguf.clone(),
            prompt: "ab ba".into(),
            max_tokens: 16,
            device: Device::Cpu,
        };
        let mut out = Vec::new();
        run(args, &mut out).unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains(" tokens/s, stop: "), "{out}");
        assert!(out.contains("then 3 events"), "{out}");
    }
}
