//! One request's generation as the server sees it: the engine's token stream with the stop
//! strings applied, the queue place it holds, and what its response reports (usage,
//! `finish_reason`, the speculation statistics).

use super::openai::ApiError;
use super::stop::StopStrings;
use futures::StreamExt;
use llmcad::engine::Output;
use llmcad::generate::StopReason;
use llmcad::stream::{StreamEvent, TokenStream};
use llmcad::Result;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

/// What a generation gives next.
pub enum Piece {
    Text(String),
    End(Finish),
}

/// How a generation ended.
pub struct Finish {
    /// `stop` (an end-of-sequence token or a stop string) or `length`.
    pub reason: &'static str,
    /// The generated tokens, the one that completed a stop string included.
    pub ids: Vec<u32>,
    pub output: Box<Output>,
}

pub struct Generation {
    events: TokenStream,
    /// The first event, read before the response starts (see `start`).
    first: Option<Result<StreamEvent>>,
    stops: StopStrings,
    ids: Vec<u32>,
    stopped_by_string: bool,
    /// The request's place in the queue, given back when the generation is dropped.
    _place: OwnedSemaphorePermit,
}

impl Generation {
    /// Waits for the generation's first event, so that a request the engine refuses (a prompt
    /// longer than the context) gets an error status rather than a failed stream.
    pub async fn start(
        mut events: TokenStream,
        stops: Vec<String>,
        place: OwnedSemaphorePermit,
    ) -> Result<Generation, ApiError> {
        let first = match events.next().await {
            Some(Err(e)) => return Err(e.into()),
            first => first,
        };
        Ok(Generation {
            events,
            first,
            stops: StopStrings::new(stops),
            ids: Vec::new(),
            stopped_by_string: false,
            _place: place,
        })
    }

    /// The next piece of text or the end; `None` after the end.
    pub async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        loop {
            let event = match self.first.take() {
                Some(e) => Some(e),
                None => self.events.next().await,
            };
            match event? {
                Err(e) => return Some(Err(e.into())),
                Ok(StreamEvent::Token { id, text }) => {
                    if self.stopped_by_string {
                        continue; // made before the cancel landed: not part of the answer
                    }
                    self.ids.extend(id);
                    let (text, stopped) = self.stops.push(&text);
                    if stopped {
                        self.stopped_by_string = true;
                        self.events.cancel();
                    }
                    if !text.is_empty() {
                        return Some(Ok(Piece::Text(text)));
                    }
                }
                Ok(StreamEvent::Done(output)) => {
                    let rest = self.stops.finish();
                    if !self.stopped_by_string && !rest.is_empty() {
                        // released now; the end comes with the next call
                        self.first = Some(Ok(StreamEvent::Done(output)));
                        return Some(Ok(Piece::Text(rest)));
                    }
                    let reason = match output.stop {
                        _ if self.stopped_by_string => "stop",
                        StopReason::EndOfSequence => "stop",
                        StopReason::MaxTokens | StopReason::Cancelled | StopReason::ContextFull => {
                            "length"
                        }
                    };
                    return Some(Ok(Piece::End(Finish {
                        reason,
                        ids: std::mem::take(&mut self.ids),
                        output,
                    })));
                }
            }
        }
    }
}

impl Finish {
    /// OpenAI's `usage`; the tokens the conversation cache already held count as cached.
    pub fn usage(&self) -> Value {
        let prompt = self.output.context_tokens;
        let cached = prompt.saturating_sub(self.output.stats.prompt_tokens);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.ids.len(),
            "total_tokens": prompt + self.ids.len(),
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    /// Decode speed, also sent as the `x-llmcad-tokens-per-second` header.
    pub fn tokens_per_s(&self) -> f64 {
        self.output.stats.tokens_per_s()
    }

    /// The `llmcad` extension field: token ids, timings and the speculation statistics.
    pub fn extension(&self) -> Value {
        let s = &self.output.stats;
        let mut ext = json!({
            "token_ids": self.ids,
            "prompt_ms": s.prompt_ms(),
            "decode_ms": s.decode_ms(),
            "tokens_per_second": s.tokens_per_s(),
        });
        if let Some(sp) = &self.output.spec {
            let mut spec = json!({});
            crate::cli::generate::spec_json(&mut spec, sp, s.target_passes, s.decode_ms());
            ext["speculative"] = spec;
        }
        ext
    }
}
