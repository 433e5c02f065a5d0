//! Scaling in place: by a factor (Gemma's embedding scale), or soft-capping (Gemma 2's logits).

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// `x[..len] *= factor`.
    pub fn scale(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        factor: f32,
        len: usize,
    ) -> Result<()> {
        self.scale_kernel(rec, x, false, factor, len)
    }

    /// `x[..len] = cap · tanh(x / cap)`.
    pub fn softcap(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        cap: f32,
        len: usize,
    ) -> Result<()> {
        self.scale_kernel(rec, x, true, cap, len)
    }

    fn scale_kernel(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        softcap: bool,
        f: f32,
        len: usize,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(len)?;
        let params = [len as u32, gx, u32::from(softcap), f.to_bits()];
        rec.dispatch(Kernel::Scale, &params, &[x], (gx, gy));
        Ok(())
    }
}
