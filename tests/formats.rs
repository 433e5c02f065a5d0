//! Loading models: both formats describe the same function, and bad files give clear errors.

mod common;

use common::*;
use llmcad::backend::{Backend, Batch, Want};
use llmcad::cpu::Precision;
use llmcad::model::{LoadOptions, Model};
use llmcad::progress::LoadProgress;
use llmcad::quant::DType;
use llmcad::synthetic::{write_model, write_tiny, TinySpec};
use llmcad::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut b = cpu(m, Precision::F32, 2);
    let out = b.forward(&Batch::chain(tokens, 0), Want::ALL_FULL).unwrap();
    out.dense(0)
        .unwrap()
        .iter()
        .chain(out.dense(tokens.len() - 1).unwrap())
        .copied()
        .collect()
}

const TOKENS: [u32; 9] = [1, 40, 77, 300, 5, 120, 2, 1, 260];

/// GGUF stores q/k permuted for interleaved RoPE, HF in rotate-half order: the same model in
/// both formats must compute the same logits.
#[test]
fn gguf_and_hf_give_the_same_logits() {
    for spec in [
        TinySpec::default(),
        TinySpec {
            tied: false,
            seed: 3,
            ..Default::default()
        },
        TinySpec {
            arch: llmcad::model::Arch::Qwen2,
            seed: 4,
            ..Default::default()
        },
        TinySpec {
            n_kv_heads: 4,
            seed: 5,
            ..Default::default()
        },
    ] {
        let name = format!("eq-{:?}-{}", spec.arch, spec.seed);
        let t = write_tiny(scratch_dir(), &name, &spec, DType::F32, DType::F32).unwrap();
        let (g, h) = (load(&t.gguf), load(&t.hf_dir));
        let want = match spec.arch {
            llmcad::model::Arch::Qwen2 => llmcad::model::RopeLayout::HalfSplit,
            _ => llmcad::model::RopeLayout::Interleaved,
        };
        assert_eq!(g.config.rope.layout, want);
        let err = rel_err(&logits(&g, &TOKENS), &logits(&h, &TOKENS));
        assert!(err < 1e-5, "{name}: GGUF vs HF relative error {err}");
    }
}

/// F16/BF16 safetensors and quantize-on-load: quantizing on load gives the very blocks a Q8_0
/// GGUF of the same weights holds, so the logits are identical.
#[test]
fn quantize_on_load_matches_a_quantized_gguf() {
    let spec = TinySpec {
        seed: 9,
        ..Default::default()
    };
    let f32m = write_tiny(scratch_dir(), "q-f32", &spec, DType::Q8_0, DType::F32).unwrap();
    let q_gguf = load(&f32m.gguf);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let q_hf = Model::load(
        &f32m.hf_dir,
        &LoadOptions {
            quantize: Some(DType::Q8_0),
            progress: Some(LoadProgress::new(move |s| record.lock().unwrap().push(s))),
        },
    )
    .unwrap();
    assert!(q_hf.weights.layers[0].wq.dtype == DType::Q8_0);
    // the caller is told of every tensor, in order, and of the quantization
    let seen = seen.lock().unwrap();
    let total = seen.last().map(|s| s.tensors).unwrap_or(0);
    assert!(
        total > 2 && seen.iter().all(|s| s.tensors == total),
        "{seen:?}"
    );
    let done: Vec<usize> = seen.iter().map(|s| s.tensors_done).collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]) && done.last() == Some(&total),
        "{done:?}"
    );
    assert!(seen.iter().all(|s| s.quantizing_to == Some(DType::Q8_0)));
    let a = logits(&q_gguf, &TOKENS);
    let b = logits(&q_hf, &TOKENS);
    assert!(rel_err(&a, &b) < 1e-6, "{}", rel_err(&a, &b));

    let exact = logits(&load(&f32m.hf_dir), &TOKENS);
    for dt in [DType::F16, DType::BF16] {
        let m = write_tiny(scratch_dir(), &format!("q-{dt}"), &spec, DType::F32, dt).unwrap();
        let err = rel_err(&logits(&load(&m.hf_dir), &TOKENS), &exact);
        let bound = if dt == DType::F16 { 2e-3 } else { 2e-2 };
        assert!(err < bound, "{dt}: {err}");
    }
    let q4m = write_tiny(scratch_dir(), "q4-gguf", &spec, DType::Q4_0, DType::F32).unwrap();
    let q4 = Model::load(
        &f32m.hf_dir,
        &LoadOptions {
            quantize: Some(DType::Q4_0),
            progress: None,
        },
    )
    .unwrap();
    let err = rel_err(&logits(&q4, &TOKENS), &logits(&load(&q4m.gguf), &TOKENS));
    assert!(err < 1e-6, "q4_0 on load vs a Q4_0 GGUF: {err}");

    // a quantized file is requantized to a smaller type (a leaner drafter), never to a larger
    let with = |path: &Path, to| {
        let opts = LoadOptions {
            quantize: Some(to),
            progress: None,
        };
        Model::load(path, &opts).unwrap()
    };
    let leaner = with(&f32m.gguf, DType::Q4_0);
    assert_eq!(leaner.weights.layers[0].wq.dtype, DType::Q4_0);
    // each weight moves by at most Q4_0's step (amax/8 of its block of 32)
    let (w8, w4) = (&q_gguf.weights.layers[0].wq, &leaner.weights.layers[0].wq);
    let deq = |m: &llmcad::model::Matrix| {
        let mut v = vec![0f32; m.rows * m.cols];
        for (r, out) in v.chunks_exact_mut(m.cols).enumerate() {
            let rb = m.row_bytes();
            llmcad::quant::dequantize_row(m.dtype, &m.data[r * rb..(r + 1) * rb], out);
        }
        v
    };
    let (v8, v4) = (deq(w8), deq(w4));
    let mut moved = 0;
    for (b8, b4) in v8.chunks_exact(32).zip(v4.chunks_exact(32)) {
        let amax = b8.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in b8.iter().zip(b4) {
            assert!(
                (x - y).abs() <= amax / 8.0 * 1.001,
                "{x} requantized to {y}"
            );
            moved += usize::from(x != y);
        }
    }
    assert!(moved > 0);
    let kept = with(&q4m.gguf, DType::Q8_0);
    assert_eq!(kept.weights.layers[0].wq.dtype, DType::Q4_0);
}

/// Requantizing (on load, or into the drafter's cache file) leaves untied embeddings as stored:
/// they are looked up a row at a time, so fewer bits would save nothing and lose accuracy. Tied
/// ones are the head too, and are requantized.
#[test]
fn untied_embeddings_are_not_requantized() {
    let spec = TinySpec {
        seed: 12,
        tied: false,
        ..Default::default()
    };
    let m = write_tiny(scratch_dir(), "untied-q8", &spec, DType::Q8_0, DType::F32).unwrap();
    let with = |path: &Path| {
        let opts = LoadOptions {
            quantize: Some(DType::Q4_0),
            progress: None,
        };
        Model::load(path, &opts).unwrap()
    };
    for path in [&m.gguf, &m.hf_dir] {
        let w = &with(path).weights;
        assert!(!w.tied_head);
        assert_ne!(w.embed.dtype, DType::Q4_0, "{}", path.display());
        assert_eq!(w.head.dtype, DType::Q4_0);
        assert_eq!(w.layers[0].wq.dtype, DType::Q4_0);
    }
    let kept = scratch_dir().join("untied-q4_0.gguf");
    let changed = llmcad::format::requantize::requantize_gguf(&m.gguf, DType::Q4_0, &kept).unwrap();
    let (original, requantized) = (load(&m.gguf), load(&kept));
    assert_eq!(
        changed,
        1 + 7 * spec.n_layers,
        "the head and every layer matrix"
    );
    assert_eq!(requantized.weights.embed.dtype, DType::Q8_0);
    assert_eq!(
        &*requantized.weights.embed.data,
        &*original.weights.embed.data
    );
    assert_eq!(requantized.weights.head.dtype, DType::Q4_0);

    let tied = TinySpec {
        seed: 12,
        ..Default::default()
    };
    let m = write_tiny(scratch_dir(), "tied-q8", &tied, DType::Q8_0, DType::F32).unwrap();
    let w = &with(&m.gguf).weights;
    assert!(w.tied_head);
    assert_eq!(w.embed.dtype, DType::Q4_0);
}

fn expect_err(path: &Path, needles: &[&str]) -> Error {
    let err = match Model::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
    err
}

fn tiny_gguf_bytes() -> Vec<u8> {
    std::fs::read(&tiny_f32().gguf).unwrap()
}

#[test]
fn truncated_gguf_is_refused() {
    let bytes = tiny_gguf_bytes();
    let dir = scratch_dir();
    for (i, cut) in [3usize, 20, 100, 5000, bytes.len() - 1]
        .into_iter()
        .enumerate()
    {
        let p = dir.join(format!("trunc{i}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        // the tiny GGUF's header (vocabulary, merges) is longer than 5000 bytes
        let needle = if cut < 4 {
            "neither a GGUF"
        } else if cut < bytes.len() - 1 {
            "truncated"
        } else {
            "past the end"
        };
        expect_err(&p, &[needle]);
    }
}

/// An array count is checked against the bytes its elements need before anything is
/// allocated: 60 u64 values cannot come from 100 bytes (a count of one byte per element would
/// pass, and the reader would reserve room for all 60 first).
#[test]
fn gguf_array_counts_are_checked_against_their_element_size() {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    b.extend(1u64.to_le_bytes());
    b.push(b'a');
    b.extend(9u32.to_le_bytes()); // array
    b.extend(10u32.to_le_bytes()); // of u64
    b.extend(60u64.to_le_bytes());
    b.extend([0u8; 100]);
    let p = scratch_dir().join("array-count.gguf");
    std::fs::write(&p, &b).unwrap();
    expect_err(&p, &["a 60 cannot fit in the 100 bytes"]);
}

/// Finds the tensor-info record of `name` in a GGUF and returns the offset of its type field.
fn tensor_type_offset(bytes: &[u8], name: &str) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap();
    let dims_at = at + needle.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    dims_at + 4 + 8 * n_dims
}

#[test]
fn tensor_offset_past_the_end_is_refused() {
    let mut bytes = tiny_gguf_bytes();
    let at = tensor_type_offset(&bytes, "blk.1.ffn_up.weight") + 4;
    let past_end = bytes.len() as u64 * 2;
    bytes[at..at + 8].copy_from_slice(&past_end.to_le_bytes());
    let p = scratch_dir().join("offset.gguf");
    std::fs::write(&p, &bytes).unwrap();
    expect_err(&p, &["blk.1.ffn_up.weight", "past the end"]);
}

/// Two tensors pointing at the same bytes (a forged offset) are refused, naming both.
#[test]
fn overlapping_tensor_data_is_refused() {
    let mut bytes = tiny_gguf_bytes();
    // blk.0.attn_norm.weight's data starts where blk.0.attn_k.weight's does (offset 0 is taken
    // by whichever tensor comes first in the data): point one at the other's offset
    let offset_of = |b: &[u8], name| {
        let at = tensor_type_offset(b, name) + 4;
        (at, u64::from_le_bytes(b[at..at + 8].try_into().unwrap()))
    };
    let (_, k_offset) = offset_of(&bytes, "blk.0.attn_k.weight");
    let (norm_at, _) = offset_of(&bytes, "blk.0.attn_norm.weight");
    bytes[norm_at..norm_at + 8].copy_from_slice(&k_offset.to_le_bytes());
    let p = scratch_dir().join("overlap.gguf");
    std::fs::write(&p, &bytes).unwrap();
    expect_err(
        &p,
        &["blk.0.attn_norm.weight", "blk.0.attn_k.weight", "share"],
    );
}

/// A NaN or an infinity in a norm or in a block's scale is refused at load, naming the tensor
/// (it would turn every score into NaN and the output into an empty "eos").
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let spec = TinySpec::default();
    // (the tensor as written, as the GGUF names it, the bad value, the file's type)
    let cases = [
        (
            "model.norm.weight",
            "output_norm.weight",
            f32::NAN,
            DType::F32,
        ),
        (
            "model.layers.1.input_layernorm.weight",
            "blk.1.attn_norm.weight",
            f32::INFINITY,
            DType::F32,
        ),
        // quantizing a row with an infinity gives its block an infinite scale
        (
            "model.layers.2.mlp.down_proj.weight",
            "blk.2.ffn_down.weight",
            f32::INFINITY,
            DType::Q8_0,
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            "blk.0.attn_q.weight",
            f32::NEG_INFINITY,
            DType::Q4_1,
        ),
    ];
    for (i, (written, name, bad, dtype)) in cases.into_iter().enumerate() {
        let mut tensors = spec.tensors();
        let t = tensors.iter_mut().find(|t| t.name == written).unwrap();
        t.data[5] = bad;
        let m = write_model(
            scratch_dir(),
            &format!("nonfinite-{i}"),
            &spec.config(),
            &tensors,
            dtype,
            DType::F32,
        )
        .unwrap();
        expect_err(&m.gguf, &[name, "NaN or an infinity"]);
    }
}

#[test]
fn unknown_dtype_is_refused_with_tensor_and_type() {
    let mut bytes = tiny_gguf_bytes();
    let at = tensor_type_offset(&bytes, "blk.0.attn_q.weight");
    bytes[at..at + 4].copy_from_slice(&20u32.to_le_bytes()); // IQ4_NL
    let p = scratch_dir().join("dtype.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = expect_err(&p, &["blk.0.attn_q.weight", "IQ4_NL", "Q4_K"]);
    assert!(matches!(e, Error::Unsupported(_)));
}

/// A file of an unsupported family with unknown tensor types is named as that family.
#[test]
fn unknown_architecture_is_named_before_tensor_types() {
    let mut bytes = tiny_gguf_bytes();
    let at = tensor_type_offset(&bytes, "blk.0.attn_q.weight");
    bytes[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
    // the value that follows the key general.architecture: type 8 (string), length, "llama"
    let key = b"general.architecture";
    let k = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let value = k + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"mamba");
    let p = scratch_dir().join("arch.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = expect_err(&p, &["architecture", "mamba"]);
    assert!(!e.to_string().contains("IQ4_NL"), "{e}");
}

#[test]
fn lying_safetensors_header_is_refused() {
    let src = &tiny_f32().hf_dir;
    let dir = scratch_dir().join("lying-hf");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut st = std::fs::read(src.join("model.safetensors")).unwrap();
    // header length claims more bytes than the file has
    let too_long = st.len() as u64 + 10;
    st[..8].copy_from_slice(&too_long.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    expect_err(&dir, &["model.safetensors", "not a valid safetensors"]);
    // and a file cut short in the data
    let st = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &st[..st.len() - 100]).unwrap();
    expect_err(&dir, &["not a valid safetensors"]);
}

/// A copy of the tiny HF directory in `scratch/name` whose config.json went through `edit`.
fn hf_dir_with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = &tiny_f32().hf_dir;
    let dir = scratch_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn config_with_missing_fields_is_refused() {
    let dir = hf_dir_with_config("bad-config", |cfg| {
        cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    let e = expect_err(&dir, &["num_hidden_layers"]);
    assert!(matches!(e, Error::Config(_)));
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    expect_err(&dir, &["config.json", "invalid JSON"]);
}

/// RoPE scaling from config.json that would turn the rotation into NaN or infinity.
#[test]
fn bad_rope_scaling_is_refused() {
    let scalings = [
        serde_json::json!({"rope_type": "linear", "factor": 0.0}),
        serde_json::json!({"rope_type": "longrope", "short_factor": [1.0, 0.0],
            "long_factor": [1.0, 2.0], "original_max_position_embeddings": 16}),
        // no original context: the attention factor would be NaN
        serde_json::json!({"rope_type": "longrope", "short_factor": [1.0],
            "long_factor": [1.0], "original_max_position_embeddings": 0}),
    ];
    for (i, scaling) in scalings.into_iter().enumerate() {
        let dir = hf_dir_with_config(&format!("bad-rope-{i}"), |cfg| {
            cfg["rope_scaling"] = scaling;
        });
        expect_err(&dir, &["RoPE scaling factors must be positive and finite"]);
    }
}

#[test]
fn wrong_tensor_shape_is_refused() {
    let dir = hf_dir_with_config("bad-shape", |cfg| cfg["intermediate_size"] = 96.into());
    expect_err(&dir, &["mlp.gate_proj.weight", "expected [96, 64]"]);
}
