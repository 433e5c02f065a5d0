//! The Gemma 2/3 block: embeddings scaled by √hidden; attention and a GeGLU FFN, each
//! normalized both before and after (the "sandwich") and then added to the residual stream.
//! Gemma 3 also normalizes each query and key head. Soft-capping, the query scale and the
//! sliding windows are attention's and the head's business, read from the config.

use super::{attend, Act, Activation, LayerOps, Mat, Norm, Write};
use crate::error::Result;
use crate::model::ModelConfig;

pub(super) fn forward(cfg: &ModelConfig, ops: &mut impl LayerOps) -> Result<()> {
    ops.embed()?;
    if let Some(s) = cfg.embed_scale() {
        ops.scale(Act::X, s)?;
    }
    for layer in 0..cfg.n_layers {
        ops.begin_layer(layer)?;
        attend(cfg, ops, layer)?;
        // Xn is free once q, k and v are made: it holds each block's output until its norm
        ops.linear(layer, Act::Att, &[(Mat::O, Act::Xn)], Write::Set)?;
        ops.rms_norm(Norm::PostAttn(layer), Act::Xn, Act::Xn)?;
        ops.add(Act::X, Act::Xn)?;

        ops.rms_norm(Norm::Ffn(layer), Act::X, Act::Xn)?;
        let gate_up = [(Mat::Gate, Act::Gate), (Mat::Up, Act::Up)];
        ops.linear(layer, Act::Xn, &gate_up, Write::Set)?;
        ops.glu(Activation::GeluTanh)?;
        ops.linear(layer, Act::Gate, &[(Mat::Down, Act::Xn)], Write::Set)?;
        ops.rms_norm(Norm::PostFfn(layer), Act::Xn, Act::Xn)?;
        ops.add(Act::X, Act::Xn)?;
        ops.end_layer(layer)?;
    }
    ops.rms_norm(Norm::Output, Act::X, Act::Xn)
}
