//! Element-wise addition: a residual connection between two activation buffers.

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// `x[..len] += y[..len]`.
    pub fn add(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(len)?;
        rec.dispatch(Kernel::Add, &[len as u32, gx, 0, 0], &[x, y], (gx, gy));
        Ok(())
    }
}
