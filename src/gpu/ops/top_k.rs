//! The top-k of each row of logits (the verifier's small readback).

use super::check_groups;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::recorder::Recorder;
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// The best `k` of each of `rows` rows of `vocab` logits starting at float `in_off`.
    #[allow(clippy::too_many_arguments)]
    pub fn top_k(
        &self,
        rec: &mut Recorder,
        logits: &wgpu::Buffer,
        in_off: usize,
        rows: usize,
        vocab: usize,
        k: usize,
        ids: &wgpu::Buffer,
        vals: &wgpu::Buffer,
    ) -> Result<()> {
        check_groups(rows, "top-k rows")?;
        rec.dispatch(
            Kernel::TopK,
            &[vocab as u32, k as u32, in_off as u32, 0],
            &[logits, ids, vals],
            (rows as u32, 1),
        );
        Ok(())
    }
}
