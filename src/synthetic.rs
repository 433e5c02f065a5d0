//! Tiny random models for fast tests and synthetic benchmark models: a Llama-shaped decoder
//! with random weights and a small byte-level BPE vocabulary, written as GGUF and as a Hugging
//! Face directory describing the same function (q/k rows permuted for GGUF's RoPE layout).

use crate::error::Result;
use crate::export::{write_gguf, write_hf_dir, F32Tensor, Vocabulary};
use crate::format::gguf::Value;
use crate::model::{Arch, ModelConfig, RopeConfig, RopeLayout, RopeScaling, SpecialTokens};
use crate::quant::DType;
use crate::sampling::SamplerRng;
use std::path::{Path, PathBuf};

/// Shape and seed of a synthetic model.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub tied: bool,
    pub seed: u64,
    /// Rows of the embedding table beyond the tokenizer's (0 for the tiny vocabulary; large
    /// synthetic models pad it to a realistic vocabulary size).
    pub extra_vocab: usize,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            arch: Arch::Llama,
            n_layers: 3,
            hidden: 64,
            ffn: 128,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            context: 512,
            tied: true,
            seed: 1,
            extra_vocab: 0,
        }
    }
}

/// The three special tokens of the tiny vocabulary (ids 0, 1, 2, as in SmolLM2).
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges of the tiny BPE, applied in order on top of the 256 byte tokens.
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("a", "n"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "a"),
    ("r", "e"),
    ("Ġ", "s"),
    ("a", "t"),
    ("e", "n"),
    ("Ġ", "o"),
    ("Ġ", "c"),
    ("i", "s"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "w"),
    ("i", "t"),
    ("Ġ", "b"),
    ("a", "l"),
    ("Ġ", "f"),
    ("Ġ", "p"),
    ("in", "g"),
    ("Ġ", "m"),
    ("e", "d"),
    ("Ġo", "f"),
    ("Ġa", "n"),
    ("Ġan", "d"),
    ("Ġ", "i"),
    ("o", "u"),
    ("Ġ", "h"),
    ("l", "e"),
    ("Ġt", "o"),
    ("Ġ", "d"),
    ("a", "r"),
    ("Ġ", "l"),
    ("Ġi", "n"),
    ("Ġ", "n"),
    ("Ġ", "Ġ"),
    ("ĠĠ", "ĠĠ"),
    ("Ċ", "Ċ"),
];

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
    message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte → printable character map used by byte-level BPE vocabularies.
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// The tiny vocabulary: specials, 256 byte tokens, then one token per merge.
pub fn tiny_tokens() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| byte_to_char(b).to_string()));
    let mut merges = Vec::new();
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
        merges.push(format!("{a} {b}"));
    }
    (tokens, merges)
}

/// Tokenizer files for the tiny vocabulary, in both formats (`smollm` pre-tokenizer: single
/// digits, then GPT-2's byte-level split).
pub fn tiny_vocabulary() -> Vocabulary {
    let (tokens, merges) = tiny_tokens();
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, s)| {
            serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    let merge_pairs: Vec<[&str; 2]> = MERGES.iter().map(|(a, b)| [*a, *b]).collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merge_pairs},
    });
    let types: Vec<Value> = (0..tokens.len())
        .map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 }))
        .collect();
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    Vocabulary {
        tokenizer_json: serde_json::to_string(&tokenizer).unwrap(),
        gguf_metadata: vec![
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), strings(&tokens)),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), strings(&merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ],
        chat_template: Some(CHATML.to_string()),
        bos: Some(SPECIALS[1].into()),
        eos: Some(SPECIALS[2].into()),
    }
}

/// Published models whose shape a synthetic model can take: a name, its architecture, layers,
/// hidden size, FFN size, heads, KV heads, head size and vocabulary.
const PRESETS: &[(&str, Arch, [usize; 7])] = &[
    (
        "qwen2.5-1.5b",
        Arch::Qwen2,
        [28, 1536, 8960, 12, 2, 128, 151_936],
    ),
    (
        "qwen2.5-0.5b",
        Arch::Qwen2,
        [24, 896, 4864, 14, 2, 64, 151_936],
    ),
    (
        "smollm2-135m",
        Arch::Llama,
        [30, 576, 1536, 9, 3, 64, 49_152],
    ),
];

impl TinySpec {
    /// The shape of a published model (`qwen2.5-1.5b`, `qwen2.5-0.5b`, `smollm2-135m`) with
    /// random weights and the tiny vocabulary padded to the model's: for speed measurements
    /// where the real file cannot travel (a lent GPU machine, a phone). Tokens, not times, differ.
    pub fn preset(name: &str, seed: u64) -> Option<TinySpec> {
        let (_, arch, [n_layers, hidden, ffn, n_heads, n_kv_heads, head_dim, vocab]) =
            *PRESETS.iter().find(|p| p.0 == name)?;
        Some(TinySpec {
            arch,
            n_layers,
            hidden,
            ffn,
            n_heads,
            n_kv_heads,
            head_dim,
            context: 32_768,
            tied: true,
            seed,
            extra_vocab: vocab - tiny_tokens().0.len(),
        })
    }

    /// Names of the presets.
    pub fn preset_names() -> impl Iterator<Item = &'static str> {
        PRESETS.iter().map(|p| p.0)
    }

    pub fn vocab_size(&self) -> usize {
        tiny_tokens().0.len() + self.extra_vocab
    }

    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            arch: self.arch,
            n_layers: self.n_layers,
            hidden: self.hidden,
            ffn: self.ffn,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            vocab: self.vocab_size(),
            max_context: self.context,
            rms_eps: 1e-5,
            rope: RopeConfig {
                theta: 10000.0,
                layout: RopeLayout::HalfSplit,
                dims: self.head_dim,
                scaling: RopeScaling::None,
            },
            attn_bias: self.arch == Arch::Qwen2,
            attn_scale: 1.0 / (self.head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            windows: vec![None; self.n_layers],
            rope_local: None,
            special: SpecialTokens {
                bos: Some(1),
                eos: Some(2),
                stop: vec![2],
                add_bos: false,
            },
        }
    }

    /// Random weights in HF naming. Scales keep activations O(1) and make the next-token
    /// distribution peaked, like a trained model's, so greedy decoding has clear winners.
    pub fn tensors(&self) -> Vec<F32Tensor> {
        let c = self.config();
        let mut g = Gaussian(SamplerRng::new(self.seed));
        let (h, q, kv, ffn) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
        let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
        let mut out = vec![g.tensor("model.embed_tokens.weight".into(), &[c.vocab, h], 1.0)];
        for i in 0..c.n_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            out.push(g.norm(p("input_layernorm.weight"), h));
            out.push(g.tensor(p("self_attn.q_proj.weight"), &[q, h], 2.0 * inv_sqrt(h)));
            out.push(g.tensor(p("self_attn.k_proj.weight"), &[kv, h], 2.0 * inv_sqrt(h)));
            out.push(g.tensor(p("self_attn.v_proj.weight"), &[kv, h], inv_sqrt(h)));
            out.push(g.tensor(p("self_attn.o_proj.weight"), &[h, q], inv_sqrt(q)));
            if c.attn_bias {
                for (n, len) in [("q", q), ("k", kv), ("v", kv)] {
                    out.push(g.tensor(p(&format!("self_attn.{n}_proj.bias")), &[len], 0.1));
                }
            }
            out.push(g.norm(p("post_attention_layernorm.weight"), h));
            out.push(g.tensor(p("mlp.gate_proj.weight"), &[ffn, h], inv_sqrt(h)));
            out.push(g.tensor(p("mlp.up_proj.weight"), &[ffn, h], inv_sqrt(h)));
            out.push(g.tensor(p("mlp.down_proj.weight"), &[h, ffn], inv_sqrt(ffn)));
        }
        out.push(F32Tensor {
            name: "model.norm.weight".into(),
            shape: vec![h],
            data: vec![1.0; h],
        });
        if !self.tied {
            out.push(g.tensor("lm_head.weight".into(), &[c.vocab, h], 1.0));
        }
        out
    }
}

/// Normal random numbers (Box–Muller over the sampler's generator).
struct Gaussian(SamplerRng);

impl Gaussian {
    /// Draws the uniforms in order and transforms them on every core: the same numbers as one
    /// serial loop, in a fraction of the time for a billion-parameter preset.
    fn tensor(&mut self, name: String, shape: &[usize], std: f32) -> F32Tensor {
        const CHUNK: usize = 1 << 20;
        let len: usize = shape.iter().product();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut data = vec![0f32; len];
        let mut uniforms = Vec::with_capacity(CHUNK.min(len));
        for out in data.chunks_mut(CHUNK) {
            uniforms.clear();
            for _ in 0..out.len() {
                uniforms.push((self.0.uniform().max(1e-12), self.0.uniform()));
            }
            let per = out.len().div_ceil(threads);
            std::thread::scope(|s| {
                for (o, u) in out.chunks_mut(per).zip(uniforms.chunks(per)) {
                    s.spawn(move || {
                        for (v, &(u1, u2)) in o.iter_mut().zip(u) {
                            let r = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                            *v = r as f32 * std;
                        }
                    });
                }
            });
        }
        F32Tensor {
            name,
            shape: shape.to_vec(),
            data,
        }
    }

    /// A norm weight near 1.
    fn norm(&mut self, name: String, n: usize) -> F32Tensor {
        let mut t = self.tensor(name, &[n], 0.1);
        t.data.iter_mut().for_each(|v| *v += 1.0);
        t
    }
}

/// A drafter for `target`: the same embeddings and head, the first `layers` blocks, each weight
/// perturbed by relative `noise`, so that it agrees with the target often but not always.
pub fn derive_drafter(
    target: &[F32Tensor],
    layers: usize,
    noise: f32,
    seed: u64,
) -> Vec<F32Tensor> {
    let mut rng = SamplerRng::new(seed);
    target
        .iter()
        .filter(|t| {
            t.name
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|l| l.parse::<usize>().ok())
                .is_none_or(|l| l < layers)
        })
        .map(|t| {
            let keep = t.name.contains("embed_tokens") || t.name == "lm_head.weight";
            let data = if keep {
                t.data.clone()
            } else {
                t.data
                    .iter()
                    .map(|&v| v * (1.0 + noise * (2.0 * rng.uniform() as f32 - 1.0)))
                    .collect()
            };
            F32Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data,
            }
        })
        .collect()
}

/// Paths of a written tiny model.
pub struct TinyModel {
    pub gguf: PathBuf,
    pub hf_dir: PathBuf,
}

/// Writes `tensors` (a model of shape `cfg`) under `dir` as `<name>.gguf` (matrices in
/// `gguf_dtype`) and `<name>-hf/` (matrices in `hf_dtype`).
pub fn write_model(
    dir: &Path,
    name: &str,
    cfg: &ModelConfig,
    tensors: &[F32Tensor],
    gguf_dtype: DType,
    hf_dtype: DType,
) -> Result<TinyModel> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let vocab = tiny_vocabulary();
    let gguf = dir.join(format!("{name}.gguf"));
    write_gguf(&gguf, cfg, name, tensors, gguf_dtype, &vocab)?;
    let hf_dir = dir.join(format!("{name}-hf"));
    write_hf_dir(&hf_dir, cfg, tensors, hf_dtype, &vocab)?;
    Ok(TinyModel { gguf, hf_dir })
}

/// Writes the tiny model of `spec` in both formats.
pub fn write_tiny(
    dir: &Path,
    name: &str,
    spec: &TinySpec,
    gguf_dtype: DType,
    hf_dtype: DType,
) -> Result<TinyModel> {
    write_model(
        dir,
        name,
        &spec.config(),
        &spec.tensors(),
        gguf_dtype,
        hf_dtype,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of a preset's weights, counted from its config as `tensors()` lays them out.
    fn parameters(spec: &TinySpec) -> usize {
        let c = spec.config();
        let (h, q, kv) = (c.hidden, c.q_dim(), c.kv_dim());
        let bias = if c.attn_bias { q + 2 * kv } else { 0 };
        let layer = 2 * h + 2 * q * h + 2 * kv * h + bias + 3 * c.ffn * h;
        c.vocab * h + c.n_layers * layer + h
    }

    /// The presets have the published models' sizes (tied embeddings): 1.54B, 0.49B, 134.5M.
    #[test]
    fn presets_have_the_published_sizes() {
        for (name, published) in [
            ("qwen2.5-1.5b", 1_543_714_304),
            ("qwen2.5-0.5b", 494_032_768),
            ("smollm2-135m", 134_515_008),
        ] {
            let spec = TinySpec::preset(name, 1).unwrap();
            assert_eq!(parameters(&spec), published, "{name}");
        }
        assert_eq!(TinySpec::preset_names().count(), 3);
        assert!(TinySpec::preset("qwen2.5-7b", 1).is_none());
    }
}
