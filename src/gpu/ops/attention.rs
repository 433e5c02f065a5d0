//! Attention of a batch of tree nodes over the KV cache, each node seeing the cached prefix and
//! the batch nodes its visibility list names.

use super::check_groups;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

/// Largest head dimension attention.wgsl handles.
pub(in crate::gpu) const MAX_HEAD_DIM: usize = 256;

pub struct AttentionArgs<'a> {
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub vis_off: &'a wgpu::Buffer,
    pub vis: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub n: usize,
    pub base: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Gpu {
    /// Attention of `n` queries (see attention.wgsl): `vis_off` has n+1 offsets into `vis`.
    pub fn attention(&self, rec: &mut Recorder, a: &AttentionArgs<'_>) -> Result<()> {
        check_groups(a.n, "attention queries")?;
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let params = [
            a.n_heads as u32,
            (a.n_heads / a.n_kv_heads) as u32,
            a.head_dim as u32,
            a.base as u32,
            (a.n_heads * a.head_dim) as u32,
            (a.n_kv_heads * a.head_dim) as u32,
            scale.to_bits(),
            0,
        ];
        rec.dispatch(
            Kernel::Attention,
            &params,
            &[a.q, a.k_cache, a.v_cache, a.vis_off, a.vis, a.out],
            (a.n_heads as u32, a.n as u32),
        );
        Ok(())
    }
}
