//! RMSNorm of rows of activations (one workgroup per row).

use super::check_groups;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// RMSNorm of `rows` rows of `cols` values from float `x_off` of `x` into `out_off` of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        x_off: usize,
        weight: &wgpu::Buffer,
        eps: f32,
        out: &wgpu::Buffer,
        out_off: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check_groups(rows, "rmsnorm rows")?;
        let params = [cols as u32, x_off as u32, out_off as u32, eps.to_bits()];
        rec.dispatch(
            Kernel::RmsNorm {
                subgroups: self.ctx.subgroups,
            },
            &params,
            &[x, weight, out],
            (rows as u32, 1),
        );
        Ok(())
    }
}
