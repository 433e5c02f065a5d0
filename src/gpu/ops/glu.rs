//! A gated FFN's activation, in place in the gate buffer.

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;
use crate::model::recipe::Activation;

impl Gpu {
    /// `gate[..len] = act(gate) · up`.
    pub fn glu(
        &self,
        rec: &mut Recorder,
        act: Activation,
        gate: &wgpu::Buffer,
        up: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(len)?;
        let gelu = u32::from(act == Activation::GeluTanh);
        rec.dispatch(
            Kernel::Glu,
            &[len as u32, gx, gelu, 0],
            &[gate, up],
            (gx, gy),
        );
        Ok(())
    }
}
