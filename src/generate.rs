//! Plain autoregressive generation on one backend: prefill the prompt, then one target pass
//! per token. This is the `--spec none` baseline every speculative mode must reproduce.

use crate::backend::{Backend, Batch, Rows, Want};
use crate::error::{Error, Result};
use crate::sampling::{next_token, SamplerRng, SamplingParams};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens (`-n`).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Prompt tokens per prefill pass (bounds scratch memory; results do not depend on it).
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            ignore_eos: false,
            prefill_chunk: 512,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence or end-of-turn token was produced (it is included in the output).
    EndOfSequence,
    MaxTokens,
    /// The token callback asked to stop.
    Cancelled,
    /// A chat turn filled the context before `max_tokens` (see [`crate::engine::Prompt::Chat`]
    /// for the policy): the next turn drops the oldest ones.
    ContextFull,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfSequence => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Cancelled => "cancelled",
            StopReason::ContextFull => "context_full",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    /// Target forward passes after the prompt.
    pub target_passes: usize,
}

impl Stats {
    pub fn prompt_ms(&self) -> f64 {
        self.prompt_time.as_secs_f64() * 1e3
    }

    pub fn decode_ms(&self) -> f64 {
        self.decode_time.as_secs_f64() * 1e3
    }

    /// Decode speed: tokens after the first (which the prompt pass produced) per second.
    pub fn tokens_per_s(&self) -> f64 {
        let t = self.decode_time.as_secs_f64();
        if t > 0.0 {
            self.generated_tokens.saturating_sub(1) as f64 / t
        } else {
            0.0
        }
    }

    pub fn prompt_tokens_per_s(&self) -> f64 {
        let t = self.prompt_time.as_secs_f64();
        if t > 0.0 {
            self.prompt_tokens as f64 / t
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub stats: Stats,
}

/// Where emitted tokens go: the output and the sampler's history.
pub(crate) struct Output<'a> {
    pub tokens: &'a mut Vec<u32>,
    pub history: &'a mut Vec<u32>,
}

impl Output<'_> {
    /// Emits `token` and says why generation must stop after it, if it must.
    pub fn emit(
        &mut self,
        token: u32,
        stop_ids: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Option<StopReason> {
        self.tokens.push(token);
        self.history.push(token);
        if !on_token(token) {
            Some(StopReason::Cancelled)
        } else if !opts.ignore_eos && stop_ids.contains(&token) {
            Some(StopReason::EndOfSequence)
        } else if self.tokens.len() >= opts.max_tokens {
            Some(StopReason::MaxTokens)
        } else {
            None
        }
    }
}

/// Checks that `prompt_len + max_tokens` fits the backend's context before any work (sums
/// saturate: a huge `max_tokens` must be refused, not wrap around to a small need).
pub fn check_context(prompt_len: usize, max_tokens: usize, backend: &dyn Backend) -> Result<()> {
    let limit = backend.kv_capacity();
    let needed = backend
        .kv_len()
        .saturating_add(prompt_len)
        .saturating_add(max_tokens);
    if prompt_len == 0 {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    if needed > limit {
        let hint = if backend.kv_len() + prompt_len >= limit {
            format!(": the prompt alone has {prompt_len} tokens; shorten it")
        } else {
            format!(
                ": the prompt has {prompt_len} tokens and {max_tokens} more were asked for; ask \
                 for fewer or for a larger context (the model allows {})",
                backend.config().max_context
            )
        };
        return Err(Error::ContextOverflow {
            needed,
            limit,
            hint,
        });
    }
    Ok(())
}

/// Feeds `prompt` in chunks and returns the scores of its last token.
pub fn prefill(
    backend: &mut dyn Backend,
    prompt: &[u32],
    chunk: usize,
    want_top_k: Option<usize>,
) -> Result<crate::backend::Logits> {
    let mut last = None;
    for part in prompt.chunks(chunk.max(1)) {
        let batch = Batch::chain(part, backend.kv_len());
        last = Some(backend.forward(
            &batch,
            Want {
                rows: Rows::Last,
                top_k: want_top_k,
            },
        )?);
    }
    last.ok_or_else(|| Error::InvalidArgument("the prompt is empty".into()))
}

/// Generates up to `opts.max_tokens` tokens after `prompt`, calling `on_token` for each one
/// as soon as it is chosen (return `false` to stop).
pub fn generate(
    backend: &mut dyn Backend,
    prompt: &[u32],
    stop_ids: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    check_context(prompt.len(), opts.max_tokens, backend)?;
    let mut stats = Stats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let top_k = backend
        .capabilities()
        .top_k_for(opts.sampling.candidates_needed());
    let mut rng = SamplerRng::new(opts.sampling.seed);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();

    let t0 = Instant::now();
    let mut logits = prefill(backend, prompt, opts.prefill_chunk, top_k)?;
    stats.prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let stop = loop {
        if tokens.len() == opts.max_tokens {
            break StopReason::MaxTokens;
        }
        let next = next_token(&opts.sampling, &logits, 0, &history, &mut rng);
        let mut out = Output {
            tokens: &mut tokens,
            history: &mut history,
        };
        if let Some(stop) = out.emit(next, stop_ids, opts, on_token) {
            break stop;
        }
        let batch = Batch::chain(&[next], backend.kv_len());
        logits = backend.forward(
            &batch,
            Want {
                rows: Rows::Last,
                top_k,
            },
        )?;
        stats.target_passes += 1;
    };
    stats.decode_time = t1.elapsed();
    stats.generated_tokens = tokens.len();
    Ok(Generation {
        tokens,
        stop,
        stats,
    })
}
