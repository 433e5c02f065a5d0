//! Writes a GGUF with the shape of a published model and random weights, and optionally a
//! drafter derived from it (its first layers, perturbed), for speed measurements where the real
//! file cannot travel: a lent GPU machine, a phone over adb. Times match the real model's; the
//! tokens do not.
//!
//! ```text
//! cargo run --release --example synthetic_model -- qwen2.5-1.5b q4_k /tmp/qwen-1.5b-shape.gguf \
//!     --drafter /tmp/qwen-1.5b-draft.gguf --drafter-layers 4
//! ```

use anyhow::{anyhow, Context};
use clap::Parser;
use llmcad::export::write_gguf;
use llmcad::quant::DType;
use llmcad::synthetic::{derive_drafter, tiny_vocabulary, TinySpec};
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// qwen2.5-1.5b, qwen2.5-0.5b or smollm2-135m.
    preset: String,
    /// Weight format of the matrices: q4_0, q4_1, q4_k, q6_k, q8_0, f16, ...
    dtype: String,
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write a drafter: the model's first layers with each weight perturbed, so that it
    /// agrees with the model often but not always.
    #[arg(long)]
    drafter: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    drafter_layers: usize,
    /// Relative perturbation of the drafter's weights.
    #[arg(long, default_value_t = 0.3)]
    drafter_noise: f32,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let spec = TinySpec::preset(&a.preset, a.seed).ok_or_else(|| {
        let names: Vec<_> = TinySpec::preset_names().collect();
        anyhow!("unknown preset {:?}; known: {}", a.preset, names.join(", "))
    })?;
    let dtype: DType = a.dtype.parse().map_err(|e| anyhow!("{e}"))?;
    let vocab = tiny_vocabulary();
    let tensors = spec.tensors();
    let cfg = spec.config();
    write_gguf(&a.out, &cfg, &a.preset, &tensors, dtype, &vocab)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(path) = &a.drafter {
        let layers = a.drafter_layers.clamp(1, cfg.n_layers);
        let drafter = derive_drafter(&tensors, layers, a.drafter_noise, a.seed + 1);
        let mut dcfg = cfg.clone();
        dcfg.n_layers = layers;
        dcfg.windows.truncate(layers);
        let name = format!("{}-draft{layers}", a.preset);
        write_gguf(path, &dcfg, &name, &drafter, dtype, &vocab)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
