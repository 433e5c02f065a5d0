//! Text ⇄ token ids, through the `tokenizers` crate: from a Hugging Face `tokenizer.json` (plus
//! `tokenizer_config.json`) or from the vocabulary embedded in a GGUF file (byte-level BPE or
//! SentencePiece-style), chat templates (minijinja) and incremental detokenization.
//!
//! Contract: [`Tokenizer::encode`] never adds BOS (callers prepend it when
//! [`Tokenizer::add_bos`] says so) and recognises special tokens written out in the text, as
//! llama.cpp does; [`Tokenizer::decode`] skips nothing and renders special tokens as their text.

mod chat_template;
mod gguf_vocab;
mod stream;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use stream::TextStream;

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use std::collections::HashSet;
use std::path::Path;
use tokenizers::models::ModelWrapper;

pub(crate) fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// A tokenizer with the few facts the engine needs besides the vocabulary.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    add_bos: bool,
    /// Ids of control/special tokens (rendered by `decode`, skipped by `stream_skip_special`).
    special: HashSet<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer from the vocabulary in a GGUF file (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let built = gguf_vocab::build(g)?;
        Ok(Self::wrap(built.tokenizer, built.add_bos))
    }

    /// Loads `tokenizer.json`; `tokenizer_config` (the parsed `tokenizer_config.json`) gives
    /// `add_bos_token`. Without it, BOS is added when the file's post-processor would add a
    /// special token in front of a single sequence (as `transformers` does).
    pub fn from_hf_files(path: &Path, config: Option<&serde_json::Value>) -> Result<Self> {
        let bytes = crate::format::read_required(path)?;
        Self::from_hf_bytes(&bytes, config).map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// [`Tokenizer::from_hf_files`] on the bytes of a `tokenizer.json`.
    pub fn from_hf_bytes(bytes: &[u8], config: Option<&serde_json::Value>) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(tok_err)?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)?;
        let add_bos = config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or_else(|| post_processor_adds_bos(json.get("post_processor")));
        Ok(Self::wrap(inner, add_bos))
    }

    fn wrap(mut inner: tokenizers::Tokenizer, add_bos: bool) -> Self {
        // tokenizers keeps a BPE's word cache in a thread-local map keyed by the instance and
        // never evicts a dropped instance's entries: each engine loaded and freed would leave
        // up to 10,000 words behind on every thread that encoded with it (tests/soak found
        // it). Without the cache, what stays is one empty entry per instance and thread
        // (none for GGUF vocabularies, built without one).
        if let ModelWrapper::BPE(bpe) = inner.get_model() {
            let mut bpe = bpe.clone();
            bpe.resize_cache(0);
            inner.with_model(bpe);
        }
        let special = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Tokenizer {
            inner,
            add_bos,
            special,
        }
    }

    /// Incremental decoder for generated tokens (special tokens rendered as text).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream::new(self, false)
    }

    /// Like [`Tokenizer::stream`], but special tokens (`<|im_end|>`, …) produce no text.
    pub fn stream_skip_special(&self) -> TextStream<'_> {
        TextStream::new(self, true)
    }

    /// Whether a prompt should start with BOS (`add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// A control token (GGUF token type control/unknown, or a `special` added token).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Token ids of `text`, without BOS; special tokens written in the text are matched.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`; special tokens appear as their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Ids outside the vocabulary (padding rows of a larger embedding table) give no text.
    pub(crate) fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// An upper bound on the bytes of text one token stands for (its spelling in the
    /// vocabulary, which is never shorter): `n` tokens never hold more than `n` times it.
    pub fn max_token_bytes(&self) -> usize {
        self.inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Whether a `tokenizer.json` post-processor puts a special token before a single sequence
/// (`TemplateProcessing` whose `single` starts with a `SpecialToken`, possibly in a `Sequence`).
fn post_processor_adds_bos(pp: Option<&serde_json::Value>) -> bool {
    let Some(pp) = pp else { return false };
    match pp.get("type").and_then(|t| t.as_str()) {
        Some("TemplateProcessing") => pp
            .get("single")
            .and_then(|s| s.as_array())
            .and_then(|s| s.first())
            .is_some_and(|first| first.get("SpecialToken").is_some()),
        Some("Sequence") => pp
            .get("processors")
            .and_then(|p| p.as_array())
            .is_some_and(|ps| ps.iter().any(|p| post_processor_adds_bos(Some(p)))),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
