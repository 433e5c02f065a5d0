//! Rotary position embedding, in place, in either rotation layout.

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// Rotates `heads` heads of each of `n` rows (of `stride` floats) of `v` in place.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        rec: &mut Recorder,
        v: &wgpu::Buffer,
        n: usize,
        heads: usize,
        head_dim: usize,
        half: usize,
        half_split: bool,
        cos: &wgpu::Buffer,
        sin: &wgpu::Buffer,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(n * heads * half)?;
        let params = [
            n as u32,
            heads as u32,
            head_dim as u32,
            half as u32,
            half_split as u32,
            (heads * head_dim) as u32,
            gx,
            0,
        ];
        rec.dispatch(Kernel::Rope, &params, &[v, cos, sin], (gx, gy));
        Ok(())
    }
}
