//! The SwiGLU activation, in place in the gate buffer.

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// `gate[..len] = silu(gate) · up`.
    pub fn swiglu(
        &self,
        rec: &mut Recorder,
        gate: &wgpu::Buffer,
        up: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(len)?;
        rec.dispatch(
            Kernel::Swiglu,
            &[len as u32, gx, 0, 0],
            &[gate, up],
            (gx, gy),
        );
        Ok(())
    }
}
