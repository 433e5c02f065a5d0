//! The `Gpu` handle every kernel call goes through (a device with its compiled pipelines), and
//! its buffer calls: create, upload, write and read back. Recording and submitting work is in
//! `recorder.rs`, the kernels themselves in `ops/`.

use super::device::GpuContext;
use super::recorder::{Recorder, Timing};
use super::shaders::Pipelines;
use crate::error::{Error, Result};

/// A device with its compiled kernels.
pub struct Gpu {
    pub ctx: GpuContext,
    pub pipes: Pipelines,
    /// Bound where a kernel's optional input is absent.
    pub(super) dummy: wgpu::Buffer,
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
