//! TEMPORARY stub: replaced by the real tokenizer module (being written on branch `tokenizer`).
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_gguf(_g: &GgufFile) -> Result<Self> {
        Self::from_hf_files(
            Path::new("../shared/models/smollm2-135m-instruct/tokenizer.json"),
            None,
        )
    }
    pub fn from_hf_files(p: &Path, _c: Option<&serde_json::Value>) -> Result<Self> {
        Ok(Tokenizer {
            inner: tokenizers::Tokenizer::from_file(p)
                .map_err(|e| Error::Tokenizer(e.to_string()))?,
        })
    }
    pub fn stream(&self) -> TextStream<'_> {
        TextStream(self, vec![], 0)
    }
    pub fn add_bos(&self) -> bool {
        false
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    pub fn is_special(&self, id: u32) -> bool {
        id < 17
    }
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

pub struct ChatTemplate;
pub struct TextStream<'a>(&'a Tokenizer, Vec<u32>, usize);
impl TextStream<'_> {
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.1.push(id);
        let t = self.0.decode(&self.1)?;
        if t.ends_with('\u{fffd}') {
            return Ok(None);
        }
        let r = t[self.2..].to_string();
        self.2 = t.len();
        Ok(Some(r))
    }
    pub fn finish(&mut self) -> Result<Option<String>> {
        Ok(None)
    }
}
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}
impl ChatTemplate {
    pub fn new(_s: &str, _b: Option<String>, _e: Option<String>) -> Result<Self> {
        Ok(ChatTemplate)
    }
    pub fn from_config_value(
        _s: &serde_json::Value,
        _b: Option<String>,
        _e: Option<String>,
    ) -> Result<Self> {
        Ok(ChatTemplate)
    }
    pub fn summary(&self) -> String {
        String::new()
    }
    pub fn render(&self, m: &[ChatMessage], _g: bool) -> Result<String> {
        Ok(format!("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", m[0].content))
    }
}
