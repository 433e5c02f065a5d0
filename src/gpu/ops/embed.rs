//! Embedding lookup: rows of a (possibly quantized) table gathered by token id.

use super::groups_1d;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::matrix::GpuMatrix;
use crate::gpu::recorder::{Bind, Recorder};
use crate::gpu::shaders::Kernel;

impl Gpu {
    /// `out[t] = table[tokens[t]]` for `n` tokens.
    pub fn embed(
        &self,
        rec: &mut Recorder,
        table: &GpuMatrix,
        tokens: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        self.embed_at(rec, table, tokens, n, out, 0)
    }

    /// `out[out_row + t] = table[tokens[t]]` for `n` tokens.
    pub fn embed_at(
        &self,
        rec: &mut Recorder,
        table: &GpuMatrix,
        tokens: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
        out_row: usize,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(n * table.cols)?;
        for c in &table.chunks {
            let params = [
                c.rows as u32,
                table.cols as u32,
                n as u32,
                c.row0 as u32,
                gx,
                (out_row * table.cols) as u32,
                0,
                0,
                c.q_off,
                c.d_off,
                c.m_off,
                0,
            ];
            rec.dispatch_ranges(
                Kernel::Embed(table.format),
                &params,
                vec![c.bind(), Bind::whole(tokens), Bind::whole(out)],
                (gx, gy),
            );
        }
        Ok(())
    }
}
