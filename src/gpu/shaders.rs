//! WGSL sources (embedded), their variants, and pipelines compiled once per variant.

use super::device::GpuContext;
use super::fault::{self, Fault};
use crate::error::Result;
use crate::quant::DType;
use std::collections::HashMap;
use std::sync::Mutex;

const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
const EMBED: &str = include_str!("../../shaders/embed.wgsl");
const RMSNORM: &str = include_str!("../../shaders/rmsnorm.wgsl");
const REDUCE_TREE: &str = include_str!("../../shaders/reduce_tree.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../../shaders/reduce_subgroup.wgsl");
const ROPE: &str = include_str!("../../shaders/rope.wgsl");
const GLU: &str = include_str!("../../shaders/glu.wgsl");
const ADD: &str = include_str!("../../shaders/add.wgsl");
const SCALE: &str = include_str!("../../shaders/scale.wgsl");
const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
const KV_GATHER: &str = include_str!("../../shaders/kv_gather.wgsl");
const TOPK: &str = include_str!("../../shaders/topk.wgsl");
const VEC_SCALAR: &str = include_str!("../../shaders/vec_scalar.wgsl");
const VEC_VEC4: &str = include_str!("../../shaders/vec_vec4.wgsl");
const W_F32: &str = include_str!("../../shaders/w_f32.wgsl");
const W_F16: &str = include_str!("../../shaders/w_f16.wgsl");
const W_F16_NATIVE: &str = include_str!("../../shaders/w_f16_native.wgsl");
const W_Q8_0: &str = include_str!("../../shaders/w_q8_0.wgsl");
// the 4- and 5-bit blocks of 32 share their decoding (w_q4.wgsl), the type's snippet sets its
// constants
macro_rules! q4 {
    ($ty:literal) => {
        concat!(
            include_str!(concat!("../../shaders/w_", $ty, ".wgsl")),
            include_str!("../../shaders/w_q4.wgsl")
        )
    };
}
// the K-quants share the super-block walk (w_k.wgsl); Q4_K and Q5_K their nibbles (w_q45_k.wgsl)
macro_rules! k_quant {
    ($($part:literal),+) => {
        concat!(
            $(include_str!(concat!("../../shaders/w_", $part, ".wgsl")),)+
            include_str!("../../shaders/w_k.wgsl")
        )
    };
}

/// How weights of a matrix are stored on the GPU (BF16 is widened to F32 at upload).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WFormat {
    F32,
    F16,
    /// F16 read through the `f16` type (needs `SHADER_F16`).
    F16Native,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
}

impl WFormat {
    pub const ALL: [WFormat; 14] = [
        WFormat::F32,
        WFormat::F16,
        WFormat::F16Native,
        WFormat::Q8_0,
        WFormat::Q4_0,
        WFormat::Q4_1,
        WFormat::Q5_0,
        WFormat::Q5_1,
        WFormat::Q2_K,
        WFormat::Q3_K,
        WFormat::Q4_K,
        WFormat::Q5_K,
        WFormat::Q6_K,
        WFormat::Q8_K,
    ];

    /// The format a matrix of `dtype` uses on a device with (or without) `SHADER_F16`.
    pub fn for_dtype(dtype: DType, f16: bool) -> WFormat {
        match dtype {
            DType::F32 | DType::BF16 => WFormat::F32,
            DType::F16 if f16 => WFormat::F16Native,
            DType::F16 => WFormat::F16,
            DType::Q8_0 => WFormat::Q8_0,
            DType::Q4_0 => WFormat::Q4_0,
            DType::Q4_1 => WFormat::Q4_1,
            DType::Q5_0 => WFormat::Q5_0,
            DType::Q5_1 => WFormat::Q5_1,
            DType::Q2_K => WFormat::Q2_K,
            DType::Q3_K => WFormat::Q3_K,
            DType::Q4_K => WFormat::Q4_K,
            DType::Q5_K => WFormat::Q5_K,
            DType::Q6_K => WFormat::Q6_K,
            DType::Q8_K => WFormat::Q8_K,
        }
    }

    fn snippet(self) -> &'static str {
        match self {
            WFormat::F32 => W_F32,
            WFormat::F16 => W_F16,
            WFormat::F16Native => W_F16_NATIVE,
            WFormat::Q8_0 => W_Q8_0,
            WFormat::Q4_0 => q4!("q4_0"),
            WFormat::Q4_1 => q4!("q4_1"),
            WFormat::Q5_0 => q4!("q5_0"),
            WFormat::Q5_1 => q4!("q5_1"),
            WFormat::Q2_K => k_quant!("q2_k"),
            WFormat::Q3_K => k_quant!("q3_k"),
            WFormat::Q4_K => k_quant!("q4_k", "q45_k"),
            WFormat::Q5_K => k_quant!("q5_k", "q45_k"),
            WFormat::Q6_K => k_quant!("q6_k"),
            WFormat::Q8_K => k_quant!("q8_k"),
        }
    }

    fn needs_f16(self) -> bool {
        self == WFormat::F16Native
    }
}

/// One compiled variant of one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Weight format; `vec4`: columns, input stride and offset are multiples of 4.
    Matmul {
        format: WFormat,
        vec4: bool,
    },
    /// The small-N kernel (cols % 32 == 0, vec4 activations): `tokens` per workgroup (one of
    /// `MATVEC_TOKENS`).
    Matvec {
        format: WFormat,
        tokens: u32,
    },
    Embed(WFormat),
    RmsNorm {
        subgroups: bool,
    },
    Rope,
    Glu,
    Add,
    Scale,
    Attention,
    KvGather,
    TopK,
}

impl Kernel {
    /// Every variant there is (for validation tests).
    pub fn all() -> Vec<Kernel> {
        let mut v = Vec::new();
        for f in WFormat::ALL {
            v.push(Kernel::Matmul {
                format: f,
                vec4: false,
            });
            v.push(Kernel::Matmul {
                format: f,
                vec4: true,
            });
            v.push(Kernel::Embed(f));
            for tokens in MATVEC_TOKENS {
                v.push(Kernel::Matvec { format: f, tokens });
            }
        }
        v.extend([
            Kernel::RmsNorm { subgroups: false },
            Kernel::RmsNorm { subgroups: true },
            Kernel::Rope,
            Kernel::Glu,
            Kernel::Add,
            Kernel::Scale,
            Kernel::Attention,
            Kernel::KvGather,
            Kernel::TopK,
        ]);
        v
    }

    pub fn needs_f16(self) -> bool {
        matches!(self, Kernel::Matmul { format: f, .. } | Kernel::Matvec { format: f, .. }
            | Kernel::Embed(f) if f.needs_f16())
    }

    pub fn needs_subgroups(self) -> bool {
        matches!(self, Kernel::RmsNorm { subgroups: true })
    }

    /// The WGSL text of this variant.
    pub fn source(self) -> String {
        let enable = if self.needs_f16() { "enable f16;" } else { "" };
        let text = match self {
            Kernel::Matmul { format, vec4 } => MATMUL
                .replace("{{WEIGHTS}}", format.snippet())
                .replace("{{VECTOR}}", if vec4 { VEC_VEC4 } else { VEC_SCALAR }),
            Kernel::Matvec { format, tokens } => expand_slots(
                &MATVEC
                    .replace("{{WEIGHTS}}", format.snippet())
                    .replace("{{TOKENS}}", &tokens.to_string()),
                tokens,
            ),
            Kernel::Embed(f) => EMBED.replace("{{WEIGHTS}}", f.snippet()),
            Kernel::RmsNorm { subgroups } => RMSNORM.replace(
                "{{REDUCE}}",
                if subgroups {
                    REDUCE_SUBGROUP
                } else {
                    REDUCE_TREE
                },
            ),
            Kernel::Rope => ROPE.into(),
            Kernel::Glu => GLU.into(),
            Kernel::Add => ADD.into(),
            Kernel::Scale => SCALE.into(),
            Kernel::Attention => ATTENTION.into(),
            Kernel::KvGather => KV_GATHER.into(),
            Kernel::TopK => TOPK.into(),
        };
        text.replace("{{ENABLE}}", enable)
    }
}

/// Token tile sizes of the small-N matmul kernel.
pub const MATVEC_TOKENS: [u32; 4] = [1, 2, 4, 8];

/// Expands matvec.wgsl's lines tagged `//@T `: one copy for each of `tokens` slots, with `#`
/// replaced by the slot.
fn expand_slots(src: &str, tokens: u32) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    for line in src.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        match line.trim_start().strip_prefix("//@T ") {
            Some(rest) => {
                for t in 0..tokens {
                    out.push_str(indent);
                    out.push_str(&rest.replace('#', &t.to_string()));
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Compute pipelines (and their bind-group layouts), compiled on first use.
#[derive(Default)]
pub struct Pipelines {
    cache: Mutex<HashMap<Kernel, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
}

impl Pipelines {
    pub fn get(
        &self,
        ctx: &GpuContext,
        k: Kernel,
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| crate::Error::Gpu("pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&k) {
            return Ok(p.clone());
        }
        if ctx.fault == Some(Fault::Pipeline) {
            return Err(fault::error(Fault::Pipeline));
        }
        let src = k.source();
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&format!("{k:?}")),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&format!("{k:?}")),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        ctx.take_error()
            .map_err(|e| crate::Error::Gpu(format!("compiling {k:?}: {e}")))?;
        let layout = pipeline.get_bind_group_layout(0);
        cache.insert(k, (pipeline.clone(), layout.clone()));
        Ok((pipeline, layout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    /// Every variant parses and validates; variants that do not need f16 or subgroups validate
    /// without those capabilities.
    #[test]
    fn every_shader_variant_validates() {
        for k in Kernel::all() {
            let src = k.source();
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{k:?}: {}", e.emit_to_string(&src)));
            // unpack2x16float: present on every Vulkan and Metal device
            let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
            if k.needs_f16() {
                caps |= Capabilities::SHADER_FLOAT16;
            }
            if k.needs_subgroups() {
                caps |= Capabilities::SUBGROUP;
            }
            Validator::new(ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{k:?}: {}", e.emit_to_string(&src)));
        }
    }
}
