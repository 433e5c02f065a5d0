//! The ceilings of a verification pass, measured on the device itself: the bandwidth of a
//! streaming read and of a large buffer-to-buffer copy (bytes copied per second), and the rate
//! of an FMA-bound kernel (FLOP/s, an FMA counting two). A pass over N nodes cannot beat
//! max(weight bytes / read bandwidth, FLOPs / FMA rate).

use super::buffers::Gpu;
use super::ops::MAX_GROUPS;
use super::recorder::Recorder;
use crate::error::Result;
use std::time::{Duration, Instant};

const FMA_PEAK: &str = include_str!("../../shaders/fma_peak.wgsl");
const READ_PEAK: &str = include_str!("../../shaders/read_peak.wgsl");
/// FLOPs one invocation of fma_peak.wgsl performs (1024 steps × 8 vec4 FMAs × 4 lanes × 2).
const FLOPS_PER_INVOCATION: f64 = 1024.0 * 8.0 * 4.0 * 2.0;

fn best(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?; // warm-up
    let mut b = Duration::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        b = b.min(t.elapsed());
    }
    Ok(b)
}

/// Bytes per second of a `bytes`-long buffer copy (best of `reps`).
pub fn copy_bandwidth(g: &Gpu, bytes: usize, reps: usize) -> Result<f64> {
    let bytes = bytes.min(g.ctx.max_binding as usize) & !3;
    let a = g.buffer(bytes, "copy src");
    let b = g.buffer(bytes, "copy dst");
    let t = best(reps, || {
        let mut rec = Recorder::default();
        rec.copy(&a, 0, &b, 0, bytes as u64);
        g.submit(rec)?;
        g.ctx.wait()
    })?;
    Ok(bytes as f64 / t.as_secs_f64())
}

/// Bytes per second that a streaming-read kernel reads from a `bytes`-long buffer (best of
/// `reps`): the ceiling of a pass that reads its weights once, as a mat-vec does. A copy moves
/// every byte twice (read and write), so on a GPU whose reads and writes share the bus this is
/// up to twice `copy_bandwidth`.
pub fn read_bandwidth(g: &Gpu, bytes: usize, reps: usize) -> Result<f64> {
    let bytes = bytes.min(g.ctx.max_binding as usize) & !15;
    let src = g.buffer(bytes, "read src");
    let (t, _) = stream_read(g, &src, bytes / 16, reps)?;
    Ok(bytes as f64 / t.as_secs_f64())
}

/// Runs read_peak.wgsl over the first `vec4s` 16-byte words of `src`; returns its best time and
/// the buffer of per-invocation XORs (one u32 each), whose XOR is that of the words read.
pub(crate) fn stream_read(
    g: &Gpu,
    src: &wgpu::Buffer,
    vec4s: usize,
    reps: usize,
) -> Result<(Duration, wgpu::Buffer)> {
    // about 16 words per invocation: enough loads in flight, few enough groups to launch
    let groups = (vec4s / (256 * 16)).clamp(1, MAX_GROUPS as usize) as u32;
    let out = g.buffer(groups as usize * 256 * 4, "read out");
    let src = wgpu::BufferBinding {
        buffer: src,
        offset: 0,
        size: std::num::NonZeroU64::new((vec4s * 16) as u64),
    };
    let kernel = Probe::new(
        g,
        READ_PEAK,
        "read_peak",
        &[src, out.as_entire_buffer_binding()],
    );
    let t = kernel.time(g, groups, reps)?;
    Ok((t, out))
}

/// FLOP/s of an FMA-bound kernel (best of `reps`), on a grid grown until one launch runs for
/// milliseconds, so that launch overhead does not hide a large GPU's rate.
pub fn fma_rate(g: &Gpu, reps: usize) -> Result<f64> {
    let out = g.buffer(MAX_GROUPS as usize * 64 * 4, "fma out");
    let kernel = Probe::new(g, FMA_PEAK, "fma_peak", &[out.as_entire_buffer_binding()]);
    let mut groups = 64u32;
    loop {
        let t = kernel.time(g, groups, reps)?;
        if t >= Duration::from_millis(5) || groups == MAX_GROUPS {
            return Ok(groups as f64 * 64.0 * FLOPS_PER_INVOCATION / t.as_secs_f64());
        }
        groups = (groups * 4).min(MAX_GROUPS);
    }
}

/// One microbenchmark's compute pipeline with its bind group (buffers at bindings 0, 1, ...).
struct Probe {
    pipe: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
}

impl Probe {
    fn new(g: &Gpu, source: &str, label: &str, buffers: &[wgpu::BufferBinding]) -> Probe {
        let dev = &g.ctx.device;
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(b.clone()),
            })
            .collect();
        let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipe.get_bind_group_layout(0),
            entries: &entries,
        });
        Probe { pipe, bind }
    }

    /// Best time of one launch of `groups` workgroups, each waited for.
    fn time(&self, g: &Gpu, groups: u32, reps: usize) -> Result<Duration> {
        g.ctx.take_error()?;
        best(reps, || {
            let dev = &g.ctx.device;
            let mut enc =
                dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                pass.set_pipeline(&self.pipe);
                pass.set_bind_group(0, &self.bind, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
            }
            g.ctx.queue.submit([enc.finish()]);
            g.ctx.wait()
        })
    }
}
