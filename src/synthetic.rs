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

impl TinySpec {
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
    fn tensor(&mut self, name: String, shape: &[usize], std: f32) -> F32Tensor {
        let data = (0..shape.iter().product())
            .map(|_| {
                let (u1, u2) = (self.0.uniform().max(1e-12), self.0.uniform());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
            })
            .collect();
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
