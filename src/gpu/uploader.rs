//! Staged weight streaming: a ring of `depth` slots, each a destination buffer on the GPU that
//! holds one streamed unit (a transformer layer, or a row range of the LM head) and a staging
//! buffer it is filled through. A unit is read straight from the memory-mapped model file and
//! repacked into the GPU layout in one pass over its bytes (into a reused host buffer of one
//! unit: no host-side cache of the model), then handed to the GPU:
//!
//! * `UploadMode::Mapped`: written into the slot's own `MAP_WRITE` staging buffer, unmapped,
//!   copied to the slot by a submitted `copy_buffer_to_buffer`, and mapped again with
//!   `map_async` (whose callback fires only once that copy has finished, so a staging buffer
//!   is never rewritten while the GPU still reads it);
//! * `UploadMode::WriteBuffer`: `queue.write_buffer` into the slot (wgpu copies through a
//!   staging allocation of its own, freed when the submission finishes); before a slot is
//!   rewritten the uploader waits for the last submission that read it, which bounds those
//!   allocations to the ring.
//!
//! Ordering: a slot is loaded only after the compute that last read it was submitted, and a
//! unit's compute is submitted after its load, so queue order makes every upload complete
//! before its compute and every compute finish before its slot is overwritten.

use super::buffers::Gpu;
use super::matrix::{pack_rows, ChunkLayout};
use super::shaders::WFormat;
use crate::error::{Error, Result};
use crate::model::Matrix;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How streamed weights reach the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UploadMode {
    /// Our own ring of mapped staging buffers (`map_async` + explicit copies).
    #[default]
    Mapped,
    /// `queue.write_buffer` into the slot (wgpu's internal staging).
    WriteBuffer,
}

impl std::str::FromStr for UploadMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mapped" => Ok(UploadMode::Mapped),
            "write-buffer" | "write_buffer" => Ok(UploadMode::WriteBuffer),
            _ => Err(Error::InvalidArgument(format!(
                "{s:?}: the upload mode is mapped or write-buffer"
            ))),
        }
    }
}

/// What the verifier's passes cost, summed over `passes` (divide for per-pass numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamStats {
    pub passes: u64,
    /// Weight bytes read from the model file and uploaded (0 when everything is resident).
    pub bytes_streamed: u64,
    /// Reading and repacking streamed weights on the CPU, including the emulated-bandwidth
    /// sleeps (`GpuOptions::io_bandwidth`).
    pub io_time: Duration,
    /// Time the CPU waited for the GPU before it could refill a staging slot, and submitting
    /// uploads.
    pub stall_time: Duration,
    /// GPU compute time: the sum of the compute passes' timestamp intervals when the device
    /// has timestamp queries (`compute_timed`), otherwise pass time minus IO time (an
    /// estimate that assumes no overlap).
    pub compute_time: Duration,
    pub compute_timed: bool,
    /// Wall time of the passes (submit to readback).
    pub pass_time: Duration,
}

impl StreamStats {
    /// Pass time over max(IO, compute): 1.0 is a perfect pipeline, 2.0 fully serial when IO
    /// and compute are equal.
    pub fn overlap_ratio(&self) -> f64 {
        let m = self.io_time.max(self.compute_time).as_secs_f64();
        if m == 0.0 {
            0.0
        } else {
            self.pass_time.as_secs_f64() / m
        }
    }

    /// The passes since `earlier` (a snapshot of the same backend's stats).
    pub fn since(&self, earlier: &StreamStats) -> StreamStats {
        StreamStats {
            passes: self.passes - earlier.passes,
            bytes_streamed: self.bytes_streamed - earlier.bytes_streamed,
            io_time: self.io_time.saturating_sub(earlier.io_time),
            stall_time: self.stall_time.saturating_sub(earlier.stall_time),
            compute_time: self.compute_time.saturating_sub(earlier.compute_time),
            compute_timed: self.compute_timed,
            pass_time: self.pass_time.saturating_sub(earlier.pass_time),
        }
    }

    pub fn per_pass(&self, d: Duration) -> Duration {
        if self.passes == 0 {
            Duration::ZERO
        } else {
            d / self.passes as u32
        }
    }

    /// JSON-friendly summary: per-pass bytes and milliseconds, and the overlap ratio.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| self.per_pass(d).as_secs_f64() * 1e3;
        serde_json::json!({
            "passes": self.passes,
            "bytes_streamed_per_pass": self.bytes_streamed.checked_div(self.passes).unwrap_or(0),
            "io_ms_per_pass": ms(self.io_time),
            "stall_ms_per_pass": ms(self.stall_time),
            "compute_ms_per_pass": ms(self.compute_time),
            "compute_timed_on_gpu": self.compute_timed,
            "pass_ms": ms(self.pass_time),
            "overlap_ratio": self.overlap_ratio(),
        })
    }
}

/// One matrix (or row range of one) in a unit: its source, GPU format, and where each of its
/// chunks lies in the slot.
pub(crate) struct UnitMatrix {
    pub src: Matrix,
    pub format: WFormat,
    pub parts: Vec<(ChunkLayout, u64)>,
}

/// A streamed unit: matrices packed back to back (offsets aligned for storage bindings).
pub(crate) struct Unit {
    pub mats: Vec<UnitMatrix>,
    /// Slot bytes the unit occupies.
    pub bytes: u64,
    /// Bytes read from the model file.
    pub file_bytes: u64,
}

impl Unit {
    /// Lays out `mats` (each with its chunk layouts) from offset 0, each chunk aligned to
    /// `align` bytes.
    pub fn new(mats: Vec<(Matrix, WFormat, Vec<ChunkLayout>)>, align: u64) -> Unit {
        let mut off = 0u64;
        let mut file_bytes = 0;
        let mats = mats
            .into_iter()
            .map(|(src, format, layouts)| {
                let rb = src.row_bytes() as u64;
                let parts = layouts
                    .into_iter()
                    .map(|l| {
                        let at = off.next_multiple_of(align);
                        off = at + l.bytes as u64;
                        file_bytes += l.rows as u64 * rb;
                        (l, at)
                    })
                    .collect();
                UnitMatrix { src, format, parts }
            })
            .collect();
        Unit {
            mats,
            bytes: off.next_multiple_of(align),
            file_bytes,
        }
    }
}

const MAPPED: u8 = 0;
const PENDING: u8 = 1;
const FAILED: u8 = 2;

struct Slot {
    dst: wgpu::Buffer,
    staging: Option<wgpu::Buffer>,
    /// Mapping state of `staging` (set by the `map_async` callback).
    state: Arc<AtomicU8>,
    /// The submission of the last copy out of `staging`.
    copy_index: Option<wgpu::SubmissionIndex>,
    /// The last compute submission that read `dst`.
    last_use: Option<wgpu::SubmissionIndex>,
}

pub(crate) struct Uploader {
    mode: UploadMode,
    slots: Vec<Slot>,
    slot_bytes: u64,
    scratch: Vec<u8>,
    rate: Option<f64>,
}

impl Uploader {
    /// Bytes of GPU memory a ring of `depth` slots of `slot_bytes` takes in `mode` (in
    /// `WriteBuffer` mode wgpu's own staging is counted: one allocation per slot in flight).
    pub fn ring_bytes(slot_bytes: u64, depth: usize) -> u64 {
        2 * slot_bytes * depth as u64
    }

    pub fn new(
        gpu: &Gpu,
        slot_bytes: u64,
        depth: usize,
        mode: UploadMode,
        rate: Option<f64>,
    ) -> Uploader {
        let dev = &gpu.ctx.device;
        let slots = (0..depth)
            .map(|_| Slot {
                dst: gpu.buffer(slot_bytes as usize, "stream slot"),
                staging: (mode == UploadMode::Mapped).then(|| {
                    dev.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("stream staging"),
                        size: slot_bytes,
                        usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: true,
                    })
                }),
                state: Arc::new(AtomicU8::new(MAPPED)),
                copy_index: None,
                last_use: None,
            })
            .collect();
        Uploader {
            mode,
            slots,
            slot_bytes,
            scratch: Vec::new(),
            rate,
        }
    }

    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// GPU bytes of the ring as accounted against the budget.
    pub fn allocated_bytes(&self) -> u64 {
        Self::ring_bytes(self.slot_bytes, self.slots.len())
    }

    pub fn dst(&self, slot: usize) -> &wgpu::Buffer {
        &self.slots[slot].dst
    }

    /// Records that `index` (a compute submission) reads `slot`.
    pub fn used(&mut self, slot: usize, index: wgpu::SubmissionIndex) {
        self.slots[slot].last_use = Some(index);
    }

    /// Loads `unit` into `slot`: waits until the slot may be rewritten, reads and repacks the
    /// unit from the model file, throttles to the emulated bandwidth, and submits the upload.
    /// Returns (IO time, stall time).
    pub fn load(&mut self, gpu: &Gpu, slot: usize, unit: &Unit) -> Result<(Duration, Duration)> {
        debug_assert!(unit.bytes <= self.slot_bytes);
        let ctx = &gpu.ctx;
        let t_wait = Instant::now();
        match self.mode {
            UploadMode::Mapped => {
                let s = &self.slots[slot];
                loop {
                    match s.state.load(Ordering::Acquire) {
                        MAPPED => break,
                        FAILED => {
                            return Err(Error::Gpu("mapping a streaming staging buffer".into()))
                        }
                        _ => {
                            let poll = match s.copy_index.clone() {
                                Some(i) => wgpu::PollType::Wait {
                                    submission_index: Some(i),
                                    timeout: None,
                                },
                                None => wgpu::PollType::wait_indefinitely(),
                            };
                            ctx.device
                                .poll(poll)
                                .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
                            ctx.take_error()?;
                        }
                    }
                }
            }
            UploadMode::WriteBuffer => {
                if let Some(i) = self.slots[slot].last_use.take() {
                    ctx.device
                        .poll(wgpu::PollType::Wait {
                            submission_index: Some(i),
                            timeout: None,
                        })
                        .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
                }
            }
        }
        let stall = t_wait.elapsed();

        // read + repack straight from the mmap, once
        let t_io = Instant::now();
        let len = unit.bytes as usize;
        self.scratch.resize(len, 0);
        for m in &unit.mats {
            for (l, off) in &m.parts {
                let at = *off as usize;
                pack_rows(&m.src, l, &mut self.scratch[at..at + l.bytes]);
            }
        }
        if let Some(rate) = self.rate {
            let min = Duration::from_secs_f64(unit.file_bytes as f64 / rate);
            let spent = t_io.elapsed();
            if spent < min {
                std::thread::sleep(min - spent);
            }
        }
        // hand over to the GPU: the copy into GPU-visible memory is IO; the submit (which can
        // wait for the driver's queue) counts as a stall
        let s = &mut self.slots[slot];
        let io;
        let t_submit;
        match self.mode {
            UploadMode::Mapped => {
                let staging = s.staging.as_ref().expect("mapped mode has staging");
                {
                    let mut view = staging
                        .slice(..unit.bytes)
                        .get_mapped_range_mut()
                        .map_err(|e| Error::Gpu(format!("staging buffer: {e:?}")))?;
                    view.copy_from_slice(&self.scratch[..len]);
                }
                io = t_io.elapsed();
                t_submit = Instant::now();
                staging.unmap();
                let mut enc = ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                enc.copy_buffer_to_buffer(staging, 0, &s.dst, 0, unit.bytes);
                let index = ctx.queue.submit([enc.finish()]);
                s.state.store(PENDING, Ordering::Release);
                let state = s.state.clone();
                staging.slice(..).map_async(wgpu::MapMode::Write, move |r| {
                    state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
                });
                s.copy_index = Some(index);
            }
            UploadMode::WriteBuffer => {
                ctx.queue.write_buffer(&s.dst, 0, &self.scratch[..len]);
                io = t_io.elapsed();
                t_submit = Instant::now();
                ctx.queue.submit([]);
            }
        }
        ctx.take_error()?;
        Ok((io, stall + t_submit.elapsed()))
    }
}
