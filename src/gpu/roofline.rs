//! The two ceilings of a verification pass, measured on the device itself: the bandwidth of a
//! large buffer-to-buffer copy (bytes copied per second) and the rate of an FMA-bound kernel
//! (FLOP/s, an FMA counting two). A pass over N nodes cannot beat
//! max(weight bytes / copy bandwidth, FLOPs / FMA rate).

use super::buffers::Gpu;
use super::recorder::Recorder;
use crate::error::Result;
use std::time::{Duration, Instant};

const FMA_PEAK: &str = include_str!("../../shaders/fma_peak.wgsl");
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

/// FLOP/s of an FMA-bound kernel over `groups` workgroups of 64 (best of `reps`).
pub fn fma_rate(g: &Gpu, groups: u32, reps: usize) -> Result<f64> {
    let dev = &g.ctx.device;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("fma_peak"),
        source: wgpu::ShaderSource::Wgsl(FMA_PEAK.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("fma_peak"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let groups = groups.clamp(1, 65535);
    let out = g.buffer(groups as usize * 64 * 4, "fma out");
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: out.as_entire_binding(),
        }],
    });
    g.ctx.take_error()?;
    let t = best(reps, || {
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        g.ctx.queue.submit([enc.finish()]);
        g.ctx.wait()
    })?;
    Ok(groups as f64 * 64.0 * FLOPS_PER_INVOCATION / t.as_secs_f64())
}
