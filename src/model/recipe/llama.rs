//! The Llama block (llama, mistral, qwen2, qwen3, phi3): pre-norm attention and SwiGLU FFN,
//! each added straight to the residual stream.

use super::{attend, Act, Activation, LayerOps, Mat, Norm, Write};
use crate::error::Result;
use crate::model::ModelConfig;

pub(super) fn forward(cfg: &ModelConfig, ops: &mut impl LayerOps) -> Result<()> {
    ops.embed()?;
    for layer in 0..cfg.n_layers {
        ops.begin_layer(layer)?;
        attend(cfg, ops, layer)?;
        ops.linear(layer, Act::Att, &[(Mat::O, Act::X)], Write::Add)?;

        ops.rms_norm(Norm::Ffn(layer), Act::X, Act::Xn)?;
        let gate_up = [(Mat::Gate, Act::Gate), (Mat::Up, Act::Up)];
        ops.linear(layer, Act::Xn, &gate_up, Write::Set)?;
        ops.glu(Activation::Silu)?;
        ops.linear(layer, Act::Gate, &[(Mat::Down, Act::X)], Write::Add)?;
        ops.end_layer(layer)?;
    }
    ops.rms_norm(Norm::Output, Act::X, Act::Xn)
}
