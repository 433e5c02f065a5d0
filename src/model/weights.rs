//! The weights of a Llama-family decoder, gathered by role from either file format.

use super::config::ModelConfig;
use super::recipe::{Mat, Norm};
use crate::error::{format_err, Result};
use crate::format::{Bytes, RawTensor};
use crate::quant::{dequantize_row, quantize_row, DType};
use std::collections::HashMap;

/// A weight matrix `[rows, cols]` (a linear layer's `[out, in]`), rows contiguous.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: Bytes,
}

impl Matrix {
    /// The tensor `t` of the file as a `rows × cols` matrix (its bytes shared, not copied).
    pub fn from_raw(t: &RawTensor, rows: usize, cols: usize) -> Matrix {
        Matrix {
            name: t.name.clone(),
            dtype: t.dtype,
            rows,
            cols,
            data: t.data.clone(),
        }
    }

    /// Rows `r0..r1` as a matrix of their own (a fused q/k/v or gate/up matrix split).
    pub fn rows_range(&self, r0: usize, r1: usize) -> Matrix {
        let rb = self.row_bytes();
        Matrix {
            name: format!("{} (rows {r0}..{r1})", self.name),
            dtype: self.dtype,
            rows: r1 - r0,
            cols: self.cols,
            data: self.data.slice(r0 * rb..r1 * rb),
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(r), out);
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    /// q/k/v biases (Qwen2 only).
    pub bias: Option<QkvBias>,
    /// RMSNorm weights over each query and key head (`head_dim` long; Qwen3, Gemma 3).
    pub qk_norm: Option<QkNorm>,
    /// RMSNorm weights over the attention and the FFN outputs (Gemma).
    pub post_norm: Option<PostNorm>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

#[derive(Clone, Debug)]
pub struct QkNorm {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct PostNorm {
    pub attn: Vec<f32>,
    pub ffn: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct QkvBias {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl LayerWeights {
    pub fn mat(&self, m: Mat) -> &Matrix {
        self.matrices()[m as usize]
    }

    /// The bias added after `m`, if the layer has one.
    pub fn bias(&self, m: Mat) -> Option<&[f32]> {
        let b = self.bias.as_ref()?;
        match m {
            Mat::Q => Some(&b.q),
            Mat::K => Some(&b.k),
            Mat::V => Some(&b.v),
            _ => None,
        }
    }

    /// The seven matrices in `Mat` order.
    pub fn matrices(&self) -> [&Matrix; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// LM head `[vocab, hidden]`; shares `embed`'s bytes when the embeddings are tied.
    pub head: Matrix,
    pub tied_head: bool,
}

impl ModelWeights {
    pub fn norm_weights(&self, norm: Norm) -> &[f32] {
        let qk = |l: usize| self.layers[l].qk_norm.as_ref().expect("a q/k norm");
        let post = |l: usize| self.layers[l].post_norm.as_ref().expect("a post norm");
        match norm {
            Norm::Attn(l) => &self.layers[l].attn_norm,
            Norm::Ffn(l) => &self.layers[l].ffn_norm,
            Norm::QHeads(l) => &qk(l).q,
            Norm::KHeads(l) => &qk(l).k,
            Norm::PostAttn(l) => &post(l).attn,
            Norm::PostFfn(l) => &post(l).ffn,
            Norm::Output => &self.norm,
        }
    }

    /// Every matrix once (the tied head is not counted twice).
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut m = vec![&self.embed];
        for l in &self.layers {
            m.extend(l.matrices());
        }
        if !self.tied_head {
            m.push(&self.head);
        }
        m
    }

    /// Parameters, counting a tied head once.
    pub fn parameter_count(&self) -> usize {
        let norms: usize = self
            .layers
            .iter()
            .map(|l| {
                l.attn_norm.len()
                    + l.ffn_norm.len()
                    + l.qk_norm.as_ref().map_or(0, |n| n.q.len() + n.k.len())
                    + l.post_norm
                        .as_ref()
                        .map_or(0, |n| n.attn.len() + n.ffn.len())
                    + l.bias
                        .as_ref()
                        .map_or(0, |b| b.q.len() + b.k.len() + b.v.len())
            })
            .sum();
        self.matrices()
            .iter()
            .map(|m| m.rows * m.cols)
            .sum::<usize>()
            + norms
            + self.norm.len()
    }

    /// Bytes of weight data as stored (matrices plus f32 norms).
    pub fn byte_count(&self) -> usize {
        self.matrices().iter().map(|m| m.byte_len()).sum::<usize>()
            + 4 * (self.parameter_count()
                - self
                    .matrices()
                    .iter()
                    .map(|m| m.rows * m.cols)
                    .sum::<usize>())
    }

    /// Parameters per weight type, for `info`.
    pub fn dtype_mix(&self) -> Vec<(DType, usize)> {
        let mut mix: Vec<(DType, usize)> = Vec::new();
        for m in self.matrices() {
            match mix.iter_mut().find(|(d, _)| *d == m.dtype) {
                Some((_, n)) => *n += m.rows * m.cols,
                None => mix.push((m.dtype, m.rows * m.cols)),
            }
        }
        mix
    }
}

/// Which tensor plays a role, in each file format's naming scheme.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Naming {
    Gguf,
    HuggingFace,
}

#[derive(Clone, Copy)]
enum Role {
    Embed,
    Norm,
    Head,
    AttnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    /// After attention, before the residual add (Gemma).
    PostAttnNorm,
    /// After the FFN, before the residual add (Gemma).
    PostFfnNorm,
    /// q, k and v stacked in one matrix (Phi-3).
    Qkv,
    /// gate and up stacked in one matrix (Phi-3).
    GateUp,
    FfnNorm,
    Gate,
    Up,
    Down,
}

impl Naming {
    /// The tensor name of `role` in `layer`; Gemma names its Hugging Face norms differently.
    fn name(self, role: Role, layer: usize, gemma: bool) -> String {
        use Role::*;
        match self {
            Naming::Gguf => {
                let blk = |s: &str| format!("blk.{layer}.{s}");
                match role {
                    Embed => "token_embd.weight".into(),
                    Norm => "output_norm.weight".into(),
                    Head => "output.weight".into(),
                    AttnNorm => blk("attn_norm.weight"),
                    Q => blk("attn_q.weight"),
                    K => blk("attn_k.weight"),
                    V => blk("attn_v.weight"),
                    O => blk("attn_output.weight"),
                    QBias => blk("attn_q.bias"),
                    KBias => blk("attn_k.bias"),
                    VBias => blk("attn_v.bias"),
                    QNorm => blk("attn_q_norm.weight"),
                    KNorm => blk("attn_k_norm.weight"),
                    PostAttnNorm => blk("post_attention_norm.weight"),
                    PostFfnNorm => blk("post_ffw_norm.weight"),
                    Qkv => blk("attn_qkv.weight"),
                    GateUp => blk("ffn_up.weight"),
                    FfnNorm => blk("ffn_norm.weight"),
                    Gate => blk("ffn_gate.weight"),
                    Up => blk("ffn_up.weight"),
                    Down => blk("ffn_down.weight"),
                }
            }
            Naming::HuggingFace => {
                let blk = |s: &str| format!("model.layers.{layer}.{s}");
                match role {
                    Embed => "model.embed_tokens.weight".into(),
                    Norm => "model.norm.weight".into(),
                    Head => "lm_head.weight".into(),
                    AttnNorm => blk("input_layernorm.weight"),
                    Q => blk("self_attn.q_proj.weight"),
                    K => blk("self_attn.k_proj.weight"),
                    V => blk("self_attn.v_proj.weight"),
                    O => blk("self_attn.o_proj.weight"),
                    QBias => blk("self_attn.q_proj.bias"),
                    KBias => blk("self_attn.k_proj.bias"),
                    VBias => blk("self_attn.v_proj.bias"),
                    QNorm => blk("self_attn.q_norm.weight"),
                    KNorm => blk("self_attn.k_norm.weight"),
                    PostAttnNorm => blk("post_attention_layernorm.weight"),
                    PostFfnNorm => blk("post_feedforward_layernorm.weight"),
                    Qkv => blk("self_attn.qkv_proj.weight"),
                    GateUp => blk("mlp.gate_up_proj.weight"),
                    // Llama's norm "after attention" is the FFN's input norm
                    FfnNorm if gemma => blk("pre_feedforward_layernorm.weight"),
                    FfnNorm => blk("post_attention_layernorm.weight"),
                    Gate => blk("mlp.gate_proj.weight"),
                    Up => blk("mlp.up_proj.weight"),
                    Down => blk("mlp.down_proj.weight"),
                }
            }
        }
    }
}

/// Collects and checks every tensor a model of `cfg`'s shape needs.
pub struct WeightLoader<'a> {
    tensors: HashMap<String, RawTensor>,
    naming: Naming,
    cfg: &'a ModelConfig,
    /// Matrices stored with more bits per weight than this type (float or quantized) are
    /// quantized to it while loading (`--quantize`).
    pub quantize_to: Option<DType>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(tensors: Vec<RawTensor>, naming: Naming, cfg: &'a ModelConfig) -> Self {
        WeightLoader {
            tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
            naming,
            cfg,
            quantize_to: None,
        }
    }

    fn name(&self, role: Role, layer: usize) -> String {
        self.naming.name(role, layer, self.cfg.arch.gemma())
    }

    /// Gathers every weight; `progress(done, total)` is called as tensors are loaded.
    pub fn load(&self, progress: &dyn Fn(usize, usize)) -> Result<ModelWeights> {
        let c = self.cfg;
        let total = 3 + c.n_layers * 9;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let tick = || {
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(d, total);
        };
        let tied_head = !self.tensors.contains_key(&self.name(Role::Head, 0));
        // embeddings are looked up a row at a time: requantizing them gains nothing and loses
        // accuracy, unless they are also the head
        let embed = if tied_head {
            self.matrix(Role::Embed, 0, c.vocab, c.hidden)?
        } else {
            self.as_stored(Role::Embed, 0, c.vocab, c.hidden)?
        };
        tick();
        let norm = self.norm(Role::Norm, 0, c.hidden)?;
        tick();
        let head = if tied_head {
            embed.clone()
        } else {
            self.matrix(Role::Head, 0, c.vocab, c.hidden)?
        };
        tick();
        let q = c.q_dim();
        let kv = c.kv_dim();
        let layers = (0..c.n_layers)
            .map(|i| {
                let [wq, wk, wv] = if c.arch.fused_projections() {
                    let qkv = self.matrix(Role::Qkv, i, q + 2 * kv, c.hidden)?;
                    let (k0, v0) = (q, q + kv);
                    let k1 = v0 + kv;
                    [
                        qkv.rows_range(0, k0),
                        qkv.rows_range(k0, v0),
                        qkv.rows_range(v0, k1),
                    ]
                } else {
                    [
                        self.matrix(Role::Q, i, q, c.hidden)?,
                        self.matrix(Role::K, i, kv, c.hidden)?,
                        self.matrix(Role::V, i, kv, c.hidden)?,
                    ]
                };
                let [w_gate, w_up] = if c.arch.fused_projections() {
                    let gate_up = self.matrix(Role::GateUp, i, 2 * c.ffn, c.hidden)?;
                    [
                        gate_up.rows_range(0, c.ffn),
                        gate_up.rows_range(c.ffn, 2 * c.ffn),
                    ]
                } else {
                    [
                        self.matrix(Role::Gate, i, c.ffn, c.hidden)?,
                        self.matrix(Role::Up, i, c.ffn, c.hidden)?,
                    ]
                };
                let layer = LayerWeights {
                    attn_norm: self.norm(Role::AttnNorm, i, c.hidden)?,
                    wq,
                    wk,
                    wv,
                    wo: self.matrix(Role::O, i, c.hidden, q)?,
                    bias: if c.attn_bias {
                        Some(QkvBias {
                            q: self.vector(Role::QBias, i, q)?,
                            k: self.vector(Role::KBias, i, kv)?,
                            v: self.vector(Role::VBias, i, kv)?,
                        })
                    } else {
                        None
                    },
                    qk_norm: if c.arch.qk_norm() {
                        Some(QkNorm {
                            q: self.norm(Role::QNorm, i, c.head_dim)?,
                            k: self.norm(Role::KNorm, i, c.head_dim)?,
                        })
                    } else {
                        None
                    },
                    post_norm: if c.arch.gemma() {
                        Some(PostNorm {
                            attn: self.norm(Role::PostAttnNorm, i, c.hidden)?,
                            ffn: self.norm(Role::PostFfnNorm, i, c.hidden)?,
                        })
                    } else {
                        None
                    },
                    ffn_norm: self.norm(Role::FfnNorm, i, c.hidden)?,
                    w_gate,
                    w_up,
                    w_down: self.matrix(Role::Down, i, c.hidden, c.ffn)?,
                };
                (0..9).for_each(|_| tick());
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelWeights {
            embed,
            layers,
            norm,
            head,
            tied_head,
        })
    }

    /// The tensor, checked for NaNs and infinities (in the values of a float tensor, in the
    /// scales of a block type): one would silently turn every score into NaN.
    fn get(&self, role: Role, layer: usize) -> Result<&RawTensor> {
        let name = self.name(role, layer);
        let t = self
            .tensors
            .get(&name)
            .ok_or_else(|| format_err!("tensor {name} is missing from the model file"))?;
        if let Some(i) = crate::quant::first_non_finite(t.dtype, &t.data) {
            return Err(format_err!(
                "tensor {name} holds a NaN or an infinity (value {i}{}): the file is corrupt",
                if t.dtype.is_quantized() {
                    ", in its block's scale"
                } else {
                    ""
                }
            ));
        }
        Ok(t)
    }

    /// A matrix as the file stores it, never requantized.
    fn as_stored(&self, role: Role, layer: usize, rows: usize, cols: usize) -> Result<Matrix> {
        let t = self.get(role, layer)?;
        if t.shape != [rows, cols] {
            return Err(format_err!(
                "tensor {} has shape {:?}, expected [{rows}, {cols}] for this config",
                t.name,
                t.shape
            ));
        }
        Ok(Matrix::from_raw(t, rows, cols))
    }

    /// A matrix, requantized to `quantize_to` where that has fewer bits per weight.
    fn matrix(&self, role: Role, layer: usize, rows: usize, cols: usize) -> Result<Matrix> {
        let m = self.as_stored(role, layer, rows, cols)?;
        match self.quantize_to {
            // smaller types are kept: requantizing only loses accuracy
            Some(to) if to.bits_per_weight() >= m.dtype.bits_per_weight() => Ok(m),
            Some(to) if cols.is_multiple_of(to.block_len()) => Ok(quantize_matrix(&m, to)),
            Some(to) => {
                log::warn!(
                    "{}: kept as {} (cannot quantize {cols} columns to {to})",
                    m.name,
                    m.dtype
                );
                Ok(m)
            }
            None => Ok(m),
        }
    }

    /// An RMSNorm weight vector as the kernels use it: Gemma's Hugging Face weights hold
    /// `w` for a gain of `1 + w` (its GGUF files store the sum already).
    fn norm(&self, role: Role, layer: usize, len: usize) -> Result<Vec<f32>> {
        let mut w = self.vector(role, layer, len)?;
        if self.cfg.arch.gemma() && self.naming == Naming::HuggingFace {
            w.iter_mut().for_each(|x| *x += 1.0);
        }
        Ok(w)
    }

    fn vector(&self, role: Role, layer: usize, len: usize) -> Result<Vec<f32>> {
        let t = self.get(role, layer)?;
        if t.numel() != len || t.shape.len() != 1 {
            return Err(format_err!(
                "tensor {} has shape {:?}, expected [{len}]",
                t.name,
                t.shape
            ));
        }
        let mut v = vec![0f32; len];
        dequantize_row(t.dtype, &t.data, &mut v);
        Ok(v)
    }
}

/// Re-encodes a float matrix in a block-quantized type (rows in parallel).
pub fn quantize_matrix(m: &Matrix, to: DType) -> Matrix {
    let rb_in = m.row_bytes();
    let rb_out = to.row_bytes(m.cols);
    let mut out = vec![0u8; rb_out * m.rows];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows_per = m.rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (chunk_idx, chunk) in out.chunks_mut(rows_per * rb_out).enumerate() {
            s.spawn(move || {
                let mut row = vec![0f32; m.cols];
                let mut buf = Vec::with_capacity(rb_out);
                for (j, dst) in chunk.chunks_mut(rb_out).enumerate() {
                    let r = chunk_idx * rows_per + j;
                    dequantize_row(m.dtype, &m.data[r * rb_in..(r + 1) * rb_in], &mut row);
                    buf.clear();
                    quantize_row(to, &row, &mut buf);
                    dst.copy_from_slice(&buf);
                }
            });
        }
    });
    Matrix {
        name: m.name.clone(),
        dtype: to,
        rows: m.rows,
        cols: m.cols,
        data: out.into(),
    }
}
