//! The kernels as Rust calls, one file per op: its arguments, its uniform parameters and its
//! dispatch, as `impl Gpu` methods that record into a `Recorder`.

mod add;
mod attention;
mod embed;
mod glu;
mod kv_compact;
mod matmul;
mod rms_norm;
mod rope;
mod scale;
mod top_k;

pub use attention::AttentionArgs;
pub(super) use attention::MAX_HEAD_DIM;
pub use matmul::MatmulArgs;
pub(super) use matmul::MM_ROWS;

use crate::error::{Error, Result};

/// Most workgroups in one dispatch dimension (WebGPU's guaranteed minimum).
pub(super) const MAX_GROUPS: u32 = 65535;

fn check_groups(n: usize, what: &str) -> Result<()> {
    if n > MAX_GROUPS as usize {
        return Err(Error::Unsupported(format!(
            "{what}: {n} exceeds the {MAX_GROUPS} workgroups of one dispatch dimension"
        )));
    }
    Ok(())
}

/// Workgroups of 64 threads covering `threads`, as (x, y) with x at most 65535.
fn groups_1d(threads: usize) -> Result<(u32, u32)> {
    let g = threads.div_ceil(64).max(1);
    let gx = g.min(MAX_GROUPS as usize);
    let gy = g.div_ceil(gx);
    check_groups(gy, "elementwise size")?;
    Ok((gx as u32, gy as u32))
}
