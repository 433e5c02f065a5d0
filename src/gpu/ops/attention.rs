//! Attention of a batch of tree nodes over the KV cache, each node seeing the cached prefix and
//! the batch nodes its visibility list names.

use super::check_groups;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;
use crate::model::LayerAttention;

/// Largest head dimension attention.wgsl handles.
pub(in crate::gpu) const MAX_HEAD_DIM: usize = 256;

pub struct AttentionArgs<'a> {
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub vis_off: &'a wgpu::Buffer,
    pub vis: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// The position of each slot's token, up to the batch's last slot.
    pub positions: &'a wgpu::Buffer,
    pub n: usize,
    pub base: usize,
    pub layer: LayerAttention,
}

impl Gpu {
    /// Attention of `n` queries (see attention.wgsl): `vis_off` has n+1 offsets into `vis`.
    pub fn attention(&self, rec: &mut Recorder, a: &AttentionArgs<'_>) -> Result<()> {
        check_groups(a.n, "attention queries")?;
        let l = &a.layer;
        let params = [
            l.n_heads as u32,
            (l.n_heads / l.n_kv_heads) as u32,
            l.head_dim as u32,
            a.base as u32,
            (l.n_heads * l.head_dim) as u32,
            (l.n_kv_heads * l.head_dim) as u32,
            l.scale.to_bits(),
            l.softcap.unwrap_or(0.0).to_bits(),
            l.window.map_or(0, |w| w.min(u32::MAX as usize) as u32),
            0,
            0,
            0,
        ];
        rec.dispatch(
            Kernel::Attention,
            &params,
            &[
                a.q,
                a.k_cache,
                a.v_cache,
                a.vis_off,
                a.vis,
                a.out,
                a.positions,
            ],
            (l.n_heads as u32, a.n as u32),
        );
        Ok(())
    }
}
