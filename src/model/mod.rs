//! A model ready to run: configuration, weights and tokenizer, loaded from a GGUF file or a
//! Hugging Face directory.

pub mod config;
pub mod recipe;
pub mod rope;
pub mod weights;

pub use config::{
    Arch, LayerAttention, ModelConfig, RopeConfig, RopeLayout, RopeScaling, SpecialTokens,
};
pub use rope::RopeTable;
pub use weights::{quantize_matrix, LayerWeights, Matrix, ModelWeights};

use crate::error::{format_err, unsupported, Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::hf_dir::HfDir;
use crate::format::safetensors;
use crate::progress::{LoadProgress, LoadStatus};
use crate::quant::DType;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weights::{Naming, WeightLoader};

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Quantize matrices stored with more bits per weight (float or quantized) to this block
    /// type while loading (`--quantize`).
    pub quantize: Option<DType>,
    /// Told as each tensor is loaded.
    pub progress: Option<LoadProgress>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Gguf,
    HuggingFace,
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: Arc<ModelWeights>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Why the file's chat template is not usable when it does not compile (the template is
    /// code from the file: only chat prompts need it, so the model loads anyway).
    pub chat_template_error: Option<String>,
    pub path: PathBuf,
    pub format: FileFormat,
    /// `general.name` or the directory name.
    pub name: String,
}

/// Strings that end a turn in common chat formats; each counts as a stop token when the
/// vocabulary has it as a special token.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
];

impl Model {
    /// Tokenizes a prompt (special tokens in the text recognised) and puts BOS first when the
    /// model's tokenizer asks for it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        if let Some(bos) = self.config.special.bos {
            if self.tokenizer.add_bos() && ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The chat template, or why there is no usable one (the file has none, or it does not
    /// compile).
    pub fn require_chat_template(&self) -> Result<&ChatTemplate> {
        match (&self.chat_template, &self.chat_template_error) {
            (Some(t), _) => Ok(t),
            (None, Some(e)) => Err(Error::Template(format!(
                "{}'s chat template does not compile ({e}); give the formatted prompt as text",
                self.name
            ))),
            (None, None) => Err(Error::InvalidArgument(format!(
                "{} has no chat template; give the formatted prompt as text",
                self.name
            ))),
        }
    }

    /// Loads a GGUF file, a Hugging Face directory, or the directory of a `.safetensors` path.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        if path.is_dir() {
            return Self::load_hf(path, opts);
        }
        let mut magic = [0u8; 4];
        let n = std::io::Read::read(&mut crate::format::open_regular(path)?, &mut magic)
            .map_err(|e| Error::io(path, e))?;
        if n == 4 && &magic == crate::format::gguf::MAGIC {
            Self::load_gguf(path, opts)
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            Self::load_hf(path.parent().unwrap_or(Path::new(".")), opts)
        } else {
            Err(format_err!(
                "{}: neither a GGUF file nor a Hugging Face model directory",
                path.display()
            ))
        }
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
        let g = GgufFile::open(path)?;
        let mut config = ModelConfig::from_gguf(&g)?;
        g.check_types()
            .map_err(|e| unsupported!("{}: {e}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let (chat_template, chat_template_error) =
            split_template(match g.get_str("tokenizer.chat_template")? {
                Some(src) => Some(ChatTemplate::new(
                    src,
                    token_text(&tokenizer, g.get_u64("tokenizer.ggml.bos_token_id")?),
                    token_text(&tokenizer, g.get_u64("tokenizer.ggml.eos_token_id")?),
                )),
                None => None,
            });
        let id = |k: &str| -> Result<Option<u32>> { Ok(g.get_u64(k)?.map(|v| v as u32)) };
        let mut stop: Vec<u32> = ["eos", "eot", "eom"]
            .iter()
            .map(|s| id(&format!("tokenizer.ggml.{s}_token_id")))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        stop.extend(end_of_turn_ids(&tokenizer));
        config.special = SpecialTokens {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            stop: dedup(stop),
            add_bos: tokenizer.add_bos(),
        };
        let factors = |name: &str| {
            g.tensors.iter().find(|t| t.name == name).map(|f| {
                let mut factors = vec![0f32; f.numel()];
                crate::quant::dequantize_row(f.dtype, &f.data, &mut factors);
                factors
            })
        };
        if let Some(f) = factors("rope_freqs.weight") {
            config.rope.scaling = RopeScaling::Factors(f);
        }
        if let (Some(short), Some(long)) = (
            factors("rope_factors_short.weight"),
            factors("rope_factors_long.weight"),
        ) {
            let key = |k: &str| format!("{}.rope.scaling.{k}", config.arch.name());
            let original_context = g.get_u64(&key("original_context_length"))?.ok_or_else(|| {
                format_err!(
                    "LongRoPE factors without {}",
                    key("original_context_length")
                )
            })? as usize;
            config.rope.scaling = RopeScaling::LongRope {
                short,
                long,
                original_context,
                attn_factor: g.get_f64(&key("attn_factor"))?.unwrap_or(1.0) as f32,
            };
        }
        config.validate()?;
        let loader = WeightLoader::new(g.tensors.clone(), Naming::Gguf, &config);
        let weights = load_weights(loader, opts)?;
        check_vocab(&config, &tokenizer)?;
        let name = g
            .get_str("general.name")?
            .map(str::to_string)
            .unwrap_or_else(|| file_stem(path));
        Ok(Model {
            config,
            weights: Arc::new(weights),
            tokenizer,
            chat_template,
            chat_template_error,
            path: path.to_path_buf(),
            format: FileFormat::Gguf,
            name,
        })
    }

    fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Model> {
        let hf = HfDir::open(dir)?;
        let mut config = ModelConfig::from_hf(&hf.config)?;
        config.validate()?;
        let tokenizer = Tokenizer::from_hf_files(&hf.tokenizer_json, hf.tokenizer_config.as_ref())?;
        let tc = hf.tokenizer_config.as_ref();
        let special_text = |k: &str| -> Option<String> {
            let v = tc?.get(k)?;
            v.as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))
                .map(str::to_string)
        };
        let (chat_template, chat_template_error) =
            split_template(tc.and_then(|t| t.get("chat_template")).map(|src| {
                ChatTemplate::from_config_value(
                    src,
                    special_text("bos_token"),
                    special_text("eos_token"),
                )
            }));
        let from = |k: &str| {
            let mut ids = config::json_ids(hf.generation_config.as_ref().and_then(|g| g.get(k)));
            ids.extend(config::json_ids(hf.config.get(k)));
            ids
        };
        let bos = from("bos_token_id")
            .first()
            .copied()
            .or_else(|| special_text("bos_token").and_then(|t| tokenizer.token_to_id(&t)));
        let mut eos_ids = from("eos_token_id");
        if let Some(id) = special_text("eos_token").and_then(|t| tokenizer.token_to_id(&t)) {
            eos_ids.push(id);
        }
        let mut stop = eos_ids.clone();
        stop.extend(end_of_turn_ids(&tokenizer));
        config.special = SpecialTokens {
            bos,
            eos: eos_ids.first().copied(),
            stop: dedup(stop),
            add_bos: tokenizer.add_bos(),
        };
        let tensors = safetensors::read_dir(dir)?;
        let weights = load_weights(
            WeightLoader::new(tensors, Naming::HuggingFace, &config),
            opts,
        )?;
        check_vocab(&config, &tokenizer)?;
        Ok(Model {
            config,
            weights: Arc::new(weights),
            tokenizer,
            chat_template,
            chat_template_error,
            path: dir.to_path_buf(),
            format: FileFormat::HuggingFace,
            name: file_stem(dir),
        })
    }
}

fn load_weights(mut loader: WeightLoader<'_>, opts: &LoadOptions) -> Result<ModelWeights> {
    loader.quantize_to = opts.quantize;
    if let Some(q) = opts.quantize.filter(|q| !q.is_quantized()) {
        return Err(Error::InvalidArgument(format!(
            "quantizing on load takes a block type (q8_0, q4_0, q4_1), not {q}"
        )));
    }
    let tick = |tensors_done: usize, tensors: usize| {
        if let Some(p) = &opts.progress {
            p.report(LoadStatus {
                tensors_done,
                tensors,
                quantizing_to: opts.quantize,
            });
        }
    };
    loader.load(&tick)
}

/// The vocabulary the tokenizer knows must cover the model's embedding rows the other way
/// round too: every id the tokenizer can produce needs an embedding.
fn check_vocab(cfg: &ModelConfig, tok: &Tokenizer) -> Result<()> {
    if tok.vocab_size() > cfg.vocab {
        return Err(format_err!(
            "the tokenizer has {} tokens but the model only {} embedding rows",
            tok.vocab_size(),
            cfg.vocab
        ));
    }
    Ok(())
}

/// A compiled template, or the reason it did not compile.
fn split_template(t: Option<Result<ChatTemplate>>) -> (Option<ChatTemplate>, Option<String>) {
    match t {
        Some(Ok(t)) => (Some(t), None),
        Some(Err(Error::Template(e))) => (None, Some(e)),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    }
}

fn token_text(tok: &Tokenizer, id: Option<u64>) -> Option<String> {
    id.and_then(|id| tok.id_to_token(id as u32))
}

fn end_of_turn_ids(tok: &Tokenizer) -> impl Iterator<Item = u32> + '_ {
    END_OF_TURN
        .iter()
        .filter_map(|t| tok.token_to_id(t))
        .filter(|&id| tok.is_special(id))
}

fn dedup(mut v: Vec<u32>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(*x));
    v
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .or(p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
