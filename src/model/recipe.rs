//! A model's forward pass, written once as a sequence of backend ops.
//!
//! Backends implement [`LayerOps`] over their own buffers (host vectors, GPU buffers) and keep
//! what they do better behind each op: bit-identical kernels, fused bias and residual writes,
//! per-layer weight streaming in [`LayerOps::begin_layer`] / [`LayerOps::end_layer`]. The
//! recipe below says which ops run in which order, so an architecture is described once for
//! every backend.

use super::config::ModelConfig;
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
    /// FFN gate, and after [`LayerOps::swiglu`] the activated product, `ffn` wide.
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
    /// After the last layer, over the rows the pass returns only.
    Output,
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
    /// Rotates each of the `heads` heads of every row of `x` at its node's position.
    fn rope(&mut self, x: Act, heads: usize) -> Result<()>;
    /// Stores [`Act::K`] and [`Act::V`] in the layer's cache, in the slots after the cached ones.
    fn kv_write(&mut self, layer: usize) -> Result<()>;
    /// [`Act::Att`] = attention of [`Act::Q`] over the layer's cache, under the batch's mask.
    fn attention(&mut self, layer: usize) -> Result<()>;
    /// `Gate = silu(Gate) · Up`.
    fn swiglu(&mut self) -> Result<()>;
}

/// The pass of a Llama-family decoder (llama, mistral, qwen2, qwen3): pre-norm attention and
/// SwiGLU FFN blocks, each added to the residual stream, then the output norm. The head is the
/// backend's: it decides which rows and which vocabulary to compute.
pub fn forward(cfg: &ModelConfig, ops: &mut impl LayerOps) -> Result<()> {
    ops.embed()?;
    for layer in 0..cfg.n_layers {
        ops.begin_layer(layer)?;
        ops.rms_norm(Norm::Attn(layer), Act::X, Act::Xn)?;
        let qkv = [(Mat::Q, Act::Q), (Mat::K, Act::K), (Mat::V, Act::V)];
        ops.linear(layer, Act::Xn, &qkv, Write::Set)?;
        if cfg.arch.qk_norm() {
            ops.rms_norm(Norm::QHeads(layer), Act::Q, Act::Q)?;
            ops.rms_norm(Norm::KHeads(layer), Act::K, Act::K)?;
        }
        ops.rope(Act::Q, cfg.n_heads)?;
        ops.rope(Act::K, cfg.n_kv_heads)?;
        ops.kv_write(layer)?;
        ops.attention(layer)?;
        ops.linear(layer, Act::Att, &[(Mat::O, Act::X)], Write::Add)?;

        ops.rms_norm(Norm::Ffn(layer), Act::X, Act::Xn)?;
        let gate_up = [(Mat::Gate, Act::Gate), (Mat::Up, Act::Up)];
        ops.linear(layer, Act::Xn, &gate_up, Write::Set)?;
        ops.swiglu()?;
        ops.linear(layer, Act::Gate, &[(Mat::Down, Act::X)], Write::Add)?;
        ops.end_layer(layer)?;
    }
    ops.rms_norm(Norm::Output, Act::X, Act::Xn)
}
