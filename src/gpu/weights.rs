//! The weights as the backend holds them: each layer's norms, biases and KV cache with its
//! matrices when they are resident, the streamed units, and the embedding rows gathered from the
//! file when the table is not resident.

use super::matrix::{row_range_layouts, GpuMatrix};
use super::uploader::{Unit, Uploader};
use crate::model::recipe::Mat;
use crate::model::Matrix;

/// A layer's seven matrices on the GPU in `Mat` order, as `LayerWeights::matrices` lists them
/// (resident, or views of a streaming slot).
pub(super) struct LayerMats([GpuMatrix; 7]);

impl LayerMats {
    pub(super) fn new(mats: Vec<GpuMatrix>) -> LayerMats {
        LayerMats(
            mats.try_into()
                .unwrap_or_else(|_| unreachable!("a layer has seven matrices")),
        )
    }

    pub(super) fn all(&self) -> &[GpuMatrix; 7] {
        &self.0
    }

    pub(super) fn get(&self, m: Mat) -> &GpuMatrix {
        &self.0[m as usize]
    }

    pub(super) fn from_slot(unit: &Unit, buf: &wgpu::Buffer) -> LayerMats {
        let views = unit
            .mats
            .iter()
            .map(|m| GpuMatrix::view(m.format, m.src.rows, m.src.cols, buf, &m.parts));
        LayerMats::new(views.collect())
    }
}

pub(super) struct GpuLayer {
    pub(super) attn_norm: wgpu::Buffer,
    pub(super) ffn_norm: wgpu::Buffer,
    /// Resident matrices; `None` when the layer streams.
    pub(super) mats: Option<LayerMats>,
    pub(super) bias: Option<[wgpu::Buffer; 3]>,
    /// Per-head query and key norms (Qwen3, Gemma 3).
    pub(super) qk_norm: Option<[wgpu::Buffer; 2]>,
    /// Norms over the attention and FFN outputs (Gemma).
    pub(super) post_norm: Option<[wgpu::Buffer; 2]>,
    pub(super) k_cache: wgpu::Buffer,
    pub(super) v_cache: wgpu::Buffer,
}

/// Rows of the embedding table gathered per submit when the table is not resident.
pub(super) const GATHER_ROWS: usize = 64;

/// The embedding table when it is not resident: the batch's rows are gathered from the
/// model file into a small buffer.
pub(super) struct Gather {
    pub(super) table: Matrix,
    pub(super) buf: wgpu::Buffer,
    pub(super) scratch: Vec<u8>,
}

/// GPU bytes of the embedding gather buffer.
pub(super) fn gather_bytes(embed: &Matrix) -> u64 {
    let rows = GATHER_ROWS.min(embed.rows);
    row_range_layouts(embed, 0, rows, u64::MAX >> 1)
        .map(|l| l.iter().map(|l| l.bytes as u64).sum::<u64>())
        .unwrap_or(0)
        .max(16)
}

/// Where the head goes: the step after the final norm.
pub(super) enum Streamed {
    Layer(usize),
    Head,
}

pub(super) struct Stream {
    pub(super) units: Vec<(Streamed, Unit)>,
    pub(super) uploader: Uploader,
}
