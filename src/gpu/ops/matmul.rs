//! `y (+)= W · x` over a batch of tokens: the small-N kernel (matvec.wgsl) or the tiled one
//! (matmul.wgsl), with an optional bias and residual accumulation.

use super::check_groups;
use crate::error::Result;
use crate::gpu::buffers::Gpu;
use crate::gpu::matrix::{GpuMatrix, WChunk};
use crate::gpu::recorder::{Bind, Recorder};
use crate::gpu::shaders::Kernel;

/// Fewest matmul rows per workgroup (matmul.wgsl, with 64 tokens per workgroup).
pub(in crate::gpu) const MM_ROWS: usize = 8;
/// Rows per workgroup of the small-N matmul kernel (matvec.wgsl: 8 lanes per row).
const MV_ROWS: usize = 8;
/// Largest token tile of the small-N matmul kernel (`shaders::MATVEC_TOKENS`).
const MV_TILE: usize = 8;

pub struct MatmulArgs<'a> {
    pub x: &'a wgpu::Buffer,
    /// Float index of token 0's first input value.
    pub x_off: usize,
    pub x_stride: usize,
    pub n: usize,
    pub y: &'a wgpu::Buffer,
    /// Float index of token 0's output for matrix row 0.
    pub y_off: usize,
    pub y_stride: usize,
    /// Add into `y` (a residual connection) instead of overwriting it.
    pub accumulate: bool,
    /// Per-row bias added to the product.
    pub bias: Option<&'a wgpu::Buffer>,
}

impl Gpu {
    /// `y[t, r] (+)= W[r] · x[t]` for `n` tokens; see `MatmulArgs`.
    ///
    /// Whole 32-column blocks with vec4-aligned activations (every quantized matrix) run the
    /// small-N kernel (matvec.wgsl): tiles of 8 tokens, then one smaller tile (1, 2, 4 or 8) for
    /// the rest. Anything else runs the tiled kernel (matmul.wgsl). Both sum each (row, token) in
    /// an order that depends on neither the batch size nor the token's slot, and which kernel
    /// runs depends only on the matrix and the activation layout, not on `n`.
    pub fn matmul(&self, rec: &mut Recorder, m: &GpuMatrix, a: &MatmulArgs<'_>) -> Result<()> {
        if a.n == 0 {
            return Ok(());
        }
        let mode = a.accumulate as u32 | (a.bias.is_some() as u32) << 1;
        let vec4 =
            m.cols.is_multiple_of(4) && a.x_stride.is_multiple_of(4) && a.x_off.is_multiple_of(4);
        let bias = a.bias.unwrap_or(&self.dummy);
        let params = |c: &WChunk, last: u32| {
            [
                c.rows as u32,
                m.cols as u32,
                a.n as u32,
                a.x_stride as u32,
                a.x_off as u32,
                a.y_stride as u32,
                (a.y_off + c.row0) as u32,
                mode,
                c.q_off,
                c.d_off,
                c.m_off,
                c.row0 as u32,
                last,
                0,
                0,
                0,
            ]
        };
        let binds = |c: &WChunk| {
            vec![
                c.bind(),
                Bind::whole(a.x),
                Bind::whole(a.y),
                Bind::whole(bias),
            ]
        };
        if vec4 && m.cols.is_multiple_of(32) {
            let full = a.n / MV_TILE;
            let rest = a.n % MV_TILE;
            check_groups(full, "matmul tokens")?;
            for c in &m.chunks {
                // chunks hold at most MAX_GROUPS * MM_ROWS rows (matrix.rs), and MV_ROWS == MM_ROWS
                let groups = c.rows.div_ceil(MV_ROWS) as u32;
                check_groups(groups as usize, "matmul rows")?;
                let mut tile = |tokens: usize, t_base: usize, tiles: usize| {
                    rec.dispatch_ranges(
                        Kernel::Matvec {
                            format: m.format,
                            tokens: tokens as u32,
                        },
                        &params(c, t_base as u32),
                        binds(c),
                        (groups, tiles as u32),
                    );
                };
                if full > 0 {
                    tile(MV_TILE, 0, full);
                }
                if rest > 0 {
                    tile(rest.next_power_of_two(), full * MV_TILE, 1);
                }
            }
            return Ok(());
        }
        // token slots per workgroup: enough for the batch (8 tokens each), at most 8
        let slots = a.n.div_ceil(8).next_power_of_two().min(8);
        let wg_rows = 64 / slots;
        let tiles = a.n.div_ceil(slots * 8);
        check_groups(tiles, "matmul tokens")?;
        for c in &m.chunks {
            rec.dispatch_ranges(
                Kernel::Matmul {
                    format: m.format,
                    vec4,
                },
                &params(c, wg_rows as u32),
                binds(c),
                (c.rows.div_ceil(wg_rows) as u32, tiles as u32),
            );
        }
        Ok(())
    }
}
