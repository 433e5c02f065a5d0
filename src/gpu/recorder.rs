//! A recorder that gathers dispatches and copies, then encodes them into one command buffer
//! with one upload of all their parameters (and, optionally, timestamps around each compute
//! pass).

use super::buffers::Gpu;
use super::shaders::Kernel;
use crate::error::Result;
use std::num::NonZeroU64;

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
    /// When profiling, every dispatch gets a compute pass of its own, and this lists the kernel
    /// of each timed pair. The splits add barriers, so profiled passes run slower.
    pub kernels: Option<Vec<Kernel>>,
}

impl Timing {
    fn take_pair(&mut self, kernel: Kernel) -> Option<(wgpu::QuerySet, u32)> {
        (self.next + 2 <= self.capacity).then(|| {
            if let Some(k) = &mut self.kernels {
                k.push(kernel);
            }
            self.next += 2;
            (self.set.clone(), self.next - 2)
        })
    }

    fn profiling(&self) -> bool {
        self.kernels.is_some()
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

impl Gpu {
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
                Op::Dispatch { kernel, .. } => {
                    let ts = timing.as_deref_mut().and_then(|t| t.take_pair(*kernel));
                    let one_each = timing.as_deref().is_some_and(Timing::profiling);
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
                        if one_each || !matches!(ops.peek(), Some(Op::Dispatch { .. })) {
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
}
