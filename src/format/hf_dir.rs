//! A Hugging Face model directory: `config.json`, the optional `generation_config.json` and
//! `tokenizer_config.json`, `tokenizer.json`, and safetensors weights.

use crate::error::{format_err, Result};
use std::path::{Path, PathBuf};

pub struct HfDir {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub generation_config: Option<serde_json::Value>,
    pub tokenizer_config: Option<serde_json::Value>,
    pub tokenizer_json: PathBuf,
}

impl HfDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = read_json(&dir.join("config.json"))?.ok_or_else(|| {
            format_err!(
                "{}: no config.json (expected a Hugging Face model directory)",
                dir.display()
            )
        })?;
        let tokenizer_json = dir.join("tokenizer.json");
        if !tokenizer_json.exists() {
            return Err(format_err!("{}: no tokenizer.json", dir.display()));
        }
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            generation_config: read_json(&dir.join("generation_config.json"))?,
            tokenizer_config: read_json(&dir.join("tokenizer_config.json"))?,
            tokenizer_json,
        })
    }
}

/// Parses a JSON file; `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match super::read_optional(path)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format_err!("{}: invalid JSON: {e}", path.display())),
        None => Ok(None),
    }
}
