//! `llmcad info`: what a model file holds.

use super::ModelArgs;
use clap::Args;
use llmcad::model::FileFormat;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let m = a.model.load()?;
    let c = &m.config;
    let w = &m.weights;
    let params = w.parameter_count();
    let bytes = w.byte_count();
    outln!("model:        {} ({})", m.name, m.path.display())?;
    outln!(
        "format:       {}",
        match m.format {
            FileFormat::Gguf => "GGUF",
            FileFormat::HuggingFace => "Hugging Face safetensors",
        }
    )?;
    outln!("architecture: {}", c.arch.name())?;
    outln!(
        "shape:        {} layers, hidden {}, ffn {}, {} heads ({} kv heads) × {}, vocab {}, context {}",
        c.n_layers, c.hidden, c.ffn, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, c.max_context
    )?;
    outln!(
        "rope:         theta {}, {:?} layout, {} dims, scaling {:?}",
        c.rope.theta,
        c.rope.layout,
        c.rope.dims,
        c.rope.scaling
    )?;
    if let Some(local) = &c.rope_local {
        outln!(
            "local rope:   theta {} in sliding-window layers",
            local.theta
        )?;
    }
    let sliding: Vec<String> = (0..c.n_layers)
        .filter_map(|l| c.windows[l].map(|w| format!("{l}:{w}")))
        .collect();
    outln!(
        "attention:    scale {}, soft-cap {}, logit soft-cap {}, windows {}",
        c.attn_scale,
        c.attn_softcap.map_or("none".into(), |v| v.to_string()),
        c.final_softcap.map_or("none".into(), |v| v.to_string()),
        if sliding.is_empty() {
            "none (every layer global)".into()
        } else {
            format!("layer:window {}", sliding.join(" "))
        }
    )?;
    outln!("parameters:   {params} ({:.1} M)", params as f64 / 1e6)?;
    outln!(
        "weights:      {bytes} bytes ({:.1} MiB)",
        bytes as f64 / (1 << 20) as f64
    )?;
    let mix: Vec<String> = w
        .dtype_mix()
        .iter()
        .map(|(d, n)| format!("{d} {:.1}%", 100.0 * *n as f64 / params as f64))
        .collect();
    outln!("types:        {} (norms F32)", mix.join(", "))?;
    outln!(
        "head:         {}",
        if w.tied_head {
            "tied to the embeddings"
        } else {
            "separate"
        }
    )?;
    let simd = llmcad::quant::Simd::active();
    let all: Vec<&str> = llmcad::quant::Simd::all_available()
        .iter()
        .map(|s| s.name())
        .collect();
    outln!(
        "cpu kernels:  {} (this CPU runs: {})",
        simd.name(),
        all.join(", ")
    )?;
    let s = &c.special;
    outln!(
        "tokenizer:    {} tokens, bos {:?}, eos {:?}, stop {:?}, add_bos {}",
        m.tokenizer.vocab_size(),
        s.bos,
        s.eos,
        s.stop,
        s.add_bos
    )?;
    match (&m.chat_template, &m.chat_template_error) {
        (Some(t), _) => outln!("chat template: {}", t.summary())?,
        (None, Some(e)) => outln!("chat template: does not compile ({e})")?,
        (None, None) => outln!("chat template: none")?,
    }
    Ok(())
}
