//! KV-cache compaction: the accepted entries moved down over the rejected ones.

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// Moves cache rows `base + keep[j]` to `base + j` (`keep` on the GPU, `count` entries),
    /// through `tmp`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_compact(
        &self,
        rec: &mut Recorder,
        cache: &wgpu::Buffer,
        kv_dim: usize,
        base: usize,
        keep: &wgpu::Buffer,
        count: usize,
        tmp: &wgpu::Buffer,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let (gx, gy) = groups_1d(count * kv_dim)?;
        rec.dispatch(
            Kernel::KvGather,
            &[kv_dim as u32, base as u32, count as u32, gx],
            &[cache, keep, tmp],
            (gx, gy),
        );
        rec.copy(
            tmp,
            0,
            cache,
            (base * kv_dim * 4) as u64,
            (count * kv_dim * 4) as u64,
        );
        Ok(())
    }
}
