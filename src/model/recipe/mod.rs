//! A model's forward pass, written once as a sequence of backend ops.
//!
//! Backends implement [`LayerOps`] over their own buffers (host vectors, GPU buffers) and keep
//! what they do better behind each op: bit-identical kernels, fused bias and residual writes,
//! per-layer weight streaming in [`LayerOps::begin_layer`] / [`LayerOps::end_layer`]. The
//! recipes say which ops run in which order, one file per block design, so an architecture is
//! described once for every backend.

mod gemma;
mod llama;

use super::config::{Arch, ModelConfig};
use crate::error::Result;

/// The activation buffers of a pass, each with one row per batch node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// The residual stream, `hidden` wide.
    X,
    /// A normalized copy of the residual stream.
    Xn,
    Q,
    K,
    V,
    /// Attention output, `q_dim` wide.
    Att,
    /// FFN gate, and after [`LayerOps::glu`] the activated product, `ffn` wide.
    Gate,
    Up,
}

impl Act {
    /// Every buffer, in declaration order (`Act::ALL[a as usize] == a`).
    pub const ALL: [Act; 8] = [
        Act::X,
        Act::Xn,
        Act::Q,
        Act::K,
        Act::V,
        Act::Att,
        Act::Gate,
        Act::Up,
    ];

    /// Values per batch node.
    pub fn width(self, cfg: &ModelConfig) -> usize {
        match self {
            Act::X | Act::Xn => cfg.hidden,
            Act::Q | Act::Att => cfg.q_dim(),
            Act::K | Act::V => cfg.kv_dim(),
            Act::Gate | Act::Up => cfg.ffn,
        }
    }
}

/// A layer's weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mat {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// An RMSNorm weight vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Before attention in `layer`.
    Attn(usize),
    /// Before the FFN in `layer`.
    Ffn(usize),
    /// Over each query head in `layer` (`head_dim` long).
    QHeads(usize),
    /// Over each key head in `layer`.
    KHeads(usize),
    /// Over the attention output of `layer`, before it joins the residual stream (Gemma).
    PostAttn(usize),
    /// Over the FFN output of `layer`, before it joins the residual stream (Gemma).
    PostFfn(usize),
    /// After the last layer, over the rows the pass returns only.
    Output,
}

/// The activation of a gated FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (GeGLU; PyTorch's `gelu(approximate="tanh")`).
    GeluTanh,
}

/// How a linear op writes its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Set,
    /// Adds to the output (a residual connection).
    Add,
}

/// The ops a backend runs a pass with. Every op reads and writes the pass's [`Act`] buffers;
/// the batch (tokens, positions, mask, cache view) was given when the pass began.
pub trait LayerOps {
    /// The batch's token embeddings into [`Act::X`].
    fn embed(&mut self) -> Result<()>;
    /// Before a layer's first op (a streaming backend makes its weights ready here).
    fn begin_layer(&mut self, layer: usize) -> Result<()>;
    /// After a layer's last op (a streaming backend submits the layer's work here).
    fn end_layer(&mut self, layer: usize) -> Result<()>;
    /// `out = x / rms(x) · w`, over rows as long as `w` (`x` may be `out`).
    fn rms_norm(&mut self, w: Norm, x: Act, out: Act) -> Result<()>;
    /// For each `(m, out)`: `out = x · mᵀ`, plus `m`'s bias when the layer has one. The
    /// matrices share the input, so a backend may quantize it once for all of them.
    fn linear(&mut self, layer: usize, x: Act, outs: &[(Mat, Act)], write: Write) -> Result<()>;
    /// Rotates each of the `heads` heads of every row of `x` at its node's position, with
    /// `layer`'s RoPE ([`ModelConfig::rope_index`]).
    fn rope(&mut self, layer: usize, x: Act, heads: usize) -> Result<()>;
    /// Stores [`Act::K`] and [`Act::V`] in the layer's cache, in the slots after the cached ones.
    fn kv_write(&mut self, layer: usize) -> Result<()>;
    /// [`Act::Att`] = attention of [`Act::Q`] over the layer's cache, under the batch's mask
    /// and the layer's window, with the config's score scale and soft-cap.
    fn attention(&mut self, layer: usize) -> Result<()>;
    /// `Gate = act(Gate) · Up`.
    fn glu(&mut self, act: Activation) -> Result<()>;
    /// `x += y`.
    fn add(&mut self, x: Act, y: Act) -> Result<()>;
    /// `x *= factor`.
    fn scale(&mut self, x: Act, factor: f32) -> Result<()>;
}

/// A model's pass up to the normalized final hidden states in [`Act::Xn`]. The head is the
/// backend's: it decides which rows and which vocabulary to compute, and soft-caps the logits
/// when [`ModelConfig::final_softcap`] says so.
pub fn forward(cfg: &ModelConfig, ops: &mut impl LayerOps) -> Result<()> {
    match cfg.arch {
        Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 => {
            llama::forward(cfg, ops)
        }
        Arch::Gemma2 | Arch::Gemma3 => gemma::forward(cfg, ops),
    }
}

/// Every family's attention up to [`Act::Att`]: the input norm, q/k/v, the per-head q/k norms
/// where the family has them, RoPE, the cache write and attention itself.
fn attend(cfg: &ModelConfig, ops: &mut impl LayerOps, layer: usize) -> Result<()> {
    ops.rms_norm(Norm::Attn(layer), Act::X, Act::Xn)?;
    let qkv = [(Mat::Q, Act::Q), (Mat::K, Act::K), (Mat::V, Act::V)];
    ops.linear(layer, Act::Xn, &qkv, Write::Set)?;
    if cfg.arch.qk_norm() {
        ops.rms_norm(Norm::QHeads(layer), Act::Q, Act::Q)?;
        ops.rms_norm(Norm::KHeads(layer), Act::K, Act::K)?;
    }
    ops.rope(layer, Act::Q, cfg.n_heads)?;
    ops.rope(layer, Act::K, cfg.n_kv_heads)?;
    ops.kv_write(layer)?;
    ops.attention(layer)?;
    Ok(())
}
