//! The kernels as Rust calls: weight upload (repacked, split into bindings no larger than the
//! device allows), and a recorder that gathers dispatches and copies, then encodes them into one
//! command buffer with one upload of all their parameters.

use super::device::GpuContext;
use super::shaders::{Kernel, Pipelines, WFormat};
use crate::error::{Error, Result};
use crate::model::Matrix;
use crate::quant::DType;
use std::num::NonZeroU64;

/// Most workgroups in one dispatch dimension (WebGPU's guaranteed minimum).
const MAX_GROUPS: u32 = 65535;
/// Fewest matmul rows per workgroup (matmul.wgsl, with 64 tokens per workgroup).
const MM_ROWS: usize = 8;
/// Rows per workgroup of the small-N matmul kernel (matvec.wgsl).
const MV_ROWS: usize = 64;
/// Largest token tile of the small-N matmul kernel (`shaders::MATVEC_TOKENS`).
const MV_TILE: usize = 8;
/// Largest head dimension attention.wgsl handles.
pub const MAX_HEAD_DIM: usize = 256;

/// A device with its compiled kernels.
pub struct Gpu {
    pub ctx: GpuContext,
    pub pipes: Pipelines,
    /// Bound where a kernel's optional input is absent.
    dummy: wgpu::Buffer,
}

impl Gpu {
    pub fn new(ctx: GpuContext) -> Self {
        let dummy = storage(&ctx, 16, "dummy");
        Gpu {
            ctx,
            pipes: Pipelines::default(),
            dummy,
        }
    }

    /// A storage buffer of `bytes` (at least 16) that can be copied to and from.
    pub fn buffer(&self, bytes: usize, label: &str) -> wgpu::Buffer {
        storage(&self.ctx, bytes, label)
    }

    /// A storage buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T], label: &str) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = storage(&self.ctx, bytes.len(), label);
        self.write(&buf, 0, data);
        buf
    }

    /// Writes `data` at byte `offset` (4-byte multiples; padded with zeros).
    pub fn write<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, offset: u64, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.is_empty() {
            return;
        }
        if bytes.len() % 4 == 0 {
            self.ctx.queue.write_buffer(buf, offset, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().next_multiple_of(4), 0);
            self.ctx.queue.write_buffer(buf, offset, &v);
        }
    }

    /// Runs `rec`, then reads `bytes` from `src` at byte `offset` (one submit, one map).
    pub fn run_and_read(
        &self,
        mut rec: Recorder,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: usize,
    ) -> Result<Vec<u8>> {
        let size = (bytes.max(4).next_multiple_of(4)) as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        rec.copy(src, offset, &staging, 0, size);
        self.submit(rec)?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping the readback buffer: {e}"))),
            Err(_) => return Err(Error::Gpu("readback never completed".into())),
        }
        let out = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading back: {e:?}")))?[..bytes]
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    /// Reads `n` f32 values from `src` (a separate submit; for tests and tools).
    pub fn read_f32(&self, src: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let b = self.run_and_read(Recorder::default(), src, 0, n * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }

    /// Encodes and submits `rec` (one command buffer).
    pub fn submit(&self, rec: Recorder) -> Result<()> {
        let ctx = &self.ctx;
        let align = ctx.limits.min_uniform_buffer_offset_alignment.max(64) as usize;
        let n_dispatch = rec
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Dispatch { .. }))
            .count();
        let mut params = vec![0u8; (n_dispatch * align).max(16)];
        let mut pipes = Vec::with_capacity(n_dispatch);
        let mut i = 0;
        for op in &rec.ops {
            if let Op::Dispatch {
                kernel, params: p, ..
            } = op
            {
                params[i * align..i * align + p.len() * 4].copy_from_slice(bytemuck::cast_slice(p));
                pipes.push(self.pipes.get(ctx, *kernel)?);
                i += 1;
            }
        }
        let pbuf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: params.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&pbuf, 0, &params);
        let mut groups_list = Vec::with_capacity(n_dispatch);
        let mut i = 0;
        for op in &rec.ops {
            if let Op::Dispatch {
                params: p,
                bufs,
                groups,
                ..
            } = op
            {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &pbuf,
                        offset: (i * align) as u64,
                        size: NonZeroU64::new(p.len() as u64 * 4),
                    }),
                }];
                for (j, b) in bufs.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: j as u32 + 1,
                        resource: b.as_entire_binding(),
                    });
                }
                let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipes[i].1,
                    entries: &entries,
                });
                groups_list.push((bg, *groups));
                i += 1;
            }
        }
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut i = 0;
        let mut ops = rec.ops.iter().peekable();
        while let Some(op) = ops.next() {
            match op {
                Op::Copy {
                    src,
                    src_off,
                    dst,
                    dst_off,
                    size,
                } => enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size),
                Op::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: None,
                    });
                    loop {
                        let (bg, g) = &groups_list[i];
                        pass.set_pipeline(&pipes[i].0);
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups(g.0, g.1, 1);
                        i += 1;
                        if !matches!(ops.peek(), Some(Op::Dispatch { .. })) {
                            break;
                        }
                        ops.next();
                    }
                }
            }
        }
        ctx.queue.submit([enc.finish()]);
        ctx.take_error()
    }

    // ---- kernels ----

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
        let vec4 = m.cols % 4 == 0 && a.x_stride % 4 == 0 && a.x_off % 4 == 0;
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
        if vec4 && m.cols % 32 == 0 {
            // subgroupBroadcast hands out the 8 vec4 of a block: subgroups of 8 or more
            let subgroups = self.ctx.subgroups && self.ctx.info.subgroup_min_size >= 8;
            let full = a.n / MV_TILE;
            let rest = a.n % MV_TILE;
            check_groups(full, "matmul tokens")?;
            for c in &m.chunks {
                let groups = c.rows.div_ceil(MV_ROWS) as u32;
                check_groups(groups as usize, "matmul rows")?;
                let mut tile = |tokens: usize, t_base: usize, tiles: usize| {
                    rec.dispatch(
                        Kernel::Matvec {
                            format: m.format,
                            tokens: tokens as u32,
                            subgroups,
                        },
                        &params(c, t_base as u32),
                        &[&c.buf, a.x, a.y, bias],
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
            rec.dispatch(
                Kernel::Matmul {
                    format: m.format,
                    vec4,
                },
                &params(c, wg_rows as u32),
                &[&c.buf, a.x, a.y, bias],
                (c.rows.div_ceil(wg_rows) as u32, tiles as u32),
            );
        }
        Ok(())
    }

    /// `out[t] = table[tokens[t]]` for `n` tokens.
    pub fn embed(
        &self,
        rec: &mut Recorder,
        table: &GpuMatrix,
        tokens: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(n * table.cols)?;
        for c in &table.chunks {
            let params = [
                c.rows as u32,
                table.cols as u32,
                n as u32,
                c.row0 as u32,
                gx,
                0,
                0,
                0,
                c.q_off,
                c.d_off,
                c.m_off,
                0,
            ];
            rec.dispatch(
                Kernel::Embed(table.format),
                &params,
                &[&c.buf, tokens, out],
                (gx, gy),
            );
        }
        Ok(())
    }

    /// RMSNorm of `rows` rows of `cols` values from float `x_off` of `x` into `out_off` of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        x_off: usize,
        weight: &wgpu::Buffer,
        eps: f32,
        out: &wgpu::Buffer,
        out_off: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check_groups(rows, "rmsnorm rows")?;
        let params = [cols as u32, x_off as u32, out_off as u32, eps.to_bits()];
        rec.dispatch(
            Kernel::RmsNorm {
                subgroups: self.ctx.subgroups,
            },
            &params,
            &[x, weight, out],
            (rows as u32, 1),
        );
        Ok(())
    }

    /// Rotates `heads` heads of each of `n` rows (of `stride` floats) of `v` in place.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        rec: &mut Recorder,
        v: &wgpu::Buffer,
        n: usize,
        heads: usize,
        head_dim: usize,
        half: usize,
        half_split: bool,
        cos: &wgpu::Buffer,
        sin: &wgpu::Buffer,
    ) -> Result<()> {
        let (gx, gy) = groups_1d(n * heads * half)?;
        let params = [
            n as u32,
            heads as u32,
            head_dim as u32,
            half as u32,
            half_split as u32,
            (heads * head_dim) as u32,
            gx,
            0,
        ];
        rec.dispatch(Kernel::Rope, &params, &[v, cos, sin], (gx, gy));
        Ok(())
    }

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

    /// Attention of `n` queries (see attention.wgsl): `vis_off` has n+1 offsets into `vis`.
    pub fn attention(&self, rec: &mut Recorder, a: &AttentionArgs<'_>) -> Result<()> {
        check_groups(a.n, "attention queries")?;
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let params = [
            a.n_heads as u32,
            (a.n_heads / a.n_kv_heads) as u32,
            a.head_dim as u32,
            a.base as u32,
            (a.n_heads * a.head_dim) as u32,
            (a.n_kv_heads * a.head_dim) as u32,
            scale.to_bits(),
            0,
        ];
        rec.dispatch(
            Kernel::Attention,
            &params,
            &[a.q, a.k_cache, a.v_cache, a.vis_off, a.vis, a.out],
            (a.n_heads as u32, a.n as u32),
        );
        Ok(())
    }

    /// Moves cache rows `base + keep[j]` to `base + j` (`keep` on the GPU, `count` entries),
    /// through `tmp`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_compact(
        &self,
        rec: &mut Recorder,
        cache: &wgpu::Buffer,
        kv_dim: usize,
        base: usize,
        keep: &wgpu::Buffer,
        count: usize,
        tmp: &wgpu::Buffer,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let (gx, gy) = groups_1d(count * kv_dim)?;
        rec.dispatch(
            Kernel::KvGather,
            &[kv_dim as u32, base as u32, count as u32, gx],
            &[cache, keep, tmp],
            (gx, gy),
        );
        rec.copy(
            tmp,
            0,
            cache,
            (base * kv_dim * 4) as u64,
            (count * kv_dim * 4) as u64,
        );
        Ok(())
    }

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

fn storage(ctx: &GpuContext, bytes: usize, label: &str) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

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

pub struct AttentionArgs<'a> {
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub vis_off: &'a wgpu::Buffer,
    pub vis: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub n: usize,
    pub base: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

enum Op {
    Dispatch {
        kernel: Kernel,
        params: Vec<u32>,
        bufs: Vec<wgpu::Buffer>,
        groups: (u32, u32),
    },
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        dst_off: u64,
        size: u64,
    },
}

/// Dispatches and copies to run in order in one command buffer.
#[derive(Default)]
pub struct Recorder {
    ops: Vec<Op>,
}

impl Recorder {
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        bufs: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) {
        self.ops.push(Op::Dispatch {
            kernel,
            params: params.to_vec(),
            bufs: bufs.iter().map(|&b| b.clone()).collect(),
            groups,
        });
    }

    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        size: u64,
    ) {
        if size > 0 {
            self.ops.push(Op::Copy {
                src: src.clone(),
                src_off,
                dst: dst.clone(),
                dst_off,
                size,
            });
        }
    }

    pub fn dispatches(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Dispatch { .. }))
            .count()
    }
}

/// A weight matrix on the GPU, repacked for aligned decoding and split by rows into bindings
/// no larger than the device's limit.
pub struct GpuMatrix {
    pub format: WFormat,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<WChunk>,
}

pub struct WChunk {
    pub buf: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
    q_off: u32,
    d_off: u32,
    m_off: u32,
}

impl GpuMatrix {
    pub fn upload(gpu: &Gpu, m: &Matrix) -> Result<GpuMatrix> {
        let format = WFormat::for_dtype(m.dtype, gpu.ctx.f16);
        let limit = gpu.ctx.weight_binding as usize;
        // packed bytes per row, plus slack for the half-word rounding of each region
        let per_row = match m.dtype {
            DType::BF16 => m.cols * 4,
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
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < m.rows {
            let rows = per_chunk.min(m.rows - row0);
            let rb = m.row_bytes();
            let (words, q_off, d_off, m_off) = pack(
                m.dtype,
                &m.data[row0 * rb..(row0 + rows) * rb],
                rows * m.cols,
            );
            debug_assert!(words.len() * 4 <= limit);
            chunks.push(WChunk {
                buf: gpu.upload(&words, &m.name),
                row0,
                rows,
                q_off,
                d_off,
                m_off,
            });
            row0 += rows;
        }
        Ok(GpuMatrix {
            format,
            rows: m.rows,
            cols: m.cols,
            chunks,
        })
    }

    pub fn byte_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.buf.size()).sum()
    }
}

/// Repacks `n` elements of `dtype`: (words, quant offset, scale offset, minimum offset).
fn pack(dtype: DType, src: &[u8], n: usize) -> (Vec<u32>, u32, u32, u32) {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let halves = |h: &[u16]| -> Vec<u32> {
        h.chunks(2)
            .map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16)
            .collect()
    };
    match dtype {
        DType::F32 => (src.chunks_exact(4).map(word).collect(), 0, 0, 0),
        DType::BF16 => (
            src.chunks_exact(2)
                .map(|b| (u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
                .collect(),
            0,
            0,
            0,
        ),
        DType::F16 => {
            let h: Vec<u16> = src
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            (halves(&h), 0, 0, 0)
        }
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
            let bb = dtype.block_bytes();
            let nb = n / 32;
            let (head, qwords) = match dtype {
                DType::Q8_0 => (2, 8),
                DType::Q4_0 => (2, 4),
                _ => (4, 4),
            };
            let mut q = Vec::with_capacity(nb * qwords);
            let mut d = Vec::with_capacity(nb);
            let mut mn = Vec::new();
            for blk in src.chunks_exact(bb) {
                d.push(u16::from_le_bytes([blk[0], blk[1]]));
                if dtype == DType::Q4_1 {
                    mn.push(u16::from_le_bytes([blk[2], blk[3]]));
                }
                q.extend(blk[head..].chunks_exact(4).map(word));
            }
            let d_off = q.len() as u32;
            q.extend(halves(&d));
            let m_off = q.len() as u32;
            q.extend(halves(&mn));
            (q, 0, d_off, m_off)
        }
    }
}
