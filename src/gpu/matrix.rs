//! Weight matrices on the GPU: repacked for aligned decoding (the same packing for resident and
//! streamed weights) and split by rows into bindings no larger than the device allows.

use super::buffers::Gpu;
use super::ops::{MAX_GROUPS, MM_ROWS};
use super::recorder::Bind;
use super::shaders::WFormat;
use crate::error::{Error, Result};
use crate::model::Matrix;
use crate::quant::{DType, QK_K};

/// A weight matrix on the GPU, repacked for aligned decoding and split by rows into bindings
/// no larger than the device's limit. Its chunks are whole buffers (resident weights) or
/// ranges of a streaming slot.
pub struct GpuMatrix {
    pub format: WFormat,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<WChunk>,
}

pub struct WChunk {
    pub buf: wgpu::Buffer,
    /// Byte range of this chunk in `buf`.
    pub offset: u64,
    pub size: u64,
    pub row0: usize,
    pub rows: usize,
    pub(super) q_off: u32,
    pub(super) d_off: u32,
    pub(super) m_off: u32,
}

impl WChunk {
    pub(super) fn bind(&self) -> Bind {
        Bind {
            buf: self.buf.clone(),
            offset: self.offset,
            size: self.size,
        }
    }
}

/// How a row range of a matrix is packed for the GPU (the same for resident and streamed
/// weights, so both decode identical words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    pub row0: usize,
    pub rows: usize,
    /// Packed bytes (a multiple of 4).
    pub bytes: usize,
    q_off: u32,
    d_off: u32,
    m_off: u32,
}

/// Row ranges of `m` for bindings of at most `limit` bytes, with their packed layouts.
pub(super) fn chunk_layouts(m: &Matrix, limit: u64) -> Result<Vec<ChunkLayout>> {
    row_range_layouts(m, 0, m.rows, limit)
}

/// Like `chunk_layouts` for rows `r0..r1` of `m` only.
pub(super) fn row_range_layouts(
    m: &Matrix,
    r0: usize,
    r1: usize,
    limit: u64,
) -> Result<Vec<ChunkLayout>> {
    let limit = limit as usize;
    // packed bytes per row, plus slack for the half-word rounding of each region
    let per_row = match m.dtype {
        DType::BF16 => m.cols * 4,
        d if d.is_k_quant() => m.cols / QK_K * k_block_words(d) * 4,
        d => d.row_bytes(m.cols),
    };
    if per_row + 16 > limit {
        return Err(Error::Unsupported(format!(
            "{}: one row ({per_row} bytes) exceeds the GPU binding limit ({limit} bytes)",
            m.name
        )));
    }
    let per_chunk = ((limit - 16) / per_row)
        .min(MAX_GROUPS as usize * MM_ROWS)
        .max(1);
    let mut out = Vec::new();
    let mut row0 = r0;
    while row0 < r1 {
        let rows = per_chunk.min(r1 - row0);
        let (words, q_off, d_off, m_off) = packed_layout(m.dtype, rows * m.cols);
        debug_assert!(words * 4 <= limit);
        out.push(ChunkLayout {
            row0,
            rows,
            bytes: words * 4,
            q_off,
            d_off,
            m_off,
        });
        row0 += rows;
    }
    Ok(out)
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, m: &Matrix) -> Result<GpuMatrix> {
        let format = WFormat::for_dtype(m.dtype, gpu.ctx.f16);
        let layouts = chunk_layouts(m, gpu.ctx.weight_binding)?;
        let mut chunks = Vec::with_capacity(layouts.len());
        let mut words = Vec::new();
        for l in layouts {
            words.clear();
            words.resize(l.bytes, 0u8);
            pack_rows(m, &l, &mut words);
            let buf = gpu.upload(&words, &m.name);
            chunks.push(WChunk {
                size: buf.size(),
                buf,
                offset: 0,
                row0: l.row0,
                rows: l.rows,
                q_off: l.q_off,
                d_off: l.d_off,
                m_off: l.m_off,
            });
        }
        Ok(GpuMatrix {
            format,
            rows: m.rows,
            cols: m.cols,
            chunks,
        })
    }

    /// A matrix whose chunks live in `buf` at the given byte offsets (a streaming slot).
    pub fn view(
        format: WFormat,
        rows: usize,
        cols: usize,
        buf: &wgpu::Buffer,
        parts: &[(ChunkLayout, u64)],
    ) -> GpuMatrix {
        GpuMatrix {
            format,
            rows,
            cols,
            chunks: parts
                .iter()
                .map(|(l, off)| WChunk {
                    buf: buf.clone(),
                    offset: *off,
                    size: l.bytes as u64,
                    row0: l.row0,
                    rows: l.rows,
                    q_off: l.q_off,
                    d_off: l.d_off,
                    m_off: l.m_off,
                })
                .collect(),
        }
    }

    pub fn byte_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.size).sum()
    }
}

/// Packs the rows `l` describes of `m` into `out` (`l.bytes` long).
pub(super) fn pack_rows(m: &Matrix, l: &ChunkLayout, out: &mut [u8]) {
    let rb = m.row_bytes();
    pack_into(
        m.dtype,
        &m.data[l.row0 * rb..(l.row0 + l.rows) * rb],
        l.rows * m.cols,
        out,
    );
}

/// Words of a packed run of `n` elements: (words, quant offset, scale offset, minimum offset).
fn packed_layout(dtype: DType, n: usize) -> (usize, u32, u32, u32) {
    match dtype {
        DType::F32 | DType::BF16 => (n, 0, 0, 0),
        DType::F16 => (n.div_ceil(2), 0, 0, 0),
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
            let nb = n / 32;
            let d_off = nb * (dtype.block_bytes() - legacy_head(dtype)) / 4;
            let m_off = d_off + nb.div_ceil(2);
            let mins = if legacy_head(dtype) == 4 {
                nb.div_ceil(2)
            } else {
                0
            };
            (m_off + mins, 0, d_off as u32, m_off as u32)
        }
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => {
            (n / QK_K * k_block_words(dtype), 0, 0, 0)
        }
    }
}

/// Bytes of the f16 scale (and minimum) that lead a block of 32: they move to their own
/// regions, the rest (the 5th bits, then the quants) stays in order in whole words.
fn legacy_head(dtype: DType) -> usize {
    match dtype {
        DType::Q4_1 | DType::Q5_1 => 4,
        _ => 2,
    }
}

/// Words of a K-quant super-block on the GPU: the file's block padded to whole words (read
/// word by word, no repacking), Q8_K without its sums (unused here).
fn k_block_words(dtype: DType) -> usize {
    match dtype {
        DType::Q8_K => 65,
        d => d.block_bytes().div_ceil(4),
    }
}

/// Repacks `n` elements of `dtype` from `src` (file layout) into `out` (GPU layout, zeroed
/// padding): blocks of 32 are split into a region of quants, then scales, then minimums;
/// K-quant super-blocks stay whole.
fn pack_into(dtype: DType, src: &[u8], n: usize, out: &mut [u8]) {
    let (words, _, d_off, m_off) = packed_layout(dtype, n);
    debug_assert_eq!(out.len(), words * 4);
    match dtype {
        DType::F32 => out[..n * 4].copy_from_slice(&src[..n * 4]),
        DType::BF16 => {
            for (o, b) in out.chunks_exact_mut(4).zip(src.chunks_exact(2)) {
                o.copy_from_slice(&[0, 0, b[0], b[1]]);
            }
        }
        DType::F16 => {
            out[..n * 2].copy_from_slice(&src[..n * 2]);
            out[n * 2..].fill(0);
        }
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => {
            let bb = dtype.block_bytes();
            let head = legacy_head(dtype);
            let qb = bb - head;
            let (q, rest) = out.split_at_mut(d_off as usize * 4);
            let (d, mn) = rest.split_at_mut((m_off - d_off) as usize * 4);
            d.fill(0);
            mn.fill(0);
            for (i, blk) in src.chunks_exact(bb).take(n / 32).enumerate() {
                q[i * qb..(i + 1) * qb].copy_from_slice(&blk[head..]);
                d[i * 2..i * 2 + 2].copy_from_slice(&blk[..2]);
                if head == 4 {
                    mn[i * 2..i * 2 + 2].copy_from_slice(&blk[2..4]);
                }
            }
        }
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => {
            let gb = k_block_words(dtype) * 4;
            for (o, blk) in out
                .chunks_exact_mut(gb)
                .zip(src.chunks_exact(dtype.block_bytes()))
            {
                let keep = gb.min(blk.len());
                o[..keep].copy_from_slice(&blk[..keep]);
                o[keep..].fill(0);
            }
        }
    }
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    /// The previous word-by-word packer, kept as the reference for `pack_into`.
    fn pack_reference(dtype: DType, src: &[u8], n: usize) -> Vec<u32> {
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let halves = |h: &[u16]| -> Vec<u32> {
            h.chunks(2)
                .map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16)
                .collect()
        };
        match dtype {
            DType::F32 => src.chunks_exact(4).map(word).collect(),
            DType::BF16 => src
                .chunks_exact(2)
                .map(|b| (u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
                .collect(),
            DType::F16 => {
                let h: Vec<u16> = src
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                halves(&h)
            }
            d if d.is_k_quant() => {
                // whole blocks padded to words; Q8_K without its 16 i16 sums
                let keep = if d == DType::Q8_K {
                    260
                } else {
                    d.block_bytes()
                };
                src.chunks_exact(d.block_bytes())
                    .flat_map(|b| {
                        let mut v = b[..keep].to_vec();
                        v.resize(keep.next_multiple_of(4), 0);
                        v.chunks_exact(4).map(word).collect::<Vec<_>>()
                    })
                    .collect()
            }
            _ => {
                let bb = dtype.block_bytes();
                let head = if matches!(dtype, DType::Q4_1 | DType::Q5_1) {
                    4
                } else {
                    2
                };
                let (mut q, mut d, mut mn) = (Vec::new(), Vec::new(), Vec::new());
                for blk in src.chunks_exact(bb).take(n / 32) {
                    d.push(u16::from_le_bytes([blk[0], blk[1]]));
                    if head == 4 {
                        mn.push(u16::from_le_bytes([blk[2], blk[3]]));
                    }
                    q.extend(blk[head..].chunks_exact(4).map(word));
                }
                q.extend(halves(&d));
                q.extend(halves(&mn));
                q
            }
        }
    }

    #[test]
    fn pack_into_matches_the_reference_packer() {
        for dtype in DType::ALL {
            for blocks in [1usize, 2, 3, 7] {
                let n = blocks * dtype.block_len().max(32);
                let bytes = match dtype {
                    DType::F32 => n * 4,
                    DType::BF16 | DType::F16 => n * 2,
                    d => blocks * d.block_bytes(),
                };
                let src: Vec<u8> = (0..bytes).map(|i| (i * 37 + 11) as u8).collect();
                let (words, ..) = packed_layout(dtype, n);
                let mut out = vec![0xAAu8; words * 4];
                pack_into(dtype, &src, n, &mut out);
                let want = pack_reference(dtype, &src, n);
                assert_eq!(
                    out,
                    bytemuck::cast_slice::<u32, u8>(&want),
                    "{dtype:?} {blocks}"
                );
            }
        }
    }
}
