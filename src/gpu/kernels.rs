//! The kernels as Rust calls: weight upload (repacked, split into bindings no larger than the
//! device allows), and a recorder that gathers dispatches and copies, then encodes them into one
//! command buffer with one upload of all their parameters.

use super::device::GpuContext;
use super::shaders::{Kernel, Pipelines, WFormat};
use crate::error::{Error, Result};
use crate::model::Matrix;
use crate::quant::{DType, QK_K};
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
        if bytes.len().is_multiple_of(4) {
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
        rec: Recorder,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: usize,
    ) -> Result<Vec<u8>> {
        self.run_and_read_timed(rec, src, offset, bytes, None)
    }

    /// `run_and_read` with timestamps for the compute passes (see `submit_timed`).
    pub fn run_and_read_timed(
        &self,
        mut rec: Recorder,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: usize,
        timing: Option<&mut Timing>,
    ) -> Result<Vec<u8>> {
        let size = (bytes.max(4).next_multiple_of(4)) as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        rec.copy(src, offset, &staging, 0, size);
        self.submit_timed(rec, timing)?;
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
        self.submit_timed(rec, None).map(|_| ())
    }

    /// Like `submit`, returning the submission index; with `timing`, every compute pass
    /// writes its start and end timestamps into the query set from `Timing::next` on
    /// (passes beyond the set's capacity are untimed).
    pub fn submit_timed(
        &self,
        rec: Recorder,
        mut timing: Option<&mut Timing>,
    ) -> Result<wgpu::SubmissionIndex> {
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
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &b.buf,
                            offset: b.offset,
                            size: NonZeroU64::new(b.size),
                        }),
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
                    let ts = timing.as_deref_mut().and_then(|t| t.take_pair());
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: ts.as_ref().map(|(set, k)| {
                            wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: Some(*k),
                                end_of_pass_write_index: Some(*k + 1),
                            }
                        }),
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
        let index = ctx.queue.submit([enc.finish()]);
        ctx.take_error()?;
        Ok(index)
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
            // subgroupBroadcast hands out the 8 vec4 of a block: subgroups of 8 or more
            let subgroups = self.ctx.subgroups && self.ctx.info.subgroup_min_size >= 8;
            let full = a.n / MV_TILE;
            let rest = a.n % MV_TILE;
            check_groups(full, "matmul tokens")?;
            for c in &m.chunks {
                let groups = c.rows.div_ceil(MV_ROWS) as u32;
                check_groups(groups as usize, "matmul rows")?;
                let mut tile = |tokens: usize, t_base: usize, tiles: usize| {
                    rec.dispatch_ranges(
                        Kernel::Matvec {
                            format: m.format,
                            tokens: tokens as u32,
                            subgroups,
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

/// A buffer range bound to a kernel (`size` 0: to the end of the buffer).
#[derive(Clone)]
pub struct Bind {
    pub buf: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Bind {
    pub fn whole(buf: &wgpu::Buffer) -> Self {
        Bind {
            buf: buf.clone(),
            offset: 0,
            size: 0,
        }
    }
}

/// Timestamp queries for compute passes: a query set and the next free pair.
pub struct Timing {
    pub set: wgpu::QuerySet,
    pub capacity: u32,
    pub next: u32,
}

impl Timing {
    fn take_pair(&mut self) -> Option<(wgpu::QuerySet, u32)> {
        (self.next + 2 <= self.capacity).then(|| {
            self.next += 2;
            (self.set.clone(), self.next - 2)
        })
    }
}

enum Op {
    Dispatch {
        kernel: Kernel,
        params: Vec<u32>,
        bufs: Vec<Bind>,
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
        self.dispatch_ranges(
            kernel,
            params,
            bufs.iter().map(|&b| Bind::whole(b)).collect(),
            groups,
        );
    }

    /// A dispatch whose bindings may be buffer ranges.
    pub fn dispatch_ranges(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        bufs: Vec<Bind>,
        groups: (u32, u32),
    ) {
        self.ops.push(Op::Dispatch {
            kernel,
            params: params.to_vec(),
            bufs,
            groups,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
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
    q_off: u32,
    d_off: u32,
    m_off: u32,
}

impl WChunk {
    fn bind(&self) -> Bind {
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
pub fn chunk_layouts(m: &Matrix, limit: u64) -> Result<Vec<ChunkLayout>> {
    row_range_layouts(m, 0, m.rows, limit)
}

/// Like `chunk_layouts` for rows `r0..r1` of `m` only.
pub fn row_range_layouts(m: &Matrix, r0: usize, r1: usize, limit: u64) -> Result<Vec<ChunkLayout>> {
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
pub fn pack_rows(m: &Matrix, l: &ChunkLayout, out: &mut [u8]) {
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
