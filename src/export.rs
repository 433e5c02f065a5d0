//! Writing models: a set of f32 tensors in Hugging Face naming and layout becomes a GGUF file
//! (q/k rows permuted for GGUF's interleaved RoPE, as llama.cpp's converter does) or a
//! Hugging Face directory. Used for the tiny test models and by `llmcad convert`.

use crate::error::{format_err, Error, Result};
use crate::format::gguf::Value;
use crate::format::gguf_write::{GgufWriter, TensorOut};
use crate::model::{Arch, ModelConfig};
use crate::quant::{quantize_row, DType};
use std::path::Path;

/// A tensor in Hugging Face naming and layout (`[out, in]` for linear layers).
pub struct F32Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a file needs besides the weights: tokenizer and chat template.
pub struct Vocabulary {
    /// `tokenizer.json` text (Hugging Face directories).
    pub tokenizer_json: String,
    /// GGUF `tokenizer.ggml.*` metadata.
    pub gguf_metadata: Vec<(String, Value)>,
    pub chat_template: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
}

/// Reorders q/k rows from rotate-half to interleaved RoPE: `W.reshape(n, 2, d/2, in)
/// .swapaxes(1, 2)` per head; `inverse` undoes it.
pub fn permute_qk(w: &[f32], rows: usize, cols: usize, heads: usize, inverse: bool) -> Vec<f32> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // rotate-half row (j, i) ↔ interleaved row (i, j)
                let hf = h * hd + j * half + i;
                let gg = h * hd + i * 2 + j;
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Maps an HF tensor name to its GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// Phi-3 stores q/k/v and gate/up fused, and its LongRoPE factors as tensors: not written yet.
/// The families `convert` writes: those whose tensors need no renaming or refolding.
fn not_written(arch: Arch) -> Error {
    Error::Unsupported(format!(
        "llmcad convert does not write {} models yet",
        arch.name()
    ))
}

fn encode(dtype: DType, t: &F32Tensor) -> (DType, Vec<u8>) {
    // 1-D tensors (norms, biases) stay F32; rows that do not fill a K-quant's super-blocks take
    // the 32-wide type llama.cpp falls back to, and F32 where even that does not fit
    let cols = *t.shape.last().unwrap_or(&1);
    let fits = |d: DType| cols.is_multiple_of(d.block_len());
    let dtype = match dtype {
        _ if t.shape.len() < 2 => DType::F32,
        d if fits(d) => d,
        DType::Q2_K | DType::Q3_K if fits(DType::Q4_0) => DType::Q4_0,
        DType::Q4_K if fits(DType::Q5_0) => DType::Q5_0,
        DType::Q5_K if fits(DType::Q5_1) => DType::Q5_1,
        DType::Q6_K | DType::Q8_K if fits(DType::Q8_0) => DType::Q8_0,
        _ => DType::F32,
    };
    (dtype, quantize_rows(dtype, &t.data, cols))
}

/// Quantizes whole rows of `cols` values, split over the machine's cores (a 1.5B model's
/// matrices take minutes on one).
fn quantize_rows(dtype: DType, data: &[f32], cols: usize) -> Vec<u8> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows = data.len() / cols.max(1);
    let chunk = rows.div_ceil(threads).max(64) * cols.max(1);
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let jobs: Vec<_> = data
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut bytes = Vec::with_capacity(dtype.row_bytes(part.len()));
                    quantize_row(dtype, part, &mut bytes);
                    bytes
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    parts.concat()
}

/// Writes a GGUF `llama` (or `qwen2`) file with matrices in `dtype`.
pub fn write_gguf(
    path: &Path,
    cfg: &ModelConfig,
    name: &str,
    tensors: &[F32Tensor],
    dtype: DType,
    vocab: &Vocabulary,
) -> Result<()> {
    let arch = match cfg.arch {
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
        Arch::Llama | Arch::Mistral => "llama",
        a @ (Arch::Phi3 | Arch::Gemma2 | Arch::Gemma3) => return Err(not_written(a)),
    };
    let mut w = GgufWriter::default();
    let k = |s: &str| format!("{arch}.{s}");
    w.meta("general.architecture", Value::String(arch.into()))
        .meta("general.name", Value::String(name.into()))
        .meta(&k("block_count"), Value::U32(cfg.n_layers as u32))
        .meta(&k("context_length"), Value::U32(cfg.max_context as u32))
        .meta(&k("embedding_length"), Value::U32(cfg.hidden as u32))
        .meta(&k("feed_forward_length"), Value::U32(cfg.ffn as u32))
        .meta(&k("attention.head_count"), Value::U32(cfg.n_heads as u32))
        .meta(
            &k("attention.head_count_kv"),
            Value::U32(cfg.n_kv_heads as u32),
        )
        .meta(&k("attention.key_length"), Value::U32(cfg.head_dim as u32))
        .meta(
            &k("attention.value_length"),
            Value::U32(cfg.head_dim as u32),
        )
        .meta(&k("rope.freq_base"), Value::F32(cfg.rope.theta))
        .meta(&k("rope.dimension_count"), Value::U32(cfg.rope.dims as u32))
        .meta(
            &k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_eps),
        )
        .meta(&k("vocab_size"), Value::U32(cfg.vocab as u32));
    for (key, v) in &vocab.gguf_metadata {
        w.meta(key, v.clone());
    }
    if let Some(t) = &vocab.chat_template {
        w.meta("tokenizer.chat_template", Value::String(t.clone()));
    }
    let interleave = arch == "llama";
    for t in tensors {
        let gname =
            gguf_name(&t.name).ok_or_else(|| format_err!("no GGUF name for tensor {}", t.name))?;
        let permuted;
        let src = if interleave && gname.ends_with("attn_q.weight") {
            permuted = permute_qk(&t.data, t.shape[0], t.shape[1], cfg.n_heads, false);
            F32Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: permuted,
            }
        } else if interleave && gname.ends_with("attn_k.weight") {
            permuted = permute_qk(&t.data, t.shape[0], t.shape[1], cfg.n_kv_heads, false);
            F32Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: permuted,
            }
        } else {
            F32Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            }
        };
        let (dt, data) = encode(dtype, &src);
        w.tensor(TensorOut {
            name: gname,
            dtype: dt,
            shape: src.shape,
            data,
        });
    }
    w.write(path)
}

/// Writes a Hugging Face directory: config.json, generation_config.json, tokenizer files and
/// model.safetensors with matrices in `dtype` (F32, F16 or BF16).
pub fn write_hf_dir(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &[F32Tensor],
    dtype: DType,
    vocab: &Vocabulary,
) -> Result<()> {
    let st_dtype = match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        other => {
            return Err(Error::InvalidArgument(format!(
                "safetensors cannot hold {other}"
            )))
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tied = !tensors.iter().any(|t| t.name == "lm_head.weight");
    let arch = match cfg.arch {
        Arch::Llama => "LlamaForCausalLM",
        Arch::Mistral => "MistralForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Qwen3 => "Qwen3ForCausalLM",
        a @ (Arch::Phi3 | Arch::Gemma2 | Arch::Gemma3) => return Err(not_written(a)),
    };
    let config = serde_json::json!({
        "architectures": [arch],
        "model_type": cfg.arch.name(),
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.max_context,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope.theta,
        "tie_word_embeddings": tied,
        "attention_bias": cfg.attn_bias,
        "bos_token_id": cfg.special.bos,
        "eos_token_id": cfg.special.eos,
        "torch_dtype": match dtype { DType::F32 => "float32", DType::F16 => "float16", _ => "bfloat16" },
    });
    let generation = serde_json::json!({
        "bos_token_id": cfg.special.bos,
        "eos_token_id": cfg.special.eos,
    });
    let mut tok_config = serde_json::json!({ "add_bos_token": cfg.special.add_bos });
    if let Some(t) = &vocab.chat_template {
        tok_config["chat_template"] = t.clone().into();
    }
    if let Some(b) = &vocab.bos {
        tok_config["bos_token"] = b.clone().into();
    }
    if let Some(e) = &vocab.eos {
        tok_config["eos_token"] = e.clone().into();
    }
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&config).unwrap(),
    )?;
    write(
        "generation_config.json",
        serde_json::to_string_pretty(&generation).unwrap(),
    )?;
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tok_config).unwrap(),
    )?;
    write("tokenizer.json", vocab.tokenizer_json.clone())?;

    let encoded: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = tensors
        .iter()
        .map(|t| {
            let (dt, st) = if t.shape.len() < 2 {
                (DType::F32, safetensors::Dtype::F32)
            } else {
                (dtype, st_dtype)
            };
            let mut bytes = Vec::new();
            quantize_row(dt, &t.data, &mut bytes);
            (t.name.clone(), t.shape.clone(), bytes, st)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(n, shape, bytes, dt)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| format_err!("tensor {n}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = dir.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path)
        .map_err(|e| format_err!("{}: {e}", path.display()))
}

/// Every weight of a loaded model as f32 tensors in HF naming and layout (GGUF q/k rows
/// un-permuted), for conversion.
pub fn model_tensors(m: &crate::model::Model) -> Vec<F32Tensor> {
    let c = &m.config;
    let w = &m.weights;
    let unpermute = m.format == crate::model::FileFormat::Gguf
        && c.rope.layout == crate::model::RopeLayout::Interleaved;
    let mat = |name: String, mx: &crate::model::Matrix, heads: Option<usize>| {
        let mut data = vec![0f32; mx.rows * mx.cols];
        for (r, row) in data.chunks_exact_mut(mx.cols).enumerate() {
            mx.dequantize_row(r, row);
        }
        if let (true, Some(h)) = (unpermute, heads) {
            data = permute_qk(&data, mx.rows, mx.cols, h, true);
        }
        F32Tensor {
            name,
            shape: vec![mx.rows, mx.cols],
            data,
        }
    };
    let vec1 = |name: String, v: &[f32]| F32Tensor {
        name,
        shape: vec![v.len()],
        data: v.to_vec(),
    };
    let mut out = vec![mat("model.embed_tokens.weight".into(), &w.embed, None)];
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        out.push(vec1(p("input_layernorm.weight"), &l.attn_norm));
        out.push(mat(p("self_attn.q_proj.weight"), &l.wq, Some(c.n_heads)));
        out.push(mat(p("self_attn.k_proj.weight"), &l.wk, Some(c.n_kv_heads)));
        out.push(mat(p("self_attn.v_proj.weight"), &l.wv, None));
        out.push(mat(p("self_attn.o_proj.weight"), &l.wo, None));
        if let Some(b) = &l.bias {
            out.push(vec1(p("self_attn.q_proj.bias"), &b.q));
            out.push(vec1(p("self_attn.k_proj.bias"), &b.k));
            out.push(vec1(p("self_attn.v_proj.bias"), &b.v));
        }
        if let Some(n) = &l.qk_norm {
            out.push(vec1(p("self_attn.q_norm.weight"), &n.q));
            out.push(vec1(p("self_attn.k_norm.weight"), &n.k));
        }
        out.push(vec1(p("post_attention_layernorm.weight"), &l.ffn_norm));
        out.push(mat(p("mlp.gate_proj.weight"), &l.w_gate, None));
        out.push(mat(p("mlp.up_proj.weight"), &l.w_up, None));
        out.push(mat(p("mlp.down_proj.weight"), &l.w_down, None));
    }
    out.push(vec1("model.norm.weight".into(), &w.norm));
    if !w.tied_head {
        out.push(mat("lm_head.weight".into(), &w.head, None));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_permutation_round_trips_and_matches_the_readme_formula() {
        // 2 heads of dim 4, 3 columns: rows r hold value r in every column
        let (rows, cols, heads) = (8, 3, 2);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i / cols) as f32).collect();
        let p = permute_qk(&w, rows, cols, heads, false);
        // reshape(n, 2, d/2, in).swapaxes(1, 2): head rows [0 1 2 3] → [0 2 1 3]
        let order: Vec<f32> = p.chunks(cols).map(|r| r[0]).collect();
        assert_eq!(order, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_qk(&p, rows, cols, heads, true), w);
    }

    /// A K-quant's rows that do not fill super-blocks take llama.cpp's 32-wide fallback, and
    /// the parallel quantization gives the bytes of one serial pass.
    #[test]
    fn k_quants_fall_back_like_llama_cpp_and_split_rows_exactly() {
        let tensor = |rows: usize, cols: usize| F32Tensor {
            name: "w".into(),
            shape: vec![rows, cols],
            data: (0..rows * cols)
                .map(|i| ((i * 7919) % 113) as f32 - 56.0)
                .collect(),
        };
        for (dtype, cols, want) in [
            (DType::Q4_K, 896, DType::Q5_0),
            (DType::Q6_K, 896, DType::Q8_0),
            (DType::Q5_K, 96, DType::Q5_1),
            (DType::Q3_K, 64, DType::Q4_0),
            (DType::Q4_K, 100, DType::F32),
            (DType::Q4_K, 512, DType::Q4_K),
        ] {
            let t = tensor(300, cols);
            let (got, bytes) = encode(dtype, &t);
            assert_eq!(got, want, "{dtype:?} over {cols} columns");
            let mut serial = Vec::new();
            quantize_row(want, &t.data, &mut serial);
            assert_eq!(bytes, serial, "{dtype:?} over {cols} columns");
        }
        let norm = F32Tensor {
            name: "n".into(),
            shape: vec![512],
            data: vec![1.0; 512],
        };
        assert_eq!(encode(DType::Q4_K, &norm).0, DType::F32);
    }
}
