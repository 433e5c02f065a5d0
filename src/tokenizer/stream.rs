//! Incremental detokenization: text for each generated token as soon as it is complete.
//!
//! Each step decodes only a small window: the tokens already returned since the previous step
//! (context, so that decoders that look at neighbours — SentencePiece's leading-space strip,
//! byte fallback — give the same text as a full decode) plus the tokens not yet returned. The
//! difference between the two decodes is the new text. While it ends in an incomplete UTF-8
//! sequence (U+FFFD at the end) it is held back, up to [`MAX_HELD`] tokens.

use super::Tokenizer;
use crate::error::Result;

/// Tokens held back at most while their text ends in an incomplete character; past that the
/// replacement characters are real (an invalid byte sequence) and are emitted.
const MAX_HELD: usize = 8;

/// Streams text out of token ids; see [`Tokenizer::stream`].
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the context window in `ids`.
    prefix: usize,
    /// First id whose text has not been returned yet.
    read: usize,
}

impl<'a> TextStream<'a> {
    pub(super) fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        TextStream {
            tok,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one token; returns the text it completes (none while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.step(false)
    }

    /// Returns whatever text is still held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        self.step(true)
    }

    fn step(&mut self, flush: bool) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = self.decode(self.prefix, self.read)?;
        let now = self.decode(self.prefix, self.ids.len())?;
        let held = self.ids.len() - self.read;
        if !flush && now.ends_with('\u{fffd}') && held < MAX_HELD {
            return Ok(None);
        }
        let new = new_text(&before, &now);
        self.prefix = self.read;
        self.read = self.ids.len();
        if self.prefix > 64 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
        Ok((!new.is_empty()).then(|| new.to_string()))
    }

    /// Ids kept for context (bounded whatever the length of the generation).
    #[cfg(test)]
    pub(super) fn window_len(&self) -> usize {
        self.ids.len()
    }

    fn decode(&self, from: usize, to: usize) -> Result<String> {
        if from == to {
            return Ok(String::new());
        }
        self.tok.decode_with(&self.ids[from..to], self.skip_special)
    }
}

/// The part of `now` after the text it shares with `before` (normally `before` is a prefix).
fn new_text<'s>(before: &str, now: &'s str) -> &'s str {
    if let Some(rest) = now.strip_prefix(before) {
        return rest;
    }
    let common = before
        .char_indices()
        .zip(now.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(before.len().min(now.len()));
    now.get(common..).unwrap_or("")
}
