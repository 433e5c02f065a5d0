//! The GPU backend (wgpu, WGSL compute shaders): the verifier of the speculative pipeline. It
//! runs the same Llama-family forward pass as the CPU backend over batches of tree nodes, with
//! a small readback (the top-k of each row when the caller asks for it).
//!
//! Weights are uploaded once when they fit `GpuOptions::weight_budget` (one command buffer per
//! pass). Under a smaller budget the backend keeps what fits resident (the LM head, which
//! doubles as the embedding table when tied, then the first layers) and streams the rest from
//! the memory-mapped model file for every pass through a ring of staging slots
//! (`uploader.rs`), one submit per layer so that the next unit uploads while the current one
//! computes. Streamed and resident weights are packed by the same code and run the same
//! kernels: the results are bit-identical.

pub mod budget;
mod buffers;
mod device;
mod fault;
mod forward;
mod matrix;
mod ops;
mod plan;
mod recorder;
pub mod roofline;
mod scratch;
pub mod shaders;
mod uploader;
mod weights;

pub use budget::{check_io_bandwidth, parse_rate, parse_size};
pub use buffers::Gpu;
pub use device::{adapter_summary, open, DeviceOptions, GpuContext};
pub use fault::Fault;
pub use matrix::GpuMatrix;
pub use ops::{AttentionArgs, MatmulArgs};
pub use plan::WeightPlan;
pub use recorder::Recorder;
pub use uploader::{StreamStats, UploadMode};

use crate::backend::{Backend, Batch, CacheView, Capabilities, Logits, Rows, Want};
use crate::error::{Error, Result};
use crate::model::recipe;
use crate::model::{ModelConfig, ModelWeights};
use forward::{GpuPass, PassInputs};
use matrix::chunk_layouts;
use plan::stream_units;
use recorder::Timing;
use scratch::Scratch;
use shaders::Kernel;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uploader::{Unit, Uploader};
use weights::{gather_bytes, Gather, GpuLayer, LayerMats, Stream, Streamed};

/// How to run a model on the GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// KV-cache capacity in tokens (at most the model's context).
    pub context: usize,
    /// Device switches (f16, subgroups, binding-size cap); defaults read the environment.
    pub device: DeviceOptions,
    /// Bytes of GPU memory for weights (resident weights, the streaming ring, the embedding
    /// gather buffer and the small f32 norms); `None` keeps every weight resident. The KV cache
    /// and activations are not included.
    pub weight_budget: Option<u64>,
    /// Emulated storage bandwidth for streamed weights in bytes/s: each streamed unit takes at
    /// least its bytes / rate to read (a sleep; this is emulation of a phone's flash, not a
    /// measurement of this machine's).
    pub io_bandwidth: Option<f64>,
    /// How streamed weights are uploaded.
    pub upload: UploadMode,
    /// Slots in the streaming ring (default 2 when the budget allows, else 1).
    pub ring_depth: Option<usize>,
}

impl GpuOptions {
    pub fn for_model(cfg: &ModelConfig) -> Self {
        GpuOptions {
            context: cfg.max_context,
            device: DeviceOptions::default(),
            weight_budget: None,
            io_bandwidth: None,
            upload: UploadMode::default(),
            ring_depth: None,
        }
    }
}

/// One kernel's share of profiled passes (`GpuBackend::take_profile`).
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// The kernel and its variant, as `Kernel`'s Debug form.
    pub kernel: String,
    pub dispatches: usize,
    pub time: Duration,
}

/// Most candidates per row the top-k readback holds (its kernel's limit).
const MAX_TOP_K: usize = 64;
/// Most timestamp queries per pass.
const MAX_QUERIES: u32 = 4096;

pub struct GpuBackend {
    /// Forward passes begun (for the `lost:N` fault).
    passes_started: usize,
    cfg: ModelConfig,
    gpu: Gpu,
    weights: Arc<ModelWeights>,
    /// Resident embedding table (`None`: gathered per pass).
    embed: Option<GpuMatrix>,
    gather: Option<Gather>,
    layers: Vec<GpuLayer>,
    norm: wgpu::Buffer,
    /// Resident LM head (`None` with `head_is_embed` or when it streams).
    head: Option<GpuMatrix>,
    head_is_embed: bool,
    stream: Option<Stream>,
    plan: WeightPlan,
    /// Per RoPE of the model (`ModelConfig::ropes`).
    inv_freqs: Vec<Vec<f32>>,
    /// The position of each cached slot's token (sliding windows go by position).
    positions: Vec<u32>,
    capacity: usize,
    len: usize,
    scratch: Option<Scratch>,
    kv_tmp: wgpu::Buffer,
    weight_bytes: u64,
    allocated: u64,
    peak: u64,
    timing: Option<Timing>,
    /// GPU time and dispatch count per kernel since the last `take_profile` (while profiling).
    profile: HashMap<Kernel, (usize, Duration)>,
    stats: StreamStats,
}

impl GpuBackend {
    /// Opens the device `opts` describes and uploads the weights.
    pub fn new(cfg: ModelConfig, weights: Arc<ModelWeights>, opts: &GpuOptions) -> Result<Self> {
        let ctx = device::open(&opts.device)?;
        Self::with_context_opts(cfg, weights, opts, ctx)
    }

    /// Uploads the weights to an already open device (everything resident).
    pub fn with_context(
        cfg: ModelConfig,
        weights: Arc<ModelWeights>,
        context: usize,
        ctx: GpuContext,
    ) -> Result<Self> {
        let opts = GpuOptions {
            context,
            ..GpuOptions::for_model(&cfg)
        };
        Self::with_context_opts(cfg, weights, &opts, ctx)
    }

    /// Uploads the weights to an already open device under `opts`' budget.
    pub fn with_context_opts(
        cfg: ModelConfig,
        weights: Arc<ModelWeights>,
        opts: &GpuOptions,
        ctx: GpuContext,
    ) -> Result<Self> {
        cfg.validate()?;
        if ctx.fault == Some(Fault::Alloc) {
            return Err(fault::error(Fault::Alloc));
        }
        if cfg.head_dim > ops::MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "GPU attention handles head dimensions up to {}, the model has {}",
                ops::MAX_HEAD_DIM,
                cfg.head_dim
            )));
        }
        if let Some(r) = opts.io_bandwidth {
            budget::check_io_bandwidth(r)?;
        }
        let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(256);
        let plan = Self::plan_weights(&weights, opts, ctx.weight_binding, align)?;
        let timestamps = ctx.timestamps;
        let gpu = Gpu::new(ctx);
        let capacity = opts.context.min(cfg.max_context).max(1);
        let kv_bytes = capacity * cfg.kv_dim() * 4;
        if kv_bytes as u64 > gpu.ctx.max_binding {
            return Err(Error::Unsupported(format!(
                "a layer's KV cache for {capacity} tokens ({kv_bytes} bytes) exceeds the GPU \
                 binding limit ({} bytes): use a shorter context",
                gpu.ctx.max_binding
            )));
        }
        let w = &*weights;
        let up = |m| GpuMatrix::upload(&gpu, m);
        let mut allocated = 0u64;
        let mut layers = Vec::with_capacity(w.layers.len());
        let mut units = Vec::new();
        let (layer_units, head_parts, _) =
            stream_units(w, gpu.ctx.weight_binding, align, gpu.ctx.f16)?;
        let mut layer_units: Vec<Option<Unit>> = layer_units.into_iter().map(Some).collect();
        for (i, l) in w.layers.iter().enumerate() {
            let mats = if plan.resident_layers[i] {
                let mats = l.matrices().into_iter().map(up);
                Some(LayerMats::new(mats.collect::<Result<_>>()?))
            } else {
                units.push((
                    Streamed::Layer(i),
                    layer_units[i].take().expect("one unit per layer"),
                ));
                None
            };
            let layer = GpuLayer {
                attn_norm: gpu.upload(&l.attn_norm, "attn_norm"),
                ffn_norm: gpu.upload(&l.ffn_norm, "ffn_norm"),
                mats,
                bias: l.bias.as_ref().map(|b| {
                    [
                        gpu.upload(&b.q, "bq"),
                        gpu.upload(&b.k, "bk"),
                        gpu.upload(&b.v, "bv"),
                    ]
                }),
                qk_norm: l
                    .qk_norm
                    .as_ref()
                    .map(|n| [gpu.upload(&n.q, "q_norm"), gpu.upload(&n.k, "k_norm")]),
                post_norm: l.post_norm.as_ref().map(|n| {
                    [
                        gpu.upload(&n.attn, "post_attn_norm"),
                        gpu.upload(&n.ffn, "post_ffn_norm"),
                    ]
                }),
                k_cache: gpu.buffer(kv_bytes, "k_cache"),
                v_cache: gpu.buffer(kv_bytes, "v_cache"),
            };
            allocated += layer.attn_norm.size() + layer.ffn_norm.size();
            if let Some(m) = &layer.mats {
                allocated += m.all().iter().map(|m| m.byte_len()).sum::<u64>();
            }
            let bias = layer.bias.iter().flatten();
            let small = bias
                .chain(layer.qk_norm.iter().flatten())
                .chain(layer.post_norm.iter().flatten());
            allocated += small.map(|b| b.size()).sum::<u64>();
            layers.push(layer);
        }
        let tied = w.tied_head && w.head.dtype == w.embed.dtype;
        let (mut head, mut head_is_embed, mut embed) = (None, false, None);
        if plan.head_resident {
            let h = up(&w.head)?;
            allocated += h.byte_len();
            if tied {
                // one table serves both
                embed = Some(h);
                head_is_embed = true;
            } else {
                head = Some(h);
            }
        } else {
            units.extend(head_parts.into_iter().map(|u| (Streamed::Head, u)));
        }
        if plan.embed_resident && embed.is_none() {
            let e = up(&w.embed)?;
            allocated += e.byte_len();
            embed = Some(e);
        }
        let gather = if embed.is_none() {
            let b = gather_bytes(&w.embed);
            allocated += b;
            Some(Gather {
                table: w.embed.clone(),
                buf: gpu.buffer(b as usize, "embed gather"),
                scratch: Vec::new(),
            })
        } else {
            None
        };
        let norm = gpu.upload(&w.norm, "norm");
        allocated += norm.size();
        let stream = if units.is_empty() {
            None
        } else {
            let uploader = Uploader::new(
                &gpu,
                plan.slot_bytes,
                plan.ring_depth,
                opts.upload,
                opts.io_bandwidth,
            );
            allocated += uploader.allocated_bytes();
            debug_assert!(units.iter().all(|(_, u)| u.bytes <= plan.slot_bytes));
            Some(Stream { units, uploader })
        };
        if let Some(b) = opts.weight_budget {
            if allocated > b && stream.is_some() {
                return Err(Error::Gpu(format!(
                    "internal: planned {allocated} weight bytes over a budget of {b}"
                )));
            }
        }
        let mut weight_bytes = 0;
        for m in w.matrices() {
            weight_bytes += chunk_layouts(m, gpu.ctx.weight_binding)?
                .iter()
                .map(|l| (l.bytes as u64).max(16))
                .sum::<u64>();
        }
        let timing = timestamps.then(|| Timing {
            set: gpu.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: MAX_QUERIES,
            }),
            capacity: MAX_QUERIES,
            next: 0,
            kernels: None,
        });
        gpu.ctx.wait()?;
        Ok(GpuBackend {
            passes_started: 0,
            inv_freqs: cfg.ropes().iter().map(|r| r.inv_freqs(capacity)).collect(),
            positions: Vec::new(),
            kv_tmp: gpu.buffer(4, "kv_tmp"),
            gpu,
            weights,
            embed,
            gather,
            layers,
            norm,
            head,
            head_is_embed,
            stream,
            plan,
            capacity,
            len: 0,
            scratch: None,
            weight_bytes,
            allocated,
            peak: allocated,
            timing,
            profile: HashMap::new(),
            stats: StreamStats::default(),
            cfg,
        })
    }

    /// The device and its kernels (for tools and benchmarks).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of all weight matrices in the GPU layout (resident or not).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes of GPU memory held for weights now: resident matrices, norms, the streaming ring
    /// and the embedding gather buffer (what `GpuOptions::weight_budget` bounds).
    pub fn allocated_weight_bytes(&self) -> u64 {
        self.allocated
    }

    /// The most `allocated_weight_bytes` has ever been.
    pub fn peak_weight_bytes(&self) -> u64 {
        self.peak
    }

    /// What is resident and what streams.
    pub fn weight_plan(&self) -> &WeightPlan {
        &self.plan
    }

    /// Whether some weights stream for every pass.
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Totals over every pass so far (see `StreamStats::since` for a window).
    pub fn stream_stats(&self) -> StreamStats {
        self.stats
    }

    pub fn reset_stream_stats(&mut self) {
        self.stats = StreamStats::default();
    }

    /// Bindings the resident weight matrices occupy (more than the matrix count when some are
    /// split).
    pub fn weight_bindings(&self) -> usize {
        let mut n = self.embed.as_ref().map_or(0, |e| e.chunks.len())
            + self.head.as_ref().map_or(0, |h| h.chunks.len());
        for l in &self.layers {
            if let Some(m) = &l.mats {
                n += m.all().iter().map(|m| m.chunks.len()).sum::<usize>();
            }
        }
        n
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        batch.validate(self.len)?;
        if batch.cache != CacheView::All {
            // drafting runs on the CPU backend; the verifier always sees its whole prefix
            return Err(Error::Unsupported(
                "the GPU backend verifies over the committed prefix only (no speculative cache view)"
                    .into(),
            ));
        }
        let n = batch.len();
        if n == 0 {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.cfg.vocab
            )));
        }
        let needed = (self.len + n).max(batch.positions.iter().max().map_or(0, |p| p + 1));
        if needed > self.capacity {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.capacity,
                hint: String::new(),
            });
        }
        Ok(())
    }

    /// Runs the forward pass: one command buffer when every weight is resident, otherwise one
    /// submit per layer (and per head part) with the next streamed unit uploading while the
    /// current one computes. Returns the last recorder (for the readback) and the row count.
    fn record_and_submit(&mut self, batch: &Batch, want: Want) -> Result<(Recorder, usize)> {
        self.check_batch(batch)?;
        self.ensure_scratch(batch.len())?;
        if let Some(t) = &mut self.timing {
            t.next = 0;
            if let Some(k) = &mut t.kernels {
                k.clear();
            }
        }
        self.positions.truncate(self.len);
        self.positions
            .extend(batch.positions.iter().map(|&p| p as u32));
        let inputs = PassInputs::upload(
            &self.gpu,
            &self.cfg,
            batch,
            &self.inv_freqs,
            &self.positions,
        );
        let resident_head = if self.head_is_embed {
            self.embed.as_ref()
        } else {
            self.head.as_ref()
        };
        let mut pass = GpuPass::new(
            &self.gpu,
            &self.cfg,
            batch,
            self.scratch.as_ref().expect("scratch"),
            &self.layers,
            self.embed.as_ref(),
            &mut self.gather,
            &self.norm,
            &mut self.stream,
            &mut self.stats,
            &mut self.timing,
            self.len,
            want.rows,
            inputs,
        );
        recipe::forward(&self.cfg, &mut pass)?;
        let rec = pass.head(resident_head, &self.weights.head)?;
        self.len += batch.len();
        let rows = match want.rows {
            Rows::Last => 1,
            Rows::All => batch.len(),
        };
        Ok((rec, rows))
    }

    fn forward_inner(&mut self, batch: &Batch, want: Want) -> Result<Logits> {
        if self.gpu.ctx.fault == Some(Fault::Lost(self.passes_started)) {
            // a real loss: later submits fail and the device-lost callback reports it
            self.gpu.ctx.device.destroy();
        }
        self.passes_started += 1;
        let base = self.len;
        let t0 = Instant::now();
        let io0 = self.stats.io_time;
        let out = match self.record_and_submit(batch, want) {
            Ok((rec, rows)) => self.run_pass(rec, rows, want),
            Err(e) => Err(e),
        };
        if out.is_err() {
            self.len = base;
            // leave the device idle and the ring consistent for the next pass
            let _ = self.gpu.ctx.wait();
            return out;
        }
        let pass = t0.elapsed();
        let compute = match self.read_timestamps() {
            Ok(Some(d)) => {
                self.stats.compute_timed = true;
                d
            }
            _ => pass.saturating_sub(self.stats.io_time - io0),
        };
        self.stats.passes += 1;
        self.stats.pass_time += pass;
        self.stats.compute_time += compute;
        out
    }

    /// Sum of this pass's compute-pass timestamp intervals.
    fn read_timestamps(&mut self) -> Result<Option<Duration>> {
        let Some(t) = &self.timing else {
            return Ok(None);
        };
        if t.next == 0 {
            return Ok(None);
        }
        let g = &self.gpu;
        let bytes = t.next as u64 * 8;
        let resolve = g.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = g
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.resolve_query_set(&t.set, 0..t.next, &resolve, 0);
        g.ctx.queue.submit([enc.finish()]);
        let raw = g.run_and_read(Recorder::default(), &resolve, 0, bytes as usize)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = g.ctx.queue.get_timestamp_period() as f64;
        let times: Vec<Duration> = ticks
            .chunks_exact(2)
            .map(|p| Duration::from_nanos((p[1].saturating_sub(p[0]) as f64 * period) as u64))
            .collect();
        for (kernel, &d) in t.kernels.iter().flatten().zip(&times) {
            let e = self.profile.entry(*kernel).or_default();
            e.0 += 1;
            e.1 += d;
        }
        Ok(Some(times.iter().sum()))
    }

    /// Times every dispatch on its own (needs GPU timestamps; returns whether they are there),
    /// for `take_profile`. Splitting the passes adds barriers: profiled passes run slower.
    pub fn set_profiling(&mut self, on: bool) -> bool {
        let Some(t) = &mut self.timing else {
            return false;
        };
        t.kernels = on.then(Vec::new);
        self.profile.clear();
        true
    }

    /// Each kernel's dispatches and GPU time since profiling began or was last taken, the
    /// costliest first.
    pub fn take_profile(&mut self) -> Vec<KernelTime> {
        let mut out: Vec<KernelTime> = self
            .profile
            .drain()
            .map(|(kernel, (dispatches, time))| KernelTime {
                kernel: format!("{kernel:?}"),
                dispatches,
                time,
            })
            .collect();
        out.sort_by(|a, b| b.time.cmp(&a.time).then(a.kernel.cmp(&b.kernel)));
        out
    }

    fn run_pass(&mut self, mut rec: Recorder, rows: usize, want: Want) -> Result<Logits> {
        let vocab = self.cfg.vocab;
        let s = self.scratch.as_ref().expect("scratch");
        let g = &self.gpu;
        let timing = self.timing.as_mut();
        match want.top_k {
            None => {
                let b = g.run_and_read_timed(rec, &s.logits, 0, rows * vocab * 4, timing)?;
                Ok(Logits::Dense {
                    vocab,
                    data: bytemuck::pod_collect_to_vec(&b),
                })
            }
            Some(k) => {
                let k = k.clamp(1, vocab.min(MAX_TOP_K));
                g.top_k(&mut rec, &s.logits, 0, rows, vocab, k, &s.ids, &s.vals)?;
                // one readback: ids then values
                let bytes = (rows * k * 4) as u64;
                rec.copy(&s.vals, 0, &s.ids, bytes, bytes);
                let b = g.run_and_read_timed(rec, &s.ids, 0, 2 * rows * k * 4, timing)?;
                let all: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
                Ok(Logits::TopK {
                    k,
                    ids: all[..rows * k].to_vec(),
                    logits: all[rows * k..].iter().map(|&b| f32::from_bits(b)).collect(),
                })
            }
        }
    }

    /// Time of one verification pass of `n` nodes (a binary tree over a prefix of `prefix`
    /// cache entries, all rows, top-8 readback) for each `n`: the median of `reps` runs after
    /// a warm-up. Committed entries are never overwritten (a prefix shorter than `kv_len` is
    /// measured at `kv_len`), and `kv_len` is restored afterwards.
    pub fn pass_cost_curve(
        &mut self,
        ns: &[usize],
        prefix: usize,
        reps: usize,
    ) -> Result<Vec<(usize, Duration)>> {
        let saved = self.len;
        let prefix = prefix.max(saved);
        let mut out = Vec::with_capacity(ns.len());
        let max_n = ns.iter().copied().max().unwrap_or(1);
        if prefix + max_n > self.capacity {
            return Err(Error::ContextOverflow {
                needed: prefix + max_n,
                limit: self.capacity,
                hint: " (pass cost curve)".into(),
            });
        }
        self.len = prefix;
        let want = Want {
            rows: Rows::All,
            top_k: Some(8),
        };
        for &n in ns {
            let parents: Vec<Option<usize>> = (0..n)
                .map(|i| if i == 0 { None } else { Some((i - 1) / 2) })
                .collect();
            let tokens: Vec<u32> = (0..n).map(|i| (i % self.cfg.vocab) as u32).collect();
            let batch = Batch::tree(&tokens, &parents, prefix);
            let mut times = Vec::with_capacity(reps + 1);
            for _ in 0..=reps.max(1) {
                self.len = prefix;
                let t = Instant::now();
                let r = self.forward_inner(&batch, want);
                times.push(t.elapsed());
                if let Err(e) = r {
                    self.len = saved;
                    return Err(e);
                }
            }
            times.remove(0);
            times.sort();
            out.push((n, times[times.len() / 2]));
        }
        self.len = saved;
        Ok(out)
    }
}

impl Backend for GpuBackend {
    fn stats_json(&self) -> Option<serde_json::Value> {
        self.is_streaming().then(|| self.stats.to_json())
    }

    fn streamed_io_ms(&self) -> Option<f64> {
        (self.is_streaming() && self.stats.passes > 0)
            .then(|| self.stats.per_pass(self.stats.io_time).as_secs_f64() * 1e3)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // drafting runs on the CPU backend; the verifier always sees its whole prefix
            speculative_cache: false,
            max_top_k: MAX_TOP_K,
        }
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn device_name(&self) -> String {
        format!("gpu: {}", self.gpu.ctx.summary())
    }

    fn forward(&mut self, batch: &Batch, want: Want) -> Result<Logits> {
        self.forward_inner(batch, want)
    }

    fn kv_len(&self) -> usize {
        self.len
    }

    fn kv_capacity(&self) -> usize {
        self.capacity
    }

    fn kv_compact(&mut self, base: usize, keep: &[usize]) -> Result<()> {
        if keep.windows(2).any(|w| w[0] >= w[1])
            || keep.last().is_some_and(|&j| base + j >= self.len)
        {
            return Err(Error::InvalidArgument(format!(
                "kv compaction: keep {keep:?} from base {base} with {} entries",
                self.len
            )));
        }
        if keep.iter().enumerate().any(|(j, &k)| j != k) {
            let kv_dim = self.cfg.kv_dim();
            let bytes = keep.len() * kv_dim * 4;
            if self.kv_tmp.size() < bytes as u64 {
                self.kv_tmp = self.gpu.buffer(bytes, "kv_tmp");
            }
            let keep32: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
            let kb = self.gpu.upload(&keep32, "keep");
            let mut rec = Recorder::default();
            for l in &self.layers {
                for cache in [&l.k_cache, &l.v_cache] {
                    self.gpu.kv_compact(
                        &mut rec,
                        cache,
                        kv_dim,
                        base,
                        &kb,
                        keep.len(),
                        &self.kv_tmp,
                    )?;
                }
            }
            self.gpu.submit(rec)?;
            for (j, &k) in keep.iter().enumerate() {
                self.positions[base + j] = self.positions[base + k];
            }
        }
        self.len = base + keep.len();
        Ok(())
    }

    fn kv_truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests;
