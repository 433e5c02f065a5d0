//! The one model configuration both file formats fill: shapes, RoPE, norms, special tokens.

use crate::error::{config_err, Result};
use crate::format::gguf::GgufFile;
use serde_json::Value as Json;

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1): GGML's "normal" mode, used by GGUF `llama` files, whose
    /// q/k rows llama.cpp's converter permuted for it.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face's rotate-half ("NeoX") layout.
    HalfSplit,
}

/// RoPE frequency scaling for long-context variants.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1's per-frequency scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: f32,
    },
    /// Per-frequency divisors given by the file (GGUF `rope_freqs.weight`).
    Factors(Vec<f32>),
    /// Phi-3's LongRoPE: per-frequency divisors, `long` for a context past the original one
    /// (chosen once for the KV cache's capacity, as llama.cpp does), and cos/sin scaled by
    /// `attn_factor`.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_context: usize,
        attn_factor: f32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    pub layout: RopeLayout,
    /// Rotated dimensions per head (the head dimension for every supported family).
    pub dims: usize,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Inverse frequency of each rotated pair for a KV cache of `context` tokens, computed in
    /// f32 as the reference implementations do (lower precision drifts visibly at long
    /// positions).
    pub fn inv_freqs(&self, context: usize) -> Vec<f32> {
        let d = self.dims;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.theta.powf((2 * i) as f32 / d as f32);
                match &self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Factors(div) => f / div.get(i).copied().unwrap_or(1.0),
                    RopeScaling::LongRope {
                        short,
                        long,
                        original_context,
                        ..
                    } => {
                        let div = if context > *original_context {
                            long
                        } else {
                            short
                        };
                        f / div.get(i).copied().unwrap_or(1.0)
                    }
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_context,
                    } => {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let low_wavelen = original_context / low_freq_factor;
                        let high_wavelen = original_context / high_freq_factor;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_context / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Every scaling factor is positive and finite (a LongRoPE config without its original
    /// context, say, would rotate by NaN).
    fn scaling_ok(&self) -> bool {
        let positive = |f: &f32| f.is_finite() && *f > 0.0;
        match &self.scaling {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => positive(factor),
            RopeScaling::Llama3 { factor, .. } => positive(factor),
            RopeScaling::Factors(div) => div.iter().all(positive),
            RopeScaling::LongRope {
                short,
                long,
                attn_factor,
                ..
            } => short.iter().chain(long).all(positive) && positive(attn_factor),
        }
    }

    /// The factor cos and sin are multiplied by (LongRoPE's attention scaling; 1 otherwise).
    pub fn attn_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::LongRope { attn_factor, .. } => attn_factor,
            _ => 1.0,
        }
    }
}

/// How one layer attends: what both backends' attention kernels take from the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerAttention {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// q·k is multiplied by this.
    pub scale: f32,
    /// Scores are soft-capped to (-cap, cap).
    pub softcap: Option<f32>,
    /// A query at position q sees keys at positions k with `q - k < window`.
    pub window: Option<usize>,
}

/// Token ids with a special meaning for generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Ids that end generation: EOS plus end-of-turn tokens.
    pub stop: Vec<u32>,
    /// Whether a BOS token starts every prompt.
    pub add_bos: bool,
}

/// The architecture families llmcad runs (decoders with Llama's attention and a gated FFN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen2 without the q/k/v bias, with an RMSNorm over each query and key head.
    Qwen3,
    /// Phi-3/3.5: q/k/v and gate/up each stored as one matrix, LongRoPE.
    Phi3,
    /// Gemma 2: GeGLU, norms after attention and the FFN too, embeddings scaled by √hidden,
    /// soft-capped attention scores and logits, sliding-window and global layers alternating.
    Gemma2,
    /// Gemma 3 (text): Gemma 2's block with Qwen3's q/k norms instead of soft-capping; five
    /// sliding-window layers per global one, each kind with its own RoPE base.
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// Gemma's block: see [`Arch::Gemma2`].
    pub fn gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// q/k/v and gate/up are stored stacked, each as one matrix.
    pub fn fused_projections(self) -> bool {
        self == Arch::Phi3
    }

    /// Each query and key head is RMS-normalized before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Longest sequence the model was trained for.
    pub max_context: usize,
    pub rms_eps: f32,
    pub rope: RopeConfig,
    /// q/k/v projections carry biases (Qwen2).
    pub attn_bias: bool,
    /// What q·k is multiplied by before the softmax: 1/√head_dim unless the family says
    /// otherwise (Gemma's `query_pre_attn_scalar`).
    pub attn_scale: f32,
    /// `cap · tanh(score / cap)` of every attention score (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `cap · tanh(logit / cap)` of every output logit (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Each layer's attention window: a query at position q sees the keys at positions k with
    /// `q - k < window`; `None` sees every earlier position. One entry per layer.
    pub windows: Vec<Option<usize>>,
    /// RoPE of the sliding-window layers, where it differs from `rope` (Gemma 3's local base).
    pub rope_local: Option<RopeConfig>,
    pub special: SpecialTokens,
}

/// Most layers a model may declare: far above any real model's (a few hundred), and low enough
/// that per-layer tables of a corrupt file's count are small.
const MAX_LAYERS: usize = 1 << 16;

/// `n` layers, checked before anything is allocated per layer.
fn layer_count(n: usize) -> Result<usize> {
    if n > MAX_LAYERS {
        return Err(config_err!(
            "model config: {n} layers is more than the {MAX_LAYERS} llmcad accepts"
        ));
    }
    Ok(n)
}

/// The window of each layer of a Gemma model whose file does not list the layer kinds:
/// Gemma 2 alternates (even layers slide), Gemma 3 slides in all but every `pattern`-th layer.
fn gemma_windows(arch: Arch, n_layers: usize, window: usize, pattern: usize) -> Vec<Option<usize>> {
    (0..n_layers)
        .map(|il| {
            let sliding = match arch {
                Arch::Gemma2 => il % 2 == 0,
                _ => (il + 1) % pattern.max(1) != 0,
            };
            sliding.then_some(window)
        })
        .collect()
}

impl ModelConfig {
    /// Phi-3 attends over a sliding window of 2047 tokens in every layer, which full attention
    /// matches exactly as long as the context fits it, so its context is limited to the window.
    /// (Gemma's and Mistral v0.1's windows are applied as layer windows instead.)
    fn limit_to_window(&mut self, window: usize) {
        if self.arch == Arch::Phi3 && window < self.max_context {
            log::info!(
                "{}: the context is limited to the sliding window of {window} tokens",
                self.arch.name()
            );
            self.max_context = window;
        }
    }

    /// The RoPE of `layer`.
    pub fn rope_of_layer(&self, layer: usize) -> &RopeConfig {
        self.ropes()[self.rope_index(layer)]
    }

    /// Every distinct RoPE, global first; [`Self::rope_index`] picks a layer's.
    pub fn ropes(&self) -> Vec<&RopeConfig> {
        std::iter::once(&self.rope)
            .chain(&self.rope_local)
            .collect()
    }

    /// Index of `layer`'s RoPE in [`Self::ropes`]: its own for a sliding-window layer of a
    /// family that has one.
    pub fn rope_index(&self, layer: usize) -> usize {
        usize::from(self.rope_local.is_some() && self.windows[layer].is_some())
    }

    /// How `layer` attends.
    pub fn attention(&self, layer: usize) -> LayerAttention {
        LayerAttention {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: self.attn_scale,
            softcap: self.attn_softcap,
            window: self.windows[layer],
        }
    }

    /// What the embeddings are multiplied by before the first layer (Gemma's √hidden).
    pub fn embed_scale(&self) -> Option<f32> {
        self.arch.gemma().then(|| (self.hidden as f32).sqrt())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Checks the numbers are usable, so later code may rely on them.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("layers", self.n_layers),
            ("hidden size", self.hidden),
            ("feed-forward size", self.ffn),
            ("attention heads", self.n_heads),
            ("key/value heads", self.n_kv_heads),
            ("head dimension", self.head_dim),
            ("vocabulary size", self.vocab),
            ("context length", self.max_context),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(config_err!("model config: {what} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(config_err!(
                "model config: {} attention heads is not a multiple of {} key/value heads",
                self.n_heads,
                self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2)
            || self.rope.dims > self.head_dim
            || !self.rope.dims.is_multiple_of(2)
        {
            return Err(config_err!(
                "model config: head dimension {} / rotary dimension {} must be even",
                self.head_dim,
                self.rope.dims
            ));
        }
        let positive = |f: &f32| f.is_finite() && *f > 0.0;
        if !(self.ropes().iter().all(|r| positive(&r.theta)) && self.rms_eps >= 0.0) {
            return Err(config_err!("model config: bad rope theta or rms epsilon"));
        }
        if self.ropes().iter().any(|r| !r.scaling_ok()) {
            return Err(config_err!(
                "model config: RoPE scaling factors must be positive and finite"
            ));
        }
        if self.windows.len() != self.n_layers || self.windows.contains(&Some(0)) {
            return Err(config_err!(
                "model config: {} attention windows for {} layers (a window may not be 0)",
                self.windows.len(),
                self.n_layers
            ));
        }
        let caps = [self.attn_softcap, self.final_softcap];
        if !(positive(&self.attn_scale) && caps.iter().flatten().all(positive)) {
            return Err(config_err!(
                "model config: the attention scale and soft-caps must be positive and finite"
            ));
        }
        Ok(())
    }

    /// Reads the `<arch>.*` keys of a GGUF file (special tokens are filled by the loader,
    /// which knows the vocabulary).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g
            .get_str("general.architecture")?
            .ok_or_else(|| config_err!("GGUF has no general.architecture"))?;
        let (arch, layout) = match arch_name {
            "llama" => (Arch::Llama, RopeLayout::Interleaved),
            "qwen2" => (Arch::Qwen2, RopeLayout::HalfSplit),
            "qwen3" => (Arch::Qwen3, RopeLayout::HalfSplit),
            "phi3" => (Arch::Phi3, RopeLayout::HalfSplit),
            "gemma2" => (Arch::Gemma2, RopeLayout::HalfSplit),
            "gemma3" => (Arch::Gemma3, RopeLayout::HalfSplit),
            other => {
                return Err(crate::error::unsupported!(
                    "GGUF architecture {other:?}; llmcad runs \"llama\" (Llama 2/3, Mistral, \
                     SmolLM, TinyLlama), \"qwen2\", \"qwen3\", \"phi3\", \"gemma2\" and \"gemma3\""
                ))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            g.get_u64(&key(k))?
                .map(|v| v as usize)
                .ok_or_else(|| config_err!("GGUF metadata {} is missing", key(k)))
        };
        let hidden = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = g
            .get_u64(&key("attention.head_count_kv"))?
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = match g.get_u64(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        let rope_dims = g
            .get_u64(&key("rope.dimension_count"))?
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        let scaling = match g.get_str(&key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: g.get_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0) as f32,
            },
            Some(other) => {
                return Err(crate::error::unsupported!("RoPE scaling type {other:?}"));
            }
        };
        let vocab = match g.get_u64(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => g
                .get_array("tokenizer.ggml.tokens")?
                .map(|a| a.len())
                .ok_or_else(|| {
                    config_err!("GGUF has neither {} nor a token list", key("vocab_size"))
                })?,
        };
        let n_layers = layer_count(req("block_count")?)?;
        let opt_f32 =
            |k: &str| -> Result<Option<f32>> { Ok(g.get_f64(&key(k))?.map(|v| v as f32)) };
        let window = g
            .get_u64(&key("attention.sliding_window"))?
            .filter(|&w| w > 0)
            .map(|w| w as usize);
        let (windows, rope_local) = match (arch.gemma(), window) {
            (true, Some(window)) => {
                // the converter writes neither the layer pattern nor (before Gemma 3) a local
                // base; these are llama.cpp's defaults
                let pattern = g
                    .get_u64(&key("attention.sliding_window_pattern"))?
                    .map_or(6, |p| p as usize);
                let local = (arch == Arch::Gemma3).then(|| -> Result<RopeConfig> {
                    Ok(RopeConfig {
                        theta: opt_f32("rope.freq_base_swa")?.unwrap_or(10000.0),
                        layout,
                        dims: rope_dims,
                        scaling: RopeScaling::None,
                    })
                });
                (
                    gemma_windows(arch, n_layers, window, pattern),
                    local.transpose()?,
                )
            }
            _ => (vec![None; n_layers], None),
        };
        // Gemma files from llama.cpp's converter carry no query scale: llama.cpp uses
        // 1/√head_dim, or 1/√(hidden/heads) for the 27B sizes (which it knows by layer count)
        let big_gemma = matches!((arch, n_layers), (Arch::Gemma2, 46) | (Arch::Gemma3, 62));
        let scale_dim = if big_gemma {
            hidden / n_heads.max(1)
        } else {
            head_dim
        };
        let mut cfg = ModelConfig {
            arch,
            n_layers,
            hidden,
            ffn: req("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            max_context: req("context_length")?,
            rms_eps: g
                .get_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5) as f32,
            rope: RopeConfig {
                theta: g.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
                layout,
                dims: rope_dims,
                scaling,
            },
            attn_bias: arch == Arch::Qwen2,
            attn_scale: opt_f32("attention.scale")?
                .unwrap_or_else(|| 1.0 / (scale_dim as f32).sqrt()),
            attn_softcap: opt_f32("attn_logit_softcapping")?,
            final_softcap: opt_f32("final_logit_softcapping")?,
            windows,
            rope_local,
            special: SpecialTokens::default(),
        };
        if let Some(window) = window {
            cfg.limit_to_window(window);
        }
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf(config: &Json) -> Result<Self> {
        let arch_name = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Json::as_str)
            .or_else(|| config.get("model_type").and_then(Json::as_str))
            .ok_or_else(|| config_err!("config.json: no \"architectures\" or \"model_type\""))?;
        let arch = match arch_name {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            "Phi3ForCausalLM" | "phi3" => Arch::Phi3,
            "Gemma2ForCausalLM" | "gemma2" => Arch::Gemma2,
            "Gemma3ForCausalLM" | "gemma3_text" => Arch::Gemma3,
            other => {
                return Err(crate::error::unsupported!(
                    "config.json architecture {other:?}; llmcad runs LlamaForCausalLM, \
                     MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, \
                     Gemma2ForCausalLM and Gemma3ForCausalLM (text)"
                ))
            }
        };
        let get = |k: &str| config.get(k).filter(|v| !v.is_null());
        let req = |k: &str| -> Result<usize> {
            get(k)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| config_err!("config.json: missing or invalid \"{k}\""))
        };
        let opt_f = |k: &str, default: f64| get(k).and_then(Json::as_f64).unwrap_or(default);
        let hidden = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let n_kv_heads = match get("num_key_value_heads") {
            Some(_) => req("num_key_value_heads")?,
            None => n_heads,
        };
        let head_dim = match get("head_dim") {
            Some(_) => req("head_dim")?,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        // transformers 5 writes the theta and the scaling together as "rope_parameters" (for
        // Gemma 3, one per layer kind); earlier versions wrote "rope_theta" and "rope_scaling"
        // (and Gemma 3's "rope_local_base_freq")
        let params = get("rope_parameters");
        let (global, local) = match params.and_then(|p| p.get("full_attention")) {
            Some(full) => (Some(full), params.and_then(|p| p.get("sliding_attention"))),
            None => (params.or_else(|| get("rope_scaling")), None),
        };
        let theta = |p: Option<&Json>, legacy: &str| {
            p.and_then(|p| p.get("rope_theta"))
                .and_then(Json::as_f64)
                .unwrap_or_else(|| opt_f(legacy, 10000.0)) as f32
        };
        let rope = RopeConfig {
            theta: theta(global, "rope_theta"),
            layout: RopeLayout::HalfSplit,
            dims: head_dim,
            scaling: global.map_or(Ok(RopeScaling::None), |s| hf_rope_scaling(s, config))?,
        };
        let n_layers = layer_count(req("num_hidden_layers")?)?;
        // some configs write 0 for "no window", as GGUF files do
        let window = get("sliding_window")
            .and_then(Json::as_u64)
            .filter(|&w| w > 0)
            .map(|w| w as usize);
        let (windows, rope_local) = match (arch, window) {
            (Arch::Gemma2 | Arch::Gemma3, Some(window)) => {
                let kinds = get("layer_types").and_then(Json::as_array);
                let windows = match kinds {
                    Some(kinds) => kinds
                        .iter()
                        .map(|k| (k.as_str() == Some("sliding_attention")).then_some(window))
                        .collect(),
                    None => {
                        let pattern = get("sliding_window_pattern")
                            .and_then(Json::as_u64)
                            .map_or(6, |p| p as usize);
                        gemma_windows(arch, n_layers, window, pattern)
                    }
                };
                let local = (arch == Arch::Gemma3).then(|| -> Result<RopeConfig> {
                    Ok(RopeConfig {
                        theta: theta(local, "rope_local_base_freq"),
                        scaling: local
                            .map_or(Ok(RopeScaling::None), |s| hf_rope_scaling(s, config))?,
                        ..rope.clone()
                    })
                });
                (windows, local.transpose()?)
            }
            // Mistral v0.1 slides every layer (later versions set no window)
            (Arch::Mistral, Some(window)) => (vec![Some(window); n_layers], None),
            _ => (vec![None; n_layers], None),
        };
        let attn_scale = match get("query_pre_attn_scalar").and_then(Json::as_f64) {
            Some(s) if arch.gemma() => (1.0 / s.sqrt()) as f32,
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let softcap = |k: &str| get(k).and_then(Json::as_f64).map(|v| v as f32);
        let mut cfg = ModelConfig {
            arch,
            n_layers,
            hidden,
            ffn: req("intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab: req("vocab_size")?,
            max_context: req("max_position_embeddings")?,
            rms_eps: opt_f("rms_norm_eps", 1e-6) as f32,
            rope,
            attn_bias: arch == Arch::Qwen2
                || get("attention_bias")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            attn_scale,
            attn_softcap: softcap("attn_logit_softcapping"),
            final_softcap: softcap("final_logit_softcapping"),
            windows,
            rope_local,
            special: SpecialTokens::default(),
        };
        if let Some(window) = window {
            cfg.limit_to_window(window);
        }
        Ok(cfg)
    }
}

/// The RoPE scaling a Hugging Face config describes in `s` (its "rope_parameters", or one
/// layer kind's, or the older "rope_scaling").
fn hf_rope_scaling(s: &Json, config: &Json) -> Result<RopeScaling> {
    let ty = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let f = |k: &str| -> Result<f32> {
        s.get(k)
            .and_then(Json::as_f64)
            .map(|v| v as f32)
            .ok_or_else(|| config_err!("config.json: rope scaling needs \"{k}\""))
    };
    let factors = |k: &str| -> Result<Vec<f32>> {
        s.get(k)
            .and_then(Json::as_array)
            .and_then(|a| a.iter().map(|v| v.as_f64().map(|v| v as f32)).collect())
            .ok_or_else(|| config_err!("config.json: rope scaling needs \"{k}\""))
    };
    Ok(match ty {
        "default" => RopeScaling::None,
        "longrope" | "su" => {
            let original = s
                .get("original_max_position_embeddings")
                .or_else(|| config.get("original_max_position_embeddings"))
                .and_then(Json::as_u64)
                .ok_or_else(|| {
                    config_err!("config.json: LongRoPE needs \"original_max_position_embeddings\"")
                })? as f32;
            let max = config
                .get("max_position_embeddings")
                .and_then(Json::as_u64)
                .ok_or_else(|| config_err!("config.json: missing \"max_position_embeddings\""))?;
            // transformers' default attention factor, from how far the context grew
            let grown = max as f32 / original;
            let attn_factor = match s.get("attention_factor").and_then(Json::as_f64) {
                Some(f) => f as f32,
                None if grown <= 1.0 => 1.0,
                None => (1.0 + grown.ln() / original.ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short: factors("short_factor")?,
                long: factors("long_factor")?,
                original_context: original as usize,
                attn_factor,
            }
        }
        "linear" => RopeScaling::Linear {
            factor: f("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_context: f("original_max_position_embeddings")?,
        },
        other => {
            return Err(crate::error::unsupported!(
                "config.json: rope scaling type {other:?}"
            ))
        }
    })
}

/// Token ids named by a JSON field that may be one id or a list of ids.
pub fn json_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_u64)
            .map(|id| id as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(extra: Json) -> Result<ModelConfig> {
        let mut c = serde_json::json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "vocab_size": 100, "max_position_embeddings": 256,
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ModelConfig::from_hf(&c)
    }

    /// transformers 4 wrote Gemma 3's layer kinds as a pattern and its local base apart; the
    /// global base's linear scaling is not the local layers'.
    #[test]
    fn gemma3_config_from_transformers_4() {
        let c = hf(serde_json::json!({
            "architectures": ["Gemma3ForCausalLM"], "sliding_window": 512,
            "sliding_window_pattern": 3, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "query_pre_attn_scalar": 256,
        }))
        .unwrap();
        let w = Some(512);
        assert_eq!(c.windows, [w, w, None, w, w, None]);
        assert_eq!(c.attn_scale, 1.0 / 16.0);
        assert_eq!(c.rope.theta, 1e6);
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 8.0 });
        let local = c.rope_of_layer(0);
        assert_eq!((local.theta, &local.scaling), (1e4, &RopeScaling::None));
        assert_eq!(c.rope_of_layer(2).theta, 1e6);
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
    }

    /// Gemma 2 without "layer_types" alternates, sliding first, and soft-caps.
    #[test]
    fn gemma2_config_without_layer_kinds() {
        let c = hf(serde_json::json!({
            "architectures": ["Gemma2ForCausalLM"], "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        }))
        .unwrap();
        let w = Some(4096);
        assert_eq!(c.windows, [w, None, w, None, w, None]);
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert!(c.rope_local.is_none());
        // no query_pre_attn_scalar: 1/√head_dim
        assert_eq!(c.attn_scale, 0.25);
    }

    /// Mistral v0.1 slides every layer (a window of 0 is none); Qwen2 configs name a window
    /// they do not use.
    #[test]
    fn only_families_that_slide_get_windows() {
        let mistral = hf(serde_json::json!({
            "architectures": ["MistralForCausalLM"], "sliding_window": 64,
        }))
        .unwrap();
        assert_eq!(mistral.windows, [Some(64); 6]);
        let unwindowed = hf(serde_json::json!({
            "architectures": ["MistralForCausalLM"], "sliding_window": 0,
        }))
        .unwrap();
        assert_eq!(unwindowed.windows, [None; 6]);
        let qwen = hf(serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "sliding_window": 64,
            "use_sliding_window": false,
        }))
        .unwrap();
        assert_eq!(qwen.windows, [None; 6]);
    }

    /// A corrupt file's layer count is refused before per-layer tables are allocated (the
    /// fuzzer found a GGUF declaring 2^32 - 1 layers).
    #[test]
    fn absurd_layer_counts_are_refused_up_front() {
        let e = hf(serde_json::json!({
            "architectures": ["Gemma2ForCausalLM"], "num_hidden_layers": u32::MAX,
            "sliding_window": 8,
        }))
        .unwrap_err();
        assert!(e.to_string().contains("4294967295 layers"), "{e}");
    }

    #[test]
    fn bad_attention_settings_are_refused() {
        for extra in [
            serde_json::json!({"architectures": ["Gemma2ForCausalLM"], "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"]}),
            serde_json::json!({"architectures": ["Gemma2ForCausalLM"],
                "attn_logit_softcapping": -1.0}),
            serde_json::json!({"architectures": ["Gemma2ForCausalLM"],
                "query_pre_attn_scalar": 0.0}),
        ] {
            let c = hf(extra.clone()).unwrap();
            assert!(c.validate().is_err(), "{extra}");
        }
    }
}
